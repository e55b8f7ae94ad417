"""The LLaMA-style backbone against brute-force references: cached decoding vs one full forward, masks (causal,
bidirectional, packed documents, spans, padding), N-D rotary positions, the sliding-window ring cache vs banded
attention and vs re-computing the window, presets built on the meta device."""

import pytest
import torch

from vistok.layers import MaskSpec, grid_positions, packed_position_ids
from vistok.models import Transformer, TransformerConfig
from vistok.registry import create_model, list_models

ATOL = 1e-5


def tiny(**overrides) -> Transformer:
    torch.manual_seed(0)
    return Transformer(TransformerConfig.from_name("transformer-tiny", **overrides)).eval()


def ids(b: int, n: int, vocab: int = 512, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, vocab, (b, n), generator=torch.Generator().manual_seed(seed))


def banded_mask(n: int, window: int) -> torch.Tensor:
    """Causal mask restricted to the last ``window`` positions: key k visible from query q iff q − window < k ≤ q."""
    q, k = torch.arange(n)[:, None], torch.arange(n)[None, :]
    return (k <= q) & (k > q - window)


def decode(model: Transformer, x: torch.Tensor, chunks: list[int]) -> torch.Tensor:
    """Feed ``x`` through the KV cache in consecutive chunks of the given lengths; concatenated logits."""
    out, p = [], 0
    for n in chunks:
        out.append(model(x[:, p : p + n], input_pos=torch.arange(p, p + n)))
        p += n
    assert p == x.shape[1]
    return torch.cat(out, dim=1)


# ---------------------------------------------------------------------------------------------------------------------
# Config and presets
# ---------------------------------------------------------------------------------------------------------------------


def test_tiny_preset_is_registered_and_overrides_recompute_derived_fields():
    assert "transformer-tiny" in list_models("transformer*")
    model = create_model("transformer-tiny")
    assert isinstance(model, Transformer) and model.config.kv_heads == 2 and model.config.head_size == 16
    config = TransformerConfig.from_name("transformer-tiny", dim=128)
    assert config.head_size == 32 and config.ffn_dim == 352  # int(8·128/3) = 341 → multiple of 16
    assert TransformerConfig.from_name("transformer-tiny", intermediate_size=100).ffn_dim == 100


@pytest.mark.parametrize(
    "overrides",
    [{"n_kv_heads": 3}, {"dim": 66}, {"rope_axes": 3}, {"rope_axes": 2, "rope_axes_dims": (6, 8)}, {"n_layers": 0}],
)
def test_bad_configs_raise(overrides):
    with pytest.raises(ValueError):
        TransformerConfig.from_name("transformer-tiny", **overrides)


def test_save_and_load_pretrained_round_trip(tmp_path):
    for tie in (False, True):
        model = tiny(tie_embeddings=tie)
        model.save_pretrained(tmp_path / str(tie))
        loaded = Transformer.from_pretrained(tmp_path / str(tie))
        assert (loaded.output.weight is loaded.tok_embeddings.weight) == tie
        x = ids(2, 9)
        with torch.no_grad():
            assert torch.equal(loaded(x), model(x))


# ---------------------------------------------------------------------------------------------------------------------
# Masks and inputs
# ---------------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def test_causal_outputs_ignore_later_tokens_exactly_and_bidirectional_ones_do_not():
    x = ids(2, 10)
    y = x.clone()
    y[:, 6:] = (y[:, 6:] + 7) % 512
    causal = tiny()
    assert torch.equal(causal(x)[:, :6], causal(y)[:, :6])
    assert not torch.allclose(causal(x)[:, 6:], causal(y)[:, 6:])
    bidir = tiny(causal=False)
    assert torch.equal(bidir.state_dict()["output.weight"], causal.state_dict()["output.weight"])
    assert (bidir(x)[:, :6] - bidir(y)[:, :6]).abs().amax(-1).min() > 1e-4  # every early position sees the change
    # the per-call override beats the config default
    assert torch.equal(bidir(x, mask="causal")[:, :6], bidir(y, mask="causal")[:, :6])
    torch.testing.assert_close(causal(x, mask="full"), bidir(x), atol=ATOL, rtol=0)


@torch.no_grad()
def test_packed_documents_equal_each_document_alone():
    model = tiny()
    lengths = [[5, 3, 4], [2, 7, 3]]
    x = ids(2, 12)
    doc_ids = torch.stack([torch.repeat_interleave(torch.arange(len(row)), torch.tensor(row)) for row in lengths])
    packed = model(x, mask=MaskSpec(doc_ids=doc_ids), positions=packed_position_ids(doc_ids))
    for b, row in enumerate(lengths):
        start = 0
        for n in row:
            alone = model(x[b : b + 1, start : start + n])
            torch.testing.assert_close(packed[b : b + 1, start : start + n], alone, atol=ATOL, rtol=0)
            start += n


