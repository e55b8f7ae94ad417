"""vistok.models.vit + vistok.train.dino: ViT invariants, multi-crop ops, the DINO loss against a brute-force
reference, teacher EMA / centering / schedules, resume, a short run whose loss falls, the linear probe, and the
``vistok digit fit`` command."""

from __future__ import annotations

import argparse
import copy
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from vistok.data.samples import SamplePhotos
from vistok.models.vit import VIT_PRESETS, DINOHead, ViT, ViTConfig
from vistok.registry import create_model
from vistok.train.dino import (
    DigitFitConfig,
    DinoConfig,
    DinoLoss,
    DinoStudentTeacher,
    MultiCrop,
    MultiCropBatches,
    add_digit_parser,
    color_jitter,
    dino_loss,
    fit_digit,
    gaussian_blur,
    linear_probe,
    pooled_features,
    random_resized_crops,
    teacher_momentum,
    teacher_temperature,
    train_dino,
)
from vistok.train.loop import TrainConfig

TINY = ViTConfig(image_size=32, patch_size=8, dim=32, depth=2, n_heads=2, head_out_dim=64, head_hidden_dim=64)


# ----------------------------------------------------------------------------------------------- ViT and head


@pytest.mark.parametrize("name", sorted(VIT_PRESETS))
def test_vit_presets_build(name):
    cfg = ViTConfig.from_name(name)
    with torch.device("meta"):
        vit, head = ViT(cfg), DINOHead.from_config(cfg)
    assert vit.pos_embed.shape == (1, 1 + cfg.grid**2, cfg.dim) and head.out_dim == cfg.head_out_dim
    if name == "vit-tiny":
        n = create_model(name).num_params()
        assert 0.5e6 < n < 3e6 and cfg.grid == 8 and cfg.head_out_dim == 1024


def test_vit_hidden_states_numbering_and_position_interpolation():
    torch.manual_seed(0)
    vit = ViT(TINY).eval()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    states = vit.hidden_states(x)
    assert len(states) == TINY.depth + 1
    torch.testing.assert_close(states[1], vit.blocks[0](states[0]))
    torch.testing.assert_close(vit(x), vit.norm(states[-1])[:, 0])
    assert len(vit.hidden_states(x, upto=-2)) == TINY.depth  # stops early: later blocks are not run
    assert vit.position_embedding(4, 4) is vit.pos_embed  # native grid: the table itself
    # a 2x2-upsampled table interpolated back is bicubic-consistent: constant tables stay constant
    with torch.no_grad():
        vit.pos_embed.fill_(0.5)
    torch.testing.assert_close(vit.position_embedding(2, 3), torch.full((1, 7, 32), 0.5))
    assert vit.patch_features(torch.zeros(1, 3, 16, 24)).shape == (1, 2, 3, 32)
    with pytest.raises(ValueError, match="not a multiple of the ViT patch size 8"):
        vit(torch.zeros(1, 3, 30, 32))
    with pytest.raises(ValueError, match="layer must be in"):
        vit.forward_features(x, layer=5)


def test_dino_head_outputs_cosines_to_weight_normalised_prototypes():
    torch.manual_seed(0)
    head = DINOHead(16, 10, hidden_dim=32, bottleneck_dim=8)
    x = torch.randn(5, 16)
    out = head(x)
    ref = F.normalize(head.mlp(x), dim=-1) @ F.normalize(head.last_weight, dim=1).T
    torch.testing.assert_close(out, ref)
    assert out.abs().max() <= 1 + 1e-6
    with torch.no_grad():
        head.last_weight.mul_(torch.rand(10, 1) * 5 + 0.1)  # the gain is fixed to 1: row scales do not matter
    torch.testing.assert_close(head(x), out)


# ----------------------------------------------------------------------------------------------- multi-crop


def test_full_crop_without_flip_is_the_picture_and_flip_mirrors_it():
    x = torch.rand(3, 3, 16, 16) * 2 - 1
    g = torch.Generator().manual_seed(0)
    same = random_resized_crops(x, 16, (1.0, 1.0), g, ratio=(1.0, 1.0), hflip_p=0.0)
    torch.testing.assert_close(same, x, atol=1e-5, rtol=0)
    flipped = random_resized_crops(x, 16, (1.0, 1.0), g, ratio=(1.0, 1.0), hflip_p=1.0)
    torch.testing.assert_close(flipped, x.flip(-1), atol=1e-5, rtol=0)
    half = random_resized_crops(x, 8, (0.25, 0.25), g, ratio=(1.0, 1.0), hflip_p=0.0)
    assert half.shape == (3, 3, 8, 8)


