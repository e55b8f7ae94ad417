"""The MaskGIT trainer and the ``vistok maskgit {train,generate}`` verbs end to end at a tiny size, with the shipped
tokenizer: the files a run writes, the saved model against the trained weights, the held-out numbers against a brute
force recomputation, training on given shards, the PNG grid and decoding strip, video prediction, clear errors."""

import argparse
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from vistok.data import SyntheticVideos, write_video
from vistok.data.samples import photo_names
from vistok.data.shards import ShardMapDataset, ShardReader
from vistok.registry import create_model
from vistok.train.checkpoint import load_checkpoint
from vistok.train.maskgit import (
    RUN_FILE,
    MaskGITTrainConfig,
    build,
    build_model,
    evaluate_maskgit,
    load_maskgit_run,
    prepare_tokens,
    train_maskgit,
    unigram_counts,
)

TRAIN_ITEMS, HELDOUT_ITEMS, STEPS = 24, 8, 6


def cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="vistok")
    build(parser.add_subparsers(dest="group", required=True))
    args = parser.parse_args(list(argv))
    return args.func(args)


def _train_args(out) -> list[str]:
    return ["maskgit", "train", "--data", "samples", "--size", "64", "--steps", str(STEPS), "--batch-size", "4",
            "--train-items", str(TRAIN_ITEMS), "--heldout-items", str(HELDOUT_ITEMS), "--warmup", "0",
            "--log-every", "2", "--ckpt-every", "3", "--out", str(out), "--device", "cpu", "-q"]  # fmt: skip


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One tiny class-conditional run on the built-in photos through the CLI verb (shared by the tests below)."""
    out = tmp_path_factory.mktemp("maskgit") / "run"
    assert cli(*_train_args(out)) == 0
    return out


# ------------------------------------------------------------------------------------------------------- training


def test_config_checks():
    with pytest.raises(ValueError, match="data source"):
        MaskGITTrainConfig(data=None)
    with pytest.raises(ValueError, match="p_uncond"):
        MaskGITTrainConfig(p_uncond=1.0)
    with pytest.raises(ValueError, match="steps"):
        MaskGITTrainConfig(steps=0)


def test_run_writes_model_tokens_record_and_checkpoints(run, capsys):
    for name in ("model/config.json", "model/model.safetensors", RUN_FILE, "metrics.jsonl", "ckpt_00000006.pt"):
        assert (run / name).is_file(), name
    record = json.loads((run / RUN_FILE).read_text())
    classes = list(photo_names("train"))
    assert record["classes"] == classes and record["grid"] == [8, 8] and record["kind"] == "image"
    assert record["tokenizer"]["source"] == "default" and record["tokenizer"]["codebook_size"] == 1024
    assert record["steps"] == STEPS
    held = record["heldout"]
    assert held["heldout_items"] == HELDOUT_ITEMS and held["masked_tokens"] > 0
    assert 1 < held["perplexity"] < 2000 and 1 < held["unigram_perplexity"] < 1025
    assert 0 <= held["masked_accuracy"] <= 1 and "uncond_perplexity" in held
    train, heldout = ShardReader(run / "tokens/train"), ShardReader(run / "tokens/heldout")
    assert (len(train), len(heldout)) == (TRAIN_ITEMS, HELDOUT_ITEMS)
    assert train[0].shape == (8, 8) and set(train.labels.tolist()) <= set(range(len(classes)))
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4, 6] and all("masked_acc" in r for r in rows)
    config = json.loads((run / "model/config.json").read_text())
    assert config["model_type"] == "maskgit" and config["num_classes"] == len(classes)


def test_saved_model_is_the_trained_model(run):
    loaded = load_maskgit_run(run).model
    state = load_checkpoint(run / "ckpt_00000006.pt")["model"]
    model = create_model("maskgit-tiny", num_classes=7).eval()
    model.load_state_dict(state)
    ids = torch.randint(0, 1024, (2, 8, 8), generator=torch.Generator().manual_seed(0))
    ids[:, :4] = model.mask_id
    cls = torch.tensor([0, 6])
    assert torch.equal(loaded(ids, cls), model(ids, cls))


@torch.no_grad()
def test_heldout_metrics_match_a_brute_force_recomputation(run):
    model = load_maskgit_run(run).model
    heldout = ShardMapDataset(run / "tokens/heldout")
    counts = unigram_counts(ShardReader(run / "tokens/train"))
    all_train = np.concatenate([np.asarray(x).ravel() for x in ShardReader(run / "tokens/train")])
    assert np.array_equal(counts, np.bincount(all_train, minlength=1024))
    got = evaluate_maskgit(model, heldout, counts, batch_size=3, seed=5)
    # by hand, item by item, with the same mask draws (batches of 3 from one generator seeded 5)
    gen = torch.Generator().manual_seed(5)
    logq = np.log(counts + 1.0) - np.log((counts + 1.0).sum())
    nll = uni = hits = uni_hits = tokens = 0.0
    for lo in range(0, len(heldout), 3):
        items = [heldout[i] for i in range(lo, min(lo + 3, len(heldout)))]
        mask = model.sample_mask(len(items), torch.device("cpu"), gen)
        for x, m in zip(items, mask):
            ids = x["tokens"].flatten()
            logits = model(ids.masked_fill(m, 1024)[None], torch.tensor([x["label"]]))[0, :, 0]  # (64, 1024)
            logp = logits.log_softmax(-1)
            for p in torch.nonzero(m).flatten().tolist():
                nll -= float(logp[p, ids[p]])
                hits += float(logits[p].argmax() == ids[p])
                uni -= float(logq[ids[p]])
                uni_hits += float(ids[p] == counts.argmax())
                tokens += 1
    assert got["masked_tokens"] == tokens
    assert math.isclose(got["perplexity"], math.exp(nll / tokens), rel_tol=1e-4)
    assert math.isclose(got["masked_accuracy"], hits / tokens)
    assert math.isclose(got["unigram_perplexity"], math.exp(uni / tokens), rel_tol=1e-6)
    assert math.isclose(got["unigram_accuracy"], uni_hits / tokens)


def test_rerun_with_other_data_settings_is_refused(run):
    cfg = MaskGITTrainConfig(data="samples", size=32, train_items=TRAIN_ITEMS, out_dir=str(run), progress=False)
    with pytest.raises(ValueError, match="other data settings"):
        prepare_tokens(cfg)


def test_model_overrides_that_contradict_the_data_raise(run):
    cfg = dict(data="samples", train_items=TRAIN_ITEMS, heldout_items=HELDOUT_ITEMS, out_dir=str(run), progress=False)
    data = prepare_tokens(MaskGITTrainConfig(**cfg))  # already written: nothing is tokenized again
    assert data.grid == (8, 8) and len(data.train) == TRAIN_ITEMS
    with pytest.raises(ValueError, match="wrong grid"):
        build_model(MaskGITTrainConfig(**cfg, model_overrides={"grid": [4, 4]}), data)
    with pytest.raises(ValueError, match="num_classes=3"):
        build_model(MaskGITTrainConfig(**cfg, model_overrides={"num_classes": 3}), data)


def test_train_on_given_shards(run, tmp_path):
    cfg = MaskGITTrainConfig(
        shards=str(run / "tokens/train"), data=None, steps=2, batch_size=4, warmup=0, out_dir=str(tmp_path / "r2"),
        heldout_fraction=0.25, progress=False, device="cpu",
    )  # fmt: skip
    result = train_maskgit(cfg)
    record = json.loads(result.run_file.read_text())
    assert record["tokenizer"]["source"] == "default"  # the shipped tokenizer wrote these shards
    assert record["classes"] == list(photo_names("train")) and record["grid"] == [8, 8]
    assert result.metrics["heldout_items"] == 6  # a quarter of the 24 items
    assert not (tmp_path / "r2" / "tokens").exists()  # nothing re-tokenized


# ------------------------------------------------------------------------------------------------------- generate


def test_generate_writes_a_grid_per_class_and_a_decoding_strip(run, tmp_path, capsys):
    out, strip = tmp_path / "grid.png", tmp_path / "steps.png"
    argv = ["maskgit", "generate", "--model", str(run), "--classes", "0", "chelsea", "--n", "3", "--steps", "5",
            "--guidance", "2.0", "--seed", "0", "--out", str(out), "--history", str(strip),
            "--device", "cpu"]  # fmt: skip
    assert cli(*argv) == 0
    assert "astronaut, chelsea" in capsys.readouterr().out
    grid = np.asarray(Image.open(out))
    assert grid.shape == (2 * 64 + 2, 3 * 64 + 2 * 2, 3)  # 2 rows (classes) × 3 samples, 2-pixel gaps
    steps = np.asarray(Image.open(strip))
    assert steps.shape == (2 * 64 + 2, 5 * 64 + 4 * 2, 3)  # one row per class, one column per step
    assert (steps[:64, :64] == 128).mean() > 0.5  # after step 1 most token cells are still masked (grey)
    again = tmp_path / "again.png"
    assert cli(*[a if a != str(out) else str(again) for a in argv]) == 0
    assert np.array_equal(np.asarray(Image.open(again)), grid)  # same seed, same pictures


def test_generate_errors_are_clear(run, tmp_path):
    base = ["maskgit", "generate", "--model", str(run), "--out", str(tmp_path / "x.png"), "--device", "cpu"]
    with pytest.raises(ValueError, match="unknown class 7"):
        cli(*base, "--class", "7")
    with pytest.raises(ValueError, match="unknown class 'coffee'"):
        cli(*base, "--classes", "coffee")
    with pytest.raises(ValueError, match="--frames is for video"):
        cli(*base, "--frames", str(tmp_path / "clip.mp4"))
    with pytest.raises(FileNotFoundError, match="no such folder"):
        cli("maskgit", "generate", "--model", str(tmp_path / "missing"), "--out", str(tmp_path / "x.png"))
    with pytest.raises(FileNotFoundError, match="no trained model"):
        cli("maskgit", "generate", "--model", str(tmp_path), "--out", str(tmp_path / "x.png"))
    assert not (tmp_path / "x.png").exists()


def test_help_shows_an_example(capsys):
    for verb in ("train", "generate"):
        with pytest.raises(SystemExit):
            cli("maskgit", verb, "--help")
        assert "example:" in capsys.readouterr().out


def test_video_prediction_end_to_end(tmp_path, capsys):
    out = tmp_path / "video"
    argv = ["maskgit", "train", "--preset", "maskgit-tiny-video", "--data", "samples", "--size", "64", "--frames", "9",
            "--steps", "3", "--batch-size", "2", "--train-items", "4", "--heldout-items", "2", "--warmup", "0",
            "--out", str(out), "--device", "cpu", "-q"]  # fmt: skip
    assert cli(*argv) == 0
    record = json.loads((out / RUN_FILE).read_text())
    assert record["kind"] == "video" and record["grid"] == [3, 8, 8] and record["classes"] == []
    clip = tmp_path / "clip.mp4"
    write_video(clip, SyntheticVideos(9, 64, length=2, split="heldout", seed=3).render(1))
    pred = tmp_path / "pred.mp4"
    capsys.readouterr()
    assert cli("maskgit", "generate", "--model", str(out), "--frames", str(clip), "--n", "2", "--steps", "4",
               "--out", str(pred), "--device", "cpu") == 0  # fmt: skip
    text = capsys.readouterr().out
    assert pred.is_file() and pred.with_suffix(".png").is_file()
    assert "from its first 1 frame(s)" in text and "dB" in text
    strip = np.asarray(Image.open(pred.with_suffix(".png")))
    assert strip.shape[0] == 4 * 64 + 3 * 2  # truth, reconstruction, 2 samples
    small = tmp_path / "small.mp4"
    write_video(small, SyntheticVideos(5, 64, length=1).render(0))
    with pytest.raises(ValueError, match="wrong grid"):
        cli("maskgit", "generate", "--model", str(out), "--frames", str(small), "--out", str(pred), "--device", "cpu")
    with pytest.raises(ValueError, match="--frames"):
        cli("maskgit", "generate", "--model", str(out), "--out", str(pred), "--device", "cpu")


def test_train_on_an_image_folder_labels_are_subfolders(tmp_path):
    from vistok.data.samples import load_photo

    for name in ("chelsea", "astronaut"):
        folder = tmp_path / "images" / f"{name}s"
        folder.mkdir(parents=True)
        photo = load_photo(name).resize((96, 96))
        for k in range(4):
            photo.rotate(90 * k).save(folder / f"{k}.png")
    cfg = MaskGITTrainConfig(
        data=str(tmp_path / "images"), size=64, train_items=8, heldout_items=2, heldout_fraction=0.25, steps=2,
        batch_size=4, warmup=0, out_dir=str(tmp_path / "run"), progress=False, device="cpu",
    )  # fmt: skip
    result = train_maskgit(cfg)
    record = json.loads(result.run_file.read_text())
    assert record["classes"] == ["astronauts", "chelseas"]  # sorted subfolder names
    meta = json.loads((tmp_path / "run/tokens/train/meta.json").read_text())["extra"]["vistok_maskgit"]
    assert meta["files"] == 6  # 2 of the 8 files held out
    assert set(ShardReader(tmp_path / "run/tokens/train").labels.tolist()) == {0, 1}
    assert result.metrics["heldout_items"] == 2
