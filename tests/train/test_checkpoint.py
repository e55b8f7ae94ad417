"""Checkpoints: atomic writes, weights_only loading, pruning, random-state round trips, full training state."""

import os
import random

import numpy as np
import pytest
import torch
from torch import nn

from vistok.train import checkpoint as ck
from vistok.train.ema import EMA
from vistok.train.schedule import build_scheduler


def _files(d):
    return sorted(os.listdir(d))


def test_failed_write_keeps_previous_checkpoint_and_leaves_no_temp_file(tmp_path, monkeypatch):
    good = {"step": 1, "w": torch.arange(4.0)}
    ck.save_checkpoint(good, ck.checkpoint_path(tmp_path, 1))
    real_save = torch.save

    def failing_save(obj, f, *a, **k):
        f.write(b"half a checkpoint")  # some bytes reach the disk before the failure
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        ck.save_checkpoint({"step": 1, "w": torch.zeros(4)}, ck.checkpoint_path(tmp_path, 1))  # overwrite attempt
    with pytest.raises(OSError, match="disk full"):
        ck.save_checkpoint({"step": 2, "w": torch.zeros(4)}, ck.checkpoint_path(tmp_path, 2))  # new file attempt
    monkeypatch.setattr(torch, "save", real_save)
    assert _files(tmp_path) == ["ckpt_00000001.pt"]
    assert ck.latest_checkpoint(tmp_path) == ck.checkpoint_path(tmp_path, 1)
    loaded = ck.load_checkpoint(ck.latest_checkpoint(tmp_path))
    assert loaded["step"] == 1 and torch.equal(loaded["w"], torch.arange(4.0))


def test_interrupt_mid_write_also_cleans_up(tmp_path, monkeypatch):
    def interrupted(obj, f, *a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ck.save_checkpoint({"a": 1}, tmp_path / "ckpt_00000005.pt")
    assert _files(tmp_path) == []


def test_weights_only_refuses_arbitrary_objects(tmp_path):
    import datetime

    ck.save_checkpoint({"x": datetime.date(2020, 1, 1)}, tmp_path / "bad.pt")
    with pytest.raises(Exception, match=r"[Ww]eights"):
        ck.load_checkpoint(tmp_path / "bad.pt")


def test_list_latest_and_prune(tmp_path):
    for step in (3, 10, 7, 123456789):
        ck.save_checkpoint({"step": step}, ck.checkpoint_path(tmp_path, step))
    (tmp_path / f"{ck.TMP_PREFIX}stale.tmp").write_bytes(b"left by a killed writer")
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    assert [p.name for p in ck.list_checkpoints(tmp_path)] == [
        "ckpt_00000003.pt",
        "ckpt_00000007.pt",
        "ckpt_00000010.pt",
        "ckpt_123456789.pt",
    ]
    assert ck.latest_checkpoint(tmp_path).name == "ckpt_123456789.pt"
    ck.prune_checkpoints(tmp_path, keep_last=2)
    assert _files(tmp_path) == ["ckpt_00000010.pt", "ckpt_123456789.pt", "notes.txt"]
    assert ck.latest_checkpoint(tmp_path / "missing") is None


def test_rng_state_round_trips_through_weights_only_file(tmp_path):
    ck.seed_everything(123)
    random.random(), np.random.randn(), np.random.rand(3), torch.rand(2)  # move every generator off its seed
    state = ck.capture_rng_state()
    first = (random.random(), np.random.randn(), np.random.rand(5).tolist(), torch.rand(5).tolist())
    torch.save(state, tmp_path / "rng.pt")
    ck.seed_everything(999)
    ck.restore_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    again = (random.random(), np.random.randn(), np.random.rand(5).tolist(), torch.rand(5).tolist())
    assert again == first


def test_to_plain():
    from dataclasses import dataclass
    from pathlib import Path

    @dataclass
    class Cfg:
        size: tuple[int, int] = (4, 4)
        path: Path = Path("a/b")
        ratio: float = 0.5

    assert ck.to_plain({"c": Cfg(ratio=np.float32(0.5)), "d": torch.float16}) == {
        "c": {"size": [4, 4], "path": "a/b", "ratio": 0.5},
        "d": "torch.float16",
    }
    with pytest.raises(TypeError, match="cannot store"):
        ck.to_plain({"f": object()})


def _train_objects():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.Linear(4, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.9, 0.95))
    sched = build_scheduler(opt, total=10, warmup=2)
    ema = EMA(model, decay=0.9)
    return model, opt, sched, ema


def _one_step(model, opt, sched, ema):
    model(torch.randn(3, 4)).pow(2).mean().backward()
    opt.step()
    opt.zero_grad()
    sched.step()
    ema.update()


def test_training_checkpoint_round_trip(tmp_path):
    model, opt, sched, ema = _train_objects()
    for _ in range(3):
        _one_step(model, opt, sched, ema)
    config = {"train": {"betas": (0.9, 0.95), "out": tmp_path}, "model": {"dim": 4}}
    path = ck.save_training_checkpoint(
        tmp_path, 3, model=model, optimizer=opt, scheduler=sched, ema=ema, config=config, extra={"pos": 17}
    )
    assert path == ck.checkpoint_path(tmp_path, 3)
    state = ck.load_checkpoint(path)  # weights_only=True
    assert state["config"] == {"train": {"betas": [0.9, 0.95], "out": str(tmp_path)}, "model": {"dim": 4}}
    assert state["extra"] == {"pos": 17} and len(state["rng"]) == 1
    m2, o2, s2, e2 = _train_objects()
    assert ck.restore_training_checkpoint(state, model=m2, optimizer=o2, scheduler=s2, ema=e2) == 3
    torch.manual_seed(5)
    _one_step(model, opt, sched, ema)
    torch.manual_seed(5)
    _one_step(m2, o2, s2, e2)
    for a, b in zip(model.state_dict().values(), m2.state_dict().values()):
        assert torch.equal(a, b)
    assert o2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
    assert all(torch.equal(ema.shadow[n], e2.shadow[n]) for n in ema.shadow)


def test_training_checkpoint_keeps_last_k(tmp_path):
    model = nn.Linear(2, 2)
    for step in range(1, 6):
        ck.save_training_checkpoint(tmp_path, step, model=model, keep_last=2)
    assert _files(tmp_path) == ["ckpt_00000004.pt", "ckpt_00000005.pt"]
    state = ck.load_checkpoint(ck.latest_checkpoint(tmp_path))
    with pytest.raises(KeyError, match="no 'opt' state"):
        ck.restore_training_checkpoint(state, model=model, optimizer=torch.optim.SGD(model.parameters()))