@torch.no_grad()
def test_span_ids_make_an_image_bidirectional_inside_a_causal_sequence():
    model = tiny()
    x = ids(1, 10)
    span = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 0, 0, 0]])
    spec = MaskSpec(span_ids=span)
    y = x.clone()
    y[0, 6] = (y[0, 6] + 1) % 512  # last token of the span
    out_x, out_y = model(x, mask=spec), model(y, mask=spec)
    assert torch.equal(out_x[:, :3], out_y[:, :3])  # before the span: causal
    assert (out_x[:, 3:6] - out_y[:, 3:6]).abs().amax(-1).min() > 1e-4  # earlier span tokens see it
    z = x.clone()
    z[0, 8] = (z[0, 8] + 1) % 512  # after the span
    assert torch.equal(model(z, mask=spec)[:, :8], out_x[:, :8])


@torch.no_grad()
def test_padding_does_not_change_real_tokens():
    model = tiny()
    x = ids(1, 7)
    padded = torch.cat([x, torch.zeros(1, 3, dtype=torch.long)], dim=1)
    valid = torch.arange(10)[None] < 7
    out = model(padded, mask=MaskSpec(valid=valid))
    torch.testing.assert_close(out[:, :7], model(x), atol=ATOL, rtol=0)


@torch.no_grad()
def test_embeddings_in_place_of_ids():
    model = tiny()
    x = ids(2, 6)
    assert torch.equal(model(embeds=model.tok_embeddings(x)), model(x))
    hidden = model.forward_hidden(x)
    assert hidden.shape == (2, 6, 64) and torch.equal(model.output(hidden), model(x))
    with pytest.raises(ValueError, match="exactly one"):
        model(x, embeds=model.tok_embeddings(x))
    with pytest.raises(ValueError, match="exactly one"):
        model()
    with pytest.raises(ValueError, match="max_seq_len"):
        model(ids(1, 257))


@torch.no_grad()
def test_2d_rope_runs_differs_from_1d_and_is_translation_invariant():
    model_2d = tiny(rope_axes=2)
    model_1d = tiny()
    model_1d.load_state_dict(model_2d.state_dict())
    x = ids(2, 12)
    grid = grid_positions(3, 4)  # (12, 2): (row, column) of a 3×4 token grid
    out = model_2d(x, positions=grid)
    assert out.shape == (2, 12, 512)
    assert not torch.allclose(out, model_1d(x), atol=1e-3)
    # RoPE only sees coordinate differences: shifting the grid leaves the output unchanged
    shifted = model_2d(x, positions=(grid + torch.tensor([3, 5]))[None].expand(2, -1, -1))
    torch.testing.assert_close(shifted, out, atol=ATOL, rtol=0)
    with pytest.raises(ValueError, match="positions must be"):
        model_2d(x, positions=torch.arange(12))


# ---------------------------------------------------------------------------------------------------------------------
# KV cache
# ---------------------------------------------------------------------------------------------------------------------


@torch.no_grad()
@pytest.mark.parametrize("n_kv_heads", [2, 4], ids=["gqa", "mha"])
def test_cached_decoding_equals_one_full_forward(n_kv_heads):
    model = tiny(n_kv_heads=n_kv_heads)
    x = ids(3, 13)
    full = model(x)
    model.setup_caches(max_batch_size=3, max_seq_len=32)
    torch.testing.assert_close(decode(model, x, [5] + [1] * 8), full, atol=ATOL, rtol=0)
    # the cache is reusable: a new sequence after reset_caches, prefilled in two chunks
    model.reset_caches()
    y = ids(3, 13, seed=2)
    torch.testing.assert_close(decode(model, y, [4, 6, 1, 1, 1]), model(y), atol=ATOL, rtol=0)
    # a smaller batch than the cache holds
    model.reset_caches()
    torch.testing.assert_close(decode(model, y[:1], [3] + [1] * 10), model(y[:1]), atol=ATOL, rtol=0)


@torch.no_grad()
def test_cached_block_with_full_mask_equals_a_bidirectional_span():
    """Transfusion-style: a causal prefix from the cache, then a block of tokens that see each other fully."""
    model = tiny()
    x = ids(2, 10)
    ref = model(x, mask=MaskSpec(span_ids=torch.tensor([[0] * 6 + [1] * 4] * 2)))
    model.setup_caches(2, 16)
    prefix = model(x[:, :6], input_pos=torch.arange(6))
    block = model(x[:, 6:], input_pos=torch.arange(6, 10), mask="full")
    torch.testing.assert_close(torch.cat([prefix, block], 1), ref, atol=ATOL, rtol=0)


