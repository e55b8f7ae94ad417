"""DiGIT end to end (vistok.train.digit_ar + vistok.train.dino): classifier-free guidance against plain conditional /
unconditional sampling, and the tiny pipeline fit → tokenize → train GPT → train decoder → generate → decode, with
the ``vistok digit decoder`` / ``generate`` verbs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from vistok.cli import main as cli_main
from vistok.data.samples import SamplePhotos
from vistok.hub import from_pretrained
from vistok.models.transformer import Transformer
from vistok.tokenizers.api import load_tokenizer
from vistok.tokenizers.digit_decoder import DigitAutoencoder
from vistok.train.digit_ar import (
    DigitARConfig,
    DigitDecoderTrainConfig,
    TokenLayout,
    generate_pictures,
    guided_grids,
    load_token_gpt,
    sample_grids,
    tokenize_pictures,
    train_digit_decoder,
    train_token_gpt,
)
from vistok.train.dino import DigitFitConfig, fit_digit

# --- classifier-free guidance ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gpt() -> tuple[Transformer, TokenLayout]:
    layout = TokenLayout(codebook_size=12, grid=(3, 4), num_classes=3)
    torch.manual_seed(0)
    model = Transformer(DigitARConfig(dim=32, n_layers=2, n_heads=2).model_config(layout)).eval()
    with torch.no_grad():  # class tokens that matter: large random embeddings
        model.tok_embeddings.weight[12:].normal_(0, 3)
    return model, layout


@pytest.mark.parametrize("temperature", [1.0, 0.0])
def test_cfg_scale_one_is_conditional_and_zero_is_unconditional_sampling(gpt, temperature):
    model, layout = gpt
    labels = torch.tensor([0, 1, 2, 2, 1, 0])
    plain = sample_grids(model, layout, labels=labels, temperature=temperature, seed=7)
    assert torch.equal(guided_grids(model, layout, labels, 1.0, temperature=temperature, seed=7), plain)
    uncond = sample_grids(model, layout, len(labels), temperature=temperature, seed=7)
    assert torch.equal(guided_grids(model, layout, labels, 0.0, temperature=temperature, seed=7), uncond)
    assert not torch.equal(plain, uncond)  # the class tokens matter, so the two checks above are not the same one


def test_cfg_sharpens_towards_the_class_and_checks_its_inputs(gpt):
    model, layout = gpt
    labels = torch.tensor([0, 1, 2])
    strong = sample_grids(model, layout, labels=labels, cfg=4.0, temperature=0.0)
    # greedy first token at scale s is argmax of uncond + s·(cond − uncond): brute force from full forwards
    with torch.no_grad():
        cond = model(layout.codebook_size + labels[:, None])[:, -1, :12]
        uncond = model(torch.full((3, 1), layout.bos_id))[:, -1, :12]
    assert torch.equal(strong[:, 0, 0], (uncond + 4.0 * (cond - uncond)).argmax(-1))
    assert torch.equal(
        sample_grids(model, layout, labels=labels, cfg=4.0, seed=3), guided_grids(model, layout, labels, 4.0, seed=3)
    )
    with pytest.raises(ValueError, match="needs labels"):
        sample_grids(model, layout, 3, cfg=2.0)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\), got range \[0, 3\]"):
        guided_grids(model, layout, [0, 3], 2.0)
    unconditional = TokenLayout(12, (3, 4), 0)
    with pytest.raises(ValueError, match="unconditional"):
        guided_grids(model, unconditional, [0], 2.0)
    assert not model.has_caches  # the cache was removed afterwards


# --- the whole pipeline ---------------------------------------------------------------------------------------------


def test_tiny_pipeline_fit_tokenize_gpt_decoder_generate(tmp_path, capsys):
    size = 32
    fit = fit_digit(
        DigitFitConfig(
            out=str(tmp_path / "fit"), size=size, k=16, ssl_steps=2, batch_size=4, n_local=2, fit_images=48,
            fit_batch_size=16, n_iter=5, probe=False, picture_images=2, progress=False,
        )
    )  # fmt: skip
    tok_dir = fit.tokenizer_dir
    assert (tok_dir / "config.json").is_file() and fit.picture.is_file()
    tok = from_pretrained(tok_dir)
    photos = SamplePhotos(size=size, split="train", length=48, seed=1)
    shards = tokenize_pictures(tok, photos, tmp_path / "tokens")
    gpt = train_token_gpt(
        shards,
        DigitARConfig(dim=32, n_layers=1, n_heads=2, conditional=True, class_dropout=0.3, steps=20, batch_size=16,
                      warmup=2, log_every=10, progress=False),
        tmp_path / "gpt",
    )  # fmt: skip
    assert gpt.layout.codebook_size == 16 and gpt.layout.grid == (4, 4)
    dec = train_digit_decoder(
        tok_dir,
        DigitDecoderTrainConfig(
            out=str(tmp_path / "dec"), size=size, steps=6, batch_size=4, base_channels=8, z_channels=16,
            eval_images=4, baseline_images=16, show_images=2, warmup=1, progress=False,
        ),
    )  # fmt: skip
    report = json.loads((tmp_path / "dec" / "decoder.json").read_text())
    for split in ("heldout_photos", "train_photos_new_crops"):
        s = report["heldout"][split]
        assert s["images"] == 4
        for key in ("decoder", "mean_colour", "cluster_mean_patch"):
            assert 0 < s[key] < 60, (split, key, s[key])
    assert report["tokenizer"]["codebook_sha256"] == tok.codebook_sha256()
    recon_png = Image.open(dec.picture)
    assert recon_png.height >= 6 * 2 * size  # 3 rows per set (original, decoded, lookup) at scale 2, two sets
    ae = load_tokenizer(dec.model_dir, device="cpu")
    assert isinstance(ae, DigitAutoencoder)

    res = generate_pictures(gpt.model_dir, dec.model_dir, tmp_path / "gen", per_class=2, classes=[0, 3], cfg=2.0)
    assert res.grids.shape == (4, 4, 4) and res.grids.dtype == torch.int64
    assert int(res.grids.min()) >= 0 and int(res.grids.max()) < 16
    assert res.labels.tolist() == [0, 0, 3, 3]
    assert res.pixels.shape == (4, 3, size, size)
    assert float(res.pixels.min()) >= -1 and float(res.pixels.max()) <= 1 and float(res.pixels.std()) > 0
    assert torch.allclose(res.pixels, ae.decode(res.grids).clamp(-1, 1), atol=1e-5)  # decoded by that decoder
    model, layout = load_token_gpt(gpt.model_dir)
    same = sample_grids(model, layout, labels=res.labels, cfg=2.0, seed=0)
    assert torch.equal(res.grids, same)
    assert np.array_equal(np.load(tmp_path / "gen" / "tokens.npy"), res.grids.numpy())
    samples = json.loads((tmp_path / "gen" / "samples.json").read_text())
    assert samples["labels"] == [0, 0, 3, 3] and samples["cfg"] == 2.0
    grid_png = Image.open(tmp_path / "gen" / "samples.png")
    assert grid_png.height == 2 * 2 * size + 2 and grid_png.width > 2 * 2 * size  # 2 rows (classes) x 2, labels
    assert Image.open(tmp_path / "gen" / "token_maps.png").size == grid_png.size

    # the CLI verbs: generate (default classes = those in the GPT's shards) and decoder
    assert cli_main(["digit", "generate", "--gpt", str(gpt.model_dir), "--decoder", str(dec.model_dir), "--out",
                     str(tmp_path / "cli"), "--per-class", "1", "--cfg", "1.5", "--top-k", "8"]) == 0  # fmt: skip
    assert "token grids" in capsys.readouterr().out
    trained = sorted({int(photos[i]["label"]) for i in range(len(photos))})
    assert json.loads((tmp_path / "cli" / "samples.json").read_text())["labels"] == trained
    bad = ["digit", "generate", "--gpt", str(gpt.model_dir), "--decoder", str(tok_dir), "--out", str(tmp_path / "x")]
    assert cli_main(bad) == 2  # a DiGIT tokenizer folder is not a decoder: a clear error, no traceback
    assert "pixel tokenizer" in capsys.readouterr().err
    assert cli_main(["digit", "decoder", "--digit", str(tok_dir), "--out", str(tmp_path / "dec2"), "--size",
                     str(size), "--steps", "2", "--batch-size", "2", "--base-channels", "8", "--z-channels", "8",
                     "--eval-images", "2", "--baseline-images", "8", "-q"]) == 0  # fmt: skip
    assert "PSNR on held-out photos" in capsys.readouterr().out
    assert (tmp_path / "dec2" / "final" / "model.safetensors").is_file()


def test_feature_distance_is_zero_for_equal_sets_and_grows_with_a_shift():
    import torch

    from vistok.train.digit_ar import feature_distance

    class Pool:  # features = the pixels themselves on a 4×4 grid (B, 4, 4, 3)
        def features(self, x):
            return torch.nn.functional.adaptive_avg_pool2d(x, 4).permute(0, 2, 3, 1)

    gen = torch.Generator().manual_seed(0)
    x = torch.rand(64, 3, 16, 16, generator=gen) * 2 - 1
    y = torch.rand(64, 3, 16, 16, generator=gen) * 2 - 1
    enc = Pool()
    assert feature_distance(enc, x, x) < 1e-6
    same = feature_distance(enc, x, y)
    shifted = feature_distance(enc, (x + 0.5).clamp(-1, 1), y)
    assert 0 <= same < shifted
    # the mean term alone for a pure shift of every feature: ‖Δμ‖² with Δμ = 0.3 over 3 channels (kept in range)
    half = x / 2
    assert feature_distance(enc, half + 0.3, half) == pytest.approx(3 * 0.3**2, rel=1e-4)
    # pictures are scored as they would be saved: out-of-range values are clipped to [-1, 1]
    assert feature_distance(enc, x * 3, x.sign()) < 0.2 * feature_distance(enc, x, x.sign())
    with pytest.raises(ValueError, match="pictures"):
        feature_distance(enc, x[:1], y)
