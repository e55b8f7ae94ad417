"""Built-in samples: real photographs that ship with scikit-image, and synthetic videos made from them.

Nothing is downloaded. The photos are the colour photographs inside the installed ``skimage/data`` folder
(scikit-image is a core dependency), split *by photo* into a fixed train / held-out set. On top of them:

- :class:`SamplePhotos` — random crops at random scales (a few photos give many distinct training crops), or the
  whole photo resized (``crop="center"``);
- :class:`SyntheticVideos` — a virtual camera pans, zooms or rotates over a photo (or stays still) while a few
  coloured sprites (circles, squares, triangles) move at constant velocity and bounce off the frame edges.
  Every clip is a pure function of ``(seed, index)``; :meth:`SyntheticVideos.describe` returns what happens in it
  as plain JSON-able data (camera motion, sprite shapes/colours/directions) for question answering on video;
- :func:`write_samples` — writes both as PNG / MP4 files with contact sheets, to look at (``vistok data samples``).

Items follow the dataset contract of :mod:`vistok.data`: ``pixels`` float32 in [-1, 1], ``(3, H, W)`` for photos
and ``(3, T, H, W)`` for clips, plus ``label`` (the photo's index in :data:`PHOTOS`), ``path`` and ``index``.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from torch.utils.data import Dataset

from vistok._optional import MissingDependencyError
from vistok.data.transforms import CROPS, CropBox, crop_box, frames_to_tensor, to_tensor, to_uint8
from vistok.eval.pictures import save_png

# ------------------------------------------------------------------------------------------------ the photos

# name → file inside skimage/data. Only the RGB photographs: the synthetic (color.png, logo.png), greyscale and
# texture images there are left out.
_PHOTO_FILES = {
    "astronaut": "astronaut.png",
    "chelsea": "chelsea.png",
    "coffee": "coffee.png",
    "hubble_deep_field": "hubble_deep_field.jpg",
    "immunohistochemistry": "ihc.png",
    "motorcycle_left": "motorcycle_left.png",
    "motorcycle_right": "motorcycle_right.png",
    "retina": "retina.jpg",
    "rocket": "rocket.jpg",
}
PHOTOS: tuple[str, ...] = tuple(_PHOTO_FILES)
"""The built-in photos in a fixed order; a photo's position here is its ``label``."""
HELDOUT_PHOTOS: tuple[str, ...] = ("coffee", "rocket")
"""Photos never seen in the train split (the motorcycle stereo pair stays together in train)."""
SPLITS = ("train", "heldout", "all")

# The part of a photo the video camera may look at, as (left, top, right, bottom) fractions: the retina photo is a
# round fundus on black, so its camera stays inside the square inscribed in the fundus (no black in any frame).
_STAGES = {"retina": (0.17, 0.17, 0.83, 0.83)}


def photo_names(split: str = "train") -> tuple[str, ...]:
    """Names of the photos in ``split``: "train" (7 photos), "heldout" (coffee, rocket) or "all" (:data:`PHOTOS`)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if split == "all":
        return PHOTOS
    return tuple(n for n in PHOTOS if (n in HELDOUT_PHOTOS) == (split == "heldout"))


def photo_dir() -> Path:
    """The ``data`` folder of the installed scikit-image package (found without importing it)."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or spec.origin is None:
        raise MissingDependencyError(
            "the built-in sample photos ship with scikit-image, which is not installed; "
            "install it with: pip install scikit-image"
        )
    return Path(spec.origin).parent / "data"


@cache
def _decoded(name: str) -> Image.Image:
    """The decoded RGB photo, cached per process; shared, so callers must not modify it."""
    if name not in _PHOTO_FILES:
        raise ValueError(f"unknown built-in photo {name!r}; expected one of {PHOTOS}")
    path = photo_dir() / _PHOTO_FILES[name]
    if not path.is_file():
        raise FileNotFoundError(
            f"built-in photo {name!r} is missing: {path} does not exist; "
            "reinstall scikit-image with: pip install --force-reinstall scikit-image"
        )
    with Image.open(path) as im:
        return im.convert("RGB")


