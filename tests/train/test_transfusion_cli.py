"""``vistok transfusion {train,generate,caption}`` end to end at a tiny size (untrained vae-tiny), plus the probe."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from vistok import cli
from vistok.data.samples import SPRITE_COLOURS
from vistok.data.scenes import Scenes
from vistok.train.transfusion_cli import dominant_colour, dominant_shape

TINY = ["--scenes", "8", "--val-scenes", "12", "--steps", "3", "--batch-size", "4", "--eval-items", "2"]
TINY += ["--eval-steps", "2", "--log-every", "1", "-q"]


@pytest.fixture
def main():
    """``vistok.cli.main`` (the transfusion group is one of its commands)."""
    assert "transfusion" in cli._HELP
    return cli.main


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("tf") / "run"
    assert cli.main(["transfusion", "train", "--vae", "vae-tiny", "--out", str(out), *TINY]) == 0
    return out


def test_train_writes_run(run_dir):
    for name in ("latents.pt", "run.json", "eval.json", "samples.png", "metrics.jsonl"):
        assert (run_dir / name).is_file(), name
    model = run_dir / "model"
    for name in ("config.json", "model.safetensors", "run.json", "vae/config.json", "vae/model.safetensors"):
        assert (model / name).is_file(), name
    record = json.loads((model / "run.json").read_text())
    assert record["vae"]["source"] == "vae-tiny" and record["vae"]["trained"] is False
    assert record["image_size"] == [64, 64] and record["latent_shape"] == [8, 8, 8]
    assert record["text_tokenizer"]["type"] == "ByteTokenizer"
    report = json.loads((run_dir / "eval.json").read_text())
    i2t, t2i = report["image_to_text"], report["text_to_image"]
    assert i2t["items"] == 12 and 0 <= i2t["byte_accuracy"] <= 1 and "majority_byte_accuracy" in i2t
    assert t2i["items"] >= 1 and 0 <= t2i["colour_match"] <= 1
    assert t2i["true_image_colour_match"] == 1.0  # the probe reads the real pictures correctly
    assert "shape_match" in t2i and "true_image_shape_match" in t2i
    with Image.open(run_dir / "samples.png") as img:
        assert img.width > 64 and img.height > 64
    cache = torch.load(run_dir / "latents.pt", weights_only=False)
    assert cache["latents"].shape == (8, 8, 8, 8) and len(cache["captions"]) == 8


def test_train_again_reuses_latents(run_dir, main, capsys):
    assert main(["transfusion", "train", "--vae", "vae-tiny", "--out", str(run_dir), *TINY]) == 0
    assert "reused" in capsys.readouterr().out


def test_generate_and_caption(run_dir, main, tmp_path, capsys):
    out = tmp_path / "gen.png"
    gen = ["transfusion", "generate", "--model", str(run_dir / "model"), "--prompt", "a red circle"]
    rc = main([*gen, "--n", "2", "--steps", "2", "--out", str(out)])
    assert rc == 0 and out.is_file()
    with Image.open(out) as img:
        assert img.height == 128 + 14  # two 64 px pictures at scale 2, with a label row
    capsys.readouterr()
    scene = tmp_path / "scene.png"
    Image.fromarray(Scenes(64, 1, "heldout").render(0)).save(scene)
    assert main(["transfusion", "caption", "--model", str(run_dir / "model"), str(scene)]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 1


def test_f4_vae_with_patch_size_and_model_args(main, tmp_path):
    """An f = 4 VAE (16×16 latents at 64 px), 4×4 patches and a config override reach the saved model and run."""
    out = tmp_path / "f4"
    args = ["--vae", "vae-tiny-f4", "--patch-size", "4", "--model-arg", "dim=32", "--model-arg", "diffusion_weight=2"]
    assert main(["transfusion", "train", *args, "--out", str(out), *TINY]) == 0
    record = json.loads((out / "model" / "run.json").read_text())
    assert record["latent_shape"] == [8, 16, 16]
    assert record["config"]["patch_size"] == 4 and record["config"]["model_args"] == {"dim": 32, "diffusion_weight": 2}
    config = json.loads((out / "model" / "config.json").read_text())
    assert (config["patch_size"], config["dim"], config["latent_channels"], config["diffusion_weight"]) == (4, 32, 8, 2)
    gen = tmp_path / "gen.png"
    rc = main(["transfusion", "generate", "--model", str(out / "model"), "--prompt", "a red circle", "--n", "1",
               "--steps", "2", "--out", str(gen)])  # fmt: skip
    assert rc == 0 and gen.is_file()


def test_channel_latent_norm(main, tmp_path, capsys):
    """--latent-norm channel standardizes every latent channel of the training latents, and the run's VAE copy
    carries the statistics (so generation and captioning decode and encode the same way); a rerun reuses them."""
    from vistok.hub import from_pretrained

    out = tmp_path / "ch"
    cmd = ["transfusion", "train", "--vae", "vae-tiny-f4", "--latent-norm", "channel", "--out", str(out), *TINY]
    assert main(cmd) == 0
    latents = torch.load(out / "latents.pt", weights_only=False)["latents"]
    flat = latents.transpose(0, 1).flatten(1).double()
    assert flat.mean(1).abs().max() < 1e-3 and (flat.std(1) - 1).abs().max() < 0.05
    record = json.loads((out / "model" / "run.json").read_text())
    assert record["vae"]["latent_norm"] == "channel" and len(record["vae"]["channel_scale"]) == 8
    vae = from_pretrained(out / "model" / "vae")
    assert list(vae.config.channel_scale) == record["vae"]["channel_scale"]
    scenes = Scenes(64, 8, "train", seed=0, objects=(1, 4))
    with torch.no_grad():
        again = vae.encode(torch.stack([scenes[i]["pixels"] for i in range(8)]))
    torch.testing.assert_close(again, latents, rtol=1e-4, atol=1e-4)
    capsys.readouterr()
    assert main(cmd) == 0 and "reused" in capsys.readouterr().out
    again_record = json.loads((out / "model" / "run.json").read_text())
    assert again_record["vae"]["channel_scale"] == record["vae"]["channel_scale"]


def test_bad_model_args():
    from vistok.train.transfusion_cli import TransfusionRunConfig

    with pytest.raises(ValueError, match="patch_size"):
        TransfusionRunConfig(patch_size=3)
    with pytest.raises(ValueError, match="latent_channels"):
        TransfusionRunConfig(model_args={"latent_channels": 4})
    with pytest.raises(ValueError, match="latent_norm"):
        TransfusionRunConfig(latent_norm="pixel")
    assert TransfusionRunConfig(patch_size=4, model_args={"dim": 32}).model_overrides(8) == {
        "latent_channels": 8,
        "patch_size": 4,
        "dim": 32,
    }


def test_bad_inputs(run_dir, main, tmp_path, capsys):
    missing = tmp_path / "nothing" / "model"
    assert main(["transfusion", "generate", "--model", str(missing), "--prompt", "a red circle"]) == 2
    assert "no such folder" in capsys.readouterr().err
    assert main(["transfusion", "caption", "--model", str(missing), str(tmp_path / "x.png")]) == 2
    assert main(["transfusion", "caption", "--model", str(run_dir / "model"), str(tmp_path / "x.png")]) == 2
    assert "no such image" in capsys.readouterr().err
    assert main(["transfusion", "train", "--vae", "no-such-vae", "--out", str(tmp_path / "r"), *TINY]) == 2
    assert "not a VAE preset" in capsys.readouterr().err
    assert main(["transfusion", "generate", "--model", str(run_dir), "--prompt", "x"]) == 2  # run folder, not model


def test_dominant_shape_probe():
    from PIL import ImageDraw

    scenes = Scenes(64, 200, "heldout")
    hits = checked = 0
    for i in range(len(scenes)):
        shapes = {o["shape"] for o in scenes[i]["objects"]}
        if len(shapes) == 1:
            hits += dominant_shape(scenes.render(i)) == shapes.pop()
            checked += 1
    assert checked >= 100 and hits / checked > 0.95  # the probe's ceiling on true scenes (chance: 1/3)
    for shape, draw in (
        ("square", lambda d: d.rectangle((20, 20, 39, 39), fill=SPRITE_COLOURS["red"])),
        ("circle", lambda d: d.ellipse((20, 20, 43, 43), fill=SPRITE_COLOURS["red"])),
        ("triangle", lambda d: d.polygon([(32, 16), (48, 44), (16, 44)], fill=SPRITE_COLOURS["red"])),
    ):
        img = Image.new("RGB", (64, 64), (50, 50, 50))
        draw(ImageDraw.Draw(img))
        assert dominant_shape(np.asarray(img)) == shape
        assert dominant_shape(np.asarray(img), colour="blue") is None  # no blue blob
    assert dominant_shape(np.full((64, 64, 3), 50, dtype=np.uint8)) is None


def test_dominant_colour_probe():
    scenes = Scenes(64, 40, "heldout")
    checked = 0
    for i in range(len(scenes)):
        objects = scenes[i]["objects"]
        colours = {o["colour"] for o in objects}
        if len(colours) == 1:
            assert dominant_colour(scenes.render(i)) == colours.pop()
            checked += 1
    assert checked >= 3
    grey = np.full((64, 64, 3), 50, dtype=np.uint8)
    assert dominant_colour(grey) is None
    for name, rgb in SPRITE_COLOURS.items():
        img = grey.copy()
        img[20:40, 20:40] = rgb
        assert dominant_colour(torch.from_numpy(img).permute(2, 0, 1).float() / 127.5 - 1) == name
