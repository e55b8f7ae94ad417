"""Runs of ``_toy_train.py`` in separate processes: 2-process gloo DDP under torchrun against one process on the
same global batch, and SIGKILL-and-resume reproducing an uninterrupted run bit for bit."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vistok.train import read_jsonl
from vistok.train.checkpoint import list_checkpoints

TOY = Path(__file__).with_name("_toy_train.py")
DIST_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "GROUP_RANK")


def run_toy(out: Path, *args: str, nproc: int = 1, expect_ok: bool = True) -> subprocess.CompletedProcess:
    """Run the toy script in ``nproc`` processes (torchrun --standalone when more than one)."""
    env = {k: v for k, v in os.environ.items() if k not in DIST_ENV} | {"OMP_NUM_THREADS": "1"}
    launcher = [sys.executable]
    if nproc > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    cmd = [*launcher, str(TOY), "--out", str(out), *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    if expect_ok and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr[-4000:]}")
    return proc


def _result(out: Path, rank: int = 0) -> dict:
    return torch.load(out / f"result_{rank}.pt", weights_only=True)


def _close(a: dict, b: dict, atol: float) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=0, msg=lambda m, k=k: f"{k}: {m}")


def _equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _check_ddp_matches(single: Path, ddp: Path, steps: int) -> None:
    one, r0, r1 = _result(single), _result(ddp, 0), _result(ddp, 1)
    assert len(one["per_step"]) == len(r0["per_step"]) == steps
    for step in range(steps):  # after one step and after every later one
        _close(r0["per_step"][step], one["per_step"][step], atol=1e-6)
        _equal(r0["per_step"][step], r1["per_step"][step])  # DDP replicas stay identical
    _close(r0["ema"], one["ema"], atol=1e-6)
    m1, m2 = read_jsonl(single / "metrics.jsonl"), read_jsonl(ddp / "metrics.jsonl")
    assert [r["step"] for r in m1] == [r["step"] for r in m2] == list(range(1, steps + 1))
    assert [r["skipped"] for r in m1] == [r["skipped"] for r in m2]
    for a, b in zip(m1, m2):
        if a["loss"] is None:  # a skipped step
            assert b["loss"] is None
            continue
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-6) and b["mae"] == pytest.approx(a["mae"], abs=1e-6)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], abs=1e-5) and b["lr"] == a["lr"]
    assert not torch.equal(one["per_step"][0]["net.0.weight"], one["per_step"][-1]["net.0.weight"])


def test_ddp_two_processes_match_one_process(tmp_path):
    """torchrun, 2 ranks x 4 items (callable data) == 1 process x 8 items: parameters after each of 4 steps.

    At step 3 the loss is made infinite on rank 1 only (gradients stay finite): both ranks must skip the update,
    as the single process does, or the replicas would drift apart.
    """
    common = ("--steps", "4", "--global-batch", "8", "--opt", "sgd", "--clip", "0.5", "--ema", "0.9")
    run_toy(tmp_path / "one", *common, "--inf-loss-at", "3")
    run_toy(tmp_path / "ddp", *common, "--inf-loss-at", "3", nproc=2)
    _check_ddp_matches(tmp_path / "one", tmp_path / "ddp", steps=4)
    skipped = [r["skipped"] for r in read_jsonl(tmp_path / "ddp" / "metrics.jsonl")]
    assert skipped == [0, 0, 1, 0]
    r0 = _result(tmp_path / "ddp")
    _equal(r0["per_step"][1], r0["per_step"][2])


def test_ddp_grad_accum_dataset_matches_one_process(tmp_path):
    """torchrun, 2 ranks x grad_accum 2 x 2 items (dataset, no_sync micro-steps) == 1 process x 8 items."""
    common = ("--steps", "3", "--global-batch", "8", "--data", "dataset", "--opt", "sgd", "--ema", "0.9")
    run_toy(tmp_path / "one", *common)
    run_toy(tmp_path / "ddp", *common, "--accum", "2", nproc=2)
    _check_ddp_matches(tmp_path / "one", tmp_path / "ddp", steps=3)


def _check_resume(full: Path, cut: Path, steps: int, ckpt_step: int) -> None:
    a, b = read_jsonl(full / "metrics.jsonl"), read_jsonl(cut / "metrics.jsonl")
    assert [r["step"] for r in b] == list(range(1, steps + 1))  # no duplicates, no gaps
    key = lambda r: (r["step"], r["loss"], r["grad_norm"], r["mae"], r["lr"])
    assert [key(r) for r in a] == [key(r) for r in b]  # identical floats, not just close
    ra, rb = _result(full), _result(cut)
    assert rb["start"] == ckpt_step
    _equal(ra["final"], rb["final"])
    _equal(ra["ema"], rb["ema"])
    for i, snap in enumerate(rb["per_step"]):  # the resumed run's steps ckpt_step+1.. match too
        _equal(ra["per_step"][ckpt_step + i], snap)


RESUME_ARGS = (
    "--steps", "8", "--global-batch", "8", "--accum", "2", "--data", "dataset", "--aug", "--dropout", "0.1",
    "--opt", "adamw", "--clip", "1.0", "--ema", "0.9", "--ckpt-every", "3",
)  # fmt: skip


def test_kill_and_resume_is_bit_exact(tmp_path):
    """SIGKILL after step 5 (checkpoint at 3, steps 4-5 lost), rerun the same command: identical to no kill.

    Dropout, python/numpy-random augmentation, AdamW, EMA, grad accumulation and an epoch boundary (40 items,
    8 per step: epoch 2 starts at step 6) all have to come back exactly.
    """
    run_toy(tmp_path / "full", *RESUME_ARGS)
    cut = tmp_path / "cut"
    killed = run_toy(cut, *RESUME_ARGS, "--kill-at", "5", expect_ok=False)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert [p.name for p in list_checkpoints(cut)] == ["ckpt_00000003.pt"]
    assert [r["step"] for r in read_jsonl(cut / "metrics.jsonl")] == [1, 2, 3, 4, 5]  # 4 and 5 will be redone
    run_toy(cut, *RESUME_ARGS, "--kill-at", "5")  # the very same command
    assert [p.name for p in list_checkpoints(cut)] == ["ckpt_00000006.pt", "ckpt_00000008.pt"]  # keep_last=2
    assert not list(cut.glob(".tmp-*"))
    _check_resume(tmp_path / "full", cut, steps=8, ckpt_step=3)


@pytest.mark.slow
def test_ddp_kill_and_resume_is_bit_exact(tmp_path):
    """The same under torchrun with 2 ranks: every rank's random state (dropout differs per rank) comes back."""
    run_toy(tmp_path / "full", *RESUME_ARGS, nproc=2)
    cut = tmp_path / "cut"
    killed = run_toy(cut, *RESUME_ARGS, "--kill-at", "5", nproc=2, expect_ok=False)
    assert killed.returncode != 0
    run_toy(cut, *RESUME_ARGS, "--kill-at", "5", nproc=2)
    _check_resume(tmp_path / "full", cut, steps=8, ckpt_step=3)
