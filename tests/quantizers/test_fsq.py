"""FSQ: bounded rounding against a float64 reference, mixed-radix ids, straight-through gradient, peer codebook."""

import math

import pytest
import torch

from vistok.quantizers import FSQ

LEVELS = [8, 5, 5, 5]


def reference_quantize(x: torch.Tensor, levels: list[int], eps: float = 1e-3):
    """Paper Appendix A.1 with atanh, in float64, one channel at a time: (codes, ids)."""
    codes, ids, radix = [], torch.zeros(x.shape[0], dtype=torch.long), 1
    for i, level in enumerate(levels):
        half = (level - 1) * (1 - eps) / 2
        offset = 0.5 if level % 2 == 0 else 0.0
        bounded = torch.tanh(x[:, i].double() + math.atanh(offset / half)) * half - offset
        rounded = torch.round(bounded)
        codes.append(rounded / (level // 2))
        ids += (rounded.long() + level // 2) * radix
        radix *= level
    return torch.stack(codes, -1), ids


def test_quantize_matches_reference_and_levels():
    torch.manual_seed(0)
    q = FSQ(LEVELS).eval()
    z = 3 * torch.randn(4, 4, 10, 10)
    out = q(z)
    x = z.movedim(1, -1).reshape(-1, 4)
    codes, ids = reference_quantize(x, LEVELS)
    assert torch.equal(out.indices.flatten(), ids)
    torch.testing.assert_close(out.quantized.movedim(1, -1).reshape(-1, 4).double(), codes)
    for i, level in enumerate(LEVELS):  # every level is reached, and only those
        values = set(out.quantized[:, i].unique().tolist())
        half = level // 2
        assert values == {(k - half) / half for k in range(level)}
    assert q.codebook_size == 1000 and out.loss.item() == 0.0 and out.loss.ndim == 0


def test_zero_maps_to_zero_code_for_odd_levels():
    out = FSQ([5, 7, 3]).eval()(torch.zeros(1, 3, 1))
    assert out.quantized.flatten().tolist() == [0.0, 0.0, 0.0]
    assert out.indices.item() == 2 + 3 * 5 + 1 * 35


def test_index_code_round_trip_over_whole_codebook():
    q = FSQ(LEVELS)
    ids = torch.arange(q.codebook_size).reshape(10, 100)
    codes = q.indices_to_codes(ids)
    assert codes.shape == (10, 4, 100)
    assert torch.equal(q.codes_to_indices(codes.movedim(1, -1)), ids)
    assert torch.unique(codes.movedim(1, -1).reshape(-1, 4), dim=0).shape[0] == 1000  # all codes distinct
    digits = q.indices_to_digits(ids)
    assert torch.equal(ids, digits[..., 0] + 8 * digits[..., 1] + 40 * digits[..., 2] + 200 * digits[..., 3])
    out = FSQ(LEVELS).eval()(torch.randn(2, 4, 3, 3))
    assert torch.equal(q.indices_to_codes(out.indices), out.quantized)


def test_straight_through_gradient_is_bound_derivative():
    torch.manual_seed(1)
    q = FSQ([8, 5, 3])
    z = torch.randn(5, 3, 7, dtype=torch.float64, requires_grad=True)
    q(z).quantized.sum().backward()
    levels = torch.tensor([8.0, 5.0, 3.0], dtype=torch.float64).reshape(1, 3, 1)
    half = (levels - 1) * (1 - 1e-3) / 2
    shift = torch.atanh(torch.where(levels % 2 == 0, 0.5, 0.0) / half)
    expected = half * (1 - torch.tanh(z.detach() + shift) ** 2) / torch.div(levels, 2, rounding_mode="floor")
    torch.testing.assert_close(z.grad, expected)


def test_projection_and_bf16_autocast():
    torch.manual_seed(2)
    q = FSQ(LEVELS, dim=16).eval()
    z = torch.randn(2, 16, 4, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = q(z)
        x = q.project_in(z.movedim(1, -1).reshape(-1, 16))
    assert out.quantized.dtype == torch.bfloat16 and out.quantized.shape == z.shape
    assert torch.equal(out.indices.flatten(), reference_quantize(x.float(), LEVELS)[1])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.testing.assert_close(q.indices_to_quantized(out.indices), out.quantized)


def test_rejects_two_levels():
    with pytest.raises(ValueError, match=">= 3"):
        FSQ([2, 5])


def test_implicit_codebook_matches_vector_quantize_pytorch():
    vqp = pytest.importorskip("vector_quantize_pytorch")
    peer = vqp.FSQ(levels=LEVELS)
    ours = FSQ(LEVELS).indices_to_codes(torch.arange(1000).unsqueeze(0)).squeeze(0).T
    torch.testing.assert_close(ours, peer.implicit_codebook.float())
