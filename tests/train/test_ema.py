"""EMA: the update rule against a hand computation, warmup decay, buffers, swapping, state and DDP wrappers."""

import gc

import pytest
import torch
import torch.distributed as dist
from torch import nn

from vistok.train.ema import EMA


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))


def _set_params(model: nn.Module, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    return {n: p.detach().double().clone() for n, p in model.named_parameters()}


def test_update_matches_hand_computation():
    model = _model()
    p0 = {n: p.detach().double().clone() for n, p in model.named_parameters()}
    ema = EMA(model, decay=0.9)
    p1 = _set_params(model, 1)
    ema.update()
    p2 = _set_params(model, 2)
    ema.update()
    for n, s in ema.shadow.items():
        want = 0.9 * (0.9 * p0[n] + 0.1 * p1[n]) + 0.1 * p2[n]
        assert s.dtype == torch.float32
        torch.testing.assert_close(s.double(), want, atol=1e-6, rtol=0)
    assert ema.num_updates == 2


def test_warmup_decay_rule():
    model = _model()
    p0 = {n: p.detach().double().clone() for n, p in model.named_parameters()}
    ema = EMA(model, decay=0.999, warmup=True)
    assert ema.current_decay() == pytest.approx(1 / 10)
    p1 = _set_params(model, 1)
    ema.update()
    assert ema.current_decay() == pytest.approx(2 / 11)
    for n, s in ema.shadow.items():
        torch.testing.assert_close(s.double(), 0.1 * p0[n] + 0.9 * p1[n], atol=1e-6, rtol=0)
    ema.num_updates = 10_000
    assert ema.current_decay() == 0.999  # capped at the configured decay


def test_buffers_are_copied_not_averaged():
    model = _model()
    ema = EMA(model, decay=0.5)
    model.train()
    model(torch.randn(8, 3))  # BatchNorm running stats move
    ema.update()
    for n, b in model.named_buffers():
        assert torch.equal(ema.buffers[n], b)


def test_swap_and_copy_to_with_bf16_model():
    model = _model().to(torch.bfloat16)
    ema = EMA(model, decay=0.5)
    trained = _set_params(model, 3)
    ema.update()
    trained_bf16 = {n: p.detach().clone() for n, p in model.named_parameters()}
    with ema.swap() as m:
        for n, p in m.named_parameters():
            assert p.dtype == torch.bfloat16
            assert torch.equal(p, ema.shadow[n].to(torch.bfloat16))
    for n, p in model.named_parameters():  # trained weights are back, bit for bit
        assert torch.equal(p, trained_bf16[n])
    other = _model().to(torch.bfloat16)
    ema.copy_to(other)
    assert torch.equal(other[0].weight, ema.shadow["0.weight"].to(torch.bfloat16))
    assert set(trained) == set(ema.shadow)


def test_state_dict_round_trip_weights_only(tmp_path):
    model = _model()
    ema = EMA(model, decay=0.8, warmup=True)
    _set_params(model, 4)
    ema.update()
    torch.save(ema.state_dict(), tmp_path / "ema.pt")
    fresh = EMA(_model(), decay=0.1)
    fresh.load_state_dict(torch.load(tmp_path / "ema.pt", weights_only=True))
    assert (fresh.decay, fresh.warmup, fresh.num_updates) == (0.8, True, 1)
    for n in ema.shadow:
        assert torch.equal(fresh.shadow[n], ema.shadow[n])
    loaded = _model()
    loaded.load_state_dict(ema.model_state_dict())
    assert torch.equal(loaded[2].bias, ema.shadow["2.bias"])
    with pytest.raises(KeyError, match="does not match"):
        EMA(nn.Linear(2, 2)).load_state_dict(ema.state_dict())


def test_ddp_wrapper_is_looked_through(tmp_path):
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    ddp = None
    try:
        model = _model()
        ddp = nn.parallel.DistributedDataParallel(model)
        ema = EMA(ddp, decay=0.5)
        assert set(ema.shadow) == {n for n, _ in model.named_parameters()}  # no "module." prefix
        _set_params(model, 5)
        ema.update(ddp)
        with ema.swap(ddp) as plain:
            assert plain is model
    finally:
        # free DDP's reducer while the process group is alive: destroying the group first can deadlock gloo's
        # destructor when the reducer is collected later
        del ddp
        gc.collect()
        dist.destroy_process_group()


class _CompiledLike(nn.Module):
    """Stands in for torch.compile's OptimizedModule (which keeps the module as ``_orig_mod``)."""

    def __init__(self, mod: nn.Module):
        super().__init__()
        self._orig_mod = mod


def test_compile_wrapper_is_looked_through():
    model = _model()
    ema = EMA(_CompiledLike(model), decay=0.5)
    assert set(ema.shadow) == {n for n, _ in model.named_parameters()}
    assert ema.model is model


def test_bad_decay_raises():
    with pytest.raises(ValueError, match="decay"):
        EMA(nn.Linear(2, 2), decay=1.5)
