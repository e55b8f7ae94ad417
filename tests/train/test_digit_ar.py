"""vistok.train.digit_ar: sequence layout, a GPT that overfits fixed grids (greedy sampling reproduces them), the
held-out metrics, the tokenizer comparison end to end at a tiny size, and the ``digit train`` / ``compare`` verbs."""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import pytest
import torch

from vistok.data.shards import write_shards
from vistok.models.vit import ViTConfig
from vistok.tokenizers.digit import DigitConfig, DigitTokenizer
from vistok.train.digit_ar import (
    TABLE_FIELDS,
    CompareConfig,
    DigitARConfig,
    TokenLayout,
    TokenSequences,
    add_digit_train_parser,
    bag_of_tokens,
    compare_tokenizers,
    evaluate_token_gpt,
    gpt_features,
    load_token_gpt,
    sample_grids,
    train_token_gpt,
    unigram_scores,
)

# --- sequences ------------------------------------------------------------------------------------------------------


def test_layout_ids_and_class_token_position():
    lay = TokenLayout(codebook_size=10, grid=(2, 3), num_classes=3)
    assert (lay.bos_id, lay.vocab_size, lay.image_length, lay.seq_len) == (13, 14, 6, 7)
    grids = torch.arange(18).reshape(3, 2, 3) % 10
    seq = lay.build(grids, torch.tensor([0, 2, -1]))
    assert seq.shape == (3, 7)
    assert seq[:, 0].tolist() == [10, 12, 13]  # class c → K + c; a missing label → BOS
    assert torch.equal(seq[:, 1:], grids.flatten(1))  # image ids unshifted, raster order
    assert torch.equal(lay.build(grids)[:, 0], torch.full((3,), 13))  # unconditional: BOS
    assert lay.image_mask().tolist() == [True] * 10 + [False] * 4
    with pytest.raises(ValueError, match="image ids"):
        lay.build(torch.full((1, 2, 3), 10))
    with pytest.raises(ValueError, match="num_classes"):
        lay.build(grids, torch.tensor([0, 1, 3]))
    with pytest.raises(ValueError, match="grids must be"):
        lay.build(torch.zeros(1, 3, 2, dtype=torch.long))


def _write(tmp_path, grids, labels, k, name="tok"):
    items = [(np.asarray(g, dtype=np.int64), int(y)) for g, y in zip(grids, labels)]
    write_shards(tmp_path / name, items, vocab_size=k, tokenizer="test", grid_shape=(grids.shape[1], grids.shape[2]))
    return tmp_path / name


def test_token_sequences_from_shards(tmp_path):
    grids = torch.randint(0, 12, (5, 2, 2))
    d = _write(tmp_path, grids, [0, 1, 2, 1, 0], k=12)
    cond = TokenSequences(d, conditional=True)
    assert cond.layout == TokenLayout(12, (2, 2), 3)
    assert cond[3]["ids"].tolist() == [12 + 1, *grids[3].flatten().tolist()]
    unc = TokenSequences(d)
    assert unc.layout.num_classes == 0 and unc.ids[:, 0].eq(12).all()
    assert torch.equal(unc.labels, torch.tensor([0, 1, 2, 1, 0]))


def test_unigram_and_bag_of_tokens():
    k = 8
    every = torch.arange(k).repeat(10)[None]  # uniform training counts → the unigram scores log K per token
    s = unigram_scores(every, every, k)
    assert s["bits_per_log2k"] == pytest.approx(1.0) and s["perplexity"] == pytest.approx(k)
    bow = bag_of_tokens(torch.tensor([[[0, 0], [3, 1]]]), 4)
    assert bow.tolist() == [[0.5, 0.25, 0.0, 0.25]]


# --- the GPT --------------------------------------------------------------------------------------------------------


def test_gpt_overfits_fixed_grids_and_greedy_reproduces_them(tmp_path):
    k = 16
    fixed = torch.tensor([[[1, 5, 9], [2, 2, 7]], [[15, 0, 3], [3, 8, 11]]])
    grids, labels = fixed.repeat(16, 1, 1), torch.tensor([0, 1]).repeat(16)
    d = _write(tmp_path, grids, labels.tolist(), k)
    cfg = DigitARConfig(dim=32, n_layers=2, n_heads=2, conditional=True, steps=120, batch_size=16, lr=1e-2,
                        warmup=10, log_every=40, progress=False)  # fmt: skip
    res = train_token_gpt(d, cfg, tmp_path / "run")
    assert res.layout == TokenLayout(k, (2, 3), 2)
    assert res.final_loss < 0.05
    out = sample_grids(res.model, res.layout, labels=[0, 1, 1, 0], temperature=0.0)
    assert torch.equal(out, fixed[[0, 1, 1, 0]])
    m = evaluate_token_gpt(res.model, res.layout, res.layout.build(fixed, torch.tensor([0, 1])))
    assert m["accuracy"] == 1.0 and m["bits_per_log2k"] < 0.05 and m["tokens"] == 12
    model, lay = load_token_gpt(res.model_dir)  # save_pretrained round trip
    assert lay == res.layout and torch.equal(sample_grids(model, lay, labels=[1, 0], temperature=0.0), fixed[[1, 0]])
    sampled = sample_grids(model, lay, labels=[0, 1], temperature=1.0, seed=3)
    assert sampled.shape == (2, 2, 3) and int(sampled.max()) < k  # only image ids are drawn
    f_final, f_mid = gpt_features(model, lay.build(fixed), (None, 0))
    assert f_final.shape == f_mid.shape == (2, 32)
    with pytest.raises(ValueError, match="labels"):
        sample_grids(model, lay, labels=[2])


