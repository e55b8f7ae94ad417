"""vistok.eval.metrics: PSNR/SSIM against scikit-image, MS-SSIM against a float64 numpy reference written from the
paper, codebook statistics and bits per pixel by hand, the Fréchet distance against scipy's sqrtm."""

from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import pytest
import torch
from skimage import data as skdata
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from vistok.eval.metrics import (
    MS_SSIM_WEIGHTS,
    CodebookStats,
    bits_per_pixel,
    code_histogram,
    codebook_stats,
    codebook_usage,
    entropy_bits_per_pixel,
    feature_statistics,
    frechet_distance,
    load_feature_network,
    ms_ssim,
    ms_ssim_scales,
    psnr,
    ssim,
)

TOL = 1e-4


def sk_ssim(a: np.ndarray, b: np.ndarray, data_range: float) -> float:
    """scikit-image's SSIM with the settings of Wang et al. 2004 on HWC arrays."""
    return structural_similarity(
        a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=data_range, channel_axis=-1
    )


def chw(a: np.ndarray) -> torch.Tensor:
    """HWC numpy → (1, C, H, W) tensor of the same dtype."""
    return torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1).unsqueeze(0)


def noisy(a: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(a + rng.normal(0, sigma, a.shape), 0, 255).round().astype(np.uint8)


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    """A real photograph crop (uint8 HWC), odd-sized so nothing lines up by luck."""
    return skdata.astronaut()[40:217, 120:301]  # 177×181


@pytest.fixture(scope="module")
def coffee() -> np.ndarray:
    return skdata.coffee()[::2, ::2][:70, :90]


# ------------------------------------------------------------------------------------------------------- PSNR


def test_psnr_matches_skimage_on_real_and_random_images(photo):
    rng = np.random.default_rng(1)
    pairs = [(photo, noisy(photo, 12.0)), tuple(rng.integers(0, 256, (2, 31, 45, 3), dtype=np.uint8))]
    for a, b in pairs:
        ours = psnr(chw(a), chw(b)).item()
        assert ours == pytest.approx(peak_signal_noise_ratio(a, b, data_range=255), abs=TOL)
        fa, fb = (chw(v).double() / 127.5 - 1 for v in (a, b))  # [-1, 1]: the same picture, the same PSNR
        assert psnr(fa, fb).item() == pytest.approx(ours, abs=TOL)
        assert psnr(fa.float(), fb.float(), data_range=2.0).item() == pytest.approx(ours, abs=TOL)


def test_psnr_is_per_item_and_per_frame_mean():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 4, 16, 20, generator=g) * 2 - 1
    y = (x + 0.1 * torch.randn(x.shape, generator=g)).clamp(-1, 1)
    got = psnr(x, y)
    assert got.shape == (2,)
    for i in range(2):
        frames = [psnr(x[i : i + 1, :, t], y[i : i + 1, :, t]).item() for t in range(4)]
        assert got[i].item() == pytest.approx(np.mean(frames), abs=1e-5)
        assert psnr(x[i : i + 1], y[i : i + 1]).item() == pytest.approx(got[i].item(), abs=1e-5)


# ------------------------------------------------------------------------------------------------------- SSIM


@pytest.mark.parametrize("hw", [(11, 11), (23, 31), (64, 48)])
def test_ssim_matches_skimage_on_random_uint8(hw):
    rng = np.random.default_rng(hw[0])
    a = rng.integers(0, 256, (*hw, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-40, 41, a.shape), 0, 255).astype(np.uint8)
    assert ssim(chw(a), chw(b)).item() == pytest.approx(sk_ssim(a, b, 255), abs=TOL)


def test_ssim_matches_skimage_on_real_photos(photo, coffee):
    for img, sigma in ((photo[:90, :101], 8.0), (photo[60:, 50:], 30.0), (coffee, 15.0)):
        b = noisy(img, sigma)
        assert ssim(chw(img), chw(b)).item() == pytest.approx(sk_ssim(img, b, 255), abs=TOL)


