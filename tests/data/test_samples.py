"""Built-in samples: the photo split, photo crops, synthetic clips (motion, borders, metadata) and write_samples."""

from __future__ import annotations

import json
import math

import av
import numpy as np
import pytest
import torch
from PIL import Image

from vistok._optional import MissingDependencyError
from vistok.cli import main
from vistok.data import samples
from vistok.data.samples import (
    HELDOUT_PHOTOS,
    MOTIONS,
    PHOTOS,
    SPRITE_COLOURS,
    SamplePhotos,
    SyntheticVideos,
    load_photo,
    photo_names,
)
from vistok.data.transforms import apply_box

TRAIN = (
    "astronaut",
    "chelsea",
    "hubble_deep_field",
    "immunohistochemistry",
    "motorcycle_left",
    "motorcycle_right",
    "retina",
)


# ------------------------------------------------------------------------------------------------ photos and split


def test_every_photo_is_a_full_size_rgb_photograph():
    assert len(PHOTOS) == 9
    for name in PHOTOS:
        img = load_photo(name)
        assert img.mode == "RGB" and min(img.size) >= 300, name
        a = np.asarray(img, dtype=np.float32)
        assert a.std() > 10 and np.abs(a[..., 0] - a[..., 2]).mean() > 3, f"{name} should be a colour photograph"


def test_load_photo_returns_a_copy_of_the_cache():
    img = load_photo("chelsea")
    img.paste((0, 0, 0), (0, 0, img.width, img.height))
    assert np.asarray(load_photo("chelsea")).max() > 0


def test_split_is_fixed_disjoint_and_keeps_the_stereo_pair_together():
    assert photo_names("train") == TRAIN
    assert photo_names("heldout") == HELDOUT_PHOTOS == ("coffee", "rocket")
    assert photo_names("all") == PHOTOS
    assert not set(photo_names("train")) & set(photo_names("heldout"))
    assert set(photo_names("train")) | set(photo_names("heldout")) == set(PHOTOS)
    with pytest.raises(ValueError, match="split"):
        photo_names("val")


