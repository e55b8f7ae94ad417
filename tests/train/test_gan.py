"""GAN losses, regularizers, blur-pool and discriminators against hand-computed values and brute-force references."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vistok.train.gan import (
    BlurPool,
    Discriminator,
    DiscriminatorConfig,
    GanSchedule,
    LeCamEMA,
    adaptive_weight,
    blur_kernel,
    discriminator_loss,
    generator_loss,
    hinge_d_loss,
    hinge_g_loss,
    lecam_regularization,
    non_saturating_d_loss,
    non_saturating_g_loss,
    r1_penalty,
)

REAL = torch.tensor([0.5, -2.0, 1.5])
FAKE = torch.tensor([-0.5, 0.3])


def _softplus(v: float) -> float:
    return math.log1p(math.exp(v))


# ------------------------------------------------------------------------------------------------------- losses


def test_hinge_losses_by_hand():
    # relu(1 - real) = [0.5, 3, 0] -> 3.5/3 ; relu(1 + fake) = [0.5, 1.3] -> 0.9
    assert hinge_d_loss(REAL, FAKE).item() == pytest.approx(3.5 / 3 + 0.9, abs=1e-6)
    assert hinge_g_loss(FAKE).item() == pytest.approx(0.1, abs=1e-6)
    assert discriminator_loss("hinge", REAL, FAKE).item() == pytest.approx(hinge_d_loss(REAL, FAKE).item())
    assert generator_loss("hinge", FAKE).item() == pytest.approx(0.1, abs=1e-6)


def test_non_saturating_losses_by_hand():
    d_real = sum(_softplus(-v) for v in REAL.tolist()) / 3
    d_fake = sum(_softplus(v) for v in FAKE.tolist()) / 2
    assert non_saturating_d_loss(REAL, FAKE).item() == pytest.approx(d_real + d_fake, abs=1e-6)
    g = -sum(math.log(1 / (1 + math.exp(-v))) for v in FAKE.tolist()) / 2  # -E log sigmoid(D(fake))
    assert non_saturating_g_loss(FAKE).item() == pytest.approx(g, abs=1e-6)
    assert generator_loss("non_saturating", FAKE).item() == pytest.approx(g, abs=1e-6)
    assert discriminator_loss("non_saturating", REAL, FAKE).item() == pytest.approx(d_real + d_fake, abs=1e-6)


def test_unknown_gan_loss_raises():
    with pytest.raises(ValueError, match="hinge"):
        generator_loss("wasserstein", FAKE)


# ------------------------------------------------------------------------------------------------------- LeCam


def test_lecam_formula_with_known_anchors():
    ema_real, ema_fake = 0.7, -0.4
    expected = sum((v - ema_fake) ** 2 for v in REAL.tolist()) / 3 + sum((v - ema_real) ** 2 for v in FAKE.tolist()) / 2
    assert lecam_regularization(REAL, FAKE, ema_real, ema_fake).item() == pytest.approx(expected, abs=1e-6)


def test_lecam_ema_updates_then_regularizes():
    lecam = LeCamEMA(decay=0.9)
    lecam.update(REAL, FAKE)  # the first update takes the batch means
    assert lecam.ema_real == pytest.approx(0.0, abs=1e-7) and lecam.ema_fake == pytest.approx(-0.1, abs=1e-7)
    real2, fake2 = torch.tensor([1.0, 2.0]), torch.tensor([-3.0])
    reg = lecam(real2, fake2)  # update first, then the penalty against the new anchors
    ema_real, ema_fake = 0.9 * 0.0 + 0.1 * 1.5, 0.9 * -0.1 + 0.1 * -3.0
    assert lecam.ema_real == pytest.approx(ema_real) and lecam.ema_fake == pytest.approx(ema_fake)
    assert reg.item() == pytest.approx(lecam_regularization(real2, fake2, ema_real, ema_fake).item(), abs=1e-6)
    lecam.update(torch.tensor([float("nan")]), fake2)  # ignored
    assert lecam.ema_real == pytest.approx(ema_real) and lecam.updates == 2
    other = LeCamEMA()
    other.load_state_dict(lecam.state_dict())
    assert other.state_dict() == lecam.state_dict()


# ------------------------------------------------------------------------------------------------------- R1


def test_r1_equals_squared_weight_norm_for_a_linear_discriminator():
    """D(x) = <w, x> + b has ∇ₓD = w for every sample, so R1 = ‖w‖², and dR1/dw = 2w."""
    torch.manual_seed(0)
    d = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 1))
    x = torch.randn(5, 3, 4, 4, requires_grad=True)
    r1 = r1_penalty(d(x), x)
    w = d[1].weight
    assert r1.item() == pytest.approx(w.pow(2).sum().item(), rel=1e-5)
    r1.backward()
    torch.testing.assert_close(w.grad, 2 * w.detach())


def test_r1_matches_per_sample_gradients_of_a_conv_discriminator():
    torch.manual_seed(0)
    d = Discriminator(DiscriminatorConfig.from_name("tiny"))
    x = torch.randn(3, 3, 8, 8, requires_grad=True)
    r1 = r1_penalty(d(x), x)
    by_hand = []
    for i in range(3):
        xi = x[i : i + 1].detach().clone().requires_grad_(True)
        (g,) = torch.autograd.grad(d(xi).sum(), xi)
        by_hand.append(g.pow(2).sum())
    assert r1.item() == pytest.approx(torch.stack(by_hand).mean().item(), rel=1e-4)
    assert r1.item() > 0
    r1.backward()
    weights = {n: p.grad for n, p in d.named_parameters() if n.endswith("weight")}  # ∇ₓD does not see biases
    assert all(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in weights.values())


def test_r1_needs_inputs_with_grad():
    d = nn.Linear(2, 1)
    x = torch.randn(2, 2)
    with pytest.raises(ValueError, match="requires_grad"):
        r1_penalty(d(x), x)


# ----------------------------------------------------------------------------------------------- adaptive weight


def test_adaptive_weight_is_the_ratio_of_gradient_norms():
    torch.manual_seed(0)
    last = nn.Linear(4, 3)
    h = torch.randn(6, 4)
    out = last(h)
    rec = out.abs().mean()
    gan = -(out * torch.randn(6, 3)).mean()
    (g_rec,) = torch.autograd.grad(rec, last.weight, retain_graph=True)
    (g_gan,) = torch.autograd.grad(gan, last.weight, retain_graph=True)
    expected = g_rec.norm() / (g_gan.norm() + 1e-4)
    weight = adaptive_weight(rec, gan, last.weight)
    assert weight.item() == pytest.approx(expected.item(), rel=1e-6)
    assert not weight.requires_grad
    assert adaptive_weight(rec, gan, last.weight, max_weight=1e-3).item() == pytest.approx(1e-3)
    (rec + weight * gan).backward()  # the graphs are still there for the real backward pass


# ------------------------------------------------------------------------------------------------------- blur-pool


def _reference_blur_pool_2d(x: torch.Tensor) -> torch.Tensor:
    """Zero-pad by 1, then out[i, j] = Σ_ab k[a, b]·x[2i + a, 2j + b] with k = [1,3,3,1]⊗[1,3,3,1]/64."""
    taps = [1.0, 3.0, 3.0, 1.0]
    k = [[a * b / 64 for b in taps] for a in taps]
    xp = F.pad(x, (1, 1, 1, 1))
    h, w = (xp.shape[-2] - 4) // 2 + 1, (xp.shape[-1] - 4) // 2 + 1
    out = torch.zeros(*x.shape[:2], h, w, dtype=x.dtype)
    for i in range(h):
        for j in range(w):
            for a in range(4):
                for b in range(4):
                    out[..., i, j] += k[a][b] * xp[..., 2 * i + a, 2 * j + b]
    return out


def test_blur_pool_equals_reference_conv():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 6, dtype=torch.float64)
    torch.testing.assert_close(BlurPool(2)(x), _reference_blur_pool_2d(x))
    assert blur_kernel(2).sum().item() == pytest.approx(1.0)
    ones = torch.ones(1, 1, 8, 8)
    assert torch.allclose(BlurPool(2)(ones)[..., 1:-1, 1:-1], torch.ones(1, 1, 2, 2))  # interior keeps a constant


def test_blur_pool_3d_is_separable_in_time():
    """3-D blur-pool = per-frame 2-D blur-pool, then the [1,3,3,1]/8 stride-2 blur over time."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 5, 8, 8, dtype=torch.float64)
    y = BlurPool(3)(x)
    assert y.shape == (2, 3, 2, 4, 4)
    frames = torch.stack([_reference_blur_pool_2d(x[:, :, t]) for t in range(5)], dim=2)
    kt = torch.tensor([1.0, 3.0, 3.0, 1.0], dtype=torch.float64) / 8
    padded = F.pad(frames, (0, 0, 0, 0, 1, 1))
    ref = torch.stack([sum(kt[a] * padded[:, :, 2 * i + a] for a in range(4)) for i in range(2)], dim=2)
    torch.testing.assert_close(y, ref)
    spatial_only = BlurPool(3, temporal=False)(x)
    torch.testing.assert_close(spatial_only, frames)
    one_frame = BlurPool(3)(x[:, :, :1])  # a single frame is blurred in space only
    torch.testing.assert_close(one_frame, frames[:, :, :1])