def test_colour_ops():
    x = torch.rand(4, 3, 8, 8)
    g = torch.Generator().manual_seed(0)
    off = DinoConfig(jitter_p=0.0, gray_p=0.0)
    torch.testing.assert_close(color_jitter(x, off, g), x, atol=1e-5, rtol=0)
    gray = color_jitter(x, DinoConfig(jitter_p=0.0, gray_p=1.0), g)
    assert torch.equal(gray[:, 0], gray[:, 1]) and torch.equal(gray[:, 1], gray[:, 2])
    jit = color_jitter(x, DinoConfig(jitter_p=1.0, gray_p=0.0), g)
    assert jit.min() >= 0 and jit.max() <= 1 and (jit - x).abs().mean() > 1e-3
    torch.testing.assert_close(gaussian_blur(x, torch.full((4,), 1e-4)), x)  # σ → 0: the identity
    const = torch.full((2, 3, 8, 8), 0.3)
    torch.testing.assert_close(gaussian_blur(const, torch.tensor([0.7, 1.5])), const)  # weights sum to one
    # against a direct 2-D convolution of one picture (reflect padding)
    s, r = 0.8, 3
    t = torch.arange(-r, r + 1, dtype=torch.float32)
    k1 = torch.exp(-(t**2) / (2 * s * s))
    k2 = torch.outer(k1, k1) / k1.sum() ** 2
    ref = F.conv2d(F.pad(x[:1], (r,) * 4, mode="reflect"), k2.expand(3, 1, -1, -1), groups=3)
    torch.testing.assert_close(gaussian_blur(x[:1], torch.tensor([s])), ref, atol=1e-5, rtol=0)


def test_multicrop_shapes_range_and_determinism():
    cfg = DinoConfig(global_size=32, local_size=16, n_local=3)
    x = torch.rand(5, 3, 48, 48) * 2 - 1
    a = MultiCrop(cfg)(x, torch.Generator().manual_seed(1))
    b = MultiCrop(cfg)(x, torch.Generator().manual_seed(1))
    assert a["global"].shape == (10, 3, 32, 32) and a["local"].shape == (15, 3, 16, 16)
    assert torch.equal(a["global"], b["global"]) and torch.equal(a["local"], b["local"])
    assert a["global"].min() >= -1 and a["global"].max() <= 1
    data = SamplePhotos(size=48, length=20)
    batches = MultiCropBatches(data, 4, MultiCrop(cfg), seed=3)
    assert torch.equal(batches(7)["local"], batches(7)["local"])
    assert not torch.equal(batches(7)["global"], batches(8)["global"])


# ----------------------------------------------------------------------------------------------- loss and teacher


def test_dino_loss_matches_brute_force_pairs():
    torch.manual_seed(0)
    b, k, n_crops = 3, 7, 4
    s, t, c = torch.randn(n_crops * b, k), torch.randn(2 * b, k), torch.randn(1, k)
    total, pairs = 0.0, 0
    for iq in range(2):
        for v in range(n_crops):
            if v == iq:
                continue
            for i in range(b):
                q = torch.softmax((t[iq * b + i] - c[0]) / 0.04, 0)
                p = torch.log_softmax(s[v * b + i] / 0.1, 0)
                total += float(-(q * p).sum()) / b
            pairs += 1
    assert float(dino_loss(s, t, c, n_crops, 0.1, 0.04)) == pytest.approx(total / pairs, rel=1e-5)
    assert pairs == 2 * n_crops - 2


def test_schedules():
    cfg = DinoConfig(teacher_temp=0.07, warmup_teacher_temp=0.04, warmup_teacher_temp_steps=10)
    assert teacher_temperature(0, cfg) == pytest.approx(0.04)
    assert teacher_temperature(5, cfg) == pytest.approx(0.055)
    assert teacher_temperature(50, cfg) == pytest.approx(0.07)
    assert teacher_momentum(0, 101, 0.99) == pytest.approx(0.99)
    assert teacher_momentum(50, 101, 0.99) == pytest.approx(0.995)
    assert teacher_momentum(100, 101, 0.99) == pytest.approx(1.0)


