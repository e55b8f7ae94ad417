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
from vistok.train.transfusion_cli import dominant_colour

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
