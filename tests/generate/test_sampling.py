"""Samplers against brute force: the filtered distribution (allowed ids, temperature, top-k, top-p) equals a numpy
reference and Hugging Face's logits warpers; 20k seeded draws match it (chi-square); determinism by generator; greedy;
argument errors."""

import math

import numpy as np
import pytest
import torch

from vistok.generate import logits_to_probs, sample_from_probs, sample_logits


def rand_logits(b: int, v: int, seed: int = 0, scale: float = 2.0) -> torch.Tensor:
    return torch.randn(b, v, generator=torch.Generator().manual_seed(seed)) * scale


def reference_probs(logits, temperature=1.0, top_k=None, top_p=None, allowed=None) -> np.ndarray:
    """Brute force, one row at a time in float64: mask, scale, keep the k largest, keep the nucleus, normalize."""
    z = logits.double().numpy().copy()
    out = np.zeros_like(z)
    for r in range(z.shape[0]):
        row = z[r].copy()
        if allowed is not None:
            a = allowed.numpy() if allowed.ndim == 1 else allowed[r].numpy()
            row[~a] = -np.inf
        if temperature == 0:
            out[r, int(np.argmax(row))] = 1.0
            continue
        row = row / temperature
        keep = np.isfinite(row)
        if top_k is not None:
            kth = np.sort(row)[::-1][min(top_k, len(row)) - 1]
            keep &= row >= kth
        p = np.where(keep, np.exp(row - row[keep].max()), 0.0)
        p /= p.sum()
        if top_p is not None:
            order = np.argsort(-p, kind="stable")
            nucleus, mass = [], 0.0
            for i in order:  # add ids by decreasing probability until the mass reaches top_p
                nucleus.append(i)
                mass += p[i]
                if mass >= top_p:
                    break
            keep &= np.isin(np.arange(len(row)), nucleus)
            p = np.where(keep, p, 0.0)
            p /= p.sum()
        out[r] = p
    return out


SETTINGS = [
    {},
    {"temperature": 0.7},
    {"temperature": 1.9},
    {"top_k": 1},
    {"top_k": 5},
    {"top_k": 100},  # larger than the vocabulary: no-op
    {"top_p": 0.3},
    {"top_p": 0.9},
    {"top_p": 1.0},
    {"temperature": 0.5, "top_k": 8, "top_p": 0.8},
    {"temperature": 1.5, "top_p": 0.5},
    {"temperature": 0.0},
]


@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()) or "plain")
@pytest.mark.parametrize("mask", [None, "shared", "per_row"])
def test_logits_to_probs_equals_brute_force(settings, mask):
    logits = rand_logits(6, 40, seed=3)
    allowed = None
    if mask == "shared":
        allowed = torch.rand(40, generator=torch.Generator().manual_seed(1)) < 0.6
    elif mask == "per_row":
        allowed = torch.rand(6, 40, generator=torch.Generator().manual_seed(2)) < 0.3
        allowed[:, 0] = True
    probs = logits_to_probs(logits, allowed=allowed, **settings)
    assert probs.dtype == torch.float32
    np.testing.assert_allclose(probs.double().numpy(), reference_probs(logits, allowed=allowed, **settings), atol=1e-6)


def test_top_p_keeps_the_id_that_crosses_the_threshold():
    logits = torch.tensor([[math.log(0.5), math.log(0.3), math.log(0.15), math.log(0.05)]])
    expected = {0.49: [1.0, 0, 0, 0], 0.51: [0.5 / 0.8, 0.3 / 0.8, 0, 0], 0.79: [0.5 / 0.8, 0.3 / 0.8, 0, 0]}
    for top_p, probs in expected.items():
        torch.testing.assert_close(logits_to_probs(logits, top_p=top_p), torch.tensor([probs]), atol=1e-6, rtol=0)
    assert (logits_to_probs(logits, top_p=0.96) > 0).all()
    assert (logits_to_probs(logits, top_p=1e-9) > 0).sum() == 1  # at least one id always kept


@pytest.mark.parametrize("settings", [{"temperature": 0.6, "top_k": 10, "top_p": 0.85}, {"top_p": 0.7}, {"top_k": 3}])
def test_matches_hugging_face_logits_warpers(settings):
    lp = pytest.importorskip("transformers.generation.logits_process", reason="transformers not installed")
    logits = rand_logits(4, 64, seed=5)
    warpers = []
    if "temperature" in settings:
        warpers.append(lp.TemperatureLogitsWarper(settings["temperature"]))
    if "top_k" in settings:
        warpers.append(lp.TopKLogitsWarper(settings["top_k"]))
    if "top_p" in settings:
        warpers.append(lp.TopPLogitsWarper(settings["top_p"]))
    scores = logits.clone()
    for w in warpers:
        scores = w(None, scores)
    torch.testing.assert_close(logits_to_probs(logits, **settings), torch.softmax(scores, -1), atol=1e-6, rtol=0)


def chi2_critical(df: int, z: float = 4.75) -> float:
    """Upper critical value of χ²(df) at the normal quantile z (Wilson–Hilferty; z = 4.75 ≈ p = 1e-6)."""
    a = 2.0 / (9.0 * df)
    return df * (1.0 - a + z * math.sqrt(a)) ** 3