@torch.no_grad()
def test_cache_in_bfloat16():
    model = tiny().to(torch.bfloat16)
    x = ids(2, 8)
    model.setup_caches(2, 8)
    assert model.layers[0].kv_cache.k.dtype == torch.bfloat16
    out = decode(model, x, [4, 1, 1, 1, 1])
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), model(x).float(), atol=0.05, rtol=0.05)


def test_cache_misuse_raises():
    model = tiny()
    x = ids(2, 4)
    with pytest.raises(RuntimeError, match="setup_caches"):
        model(x, input_pos=torch.arange(4))
    model.setup_caches(max_batch_size=1, max_seq_len=8)
    with pytest.raises(ValueError, match="max_batch_size"):
        model(x, input_pos=torch.arange(4))
    with pytest.raises(ValueError, match="do not fit"):
        model(ids(1, 9), input_pos=torch.arange(9))
    with pytest.raises(ValueError, match=r"input_pos must have shape"):
        model(x[:1], input_pos=torch.arange(3))
    with pytest.raises(ValueError, match="with the KV cache"):
        model(x[:1], input_pos=torch.arange(4), mask=MaskSpec(doc_ids=torch.zeros(1, 4, dtype=torch.long)))
    model.remove_caches()
    assert not model.has_caches


# ---------------------------------------------------------------------------------------------------------------------
# Sliding window
# ---------------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def test_window_one_layer_equals_recomputing_the_window_from_scratch():
    """With one layer a key depends on its token and position only, so the ring cache must give, at every step, the
    logits of a fresh forward over just the last W tokens (positions renumbered from 0: RoPE is relative)."""
    model = tiny(n_layers=1)
    window, n = 4, 14
    x = ids(2, n)
    model.setup_caches(2, window=window)
    cached = decode(model, x, [2] + [1] * (n - 2))
    for p in range(n):
        start = max(0, p - window + 1)
        fresh = model(x[:, start : p + 1])[:, -1]
        torch.testing.assert_close(cached[:, p], fresh, atol=ATOL, rtol=0)


@torch.no_grad()
@pytest.mark.parametrize("chunks", [[3] + [1] * 11, [2, 1, 3, 1, 5], [9, 3], [1, 4, 4, 3]], ids=str)
def test_window_equals_banded_attention(chunks):
    """Any chunking (single tokens, chunks that wrap the ring, a prefill longer than the window) gives the full
    forward with a banded causal mask."""
    model = tiny()
    window = 4
    x = ids(2, sum(chunks))
    model.setup_caches(2, window=window)
    ref = model(x, mask=banded_mask(x.shape[1], window))
    torch.testing.assert_close(decode(model, x, chunks), ref, atol=ATOL, rtol=0)
    assert model.layers[0].kv_cache.k.shape[2] == window


@torch.no_grad()
def test_window_runs_past_max_seq_len_and_a_wide_window_is_plain_causal():
    model = tiny(max_seq_len=16)
    n = 40
    x = ids(1, n)
    model.setup_caches(1, window=8)
    cached = decode(model, x, [8] + [1] * (n - 8))
    reference = Transformer(TransformerConfig.from_name("transformer-tiny", max_seq_len=64)).eval()
    reference.load_state_dict(model.state_dict())
    torch.testing.assert_close(cached, reference(x, mask=banded_mask(n, 8)), atol=ATOL, rtol=0)
    model.setup_caches(1, window=16)
    torch.testing.assert_close(decode(model, x[:, :16], [5] + [1] * 11), model(x[:, :16]), atol=ATOL, rtol=0)


# ---------------------------------------------------------------------------------------------------------------------
# torch.compile
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("window", [None, 4])
def test_compiled_decode_step_equals_eager(window):
    import torch._dynamo

    torch._dynamo.reset()
    model = tiny()
    x = ids(2, 12)
    model.setup_caches(2, 16, window=window)
    with torch.no_grad():
        eager = decode(model, x, [4] + [1] * 8)
        model.reset_caches()
        step = torch.compile(lambda t, pos: model(t, input_pos=pos), fullgraph=True, dynamic=False)
        out = [model(x[:, :4], input_pos=torch.arange(4))]
        with torch._dynamo.config.patch(error_on_recompile=True):  # one graph serves every step
            for p in range(4, 12):
                out.append(step(x[:, p : p + 1], torch.tensor([p])))
    torch.testing.assert_close(torch.cat(out, 1), eager, atol=ATOL, rtol=0)
