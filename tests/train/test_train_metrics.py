"""Metrics: JSONL appends, cut-back on resume (no duplicate steps, torn lines dropped), TensorBoard, summary."""

import json

import pytest
import torch

from vistok._optional import has
from vistok.train.metrics import MetricsLogger, Progress, format_summary, read_jsonl, truncate_jsonl


def test_lines_are_appended_and_flushed(tmp_path):
    log = MetricsLogger(tmp_path)
    log.log(1, {"loss": torch.tensor(0.5), "lr": 1e-3, "bad": float("nan"), "n": 3})
    assert read_jsonl(tmp_path / "metrics.jsonl") == [{"step": 1, "loss": 0.5, "lr": 1e-3, "bad": None, "n": 3}]
    log.log(2, {"loss": 0.25})
    log.close()
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [1, 2]


def test_resume_cuts_back_to_the_checkpoint_step(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = "".join(json.dumps({"step": s, "loss": 1.0 / s}) + "\n" for s in range(1, 6))
    path.write_text(rows + '{"step": 6, "lo')  # a line torn by a kill
    with MetricsLogger(tmp_path, resume_step=3) as log:
        assert [r["step"] for r in read_jsonl(path)] == [1, 2, 3]
        log.log(4, {"loss": 0.125})
    assert [r["step"] for r in read_jsonl(path)] == [1, 2, 3, 4]
    assert truncate_jsonl(path, 10) == 0  # nothing to drop
    assert truncate_jsonl(path, 0) == 4 and path.read_text() == ""


def test_disabled_logger_writes_nothing(tmp_path):
    log = MetricsLogger(tmp_path / "run", enabled=False)
    log.log(1, {"loss": 1.0})
    log.close()
    assert not (tmp_path / "run").exists()
    MetricsLogger(None).log(1, {"loss": 1.0})  # no directory: also a no-op


@pytest.mark.skipif(not has("tensorboard"), reason="tensorboard not installed")
def test_tensorboard_events_are_written(tmp_path):
    with MetricsLogger(tmp_path, tensorboard=True) as log:
        log.log(1, {"loss": 0.5, "note": "text is skipped", "flag": True})
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))


def test_progress_and_summary(capsys):
    bar = Progress(10, initial=4, enabled=False)
    bar.update()
    bar.show(loss=0.5)
    bar.write("never shown")
    bar.close()
    assert "never shown" not in capsys.readouterr().err
    line = format_summary(steps=10, start_step=4, elapsed_s=2.0, last={"loss": 0.123456}, skipped=1, out_dir="runs/x")
    assert line == (
        "trained 6 step(s) to step 10 (resumed at step 4) in 2.0 s; last loss 0.1235; "
        "1 step(s) skipped for non-finite loss/grad; checkpoints and metrics.jsonl in runs/x"
    )
