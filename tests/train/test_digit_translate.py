"""The DiGIT → reconstructive-token translator (vistok.tokenizers.digit_translate, vistok.train.digit_translate):
overfitting, save/load, aligned grids, the route DiGIT ids → target ids → pixels, and the ``vistok digit translate``
verb on tiny tokenizers."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from vistok.cli import main as cli_main
from vistok.data.samples import SamplePhotos
from vistok.hub import from_pretrained
from vistok.models.vit import ViTConfig
from vistok.registry import create_model
from vistok.tokenizers.digit import DigitConfig, DigitTokenizer, ViTFeatureEncoder
from vistok.tokenizers.digit_translate import (
    DigitTranslator,
    DigitTranslatorConfig,
    aligned_grid,
    translate_to_pixels,
)
from vistok.train.digit_translate import DigitTranslateConfig, train_digit_translator

SIZE = 32


def _tiny_translator(k: int = 16, v: int = 32, grid=(4, 4), seed: int = 0) -> DigitTranslator:
    torch.manual_seed(seed)
    return DigitTranslator(DigitTranslatorConfig(source_vocab=k, target_vocab=v, grid=grid, dim=32, n_layers=2,
                                                 n_heads=2))  # fmt: skip


def _tiny_digit(patch: int = 8) -> DigitTokenizer:
    from vistok.models.vit import ViT

    torch.manual_seed(0)
    vit = ViTConfig(image_size=SIZE, patch_size=patch, dim=32, depth=2, n_heads=2, head_out_dim=64,
                    head_hidden_dim=32, head_bottleneck_dim=16)  # fmt: skip
    tok = DigitTokenizer(DigitConfig(num_clusters=8, n_iter=5), ViTFeatureEncoder(ViT(vit)))
    return tok.fit(SamplePhotos(size=SIZE, split="train", length=16, seed=5), batch_size=16).eval()


@pytest.fixture(scope="module")
def magvit():
    with pytest.warns(UserWarning, match="untrained"):
        from vistok.tokenizers.api import load_tokenizer

        return load_tokenizer("magvit2-tiny", device="cpu")


def test_overfits_a_small_batch():
    model = _tiny_translator()
    gen = torch.Generator().manual_seed(0)
    src = torch.randint(16, (8, 4, 4), generator=gen)
    tgt = torch.randint(32, (8, 4, 4), generator=gen)  # arbitrary: each cell's target depends on the whole grid
    with torch.no_grad():
        _, acc0 = model.loss(src, tgt)
    assert acc0 < 0.2
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(150):
        loss, _ = model.loss(src, tgt)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    assert float((model.translate(src) == tgt).float().mean()) >= 0.9
    assert model(src).shape == (8, 4, 4, 32)


def test_save_load_round_trip_gives_identical_logits(tmp_path):
    model = _tiny_translator().eval()
    with torch.no_grad():
        model.head.bias.normal_()  # not the zero init: the round trip must carry every tensor
    src = torch.randint(16, (3, 4, 4), generator=torch.Generator().manual_seed(1))
    folder = model.save_pretrained(tmp_path / "m")
    for loaded in (DigitTranslator.from_pretrained(folder), from_pretrained(folder)):
        assert isinstance(loaded, DigitTranslator) and loaded.config == model.config
        with torch.no_grad():
            assert torch.equal(loaded(src), model(src))
    assert create_model("digit-translator-tiny").config.target_vocab == 1024


def test_grid_mismatch_raises_a_clear_error(magvit):
    digit_16px = _tiny_digit(patch=16)  # 2x2 DiGIT ids for 32x32 pictures, MAGVIT-v2 (8x) gives 4x4
    with pytest.raises(ValueError, match=r"2x2 id grid for 32x32 pictures but the pixel tokenizer gives 4x4"):
        aligned_grid(digit_16px, magvit, SIZE)
    with pytest.raises(ValueError, match="aligned"):
        train_digit_translator(digit_16px, magvit, DigitTranslateConfig(out="", size=SIZE, images=4, eval_images=2,
                                                                         steps=1, progress=False))  # fmt: skip
    model = _tiny_translator(grid=(4, 4))
    with pytest.raises(ValueError, match=r"\(B, 4, 4\)"):
        model(torch.zeros(1, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[0, 16\)"):
        model(torch.full((1, 4, 4), 16))
    with pytest.raises(ValueError, match="32 target ids but the pixel tokenizer has 1024"):
        translate_to_pixels(model, torch.zeros(1, 4, 4, dtype=torch.long), magvit)


def test_digit_ids_to_target_ids_to_pixels(magvit):
    digit = _tiny_digit()
    x = torch.stack([SamplePhotos(size=SIZE, split="heldout", length=3, seed=0)[i]["pixels"] for i in range(3)])
    grid = aligned_grid(digit, magvit, SIZE)
    assert grid == (4, 4)
    model = _tiny_translator(k=digit.codebook_size, v=magvit.codebook_size, grid=grid)
    ids, pixels = translate_to_pixels(model, digit.encode(x), magvit)
    assert ids.shape == (3, 4, 4) and ids.dtype == torch.int64 and int(ids.max()) < 1024
    assert pixels.shape == (3, 3, SIZE, SIZE) and pixels.dtype == torch.float32
    assert float(pixels.min()) >= -1 and float(pixels.max()) <= 1 and float(pixels.std()) > 0
    assert torch.allclose(pixels, magvit.decode(ids).clamp(-1, 1))
    sampled, _ = translate_to_pixels(model, digit.encode(x), magvit, temperature=1.0, top_k=5, seed=3)
    again, _ = translate_to_pixels(model, digit.encode(x), magvit, temperature=1.0, top_k=5, seed=3)
    assert torch.equal(sampled, again) and not torch.equal(sampled, ids)
    top5 = model(digit.encode(x)).topk(5, dim=-1).indices
    assert bool((top5 == sampled[..., None]).any(-1).all())  # every draw is among its cell's 5 most likely ids


def test_train_and_cli_write_model_scores_and_picture(tmp_path, magvit, capsys):
    digit = _tiny_digit()
    digit_dir = digit.save_pretrained(tmp_path / "digit")
    cfg = DigitTranslateConfig(out=str(tmp_path / "run"), size=SIZE, images=32, eval_images=6, steps=30,
                               batch_size=8, dim=32, n_layers=1, n_heads=2, show_images=3, progress=False)  # fmt: skip
    res = train_digit_translator(digit_dir, magvit, cfg)
    h = res.metrics["heldout"]
    assert h["images"] == 6 and 0 <= h["token_accuracy"] <= 1 and 0 <= h["unigram_accuracy"] <= 1
    for key in ("translated", "pixel_tokenizer", "mean_colour"):
        assert 0 < h["psnr"][key] < 60
    assert res.metrics["train_photos_new_crops"]["images"] == 6
    assert json.loads((tmp_path / "run" / "translate.json").read_text())["heldout"] == h
    png = Image.open(res.picture)
    assert png.height >= 3 * 2 * SIZE  # original / reconstruction / translated rows at scale 2
    loaded = DigitTranslator.from_pretrained(res.model_dir)
    assert loaded.config.source_codebook_sha256 == digit.codebook_sha256()

    args = ["digit", "translate", "--digit", str(digit_dir), "--out", str(tmp_path / "cli"), "--size", str(SIZE),
            "--images", "8", "--eval-images", "2", "--steps", "2", "--dim", "32", "--layers", "1", "--heads", "2",
            "-q"]  # fmt: skip
    assert cli_main(args) == 0  # the shipped MAGVIT-v2 (32x32 → 4x4 ids) as the target
    assert "token accuracy" in capsys.readouterr().out
    assert (tmp_path / "cli" / "model" / "model.safetensors").is_file()
