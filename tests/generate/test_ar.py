"""Autoregressive decoding against brute force: the KV-cached loop gives, at every step, the logits of a full forward
over the growing sequence (MHA, GQA, MQA; sliding window vs a banded causal mask, also past max_seq_len); token plans,
EOS, batching, seeds, cache handling, argument errors; torch.compile (slow)."""

import pytest
import torch

from vistok.generate import decode_step, frame_plan, generate, prefill, sample_logits
from vistok.models import Transformer, TransformerConfig

ATOL = 1e-5
VOCAB = 512


def tiny(**overrides) -> Transformer:
    torch.manual_seed(0)
    return Transformer(TransformerConfig.from_name("transformer-tiny", **overrides)).eval()


def ids(b: int, n: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (b, n), generator=torch.Generator().manual_seed(seed))


def banded_mask(n: int, window: int) -> torch.Tensor:
    q, k = torch.arange(n)[:, None], torch.arange(n)[None, :]
    return (k <= q) & (k > q - window)


def full_forward_logits(model: Transformer, out: torch.Tensor, prompt_len: int, window: int | None = None):
    """(B, new, V): for each new token, the last-position logits of a full forward over the sequence before it.

    Run with gradients enabled on purpose: grouped-query attention then takes the repeat-kv path, while ``generate``
    (inference mode) takes SDPA's ``enable_gqa`` path on CPU, so the comparison covers both."""
    steps, seq = [], out.clone()  # generate's output is an inference tensor; a clone is an ordinary one
    with torch.enable_grad():
        for n in range(prompt_len, seq.shape[1]):
            mask = None if window is None else banded_mask(n, window)
            steps.append(model(seq[:, :n], mask=mask)[:, -1].detach())
    return torch.stack(steps, dim=1)


# ---------------------------------------------------------------------------------------------------------------------
# Cached decoding = full forward
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kv_heads", [None, 2, 1], ids=["mha", "gqa", "mqa"])
def test_cached_greedy_decoding_equals_full_forward_at_every_step(kv_heads):
    model = tiny(n_kv_heads=kv_heads)
    prompt = ids(2, 7)
    out, logits = generate(model, prompt, 24, temperature=0, return_logits=True)
    assert torch.equal(out[:, :7], prompt)
    ref = full_forward_logits(model, out, 7)
    torch.testing.assert_close(logits, ref, atol=ATOL, rtol=0)
    assert torch.equal(out[:, 7:], ref.argmax(-1))  # greedy: each token is the argmax of the reference logits


@pytest.mark.parametrize(("prompt_len", "window"), [(5, 8), (12, 8), (9, 1)])
def test_sliding_window_equals_banded_causal_full_forward(prompt_len, window):
    model = tiny()
    out, logits = generate(model, ids(2, prompt_len, seed=3), 20, temperature=0, window=window, return_logits=True)
    ref = full_forward_logits(model, out, prompt_len, window=window)
    torch.testing.assert_close(logits, ref, atol=ATOL, rtol=0)
    assert torch.equal(out[:, prompt_len:], ref.argmax(-1))


def test_sliding_window_rollout_runs_past_max_seq_len():
    short = tiny(max_seq_len=24)
    prompt = ids(1, 10, seed=4)
    out, logits = generate(short, prompt, 40, temperature=0, window=6, return_logits=True)
    assert out.shape == (1, 50)
    long = tiny(max_seq_len=64)  # the same weights, a full forward may span all 50 positions
    long.load_state_dict(short.state_dict())
    torch.testing.assert_close(logits, full_forward_logits(long, out, 10, window=6), atol=ATOL, rtol=0)
    with pytest.raises(ValueError, match="exceeds the model's max_seq_len=24; pass window"):
        generate(short, prompt, 40)


def test_sampled_tokens_follow_the_reference_distribution_step_by_step():
    """With sampling, each step's logits still equal the full forward over what was actually sampled."""
    model = tiny()
    out, logits = generate(model, ids(3, 4), 16, temperature=1.2, top_k=50, top_p=0.95, seed=0, return_logits=True)
    torch.testing.assert_close(logits, full_forward_logits(model, out, 4), atol=ATOL, rtol=0)


def test_building_blocks_reproduce_generate():
    model = tiny()
    prompt = ids(2, 6)
    model.setup_caches(2, 32)
    logits = prefill(model, prompt)
    seq, pos = [prompt], torch.tensor([6])
    for _ in range(10):
        nxt = logits.argmax(-1)
        seq.append(nxt[:, None])
        logits = decode_step(model, nxt[:, None], pos)
        pos += 1
    model.remove_caches()
    assert torch.equal(torch.cat(seq, 1), generate(model, prompt, 10, temperature=0))
    # a chunked prefill (start_pos) continues the same cache
    model.setup_caches(2, 32)
    prefill(model, prompt[:, :4])
    torch.testing.assert_close(prefill(model, prompt[:, 4:], start_pos=4), model(prompt)[:, -1], atol=ATOL, rtol=0)
    model.remove_caches()