def test_unknown_and_missing_photos_raise_clearly(monkeypatch, tmp_path):
    with pytest.raises(ValueError, match="unknown built-in photo 'lena'"):
        load_photo("lena")
    decode = samples._decoded.__wrapped__  # bypass the cache
    monkeypatch.setattr(samples, "photo_dir", lambda: tmp_path)
    with pytest.raises(FileNotFoundError, match=r"rocket\.jpg.*pip install"):
        decode("rocket")
    monkeypatch.undo()
    monkeypatch.setattr(samples.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(MissingDependencyError, match="pip install scikit-image"):
        samples.photo_dir()


# ------------------------------------------------------------------------------------------------ photo crops


@pytest.mark.parametrize("size", [32, (24, 40), (40, 24)])
def test_photo_crops_shape_range_and_labels(size):
    ds = SamplePhotos(size=size, split="all", length=18)
    h, w = (size, size) if isinstance(size, int) else size
    for i in range(len(ds)):
        item = ds[i]
        x = item["pixels"]
        assert x.dtype == torch.float32 and x.shape == (3, h, w)
        assert -1 <= x.min() < x.max() <= 1
        name = PHOTOS[i % 9]
        assert item["label"] == PHOTOS.index(name) and item["path"] == f"builtin:{name}" and item["index"] == i


def test_default_lengths():
    assert len(SamplePhotos()) == 7 * 1000
    assert len(SamplePhotos(split="heldout", crop="center")) == 2
    assert len(SamplePhotos(length=5)) == 5


def test_photo_crops_are_deterministic_and_distinct():
    a, b = SamplePhotos(size=32, seed=3), SamplePhotos(size=32, seed=3)
    assert all(torch.equal(a[i]["pixels"], b[i]["pixels"]) for i in range(10))
    crops = torch.stack([a[i]["pixels"] for i in range(40)]).flatten(1)
    dist = torch.cdist(crops, crops)
    assert dist[~torch.eye(40, dtype=torch.bool)].min() > 1.0, "40 crops of 7 photos should all differ"
    assert not torch.equal(a[0]["pixels"], SamplePhotos(size=32, seed=4)[0]["pixels"])


def test_set_epoch_gives_new_reproducible_crops():
    ds = SamplePhotos(size=32)
    first = ds[5]["pixels"]
    ds.set_epoch(1)
    second = ds[5]["pixels"]
    assert not torch.equal(first, second)
    ds.set_epoch(0)
    assert torch.equal(ds[5]["pixels"], first)


def test_flip_and_zoom_follow_the_settings():
    flipped, plain = SamplePhotos(size=32, hflip_p=1.0), SamplePhotos(size=32, hflip_p=0.0)
    for i in range(5):
        assert torch.equal(flipped[i]["pixels"], plain[i]["pixels"].flip(-1))
    # zoom 1 = the largest crop (astronaut is square: the whole photo); zoom 2 = half of it, linearly
    assert SamplePhotos(size=32, scale_range=(1, 1)).box(0)[1].resize == (32, 32)
    assert SamplePhotos(size=32, scale_range=(2, 2)).box(0)[1].resize == (64, 64)
    coffee = SamplePhotos(size=(30, 60), split="heldout", scale_range=(1, 1)).box(0)[1]  # 600x400 photo, 2:1 crop
    assert coffee.resize == (60, 40) and (coffee.width, coffee.height) == (60, 30)


def test_center_mode_is_the_whole_photo_resized():
    ds = SamplePhotos(size=(32, 48), split="heldout", crop="center")  # coffee is 600x400, the same 3:2 aspect
    got = ds[0]["pixels"]
    want = samples.to_tensor(load_photo("coffee").resize((48, 32), Image.Resampling.BICUBIC))
    assert (got - want).abs().mean() < 0.02
    assert torch.equal(got, ds[0]["pixels"])


def test_fast_crop_matches_the_shared_apply_box():
    ds = SamplePhotos(size=(40, 56), split="all")
    for i in range(9):
        name, box = ds.box(i)
        photo = load_photo(name)
        slow = np.asarray(apply_box(photo, box), dtype=np.float32)
        fast = np.asarray(samples._crop_resized(photo, box), dtype=np.float32)
        assert np.abs(slow - fast).mean() < 2.0, name  # grey levels out of 255


# ------------------------------------------------------------------------------------------------ synthetic clips


@pytest.mark.parametrize(("size", "frames"), [(32, 8), ((24, 40), 5), ((40, 24), 1)])
def test_clip_shape_range_and_item(size, frames):
    ds = SyntheticVideos(num_frames=frames, size=size, length=4, fps=12.0)
    h, w = (size, size) if isinstance(size, int) else size
    for i in range(len(ds)):
        item, info = ds[i], ds.describe(i)
        x = item["pixels"]
        assert x.dtype == torch.float32 and x.shape == (3, frames, h, w)
        assert -1 <= x.min() < x.max() <= 1
        assert item["motion"] == info["motion"] == MOTIONS[i] and item["fps"] == 12.0 and item["index"] == i
        assert item["label"] == PHOTOS.index(info["photo"]) and item["path"].startswith(f"builtin:{info['photo']}")


def test_clips_are_deterministic_in_seed_and_index():
    a, b = SyntheticVideos(num_frames=5, size=32, seed=1), SyntheticVideos(num_frames=5, size=32, seed=1)
    for i in range(4):
        assert np.array_equal(a.render(i), b.render(i)) and a.describe(i) == b.describe(i)
    assert not np.array_equal(a.render(0), a.render(4))  # same motion (pan), different clip
    assert not np.array_equal(a.render(0), SyntheticVideos(num_frames=5, size=32, seed=2).render(0))


def test_consecutive_clips_cover_every_photo_and_motion_pair():
    for split in ("train", "heldout"):
        ds = SyntheticVideos(split=split, length=100)
        n = len(photo_names(split))
        pairs = {(ds.describe(k)["photo"], ds.describe(k)["motion"]) for k in range(4 * n)}
        assert pairs == {(p, m) for p in photo_names(split) for m in MOTIONS}


def test_every_motion_moves_the_picture():
    ds = SyntheticVideos(num_frames=9, size=32, sprites=(0, 0))
    for i in range(8):
        frames = ds.render(i).astype(np.float32)
        step = np.abs(np.diff(frames, axis=0)).mean(axis=(1, 2, 3))
        if ds.describe(i)["motion"] == "static":
            assert step.max() == 0
        else:
            assert step.min() > 0.5 and step.mean() > 3, (i, step)  # grey levels out of 255


def test_static_clips_move_only_their_sprites():
    bg = SyntheticVideos(num_frames=9, size=48, sprites=(0, 0)).render(3)
    ds = SyntheticVideos(num_frames=9, size=48)
    fg, info = ds.render(3), ds.describe(3)
    assert info["motion"] == "static" and 1 <= len(info["sprites"]) <= 3
    assert all(np.array_equal(f, bg[0]) for f in bg)
    assert all(not np.array_equal(fg[t], fg[t + 1]) for t in range(8)), "the sprites move in every frame"
    yy, xx = np.mgrid[0:48, 0:48] + 0.5
    for t, key in ((0, "start"), (-1, "end")):
        changed = (fg[t] != bg[t]).any(-1)
        near = np.zeros_like(changed)
        for s in info["sprites"]:
            x, y = s[key][0] * 48, s[key][1] * 48
            near |= np.hypot(xx - x, yy - y) <= s["radius"] * 48 + 1.5
        assert changed.sum() > 20 and not (changed & ~near).any(), "only pixels under the sprites change"


def _plans(motion: str):
    """Camera paths of ``motion`` for several seeds, stage shapes and output aspect ratios."""
    for seed in range(5):
        for sw, sh in ((600, 400), (300, 500)):
            for hw in ((32, 32), (16, 40), (40, 16)):
                rng = np.random.default_rng(seed)
                yield (sw, sh), hw, samples._plan_camera(rng, motion, sw, sh, hw[1] / hw[0])


@pytest.mark.parametrize("motion", MOTIONS)
def test_camera_never_sees_past_the_photo(motion):
    for (sw, sh), hw, cam in _plans(motion):
        white = Image.new("RGB", (sw, sh), (255, 255, 255))
        frames = samples._render_background(white, (0, 0, sw, sh), samples._views(cam, 6), hw)
        assert all(np.asarray(f).min() == 255 for f in frames), (motion, sw, sh, hw, cam)


def test_retina_clips_stay_inside_the_fundus():
    ds = SyntheticVideos(num_frames=6, size=(32, 48), length=28, sprites=(0, 0))
    clips = [k for k in range(28) if ds.describe(k)["photo"] == "retina" and ds.describe(k)["motion"] != "static"]
    assert len(clips) == 3
    for k in clips:
        frames = ds.render(k)
        assert frames.max(axis=-1).min() > 40, f"clip {k} shows the black around the round fundus"


def _content_shift(a: np.ndarray, b: np.ndarray, r: int = 8) -> tuple[int, int]:
    """The integer (dx, dy) by which the picture moved from frame ``a`` to frame ``b`` (least squares)."""
    h, w = a.shape[:2]
    ref = b[r : h - r, r : w - r].astype(np.float32)
    errors = {
        (dx, dy): np.mean((a[r - dy : h - r - dy, r - dx : w - r - dx].astype(np.float32) - ref) ** 2)
        for dx in range(-r, r + 1)
        for dy in range(-r, r + 1)
    }
    return min(errors, key=errors.get)


def _best_similarity(a: np.ndarray, b: np.ndarray, candidates, transform) -> float:
    """The candidate parameter whose ``transform(image_a, p)`` best matches ``b`` in the central third."""
    h, w = a.shape[:2]
    crop = (slice(h // 3, h - h // 3), slice(w // 3, w - w // 3))
    img = Image.fromarray(a)
    err = [
        np.mean((np.asarray(transform(img, p), np.float32)[crop] - b[crop].astype(np.float32)) ** 2) for p in candidates
    ]
    return candidates[int(np.argmin(err))]


def test_pan_direction_matches_describe():
    ds = SyntheticVideos(num_frames=9, size=64, length=16, sprites=(0, 0))
    for k in (0, 4, 8, 12):
        info, frames = ds.describe(k), ds.render(k)
        travel = np.array(info["camera"]["travel"])
        dx, dy = _content_shift(frames[4], frames[5])
        assert (dx, dy) != (0, 0) and np.dot((dx, dy), travel) < 0, (k, info["camera"], (dx, dy))


def test_rotation_direction_and_angle_match_describe():
    ds = SyntheticVideos(num_frames=5, size=96, length=16, sprites=(0, 0))
    angles = list(range(-50, 51))
    for k in (6, 10, 14):
        info, frames = ds.describe(k), ds.render(k)
        assert info["motion"] == "rotate"
        best = _best_similarity(frames[0], frames[-1], angles, lambda im, a: im.rotate(a, Image.Resampling.BICUBIC))
        sign = 1 if info["camera"]["rotation"] == "counterclockwise" else -1  # PIL turns counter-clockwise for a > 0
        assert abs(best - sign * info["camera"]["degrees"]) <= 3, (k, info["camera"], best)


def test_zoom_direction_and_factor_match_describe():
    ds = SyntheticVideos(num_frames=5, size=96, length=16, sprites=(0, 0))
    factors = [round(f, 3) for f in np.exp(np.linspace(math.log(0.3), math.log(3.3), 121))]

    def magnify(img: Image.Image, f: float) -> Image.Image:
        c = img.width / 2
        return img.transform(
            img.size,
            Image.Transform.AFFINE,
            (1 / f, 0, c - c / f, 0, 1 / f, c - c / f),
            resample=Image.Resampling.BICUBIC,
        )

    for k in (1, 9, 13):
        info, frames = ds.describe(k), ds.render(k)
        assert info["motion"] == "zoom"
        best = _best_similarity(frames[0], frames[-1], factors, magnify)
        want = info["camera"]["factor"] ** (1 if info["camera"]["zoom"] == "in" else -1)
        assert abs(math.log(best / want)) < 0.1, (k, info["camera"], best)


def test_describe_is_plain_json_with_distinct_sprite_colours():
    ds = SyntheticVideos(num_frames=17, size=(48, 64), length=40, sprites=(1, 4))
    for k in range(len(ds)):
        info = ds.describe(k)
        assert json.loads(json.dumps(info)) == info
        colours = [s["colour"] for s in info["sprites"]]
        assert 1 <= len(colours) <= 4 and len(set(colours)) == len(colours) and set(colours) <= set(SPRITE_COLOURS)
        for s in info["sprites"]:
            r = s["radius"] * 48
            assert (
                r / 64 - 1e-3 <= s["end"][0] <= 1 - r / 64 + 1e-3 and r / 48 - 1e-3 <= s["end"][1] <= 1 - r / 48 + 1e-3
            )


def test_clips_batch_with_a_dataloader():
    loader = torch.utils.data.DataLoader(SyntheticVideos(num_frames=3, size=16, length=4), batch_size=2)
    batch = next(iter(loader))
    assert batch["pixels"].shape == (2, 3, 3, 16, 16) and batch["motion"] == ["pan", "zoom"]


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="crop"):
        SamplePhotos(crop="middle")
    with pytest.raises(ValueError, match="scale_range"):
        SamplePhotos(scale_range=(2, 1))
    with pytest.raises(ValueError, match="sprites"):
        SyntheticVideos(sprites=(3, 1))
    with pytest.raises(ValueError, match="num_frames"):
        SyntheticVideos(num_frames=0)
    with pytest.raises(IndexError):
        SyntheticVideos(length=2)[2]
    assert SamplePhotos(length=3)[-1]["index"] == 2


# ------------------------------------------------------------------------------------------------ writing files


def _decode(path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def test_cli_writes_photos_clips_and_contact_sheets(tmp_path, capsys):
    out = tmp_path / "samples"
    assert (
        main(["data", "samples", str(out), "--size", "32", "--clips", "2", "--frames", "8", "--seed", "5", "-q"]) == 0
    )
    summary = capsys.readouterr().out
    assert "9 built-in photos" in summary and str(out) in summary and "2 synthetic clips" in summary

    for split in ("train", "heldout"):
        written = sorted(p.stem for p in (out / "photos" / split).glob("*.png"))
        assert written == sorted(photo_names(split))
    png = np.asarray(Image.open(out / "photos" / "heldout" / "rocket.png"))
    want = samples.to_uint8(SamplePhotos(size=32, split="heldout", crop="center")[1]["pixels"])
    assert np.array_equal(png, want)

    ds = SyntheticVideos(num_frames=8, size=32, length=2, seed=5)
    for i, motion in enumerate(("pan", "zoom")):
        video = _decode(out / "clips" / f"clip_{i:03d}_{motion}.mp4")
        assert video.shape == (8, 32, 32, 3)
        assert np.abs(video.astype(np.float32) - ds.render(i)).mean() < 8
        sheet = np.asarray(Image.open(out / "clips" / f"clip_{i:03d}_{motion}.png"))
        assert sheet.shape == (32, 8 * 32 + 7 * 2, 3)
        assert np.array_equal(sheet[:, 34:66], ds.render(i)[1])
    assert json.loads((out / "clips" / "clips.json").read_text()) == [ds.describe(0), ds.describe(1)]


def test_write_samples_shows_progress_and_handles_no_clips(tmp_path, capsys):
    summary = samples.write_samples(tmp_path, size=16, num_clips=0, progress=True)
    assert "samples" in capsys.readouterr().err
    assert "no synthetic clips" in summary and len(list(tmp_path.rglob("*.png"))) == 9
    assert not (tmp_path / "clips").exists()
