"""The tokenizer trainer on the real ``magvit2-tiny`` at 16 px: a mixed image/video run, exact resume, the GAN warm-up
switch, the non-finite guard, the config checks and the ``vistok tokenizer train`` verb."""

import argparse
import math

import pytest
import torch

from vistok.data import SamplePhotos, SyntheticVideos
from vistok.hub import from_pretrained
from vistok.registry import create_model
from vistok.train import NonFiniteLossError, read_jsonl
from vistok.train.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint
from vistok.train.perceptual import VGG16Features
from vistok.train.tokenizer import (
    TokenizerTrainConfig,
    TokenizerTrainer,
    add_tokenizer_train_parser,
    train_tokenizer,
)

PRESET = "magvit2-tiny"  # spatial factor 8, temporal factor 4: 16 px images, 5-frame clips


def _config(out_dir, **kw) -> TokenizerTrainConfig:
    base = dict(
        preset=PRESET,
        data="samples",
        image_size=16,
        frames=5,
        batch_size=2,
        video_batch_size=1,
        steps=4,
        warmup=0,
        schedule="constant",
        lr=1e-3,
        disc_lr=1e-3,
        disc_start=1,
        disc_warmup_start=0,
        disc_channels=8,
        disc_max_channels=32,
        log_every=1,
        ckpt_every=2,
        out_dir=str(out_dir) if out_dir is not None else None,
        progress=False,
    )
    return TokenizerTrainConfig(**(base | kw))


def _fixed_data() -> dict:
    """Two fixed images and one fixed clip, so every step sees the same pixels (losses must go down)."""
    return {"image": SamplePhotos(16, crop="center", length=2), "video": SyntheticVideos(5, 16, length=1)}


@pytest.fixture(scope="module")
def lpips_files(tmp_path_factory):
    """Random LPIPS weights in the torchvision + official LPIPS layouts."""
    tmp = tmp_path_factory.mktemp("lpips")
    torch.manual_seed(0)
    torch.save(VGG16Features().features.state_dict(), tmp / "vgg16.pth")
    torch.save({f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1) for k, c in enumerate((64, 128, 256, 512, 512))},
               tmp / "lpips_vgg.pth")  # fmt: skip
    return [str(tmp / "vgg16.pth"), str(tmp / "lpips_vgg.pth")]


def _ema_model(checkpoint) -> torch.nn.Module:
    ema = load_checkpoint(checkpoint)["ema"]
    model = create_model(PRESET)
    model.load_state_dict({**ema["buffers"], **ema["shadow"]})
    return model.eval()


# ------------------------------------------------------------------------------------------------------- a run


def test_tiny_mixed_run(tmp_path, lpips_files):
    cfg = _config(tmp_path, steps=12, disc_warmup_start=4, disc_start=6, ckpt_every=6, perceptual_weights=lpips_files)
    result = train_tokenizer(cfg, datasets=_fixed_data())
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, 13))
    assert all(v is None or math.isfinite(v) for r in rows for v in r.values() if not isinstance(v, bool))
    images, videos = rows[0::2], rows[1::2]  # video ratio 0.5: image, video, image, ...
    assert all("psnr_image" in r and r["images_per_s"] > 0 and r["clips_per_s"] == 0 for r in images)
    assert all("psnr_video" in r and r["clips_per_s"] > 0 and r["images_per_s"] == 0 for r in videos)
    assert all(r["perceptual_loss"] > 0 and r["skipped"] == 0 for r in rows)
    # warm-up switch: D trains from step index 4 (JSON step 5), the generator's GAN term is on from index 6
    assert all("loss_d" not in r for r in rows[:4]) and all({"loss_d", "lecam", "r1"} <= r.keys() for r in rows[4:])
    assert all(r["g_adv"] == 0.0 and r["adv_weight"] == 0.0 for r in rows[:6])
    assert all(r["g_adv"] != 0.0 and r["adv_weight"] == pytest.approx(0.1) for r in rows[6:])
    # the same pixels every step: reconstruction improves (before the GAN term starts and after)
    assert min(r["rec_loss"] for r in images[-2:]) < 0.85 * images[0]["rec_loss"]
    assert min(r["rec_loss"] for r in videos[-2:]) < 0.85 * videos[0]["rec_loss"]
    assert [p.name for p in list_checkpoints(tmp_path)] == ["ckpt_00000006.pt", "ckpt_00000012.pt"]
    assert (result.step, result.images_seen, result.clips_seen) == (12, 12, 6)
    assert "final" in result.summary and "12 image(s)" in result.summary