def load_photo(name: str) -> Image.Image:
    """The built-in photo ``name`` as a PIL RGB image at full resolution (a copy of the in-process cache)."""
    return _decoded(name).copy()


def _hw(size: int | tuple[int, int]) -> tuple[int, int]:
    """``size`` as a validated (height, width)."""
    h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if h <= 0 or w <= 0:
        raise ValueError(f"size must be positive, got {size!r}")
    return h, w


# ------------------------------------------------------------------------------------------------ photo crops


def _cover_scale(w: int, h: int, th: int, tw: int) -> float:
    """The :func:`crop_box` ``scale`` at which a ``th``×``tw`` crop is the largest one inside a ``w``×``h`` photo."""
    shorter = max(th, tw * h / w) if w >= h else max(tw, th * w / h)
    return shorter / max(th, tw)


def _crop_resized(img: Image.Image, box: CropBox) -> Image.Image:
    """Same picture as ``transforms.apply_box(img, box)``, resampled straight from the crop's region of ``img``.

    Resizing only the region (with PIL's ``reduce`` pre-step) is many times faster than resizing a big photo whole.
    """
    sx, sy = img.width / box.resize[0], img.height / box.resize[1]
    region = (box.left * sx, box.top * sy, (box.left + box.width) * sx, (box.top + box.height) * sy)
    out = img.resize((box.width, box.height), Image.Resampling.BICUBIC, box=region, reducing_gap=2.0)
    return out.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if box.flip else out


class SamplePhotos(Dataset):
    """Crops of the built-in photos as an image dataset.

    Item ``i`` shows photo ``photo_names(split)[i % n]``. With ``crop="random"`` it is a random crop at a random
    zoom drawn log-uniformly from ``scale_range`` (1 = the largest crop of the output's aspect ratio, 3 = a third of
    that, linearly), flipped with probability ``hflip_p``, all deterministic in ``(seed, epoch, i)``; call
    :meth:`set_epoch` to get fresh crops each epoch. With ``crop="center"`` it is the whole photo resized (largest
    centred crop of the output's aspect ratio, no flip). ``length`` defaults to 1000 items per photo for random crops
    and one per photo for centre crops. ``size`` is an int or (H, W). Zooming past a photo's own resolution
    upsamples it (the smallest photo, chelsea, is 451×300).
    """

    def __init__(
        self,
        size: int | tuple[int, int] = 64,
        split: str = "train",
        length: int | None = None,
        crop: str = "random",
        scale_range: tuple[float, float] = (1.0, 3.0),
        hflip_p: float = 0.5,
        seed: int = 0,
    ):
        if crop not in CROPS:
            raise ValueError(f"crop must be one of {CROPS}, got {crop!r}")
        if not 0 < scale_range[0] <= scale_range[1]:
            raise ValueError(f"scale_range must be (low, high) with 0 < low <= high, got {scale_range!r}")
        self.size = _hw(size)
        self.split, self.crop, self.seed = split, crop, int(seed)
        self.names = photo_names(split)
        self.scale_range = (float(scale_range[0]), float(scale_range[1]))
        self.hflip_p = float(hflip_p)
        per_photo = 1000 if crop == "random" else 1
        self.length = len(self.names) * per_photo if length is None else int(length)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Draw a different set of random crops (same seed, new epoch)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.length

    def box(self, index: int) -> tuple[str, CropBox]:
        """The photo name and crop plan of item ``index`` (no pixels touched)."""
        name = self.names[index % len(self.names)]
        w, h = _decoded(name).size
        th, tw = self.size
        cover = _cover_scale(w, h, th, tw)
        if self.crop == "center":
            return name, crop_box(w, h, self.size, "center", scale=cover)
        rng = np.random.default_rng([self.seed, self.epoch, index])
        zoom = math.exp(rng.uniform(math.log(self.scale_range[0]), math.log(self.scale_range[1])))
        return name, crop_box(w, h, self.size, "random", rng, self.hflip_p, scale=cover * zoom)

    def __getitem__(self, index: int) -> dict:
        index = _check_index(index, self.length)
        name, box = self.box(index)
        pixels = to_tensor(_crop_resized(_decoded(name), box))
        return {"pixels": pixels, "label": PHOTOS.index(name), "path": f"builtin:{name}", "index": index}


