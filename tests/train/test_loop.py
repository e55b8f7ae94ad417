"""The training loop in one process: grad accumulation, the non-finite guard, resume, EMA, schedule, data stream."""

import pytest
import torch
from torch import nn

from vistok.train import IndexStream, NonFiniteLossError, TrainConfig, Trainer, read_jsonl
from vistok.train.checkpoint import list_checkpoints
from vistok.train.schedule import lr_factor

DIM = 6


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(DIM, 8), nn.Tanh(), nn.Linear(8, 1))


def _xy(index: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + index)
    x = torch.randn(size, DIM, generator=g)
    return x, x.sum(1, keepdim=True).cos()


def _mse(model: nn.Module, batch) -> tuple[torch.Tensor, dict]:
    x, y = batch[0], batch[1]
    err = model(x) - y
    return err.pow(2).mean(), {"mae": err.abs().mean()}


def _cfg(tmp_path=None, **kw) -> TrainConfig:
    base = dict(steps=4, lr=0.05, clip_grad=None, log_every=1, progress=False, schedule="constant")
    base["out_dir"] = str(tmp_path) if tmp_path is not None else None
    return TrainConfig(**(base | kw))


def _sgd(m: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9)


def _snapshots(store: list):
    return lambda tr: store.append({k: v.clone() for k, v in tr.raw_model.state_dict().items()})


def _assert_params(a: nn.Module | dict, b: nn.Module | dict, atol: float | None = None):
    sa = a.state_dict() if isinstance(a, nn.Module) else a
    sb = b.state_dict() if isinstance(b, nn.Module) else b
    for k in sa:
        if atol is None:
            assert torch.equal(sa[k], sb[k]), k
        else:
            torch.testing.assert_close(sa[k], sb[k], atol=atol, rtol=0)


# ----------------------------------------------------------------------------------------- grad accumulation