def test_final_dir_holds_the_ema_generator(tmp_path):
    result = train_tokenizer(_config(tmp_path, steps=3, ckpt_every=0, data="samples"))
    final = from_pretrained(result.final_dir)
    ema = _ema_model(latest_checkpoint(tmp_path))
    raw = load_checkpoint(latest_checkpoint(tmp_path))["model"]
    assert not torch.equal(final.state_dict()["decoder.conv_out.conv.weight"], raw["decoder.conv_out.conv.weight"])
    x = SamplePhotos(16, crop="center", length=4)
    pixels = torch.stack([x[i]["pixels"] for i in range(4)])
    clip = SyntheticVideos(5, 16, length=1)[0]["pixels"][None]
    with torch.no_grad():
        assert torch.equal(final.encode(pixels), ema.encode(pixels))
        assert torch.equal(final.encode(clip), ema.encode(clip))
        torch.testing.assert_close(final.decode(final.encode(pixels)), ema.decode(ema.encode(pixels)))


# ------------------------------------------------------------------------------------------------------- resume


def test_resume_equals_uninterrupted_run(tmp_path):
    """4 steps in one go == 2 steps, stop, resume to 4: every logged loss identical (adaptive weight, lazy R1 on)."""
    kw = dict(adaptive_gan_weight=True, gan_loss="non_saturating", r1_every=2)
    train_tokenizer(_config(tmp_path / "a", **kw))
    first = train_tokenizer(_config(tmp_path / "b", stop_after=2, **kw))
    assert first.final_dir is None and [p.name for p in list_checkpoints(tmp_path / "b")] == ["ckpt_00000002.pt"]
    second = train_tokenizer(_config(tmp_path / "b", **kw))
    assert second.start_step == 2 and second.step == 4
    a, b = read_jsonl(tmp_path / "a" / "metrics.jsonl"), read_jsonl(tmp_path / "b" / "metrics.jsonl")
    assert [r["step"] for r in a] == [r["step"] for r in b] == [1, 2, 3, 4]
    for ra, rb in zip(a, b):
        exact = {k for k in ra if not k.startswith("q_") and not k.endswith("_per_s")}  # usage windows restart
        assert {k: ra[k] for k in exact} == {k: rb.get(k) for k in exact}, ra["step"]
    assert a[-1]["adv_weight"] != pytest.approx(0.1) and "r1" in a[0] and "r1" not in a[1]
    fa, fb = from_pretrained(tmp_path / "a" / "final"), from_pretrained(tmp_path / "b" / "final")
    assert all(torch.equal(fa.state_dict()[k], v) for k, v in fb.state_dict().items())
    with pytest.raises(FileExistsError, match="resume"):
        train_tokenizer(_config(tmp_path / "b", resume=False))


# ------------------------------------------------------------------------------------------------------- guard


def _nan_at_forward(model: torch.nn.Module, bad: set[int]) -> torch.nn.Module:
    calls = {"n": 0}

    def hook(module, inputs, output):
        calls["n"] += 1
        return output * float("nan") if calls["n"] in bad else output

    model.decoder.register_forward_hook(hook)
    return model


def test_nonfinite_steps_are_skipped_then_stop(tmp_path):
    torch.manual_seed(0)
    cfg = _config(tmp_path / "skip", steps=3, disc_start=10, disc_warmup_start=10, video_ratio=0.0, ckpt_every=0)
    result = train_tokenizer(cfg, model=_nan_at_forward(create_model(PRESET), {2}), datasets=_fixed_data())
    rows = read_jsonl(tmp_path / "skip" / "metrics.jsonl")
    assert [r["skipped"] for r in rows] == [0, 1, 0] and result.nonfinite_total == 1
    assert "loss_g" not in rows[1] and math.isfinite(rows[2]["loss_g"])
    cfg = _config(None, steps=3, disc_start=10, disc_warmup_start=10, video_ratio=0.0, max_nonfinite=0)
    with pytest.raises(NonFiniteLossError, match="max_nonfinite=0"):
        train_tokenizer(cfg, model=_nan_at_forward(create_model(PRESET), {1}), datasets=_fixed_data())


# ------------------------------------------------------------------------------------------------------- config


def test_config_checks_and_batch_schedule():
    with pytest.raises(ValueError, match="disc_warmup_start"):
        _config(None, disc_start=1, disc_warmup_start=2)
    with pytest.raises(ValueError, match="data source"):
        _config(None, data=None)
    with pytest.raises(ValueError, match="gan_loss"):
        _config(None, gan_loss="wgan")
    assert _config(None).sources() == {"image": "samples", "video": "samples"}
    assert _config(None, data="imgs").sources() == {"image": "imgs"}
    assert _config(None, data=None, video="clips").sources() == {"video": "clips"}
    with pytest.raises(ValueError, match="no video source"):
        _config(None, data="imgs", video_ratio=0.5).sources()
    with pytest.raises(ValueError, match=r"1 \+ 4·k"):
        TokenizerTrainer(_config(None, frames=6), datasets=_fixed_data())
    trainer = TokenizerTrainer(_config(None, video_ratio=0.25), datasets=_fixed_data())
    kinds = [trainer.batch_kind(s) for s in range(8)]
    assert kinds == ["image", "image", "image", "video"] * 2