# --- the comparison -------------------------------------------------------------------------------------------------


def _tiny_digit(size: int, k: int) -> DigitTokenizer:
    from vistok.data.samples import SamplePhotos

    torch.manual_seed(0)
    vit = ViTConfig(image_size=size, patch_size=8, dim=32, depth=2, n_heads=2, head_out_dim=64, head_hidden_dim=32,
                    head_bottleneck_dim=16)  # fmt: skip
    tok = DigitTokenizer(DigitConfig(encoder="vit", vit=vit, num_clusters=k, n_iter=5))
    return tok.fit(SamplePhotos(size=size, split="train", length=24, seed=5), batch_size=24).eval()


class _RandomGridTokenizer(torch.nn.Module):
    """A stand-in pixel tokenizer: ids from a fixed random projection of 8×8 patches (``encode(x, pad=True)``)."""

    codebook_size = 32

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Parameter(torch.randn(32, 3 * 64, generator=torch.Generator().manual_seed(0)))

    def encode(self, x, pad=False):
        patches = torch.nn.functional.unfold(x, 8, stride=8)  # (B, 192, h·w)
        h, w = x.shape[-2] // 8, x.shape[-1] // 8
        return (self.proj @ patches).argmax(1).reshape(len(x), h, w)


def test_compare_tokenizers_end_to_end(tmp_path):
    cfg = CompareConfig(
        out=str(tmp_path / "cmp"), size=16, train_images=48, val_images=14, probe_images=28,
        gpt=DigitARConfig(dim=32, n_layers=2, n_heads=2, steps=8, batch_size=8, log_every=4, progress=False),
    )  # fmt: skip
    toks = {"digit": _tiny_digit(16, 12), "pixels": _RandomGridTokenizer()}
    report = compare_tokenizers(toks, cfg, log=lambda *a: None)
    assert [r["tokenizer"] for r in report["rows"]] == ["digit", "pixels"]
    assert [r["K"] for r in report["rows"]] == [12, 32] and report["classes"] == 7
    for r in report["rows"]:
        assert r["grid"] == [2, 2] and r["steps"] == 8 and r["train_images"] == 48
        for split in ("val_crops", "val_photos"):
            m = r[split]
            assert m["tokens"] == 14 * 4 and 0 <= m["accuracy"] <= 1
            assert m["bits_per_log2k"] == pytest.approx(m["nll"] / math.log(r["K"]))
            assert m["perplexity"] == pytest.approx(math.exp(m["nll"]))
        assert set(r["probe"]) == {"final", "mid", "mid_block", "bag_of_tokens"}
        assert all(0 <= r["probe"][key] <= 1 for key in ("final", "mid", "bag_of_tokens"))
    # the same GPT shape for both (only the embedding / head sizes follow K)
    saved = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(report["rows"]))
    table = (tmp_path / "cmp" / "compare.md").read_text().splitlines()
    assert table[0] == "| " + " | ".join(TABLE_FIELDS) + " |"
    assert len(table) == 4 and all(line.count("|") == len(TABLE_FIELDS) + 1 for line in table)


# --- CLI ------------------------------------------------------------------------------------------------------------


def test_cli_verbs_parse():
    ap = argparse.ArgumentParser()
    digit = ap.add_subparsers().add_parser("digit").add_subparsers(dest="verb")
    add_digit_train_parser(digit)
    a = ap.parse_args(["digit", "train", "--tokenizer", "runs/digit/tokenizer", "--steps", "5", "--unconditional"])
    assert a.verb == "train" and a.steps == 5 and a.unconditional and callable(a.func)
    a = ap.parse_args(["digit", "compare", "--digit", "t", "--k", "64,256", "--magvit", "none"])
    assert a.verb == "compare" and a.k == "64,256" and a.magvit == "none" and a.steps == 300


def test_cli_train_on_builtin_photos(tmp_path, capsys):
    ap = argparse.ArgumentParser()
    digit = ap.add_subparsers().add_parser("digit").add_subparsers(dest="verb")
    add_digit_train_parser(digit)
    tok_dir = _tiny_digit(16, 8).save_pretrained(tmp_path / "tok")
    args = ap.parse_args(["digit", "train", "--tokenizer", str(tok_dir), "--size", "16", "--images", "21", "--steps",
                          "3", "--batch-size", "4", "--dim", "16", "--layers", "1", "--heads", "2", "--samples", "3",
                          "--out", str(tmp_path / "run"), "-q"])  # fmt: skip
    assert args.func(args) == 0
    assert "class-conditional" in capsys.readouterr().out
    samples = json.loads((tmp_path / "run" / "samples.json").read_text())
    assert samples["labels"] == [
        0,
        1,
        3,
    ]  # training photos only (2 = coffee is held out) and np.array(samples["grids"]).shape == (3, 2, 2)
    _, lay = load_token_gpt(tmp_path / "run" / "model")
    assert lay == TokenLayout(8, (2, 2), 8)  # classes = largest label + 1 (the built-in photo index)
