"""MaskGIT (MAGVIT-v2's masked token model) and its decoding loop, checked with numbers: the cosine mask schedule
against its formula, exact masked counts during decoding, sub-token round trips and factorized log-probs, a loss that
only sees masked positions, bidirectional attention, classifier-free guidance, determinism, save/load, and a tiny
class-conditional overfit that decoding then reproduces."""

import itertools
import math

import pytest
import torch

from vistok.generate.maskgit import guided_logits, maskgit_generate
from vistok.hub import from_pretrained
from vistok.models.maskgit import (
    MaskGIT,
    MaskGITConfig,
    cosine_schedule,
    full_log_probs,
    masked_cross_entropy,
    num_masked_after_step,
    num_masked_train,
    random_mask,
)
from vistok.registry import create_model, list_models


def tiny(name: str = "maskgit-tiny", seed: int = 0, **overrides) -> MaskGIT:
    torch.manual_seed(seed)
    return create_model(name, **overrides).eval()


def rand_ids(b: int, grid, vocab: int = 1024, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, vocab, (b, *grid), generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------------------------------
# Config and presets
# ---------------------------------------------------------------------------------------------------------------------


def test_presets_are_registered_and_paper_sizes_are_right():
    assert {"maskgit-tiny", "maskgit-tiny-video", "maskgit-small", "maskgit-base"} <= set(list_models("maskgit*"))
    for name in list_models("maskgit*"):
        with torch.device("meta"):
            model = create_model(name)
        c = model.config
        assert c.num_tokens == math.prod(c.grid) and c.seq_len == c.num_tokens + (c.num_classes > 0)
        assert c.sub_vocab**c.sub_tokens == c.codebook_size
    with torch.device("meta"):
        base = create_model("maskgit-base")
    assert base.config.sub_vocab == 512 and base.config.grid == (16, 16) and base.config.num_classes == 1000
    assert 300e6 < base.num_params() < 320e6  # the ~307M masked transformer of MAGVIT(-v2)
    video = MaskGITConfig.from_name("maskgit-tiny-video")
    assert video.cond_tokens == 64 and video.transformer_config().rope_axes == 3


@pytest.mark.parametrize(
    "overrides",
    [
        {"codebook_size": 512, "sub_tokens": 2},  # 512 is not a square
        {"cond_frames": 1},  # needs a (T, H, W) grid
        {"grid": (8,)},
        {"num_classes": -1},
    ],
)
def test_bad_configs_raise(overrides):
    with pytest.raises(ValueError):
        MaskGITConfig.from_name("maskgit-tiny", **overrides)


def test_uneven_rotary_split_for_three_axes():
    # head size 16 over 3 axes: 8 rotary pairs → (2, 3, 3) pairs, the extra ones on the spatial axes
    assert MaskGITConfig.from_name("maskgit-tiny-video").transformer_config().rope_axes_dims == (4, 6, 6)


# ---------------------------------------------------------------------------------------------------------------------
# Mask schedule
# ---------------------------------------------------------------------------------------------------------------------


def test_training_mask_count_is_the_documented_formula():
    r = torch.rand(2000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    r = torch.cat([r, torch.tensor([0.0, 1e-12, 0.5, 1 - 1e-12], dtype=torch.float64)])
    for n in (1, 2, 7, 64, 192, 256):
        got = num_masked_train(r, n)
        want = [min(n, max(1, math.ceil(math.cos(math.pi / 2 * x) * n))) for x in r.tolist()]
        assert got.tolist() == want
        mask = random_mask(got, n, torch.Generator().manual_seed(n))
        assert mask.sum(1).tolist() == want


def test_sample_mask_draws_r_then_masks_that_many_and_never_the_condition_frames():
    model = tiny("maskgit-tiny-video")
    n = model.config.num_tokens - model.config.cond_tokens
    mask = model.sample_mask(500, torch.device("cpu"), torch.Generator().manual_seed(3))
    r = torch.rand(500, generator=torch.Generator().manual_seed(3), dtype=torch.float64)  # the first draw is r
    assert mask.shape == (500, 192)
    assert not mask[:, :64].any()
    assert mask.sum(1).tolist() == num_masked_train(r, n).tolist()
    # positions are uniform: every maskable position gets masked about equally often
    freq = mask[:, 64:].float().mean(0)
    assert freq.min() > 0.5 * freq.mean()


def test_decoding_schedule_formula():
    assert [num_masked_after_step(t, 12, 64) for t in range(13)] == [64, 63, 61, 59, 55, 50, 45, 38, 32, 24, 16, 8, 0]
    for steps in (1, 2, 8, 12, 64, 100):
        for n in (1, 5, 64, 256):
            counts = [num_masked_after_step(t, steps, n) for t in range(steps + 1)]
            assert counts[0] == n and counts[-1] == 0
            assert all(a >= b for a, b in itertools.pairwise(counts))
            for t in range(1, steps):
                assert counts[t] == math.floor(cosine_schedule(t / steps) * n + 1e-9)


# ---------------------------------------------------------------------------------------------------------------------
# Sub-tokens
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("vocab,sub", [(1024, 1), (1024, 2), (2**18, 2), (1000, 3), (4096, 3)])
def test_sub_tokens_round_trip(vocab, sub):
    model = tiny(codebook_size=vocab, sub_tokens=sub)
    k = model.config.sub_vocab
    ids = torch.randint(0, vocab, (5000,), generator=torch.Generator().manual_seed(0))
    ids[:2] = torch.tensor([0, vocab - 1])
    digits = model.to_sub(ids)
    assert digits.shape == (5000, sub) and digits.min() >= 0 and digits.max() < k
    assert torch.equal(model.from_sub(digits), ids)
    if sub == 2 and vocab & (vocab - 1) == 0:  # V = 2^b: hi = id >> b/2, lo = id & (2^(b/2) − 1)
        half = (vocab.bit_length() - 1) // 2
        assert torch.equal(digits[:, 0], ids >> half) and torch.equal(digits[:, 1], ids & ((1 << half) - 1))
    # every digit combination is a distinct id: the map is a bijection
    all_digits = torch.cartesian_prod(*[torch.arange(k)] * sub).reshape(-1, sub) if k**sub <= 5000 else None
    if all_digits is not None:
        assert sorted(model.from_sub(all_digits).tolist()) == list(range(vocab))


def test_factorized_log_prob_is_the_sum_of_sub_token_log_probs():
    model = tiny(codebook_size=1024, sub_tokens=2)
    ids = rand_ids(2, (8, 8))
    logits = model(ids)  # (B, N, 2, 32)
    assert logits.shape == (2, 64, 2, 32)
    full = full_log_probs(logits, 1024)  # (B, N, 1024)
    assert torch.allclose(full.logsumexp(-1), torch.zeros(2, 64), atol=1e-5)  # a normalized distribution over ids
    hi, lo = ids.flatten(1) // 32, ids.flatten(1) % 32
    by_hand = logits[..., 0, :].log_softmax(-1).gather(-1, hi[..., None])[..., 0]
    by_hand = by_hand + logits[..., 1, :].log_softmax(-1).gather(-1, lo[..., None])[..., 0]
    assert torch.allclose(model.log_prob(logits, ids.flatten(1)), by_hand, atol=1e-6)
    assert torch.allclose(full.gather(-1, ids.flatten(1)[..., None])[..., 0], by_hand, atol=1e-5)


def test_heads_are_tied_to_the_input_embeddings():
    model = tiny(codebook_size=1024, sub_tokens=2)
    emb = model.tok_embeddings[1].weight
    h = torch.randn(1, 3, model.config.dim)
    with torch.no_grad():
        before = model.head(h)
        emb[5] += 1.0  # changing one embedding row changes exactly that logit of that head
    after = model.head(h)
    changed = (after - before).abs() > 1e-6
    assert changed[..., 1, 5].all() and changed.sum() == 3


# ---------------------------------------------------------------------------------------------------------------------
# Loss
# ---------------------------------------------------------------------------------------------------------------------


def test_masked_cross_entropy_only_sees_masked_positions():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 10, 2, 8, generator=g, requires_grad=True)
    targets = torch.randint(0, 8, (3, 10, 2), generator=g)
    mask = torch.rand(3, 10, generator=g) < 0.4
    loss, acc = masked_cross_entropy(logits, targets, mask)
    loss.backward()
    assert (logits.grad[~mask] == 0).all() and (logits.grad[mask].abs().sum((-1, -2)) > 0).all()
    # brute force: mean over masked tokens of Σ_j −log softmax(logits_j)[target_j]
    logp = logits.detach().log_softmax(-1).gather(-1, targets[..., None])[..., 0].sum(-1)
    assert torch.allclose(loss, -logp[mask].mean(), atol=1e-6)
    hits = (logits.detach().argmax(-1) == targets).all(-1)
    assert acc == hits[mask].float().mean()
    other = targets.clone()
    other[~mask] = (other[~mask] + 1) % 8  # a different target at every unmasked position
    assert torch.equal(masked_cross_entropy(logits, other, mask)[0], loss)


def test_model_loss_masks_inputs_and_scores_only_masked_tokens():
    model = tiny()
    ids = rand_ids(2, (8, 8)).flatten(1)
    mask = torch.zeros(2, 64, dtype=torch.bool)
    mask[:, [3, 10, 40]] = True
    cls = torch.tensor([1, 2])
    out = model.loss(ids, cls, mask=mask, p_uncond=0.0)
    logits = model(ids.masked_fill(mask, model.mask_id), cls)
    assert torch.allclose(out.logits, logits)
    assert torch.allclose(out.loss, -model.log_prob(logits, ids)[mask].mean(), atol=1e-6)
    # an id under the mask reaches the loss only as a target: the model's inputs (and logits) do not change
    ids2 = ids.clone()
    ids2[:, 3] = (ids2[:, 3] + 1) % 1024  # a masked position: the input is [MASK] either way, the target changes
    out2 = model.loss(ids2, cls, mask=mask, p_uncond=0.0)
    assert torch.allclose(out2.logits, out.logits) and not torch.allclose(out2.loss, out.loss)
    # p_uncond = 1 is the null class everywhere
    null = model.loss(ids, torch.full((2,), model.null_class), mask=mask, p_uncond=0.0)
    assert torch.allclose(model.loss(ids, cls, mask=mask, p_uncond=1.0).loss, null.loss)


def test_video_loss_never_masks_the_condition_frame():
    model = tiny("maskgit-tiny-video")
    ids = rand_ids(16, (3, 8, 8))
    out = model.loss(ids, generator=torch.Generator().manual_seed(0))
    assert not out.mask[:, :64].any() and (out.mask.sum(1) >= 1).all()
    out.logits.retain_grad()
    out.loss.backward()
    assert (out.logits.grad[:, :64] == 0).all()  # the conditioning frame's outputs are not in the loss
    assert (out.logits.grad[out.mask].abs().sum((-1, -2)) > 0).all()


# ---------------------------------------------------------------------------------------------------------------------
# Forward: attention pattern, classes, bad input
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["maskgit-tiny", "maskgit-tiny-video"])
def test_attention_is_bidirectional(name):
    model = tiny(name)
    grid = model.config.grid
    ids = rand_ids(1, grid)
    other = ids.clone().flatten(1)
    other[0, -1] = (other[0, -1] + 7) % 1024
    a, b = model(ids), model(other)
    assert not torch.allclose(a[0, 0], b[0, 0])  # the last position changes the first position's logits


