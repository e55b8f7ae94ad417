"""A small, reusable training loop (nanoGPT's ``train.py`` made into a class), shared by every vistok trainer.

One optimizer step (``Trainer.fit`` repeats it ``config.steps`` times):

1. ``grad_accum`` micro-steps: fetch a batch, ``loss, metrics = loss_fn(model, batch)`` under bf16 autocast on
   CUDA, ``(loss / grad_accum).backward()``; under DDP every micro-step but the last runs in ``model.no_sync()``;
2. clip the gradient norm (``clip_grad``; the norm is measured even without clipping);
3. **non-finite guard**: if the loss or the grad norm is NaN/inf on *any* rank (the flag is all-reduced, so all
   ranks agree) the update is skipped and the gradients dropped; at most ``max_nonfinite`` *consecutive* bad
   steps are skipped, the next one raises :class:`NonFiniteLossError` (a good step resets the run of bad ones;
   the total is logged). A skipped step still consumes its data and advances the schedule;
4. ``optimizer.step()``, EMA update, ``scheduler.step()``;
5. every ``log_every`` steps: metrics averaged over the steps since the last log and over ranks, to JSONL
   (+ TensorBoard) and the progress bar; hooks; every ``ckpt_every`` steps and at the end: a checkpoint.

**Data.** Either a map-style dataset (``__len__`` + ``__getitem__``), read ``config.batch_size`` items per rank per
micro-step in an order that is a pure function of ``(seed, epoch)`` (:class:`IndexStream`), or a callable
``get_batch(index, rank) -> batch`` where ``index`` counts micro-batches from 0 (it equals the step when
``grad_accum == 1``). Either way the data position is one counter stored in the checkpoint.

**Resume.** With ``config.resume`` the latest checkpoint in ``out_dir`` restores model, optimizer, schedule, EMA,
loop counters, the data position and every rank's random states, so on CPU a resumed run reproduces the
uninterrupted one bit for bit (CUDA kernels may not be deterministic). ``metrics.jsonl`` is cut back to the
checkpoint's step first, so no step appears twice.

**Step numbering.** ``trainer.step`` counts completed optimizer steps; the JSONL line ``"step": s`` and the
checkpoint ``ckpt_<s>.pt`` describe the state after ``s`` steps.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import count
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from torch.optim import Optimizer
from torch.utils.data import DataLoader, default_collate

from vistok.train.checkpoint import (
    load_resume_state,
    restore_rng_state,
    restore_training_checkpoint,
    save_training_checkpoint,
    seed_everything,
)
from vistok.train.distributed import DistInfo, all_reduce_max, all_reduce_mean, init_distributed, wrap_ddp
from vistok.train.ema import EMA
from vistok.train.metrics import MetricsLogger, Progress, format_summary
from vistok.train.schedule import SCHEDULES, build_scheduler

RESERVED_METRICS = frozenset({"loss", "grad_norm", "lr", "good", "skipped", "nonfinite_total", "samples_per_s"})
LossFn = Callable[[nn.Module, Any], tuple[torch.Tensor, Mapping[str, Any]]]
OptimizerArg = Optimizer | Callable[[nn.Module], Optimizer] | None


class Stateful(Protocol):
    def state_dict(self) -> Mapping[str, Any]: ...
    def load_state_dict(self, state: Mapping[str, Any]) -> Any: ...


def report_nonfinite(
    consecutive: int, total: int, max_nonfinite: int, where: str, last_checkpoint: Path | None, progress: Progress
) -> None:
    """Say that a step was skipped for a non-finite loss/gradient; past ``max_nonfinite`` in a row, raise
    :class:`NonFiniteLossError` (shared by every trainer, which keeps the two counters in its resume state)."""
    progress.write(f"non-finite loss or gradient at {where}; update skipped ({consecutive} in a row, {total} in total)")
    if consecutive > max_nonfinite:
        raise NonFiniteLossError(
            f"{consecutive} consecutive steps with a non-finite loss or gradient norm (max_nonfinite={max_nonfinite}), "
            f"last at {where}. Lower the learning rate, set gradient clipping, check the data, or resume from the "
            f"last good checkpoint ({last_checkpoint})."
        )


class NonFiniteLossError(RuntimeError):
    """Training stopped because too many consecutive steps had a NaN/inf loss or gradient norm."""


@dataclass
class TrainConfig:
    """Everything the loop needs to know; stored (as a plain dict) in every checkpoint.

    ``lr``, ``weight_decay`` and ``betas`` configure the default AdamW (used when no optimizer is given); the
    schedule multiplies whatever initial lr each param group has. ``batch_size`` is per rank and per micro-step,
    used only with a dataset; the global batch is ``batch_size * grad_accum * world_size``.
    """

    steps: int = 1000
    batch_size: int = 8
    lr: float = 3e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.95)
    schedule: str = "cosine"
    warmup: int = 0
    min_lr_ratio: float = 0.1
    grad_accum: int = 1
    clip_grad: float | None = 1.0
    ema_decay: float | None = None
    ema_warmup: bool = False
    log_every: int = 10
    ckpt_every: int = 1000
    keep_last: int = 3
    out_dir: str | None = "runs/train"
    resume: bool = True
    seed: int = 0
    bf16: bool | None = None
    max_nonfinite: int = 10
    compile: bool = False
    shuffle: bool = True
    num_workers: int = 0
    tensorboard: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        positive = {"steps": self.steps, "batch_size": self.batch_size, "grad_accum": self.grad_accum}
        positive |= {"log_every": self.log_every}
        for name, value in positive.items():
            if value < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1, got {value}")
        for name in ("warmup", "ckpt_every", "keep_last", "max_nonfinite", "num_workers"):
            if getattr(self, name) < 0:
                raise ValueError(f"TrainConfig.{name} must be >= 0, got {getattr(self, name)}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"TrainConfig.schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise ValueError(f"TrainConfig.ema_decay must be in (0, 1) or None, got {self.ema_decay}")
        self.betas = (float(self.betas[0]), float(self.betas[1]))


@dataclass
class TrainResult:
    """What :meth:`Trainer.fit` returns."""

    step: int
    start_step: int
    last_metrics: dict[str, Any]
    nonfinite_total: int
    elapsed_s: float
    last_checkpoint: Path | None
    summary: str


# ------------------------------------------------------------------------------------------------------- data


class IndexStream:
    """Endless, resumable stream of this rank's index batches over a dataset of ``n`` items.

    Epoch ``e`` visits ``randperm(n)`` drawn from a generator seeded with ``(seed, e)`` (or ``0..n-1`` without
    shuffling), cut into global micro-batches of ``batch_size * world_size`` (the tail that does not fill one is
    dropped); rank ``r`` takes the ``r``-th contiguous slice. So the ranks' batches of one micro-step concatenated
    are exactly the batch a single process with ``batch_size * world_size`` gets. ``start`` skips that many
    micro-batches: the stream's position is one integer.
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        shuffle: bool = True,
        start: int = 0,
    ):
        self.n, self.batch_size, self.rank, self.world_size = n, batch_size, rank, world_size
        self.seed, self.shuffle, self.start = seed, shuffle, start
        self.per_epoch = n // (batch_size * world_size)
        if self.per_epoch == 0:
            raise ValueError(
                f"dataset of {n} items is smaller than one global micro-batch "
                f"(batch_size {batch_size} x world_size {world_size})"
            )

    def epoch_order(self, epoch: int) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.n)
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) % 2**63)
        return torch.randperm(self.n, generator=g)

    def __iter__(self) -> Iterator[list[int]]:
        global_batch = self.batch_size * self.world_size
        epoch, pos = divmod(self.start, self.per_epoch)
        while True:
            order = self.epoch_order(epoch)
            for k in range(pos, self.per_epoch):
                lo = k * global_batch + self.rank * self.batch_size
                yield order[lo : lo + self.batch_size].tolist()
            epoch, pos = epoch + 1, 0


