"""Chat-UniVi training: stage freezing, a tiny overfit on cached features, the CLI end to end, bad inputs."""

import argparse
import json

import pytest
import torch

from vistok.data.scenes import Scenes
from vistok.models.univi import UniVi, UniViConfig
from vistok.train.loop import TrainConfig, Trainer
from vistok.train.univi import (
    UniViTrainConfig,
    _build_model,
    _run_stage,
    add_univi_parser,
    answer_questions,
    ask_file,
    cache_features,
    normalize_answer,
    parse_reduction,
    question_type,
    univi_loss,
)

TINY = dict(dim=48, n_layers=2, n_heads=2, max_seq_len=512, stages=(8, 4, 2), video_stages=(8, 4, 2))


def _cached(n: int = 4, size: int = 64) -> dict:
    """Held-in scenes with cached MAGVIT-v2 features (8×8 patches of 64² images)."""
    torch.manual_seed(0)
    model = UniVi(UniViConfig(**TINY))
    ds = Scenes(size, n, "train", seed=0)
    feats, grid = model.features(torch.stack([ds[i]["pixels"] for i in range(n)]))
    return {"features": feats, "grid": list(grid), "qa": [list(ds[i]["qa"]) for i in range(n)], "model": model}


def test_stage1_changes_only_the_projector(tmp_path):
    data = _cached(2)
    model, enc = data["model"], data["model"].encoder()
    lm0 = {k: v.clone() for k, v in model.lm.state_dict().items()}
    proj0 = {k: v.clone() for k, v in model.projector.state_dict().items()}
    enc0 = {k: v.clone() for k, v in enc.state_dict().items()}

    def batch(index, rank=0):
        return {
            "features": data["features"],
            "grid": data["grid"],
            "reduction": "merge",
            "num_tokens": None,
            "turns": [[("describe:", "a red circle")], [("describe:", "two blue squares")]],
        }

    cfg = UniViTrainConfig(out=str(tmp_path), steps1=1, batch_size=2, progress=False, log_every=1)
    _run_stage(model, 1, 1, 1e-2, batch, cfg)
    for k, v in model.lm.state_dict().items():
        assert torch.equal(v, lm0[k]), k
    for k, v in enc.state_dict().items():
        assert torch.equal(v, enc0[k]), k
    changed = [k for k, v in model.projector.state_dict().items() if not torch.equal(v, proj0[k])]
    assert "fc1.weight" in changed and "fc2.weight" in changed and "pos.weight" in changed
    assert all(p.requires_grad for p in model.parameters())  # unfrozen again for the next stage


def test_a_vistok_vit_as_the_encoder_and_the_feature_cache_follows_the_encoder(tmp_path):
    from vistok.models.vit import ViT, ViTConfig

    torch.manual_seed(0)
    vit = ViT(ViTConfig(image_size=32, patch_size=8, dim=24, depth=2, n_heads=2))
    vit.save_pretrained(tmp_path / "vit" / "ssl" / "teacher")  # a `vistok digit fit` run folder
    model = _build_model(UniViTrainConfig(preset="univi-tiny", vit_encoder=str(tmp_path / "vit")))
    assert (model.config.encoder, model.config.feature_dim) == ("vit", 24)
    ds = Scenes(64, 3, "train", seed=0)
    feats, grid = model.features(torch.stack([ds[i]["pixels"] for i in range(3)]))
    assert feats.shape == (3, 64, 24) and tuple(grid) == (8, 8)  # 64² pictures, 8-pixel patches
    assert model.visual_tokens(feats, grid, "merge").counts.tolist() == [112, 112, 112]  # 64 + 32 + 16
    path = tmp_path / "features.pt"
    first = cache_features(model, ds, path, progress=False)
    torch.testing.assert_close(first["features"].float(), feats.half().float())

    def no_encoder(pixels):
        raise AssertionError("the cache should have been reused")

    model.features = no_encoder
    assert torch.equal(cache_features(model, ds, path, progress=False)["features"], first["features"])
    other = UniVi(UniViConfig(**TINY))  # MAGVIT-v2 features: the cached ViT features must not be reused
    again = cache_features(other, ds, path, progress=False)
    assert again["features"].shape[-1] == other.config.feature_dim != 24
    with pytest.raises(ValueError, match="one feature encoder"):
        _build_model(UniViTrainConfig(vit_encoder=str(tmp_path / "vit"), hf_encoder=str(tmp_path / "hf")))
    with pytest.raises(FileNotFoundError, match="no vistok ViT"):
        _build_model(UniViTrainConfig(vit_encoder=str(tmp_path / "missing")))
    with pytest.raises(ValueError, match="encoder_path"):
        UniViConfig(encoder="vit")