def test_class_token_conditions_and_null_class_is_the_default():
    model = tiny()
    ids = rand_ids(2, (8, 8))
    assert not torch.allclose(model(ids, torch.tensor([0, 0])), model(ids, torch.tensor([1, 1])))
    assert torch.equal(model(ids), model(ids, torch.full((2,), model.null_class)))
    with pytest.raises(ValueError, match="class ids"):
        model(ids, torch.tensor([0, 11]))
    with pytest.raises(ValueError, match="unconditional"):
        tiny("maskgit-tiny-video")(rand_ids(1, (3, 8, 8)), torch.tensor([0]))


def test_bad_ids_raise_clear_errors():
    model = tiny()
    with pytest.raises(ValueError, match=r"\(B, 8, 8\)"):
        model(torch.zeros(1, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="1024"):
        model(torch.full((1, 64), 1025))
    with pytest.raises(ValueError, match=r"\[0, 1024\)"):
        model.loss(torch.full((1, 64), 1024), torch.tensor([0]))  # [MASK] is not a training target
    with pytest.raises(TypeError):
        model(torch.zeros(1, 64))


def test_save_load_round_trip_gives_identical_logits(tmp_path):
    model = tiny(codebook_size=1024, sub_tokens=2)
    model.save_pretrained(tmp_path / "m")
    loaded = from_pretrained(tmp_path / "m")
    assert isinstance(loaded, MaskGIT) and loaded.config == model.config
    ids, cls = rand_ids(2, (8, 8)), torch.tensor([3, 4])
    assert torch.equal(model(ids, cls), loaded(ids, cls))


# ---------------------------------------------------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "steps,kw",
    [
        (12, {}),
        (1, {}),
        (5, {"temperature": 0.0, "choice_temperature": 0.0}),
        (70, {"top_k": 3}),  # more steps than tokens: some steps reveal nothing
        (8, {"guidance_scale": 3.0}),
    ],
)
def test_decoding_keeps_exactly_the_scheduled_number_masked(steps, kw):
    model = tiny(codebook_size=1024, sub_tokens=2 if steps == 70 else 1)
    out = maskgit_generate(model, class_ids=[0, 1, 2], steps=steps, seed=0, return_history=True, **kw)
    hist_ids, hist_mask = out.history_ids.flatten(2), out.history_mask.flatten(2)  # (T, B, N)
    assert hist_ids.shape == (steps, 3, 64)
    for t in range(1, steps + 1):
        want = num_masked_after_step(t, steps, 64)
        assert hist_mask[t - 1].sum(-1).tolist() == [want] * 3
        assert torch.equal(hist_ids[t - 1] == model.mask_id, hist_mask[t - 1])
        if t > 1:
            fixed = ~hist_mask[t - 2]
            assert torch.equal(hist_ids[t - 1][fixed], hist_ids[t - 2][fixed])  # unmasked tokens never change
    assert torch.equal(out.ids.flatten(1), hist_ids[-1])
    assert (out.ids < 1024).all() and (out.ids >= 0).all()