def test_grad_accum_equals_one_big_batch_callable():
    big = lambda i, rank: _xy(i, 8)

    def halves(i, rank):  # micro-batch i is half (i % 2) of step i // 2's batch of 8
        x, y = _xy(i // 2, 8)
        h = slice(0, 4) if i % 2 == 0 else slice(4, 8)
        return x[h], y[h]

    one, two = _model(), _model()
    r1 = Trainer(one, _sgd, _mse, big, _cfg(steps=3)).fit()
    r2 = Trainer(two, _sgd, _mse, halves, _cfg(steps=3, grad_accum=2)).fit()
    _assert_params(one, two, atol=1e-6)
    assert r1.last_metrics["loss"] == pytest.approx(r2.last_metrics["loss"], abs=1e-6)
    assert r1.last_metrics["grad_norm"] == pytest.approx(r2.last_metrics["grad_norm"], abs=1e-6)
    assert not torch.equal(one[0].weight, _model()[0].weight)  # training did move the weights


def test_grad_accum_equals_one_big_batch_dataset():
    x, y = _xy(0, 48)
    data = torch.utils.data.TensorDataset(x, y)
    one, two = _model(), _model()
    Trainer(one, _sgd, _mse, data, _cfg(steps=4, batch_size=8)).fit()
    Trainer(two, _sgd, _mse, data, _cfg(steps=4, batch_size=4, grad_accum=2)).fit()
    _assert_params(one, two, atol=1e-6)


# ------------------------------------------------------------------------------------------ non-finite guard


class _InfGrad(torch.autograd.Function):
    """Identity forward, infinite gradient backward."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return g * float("inf")


def _poisoned(bad_loss: set[int], bad_grad: set[int] = frozenset()):
    def get_batch(i, rank):
        x, y = _xy(i, 8)
        return x, y, torch.tensor(i in bad_loss), torch.tensor(i in bad_grad)

    def loss_fn(model, batch):
        x, y, nan_loss, inf_grad = batch
        out = _InfGrad.apply(model(x)) if inf_grad else model(x)
        loss = (out - y).pow(2).mean()
        return (loss * float("nan") if nan_loss else loss), {}

    return get_batch, loss_fn


def test_nonfinite_steps_are_skipped_counted_and_leave_weights_unchanged(tmp_path):
    get_batch, loss_fn = _poisoned(bad_loss={2}, bad_grad={3})
    snaps: list = []
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=0.01)
    cfg = _cfg(tmp_path, steps=6, max_nonfinite=2, ema_decay=0.5, clip_grad=1.0)
    result = Trainer(model, opt, loss_fn, get_batch, cfg, hooks=[_snapshots(snaps)]).fit()
    assert result.nonfinite_total == 2
    _assert_params(snaps[1], snaps[2])  # step 3 (index 2): NaN loss, skipped
    _assert_params(snaps[2], snaps[3])  # step 4 (index 3): infinite gradient, skipped
    assert not torch.equal(snaps[3]["0.weight"], snaps[4]["0.weight"])  # training continues afterwards
    assert opt.state[model[0].weight]["step"].item() == 4  # only the good steps reached the optimizer
    assert all(torch.isfinite(p).all() for p in model.parameters())
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert [r["skipped"] for r in rows] == [0, 0, 1, 1, 0, 0]
    assert rows[2]["loss"] is None and rows[5]["nonfinite_total"] == 2


def test_too_many_consecutive_nonfinite_steps_raise(tmp_path):
    get_batch, loss_fn = _poisoned(bad_loss={1, 2, 3, 4, 5})
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = Trainer(model, _sgd, loss_fn, get_batch, _cfg(tmp_path, steps=8, max_nonfinite=2))
    with pytest.raises(NonFiniteLossError, match=r"3 consecutive steps .*max_nonfinite=2.*step 4"):
        trainer.fit()
    assert trainer.nonfinite_total == 3 and trainer.step == 3
    assert not torch.equal(model[0].weight, before["0.weight"])  # step 1 was applied...
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["skipped"] for r in rows] == [0, 1, 1, 1]  # ...and the skipped ones were logged before stopping


def test_isolated_bad_steps_never_stop_training():
    get_batch, loss_fn = _poisoned(bad_loss={0, 2, 4, 6})
    result = Trainer(_model(), _sgd, loss_fn, get_batch, _cfg(steps=8, max_nonfinite=1)).fit()
    assert result.nonfinite_total == 4 and result.step == 8


# ------------------------------------------------------------------------------------------------ resume


class _Stop(Exception):
    pass


def _stop_after(step: int):
    def hook(trainer):
        if trainer.step == step:
            raise _Stop

    return hook


@pytest.mark.parametrize("log_every", [1, 3])
def test_resume_in_process_is_bit_exact(tmp_path, log_every):
    """An interrupted run, resumed by a fresh Trainer, reproduces the uninterrupted one exactly (dropout included).

    With ``log_every=3`` the checkpoint at step 4 falls inside a logging interval, so the partial averages must be
    carried through the checkpoint for the step-6 line to come out the same.
    """
    x, y = _xy(0, 20)
    data = torch.utils.data.TensorDataset(x, y)  # 20 items, 3 micro-batches of 6 per epoch: epochs roll over

    def make(out, hooks=()):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(DIM, 8), nn.Dropout(0.2), nn.Tanh(), nn.Linear(8, 1))
        cfg = _cfg(out, steps=7, batch_size=3, grad_accum=2, ckpt_every=2, ema_decay=0.7, schedule="cosine")
        cfg.log_every = log_every
        opt = lambda m: torch.optim.AdamW(m.parameters(), lr=0.02)
        return Trainer(model, opt, _mse, data, cfg, hooks=hooks)

    full = make(tmp_path / "full")
    full.fit()
    with pytest.raises(_Stop):
        make(tmp_path / "cut", hooks=[_stop_after(5)]).fit()  # checkpoint at 4, step 5 lost
    assert [p.name for p in list_checkpoints(tmp_path / "cut")][-1] == "ckpt_00000004.pt"
    resumed = make(tmp_path / "cut")
    result = resumed.fit()
    assert result.start_step == 4 and result.step == 7
    _assert_params(full.raw_model, resumed.raw_model)
    assert all(torch.equal(full.ema.shadow[n], resumed.ema.shadow[n]) for n in full.ema.shadow)
    a, b = read_jsonl(tmp_path / "full/metrics.jsonl"), read_jsonl(tmp_path / "cut/metrics.jsonl")
    assert [r["step"] for r in b] == ([1, 2, 3, 4, 5, 6, 7] if log_every == 1 else [3, 6, 7])
    key = lambda r: (r["step"], r["loss"], r["grad_norm"], r["mae"], r["lr"])
    assert [key(r) for r in a] == [key(r) for r in b]
    again = make(tmp_path / "cut").fit()  # a finished run resumed again has nothing left to do
    assert again.start_step == 7 and again.step == 7


def test_fresh_run_refuses_a_directory_with_checkpoints(tmp_path):
    get = lambda i, r: _xy(i, 4)
    Trainer(_model(), _sgd, _mse, get, _cfg(tmp_path, steps=2)).fit()
    with pytest.raises(FileExistsError, match="earlier run"):
        Trainer(_model(), _sgd, _mse, get, _cfg(tmp_path, steps=2, resume=False)).fit()


def test_stateful_extras_are_checkpointed(tmp_path):
    class Counter:
        def __init__(self):
            self.n = 0

        def state_dict(self):
            return {"n": self.n}

        def load_state_dict(self, s):
            self.n = s["n"]

    counter = Counter()

    def bump(trainer):
        counter.n += 10

    get = lambda i, r: _xy(i, 4)
    with pytest.raises(_Stop):
        cfg = _cfg(tmp_path, steps=4, ckpt_every=2)
        Trainer(_model(), _sgd, _mse, get, cfg, stateful={"c": counter}, hooks=[bump, _stop_after(3)]).fit()
    restored = Counter()
    trainer = Trainer(_model(), _sgd, _mse, get, _cfg(tmp_path, steps=4, ckpt_every=2), stateful={"c": restored})
    trainer.fit()
    assert restored.n == 20  # the value saved with the step-2 checkpoint


# ------------------------------------------------------------------------------------- schedule, EMA, misc


def test_logged_lr_follows_the_schedule_and_ema_matches_hand_fold(tmp_path):
    snaps: list = []
    cfg = _cfg(tmp_path, steps=6, schedule="cosine", warmup=2, min_lr_ratio=0.1, ema_decay=0.6)
    model = _model()
    init = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = Trainer(model, _sgd, _mse, lambda i, r: _xy(i, 8), cfg, hooks=[_snapshots(snaps)])
    trainer.fit()
    lrs = [r["lr"] for r in read_jsonl(tmp_path / "metrics.jsonl")]
    assert lrs == pytest.approx([0.05 * lr_factor(s, total=6, warmup=2, min_lr_ratio=0.1) for s in range(6)])
    want = {k: v.double() for k, v in init.items()}
    for snap in snaps:
        want = {k: 0.6 * want[k] + 0.4 * snap[k].double() for k in want}
    for k, s in trainer.ema.shadow.items():
        torch.testing.assert_close(s.double(), want[k], atol=1e-6, rtol=0)


def test_default_optimizer_bf16_cpu_and_summary(capsys):
    cfg = _cfg(steps=2, bf16=True, progress=True, lr=1e-3)
    result = Trainer(_model(), None, _mse, lambda i, r: _xy(i, 4), cfg).fit()
    assert isinstance(result.last_metrics["loss"], float)
    assert "trained 2 step(s) to step 2" in capsys.readouterr().out


def test_config_validation_and_bad_data():
    with pytest.raises(ValueError, match="grad_accum"):
        TrainConfig(grad_accum=0)
    with pytest.raises(ValueError, match="schedule"):
        TrainConfig(schedule="exp")
    with pytest.raises(TypeError, match="map-style dataset or a callable"):
        Trainer(_model(), _sgd, _mse, 42, _cfg())
    clashing = lambda m, b: (_mse(m, b)[0], {"lr": 1.0})
    with pytest.raises(ValueError, match=r"loop's own names \['lr'\]"):
        Trainer(_model(), _sgd, clashing, lambda i, r: _xy(i, 4), _cfg()).fit()


@pytest.mark.slow
def test_compile_gives_the_same_losses_and_plain_checkpoint_keys(tmp_path):
    get = lambda i, r: _xy(i, 8)
    eager = Trainer(_model(), _sgd, _mse, get, _cfg(steps=3)).fit()
    compiled = Trainer(_model(), _sgd, _mse, get, _cfg(tmp_path, steps=3, compile=True)).fit()
    assert compiled.last_metrics["loss"] == pytest.approx(eager.last_metrics["loss"], abs=1e-5)
    state = torch.load(compiled.last_checkpoint, weights_only=True)
    assert set(state["model"]) == set(_model().state_dict())  # no "_orig_mod." prefixes


# ---------------------------------------------------------------------------------------------- IndexStream


def _take(stream: IndexStream, n: int) -> list[list[int]]:
    it = iter(stream)
    return [next(it) for _ in range(n)]


def test_index_stream_ranks_concatenate_to_the_single_process_batch():
    single = _take(IndexStream(50, 8, seed=3), 12)
    ranks = [_take(IndexStream(50, 4, rank=r, world_size=2, seed=3), 12) for r in range(2)]
    assert [a + b for a, b in zip(*ranks)] == single


def test_index_stream_epochs_and_resume_position():
    stream = IndexStream(20, 6, seed=1)  # 3 batches per epoch, 2 items dropped each epoch
    batches = _take(stream, 9)
    for e in range(3):
        flat = [i for b in batches[3 * e : 3 * e + 3] for i in b]
        assert len(set(flat)) == 18 and flat == stream.epoch_order(e)[:18].tolist()
    assert batches[0:3] != batches[3:6]  # a new order each epoch
    assert _take(IndexStream(20, 6, seed=1, start=4), 5) == batches[4:9]
    assert _take(IndexStream(20, 6, seed=2), 3) != batches[:3]  # the seed matters
    assert _take(IndexStream(7, 3, shuffle=False), 3) == [[0, 1, 2], [3, 4, 5], [0, 1, 2]]
    with pytest.raises(ValueError, match="smaller than one global micro-batch"):
        IndexStream(5, 3, world_size=2)
