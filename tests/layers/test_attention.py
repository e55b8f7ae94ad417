"""Attention and masks against loop references: the mask rule written out, softmax attention row by row."""

import math

import pytest
import torch

from vistok.layers import (
    Attention,
    MaskSpec,
    apply_rotary,
    attention,
    build_dense_mask,
    make_mask_mod,
    rope_cos_sin,
)


def naive_mask(spec: MaskSpec, q_len: int, kv_len: int, q_offset: int) -> torch.Tensor:
    """The mask rule with explicit ifs, one (b, query, key) triple at a time → (B, 1, Lq, Lk)."""
    ids = [t for t in (spec.span_ids, spec.doc_ids, spec.valid) if t is not None]
    batch = ids[0].shape[0] if ids else 1
    out = torch.zeros(batch, 1, q_len, kv_len, dtype=torch.bool)
    for b in range(batch):
        for i in range(q_len):
            q = i + q_offset
            for k in range(kv_len):
                ok = k <= q or not spec.causal
                if (
                    spec.span_ids is not None
                    and spec.span_ids[b, q] != 0
                    and spec.span_ids[b, q] == spec.span_ids[b, k]
                ):
                    ok = True
                if spec.doc_ids is not None and spec.doc_ids[b, q] != spec.doc_ids[b, k]:
                    ok = False
                if spec.valid is not None and not (spec.valid[b, q] and spec.valid[b, k]):
                    ok = False
                out[b, 0, i, k] = ok
    return out