# ------------------------------------------------------------------------------------------------------- discriminators


@pytest.mark.parametrize(
    ("dims", "shape", "out"),
    [
        (2, (2, 3, 16, 16), (2, 1, 4, 4)),
        (2, (1, 3, 32, 16), (1, 1, 8, 4)),
        (3, (2, 3, 5, 16, 16), (2, 1, 1, 4, 4)),
        (3, (2, 3, 9, 16, 16), (2, 1, 2, 4, 4)),
        (3, (1, 3, 1, 16, 16), (1, 1, 1, 4, 4)),
    ],
)
def test_discriminator_shapes_and_input_gradient(dims, shape, out):
    torch.manual_seed(0)
    d = Discriminator(DiscriminatorConfig.from_name("tiny", dims=dims))
    x = torch.randn(shape, requires_grad=True)
    logits = d(x)
    assert logits.shape == out
    logits.sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_discriminator_channels_and_errors():
    cfg = DiscriminatorConfig(base_channels=16, levels=4, max_channels=64)
    assert cfg.channels() == [16, 32, 64, 64, 64]
    d = Discriminator(DiscriminatorConfig.from_name("tiny"))
    with pytest.raises(ValueError, match="too small"):
        d(torch.randn(1, 3, 2, 2))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        d(torch.randn(1, 3, 1, 8, 8))
    with pytest.raises(ValueError, match="preset"):
        DiscriminatorConfig.from_name("huge")


def test_gan_schedule_warms_the_discriminator_up_first():
    s = GanSchedule(disc_start=3, disc_warmup_start=1)
    assert [s.train_discriminator(t) for t in range(5)] == [False, True, True, True, True]
    assert [s.generator_adversarial(t) for t in range(5)] == [False, False, False, True, True]
    with pytest.raises(ValueError, match="disc_warmup_start"):
        GanSchedule(disc_start=1, disc_warmup_start=2)