# ------------------------------------------------------------------------------------------------------- CLI


def test_cli_train_verb(tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="vistok")
    add_tokenizer_train_parser(parser.add_subparsers(dest="verb"))
    args = parser.parse_args(
        ["train", "--preset", PRESET, "--data", "samples", "--steps", "2", "--image-size", "16", "--frames", "5",
         "--batch-size", "2", "--video-batch-size", "1", "--disc-start", "1", "--out", str(tmp_path), "-q"]
    )  # fmt: skip
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "Trained tokenizer magvit2-tiny for 2 step(s)" in out and str(tmp_path / "final") in out
    assert (tmp_path / "final" / "model.safetensors").is_file()
    help_text = parser._subparsers._group_actions[0].choices["train"].format_help()
    assert "example:" in help_text and "vistok tokenizer train --preset" in help_text


# ------------------------------------------------------------------------------------------------------- DDP

DDP_SCRIPT = """
import sys, torch
torch.set_num_threads(1)
from vistok.train.distributed import cleanup
from vistok.train.tokenizer import TokenizerTrainConfig, train_tokenizer
cfg = TokenizerTrainConfig(
    preset="magvit2-tiny", data="samples", image_size=16, frames=5, batch_size=int(sys.argv[2]),
    video_batch_size=int(sys.argv[2]), steps=3, warmup=0, schedule="constant", lr=1e-3, disc_lr=1e-3, disc_start=0,
    disc_warmup_start=0, disc_channels=8, disc_max_channels=32, log_every=1, ckpt_every=0, out_dir=sys.argv[1],
    progress=False, device="cpu", adaptive_gan_weight=True,
)
train_tokenizer(cfg)
cleanup()
"""


@pytest.mark.slow
def test_ddp_two_processes_match_one_process(tmp_path):
    """torchrun, 2 ranks × 1 item == 1 process × 2 items at the first step (G with LFQ's all-reduced entropy, the
    frozen D in G's step, adaptive weight, DDP-wrapped D with R1 and LeCam); later steps run and stay finite (Adam's
    first steps amplify float noise, so they are not compared exactly)."""
    import os
    import subprocess
    import sys

    script = tmp_path / "run.py"
    script.write_text(DDP_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    for cmd in (
        [sys.executable, str(script), str(tmp_path / "one"), "2"],
        [*torchrun, str(script), str(tmp_path / "two"), "1"],
    ):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
    one, two = read_jsonl(tmp_path / "one" / "metrics.jsonl"), read_jsonl(tmp_path / "two" / "metrics.jsonl")
    assert [r["step"] for r in one] == [r["step"] for r in two] == [1, 2, 3]
    for key in ("rec_loss", "loss_g", "g_adv", "adv_weight", "grad_norm_g", "loss_d", "r1", "lecam", "grad_norm_d"):
        assert two[0][key] == pytest.approx(one[0][key], rel=1e-4, abs=1e-7), key
    assert all(math.isfinite(r["loss_g"]) and math.isfinite(r["loss_d"]) for r in two)


def test_color_augment_permutes_scales_and_greys_deterministically():
    from vistok.train.tokenizer import color_augment

    x = (torch.rand(64, 3, 2, 4, 4) - 0.5).clamp(-0.5, 0.5)  # |x| ≤ 0.5: a gain ≤ 1.4 never clamps
    x[x.abs() < 0.05] = 0.1
    a = color_augment(x, 1.0, torch.Generator().manual_seed(0))
    assert torch.equal(a, color_augment(x, 1.0, torch.Generator().manual_seed(0))) and a.shape == x.shape
    grey = (a[:, 0] == a[:, 1]).flatten(1).all(1) & (a[:, 1] == a[:, 2]).flatten(1).all(1)
    assert 0 < int(grey.sum()) < 32  # about 20% turned grey
    for i in (~grey).nonzero().flatten().tolist():
        for c in range(3):  # output channel c = one input channel times one gain, over every frame and pixel
            ratios = [(a[i, c] / x[i, k]).flatten() for k in range(3)]
            assert any(float(r.std()) < 1e-5 and 0.6 - 1e-5 <= float(r.mean()) <= 1.4 + 1e-5 for r in ratios)
    assert torch.equal(color_augment(x, 0.0, torch.Generator().manual_seed(0)), x)