def _check_index(index: int, length: int) -> int:
    """``index`` in [0, length) (negative indices count from the end) or IndexError."""
    i = index + length if index < 0 else index
    if not 0 <= i < length:
        raise IndexError(f"index {index} out of range for a dataset of {length} items")
    return i


# ------------------------------------------------------------------------------------------------ clip plans

MOTIONS = ("pan", "zoom", "rotate", "static")
SPRITE_SHAPES = ("circle", "square", "triangle")
SPRITE_COLOURS = {
    "red": (230, 30, 40),
    "green": (40, 200, 60),
    "blue": (40, 80, 235),
    "yellow": (250, 220, 30),
    "cyan": (30, 215, 235),
    "magenta": (220, 40, 200),
    "white": (250, 250, 250),
    "orange": (250, 140, 20),
}
_DIRECTIONS = ("right", "up-right", "up", "up-left", "left", "down-left", "down", "down-right")


@dataclass(frozen=True)
class Camera:
    """A camera path over the stage (the part of the photo the camera may see), in stage pixels at full resolution.

    The view is a rectangle of the output's aspect ratio centred at ``center``, ``2·half_height`` tall, turned by
    ``angle`` radians (positive turns the view clockwise on the photo, so the picture turns counter-clockwise on
    screen). Each field holds its (start, end) value; frames between follow an eased path (see :func:`_views`).
    """

    motion: str
    center: tuple[tuple[float, float], tuple[float, float]]
    half_height: tuple[float, float]
    angle: tuple[float, float]
    ease: float


@dataclass(frozen=True)
class Sprite:
    """A coloured shape moving at constant velocity, bouncing off the frame edges.

    ``radius`` is a fraction of the output's shorter side; ``start`` (x, y) and ``travel`` (x, y) are fractions of
    the output's width and height (travel over the whole clip, before bouncing).
    """

    shape: str
    colour: str
    radius: float
    start: tuple[float, float]
    travel: tuple[float, float]


@dataclass(frozen=True)
class ClipPlan:
    """Everything that decides a synthetic clip, drawn from ``(seed, index)``."""

    index: int
    photo: str
    stage: tuple[float, float, float, float]  # (left, top, right, bottom) in photo pixels
    camera: Camera
    sprites: tuple[Sprite, ...]


def _stage_box(name: str) -> tuple[float, float, float, float]:
    """The stage of photo ``name`` in its pixels."""
    w, h = _decoded(name).size
    left, top, right, bottom = _STAGES.get(name, (0.0, 0.0, 1.0, 1.0))
    return left * w, top * h, right * w, bottom * h


def _random_center(rng: np.random.Generator, half_w: float, half_h: float, sw: float, sh: float) -> tuple[float, float]:
    """A uniformly random centre for a ``2·half_w``×``2·half_h`` box inside a ``sw``×``sh`` stage."""
    return float(rng.uniform(half_w, sw - half_w)), float(rng.uniform(half_h, sh - half_h))


def _pan_segment(rng: np.random.Generator, half_w: float, half_h: float, sw: float, sh: float):
    """Start and end centres of a straight pan in a random direction over 60–100 % of the room that way."""
    phi = rng.uniform(0, 2 * math.pi)
    d = np.array([math.cos(phi), math.sin(phi)])
    room = np.array([sw / 2 - half_w, sh / 2 - half_h])  # how far the centre may move from the stage centre
    reach = min(room[i] / abs(d[i]) for i in range(2) if abs(d[i]) > 1e-9)
    length = 2 * reach * rng.uniform(0.6, 1.0)
    start = -reach + rng.uniform(0, 2 * reach - length)
    c = np.array([sw / 2, sh / 2]) + start * d
    return tuple(c.tolist()), tuple((c + length * d).tolist())