def test_ssim_of_float_pixels_in_default_range_equals_their_uint8_version(photo):
    """[-1, 1] floats are mapped to [0, 1] (skimage on (x + 1) / 2 with range 1, or on the uint8 picture)."""
    photo = photo[:64, :80]
    b = noisy(photo, 20.0)
    fa, fb = (chw(v).float() / 127.5 - 1 for v in (photo, b))
    expected = sk_ssim(((fa[0] + 1) / 2).permute(1, 2, 0).numpy(), ((fb[0] + 1) / 2).permute(1, 2, 0).numpy(), 1.0)
    assert ssim(fa, fb).item() == pytest.approx(expected, abs=TOL)
    assert ssim(fa, fb).item() == pytest.approx(ssim(chw(photo), chw(b)).item(), abs=TOL)


def test_ssim_with_an_explicit_range_takes_values_as_they_are(photo):
    """data_range=L: exactly scikit-image given the same raw values and range (here [-1, 1] and 2)."""
    photo = photo[:64, :80]
    b = noisy(photo, 20.0)
    fa, fb = (chw(v).double() / 127.5 - 1 for v in (photo, b))
    expected = sk_ssim(fa[0].permute(1, 2, 0).numpy(), fb[0].permute(1, 2, 0).numpy(), 2.0)
    assert ssim(fa, fb, data_range=2.0).item() == pytest.approx(expected, abs=1e-8)


def test_video_ssim_is_the_mean_over_frames_and_items_are_independent():
    rng = np.random.default_rng(3)
    clips = rng.integers(0, 256, (2, 3, 24, 26, 3), dtype=np.uint8)  # (B, T, H, W, C)
    recon = np.clip(clips.astype(int) + rng.integers(-30, 31, clips.shape), 0, 255).astype(np.uint8)
    x, y = (torch.from_numpy(v).permute(0, 4, 1, 2, 3) for v in (clips, recon))
    got = ssim(x, y)
    for i in range(2):
        expected = np.mean([sk_ssim(clips[i, t], recon[i, t], 255) for t in range(3)])
        assert got[i].item() == pytest.approx(expected, abs=TOL)


# ------------------------------------------------------------------------------------------------------- MS-SSIM


def _ref_window() -> np.ndarray:
    g = np.exp(-((np.arange(11) - 5.0) ** 2) / (2 * 1.5**2))
    w = np.outer(g, g)
    return w / w.sum()


def _ref_filter(a: np.ndarray) -> np.ndarray:
    """Weighted mean over every 11×11 window that fits inside ``a`` (scipy's 2-D correlation, border cropped)."""
    from scipy import ndimage

    return ndimage.correlate(a, _ref_window(), mode="constant")[5:-5, 5:-5]


def _ref_stats(a: np.ndarray, b: np.ndarray, c1: float, c2: float) -> tuple[float, float]:
    """Mean SSIM and mean contrast-structure of one channel (float64), eq. (6)–(13) of Wang et al. 2004."""
    mu_a, mu_b = _ref_filter(a), _ref_filter(b)
    var_a = _ref_filter(a * a) - mu_a**2
    var_b = _ref_filter(b * b) - mu_b**2
    cov = _ref_filter(a * b) - mu_a * mu_b
    cs = (2 * cov + c2) / (var_a + var_b + c2)
    lum = (2 * mu_a * mu_b + c1) / (mu_a**2 + mu_b**2 + c1)
    return float((lum * cs).mean()), float(cs.mean())


def _ref_pool(a: np.ndarray) -> np.ndarray:
    h, w = a.shape[0] // 2 * 2, a.shape[1] // 2 * 2
    return a[:h, :w].reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))


def ref_ms_ssim(a: np.ndarray, b: np.ndarray, data_range: float, scales: int) -> float:
    """MS-SSIM of Wang et al. 2003 (eq. 7) on HWC arrays: per channel Π cs_j^β_j · SSIM_M^β_M, channel mean."""
    weights = np.array(MS_SSIM_WEIGHTS[:scales])
    weights = weights / weights.sum() if scales < len(MS_SSIM_WEIGHTS) else weights
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    per_channel = []
    for ch in range(a.shape[2]):
        x, y = a[..., ch].astype(np.float64), b[..., ch].astype(np.float64)
        value = 1.0
        for j in range(scales):
            if j:
                x, y = _ref_pool(x), _ref_pool(y)
            full, cs = _ref_stats(x, y, c1, c2)
            value *= max(full if j == scales - 1 else cs, 0.0) ** weights[j]
        per_channel.append(value)
    return float(np.mean(per_channel))


