"""Chat-UniVi evaluation: the visual-token counts reported (eval rows, table) are the ones the model received; for a
video, "merge:N" / "pool:N" mean N tokens *per event*."""

import math

import pytest
import torch

from vistok.models.univi import UniVi, UniViConfig
from vistok.train.univi import evaluate_univi, format_eval

TINY = dict(dim=32, n_layers=2, n_heads=2, max_seq_len=512, stages=(8, 4, 2), video_stages=(6, 4, 2))


def _data(shape: tuple[int, ...], n: int = 3) -> dict:
    torch.manual_seed(0)
    qa = [[("how many shapes move?", "2"), ("which way does the red circle move?", "left")] for _ in range(n)]
    return {"features": torch.randn(n, *shape).half(), "grid": [4, 4], "qa": qa, "caption": ["x"] * n}


def _recording(model: UniVi) -> list[int]:
    """Record the number of visual slots filled in every batch the model builds (what the LM really received)."""
    seen: list[int] = []
    build = model.build_batch

    def wrapped(vt, turns, left_pad=False):
        out = build(vt, turns, left_pad)
        pad = model.text.pad_id
        row_slots = [(out.ids[i] == pad) & out.attend[i] for i in range(out.ids.shape[0])]
        seen.extend(int(s.sum()) for s in row_slots)
        return out

    model.build_batch = wrapped
    return seen


@pytest.mark.parametrize("frames", [8, 5])
def test_video_token_counts_are_what_the_model_received_per_event(frames):
    torch.manual_seed(0)
    model = UniVi(UniViConfig(**TINY, frames_per_event=4)).eval()
    held = {"video": _data((frames, 16, 10)), "image": _data((16, 10))}
    specs = ("all", "merge", "pool", "merge:4", "pool:4")
    expected_events = math.ceil(frames / 4)
    for spec in specs:
        seen = _recording(model)
        report = evaluate_univi(model, {"video": held["video"]}, held, (spec,), questions_per_item=2, progress=False)
        row = report["kinds"]["video"][spec]
        received = seen[: row["n"]]  # the reduction's answers come first (then the no-image baseline)
        assert row["tokens"] == pytest.approx(sum(received) / len(received)), spec
        if spec == "all":
            assert row["events"] is None and row["tokens"] == frames * 16
            continue
        per_event = 4 if spec.endswith(":4") else sum(TINY["video_stages"])
        assert row["events"] == expected_events and row["requested_per_event"] == per_event
        assert row["tokens_per_event"] * row["events"] == pytest.approx(row["tokens"])
        assert row["tokens"] == expected_events * per_event  # N per event, every event
        table = format_eval(report)
        assert f"{expected_events * per_event} = {expected_events}×{per_event}" in table
        del model.build_batch


def test_image_token_counts_are_per_image():
    torch.manual_seed(0)
    model = UniVi(UniViConfig(**TINY)).eval()
    data = _data((16, 10))
    seen = _recording(model)
    report = evaluate_univi(model, {"image": data}, {"image": data}, ("merge:5",), questions_per_item=2, progress=False)
    row = report["kinds"]["image"]["merge:5"]
    assert seen[: row["n"]] == [5] * row["n"]
    assert row["tokens"] == 5 and row["events"] == 1 and row["tokens_per_event"] == 5


def test_shuffled_image_control_answers_with_another_items_tokens():
    torch.manual_seed(0)
    model = UniVi(UniViConfig(**TINY)).eval()
    data = _data((16, 10), n=4)
    seen: list[torch.Tensor] = []
    tokens = model.visual_tokens

    def wrapped(features, grid, reduction=None, num_tokens=None):
        seen.append(features.clone())
        return tokens(features, grid, reduction, num_tokens)

    model.visual_tokens = wrapped
    report = evaluate_univi(model, {"image": data}, {"image": data}, ("all", "merge"), questions_per_item=1)
    rows = report["kinds"]["image"]
    assert list(rows)[:4] == ["all", "merge", "majority", "shuffled image (merge)"]
    assert rows["shuffled image (merge)"]["tokens"] == rows["merge"]["tokens"] == 14
    # calls: all, merge, shuffled; the shuffled one sees item (i + 2) mod 4 where merge saw item i
    torch.testing.assert_close(seen[2], data["features"][[2, 3, 0, 1]].float())
    torch.testing.assert_close(seen[1], data["features"].float())


