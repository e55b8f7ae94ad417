"""Transfusion trainer: deterministic batches, caption dropout / order mixing, a short run through the shared loop."""

from __future__ import annotations

import torch

from vistok.models.transfusion import IGNORE
from vistok.registry import create_model
from vistok.tokenizers.text import BOI, BOS
from vistok.train.loop import TrainConfig
from vistok.train.transfusion import make_get_batch, train_transfusion


def _data():
    g = torch.Generator().manual_seed(0)
    return torch.randn(3, 4, 4, 4, generator=g), ["red", "blue", "green"]


def test_get_batch_deterministic_and_mixed():
    lat, caps = _data()
    gb = make_get_batch(lat, caps, 16, 2, image_first=0.5, caption_dropout=1.0, seed=1)
    a, b = gb(3, 0), gb(3, 0)
    assert torch.equal(a.ids, b.ids) and not torch.equal(gb(4, 0).ids, a.ids)
    # caption_dropout = 1: every text → image document starts BOS BOI; image → text documents are capped
    starts = a.ids[:, 1]
    assert set(starts.tolist()) <= {BOI}
    assert a.capped.sum() > 0 and (~a.capped).sum() > 0
    assert ((a.targets != IGNORE).sum(1) > 0).all() and (a.ids[:, 0] == BOS).all()


def test_short_training_run(tmp_path):
    torch.manual_seed(0)
    lat, caps = _data()
    m = create_model("transfusion-tiny")
    cfg = TrainConfig(steps=4, batch_size=4, lr=1e-3, log_every=2, ckpt_every=100, out_dir=str(tmp_path), bf16=False)
    res = train_transfusion(m, lat, caps, cfg)
    assert res.step == 4 and "lm" in res.last_metrics and "diffusion" in res.last_metrics
    assert (tmp_path / "metrics.jsonl").exists()