def _plan_camera(rng: np.random.Generator, motion: str, sw: float, sh: float, aspect: float) -> Camera:
    """Draw a camera path of kind ``motion`` whose view stays inside a ``sw``×``sh`` stage in every frame.

    ``aspect`` is the output's width / height. A margin of 0.5 % of the stage keeps resampling off its edges.
    """
    m = 0.005 * min(sw, sh)
    sw, sh = sw - 2 * m, sh - 2 * m
    fit = min(sh / 2, sw / (2 * aspect))  # the largest half-height of an unturned view
    ease = float(rng.uniform(0, 0.8))
    if motion == "rotate":  # the view's circumscribed circle stays inside, so every angle fits
        radius = min(sw, sh) / 2 * rng.uniform(0.7, 0.95)
        b = radius / math.hypot(1, aspect)
        c = _random_center(rng, radius, radius, sw, sh)
        a0 = math.radians(rng.uniform(-15, 15))
        turn = math.radians(rng.uniform(20, 45)) * rng.choice([-1, 1])
        cam = Camera(motion, (c, c), (b, b), (a0, a0 + turn), ease)
    elif motion == "zoom":
        big = fit * rng.uniform(0.8, 1.0)
        small = big / rng.uniform(1.5, 2.5)
        c = _random_center(rng, aspect * big, big, sw, sh)
        cam = Camera(motion, (c, c), (big, small) if rng.random() < 0.5 else (small, big), (0.0, 0.0), ease)
    elif motion == "pan":
        b = fit * rng.uniform(0.45, 0.7)
        cam = Camera(motion, _pan_segment(rng, aspect * b, b, sw, sh), (b, b), (0.0, 0.0), ease)
    elif motion == "static":
        b = fit * rng.uniform(0.5, 1.0)
        c = _random_center(rng, aspect * b, b, sw, sh)
        cam = Camera(motion, (c, c), (b, b), (0.0, 0.0), ease)
    else:
        raise ValueError(f"motion must be one of {MOTIONS}, got {motion!r}")
    (x0, y0), (x1, y1) = cam.center
    return Camera(motion, ((x0 + m, y0 + m), (x1 + m, y1 + m)), cam.half_height, cam.angle, ease)


def _plan_sprites(rng: np.random.Generator, count: int, hw: tuple[int, int]) -> tuple[Sprite, ...]:
    """Draw ``count`` sprites with distinct colours, random shapes, positions and velocities."""
    h, w = hw
    colours = rng.choice(len(SPRITE_COLOURS), size=count, replace=False)
    sprites = []
    for c in colours:
        radius = float(rng.uniform(0.07, 0.12))
        rx, ry = radius * min(h, w) / w, radius * min(h, w) / h
        start = (float(rng.uniform(rx, 1 - rx)), float(rng.uniform(ry, 1 - ry)))
        phi, dist = rng.uniform(0, 2 * math.pi), rng.uniform(0.3, 1.0)
        travel = (dist * math.cos(phi), dist * math.sin(phi))
        shape = SPRITE_SHAPES[int(rng.integers(len(SPRITE_SHAPES)))]
        sprites.append(Sprite(shape, list(SPRITE_COLOURS)[int(c)], radius, start, travel))
    return tuple(sprites)


# ------------------------------------------------------------------------------------------------ paths per frame


def _eased(num_frames: int, ease: float) -> np.ndarray:
    """Progress 0 → 1 over the frames: linear for ``ease`` 0, slower at both ends for larger ``ease`` ≤ 1."""
    u = np.linspace(0.0, 1.0, num_frames) if num_frames > 1 else np.zeros(1)
    return u - ease * np.sin(2 * np.pi * u) / (2 * np.pi)


