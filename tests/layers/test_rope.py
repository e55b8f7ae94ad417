"""Rotary embeddings: HF Llama's exact formulas, a pair-by-pair loop reference, N-D axis split, invariants."""

import math

import pytest
import torch

from vistok.layers import (
    RotaryEmbedding,
    apply_rotary,
    grid_positions,
    packed_position_ids,
    rope_cos_sin,
    split_head_dim,
)


def hf_llama_rope(x: torch.Tensor, position_ids: torch.Tensor, theta: float = 10000.0) -> torch.Tensor:
    """Transcription of HF transformers' LlamaRotaryEmbedding (default type) + apply_rotary_pos_emb; x (B, H, L, D)."""
    dim = x.shape[-1]
    inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    inv_freq_expanded = inv_freq[None, :, None].float().expand(position_ids.shape[0], -1, 1)
    position_ids_expanded = position_ids[:, None, :].float()
    freqs = (inv_freq_expanded.float() @ position_ids_expanded.float()).transpose(1, 2)
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = (emb.cos() * 1.0).to(x.dtype), (emb.sin() * 1.0).to(x.dtype)
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)

    def rotate_half(t):
        x1 = t[..., : t.shape[-1] // 2]
        x2 = t[..., t.shape[-1] // 2 :]
        return torch.cat((-x2, x1), dim=-1)

    return (x * cos) + (rotate_half(x) * sin)


def naive_rope(x: torch.Tensor, coords: torch.Tensor, axes_dims: list[int], theta: float = 10000.0) -> torch.Tensor:
    """Loop over rotated pairs in float64: pair (i, i + D/2) belongs to axis a, local index j; angle p_a·θ^(-2j/d_a).

    x (B, H, L, D); coords (B, L, n_axes).
    """
    n_batch, _, n_tokens, d = x.shape
    owner = [(a, j) for a, da in enumerate(axes_dims) for j in range(da // 2)]  # pair i → (axis, local index)
    out = x.double().clone()
    for b in range(n_batch):
        for t in range(n_tokens):
            for i, (a, j) in enumerate(owner):
                phi = float(coords[b, t, a]) * theta ** (-2 * j / axes_dims[a])
                c, s = math.cos(phi), math.sin(phi)
                x1, x2 = x[b, :, t, i].double(), x[b, :, t, i + d // 2].double()
                out[b, :, t, i] = x1 * c - x2 * s
                out[b, :, t, i + d // 2] = x2 * c + x1 * s
    return out


def test_1d_is_bit_identical_to_hf_llama():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 7, 16)
    pos = torch.tensor([[0, 1, 2, 3, 4, 5, 6], [5, 9, 0, 1, 2, 100, 4000]])
    cos, sin = RotaryEmbedding(16)(pos)
    assert torch.equal(apply_rotary(x, cos, sin), hf_llama_rope(x, pos))
    cos, sin = RotaryEmbedding(16, theta=500000.0)(pos)
    assert torch.equal(apply_rotary(x, cos, sin), hf_llama_rope(x, pos, theta=500000.0))


def test_1d_matches_pairwise_loop_reference():
    torch.manual_seed(0)
    x = torch.randn(2, 2, 5, 8)
    pos = torch.tensor([[0, 1, 2, 3, 4], [7, 3, 0, 11, 2]])
    cos, sin = rope_cos_sin(pos[..., None], 8)
    ref = naive_rope(x, pos[..., None], [8])
    torch.testing.assert_close(apply_rotary(x, cos, sin).double(), ref, rtol=0, atol=1e-5)


def test_tables_shape_dtype_and_broadcast_without_batch():
    cos, sin = rope_cos_sin(torch.arange(6)[:, None], 12)
    assert cos.shape == sin.shape == (6, 12) and cos.dtype == torch.float32
    x = torch.randn(2, 3, 6, 12, dtype=torch.float64)
    y = apply_rotary(x, cos, sin)
    assert y.dtype == torch.float64
    torch.testing.assert_close(y, apply_rotary(x, cos.expand(2, 6, 12), sin.expand(2, 6, 12)))


def test_relative_position_invariance_and_norm_preservation():
    torch.manual_seed(0)
    q, k = torch.randn(1, 1, 1, 32, dtype=torch.float64), torch.randn(1, 1, 1, 32, dtype=torch.float64)
    rope = RotaryEmbedding(32)

    def score(p: int, s: int) -> torch.Tensor:
        cq, sq = rope(torch.tensor([[p]]))
        ck, sk = rope(torch.tensor([[s]]))
        return (apply_rotary(q, cq, sq) * apply_rotary(k, ck, sk)).sum()

    torch.testing.assert_close(score(3, 1), score(13, 11), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(score(0, 0), (q * k).sum())
    cos, sin = rope(torch.tensor([[123]]))
    torch.testing.assert_close(apply_rotary(q, cos, sin).norm(), q.norm())


def test_real_valued_positions_interpolate_angles():
    cos, sin = rope_cos_sin(torch.tensor([[2.5]]), 8)
    inv = 10000.0 ** (-torch.arange(0, 8, 2, dtype=torch.float64) / 8)
    torch.testing.assert_close(cos[0].double(), torch.cat([inv, inv]).mul(2.5).cos(), rtol=0, atol=1e-6)
    torch.testing.assert_close(sin[0].double(), torch.cat([inv, inv]).mul(2.5).sin(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("axes_dims", [None, (4, 8, 12)])
def test_3d_grid_matches_pairwise_loop_reference(axes_dims):
    torch.manual_seed(0)
    coords = grid_positions(2, 2, 3)[None].expand(2, -1, -1).clone()
    coords[1] = coords[1] * 3 + 1
    x = torch.randn(2, 2, coords.shape[1], 24)
    cos, sin = RotaryEmbedding(24, n_axes=3, axes_dims=axes_dims)(coords)
    dims = list(axes_dims or (8, 8, 8))
    torch.testing.assert_close(apply_rotary(x, cos, sin).double(), naive_rope(x, coords, dims), rtol=0, atol=1e-5)


def test_2d_axis_is_a_1d_rope_on_its_own_dims():
    """Axis a is a standard 1-D rope of size d_a on dims [o_a, o_a + d_a/2) ∪ [D/2 + o_a, D/2 + o_a + d_a/2)."""
    torch.manual_seed(0)
    d, coords = 16, torch.tensor([[[3, 5], [0, 2], [7, 1]]])  # (1, L=3, 2 axes)
    x = torch.randn(1, 2, 3, d)
    cos, sin = rope_cos_sin(coords, d)
    y = apply_rotary(x, cos, sin)
    for a in range(2):
        idx = torch.cat([torch.arange(a * 4, a * 4 + 4), torch.arange(8 + a * 4, 8 + a * 4 + 4)])
        assert torch.equal(y[..., idx], hf_llama_rope(x[..., idx], coords[..., a]))


def test_2d_scores_depend_only_on_coordinate_differences():
    torch.manual_seed(0)
    q, k = torch.randn(1, 1, 1, 16, dtype=torch.float64), torch.randn(1, 1, 1, 16, dtype=torch.float64)

    def score(pq, pk):
        cq, sq = rope_cos_sin(torch.tensor([[pq]]), 16)
        ck, sk = rope_cos_sin(torch.tensor([[pk]]), 16)
        return (apply_rotary(q, cq, sq) * apply_rotary(k, ck, sk)).sum()

    torch.testing.assert_close(score([4, 1], [2, 6]), score([9, 3], [7, 8]), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(score([4, 1], [2, 6]), score([4, 6], [2, 1]))  # the axes are not interchangeable


def test_split_rule_errors_are_clear():
    assert split_head_dim(24, 3) == (8, 8, 8)
    with pytest.raises(ValueError, match="divisible by 2 \\* n_axes"):
        RotaryEmbedding(64, n_axes=3)
    with pytest.raises(ValueError, match="axes_dims"):
        RotaryEmbedding(64, n_axes=3, axes_dims=(16, 24, 20))
    with pytest.raises(ValueError, match="axes_dims"):
        RotaryEmbedding(64, n_axes=3, axes_dims=(15, 25, 24))
    with pytest.raises(ValueError, match="positions of shape"):
        RotaryEmbedding(64, n_axes=2)(torch.zeros(1, 4, 3))


def test_packed_position_ids_restart_at_document_boundaries():
    docs = torch.tensor([[0, 0, 0, 1, 1, 2, 2, 2, 2], [5, 5, 5, 5, 5, 5, 5, 5, 5]])
    expected = torch.empty_like(docs)
    for b in range(docs.shape[0]):
        count = 0
        for t in range(docs.shape[1]):
            count = 0 if t > 0 and docs[b, t] != docs[b, t - 1] else count + (t > 0)
            expected[b, t] = count
    assert torch.equal(packed_position_ids(docs), expected)
    assert packed_position_ids(docs)[0].tolist() == [0, 1, 2, 0, 1, 0, 1, 2, 3]


def test_grid_positions_raster_order():
    g = grid_positions(2, 3)
    assert g.tolist() == [[0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [1, 2]]
    assert grid_positions(2, 3, 4).shape == (24, 3) and grid_positions(5).shape == (5, 1)