# ---------------------------------------------------------------------------------------------------------------------
# Sampling, batching, plans, EOS
# ---------------------------------------------------------------------------------------------------------------------


def test_seeds_and_generators_are_deterministic():
    model = tiny()
    prompt = ids(2, 5)
    a = generate(model, prompt, 20, seed=0)
    assert torch.equal(a, generate(model, prompt, 20, seed=0))
    assert torch.equal(a, generate(model, prompt, 20, generator=torch.Generator().manual_seed(0)))
    assert not torch.equal(a, generate(model, prompt, 20, seed=1))


def test_sampling_consumes_one_exponential_draw_per_logit():
    """generate's randomness is exactly sample_logits' at every step (so seeds mean the same thing in custom loops)."""
    model = tiny()
    prompt = ids(2, 5)
    out, logits = generate(model, prompt, 8, temperature=0.8, top_p=0.9, seed=3, return_logits=True)
    g = torch.Generator().manual_seed(3)
    replay = torch.stack([sample_logits(logits[:, t], temperature=0.8, top_p=0.9, generator=g) for t in range(8)], 1)
    assert torch.equal(out[:, 5:], replay)


def test_batch_rows_equal_rows_run_alone():
    model = tiny()
    prompt = ids(3, 9, seed=7)
    out, logits = generate(model, prompt, 15, temperature=0, return_logits=True)
    for r in range(3):
        row, row_logits = generate(model, prompt[r : r + 1], 15, temperature=0, return_logits=True)
        assert torch.equal(out[r : r + 1], row)
        torch.testing.assert_close(logits[r : r + 1], row_logits, atol=ATOL, rtol=0)


def test_plan_forces_ids_and_restricts_masked_steps():
    model = tiny()
    boi, eoi, per_frame = 500, 501, 6
    visual = torch.zeros(VOCAB, dtype=torch.bool)
    visual[:64] = True
    plan = frame_plan(boi, eoi, per_frame, visual)
    out = generate(model, ids(2, 3), 2 * (per_frame + 2) + 3, seed=0, plan=plan)
    new = out[:, 3:]
    frame = [boi] + [None] * per_frame + [eoi]
    for t, want in enumerate(frame * 2 + frame[:3]):
        if want is None:
            assert (new[:, t] < 64).all(), f"step {t} left the visual ids: {new[:, t].tolist()}"
        else:
            assert (new[:, t] == want).all()
    assert torch.equal(out, generate(model, ids(2, 3), 2 * (per_frame + 2) + 3, seed=0, plan=plan))


def test_forced_steps_consume_no_randomness():
    """Forcing a token the sampler would have drawn anyway leaves the rest of the sampled output unchanged."""
    model = tiny()
    prompt = ids(1, 4)
    free = generate(model, prompt, 12, seed=5)
    forced_id = int(free[0, 4 + 3])
    forced = generate(model, prompt, 12, seed=5, plan=lambda t: forced_id if t == 3 else None)
    assert torch.equal(forced[:, :7], free[:, :7])
    g = torch.Generator().manual_seed(5)  # the stream skipped one draw: forced[8:] is what a replay without it gives
    _, logits = generate(model, prompt, 12, seed=5, plan=lambda t: forced_id if t == 3 else None, return_logits=True)
    replay = [sample_logits(logits[:, t], generator=g) for t in range(12) if t != 3]
    assert torch.equal(torch.stack(replay, 1)[0], torch.cat([forced[0, 4:7], forced[0, 8:]]))


def test_plan_per_row_forced_ids_and_masks():
    model = tiny()
    mask = torch.zeros(2, VOCAB, dtype=torch.bool)
    mask[0, 7], mask[1, 8:10] = True, True
    rules = {0: torch.tensor([3, 4]), 1: mask}
    out = generate(model, ids(2, 2), 3, seed=0, plan=rules.get)
    assert out[:, 2].tolist() == [3, 4]
    assert out[0, 3] == 7 and out[1, 3] in (8, 9)


def test_eos_rows_stay_done_and_decoding_stops_early():
    model = tiny()
    eos = 1
    only_eos = torch.zeros(VOCAB, dtype=torch.bool)
    only_eos[eos] = True
    no_eos = ~only_eos
    per_row = torch.stack([only_eos, no_eos])  # row 0 ends at step 2, row 1 at step 5

    def plan(t):
        return {2: per_row, 5: only_eos}.get(t, no_eos)

    calls = []
    hook = model.register_forward_hook(lambda *_: calls.append(1))
    out = generate(model, ids(2, 4), 30, seed=0, plan=plan, eos_id=eos)
    hook.remove()
    assert out.shape == (2, 34)
    assert (out[0, 4 + 2 :] == eos).all() and (out[0, 4:6] != eos).all()
    assert (out[1, 4 + 5 :] == eos).all() and (out[1, 4:9] != eos).all()
    assert len(calls) == 1 + 5  # prefill + the steps until every row was done
    full, _ = generate(model, ids(2, 4), 30, seed=0, plan=plan, eos_id=eos, return_logits=True)  # no early stop
    assert torch.equal(out, full)