def test_ms_ssim_matches_the_paper_definition_at_five_scales(photo):
    a, b = photo, noisy(photo, 25.0)
    assert ms_ssim_scales(*a.shape[:2]) == 5
    expected = ref_ms_ssim(a, b, 255.0, 5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 5 scales fit: no warning
        assert ms_ssim(chw(a).double(), chw(b).double(), data_range=255.0).item() == pytest.approx(expected, abs=1e-9)
        assert ms_ssim(chw(a), chw(b)).item() == pytest.approx(expected, abs=TOL)


def test_ms_ssim_with_fewer_scales_renormalises_the_weights(coffee):
    a = coffee
    b = noisy(a, 25.0)
    assert ms_ssim(chw(a), chw(b), scales=3).item() == pytest.approx(ref_ms_ssim(a, b, 255.0, 3), abs=TOL)
    a, b = a[:40], b[:40]  # 40 // 2 = 20 ≥ 11 > 40 // 4: two scales fit
    with pytest.warns(UserWarning, match="fit only 2 of 5 scales"):
        auto = ms_ssim(chw(a), chw(b))
    assert auto.item() == pytest.approx(ref_ms_ssim(a, b, 255.0, 2), abs=TOL)


def test_ms_ssim_rejects_frames_too_small_with_the_size_needed():
    x = torch.zeros(1, 3, 64, 64, dtype=torch.uint8)
    with pytest.raises(ValueError, match="176×176"):
        ms_ssim(x, x, scales=5)
    tiny = torch.zeros(1, 3, 10, 40, dtype=torch.uint8)
    with pytest.raises(ValueError, match="at least 11×11"):
        ms_ssim(tiny, tiny)
    with pytest.raises(ValueError, match="at least 11×11"):
        ssim(tiny, tiny)


# ------------------------------------------------------------------------------------------------------- properties


def test_identical_inputs_score_the_maximum(photo):
    x = chw(photo)
    f = x.float() / 127.5 - 1
    assert math.isinf(psnr(x, x).item()) and math.isinf(psnr(f, f).item())
    assert ssim(x, x).item() == pytest.approx(1.0, abs=1e-6)
    assert ssim(f, f).item() == pytest.approx(1.0, abs=1e-6)
    assert ms_ssim(x, x).item() == pytest.approx(1.0, abs=1e-6)


def test_scores_fall_as_noise_grows(photo):
    photo = photo[:96, :100]
    x = chw(photo)
    scores = [
        (psnr(x, y).item(), ssim(x, y).item(), ms_ssim(x, y, scales=3).item())
        for y in (chw(noisy(photo, s)) for s in (2.0, 8.0, 20.0, 50.0))
    ]
    for metric in zip(*scores):
        assert all(a > b for a, b in itertools.pairwise(metric)), metric


def test_bad_metric_inputs_raise_clearly():
    x = torch.zeros(1, 3, 16, 16)
    with pytest.raises(ValueError, match="same shape"):
        psnr(x, torch.zeros(1, 3, 16, 15))
    with pytest.raises(ValueError, match="same dtype"):
        ssim(x, x.double())
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        psnr(x[0], x[0])
    with pytest.raises(ValueError, match="data_range"):
        psnr(x.to(torch.int16), x.to(torch.int16))


# ------------------------------------------------------------------------------------------------------- tokens


def test_codebook_statistics_by_hand():
    ids = torch.tensor([[0, 0], [1, 2]])
    stats = codebook_stats(ids, 8)
    assert (stats.used_codes, stats.num_tokens, stats.usage) == (3, 4, 3 / 8)
    assert stats.entropy_bits == pytest.approx(1.5)  # p = (1/2, 1/4, 1/4)
    assert stats.perplexity == pytest.approx(2**1.5)
    assert stats.max_entropy_bits == 3.0
    assert codebook_usage(ids, 8) == 3 / 8
    uniform = codebook_stats(torch.arange(16).repeat(3), 16)
    assert uniform.entropy_bits == pytest.approx(4.0) and uniform.perplexity == pytest.approx(16.0)
    assert codebook_stats(torch.full((5,), 7), 8).entropy_bits == 0.0


def test_histograms_of_batches_add_up():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randint(0, 50, (3, 4, 4), generator=g), torch.randint(0, 50, (2, 4, 4), generator=g)
    total = code_histogram(a, 64) + code_histogram(b, 64)
    assert CodebookStats.from_counts(total) == codebook_stats(torch.cat([a, b]), 64)


def test_codebook_statistics_reject_bad_ids():
    with pytest.raises(ValueError, match=r"\[0, 8\)"):
        code_histogram(torch.tensor([0, 8]), 8)
    with pytest.raises(ValueError, match=r"\[0, 8\)"):
        code_histogram(torch.tensor([-1, 3]), 8)
    with pytest.raises(TypeError, match="integer"):
        code_histogram(torch.tensor([0.0, 1.0]), 8)


def test_bits_per_pixel():
    # MAGVIT-v2's image tokenizer: 16×16 tokens of 2^18 codes for a 256×256 image.
    assert bits_per_pixel(256, 2**18, 256 * 256) == pytest.approx(256 * 18 / 65536)
    # a 17-frame 128² clip → 5×16×16 tokens of 2^10 codes
    assert bits_per_pixel(5 * 16 * 16, 1024, 17 * 128 * 128) == pytest.approx(12800 / 278528)
    assert entropy_bits_per_pixel(100, 6.5, 1000) == pytest.approx(0.65)
    with pytest.raises(ValueError):
        bits_per_pixel(10, 0, 100)


# ------------------------------------------------------------------------------------------------------- FID


def test_feature_statistics_match_numpy():
    f = torch.randn(50, 6, generator=torch.Generator().manual_seed(0))
    mu, sigma = feature_statistics(f)
    assert np.allclose(mu.numpy(), f.numpy().mean(0)) and np.allclose(sigma.numpy(), np.cov(f.numpy(), rowvar=False))
    with pytest.raises(ValueError, match="N >= 2"):
        feature_statistics(f[:1])


def test_frechet_distance_matches_the_scipy_formula():
    from scipy import linalg

    rng = np.random.default_rng(0)
    a = rng.normal(size=(200, 12))
    b = rng.normal(size=(150, 12)) @ rng.normal(size=(12, 12)) * 0.5 + 0.3
    (m1, s1), (m2, s2) = (feature_statistics(torch.from_numpy(v)) for v in (a, b))
    covmean = linalg.sqrtm(s1.numpy() @ s2.numpy()).real
    expected = ((m1 - m2).numpy() ** 2).sum() + np.trace(s1.numpy() + s2.numpy() - 2 * covmean)
    assert frechet_distance(m1, s1, m2, s2) == pytest.approx(expected, rel=1e-8)
    assert frechet_distance(m1, s1, m1, s1) == pytest.approx(0.0, abs=1e-8)
    assert frechet_distance(m1, s1, m1 + 2.0, s1) == pytest.approx(4.0 * 12, rel=1e-8)  # only the means differ
    with pytest.raises(ValueError, match="one D"):
        frechet_distance(m1, s1, m2[:3], s2)


class _Features(torch.nn.Module):
    """A toy feature network with the StyleGAN2-ADA detector's calling convention."""

    def forward(self, img: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        x = img.float() / 255.0
        feats = torch.cat([x.mean(dim=(2, 3)), x.std(dim=(2, 3))], dim=1)
        return feats if return_features else feats.sum(dim=1, keepdim=True)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit.script / save, to make the test file
def test_load_feature_network_calls_torchscript_with_return_features(tmp_path):
    path = tmp_path / "net.pt"
    torch.jit.save(torch.jit.script(_Features()), str(path))
    features = load_feature_network(path)
    images = torch.randint(0, 256, (4, 3, 20, 24), dtype=torch.uint8)
    assert torch.allclose(features(images), _Features()(images, return_features=True))
    with pytest.raises(ValueError, match="uint8"):
        features(images.float())
    (tmp_path / "junk.pt").write_bytes(b"not a torchscript archive")
    with pytest.raises(ValueError, match="not a TorchScript"):
        load_feature_network(tmp_path / "junk.pt")
    with pytest.raises(FileNotFoundError):
        load_feature_network(tmp_path / "missing.pt")
