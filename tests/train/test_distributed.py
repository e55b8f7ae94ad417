"""Distributed set-up in one process: no torchrun environment means a plain process and no-op collectives."""

import pytest
import torch
from torch import nn

from vistok.train import distributed as d

DIST_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture
def no_torchrun(monkeypatch):
    for name in DIST_ENV:
        monkeypatch.delenv(name, raising=False)


def test_single_process_without_environment(no_torchrun):
    info = d.init_distributed(device="cpu")
    assert info == d.DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    assert info.is_main and not info.is_distributed
    assert not torch.distributed.is_initialized()  # no process group for a single process
    assert d.is_main() and d.get_rank() == 0 and d.get_world_size() == 1
    d.barrier()
    d.cleanup()


def test_collectives_are_identities_in_one_process(no_torchrun):
    t = torch.tensor([1.0, 3.0])
    out = d.all_reduce_mean(t)
    assert torch.equal(out, t) and out is not t
    assert torch.equal(d.all_reduce_max(t), t)
    assert d.broadcast_object({"a": 1}) == {"a": 1}
    assert d.all_gather_object(5) == [5]
    model = nn.Linear(2, 2)
    assert d.wrap_ddp(model, d.DistInfo()) is model
    assert d.unwrap_model(model) is model


def test_bad_environment_and_device_raise(monkeypatch):
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="RANK=2 is outside WORLD_SIZE=2"):
        d.init_distributed(device="cpu")
    monkeypatch.setenv("RANK", "x")
    with pytest.raises(ValueError, match="not an integer"):
        d.init_distributed(device="cpu")
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    with pytest.raises(ValueError, match="device must be"):
        d.init_distributed(device="tpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only machine's error")
def test_cuda_requested_without_cuda(no_torchrun):
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        d.init_distributed(device="cuda")