# ---------------------------------------------------------------------------------------------------------------------
# Cache handling
# ---------------------------------------------------------------------------------------------------------------------


def test_cache_removed_when_absent_before_and_reused_when_it_fits():
    model = tiny()
    prompt = ids(2, 5)
    ref = generate(model, prompt, 10, temperature=0)
    assert not model.has_caches
    model.setup_caches(4, 64)
    buffer = model.layers[0].kv_cache.k
    model(ids(4, 30, seed=9), input_pos=torch.arange(30))  # stale contents: reset before reuse
    assert torch.equal(generate(model, prompt, 10, temperature=0), ref)
    assert model.has_caches and model.layers[0].kv_cache.k is buffer
    assert torch.equal(generate(model, prompt, 100, temperature=0)[:, :15], ref)  # too small: replaced, kept
    assert model.has_caches and model.layers[0].kv_cache.k.shape[2] == 105
    model.remove_caches()


def test_outputs_and_a_reallocated_cache_work_with_autograd_afterwards():
    model = tiny()
    model.setup_caches(1, 8)  # too small: generate replaces it (outside inference mode) and keeps it
    out, logits = generate(model, ids(1, 4), 10, seed=0, return_logits=True)
    assert not out.is_inference() and not logits.is_inference()
    model(out, input_pos=torch.arange(14)).sum().backward()  # ordinary cache buffers, ordinary ids
    assert model.tok_embeddings.weight.grad is not None
    model.remove_caches()


def test_zero_new_tokens_returns_the_prompt():
    model = tiny()
    out, logits = generate(model, ids(2, 5), 0, return_logits=True)
    assert torch.equal(out, ids(2, 5)) and logits.shape == (2, 0, VOCAB)


# ---------------------------------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prompt", "kwargs", "error", "match"),
    [
        (torch.zeros(5, dtype=torch.long), {}, ValueError, r"prompt must be a \(B, L\) tensor .* got \(5,\)"),
        (torch.zeros(2, 0, dtype=torch.long), {}, ValueError, "prompt must be"),
        (torch.zeros(2, 3), {}, TypeError, "prompt must hold integer token ids, got dtype torch.float32"),
        (None, {"temperature": -1.0}, ValueError, "temperature must be"),
        (None, {"top_p": 0.0}, ValueError, r"top_p must be in \(0, 1\]"),
        (None, {"top_k": 0}, ValueError, "top_k must be >= 1"),
        (None, {"seed": 0, "generator": torch.Generator()}, ValueError, "generator or seed, not both"),
        (None, {"window": 0}, ValueError, "window must be an int >= 1"),
        (None, {"eos_id": VOCAB}, ValueError, r"eos_id 512 is outside the vocabulary \[0, 512\)"),
        (None, {"plan": lambda t: 1.5}, TypeError, r"plan\(0\) must return an int"),
        (None, {"plan": lambda t: VOCAB}, ValueError, r"plan\(0\) forced id 512 is outside"),
        (None, {"plan": lambda t: torch.zeros(3, dtype=torch.long)}, ValueError, r"shape \(\) or \(2,\)"),
        (None, {"plan": lambda t: torch.ones(7, dtype=torch.bool)}, ValueError, r"mask must have shape \(512,\)"),
        (None, {"plan": lambda t: torch.zeros(VOCAB, dtype=torch.bool)}, ValueError, "allows no id"),
    ],
)
def test_bad_inputs_raise_clear_errors(prompt, kwargs, error, match):
    model = tiny()
    with pytest.raises(error, match=match):
        generate(model, ids(2, 3) if prompt is None else prompt, 4, **kwargs)
    assert not model.has_caches  # cleaned up even when the loop raised


def test_bidirectional_and_nd_rope_models_are_refused():
    with pytest.raises(ValueError, match="needs a causal model"):
        generate(tiny(causal=False), ids(1, 3), 2)
    with pytest.raises(ValueError, match="rope_axes=2"):
        generate(tiny(rope_axes=2), ids(1, 3), 2)
    with pytest.raises(ValueError, match="max_new_tokens must be an int >= 0"):
        generate(tiny(), ids(1, 3), -1)


# ---------------------------------------------------------------------------------------------------------------------
# torch.compile
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("window", [None, 8])
def test_compiled_decode_step_matches_eager(window):
    model = tiny()
    prompt = ids(2, 5)
    eager, eager_logits = generate(model, prompt, 20, seed=0, window=window, top_p=0.9, return_logits=True)
    compiled, compiled_logits = generate(
        model, prompt, 20, seed=0, window=window, top_p=0.9, compile=True, return_logits=True
    )
    assert torch.equal(eager, compiled)
    torch.testing.assert_close(eager_logits, compiled_logits, atol=ATOL, rtol=0)
