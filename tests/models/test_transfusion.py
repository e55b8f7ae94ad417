"""Transfusion model: sequence format, masks, diffusion math, noise cap, loss weighting, overfit."""

from __future__ import annotations

import math

import pytest
import torch

from vistok.layers import MaskSpec, build_dense_mask
from vistok.models.transfusion import (
    IGNORE,
    PRESETS,
    DiffusionSchedule,
    Transfusion,
    TransfusionConfig,
    build_batch,
    diffusion_loss,
    drop_captions,
    patchify,
    sample_timesteps,
    transfusion_loss,
    unpatchify,
)
from vistok.registry import create_model
from vistok.tokenizers.text import BOI, BOS, EOI, EOS, PAD


def _img(h=1, w=2, c=4, seed=0):
    return torch.randn(c, h, w, generator=torch.Generator().manual_seed(seed))


def _golden_batch():
    # doc 1: BOS a BOI p p EOI EOS   doc 2: BOS b   then one padding slot (row length 10)
    docs = [[[BOS, 97], _img(), [EOS]], [[BOS, 98]]]
    return build_batch(docs, patch_size=1, pack=True, max_len=10)


def test_batch_layout_golden():
    b = _golden_batch()
    assert b.ids.shape == (1, 10)
    assert b.ids[0].tolist() == [BOS, 97, BOI, PAD, PAD, EOI, EOS, BOS, 98, PAD]
    assert b.span_ids[0].tolist() == [0, 0, 0, 1, 1, 0, 0, 0, 0, 0]
    assert b.doc_ids[0].tolist() == [1, 1, 1, 1, 1, 1, 1, 2, 2, 0]
    assert b.positions[0].tolist() == [0, 1, 2, 3, 4, 5, 6, 0, 1, 0]
    # targets: next text token; BOI is predicted, patches and EOI are not, EOI predicts the next text token
    assert b.targets[0].tolist() == [97, BOI, IGNORE, IGNORE, IGNORE, EOS, IGNORE, 98, IGNORE, IGNORE]
    assert b.patch_index.tolist() == [3, 4]
    assert b.image_row.tolist() == [0] and b.image_start.tolist() == [3]
    assert torch.equal(b.patches, patchify(b.images[0][None], 1)[0])
    assert b.capped.tolist() == [False]  # text → image: no caption after the image


def test_mask_golden():
    b = _golden_batch()
    got = build_dense_mask(b.mask_spec(), 10)[0, 0]
    exp = torch.zeros(10, 10, dtype=torch.bool)
    for q in range(7):  # doc 1, causal
        exp[q, : q + 1] = True
    exp[3, 4] = True  # bidirectional inside the image
    exp[7, 7] = exp[8, 7] = exp[8, 8] = True  # doc 2, causal, no cross-document attention; slot 9 = padding
    assert torch.equal(got, exp)


def test_noise_cap_rule_and_padding():
    docs = [[[BOS], _img(2, 2), [104, 105, EOS]], [[BOS, 104], _img(2, 2), [EOS]], [[BOS], _img(2, 2), [EOS]]]
    b = build_batch(docs, patch_size=2)
    assert b.capped.tolist() == [True, False, False]
    assert b.valid.sum(1).tolist() == [7, 6, 5]
    assert not b.valid[2, 5:].any() and (b.targets[2, 5:] == IGNORE).all()


def test_patchify_roundtrip():
    x = torch.randn(2, 4, 8, 6)
    for k in (1, 2):
        assert torch.equal(unpatchify(patchify(x, k), k, 4, 8, 6), x)
    p = patchify(x, 2)
    assert torch.equal(p[0, 1], x[0, :, 0:2, 2:4].reshape(-1))  # row-major patches


def test_drop_captions():
    doc = [[BOS, 104, 105], _img(), [EOS]]
    out = drop_captions(doc)
    assert out[0] == [BOS] and out[2] == [EOS] and out[1] is doc[1]


