"""SwiGLU MLP against explicit per-unit math, and LLaMA's hidden-size rule."""

import math

import pytest
import torch

from vistok.layers import SwiGLU, swiglu_hidden_dim


def naive_swiglu(x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, w3: torch.Tensor) -> torch.Tensor:
    """One token at a time, one hidden unit at a time, in float64: Σ_j w2[:, j] · silu(w1[j]·x) · (w3[j]·x)."""
    w1, w2, w3 = (w.detach().double() for w in (w1, w2, w3))
    tokens = x.detach().double().reshape(-1, x.shape[-1])
    out = torch.zeros(len(tokens), w2.shape[0], dtype=torch.float64)
    for t, tok in enumerate(tokens):
        for j in range(w1.shape[0]):
            a, g = float(w1[j] @ tok), float(w3[j] @ tok)
            out[t] += w2[:, j] * (a / (1.0 + math.exp(-a))) * g
    return out.reshape(*x.shape[:-1], -1)


def test_matches_naive_reference():
    torch.manual_seed(0)
    mlp = SwiGLU(8, hidden_dim=12)
    x = torch.randn(2, 3, 8)
    ref = naive_swiglu(x, mlp.w1.weight, mlp.w2.weight, mlp.w3.weight)
    torch.testing.assert_close(mlp(x).double(), ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("dim", "multiple_of", "multiplier", "expected"),
    [
        (4096, 256, None, 11008),  # LLaMA-7B
        (5120, 256, None, 13824),  # LLaMA-13B
        (8192, 4096, 1.3, 28672),  # LLaMA-3-70B
        (4096, 1024, 1.3, 14336),  # LLaMA-3-8B
        (64, 32, None, 192),  # int(2*256/3) = 170 → 192
    ],
)
def test_llama_hidden_size_rule(dim, multiple_of, multiplier, expected):
    assert swiglu_hidden_dim(dim, multiple_of, multiplier) == expected


def test_no_biases_and_shapes():
    mlp = SwiGLU(64, multiple_of=32)
    assert mlp.w1.weight.shape == mlp.w3.weight.shape == (192, 64) and mlp.w2.weight.shape == (64, 192)
    assert all(m.bias is None for m in (mlp.w1, mlp.w2, mlp.w3))
    assert SwiGLU(8, hidden_dim=5, bias=True).w2.bias.shape == (8,)


def test_gate_zero_gives_zero_output():
    """silu(0) = 0: with a zero gate matrix the block outputs exactly zero whatever the up projection."""
    mlp = SwiGLU(8, hidden_dim=16)
    with torch.no_grad():
        mlp.w1.weight.zero_()
    assert torch.equal(mlp(torch.randn(3, 8)), torch.zeros(3, 8))
