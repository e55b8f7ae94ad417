"""Transfusion decoding: mode switching, KV cache vs fresh forward, CFG, determinism, caption, tiny overfit."""

from __future__ import annotations

import pytest
import torch

from vistok.generate.transfusion import TransfusionDecoder, caption, denoise_timesteps, generate
from vistok.models.transfusion import build_batch, drop_captions
from vistok.registry import create_model
from vistok.tokenizers.text import BOI, BOS, EOI, EOS


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_model("transfusion-tiny").eval()


def test_denoise_timesteps():
    assert denoise_timesteps(1000, 4) == [999, 666, 333, 0]
    assert denoise_timesteps(1000, 1) == [999]


def test_mode_switch_boi_patches_eoi_text(model):
    out = generate(model, [[[BOS, 104, BOI]], [[BOS, 105, BOI]]], max_new_tokens=5, image_size=(4, 4), steps=3)
    for r in range(2):
        assert len(out.images[r]) == 1 and out.images[r][0].shape == (4, 4, 4)
        assert out.ids[r][0] == EOI and BOI not in out.ids[r][1:]  # max_images = 1: no second BOI
        assert isinstance(out.segments[r][0], torch.Tensor) and out.segments[r][1][0] == EOI
        text = out.ids[r][1:]
        assert 1 <= len(text) <= 5 and (EOS not in text[:-1])


@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_cache_after_image_equals_fresh_forward(model, guidance):
    torch.manual_seed(1)
    prompts = [[[BOS, 104, BOI]], [[BOS, 105, 106, 107]]]  # row 1 stays in text mode while row 0 draws
    dec = TransfusionDecoder(model, 2, 64, cfg=guidance != 1.0, seed=3)
    last = dec.prefill(prompts)
    assert last.tolist() == [BOI, 107]
    rows = 4 if dec.cfg else 2
    feed = torch.cat([last, torch.full_like(last, BOI)]) if dec.cfg else last
    active = torch.tensor([True, True, True, False][:rows])
    logits_after_boi = dec.text_step(feed, active)
    x = dec.image_phase(torch.tensor([True, False]), (4, 4), steps=3, guidance=guidance)
    feed2 = torch.tensor([EOI, 108, 0, 0][:rows])
    act2 = torch.tensor([True, True, False, False][:rows])
    logits = dec.text_step(feed2, act2)
    fresh = build_batch([[[BOS, 104], x[0]], [[BOS, 105, 106, 107, 108]]], 2)
    ref, _ = model(fresh)
    n0 = int(fresh.valid[0].sum())
    assert torch.allclose(logits[0], ref[0, n0 - 1], atol=1e-4)
    assert torch.allclose(logits[1], ref[1, 4], atol=1e-4)
    assert torch.allclose(logits_after_boi[1], ref[1, 3], atol=1e-4)


def test_determinism_by_seed(model):
    kw = dict(max_new_tokens=4, image_size=(4, 4), steps=2, sampler="ddpm", guidance=2.0)
    a = generate(model, [[[BOS, BOI]]], seed=7, **kw)
    b = generate(model, [[[BOS, BOI]]], seed=7, **kw)
    c = generate(model, [[[BOS, BOI]]], seed=8, **kw)
    assert a.ids == b.ids and torch.equal(a.images[0][0], b.images[0][0])
    assert not torch.equal(a.images[0][0], c.images[0][0])


def test_caption_prompt_is_image_first(model):
    z = torch.randn(2, 4, 4, 4)
    ids = caption(model, z, max_new_tokens=3)
    assert len(ids) == 2 and all(1 <= len(r) <= 3 and BOI not in r for r in ids)


def _latents():
    g = torch.Generator().manual_seed(0)
    return [torch.randn(4, 4, 4, generator=g) for _ in range(2)]


def _overfit(steps: int):
    torch.manual_seed(0)
    m = create_model("transfusion-tiny", n_layers=2, dim=64)
    lat = _latents()
    caps = [list(b"red"), list(b"blue")]
    docs = []
    for z, c in zip(lat, caps, strict=True):
        docs += [[[BOS, *c], z, [EOS]], [[BOS], z, [*c, EOS]]]
    batch = build_batch(docs, 2)
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    eval_gen = lambda: torch.Generator().manual_seed(123)
    with torch.no_grad():
        d0 = m.loss(batch, eval_gen())["diffusion"].item()
    for _ in range(steps):
        loss = m.loss(batch, gen)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    m.eval()
    with torch.no_grad():
        d1 = m.loss(batch, eval_gen())["diffusion"].item()
    return m, lat, caps, d0, d1


def test_overfit_fast():
    _, _, _, d0, d1 = _overfit(40)
    assert d1 < 0.7 * d0


@pytest.mark.slow
def test_overfit_captions_and_images():
    m, lat, caps, d0, d1 = _overfit(300)
    assert d1 < 0.5 * d0
    got = caption(m, torch.stack(lat), max_new_tokens=6)
    assert got == [[*c, EOS] for c in caps]
    out = generate(m, [[[BOS, *caps[0], BOI]]], max_new_tokens=2, image_size=(4, 4), steps=50, sampler="ddim")
    err_own = (out.images[0][0] - lat[0]).pow(2).mean()
    err_other = (out.images[0][0] - lat[1]).pow(2).mean()
    assert err_own < err_other


def test_drop_captions_doc_still_builds():
    z = _latents()[0]
    b = build_batch([drop_captions([[BOS, 104], z, [EOS]])], 2)
    assert b.ids[0, :2].tolist() == [BOS, BOI]