def test_accuracy_plot_is_written_from_the_report(tmp_path):
    pytest.importorskip("matplotlib")
    from vistok.train.univi import write_accuracy_png

    torch.manual_seed(0)
    model = UniVi(UniViConfig(**TINY)).eval()
    held = {"video": _data((8, 16, 10)), "image": _data((16, 10))}
    report = evaluate_univi(model, held, held, ("merge", "merge:4", "pool:4"), questions_per_item=1, progress=False)
    path = write_accuracy_png(report, tmp_path / "accuracy.png")
    assert path is not None and path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert write_accuracy_png({"kinds": {}}, tmp_path / "none.png") is None


def test_paired_merged_vs_pooled_comparison():
    """The paired comparison of two reductions on the same questions: difference, paired standard error and the exact
    McNemar p-value (scipy's binomial test of the discordant pairs); evaluate_univi reports it per token budget."""
    scipy_stats = pytest.importorskip("scipy.stats")
    from vistok.train.univi import merge_vs_pool, paired_comparison

    gen = torch.Generator().manual_seed(0)
    for n, p_a, p_b in [(300, 0.45, 0.40), (57, 0.5, 0.5), (12, 0.9, 0.1)]:
        a = (torch.rand(n, generator=gen) < p_a).int().tolist()
        b = (torch.rand(n, generator=gen) < p_b).int().tolist()
        c = paired_comparison(a, b)
        d = torch.tensor(a, dtype=torch.float64) - torch.tensor(b, dtype=torch.float64)
        assert c["diff"] == pytest.approx(float(d.mean()), abs=1e-12)
        assert c["se"] == pytest.approx(float(d.std() / math.sqrt(n)), rel=1e-9)
        only_a, only_b = int((d > 0).sum()), int((d < 0).sum())
        assert (c["only_a"], c["only_b"], c["n"]) == (only_a, only_b, n)
        ref = scipy_stats.binomtest(only_a, only_a + only_b, 0.5).pvalue if only_a + only_b else 1.0
        assert c["p_mcnemar"] == pytest.approx(ref, rel=1e-9)
    assert paired_comparison([1, 1, 0], [1, 1, 0])["p_mcnemar"] == 1.0
    with pytest.raises(ValueError, match="equally long"):
        paired_comparison([1, 0], [1])
    rows = {
        "merge": {"tokens": 9, "correct": [1, 0, 1]},
        "pool": {"tokens": 9, "correct": [0, 0, 1]},
        "merge:4": {"tokens": 4, "correct": [1, 1, 1]},
        "all": {"tokens": 16, "correct": [1, 1, 1]},
    }
    assert list(merge_vs_pool(rows)) == ["merged vs pooled"]  # merge:4 has no pooled counterpart
    torch.manual_seed(0)
    model = UniVi(UniViConfig(**TINY)).eval()
    held = {"image": _data((16, 10))}
    report = evaluate_univi(model, held, held, ("merge:4", "pool:4"), questions_per_item=2, progress=False)
    cmp = report["merged_vs_pooled"]["image"]["merged vs pooled:4"]
    m, p = report["kinds"]["image"]["merge:4"], report["kinds"]["image"]["pool:4"]
    assert cmp["n"] == m["n"] == len(m["correct"]) == 6 and cmp["diff"] == pytest.approx(m["accuracy"] - p["accuracy"])
    assert "merged vs pooled:4" in format_eval(report)