def _views(cam: Camera, num_frames: int) -> np.ndarray:
    """Per-frame views ``(T, 4)``: centre x, centre y, half-height (geometric interpolation), angle."""
    e = _eased(num_frames, cam.ease)[:, None]
    (x0, y0), (x1, y1) = cam.center
    centre = np.array([x0, y0]) + e * np.array([x1 - x0, y1 - y0])
    b0, b1 = cam.half_height
    half = b0 * (b1 / b0) ** e
    angle = cam.angle[0] + e * (cam.angle[1] - cam.angle[0])
    return np.concatenate([centre, half, angle], axis=1)


def _bounce(p: np.ndarray, lo: float, hi: float) -> tuple[np.ndarray, int]:
    """Fold positions ``p`` into [lo, hi] as a ball bouncing between walls; also the number of bounces."""
    span = hi - lo
    q = np.mod(p - lo, 2 * span)
    folded = lo + np.where(q > span, 2 * span - q, q)
    walls = np.floor((p - lo) / span)
    return folded, int(np.abs(np.diff(walls)).sum())


def _sprite_track(s: Sprite, num_frames: int, hw: tuple[int, int]) -> tuple[np.ndarray, int]:
    """Sprite centres ``(T, 2)`` as (x, y) fractions of width and height, and how often it bounced."""
    h, w = hw
    u = np.linspace(0.0, 1.0, num_frames) if num_frames > 1 else np.zeros(1)
    track, bounces = [], 0
    for axis, extent in enumerate((w, h)):
        r = s.radius * min(h, w) / extent
        pos, n = _bounce(s.start[axis] + u * s.travel[axis], r, 1 - r)
        track.append(pos)
        bounces += n
    return np.stack(track, axis=1), bounces


# ------------------------------------------------------------------------------------------------ rendering


def _working_levels(photo: Image.Image, stage, views: np.ndarray, out_h: int) -> tuple[list[Image.Image], np.ndarray]:
    """Pre-shrunk copies of the stage and, per frame, which one to sample from.

    Level 0 is shrunk so the smallest view still gets ≥1 source pixel per output pixel (never enlarged); each
    further level halves it. A frame samples from the level where it gets 1–2 source pixels per output pixel, so the
    (non-antialiased) affine resampling never shrinks by more than 2× and zooms do not alias.
    """
    left, top, right, bottom = stage
    sw, sh = right - left, bottom - top
    b_min = float(views[:, 2].min())
    scale = min(1.0, out_h / (2 * b_min))
    level = np.floor(np.log2(views[:, 2] / b_min + 1e-9)).astype(int).clip(0)
    images = []
    for j in range(int(level.max()) + 1):
        s = scale / 2**j
        size = (max(1, round(sw * s)), max(1, round(sh * s)))
        images.append(photo.resize(size, Image.Resampling.BICUBIC, box=stage, reducing_gap=2.0))
    return images, level


def _render_view(img: Image.Image, stage_wh: tuple[float, float], view: np.ndarray, hw: tuple[int, int]):
    """One frame: the view rectangle (stage pixels) of ``img`` (the stage at some scale) resampled to ``hw``."""
    h, w = hw
    cx, cy, half, angle = view
    sx, sy = img.width / stage_wh[0], img.height / stage_wh[1]
    k = 2 * half / h  # stage pixels per output pixel
    cos, sin = k * math.cos(angle), k * math.sin(angle)
    # output point (u, v) → stage point centre + R(angle)·k·(u − w/2, v − h/2) → working image point (sx·X, sy·Y)
    coeffs = (
        sx * cos,
        -sx * sin,
        sx * (cx - cos * w / 2 + sin * h / 2),
        sy * sin,
        sy * cos,
        sy * (cy - sin * w / 2 - cos * h / 2),
    )
    return img.transform((w, h), Image.Transform.AFFINE, coeffs, resample=Image.Resampling.BICUBIC)


def _render_background(photo: Image.Image, stage, views: np.ndarray, hw: tuple[int, int]) -> list[Image.Image]:
    """The camera's frames over ``photo`` (no sprites)."""
    images, level = _working_levels(photo, stage, views, hw[0])
    stage_wh = (stage[2] - stage[0], stage[3] - stage[1])
    return [_render_view(images[j], stage_wh, v, hw) for j, v in zip(level, views)]