@pytest.mark.parametrize(
    "settings",
    [{}, {"temperature": 0.6}, {"top_k": 4}, {"top_p": 0.75}, {"temperature": 1.3, "top_k": 6, "top_p": 0.9}],
)
def test_empirical_frequencies_match_the_filtered_distribution(settings):
    n, v = 20_000, 12
    logits = rand_logits(1, v, seed=7, scale=1.0).expand(n, v)
    allowed = torch.ones(v, dtype=torch.bool)
    allowed[[2, 9]] = False
    probs = logits_to_probs(logits[:1], allowed=allowed, **settings)[0].double()
    draws = sample_logits(logits, allowed=allowed, generator=torch.Generator().manual_seed(11), **settings)
    counts = torch.bincount(draws, minlength=v).double()
    support = probs > 0
    assert counts[~support].sum() == 0  # filtered-out ids are never drawn
    expected = n * probs[support]
    chi2 = float(((counts[support] - expected) ** 2 / expected).sum())
    df = int(support.sum()) - 1
    if df > 0:
        assert chi2 < chi2_critical(df), f"chi2 = {chi2:.1f} with {df} degrees of freedom"
    assert (counts[support] / n - probs[support]).abs().max() < 0.015


def test_allowed_ids_only_even_when_disallowed_ones_dominate():
    v = 50
    logits = torch.zeros(4000, v)
    logits[:, :10] = 30.0  # the disallowed ids hold almost all the mass
    allowed = torch.zeros(v, dtype=torch.bool)
    allowed[[12, 30, 47]] = True
    draws = sample_logits(logits, allowed=allowed, generator=torch.Generator().manual_seed(0))
    assert set(draws.tolist()) == {12, 30, 47}
    per_row = torch.zeros(2, v, dtype=torch.bool)
    per_row[0, 5], per_row[1, 40] = True, True
    assert sample_logits(logits[:2], allowed=per_row).tolist() == [5, 40]


def test_deterministic_by_generator():
    logits = rand_logits(8, 100, seed=1, scale=0.5)

    def draw(seed):
        return sample_logits(logits, temperature=0.9, top_p=0.95, generator=torch.Generator().manual_seed(seed))

    assert torch.equal(draw(0), draw(0))
    assert not torch.equal(draw(0), draw(1))
    g = torch.Generator().manual_seed(0)
    first, second = (sample_logits(logits, generator=g) for _ in range(2))
    assert not torch.equal(first, second)  # the generator advances


def test_temperature_zero_is_argmax_and_consumes_no_randomness():
    logits = rand_logits(5, 30, seed=2)
    g = torch.Generator().manual_seed(4)
    state = g.get_state()
    assert torch.equal(sample_logits(logits, temperature=0, generator=g), logits.argmax(-1))
    assert torch.equal(g.get_state(), state)
    allowed = torch.zeros(30, dtype=torch.bool)
    allowed[10:20] = True
    assert torch.equal(sample_logits(logits, temperature=0, allowed=allowed), logits[:, 10:20].argmax(-1) + 10)
    assert torch.equal(sample_logits(logits, top_k=1, generator=g), logits.argmax(-1))


def test_low_precision_logits_softmax_in_float32():
    logits = rand_logits(3, 20, seed=9)
    probs = logits_to_probs(logits.bfloat16(), top_p=0.9)
    assert probs.dtype == torch.float32
    torch.testing.assert_close(probs, logits_to_probs(logits.bfloat16().float(), top_p=0.9))
    assert sample_logits(logits.half(), generator=torch.Generator().manual_seed(0)).dtype == torch.long


def test_sample_from_probs_never_picks_zero_probability_ids():
    probs = torch.tensor([[0.0, 1.0, 0.0], [0.5, 0.0, 0.5]])
    noise = torch.tensor([[0.0, 3.0, 0.0], [1.0, 0.0, 2.0]])  # underflowed draws on zero-probability ids
    assert sample_from_probs(probs, noise).tolist() == [1, 0]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"temperature": -0.1}, ValueError, "temperature must be a finite number >= 0"),
        ({"temperature": float("nan")}, ValueError, "temperature"),
        ({"top_k": 0}, ValueError, r"top_k must be >= 1 .* got 0"),
        ({"top_k": 2.5}, TypeError, "top_k must be an int"),
        ({"top_p": 0.0}, ValueError, r"top_p must be in \(0, 1\] .* got 0.0"),
        ({"top_p": 1.5}, ValueError, r"top_p must be in \(0, 1\]"),
        ({"allowed": torch.ones(7)}, TypeError, "allowed must be a bool tensor"),
        ({"allowed": torch.ones(3, dtype=torch.bool)}, ValueError, r"allowed must have shape \(10,\) or \(2, 10\)"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        sample_logits(torch.zeros(2, 10), **kwargs)
    with pytest.raises(error, match=match):
        logits_to_probs(torch.zeros(2, 10), **kwargs)


def test_bad_logits_raise():
    with pytest.raises(ValueError, match=r"logits must be a floating-point tensor \(B, V\), got shape \(10,\)"):
        sample_logits(torch.zeros(10))
    with pytest.raises(ValueError, match="floating-point"):
        sample_logits(torch.zeros(2, 10, dtype=torch.long))