@pytest.mark.slow
def test_tiny_overfit_learns_scene_answers():
    data = _cached(4)
    model = data["model"]
    qs = [(i, q, a) for i in range(4) for q, a in data["qa"][i] if q in ("how many shapes are there?",)]
    qs += [(i, q, a) for i in range(4) for q, a in data["qa"][i] if question_type(q) == "where"][:6]

    def batch(index, rank=0):
        return {
            "features": data["features"][[i for i, _, _ in qs]],
            "grid": data["grid"],
            "reduction": "merge",
            "num_tokens": None,
            "turns": [[(q, a)] for _, q, a in qs],
        }

    torch.manual_seed(0)
    tc = TrainConfig(steps=250, lr=3e-3, out_dir=None, progress=False, warmup=10, log_every=50)
    Trainer(model, None, univi_loss, batch, tc).fit()
    preds, _ = answer_questions(model.eval(), data, qs, "merge")
    acc = sum(normalize_answer(p) == normalize_answer(a) for p, (_, _, a) in zip(preds, qs)) / len(qs)
    assert acc == 1.0, list(zip(preds, qs))


def _cli(argv):
    ap = argparse.ArgumentParser()
    add_univi_parser(ap.add_subparsers(dest="group"))
    args = ap.parse_args(argv)
    return args.func(args)


@pytest.mark.slow
def test_cli_end_to_end_writes_the_expected_files(tmp_path, capsys):
    out = tmp_path / "run"
    argv = [
        "univi",
        "train",
        "--out",
        str(out),
        "--steps",
        "2",
        "--steps0",
        "2",
        "--steps1",
        "2",
        "--image-size",
        "64",
        "--video-size",
        "64",
        "--frames",
        "5",
        "--train-images",
        "8",
        "--train-videos",
        "4",
        "--eval-images",
        "2",
        "--eval-videos",
        "2",
        "--eval-questions",
        "1",
        "--batch-size",
        "2",
        "--eval-reductions",
        "merge,pool",
        "--reductions",
        "merge,pool:8",
        "-q",
    ]
    assert _cli(argv) == 0
    for name in (
        "eval.json",
        "summary.txt",
        "answers.png",
        "model/config.json",
        "model/model.safetensors",
        "stage0/metrics.jsonl",
        "stage1/metrics.jsonl",
        "stage2/metrics.jsonl",
        "features/image-train.pt",
    ):
        assert (out / name).is_file(), name
    report = json.loads((out / "eval.json").read_text())
    assert set(report["kinds"]) == {"image", "video"}
    assert {"merge", "pool", "majority", "text-only LM (stage 0)"} <= set(report["kinds"]["image"])
    assert "Wrote the model" in capsys.readouterr().out
    img = tmp_path / "scene.png"
    from PIL import Image

    Image.fromarray(Scenes(64, 1, "heldout").render(0)).save(img)
    assert _cli(["univi", "ask", "--model", str(out / "model"), str(img), "how many shapes are there?"]) == 0
    assert "visual tokens" in capsys.readouterr().out


def test_bad_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match="no UniVi model"):
        ask_file(tmp_path / "missing", tmp_path / "x.png", "q?")
    with pytest.raises(ValueError, match="unknown reduction"):
        parse_reduction("median")
    with pytest.raises(ValueError, match="token count"):
        parse_reduction("merge:x")
    with pytest.raises(ValueError, match="unknown reduction"):
        UniViTrainConfig(reductions=("merge", "mean"))
    with pytest.raises(ValueError, match="stage0_qa"):
        UniViTrainConfig(stage0_qa=1.5)
    with pytest.raises(SystemExit):
        _cli(["univi", "ask", "img.png", "q?"])  # --model is required


def test_question_types_and_normalization():
    assert question_type("how many red circles are there?") == "count"
    assert question_type("what is left of the square?") == "relation"
    assert question_type("which way does the red circle move?") == "direction"
    assert question_type("what happened first?") == "order"
    assert normalize_answer("  The Red, circle. ") == "the red circle"
