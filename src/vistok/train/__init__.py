"""Training utilities shared by every trainer: distributed set-up, checkpoints, EMA, schedules, logging, loop."""