def test_teacher_is_an_ema_centre_moves_and_last_layer_can_be_frozen():
    torch.manual_seed(0)
    model = DinoStudentTeacher(TINY, DinoConfig(freeze_last_layer=1))
    assert all(not p.requires_grad for p in model.teacher.parameters())
    t0 = [p.clone() for p in model.teacher.parameters()]
    with torch.no_grad():
        for p in model.student.parameters():
            p.add_(1.0)
    model.update_teacher(0.9)
    for a, b, s in zip(t0, model.teacher.parameters(), model.student.parameters()):
        torch.testing.assert_close(b, 0.9 * a + 0.1 * s)
    loss_fn = DinoLoss(model.cfg)
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    loss, metrics = loss_fn(model, {"global": x, "local": torch.rand(6 * 2, 3, 16, 16) * 2 - 1})
    loss.backward()
    assert torch.count_nonzero(model.student["head"].last_weight.grad) == 0  # frozen at step 0
    assert model.student["backbone"].pos_embed.grad.abs().sum() > 0
    assert model.center.abs().sum() > 0 and 0 < float(metrics["teacher_entropy"]) <= math.log(64) + 1e-5
    model.step.fill_(1)
    model.zero_grad()
    loss_fn(model, {"global": x, "local": None})[0].backward()
    assert model.student["head"].last_weight.grad.abs().sum() > 0


def _train_cfg(tmp_path, steps, **kw):
    return TrainConfig(
        steps=steps, batch_size=8, lr=1e-3, weight_decay=0.04, warmup=2, clip_grad=3.0, log_every=1,
        out_dir=str(tmp_path) if tmp_path else None, progress=False, **kw,
    )  # fmt: skip


_FAST = DinoConfig(global_size=32, local_size=16, n_local=2)


def test_short_run_with_a_frozen_teacher_lowers_the_loss():
    # With DINO's centre starting at 0, the loss first climbs while the centre catches up with the teacher's mean
    # output (a few dozen steps), then falls (the slow test checks that). With the teacher and the centre frozen the
    # targets are fixed, so a short run must lower the loss: this checks the whole gradient path and the loop.
    data = SamplePhotos(size=48, length=70)
    cfg = DinoConfig(global_size=32, local_size=16, n_local=2, momentum_teacher=1.0, center_momentum=1.0)
    torch.manual_seed(0)
    init = ViT(TINY)
    res = train_dino(data, TINY, cfg, _train_cfg(None, 25), backbone=copy.deepcopy(init))
    first, last = sum(res.losses[:5]) / 5, sum(res.losses[-5:]) / 5
    assert last < 0.9 * first, res.losses
    assert int(res.model.step) == 25
    for name, p in init.state_dict().items():  # the teacher stayed where it started, the student moved
        assert torch.equal(res.teacher.state_dict()[name], p), name
    assert not torch.equal(res.model.student["backbone"].pos_embed, init.pos_embed)


class _Crash(RuntimeError):
    pass


def _crash_after(step):
    def hook(trainer):
        if trainer.step == step:
            raise _Crash

    return hook


