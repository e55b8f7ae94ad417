"""RMSNorm against an explicit per-row loop, plus dtype behaviour and invariants."""

import math

import pytest
import torch

from vistok.layers import RMSNorm, rms_norm


def naive_rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    """Row by row in float64: w_i * x_i / sqrt(mean(x²) + eps)."""
    rows = x.double().reshape(-1, x.shape[-1])
    out = torch.empty_like(rows)
    for r, row in enumerate(rows):
        ms = sum(float(v) ** 2 for v in row) / len(row)
        out[r] = row / math.sqrt(ms + eps) * w.double()
    return out.reshape(x.shape)


def test_matches_naive_reference():
    torch.manual_seed(0)
    norm = RMSNorm(16, eps=1e-5)
    with torch.no_grad():
        norm.weight.normal_()
    x = torch.randn(2, 3, 16)
    torch.testing.assert_close(norm(x).double(), naive_rms_norm(x, norm.weight, 1e-5), rtol=1e-6, atol=1e-6)


def test_eps_matters_for_tiny_inputs():
    x = torch.full((1, 4), 1e-4)
    torch.testing.assert_close(rms_norm(x, eps=1e-6), x / math.sqrt(1e-8 + 1e-6))


def test_half_precision_input_uses_float32_statistics_and_casts_back():
    torch.manual_seed(0)
    x = (torch.randn(4, 32) * 300).to(torch.bfloat16)
    y = rms_norm(x)
    assert y.dtype == torch.bfloat16
    x32 = x.float()
    expected = (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + 1e-6)).to(torch.bfloat16)
    assert torch.equal(y, expected)


def test_invariants_scale_invariance_and_unit_rms():
    torch.manual_seed(0)
    x = torch.randn(5, 64, dtype=torch.float64)
    y = rms_norm(x, eps=0.0)
    torch.testing.assert_close(y.pow(2).mean(-1), torch.ones(5, dtype=torch.float64))
    torch.testing.assert_close(rms_norm(7.5 * x, eps=0.0), y)


def test_weight_initialized_to_ones_and_gradient_flows():
    norm = RMSNorm(8)
    assert torch.equal(norm.weight, torch.ones(8))
    x = torch.randn(3, 8, requires_grad=True)
    norm(x).sum().backward()
    assert x.grad is not None and norm.weight.grad is not None


@pytest.mark.parametrize("dim", [1, 7])
def test_odd_sizes(dim):
    x = torch.randn(2, dim)
    torch.testing.assert_close(RMSNorm(dim)(x).double(), naive_rms_norm(x, torch.ones(dim), 1e-6))