def _shape_mask(shape: str, radius: float, offset: tuple[float, float], patch: int, ss: int = 4) -> Image.Image:
    """An antialiased ``patch``² mask of ``shape`` centred at ``offset`` (subpixel): drawn at ``ss``×, then shrunk."""
    mask = Image.new("L", (patch * ss, patch * ss), 0)
    draw = ImageDraw.Draw(mask)
    x, y, r = offset[0] * ss, offset[1] * ss, radius * ss
    if shape == "circle":
        draw.ellipse((x - r, y - r, x + r, y + r), fill=255)
    elif shape == "square":
        a = 0.8 * r  # about the circle's area
        draw.rectangle((x - a, y - a, x + a, y + a), fill=255)
    else:  # an upright equilateral triangle in the circle
        draw.polygon(
            [(x + r * math.cos(t), y + r * math.sin(t)) for t in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)], fill=255
        )
    return mask.reduce(ss)


def _draw_sprites(frame: Image.Image, sprites: tuple[Sprite, ...], centres: list[np.ndarray]) -> None:
    """Paste each sprite at its centre (x, y fractions) for this frame, back to front."""
    w, h = frame.size
    for s, (fx, fy) in zip(sprites, centres):
        radius = s.radius * min(h, w)
        x, y = fx * w, fy * h
        patch = math.ceil(2 * radius) + 3
        left, top = math.floor(x - patch / 2), math.floor(y - patch / 2)
        mask = _shape_mask(s.shape, radius, (x - left, y - top), patch)
        frame.paste(SPRITE_COLOURS[s.colour], (left, top, left + patch, top + patch), mask)


def render_clip(plan: ClipPlan, num_frames: int, size: int | tuple[int, int]) -> np.ndarray:
    """Render a :class:`ClipPlan` to uint8 frames ``(T, H, W, 3)``."""
    hw = _hw(size)
    frames = _render_background(_decoded(plan.photo), plan.stage, _views(plan.camera, num_frames), hw)
    tracks = [_sprite_track(s, num_frames, hw)[0] for s in plan.sprites]
    for t, frame in enumerate(frames):
        _draw_sprites(frame, plan.sprites, [tr[t] for tr in tracks])
    return np.stack([np.asarray(f) for f in frames])


# ------------------------------------------------------------------------------------------------ describing clips


def _direction(dx: float, dy: float) -> str:
    """One of 8 compass words for a screen vector (y down)."""
    sector = round(math.degrees(math.atan2(-dy, dx)) / 45) % 8
    return _DIRECTIONS[sector]


def _describe_camera(cam: Camera, aspect: float) -> dict:
    """The camera motion in words and numbers, as seen on screen."""
    if cam.motion == "pan":
        (x0, y0), (x1, y1) = cam.center
        b = cam.half_height[0]
        travel = [(x1 - x0) / (2 * b * aspect), (y1 - y0) / (2 * b)]  # in frame widths / heights
        return {"direction": _direction(*travel), "travel": [round(v, 4) for v in travel]}
    if cam.motion == "zoom":
        b0, b1 = cam.half_height
        return {"zoom": "in" if b1 < b0 else "out", "factor": round(max(b0, b1) / min(b0, b1), 4)}
    if cam.motion == "rotate":
        turn = cam.angle[1] - cam.angle[0]  # the view turns clockwise for turn > 0, so the picture turns the other way
        return {
            "rotation": "counterclockwise" if turn > 0 else "clockwise",
            "degrees": round(abs(math.degrees(turn)), 2),
        }
    return {}


def _describe_sprite(s: Sprite, num_frames: int, hw: tuple[int, int]) -> dict:
    """A sprite's look and motion, positions as (x, y) fractions of width and height."""
    track, bounces = _sprite_track(s, num_frames, hw)
    return {
        "shape": s.shape,
        "colour": s.colour,
        "radius": round(s.radius, 4),
        "start": [round(float(v), 4) for v in track[0]],
        "end": [round(float(v), 4) for v in track[-1]],
        "direction": _direction(*s.travel),
        "bounces": bounces,
    }