def test_resumed_dino_run_equals_the_uninterrupted_one(tmp_path):
    data = SamplePhotos(size=48, length=70)
    full = train_dino(data, TINY, _FAST, _train_cfg(tmp_path / "a", 5, ckpt_every=1))
    with pytest.raises(_Crash):
        train_dino(data, TINY, _FAST, _train_cfg(tmp_path / "b", 5, ckpt_every=1), hooks=[_crash_after(3)])
    resumed = train_dino(data, TINY, _FAST, _train_cfg(tmp_path / "b", 5, ckpt_every=1))
    assert resumed.train.start_step == 2  # step 3 crashed before its checkpoint
    assert int(resumed.model.step) == 5
    for (name, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name  # student, teacher, centre and step counter


# ----------------------------------------------------------------------------------------------- probe


def test_pooled_and_token_features():
    class Grid:  # features = the pixels themselves, so pooling and picking can be checked exactly
        def features(self, x):
            return x.permute(0, 2, 3, 1)

    data = SamplePhotos(size=16, length=5)
    (pooled, labels), (tokens, token_labels) = pooled_features(Grid(), data, batch_size=2, tokens_per_picture=3)
    x = torch.stack([data[i]["pixels"] for i in range(5)])
    torch.testing.assert_close(pooled, x.mean(dim=(2, 3)))
    assert labels.tolist() == [data[i]["label"] for i in range(5)] and token_labels.tolist() == [
        lab for lab in labels.tolist() for _ in range(3)
    ]
    rows = x.permute(0, 2, 3, 1).reshape(5, 256, 3)
    assert all(any(torch.equal(t, r) for r in rows[i // 3]) for i, t in enumerate(tokens))


def test_linear_probe_agrees_with_sklearn():
    sklearn = pytest.importorskip("sklearn.linear_model")
    torch.manual_seed(0)
    centres = torch.randn(3, 6) * 1.2
    y, yt = torch.arange(90) % 3, torch.arange(60) % 3
    x, xt = centres[y] + torch.randn(90, 6), centres[yt] + torch.randn(60, 6)
    ours = linear_probe((x, y), (xt, yt))
    mu, sd = x.mean(0), x.std(0)
    clf = sklearn.LogisticRegression(C=1.0, max_iter=2000, tol=1e-10).fit(((x - mu) / sd).numpy(), y.numpy())
    theirs = float((clf.predict(((xt - mu) / sd).numpy()) == yt.numpy()).mean())
    assert ours == pytest.approx(theirs, abs=1 / 60) and ours > 0.6


@pytest.mark.slow
def test_dino_loss_falls_and_features_beat_random_init_on_a_linear_probe(tmp_path):
    # the documented `vistok digit fit` run (~2 minutes on one CPU thread): vit-tiny, 300 DINO steps on the photos
    res = fit_digit(DigitFitConfig(out=str(tmp_path), size=64, k=256, ssl_steps=300, progress=False))
    s = res.summary
    assert s["ssl_loss_last"] < s["ssl_loss_first"] - 1.0  # 6.27 → 4.16 when written
    p = s["probe"]
    assert p["ssl"]["tokens"] > p["random"]["tokens"] + 0.01, p  # 75.2 % vs 71.9 % when written
    assert p["ssl"]["pooled"] > p["random"]["pooled"], p  # 81.3 % vs 80.1 % (700 test crops: ±1.5 % noise)


# ----------------------------------------------------------------------------------------------- the command


def _run_cli(argv):
    parser = argparse.ArgumentParser(prog="vistok")
    add_digit_parser(parser.add_subparsers(dest="group", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_digit_fit_command_end_to_end(tmp_path, capsys):
    out = tmp_path / "digit"
    argv = ["digit", "fit", "--size", "32", "--k", "8", "--ssl-steps", "3", "--batch-size", "4", "--local-crops", "2"]
    argv += ["--fit-images", "24", "--n-iter", "5", "--no-probe", "--out", str(out), "-q"]
    assert _run_cli(argv) == 0
    text = capsys.readouterr().out
    assert "Fitted a DiGIT tokenizer: K=8" in text and "DINO loss" in text
    summary = json.loads((out / "summary.json").read_text())
    assert summary["fit"]["images"] == 24 and summary["grid"] == [4, 4] and summary["k"] == 8
    assert (out / "token_map.png").stat().st_size > 0 and (out / "ssl" / "teacher" / "config.json").is_file()
    from vistok.tokenizers.digit import DigitTokenizer

    tok = DigitTokenizer.from_pretrained(out / "tokenizer")
    teacher = ViT.from_pretrained(out / "ssl" / "teacher")
    x = torch.stack([SamplePhotos(size=32, crop="center")[i]["pixels"] for i in range(3)])
    torch.testing.assert_close(tok.features(x), tok.encoder.vit.patch_features(x, -3))
    torch.testing.assert_close(tok.encoder.vit.pos_embed, teacher.pos_embed)  # the tokenizer reads the teacher


def test_digit_fit_with_a_saved_vit_and_clear_errors(tmp_path):
    torch.manual_seed(0)
    ViT(TINY).save_pretrained(tmp_path / "vit")
    res = fit_digit(
        DigitFitConfig(out=str(tmp_path / "o"), size=32, k=4, encoder=str(tmp_path / "vit"), fit_images=8, n_iter=2,
                       picture_images=2, progress=False)
    )  # fmt: skip
    assert res.summary["encoder"] == str(tmp_path / "vit") and res.picture.is_file()
    folder = tmp_path / "pictures" / "cats"
    folder.mkdir(parents=True)
    for i in range(3):
        Image.fromarray((np.random.default_rng(i).random((40, 50, 3)) * 255).astype(np.uint8)).save(folder / f"{i}.png")
    res = fit_digit(
        DigitFitConfig(out=str(tmp_path / "f"), data=str(tmp_path / "pictures"), size=32, k=4, ssl_steps=2,
                       batch_size=2, n_local=1, fit_images=3, n_iter=2, picture_images=2, progress=False)
    )  # fmt: skip
    assert res.summary["fit"]["images"] == 3 and "probe" not in res.summary  # the photo probe needs the samples
    with pytest.raises(FileNotFoundError, match=r"no config\.json"):
        fit_digit(DigitFitConfig(out=str(tmp_path / "x"), encoder=str(tmp_path / "nowhere"), progress=False))
    with pytest.raises(FileNotFoundError, match="never downloads"):
        fit_digit(DigitFitConfig(out=str(tmp_path / "x"), encoder="hf:" + str(tmp_path / "nowhere"), progress=False))
    with pytest.raises(FileNotFoundError, match="not a folder"):
        fit_digit(DigitFitConfig(out=str(tmp_path / "x"), data=str(tmp_path / "nodata"), progress=False))
