"""Chat-UniVi model: sequence format and loss mask, token reduction and ordering, greedy decoding, save/load."""

import pytest
import torch

from vistok.models.univi import (
    IGNORE,
    PRESETS,
    SCALE_ALL,
    SCALE_POOL,
    UniVi,
    UniViConfig,
    VisualTokens,
    reduce_features,
    scaled_stages,
)
from vistok.registry import create_model

TINY = dict(dim=32, n_layers=2, n_heads=2, max_seq_len=512)


def _model(seed: int = 0, **kw) -> UniVi:
    torch.manual_seed(seed)
    return UniVi(UniViConfig(**(TINY | kw))).eval()


def _lex_sorted(pos: torch.Tensor) -> bool:
    """Rows of (t, y, x) are in non-decreasing lexicographic order."""
    keys = [tuple(p) for p in pos.tolist()]
    return keys == sorted(keys)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_build(name):
    m = create_model(name)
    assert isinstance(m, UniVi) and m.config.vocab_size == len(m.text)
    assert sum(m.config.stages) == 112


def test_loss_mask_covers_exactly_the_answer_bytes():
    m = _model()
    vt = reduce_features(torch.randn(1, 256, 10), (16, 16), "merge")
    turns = [("how many shapes are there?", "3"), ("what colour is the circle?", "red")]
    b = m.build_batch(vt, [turns])
    t = m.text
    ids = b.ids[0].tolist()
    # the targets are the next ids exactly where an answer byte or its EOS follows
    want = []
    prefix = [t.bos_id, t.boi_id] + [t.pad_id] * 112 + [t.eoi_id]
    seq = list(prefix)
    for q, a in turns:
        seq += list((q + " ").encode())
        ans = [*a.encode(), t.eos_id]
        want += [(len(seq) - 1 + j, tok) for j, tok in enumerate(ans)]
        seq += ans
    assert ids == seq
    got = [(i, v) for i, v in enumerate(b.targets[0].tolist()) if v != IGNORE]
    assert got == want
    assert bytes(v for _, v in got if v < 256) == b"3red"
    # the visual slots hold the projected tokens, not the PAD embedding
    vis = m.embed_visual(vt)[0]
    assert torch.equal(b.embeds[0, 2:114], vis)


def test_image_reductions_counts_and_order():
    torch.manual_seed(0)
    x = torch.randn(2, 256, 10)
    merged = reduce_features(x, (16, 16), "merge")
    assert merged.tokens.shape == (2, 112, 10) and merged.counts.tolist() == [112, 112]
    for b in range(2):  # stage-major, each stage ordered by centroid (t, y, x)
        assert merged.scale[b].tolist() == [0] * 64 + [1] * 32 + [2] * 16
        for lo, hi in ((0, 64), (64, 96), (96, 112)):
            assert _lex_sorted(merged.positions[b, lo:hi])
    pooled = reduce_features(x, (16, 16), "pool")
    assert pooled.tokens.shape == (2, 112, 10) and (pooled.scale == SCALE_POOL).all()
    assert _lex_sorted(pooled.positions[0])  # pooled cells in raster order
    torch.testing.assert_close(pooled.tokens[:, 0], x[:, [0, 1, 16, 17]].mean(1))  # the top-left 2×2 cell
    every = reduce_features(x, (16, 16), "all")
    assert torch.equal(every.tokens, x) and (every.scale == SCALE_ALL).all() and _lex_sorted(every.positions[0])
    assert reduce_features(x, (16, 16), "merge", num_tokens=56).counts.tolist() == [56, 56]
    assert scaled_stages((64, 32, 16), 56) == (32, 16, 8)
    assert float(merged.positions.min()) >= 0 and float(merged.positions.max()) <= 1


def test_video_tokens_are_event_major_in_time_order():
    torch.manual_seed(1)
    x = torch.randn(2, 8, 64, 10)
    x[:, 4:] += 3  # two clear events: frames 0-3 and 4-7
    vt = reduce_features(x, (8, 8), "merge", video_stages=(16, 8, 4), frames_per_event=4)
    assert vt.counts.tolist() == [56, 56]
    t = vt.positions[..., 0] * 7  # back to frame units
    assert (t[:, :28] <= 3.0 + 1e-5).all() and (t[:, 28:] >= 4.0 - 1e-5).all()
    for b in range(2):
        for lo, hi in ((0, 16), (16, 24), (24, 28), (28, 44), (44, 52), (52, 56)):
            assert _lex_sorted(vt.positions[b, lo:hi])
    pooled = reduce_features(x, (8, 8), "pool", video_stages=(16, 8, 4), frames_per_event=4)
    assert pooled.counts.tolist() == [56, 56]
    assert reduce_features(x, (8, 8), "all").counts.tolist() == [512, 512]


def test_greedy_with_kv_cache_equals_argmax_of_full_forwards():
    m = _model(3)
    vt = reduce_features(torch.randn(3, 64, 10), (8, 8), "merge", stages=(16, 8, 4))
    qs = ["how many shapes are there?", "what?", "where is the red circle in this picture?"]
    cached = m.answer(vt, qs, max_new_tokens=10)
    full = m.answer(vt, qs, max_new_tokens=10, use_cache=False)
    assert cached == full
    # and the batch answers equal the one-by-one answers (left padding is masked out exactly)
    for i, q in enumerate(qs):
        one = VisualTokens(*(f[i : i + 1] for f in vt))
        assert m.answer(one, [q], max_new_tokens=10) == [cached[i]]


def test_text_only_sequences_have_no_visual_slots():
    m = _model()
    b = m.build_batch(VisualTokens.empty(2, 10), [[("q?", "a")], [("longer q?", "bb")]])
    t = m.text
    assert b.ids[0, :3].tolist() == [t.bos_id, t.boi_id, t.eoi_id]
    assert b.attend.sum(1).tolist() == [3 + 3 + 2, 3 + 10 + 3]


def test_save_load_round_trip_gives_identical_answers(tmp_path):
    m = _model(5)
    with torch.no_grad():
        for p in m.projector.parameters():
            p.add_(0.1 * torch.randn_like(p))
    vt = reduce_features(torch.randn(2, 64, 10), (8, 8), "pool", stages=(16, 8, 4))
    qs = ["a?", "what colour is the square?"]
    before = m.answer(vt, qs, max_new_tokens=8)
    m.save_pretrained(tmp_path / "model")
    loaded = UniVi.from_pretrained(tmp_path / "model")
    assert loaded.answer(vt, qs, max_new_tokens=8) == before
    for (k, a), (k2, b) in zip(m.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    assert not any(k.startswith("_encoder") for k in loaded.state_dict())


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="reduction"):
        UniViConfig(reduction="median")
    with pytest.raises(ValueError, match="unknown reduction"):
        reduce_features(torch.randn(1, 16, 10), (4, 4), "median")
    with pytest.raises(ValueError, match="grid"):
        reduce_features(torch.randn(1, 16, 10), (5, 5), "merge")
    with pytest.raises(ValueError, match="encoder_path"):
        UniViConfig(encoder="hf")
    with pytest.raises(FileNotFoundError):
        UniVi.from_pretrained("/nonexistent/univi-model")
