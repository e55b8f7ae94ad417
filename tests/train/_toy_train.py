"""A tiny training run that the train tests launch with ``python`` or ``torchrun``.

It trains a small MLP on generated regression data through :class:`vistok.train.Trainer` and writes, into
``--out``: ``metrics.jsonl`` and checkpoints (from the loop) and, from every rank ``r``, ``result_<r>.pt`` with the
parameters after every step and at the end, plus the EMA weights. ``--kill-at K`` makes the process SIGKILL
itself right after step ``K`` (rank 0 does; torchrun then stops the others) unless ``<out>/killed.marker`` exists
(it creates the marker first), so re-running the very same command resumes instead of dying again.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
from pathlib import Path

import numpy as np
import torch
from torch import nn

from vistok.train import TrainConfig, Trainer, cleanup, init_distributed

DIM = 8


class Toy(nn.Module):
    def __init__(self, dropout: float = 0.0):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(DIM, 16), nn.Tanh(), nn.Dropout(dropout), nn.Linear(16, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def global_batch(step: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole batch of one step: a pure function of (seed, step)."""
    g = torch.Generator().manual_seed(seed * 100_003 + step)
    x = torch.randn(size, DIM, generator=g)
    y = x.sum(dim=1, keepdim=True).sin() + 0.1 * torch.randn(size, 1, generator=g)
    return x, y


class ToyDataset(torch.utils.data.Dataset):
    """Fixed samples; ``aug`` adds noise drawn from python's and numpy's global generators (tests their restore)."""

    def __init__(self, n: int, aug: bool):
        self.x, self.y = global_batch(-1, n, seed=7)
        self.aug = aug

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.x[i]
        if self.aug:
            x = x + 0.01 * float(np.random.randn()) + 0.01 * random.random()
        return x, self.y[i]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--global-batch", type=int, default=8, help="items per optimizer step over all ranks")
    p.add_argument("--accum", type=int, default=1)
    p.add_argument("--data", choices=["callable", "dataset"], default="callable")
    p.add_argument("--opt", choices=["sgd", "adamw"], default="sgd")
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--aug", action="store_true")
    p.add_argument("--clip", type=float, default=0.0)
    p.add_argument("--ema", type=float, default=0.0)
    p.add_argument("--ckpt-every", type=int, default=0)
    p.add_argument("--kill-at", type=int, default=0)
    p.add_argument("--inf-loss-at", type=int, default=0, help="make the loss inf (grads stay finite) at this step")
    return p.parse_args(argv)


def make_data(args: argparse.Namespace, world: int, per_micro: int):
    if args.data == "dataset":
        return ToyDataset(40, args.aug)

    def get_batch(index: int, rank: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        step, micro = divmod(index, args.accum)
        x, y = global_batch(step, args.global_batch, seed=3)
        # only the last item of the global batch is poisoned, so under DDP only the last rank sees it
        poison = torch.zeros(args.global_batch, dtype=torch.bool)
        poison[-1] = step + 1 == args.inf_loss_at
        lo = (micro * world + rank) * per_micro
        return x[lo : lo + per_micro], y[lo : lo + per_micro], poison[lo : lo + per_micro]

    return get_batch


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    info = init_distributed(device="cpu")
    torch.manual_seed(1234)
    model = Toy(args.dropout)
    per_micro = args.global_batch // (info.world_size * args.accum)
    assert per_micro * info.world_size * args.accum == args.global_batch, "global batch must split evenly"
    if args.opt == "sgd":
        opt = lambda m: torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
    else:
        opt = lambda m: torch.optim.AdamW(m.parameters(), lr=0.01, weight_decay=0.01)

    def loss_fn(m: nn.Module, batch):
        x, y = batch[0], batch[1]
        err = m(x) - y
        loss = err.pow(2).mean()
        if len(batch) == 3 and batch[2].any():
            loss = loss + float("inf")  # non-finite loss with finite gradients: only this rank knows
        return loss, {"mae": err.abs().mean()}

    out = Path(args.out)
    per_step: list[dict[str, torch.Tensor]] = []

    def record(trainer: Trainer) -> None:
        per_step.append({k: v.detach().clone() for k, v in trainer.raw_model.state_dict().items()})
        marker = out / "killed.marker"
        if args.kill_at and trainer.step == args.kill_at and info.is_main and not marker.exists():
            marker.touch()
            os.kill(os.getpid(), signal.SIGKILL)

    cfg = TrainConfig(
        steps=args.steps,
        batch_size=per_micro,
        grad_accum=args.accum,
        schedule="cosine",
        warmup=1,
        min_lr_ratio=0.1,
        clip_grad=args.clip or None,
        ema_decay=args.ema or None,
        log_every=1,
        ckpt_every=args.ckpt_every,
        keep_last=2,
        out_dir=str(out),
        seed=11,
        progress=False,
    )
    trainer = Trainer(model, opt, loss_fn, make_data(args, info.world_size, per_micro), cfg, info=info, hooks=[record])
    result = trainer.fit()
    ema = trainer.ema.state_dict()["shadow"] if trainer.ema is not None else {}
    final = trainer.raw_model.state_dict()
    result = {"per_step": per_step, "final": final, "ema": ema, "start": result.start_step}
    torch.save(result, out / f"result_{info.rank}.pt")
    cleanup()


if __name__ == "__main__":
    main()