def test_video_decoding_keeps_the_condition_frame():
    model = tiny("maskgit-tiny-video")
    cond = rand_ids(2, (1, 8, 8), seed=5)
    out = maskgit_generate(model, cond_ids=cond, steps=6, seed=1, return_history=True)
    assert out.ids.shape == (2, 3, 8, 8)
    assert torch.equal(out.history_ids[:, :, 0], cond[None, :, 0].expand(6, -1, -1, -1))
    assert not out.history_mask[:, :, 0].any()
    assert [int(m) for m in out.history_mask[:, 0].flatten(1).sum(1)] == [
        num_masked_after_step(t, 6, 128) for t in range(1, 7)
    ]
    with pytest.raises(ValueError, match="cond_ids"):
        maskgit_generate(model, 2, steps=2)
    with pytest.raises(ValueError, match="cond_ids"):
        maskgit_generate(model, cond_ids=rand_ids(2, (1, 4, 4)), steps=2)


def test_decoding_is_deterministic_by_seed():
    model = tiny()
    a = maskgit_generate(model, class_ids=[1, 2], steps=6, seed=7)
    b = maskgit_generate(model, class_ids=[1, 2], steps=6, generator=torch.Generator().manual_seed(7))
    c = maskgit_generate(model, class_ids=[1, 2], steps=6, seed=8)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_guidance_zero_is_the_conditional_model_and_scale_s_is_1_plus_s_cond_minus_s_uncond():
    model = tiny()
    ids = rand_ids(3, (8, 8)).flatten(1)
    ids[:, ::2] = model.mask_id
    cls = torch.tensor([0, 4, 9])
    cond, uncond = model(ids, cls), model(ids)
    assert torch.equal(guided_logits(model, ids, cls, 0.0), cond)
    assert torch.allclose(guided_logits(model, ids, cls, 2.0), 3 * cond - 2 * uncond, atol=1e-5)
    with pytest.raises(ValueError, match="class-conditional"):
        guided_logits(tiny("maskgit-tiny-video"), rand_ids(1, (3, 8, 8)).flatten(1), None, 1.0)


# ---------------------------------------------------------------------------------------------------------------------
# A tiny overfit
# ---------------------------------------------------------------------------------------------------------------------


def test_tiny_model_memorizes_a_grid_per_class_and_decoding_reproduces_it():
    torch.manual_seed(0)
    model = create_model("maskgit-tiny", num_classes=3)
    grids = rand_ids(3, (8, 8), seed=11)  # one fixed 8×8 grid of 1,024 codes per class
    classes = torch.arange(3)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    gen = torch.Generator().manual_seed(0)
    batch = classes.repeat(4)
    for _ in range(120):
        out = model.loss(grids[batch], batch, generator=gen, p_uncond=0.0)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    model.eval()
    everything = torch.ones(3, 64, dtype=torch.bool)  # the hardest case: the whole grid masked (decoding's step 1)
    assert model.loss(grids, classes, mask=everything, p_uncond=0.0).loss.item() < 0.1
    sample = maskgit_generate(model, class_ids=classes, steps=8, seed=0)
    assert (sample == grids).float().mean().item() > 0.95
    # the class picks the grid: class 1's sample is far from the other grids
    assert (sample[1] == grids[0]).float().mean() < 0.1 and (sample[1] == grids[2]).float().mean() < 0.1