# ------------------------------------------------------------------------------------------------ the video set


class SyntheticVideos(Dataset):
    """Synthetic clips: a camera moving over a built-in photo, plus moving sprites.

    Clip ``k`` shows camera motion ``MOTIONS[k % 4]`` ("pan", "zoom", "rotate" or "static") over photo
    ``photo_names(split)[(k // 4 + k % 4) % n]``, so any ``4·n`` consecutive clips show every (photo, motion) pair
    once. Everything else — the camera path, and ``sprites = (low, high)`` sprites (inclusive; a "static" clip gets at
    least one when ``high`` ≥ 1 so something moves) with distinct colours — is drawn from
    ``numpy.random.default_rng([seed, k])``. The camera never sees past the photo's edge, so frames have no borders.

    ``num_frames`` sets the temporal resolution, not the event: the camera path and the sprites' travel span the
    whole clip whatever its length. Frames are rendered from a pre-shrunk copy of the photo with bicubic affine
    resampling, sprites with 4× supersampled antialiasing. Items carry ``motion``; :meth:`describe` tells the rest.
    """

    def __init__(
        self,
        num_frames: int = 17,
        size: int | tuple[int, int] = 64,
        length: int = 64,
        split: str = "train",
        fps: float = 8.0,
        seed: int = 0,
        sprites: tuple[int, int] = (0, 3),
    ):
        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        if fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        if not 0 <= sprites[0] <= sprites[1] <= len(SPRITE_COLOURS):
            raise ValueError(
                f"sprites must be (low, high) with 0 <= low <= high <= {len(SPRITE_COLOURS)}, got {sprites}"
            )
        self.num_frames, self.size, self.length = int(num_frames), _hw(size), int(length)
        self.split, self.names = split, photo_names(split)
        self.fps, self.seed, self.sprites = float(fps), int(seed), (int(sprites[0]), int(sprites[1]))

    def __len__(self) -> int:
        return self.length

    def plan(self, index: int) -> ClipPlan:
        """Everything that decides clip ``index`` (cheap; no rendering)."""
        motion = MOTIONS[index % len(MOTIONS)]
        photo = self.names[(index // len(MOTIONS) + index % len(MOTIONS)) % len(self.names)]
        stage = _stage_box(photo)
        rng = np.random.default_rng([self.seed, index])
        h, w = self.size
        camera = _plan_camera(rng, motion, stage[2] - stage[0], stage[3] - stage[1], w / h)
        low, high = self.sprites
        count = int(rng.integers(low, high + 1))
        if motion == "static" and high >= 1:
            count = max(count, 1)
        return ClipPlan(index, photo, stage, camera, _plan_sprites(rng, count, self.size))

    def render(self, index: int) -> np.ndarray:
        """Clip ``index`` as uint8 frames ``(T, H, W, 3)``."""
        return render_clip(self.plan(_check_index(index, self.length)), self.num_frames, self.size)

    def describe(self, index: int) -> dict:
        """What happens in clip ``index`` as JSON-able data: photo, camera motion (as seen on screen) and sprites.

        Pan "direction" is where the camera moves (the picture slides the opposite way) and "travel" its movement in
        frame widths/heights; zoom "in" magnifies; "rotation" is the way the picture turns on screen. Sprites are
        listed back to front; positions are (x, y) fractions of the frame width/height, and "direction" is the
        heading at the start (a bounce reverses it along that axis).
        """
        plan = self.plan(_check_index(index, self.length))
        h, w = self.size
        return {
            "index": plan.index,
            "photo": plan.photo,
            "label": PHOTOS.index(plan.photo),
            "num_frames": self.num_frames,
            "size": [h, w],
            "fps": self.fps,
            "motion": plan.camera.motion,
            "camera": _describe_camera(plan.camera, w / h),
            "sprites": [_describe_sprite(s, self.num_frames, self.size) for s in plan.sprites],
        }

    def __getitem__(self, index: int) -> dict:
        index = _check_index(index, self.length)
        plan = self.plan(index)
        frames = render_clip(plan, self.num_frames, self.size)
        return {
            "pixels": frames_to_tensor(frames),
            "label": PHOTOS.index(plan.photo),
            "path": f"builtin:{plan.photo}#clip{index}",
            "index": index,
            "fps": self.fps,
            "motion": plan.camera.motion,
        }


# ------------------------------------------------------------------------------------------------ writing them out


def contact_sheet(frames: np.ndarray, gap: int = 2) -> Image.Image:
    """uint8 frames ``(T, H, W, 3)`` tiled left to right on white, ``gap`` pixels apart."""
    t, h, w, _ = frames.shape
    sheet = np.full((h, t * w + (t - 1) * gap, 3), 255, dtype=np.uint8)
    for i, f in enumerate(frames):
        sheet[:, i * (w + gap) : i * (w + gap) + w] = f
    return Image.fromarray(sheet)


def write_samples(
    out: str | os.PathLike,
    size: int = 256,
    num_clips: int = 4,
    num_frames: int = 17,
    seed: int = 0,
    progress: bool = True,
) -> str:
    """Write the built-in photos and synthetic clips to ``out`` to look at; returns a one-paragraph summary.

    - ``out/photos/{train,heldout}/{name}.png``: every photo, whole, resized and centre-cropped to ``size``²;
    - ``out/clips/clip_{i:03d}_{motion}.mp4`` and ``.png`` (contact sheet): train-split clips 0 … ``num_clips``−1;
    - ``out/clips/clips.json``: :meth:`SyntheticVideos.describe` of each clip.
    """
    from tqdm import tqdm

    from vistok.data.video import write_video

    out = Path(out)
    videos = SyntheticVideos(num_frames=num_frames, size=size, length=num_clips, seed=seed)
    splits = ("train", "heldout")
    total = len(PHOTOS) + num_clips
    with tqdm(total=total, desc="samples", unit="file", file=sys.stderr, disable=not progress) as bar:
        for split in splits:
            photos = SamplePhotos(size=size, split=split, crop="center")
            for i, name in enumerate(photos.names):
                save_png(Image.fromarray(to_uint8(photos[i]["pixels"])), out / "photos" / split / f"{name}.png")
                bar.update()
        described = []
        for i in range(num_clips):
            frames, info = videos.render(i), videos.describe(i)
            stem = out / "clips" / f"clip_{i:03d}_{info['motion']}"
            write_video(stem.with_suffix(".mp4"), frames, fps=videos.fps)
            save_png(contact_sheet(frames), stem.with_suffix(".png"))
            described.append(info)
            bar.update()
    if num_clips:
        (out / "clips" / "clips.json").write_text(json.dumps(described, indent=1))
    return _summary(out, size, num_clips, num_frames, seed, described)


def _summary(out: Path, size: int, num_clips: int, num_frames: int, seed: int, described: list[dict]) -> str:
    """One paragraph saying what :func:`write_samples` wrote where."""
    n_train, n_held = len(photo_names("train")), len(photo_names("heldout"))
    text = (
        f"Wrote {len(PHOTOS)} built-in photos ({n_train} train, {n_held} held-out: {', '.join(HELDOUT_PHOTOS)}) "
        f"as {size}x{size} PNG centre crops to {out / 'photos'}/{{train,heldout}}/"
    )
    if not num_clips:
        return text + " and no synthetic clips."
    motions = ", ".join(sorted({d["motion"] for d in described}))
    clips = f"{num_clips} synthetic clip{'s' if num_clips > 1 else ''}"
    return text + (
        f", and {clips} of {num_frames} frames at {size}x{size}, {described[0]['fps']:g} fps (seed {seed}; motions: "
        f"{motions}) as MP4 with a PNG contact sheet each, plus their descriptions in clips.json, to {out / 'clips'}/."
    )