def naive_attention(q, k, v, allowed):
    """Row-by-row softmax attention in float64; query head h reads kv head h // (H / Hkv); no visible key → 0."""
    batch, n_heads, q_len, _ = q.shape
    group = n_heads // k.shape[1]
    allowed = allowed.expand(batch, n_heads, q_len, k.shape[2])
    out = torch.zeros(q.shape, dtype=torch.float64)
    for b in range(batch):
        for h in range(n_heads):
            kh, vh = k[b, h // group].double(), v[b, h // group].double()
            for i in range(q_len):
                keys = [j for j in range(k.shape[2]) if allowed[b, h, i, j]]
                if not keys:
                    continue
                scores = torch.stack([q[b, h, i].double() @ kh[j] for j in keys]) / math.sqrt(q.shape[-1])
                weights = torch.softmax(scores, dim=0)
                out[b, h, i] = sum(w * vh[j] for w, j in zip(weights, keys))
    return out


def transfusion_spec() -> MaskSpec:
    """Two packed rows: text, images (spans), a second document, and right/left padding."""
    span = torch.tensor(
        [
            [0, 0, 1, 1, 1, 0, 0, 2, 2, 0, 0, 0],
            [0, 3, 3, 3, 3, 0, 0, 4, 4, 4, 0, 0],
        ]
    )
    doc = torch.tensor(
        [
            [0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 9, 9],
            [9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        ]
    )
    valid = torch.tensor([[True] * 10 + [False] * 2, [False] + [True] * 11])
    return MaskSpec(causal=True, span_ids=span, doc_ids=doc, valid=valid)


def qkv(batch=2, n_heads=4, n_kv_heads=2, q_len=12, kv_len=12, d=8, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, n_heads, q_len, d, generator=g, dtype=dtype)
    k = torch.randn(batch, n_kv_heads, kv_len, d, generator=g, dtype=dtype)
    v = torch.randn(batch, n_kv_heads, kv_len, d, generator=g, dtype=dtype)
    return q, k, v


# ---- masks ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("fields", [("span", "doc", "valid"), ("span",), ("doc",), ("valid",), ("span", "valid")])
def test_dense_mask_matches_rule(causal, fields):
    s = transfusion_spec()
    ids = {"span_ids": s.span_ids, "doc_ids": s.doc_ids, "valid": s.valid}
    spec = MaskSpec(causal=causal, **{k: v for k, v in ids.items() if k.split("_")[0] in fields})
    dense = build_dense_mask(spec, 12)
    assert dense.shape == (2, 1, 12, 12) and dense.dtype == torch.bool
    assert torch.equal(dense, naive_mask(spec, 12, 12, 0))


def test_dense_mask_plain_kinds_and_bottom_right_alignment():
    assert torch.equal(build_dense_mask("causal", 5)[0, 0], torch.ones(5, 5, dtype=torch.bool).tril())
    assert build_dense_mask("full", 3, 4).all() and build_dense_mask(None, 3, 4).shape == (1, 1, 3, 4)
    assert torch.equal(build_dense_mask("causal", 2, 5)[0, 0], torch.ones(5, 5, dtype=torch.bool).tril()[3:])
    spec = transfusion_spec()
    assert torch.equal(build_dense_mask(spec, 4), naive_mask(spec, 4, 12, 8))
    assert torch.equal(build_dense_mask(spec, 4, q_offset=2), naive_mask(spec, 4, 12, 2))


def test_transfusion_pattern_by_hand():
    """Row 0: text 0-1, image 2-4, text 5; doc 1 = 6 (text), image 7-8, 9 (text); 10-11 padding."""
    m = build_dense_mask(transfusion_spec(), 12)[0, 0]
    assert m[2, 4] and m[4, 2]  # bidirectional inside the image
    assert m[2, 0] and not m[0, 2]  # text before the image is seen by it, not the other way round
    assert m[5, 4] and not m[4, 5]  # text after the image sees it causally
    assert not m[7, 4] and m[8, 6]  # no attention across documents, causal inside doc 1
    assert m[7, 8] and not m[6, 7]
    assert not m[10].any() and not m[:, 10].any()  # padding neither sees nor is seen


@pytest.mark.parametrize("causal", [True, False])
def test_mask_mod_under_vmap_agrees_with_dense_mask(causal):
    """FlexAttention evaluates mask_mod on scalar indices under vmap; that must give the dense mask exactly."""
    s = transfusion_spec()
    spec = MaskSpec(causal=causal, span_ids=s.span_ids, doc_ids=s.doc_ids, valid=s.valid)
    mod = make_mask_mod(spec)
    idx = torch.arange(12)
    over_kv = torch.vmap(mod, in_dims=(None, None, None, 0))
    over_q = torch.vmap(over_kv, in_dims=(None, None, 0, None))
    over_b = torch.vmap(over_q, in_dims=(0, None, None, None))
    evaluated = over_b(torch.arange(2), torch.tensor(0), idx, idx)
    assert torch.equal(evaluated, build_dense_mask(spec, 12)[:, 0])


def test_mask_mod_accepted_by_create_block_mask():
    flex = pytest.importorskip("torch.nn.attention.flex_attention")
    spec = transfusion_spec()
    block = flex.create_block_mask(make_mask_mod(spec), 2, None, 12, 12, device="cpu", BLOCK_SIZE=4)
    dense = build_dense_mask(spec, 12)[:, 0]
    any_per_block = dense.reshape(2, 3, 4, 3, 4).any(dim=(2, 4))
    assert torch.equal(block.to_dense()[:, 0].bool(), any_per_block)


def test_mask_spec_validation():
    with pytest.raises(ValueError, match="same shape"):
        MaskSpec(span_ids=torch.zeros(2, 5, dtype=torch.long), doc_ids=torch.zeros(2, 6, dtype=torch.long))
    with pytest.raises(TypeError, match="bool"):
        MaskSpec(valid=torch.ones(2, 5))
    with pytest.raises(ValueError, match="keys"):
        build_dense_mask(transfusion_spec(), 12, kv_len=13)


# ---- attention ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mask", ["causal", "full", None, "spec", "spec_full", "tensor"])
def test_attention_matches_naive_reference_with_gqa(mask):
    q, k, v = qkv()
    spec = transfusion_spec()
    if mask == "spec":
        mask = spec
    elif mask == "spec_full":
        mask = MaskSpec(causal=False, doc_ids=spec.doc_ids, valid=spec.valid)
    elif mask == "tensor":
        mask = torch.rand(2, 1, 12, 12, generator=torch.Generator().manual_seed(1)) < 0.5
    allowed = mask if isinstance(mask, torch.Tensor) else build_dense_mask(mask, 12)
    torch.testing.assert_close(attention(q, k, v, mask), naive_attention(q, k, v, allowed), rtol=1e-10, atol=1e-10)


def test_causal_fast_path_equals_dense_causal_mask():
    q, k, v = qkv(dtype=torch.float32)
    dense = torch.ones(12, 12, dtype=torch.bool).tril()
    fast = attention(q, k, v, "causal")
    torch.testing.assert_close(fast, attention(q, k, v, dense), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(fast, attention(q, k, v, MaskSpec(causal=True)), rtol=0, atol=0)


def test_fewer_queries_than_keys_are_the_last_positions():
    q, k, v = qkv(q_len=12)
    full = attention(q, k, v, "causal")
    torch.testing.assert_close(attention(q[:, :, -3:], k, v, "causal"), full[:, :, -3:], rtol=1e-12, atol=1e-12)
    spec = transfusion_spec()
    full = attention(q, k, v, spec)
    torch.testing.assert_close(attention(q[:, :, -5:], k, v, spec), full[:, :, -5:], rtol=1e-12, atol=1e-12)


def test_rows_without_any_visible_key_are_zero_not_nan():
    q, k, v = qkv(dtype=torch.float32)
    q.requires_grad_(True)
    spec = transfusion_spec()
    out = attention(q, k, v, spec)
    assert not out.isnan().any()
    assert torch.equal(out[0, :, 10:], torch.zeros(4, 2, 8)) and torch.equal(out[1, :, 0], torch.zeros(4, 8))
    out.sum().backward()
    assert not q.grad.isnan().any() and torch.equal(q.grad[0, :, 10:], torch.zeros(4, 2, 8))
    all_false = torch.zeros(12, 12, dtype=torch.bool)
    assert torch.equal(attention(q, k, v, all_false), torch.zeros(2, 4, 12, 8))


def test_attention_errors():
    q, k, v = qkv(n_heads=4, n_kv_heads=3)
    with pytest.raises(ValueError, match="divide"):
        attention(q, k, v)
    q, k, v = qkv()
    with pytest.raises(TypeError, match="bool"):
        attention(q, k, v, torch.zeros(12, 12))
    with pytest.raises(ValueError, match="mask must be"):
        attention(q, k, v, "bidirectional")


# ---- Attention module ---------------------------------------------------------------------------------------


def naive_attention_module(attn: Attention, x, cos, sin, mask):
    """Explicit math: per-head slices of the projection matrices, rotary, row-by-row attention, output projection."""
    hd, w = attn.head_dim, {n: p.detach().double() for n, p in attn.named_parameters()}
    x = x.double()

    def heads(weight, n):  # (B, L, dim) → (B, n, L, hd), head i = rows i*hd … (i+1)*hd − 1
        return torch.stack([x @ weight[i * hd : (i + 1) * hd].T for i in range(n)], dim=1)

    q, k, v = (
        heads(w["wq.weight"], attn.n_heads),
        heads(w["wk.weight"], attn.n_kv_heads),
        heads(w["wv.weight"], attn.n_kv_heads),
    )
    q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
    allowed = build_dense_mask(mask, x.shape[1])
    out = naive_attention(q, k, v, allowed)
    return torch.cat(out.unbind(dim=1), dim=-1) @ w["wo.weight"].T


@pytest.mark.parametrize("mask", ["causal", "spec"])
def test_attention_module_matches_explicit_math(mask):
    torch.manual_seed(0)
    attn = Attention(dim=16, n_heads=4, n_kv_heads=2).double()
    mask = transfusion_spec() if mask == "spec" else mask
    x = torch.randn(2, 12, 16, dtype=torch.float64)
    cos, sin = rope_cos_sin(torch.arange(12)[None, :, None], 4)
    y = attn(x, cos, sin, mask)
    assert y.shape == (2, 12, 16) and all(m.bias is None for m in (attn.wq, attn.wk, attn.wv, attn.wo))
    torch.testing.assert_close(y, naive_attention_module(attn, x, cos, sin, mask), rtol=1e-10, atol=1e-10)


def test_gqa_equals_multi_head_with_duplicated_kv_heads():
    """n_kv_heads=2 of 4: kv head j serves query heads 2j, 2j+1 (HF repeat_kv grouping)."""
    torch.manual_seed(0)
    gqa, mha = Attention(16, n_heads=4, n_kv_heads=2, head_dim=3), Attention(16, n_heads=4, head_dim=3)
    with torch.no_grad():
        mha.wq.weight.copy_(gqa.wq.weight)
        mha.wo.weight.copy_(gqa.wo.weight)
        for name in ("wk", "wv"):
            rows = getattr(gqa, name).weight.view(2, 3, 16)
            getattr(mha, name).weight.copy_(rows.repeat_interleave(2, dim=0).reshape(12, 16))
    x = torch.randn(1, 5, 16)
    torch.testing.assert_close(gqa(x), mha(x), rtol=1e-6, atol=1e-6)


def test_image_tokens_see_later_image_tokens_but_not_later_text():
    """Perturbation test of the Transfusion mask through the whole module."""
    torch.manual_seed(0)
    attn, spec = Attention(16, n_heads=2), transfusion_spec()
    x = torch.randn(2, 12, 16)
    y = attn(x, mask=spec)
    x2 = x.clone()
    x2[0, 4] += 1.0  # last token of image 1 in row 0
    d = (attn(x2, mask=spec) - y)[0].abs().sum(-1)
    assert (d[2:6] > 0).all()  # the image itself and the text after it
    assert (d[:2] == 0).all() and (d[6:] == 0).all()  # earlier text, the next document, padding
    with pytest.raises(ValueError, match="both cos and sin"):
        attn(x, cos=torch.ones(12, 8))
