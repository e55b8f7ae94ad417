"""Chat-UniVi stage data: stage 0 (text-only LM) sees captions, not the QA answers it would otherwise learn as priors
before any image; stage 1 captions with images; stage 2 QA with images."""

import torch

from vistok.train.univi import CAPTION_PROMPT, UniViTrainConfig, _Batches


def _data(n: int = 6) -> dict:
    qa = [[(f"how many shapes are there? {i}", str(i)), ("is there a red circle?", "yes")] for i in range(n)]
    return {"features": torch.zeros(n, 16, 10).half(), "grid": [4, 4], "qa": qa, "caption": [f"c{i}" for i in range(n)]}


def _prompts(stage: int, cfg: UniViTrainConfig, steps: int = 20) -> list[str]:
    data = _Batches(stage, _data(), None, cfg)
    return [q for k in range(steps) for turns in data(k)["turns"] for q, _ in turns]


def test_stage0_is_captions_only_by_default_and_qa_share_is_configurable():
    cfg = UniViTrainConfig(batch_size=4)
    assert set(_prompts(0, cfg)) == {CAPTION_PROMPT}
    assert _Batches(0, _data(), None, cfg)(0)["features"] is None  # text only
    every = _prompts(0, UniViTrainConfig(batch_size=4, stage0_qa=1.0))
    assert CAPTION_PROMPT not in every and len(every) > 0
    half = _prompts(0, UniViTrainConfig(batch_size=4, stage0_qa=0.5), steps=40)
    captions = sum(q == CAPTION_PROMPT for q in half)
    assert 0 < captions < len(half)
    assert set(_prompts(1, cfg)) == {CAPTION_PROMPT}
    assert CAPTION_PROMPT not in _prompts(2, cfg)


def test_stage_optimizer_scales_the_projector_learning_rate():
    from vistok.models.univi import UniVi, UniViConfig
    from vistok.train.univi import stage_optimizer

    model = UniVi(UniViConfig(dim=32, n_layers=1, n_heads=2, max_seq_len=128))
    opt = stage_optimizer(model, 1e-3, 4.0)
    lm, proj = opt.param_groups
    assert lm["lr"] == 1e-3 and proj["lr"] == 4e-3
    assert {id(p) for p in proj["params"]} == {id(p) for p in model.projector.parameters()}
    assert {id(p) for p in lm["params"]} == {id(p) for p in model.lm.parameters()}
    model.lm.requires_grad_(False)  # stage 1: the frozen LM is left out
    (only,) = stage_optimizer(model, 1e-3).param_groups
    assert {id(p) for p in only["params"]} == {id(p) for p in model.projector.parameters()}