def _is_dataset(data: Any) -> bool:
    return hasattr(data, "__len__") and hasattr(data, "__getitem__")


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=device.type == "cuda")
    if isinstance(batch, Mapping):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, list | tuple) and not hasattr(batch, "_fields"):
        return type(batch)(_to_device(v, device) for v in batch)
    if isinstance(batch, tuple):  # NamedTuple
        return type(batch)(*(_to_device(v, device) for v in batch))
    return batch


def _leading_dim(batch: Any) -> int:
    """Items in a batch: the first dimension of its first tensor (0 when there is none)."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.dim() else 1
    values = batch.values() if isinstance(batch, Mapping) else batch if isinstance(batch, list | tuple) else ()
    for v in values:
        if n := _leading_dim(v):
            return n
    return 0


# ------------------------------------------------------------------------------------------------------- loop


class Trainer:
    """Trains ``model`` with ``loss_fn`` on ``data`` as ``config`` says; see the module docstring.

    Args:
        model: the plain module; it is moved to the device, and (for the forward passes) compiled and DDP-wrapped.
        optimizer: an optimizer over ``model``'s parameters, a factory ``f(model) -> Optimizer``, or ``None``
            for AdamW(``config.lr``, ``config.betas``, ``config.weight_decay``).
        loss_fn: ``loss_fn(model, batch) -> (loss, metrics)``; ``model`` is the wrapped module (use
            ``vistok.train.unwrap_model`` to reach attributes); ``metrics`` maps names to numbers or 0-dim tensors
            and must have the same keys on every call and rank.
        data: a map-style dataset or ``get_batch(index, rank) -> batch``.
        config: :class:`TrainConfig`.
        info: from :func:`init_distributed` (called here when omitted).
        collate_fn: joins dataset items into a batch (default ``default_collate``).
        stateful: more objects with ``state_dict``/``load_state_dict`` to checkpoint (e.g. a discriminator).
        run_config: stored beside the train config in checkpoints (``config["run"]``), e.g. the model config.
        hooks: ``hook(trainer)`` after every step (after logging, before the checkpoint).
        ddp_kwargs: passed to ``DistributedDataParallel`` (e.g. ``find_unused_parameters=True``).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: OptimizerArg,
        loss_fn: LossFn,
        data: Any,
        config: TrainConfig | None = None,
        *,
        info: DistInfo | None = None,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        stateful: Mapping[str, Stateful] | None = None,
        run_config: Mapping[str, Any] | None = None,
        hooks: Sequence[Callable[[Trainer], None]] = (),
        ddp_kwargs: Mapping[str, Any] | None = None,
    ):
        if not (_is_dataset(data) or callable(data)):
            raise TypeError(f"data must be a map-style dataset or a callable get_batch(index, rank), got {type(data)}")
        self.config = cfg = config or TrainConfig()
        self.info = info or init_distributed()
        self.device = self.info.device
        self.raw_model = model.to(self.device)
        self.optimizer = self._build_optimizer(optimizer)
        self.scheduler = build_scheduler(
            self.optimizer, total=cfg.steps, warmup=cfg.warmup, min_lr_ratio=cfg.min_lr_ratio, kind=cfg.schedule
        )
        self.ema = EMA(self.raw_model, cfg.ema_decay, cfg.ema_warmup) if cfg.ema_decay else None
        forward_model = torch.compile(self.raw_model) if cfg.compile else self.raw_model
        self.model = wrap_ddp(forward_model, self.info, **(ddp_kwargs or {}))
        self.loss_fn, self.data, self.hooks = loss_fn, data, list(hooks)
        self.collate_fn = collate_fn or default_collate
        self.stateful = dict(stateful or {})
        self.run_config = dict(run_config or {})
        self.use_bf16 = cfg.bf16 if cfg.bf16 is not None else self._bf16_available()
        self.out_dir = Path(cfg.out_dir) if cfg.out_dir is not None else None
        self.step = 0
        self.micro_batches = 0
        self.nonfinite_consecutive = 0
        self.nonfinite_total = 0
        self.last_metrics: dict[str, Any] = {}
        self.last_checkpoint: Path | None = None
        self._acc: dict[str, torch.Tensor] = {}
        self._items_per_micro = 0
        self._last_lr = float(self.optimizer.param_groups[0]["lr"])

    # -- set-up -------------------------------------------------------------------------------------------------

    def _build_optimizer(self, optimizer: OptimizerArg) -> Optimizer:
        if isinstance(optimizer, Optimizer):
            return optimizer
        if optimizer is not None:
            return optimizer(self.raw_model)
        cfg = self.config
        params = [p for p in self.raw_model.parameters() if p.requires_grad]
        return torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)

    def _bf16_available(self) -> bool:
        return self.device.type == "cuda" and torch.cuda.is_bf16_supported()

    def _batches(self) -> Iterator[Any]:
        """Batches from the current data position on (``self.micro_batches``)."""
        rank = self.info.rank
        if _is_dataset(self.data):
            cfg = self.config
            stream = IndexStream(
                len(self.data),
                cfg.batch_size,
                rank=rank,
                world_size=self.info.world_size,
                seed=cfg.seed,
                shuffle=cfg.shuffle,
                start=self.micro_batches,
            )
            loader = DataLoader(
                self.data,
                batch_sampler=stream,
                collate_fn=self.collate_fn,
                num_workers=cfg.num_workers,
                pin_memory=self.device.type == "cuda",
                generator=torch.Generator().manual_seed(cfg.seed + rank),  # keeps the global RNG untouched
            )
            return iter(loader)
        return (self.data(i, rank) for i in count(self.micro_batches))

    def _resume(self) -> int:
        """Restore the latest checkpoint in ``out_dir`` (if resuming); returns the step to start from."""
        if self.out_dir is None:
            return 0
        found = load_resume_state(self.out_dir, self.config.resume)
        if found is None:
            return 0
        path, state = found
        self.step = restore_training_checkpoint(
            state,
            model=self.raw_model,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            ema=self.ema,
            restore_rng=False,
        )
        self._load_loop_state(state["extra"])
        rng = state["rng"]
        restore_rng_state(rng[self.info.rank] if self.info.rank < len(rng) else rng[0])  # last: nothing after it draws
        self.last_checkpoint = path
        return self.step

    def _loop_state(self) -> dict[str, Any]:
        return {
            "data": {"micro_batches": self.micro_batches},
            "loop": {
                "nonfinite_consecutive": self.nonfinite_consecutive,
                "nonfinite_total": self.nonfinite_total,
                "acc": {k: v.detach().cpu() for k, v in self._acc.items()},
            },
            "stateful": {name: obj.state_dict() for name, obj in self.stateful.items()},
        }

    def _load_loop_state(self, extra: Mapping[str, Any]) -> None:
        self.micro_batches = int(extra["data"]["micro_batches"])
        loop = extra["loop"]
        self.nonfinite_consecutive = int(loop["nonfinite_consecutive"])
        self.nonfinite_total = int(loop["nonfinite_total"])
        self._acc = {k: v.to(self.device) for k, v in loop["acc"].items()}
        for name, obj in self.stateful.items():
            obj.load_state_dict(extra["stateful"][name])

    # -- one step -----------------------------------------------------------------------------------------------

    def _no_sync(self, last_micro: bool) -> contextlib.AbstractContextManager:
        if not last_micro and isinstance(self.model, nn.parallel.DistributedDataParallel):
            return self.model.no_sync()
        return contextlib.nullcontext()

    def _forward_backward(self, batches: Iterator[Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """All micro-steps of one step; returns the mean loss and mean metrics over them (on the device)."""
        accum = self.config.grad_accum
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        metric_sums: dict[str, torch.Tensor] = {}
        for micro in range(accum):
            batch = next(batches)
            self.micro_batches += 1
            self._items_per_micro = self._items_per_micro or _leading_dim(batch)
            batch = _to_device(batch, self.device)
            with self._no_sync(micro == accum - 1):
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.use_bf16):
                    loss, metrics = self.loss_fn(self.model, batch)
                (loss / accum).backward()
            loss_sum += loss.detach().double()
            if clash := RESERVED_METRICS.intersection(metrics):
                raise ValueError(f"loss_fn metrics may not use the loop's own names {sorted(clash)}; rename them")
            for k, v in metrics.items():
                v = torch.as_tensor(v).detach().to(self.device, torch.float64)
                metric_sums[k] = metric_sums[k] + v if k in metric_sums else v
        return loss_sum / accum, {k: v / accum for k, v in metric_sums.items()}

    def _skip_step(self, loss: torch.Tensor, grad_norm: torch.Tensor, progress: Progress) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.nonfinite_consecutive += 1
        self.nonfinite_total += 1
        self._accumulate({"skipped": torch.ones((), dtype=torch.float64, device=self.device)})
        where = f"step {self.step + 1}: loss {loss.item():.4g}, grad norm {grad_norm.item():.4g}"
        report_nonfinite(
            self.nonfinite_consecutive,
            self.nonfinite_total,
            self.config.max_nonfinite,
            where,
            self.last_checkpoint,
            progress,
        )

    def _accumulate(self, values: Mapping[str, torch.Tensor]) -> None:
        for k, v in values.items():
            self._acc[k] = self._acc[k] + v if k in self._acc else v

    def _train_step(self, batches: Iterator[Any], progress: Progress) -> None:
        loss, metrics = self._forward_backward(batches)
        max_norm = self.config.clip_grad if self.config.clip_grad else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.raw_model.parameters(), max_norm).detach()
        finite = torch.isfinite(loss) & torch.isfinite(grad_norm.double())
        bad = all_reduce_max((~finite).float()).item() > 0
        lr = self.optimizer.param_groups[0]["lr"]
        if bad:
            self._skip_step(loss, grad_norm, progress)
        else:
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            if self.ema is not None:
                self.ema.update()
            self.nonfinite_consecutive = 0
            one = torch.ones((), dtype=torch.float64, device=self.device)
            self._accumulate({"loss": loss, "grad_norm": grad_norm.double(), "good": one, **metrics})
        with warnings.catch_warnings():  # a skipped first update makes LambdaLR warn about the call order
            warnings.filterwarnings("ignore", message=r".*lr_scheduler\.step\(\)")
            self.scheduler.step()
        self.step += 1
        self._last_lr = float(lr)

    # -- logging and checkpoints -------------------------------------------------------------------------------

    def _flush_metrics(self) -> dict[str, Any]:
        """Average the accumulated values over steps and ranks, reset the accumulator, return plain numbers."""
        keys = sorted(self._acc)
        if keys:
            vec = all_reduce_mean(torch.stack([self._acc[k] for k in keys]))
            acc = dict(zip(keys, vec.tolist()))
        else:
            acc = {}
        self._acc = {}
        good = acc.pop("good", 0.0)
        skipped = round(acc.pop("skipped", 0.0))
        out: dict[str, Any] = {k: (v / good if good else None) for k, v in acc.items()}
        out.setdefault("loss", None)
        out |= {"lr": self._last_lr, "skipped": skipped, "nonfinite_total": self.nonfinite_total}
        return out

    def _log(self, logger: MetricsLogger, progress: Progress, t_last: float, steps_since: int) -> None:
        metrics = self._flush_metrics()
        elapsed = max(time.perf_counter() - t_last, 1e-9)
        items = self._items_per_micro * self.config.grad_accum * self.info.world_size * steps_since
        metrics["samples_per_s"] = items / elapsed
        self.last_metrics = metrics
        logger.log(self.step, metrics)
        progress.show(loss=metrics["loss"], lr=metrics["lr"], samples_s=round(metrics["samples_per_s"], 1))

    def save(self) -> Path | None:
        """Write a checkpoint of the current state into ``out_dir`` (collective: call on every rank)."""
        if self.out_dir is None:
            return None
        path = save_training_checkpoint(
            self.out_dir,
            self.step,
            model=self.raw_model,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            ema=self.ema,
            config={"train": self.config, "run": self.run_config},
            extra=self._loop_state(),
            keep_last=self.config.keep_last,
        )
        self.last_checkpoint = path or self.last_checkpoint
        return path

    # -- the loop -----------------------------------------------------------------------------------------------

    def fit(self) -> TrainResult:
        """Train (or resume and finish training) up to ``config.steps``; returns a :class:`TrainResult`."""
        cfg, main = self.config, self.info.is_main
        seed_everything(cfg.seed + self.info.rank)
        start = self._resume()
        t0 = t_last = time.perf_counter()
        logger = MetricsLogger(self.out_dir, enabled=main, resume_step=start, tensorboard=cfg.tensorboard)
        progress = Progress(cfg.steps, initial=start, enabled=main and cfg.progress)
        batches = self._batches()
        last_log = start
        try:
            while self.step < cfg.steps:
                try:
                    self._train_step(batches, progress)
                except NonFiniteLossError:
                    self._log(logger, progress, t_last, self.step - last_log)  # record the skipped steps, then stop
                    raise
                progress.update()
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    self._log(logger, progress, t_last, self.step - last_log)
                    t_last, last_log = time.perf_counter(), self.step
                for hook in self.hooks:
                    hook(self)
                if (cfg.ckpt_every and self.step % cfg.ckpt_every == 0) or self.step == cfg.steps:
                    self.save()
        finally:
            del batches
            logger.close()
            progress.close()
        return self._finish(start, time.perf_counter() - t0)

    def _finish(self, start: int, elapsed: float) -> TrainResult:
        summary = format_summary(
            steps=self.step,
            start_step=start,
            elapsed_s=elapsed,
            last=self.last_metrics,
            skipped=self.nonfinite_total,
            out_dir=self.out_dir,
        )
        if self.info.is_main and self.config.progress:
            print(summary, flush=True)
        return TrainResult(
            step=self.step,
            start_step=start,
            last_metrics=dict(self.last_metrics),
            nonfinite_total=self.nonfinite_total,
            elapsed_s=elapsed,
            last_checkpoint=self.last_checkpoint,
            summary=summary,
        )


def train(
    model: nn.Module,
    optimizer: OptimizerArg,
    loss_fn: LossFn,
    data: Any,
    config: TrainConfig | None = None,
    **kwargs: Any,
) -> TrainResult:
    """``Trainer(model, optimizer, loss_fn, data, config, **kwargs).fit()``."""
    return Trainer(model, optimizer, loss_fn, data, config, **kwargs).fit()


__all__ = ["IndexStream", "NonFiniteLossError", "TrainConfig", "TrainResult", "Trainer", "train"]
