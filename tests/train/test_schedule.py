"""Learning-rate schedule values at known steps, as a function and through LambdaLR."""

import math

import pytest
import torch

from vistok.train.schedule import build_scheduler, lr_factor


def test_cosine_values_at_known_steps():
    f = lambda s: lr_factor(s, total=10, warmup=2, min_lr_ratio=0.1, kind="cosine")
    assert f(0) == 0.5 and f(1) == 1.0  # linear warmup (step + 1) / warmup
    assert f(2) == 1.0  # cosine starts at its top
    assert f(4) == pytest.approx(0.1 + 0.45 * (1 + math.sqrt(0.5)), abs=1e-12)  # a quarter of the way
    assert f(6) == pytest.approx(0.55, abs=1e-12)  # half way: the mean of 1 and 0.1
    assert f(10) == pytest.approx(0.1, abs=1e-12)
    assert f(25) == pytest.approx(0.1, abs=1e-12)  # stays at the floor past the end


def test_linear_and_constant_values():
    lin = lambda s: lr_factor(s, total=10, warmup=2, min_lr_ratio=0.1, kind="linear")
    assert lin(4) == pytest.approx(1 - 0.9 * 0.25) and lin(6) == pytest.approx(0.55) and lin(10) == pytest.approx(0.1)
    const = [lr_factor(s, total=10, warmup=4, kind="constant") for s in range(8)]
    assert const == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0, 1.0, 1.0]
    assert lr_factor(0, total=5, warmup=0, kind="cosine") == 1.0  # no warmup: the first step is at the full rate


def test_lambda_lr_follows_the_function_step_by_step():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.5)
    sched = build_scheduler(opt, total=8, warmup=3, min_lr_ratio=0.2, kind="cosine")
    for step in range(12):
        want = 0.5 * lr_factor(step, total=8, warmup=3, min_lr_ratio=0.2)
        assert opt.param_groups[0]["lr"] == pytest.approx(want, abs=1e-15)
        opt.step()
        sched.step()


def test_scheduler_state_round_trips_weights_only(tmp_path):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = build_scheduler(opt, total=10, warmup=2, min_lr_ratio=0.1)
    for _ in range(5):
        opt.step()
        sched.step()
    torch.save(sched.state_dict(), tmp_path / "s.pt")
    opt2 = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched2 = build_scheduler(opt2, total=10, warmup=2, min_lr_ratio=0.1)
    sched2.load_state_dict(torch.load(tmp_path / "s.pt", weights_only=True))
    opt2.step()
    sched2.step()
    opt.step()
    sched.step()
    want = lr_factor(6, total=10, warmup=2, min_lr_ratio=0.1)
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"] == pytest.approx(want)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="schedule must be one of"):
        lr_factor(0, total=10, kind="step")
    with pytest.raises(ValueError, match="min_lr_ratio"):
        build_scheduler(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0), total=10, min_lr_ratio=2.0)
