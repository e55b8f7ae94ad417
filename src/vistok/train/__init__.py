"""Training utilities shared by every trainer: distributed set-up, checkpoints, EMA, schedules, logging, loop."""

from vistok.train.checkpoint import (
    capture_rng_state,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    restore_rng_state,
    restore_training_checkpoint,
    save_checkpoint,
    save_training_checkpoint,
    seed_everything,
)
from vistok.train.distributed import (
    DistInfo,
    all_gather_object,
    all_reduce_max,
    all_reduce_mean,
    barrier,
    broadcast_object,
    cleanup,
    get_rank,
    get_world_size,
    init_distributed,
    is_main,
    unwrap_model,
    wrap_ddp,
)
from vistok.train.ema import EMA
from vistok.train.loop import IndexStream, NonFiniteLossError, TrainConfig, Trainer, TrainResult, train
from vistok.train.metrics import MetricsLogger, Progress, read_jsonl
from vistok.train.schedule import build_scheduler, lr_factor

__all__ = [
    "EMA",
    "DistInfo",
    "IndexStream",
    "MetricsLogger",
    "NonFiniteLossError",
    "Progress",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "all_gather_object",
    "all_reduce_max",
    "all_reduce_mean",
    "barrier",
    "broadcast_object",
    "build_scheduler",
    "capture_rng_state",
    "cleanup",
    "get_rank",
    "get_world_size",
    "init_distributed",
    "is_main",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "lr_factor",
    "read_jsonl",
    "restore_rng_state",
    "restore_training_checkpoint",
    "save_checkpoint",
    "save_training_checkpoint",
    "seed_everything",
    "train",
    "unwrap_model",
    "wrap_ddp",
]