def test_cosine_schedule():
    s = DiffusionSchedule(1000)
    a = s.alphas_cumprod
    assert (a[1:] < a[:-1]).all() and 0.99 < a[0] < 1 and a[-1] < 1e-3
    f = lambda t: math.cos((t / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2
    assert a[499].item() == pytest.approx(f(500) / f(0), rel=1e-6)


def test_q_sample_moments_and_eps_roundtrip():
    s = DiffusionSchedule(1000)
    g = torch.Generator().manual_seed(0)
    x0 = torch.full((20000, 1), 0.7, dtype=torch.float64)
    t = torch.full((20000,), 300)
    noise = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    xt = s.q_sample(x0, t, noise)
    ab = s.alphas_cumprod[300].item()
    assert xt.mean().item() == pytest.approx(math.sqrt(ab) * 0.7, abs=0.02)
    assert xt.var().item() == pytest.approx(1 - ab, rel=0.05)
    assert torch.allclose(s.predict_x0(xt, t, noise), x0, atol=1e-12)


@pytest.mark.parametrize("objective", ["eps", "flow"])
def test_ddim_with_true_noise_recovers_x0(objective):
    s = DiffusionSchedule(1000, objective)
    x0 = torch.randn(3, 4, 2, 2, dtype=torch.float64)
    eps = torch.randn_like(x0)
    x = s.q_sample(x0, torch.full((3,), 999), eps)
    ts = [999, 700, 300, 50, 0]
    for i, t in enumerate(ts):
        tn = torch.full((3,), t)
        tp = torch.full((3,), ts[i + 1] if i + 1 < len(ts) else -1)
        x = s.ddim_step(x, tn, tp, s.target(x0, eps))
    assert torch.allclose(x, x0, atol=1e-10)


def test_ddpm_step_posterior_with_true_noise_is_unbiased():
    s = DiffusionSchedule(1000)
    x0 = torch.ones(50000, 1, dtype=torch.float64)
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    t, tp = torch.full((50000,), 600), torch.full((50000,), 400)
    x = s.ddpm_step(s.q_sample(x0, t, eps), t, tp, eps, generator=torch.Generator().manual_seed(2))
    ab = s.alphas_cumprod[400].item()  # marginal of x_{t'} given x0 is N(√ᾱ' x0, 1 − ᾱ')
    assert x.mean().item() == pytest.approx(math.sqrt(ab), abs=0.01)
    assert x.var().item() == pytest.approx(1 - ab, rel=0.05)


def test_noise_cap_never_exceeded():
    capped = torch.tensor([True, False] * 5000)
    t = sample_timesteps(capped, 1000, 500, torch.Generator().manual_seed(0))
    assert t[capped].max().item() == 500 and t[capped].min().item() == 0
    assert t[~capped].max().item() > 900 and t.max().item() <= 999


def test_loss_weighting_per_image():
    # image 1: 4 elements, error 1 each → MSE 1; image 2: 16 elements, error 3 → MSE 9; per-image mean = 5
    preds = [torch.ones(1, 2, 2), torch.full((1, 4, 4), 3.0)]
    targets = [torch.zeros(1, 2, 2), torch.zeros(1, 4, 4)]
    assert diffusion_loss(preds, targets).item() == pytest.approx(5.0)  # (element-wise mean would be 7.4)
    logits = torch.zeros(1, 3, 8)
    tgt = torch.tensor([[1, IGNORE, 2]])
    total, lm, _ = transfusion_loss(logits, tgt, preds, targets, lam=5.0)
    assert lm.item() == pytest.approx(math.log(8))
    assert total.item() == pytest.approx(math.log(8) + 25.0)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_build(name):
    cfg = TransfusionConfig.from_name(name)
    assert cfg.patch_dim == cfg.latent_channels * cfg.patch_size**2
    if "tiny" in name:
        m = create_model(name)
        assert isinstance(m, Transfusion)


def _tiny_batch(encoder="linear"):
    docs = [[[BOS, 104], _img(4, 4, seed=1), [EOS]], [[BOS], _img(4, 4, seed=2), [105, 106, EOS]]]
    return build_batch(docs, patch_size=2)


@pytest.mark.parametrize("name", ["transfusion-tiny", "transfusion-tiny-unet"])
def test_forward_shapes_and_intra_image_bidirectional(name):
    torch.manual_seed(0)
    m = create_model(name).eval()
    b = _tiny_batch()
    logits, preds = m(b)
    assert logits.shape == (2, b.ids.shape[1], 272) and [p.shape for p in preds] == [(4, 4, 4)] * 2
    # changing the last patch of image 1 changes the first patch's prediction (bidirectional) but not the text before
    noisy = [x.clone() for x in b.images]
    noisy[0][:, 2:, 2:] += 1.0
    logits2, preds2 = m(b, noisy)
    assert torch.allclose(logits2[0, :3], logits[0, :3], atol=1e-6)
    assert not torch.allclose(preds2[0][:, :2, :2], preds[0][:, :2, :2], atol=1e-6)
    assert torch.allclose(logits2[1], logits[1], atol=1e-6)  # other row untouched


def test_packed_equals_separate():
    torch.manual_seed(0)
    m = create_model("transfusion-tiny").eval()
    docs = [[[BOS, 104], _img(4, 4, seed=1), [EOS]], [[BOS], _img(4, 4, seed=2), [105, EOS]]]
    sep = build_batch(docs, 2)
    packed = build_batch(docs, 2, pack=True, max_len=32)
    assert packed.ids.shape[0] == 1
    ls, ps = m(sep)
    lp, pp = m(packed)
    n0 = int(sep.valid[0].sum())
    n1 = int(sep.valid[1].sum())
    assert torch.allclose(lp[0, :n0], ls[0, :n0], atol=1e-5)
    assert torch.allclose(lp[0, n0 : n0 + n1], ls[1, :n1], atol=1e-5)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(ps, pp, strict=True))


def test_loss_runs_and_backprops():
    torch.manual_seed(0)
    m = create_model("transfusion-tiny")
    out = m.loss(_tiny_batch(), generator=torch.Generator().manual_seed(0))
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and m.patches.proj_in.weight.grad is not None
    assert out["t"][1] <= 500  # the second document's image precedes its caption


@pytest.mark.skipif(not torch.cuda.is_available(), reason="FlexAttention block masks need CUDA (CPU uses dense SDPA)")
@pytest.mark.parametrize("compiled", [False, True])
def test_flex_matches_dense_on_cuda(compiled):
    torch.manual_seed(0)
    m = create_model("transfusion-tiny").cuda()
    m.compiled_flex = compiled
    b = _tiny_batch().to("cuda")
    logits_flex, preds_flex = m(b)
    assert len(m._block_masks) == 1
    m(b)
    assert len(m._block_masks) == 1  # cached by sequence structure
    (logits_flex[b.valid].square().mean() + sum(p.square().mean() for p in preds_flex)).backward()
    grads_flex = [None if p.grad is None else p.grad.clone() for p in m.parameters()]
    m.zero_grad()
    m.attention_mask = lambda s, d, v: MaskSpec(causal=True, span_ids=s, doc_ids=d, valid=v)  # dense SDPA path
    logits_dense, preds_dense = m(b)
    v = b.valid
    assert torch.allclose(logits_flex[v], logits_dense[v], atol=1e-4)
    assert all(torch.allclose(a, c, atol=1e-4) for a, c in zip(preds_flex, preds_dense, strict=True))
    (logits_dense[v].square().mean() + sum(p.square().mean() for p in preds_dense)).backward()
    for gf, p in zip(grads_flex, m.parameters(), strict=True):
        assert (gf is None) == (p.grad is None)
        assert gf is None or torch.allclose(gf, p.grad, atol=1e-4, rtol=1e-3)
