"""Built-in captioned scenes: coloured shapes on a 3×3 grid, with captions and question–answer pairs, made offline.

Data for the text + image systems (Transfusion's captioned images, Chat-UniVi's image and video understanding;
PAPERS.md §3–4) that needs no download and whose every word can be checked against the picture:

- :class:`Scenes` — images of 1–4 shapes (circle, square, triangle in the colours of
  :data:`vistok.data.samples.SPRITE_COLOURS`), each in its own cell of a 3×3 grid (small jitter inside the cell), on
  a dark gradient background, drawn with 4× supersampled antialiasing. Items:
  ``{"pixels" (3, H, W) in [-1, 1], "caption", "objects", "qa", "index"}``.
- :class:`SceneVideos` — clips of the same kind of scene where one or two shapes move to a neighbouring cell one
  after the other ("move" clips), or shapes appear one after the other ("appear" clips). Items add ``"events"``,
  ``"kind"`` and ``"fps"``; ``pixels`` is (3, T, H, W).
- :func:`write_scenes` — PNGs, MP4s, contact sheets and JSONL files of captions / QA, to look at.

**Words.** Cells are named "top left", "top", "top right", "left", "center", "right", "bottom left", "bottom",
"bottom right". Relations come from the grid, never from pixel distances: A is *left of* B iff A's column is smaller
(*right of*: larger; *above*: A's row is smaller; *below*: larger), so every relation in a caption or an answer is
visible at a glance (centres in different columns are at least 0.6 cells apart). Captions name every object by count,
colour, shape and position, grouping equal (colour, shape) objects: "two red circles on the left and a blue square at
the bottom right"; one of three paraphrase templates (:data:`CAPTION_TEMPLATES`) is chosen per item, and
:meth:`Scenes.describe` lists all three. Answers are short: a digit, a colour, a shape, "yes"/"no", a cell name, an
object ("red circle") or "nothing".

**Determinism and splits.** Item ``i`` of split ``s`` is a pure function of ``numpy.random.default_rng([seed,
stream, i])`` with its own stream per split and per dataset kind (:data:`STREAMS`), so the train and held-out
splits are disjoint random streams (never the same draw) and images and clips of the same index are unrelated.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch.utils.data import Dataset

from vistok.data.samples import SPRITE_COLOURS, SPRITE_SHAPES, _check_index, _hw, contact_sheet
from vistok.data.transforms import frames_to_tensor, to_tensor
from vistok.eval.pictures import save_png

__all__ = [
    "CAPTION_TEMPLATES",
    "CELL_NAMES",
    "DIRECTIONS",
    "GRID",
    "SPLITS",
    "STREAMS",
    "SceneObject",
    "SceneVideos",
    "Scenes",
    "collate_scenes",
    "write_scenes",
]

GRID = 3
"""The scene grid is GRID × GRID cells; at most one object per cell."""
COLOURS: tuple[str, ...] = tuple(SPRITE_COLOURS)
SHAPES: tuple[str, ...] = SPRITE_SHAPES
CELL_NAMES: dict[tuple[int, int], str] = {
    (0, 0): "top left", (1, 0): "top", (2, 0): "top right",
    (0, 1): "left", (1, 1): "center", (2, 1): "right",
    (0, 2): "bottom left", (1, 2): "bottom", (2, 2): "bottom right",
}  # fmt: skip
"""(column, row) → the cell's name (the short answer to "where is …?")."""
_AT_CELL = {
    cell: ("in the center" if name == "center" else f"on the {name}" if name in ("left", "right") else f"at the {name}")
    for cell, name in CELL_NAMES.items()
}
_IN_COLUMN = ("on the left", "in the middle column", "on the right")
_IN_ROW = ("at the top", "in the middle row", "at the bottom")
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
DIRECTIONS: dict[str, tuple[int, int]] = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
"""Moves in :class:`SceneVideos`: direction word → (column, row) step."""
RELATIONS = ("left of", "right of", "above", "below")
CAPTION_TEMPLATES = ("{groups}", "there {be} {groups}", "{count} {shapes_word}: {groups_reversed}")
"""Scene caption paraphrases: the groups in reading order; the same after "there is/are"; the object count, then the
groups in reverse reading order."""
SPLITS = ("train", "heldout")
STREAMS = {("image", "train"): 0, ("image", "heldout"): 1, ("video", "train"): 2, ("video", "heldout"): 3}
"""The random stream of each (dataset kind, split): item i draws from ``default_rng([seed, stream, i])``."""
SUPERSAMPLE = 4
_DUPLICATE_P = 0.35  # chance that an object copies the colour and shape of an earlier one ("two red circles")

# ------------------------------------------------------------------------------------------------ plans


@dataclass(frozen=True)
class SceneObject:
    """One shape: its look, its cell (column, row), its offset from the cell centre and its radius (both in cells).

    In a clip, ``end`` is the cell it ends in (its start ``cell`` when it does not move), ``move`` the (first, last)
    frame of its motion, and ``appear`` the first frame it is visible in (0: from the start).
    """

    shape: str
    colour: str
    cell: tuple[int, int]
    offset: tuple[float, float]
    radius: float
    end: tuple[int, int] | None = None
    move: tuple[int, int] | None = None
    appear: int = 0

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"

    def centre(self, cell: tuple[int, int] | None = None) -> tuple[float, float]:
        """Centre (x, y) in fractions of the width and height, in ``cell`` (default: its start cell)."""
        c, r = self.cell if cell is None else cell
        return (c + 0.5 + self.offset[0]) / GRID, (r + 0.5 + self.offset[1]) / GRID

    def to_json(self) -> dict[str, Any]:
        """JSON-able: look, start cell and its name, centre (x, y fractions), radius (fraction of the shorter side),
        and in clips the end cell, move frames or appear frame when it has them."""
        out = {
            "shape": self.shape,
            "colour": self.colour,
            "cell": list(self.cell),
            "position": CELL_NAMES[self.cell],
            "center": [round(v, 4) for v in self.centre()],
            "radius": round(self.radius / GRID, 4),
        }
        if self.end is not None and self.end != self.cell:
            out |= {"end_cell": list(self.end), "end_position": CELL_NAMES[self.end], "move_frames": list(self.move)}
        if self.appear:
            out["appear_frame"] = self.appear
        return out


def _reading_order(cell: tuple[int, int]) -> tuple[int, int]:
    return cell[1], cell[0]


def _place(rng: np.random.Generator, shape: str, colour: str, cell: tuple[int, int]) -> SceneObject:
    """An object in ``cell`` with a random radius (0.26–0.36 cells) and a jitter that keeps it inside the cell."""
    radius = float(rng.uniform(0.26, 0.36))
    room = 0.5 - radius - 0.06
    offset = (float(rng.uniform(-room, room)), float(rng.uniform(-room, room)))
    return SceneObject(shape, colour, cell, offset, radius)


def _combo(rng: np.random.Generator, exclude: set[tuple[str, str]] = frozenset()) -> tuple[str, str]:
    """A random (colour, shape) not in ``exclude``."""
    choices = [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in exclude]
    return choices[int(rng.integers(len(choices)))]


def _cells(rng: np.random.Generator, n: int) -> list[tuple[int, int]]:
    order = rng.permutation(GRID * GRID)[:n]
    return [(int(k) % GRID, int(k) // GRID) for k in order]


def _background(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Top and bottom colours of a dark vertical gradient (slightly tinted grey)."""
    grey = rng.uniform(25, 80, size=2)
    tint = rng.uniform(-10, 10, size=(2, 3))
    return grey[0] + tint[0], grey[1] + tint[1]


def plan_scene(rng: np.random.Generator, objects: tuple[int, int]) -> list[SceneObject]:
    """``objects`` = (low, high) objects (inclusive) in distinct cells; a third of them repeat an earlier look."""
    n = int(rng.integers(objects[0], objects[1] + 1))
    out: list[SceneObject] = []
    for cell in _cells(rng, n):
        if out and rng.random() < _DUPLICATE_P:
            prev = out[int(rng.integers(len(out)))]
            colour, shape = prev.colour, prev.shape
        else:
            colour, shape = _combo(rng)
        out.append(_place(rng, shape, colour, cell))
    return sorted(out, key=lambda o: _reading_order(o.cell))


# ------------------------------------------------------------------------------------------------ rendering


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, x: float, y: float, r: float, fill: tuple[int, ...]) -> None:
    """The shapes of :mod:`vistok.data.samples`: a circle, a square of about the circle's area, an upright
    equilateral triangle inscribed in the circle."""
    if shape == "circle":
        draw.ellipse((x - r, y - r, x + r, y + r), fill=fill)
    elif shape == "square":
        a = 0.8 * r
        draw.rectangle((x - a, y - a, x + a, y + a), fill=fill)
    else:
        angles = (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)
        draw.polygon([(x + r * math.cos(t), y + r * math.sin(t)) for t in angles], fill=fill)


def render_scene(
    objects: Sequence[tuple[SceneObject, tuple[float, float]]], background: tuple[np.ndarray, np.ndarray], size
) -> np.ndarray:
    """uint8 (H, W, 3): each (object, centre as x, y fractions) drawn at 4× and box-filtered down (antialiasing)."""
    h, w = _hw(size)
    s = SUPERSAMPLE
    ramp = np.linspace(0.0, 1.0, h * s)[:, None, None]
    bg = background[0] * (1 - ramp) + background[1] * ramp
    canvas = np.broadcast_to(bg, (h * s, w * s, 3)).round().clip(0, 255).astype(np.uint8)
    img = Image.fromarray(canvas)
    draw = ImageDraw.Draw(img)
    cell = min(h, w) * s / GRID
    for obj, (fx, fy) in objects:
        _draw_shape(draw, obj.shape, fx * w * s, fy * h * s, obj.radius * cell, SPRITE_COLOURS[obj.colour])
    return np.asarray(img.reduce(s))


# ------------------------------------------------------------------------------------------------ words


def _a(word: str) -> str:
    return f"{'an' if word[0] in 'aeiou' else 'a'} {word}"


def _counted(colour: str, shape: str, count: int) -> str:
    return _a(f"{colour} {shape}") if count == 1 else f"{NUMBER_WORDS[count]} {colour} {shape}s"


def _where(cells: Sequence[tuple[int, int]]) -> str:
    """Where a group of cells is: one cell's phrase, a shared column or row, or the cells listed in reading order."""
    if len(cells) == 1:
        return _AT_CELL[cells[0]]
    cols, rows = {c for c, _ in cells}, {r for _, r in cells}
    if len(cols) == 1:
        return _IN_COLUMN[cols.pop()]
    if len(rows) == 1:
        return _IN_ROW[rows.pop()]
    names = [CELL_NAMES[c] for c in sorted(cells, key=_reading_order)]
    return "at the " + ", the ".join(names[:-1]) + " and the " + names[-1]


def _join(parts: Sequence[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _groups(objects: Sequence[SceneObject]) -> list[tuple[str, str, list[tuple[int, int]]]]:
    """(colour, shape, cells) per look, in reading order of each look's first cell."""
    by_look: dict[tuple[str, str], list[tuple[int, int]]] = {}
    for o in sorted(objects, key=lambda o: _reading_order(o.cell)):
        by_look.setdefault((o.colour, o.shape), []).append(o.cell)
    return [(c, s, cells) for (c, s), cells in by_look.items()]


def _group_phrases(objects: Sequence[SceneObject]) -> list[str]:
    return [f"{_counted(c, s, len(cells))} {_where(cells)}" for c, s, cells in _groups(objects)]


def scene_captions(objects: Sequence[SceneObject]) -> list[str]:
    """The caption of a scene in each of the :data:`CAPTION_TEMPLATES`."""
    phrases = _group_phrases(objects)
    first = _groups(objects)[0]
    n = len(objects)
    fields = {
        "groups": _join(phrases),
        "be": "is" if len(first[2]) == 1 else "are",
        "count": NUMBER_WORDS[n],
        "shapes_word": "shape" if n == 1 else "shapes",
        "groups_reversed": _join(phrases[::-1]),
    }
    return [t.format(**fields) for t in CAPTION_TEMPLATES]


def _references(objects: Sequence[SceneObject]) -> list[tuple[SceneObject, str]]:
    """Objects that a short phrase picks out, with the phrase: "square" when it is the only square, else "red
    square" when it is the only red square (objects sharing their look with another have none)."""
    shapes = Counter(o.shape for o in objects)
    looks = Counter((o.colour, o.shape) for o in objects)
    out = []
    for o in objects:
        if shapes[o.shape] == 1:
            out.append((o, o.shape))
        elif looks[o.colour, o.shape] == 1:
            out.append((o, o.name))
    return out


def _related(a: tuple[int, int], b: tuple[int, int], relation: str) -> bool:
    """Whether cell ``a`` is ``relation`` cell ``b`` (grid columns / rows, see the module docstring)."""
    return {"left of": a[0] < b[0], "right of": a[0] > b[0], "above": a[1] < b[1], "below": a[1] > b[1]}[relation]


def _absent_look(rng: np.random.Generator, objects: Sequence[SceneObject]) -> tuple[str, str]:
    """A (colour, shape) not in the scene, preferably a near miss (a present colour or a present shape)."""
    present = {(o.colour, o.shape) for o in objects}
    near = [
        (c, s)
        for c in COLOURS
        for s in SHAPES
        if (c, s) not in present and (c in {o.colour for o in objects} or s in {o.shape for o in objects})
    ]
    return near[int(rng.integers(len(near)))] if near else _combo(rng, present)


def scene_qa(objects: Sequence[SceneObject], rng: np.random.Generator) -> list[tuple[str, str]]:
    """Questions about a still scene with their short answers (counts, colours, shapes, existence, positions,
    relations); which absent looks and "nothing" relations are asked about is drawn from ``rng``."""
    qa = [("how many shapes are there?", str(len(objects)))]
    looks = Counter((o.colour, o.shape) for o in objects)
    qa += [(f"how many {c} {s}s are there?", str(looks[c, s])) for c, s, _ in _groups(objects)]
    missing = _absent_look(rng, objects)
    qa.append((f"how many {missing[0]} {missing[1]}s are there?", "0"))
    shapes, colours = Counter(o.shape for o in objects), Counter(o.colour for o in objects)
    qa += [(f"how many {s}s are there?", str(shapes[s])) for s in SHAPES]
    qa += [(f"what colour is the {o.shape}?", o.colour) for o in objects if shapes[o.shape] == 1]
    qa += [(f"what shape is the {o.colour} object?", o.shape) for o in objects if colours[o.colour] == 1]
    present = list(looks)[int(rng.integers(len(looks)))]
    qa.append((f"is there {_a(' '.join(present))}?", "yes"))
    qa.append((f"is there {_a(' '.join(missing))}?", "no"))
    refs = _references(objects)
    qa += [(f"where is the {ref}?", CELL_NAMES[o.cell]) for o, ref in refs]
    qa += _relation_qa(objects, refs, rng)
    return qa


def _relation_qa(objects, refs, rng: np.random.Generator) -> list[tuple[str, str]]:
    """ "what is left of the square?" where exactly one object is, plus at most one question answered "nothing"."""
    found, nothing = [], []
    for o, ref in refs:
        for rel in RELATIONS:
            hits = [p for p in objects if p is not o and _related(p.cell, o.cell, rel)]
            if len(hits) == 1:
                found.append((f"what is {rel} the {ref}?", hits[0].name))
            elif not hits:
                nothing.append((f"what is {rel} the {ref}?", "nothing"))
    return found + ([nothing[int(rng.integers(len(nothing)))]] if nothing else [])


# ------------------------------------------------------------------------------------------------ the image set


def _check_objects(objects: tuple[int, int], most: int = 4) -> tuple[int, int]:
    low, high = int(objects[0]), int(objects[1])
    if not 1 <= low <= high <= most:
        raise ValueError(f"objects must be (low, high) with 1 <= low <= high <= {most}, got {objects}")
    return low, high


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return split


@dataclass(frozen=True)
class ScenePlan:
    """Everything that decides a scene (or a clip): its objects, background and the choices of its words."""

    index: int
    objects: tuple[SceneObject, ...]
    background: tuple[np.ndarray, np.ndarray] = field(compare=False)
    template: int
    qa: tuple[tuple[str, str], ...]


class Scenes(Dataset):
    """Captioned scenes of 1–4 coloured shapes on a 3×3 grid (see the module docstring).

    ``size`` is an int or (H, W) (any size; 64 by default). ``objects`` = (low, high) objects per scene, inclusive
    (at most 4). Items: ``pixels`` float32 (3, H, W) in [-1, 1], ``caption`` (one of three paraphrases, chosen per
    item), ``objects`` (:meth:`SceneObject.to_json` dicts in reading order), ``qa`` (list of (question, answer)),
    ``index``. Batch them with :func:`collate_scenes`.
    """

    kind = "image"

    def __init__(
        self,
        size: int | tuple[int, int] = 64,
        length: int = 1000,
        split: str = "train",
        seed: int = 0,
        objects: tuple[int, int] = (1, 4),
    ):
        if length < 0:
            raise ValueError(f"length must be >= 0, got {length}")
        self.size, self.length, self.split, self.seed = _hw(size), int(length), _check_split(split), int(seed)
        self.objects = _check_objects(objects)

    def __len__(self) -> int:
        return self.length

    def _rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, STREAMS[self.kind, self.split], index])

    def plan(self, index: int) -> ScenePlan:
        """Everything that decides item ``index`` (no drawing)."""
        index = _check_index(index, self.length)
        rng = self._rng(index)
        objects = plan_scene(rng, self.objects)
        background = _background(rng)
        template = int(rng.integers(len(CAPTION_TEMPLATES)))
        return ScenePlan(index, tuple(objects), background, template, tuple(scene_qa(objects, rng)))

    def render(self, index: int) -> np.ndarray:
        """Item ``index`` as uint8 (H, W, 3)."""
        plan = self.plan(index)
        return render_scene([(o, o.centre()) for o in plan.objects], plan.background, self.size)

    def describe(self, index: int) -> dict[str, Any]:
        """Item ``index`` as JSON-able data: its caption, all caption paraphrases, objects and QA."""
        plan = self.plan(index)
        captions = scene_captions(plan.objects)
        return {
            "index": plan.index,
            "split": self.split,
            "size": list(self.size),
            "caption": captions[plan.template],
            "captions": captions,
            "objects": [o.to_json() for o in plan.objects],
            "qa": [list(p) for p in plan.qa],
        }

    def __getitem__(self, index: int) -> dict[str, Any]:
        plan = self.plan(index)
        pixels = to_tensor(render_scene([(o, o.centre()) for o in plan.objects], plan.background, self.size))
        return {
            "pixels": pixels,
            "caption": scene_captions(plan.objects)[plan.template],
            "objects": [o.to_json() for o in plan.objects],
            "qa": list(plan.qa),
            "index": plan.index,
        }


# ------------------------------------------------------------------------------------------------ the clip set

CLIP_KINDS = ("move", "appear")


def _free_moves(cell: tuple[int, int], taken: set[tuple[int, int]]) -> list[tuple[str, tuple[int, int]]]:
    out = []
    for word, (dc, dr) in DIRECTIONS.items():
        target = (cell[0] + dc, cell[1] + dr)
        if 0 <= target[0] < GRID and 0 <= target[1] < GRID and target not in taken:
            out.append((word, target))
    return out


def _spans(num_frames: int, k: int) -> list[tuple[int, int]]:
    """k consecutive frame spans (first, last) splitting frames 1 … T − 2: the first and last frames are still."""
    bounds = [1 + round(j * (num_frames - 3) / k) for j in range(k + 1)]
    return [(bounds[j], bounds[j + 1]) for j in range(k)]


def _event_looks(rng: np.random.Generator, k: int) -> list[tuple[str, str]]:
    looks: list[tuple[str, str]] = []
    for _ in range(k):
        looks.append(_combo(rng, set(looks)))
    return looks


def _static_objects(rng, cells, exclude: set[tuple[str, str]]) -> list[SceneObject]:
    """Objects that do nothing, in ``cells``, with looks other than the event objects' (they may share theirs)."""
    out: list[SceneObject] = []
    for cell in cells:
        if out and rng.random() < _DUPLICATE_P:
            prev = out[int(rng.integers(len(out)))]
            colour, shape = prev.colour, prev.shape
        else:
            colour, shape = _combo(rng, exclude)
        out.append(_place(rng, shape, colour, cell))
    return out


def plan_moves(rng: np.random.Generator, num_frames: int, objects: tuple[int, int]) -> tuple[list[SceneObject], list]:
    """1–2 shapes (distinct looks) move one cell each, one after the other, into cells no object ever holds."""
    n = int(rng.integers(objects[0], objects[1] + 1))
    cells = _cells(rng, n)
    taken = set(cells)
    movers: list[tuple[int, str, tuple[int, int]]] = []  # (cell index, direction, target)
    wanted = 1 + int(rng.integers(2))
    for i in rng.permutation(n):  # some object always has a free neighbour: 4 cells cannot fill a 3×3 grid's
        moves = _free_moves(cells[int(i)], taken)
        if moves and len(movers) < wanted:
            word, target = moves[int(rng.integers(len(moves)))]
            movers.append((int(i), word, target))
            taken.add(target)
    looks = _event_looks(rng, len(movers))
    spans = _spans(num_frames, len(movers))
    out, events = [], []
    for (i, word, target), (colour, shape), span in zip(movers, looks, spans):
        obj = _place(rng, shape, colour, cells[i])
        out.append(SceneObject(shape, colour, obj.cell, obj.offset, obj.radius, end=target, move=span))
        events.append({"type": "move", "object": f"{colour} {shape}", "direction": word, "frames": list(span),
                       "from": CELL_NAMES[obj.cell], "to": CELL_NAMES[target]})  # fmt: skip
    moved = {i for i, _, _ in movers}
    out += _static_objects(rng, [c for i, c in enumerate(cells) if i not in moved], set(looks))
    return out, events


def plan_appearances(rng: np.random.Generator, num_frames: int, objects: tuple[int, int]) -> tuple[list, list]:
    """1–min(3, n) shapes (distinct looks) appear one after the other; the rest are there from the first frame."""
    n = int(rng.integers(objects[0], objects[1] + 1))
    cells = _cells(rng, n)
    k = 1 + int(rng.integers(min(3, n)))
    looks = _event_looks(rng, k)
    frames = [round((j + 1) * (num_frames - 1) / (k + 1)) for j in range(k)]  # distinct and >= 1 for T >= 5
    out, events = [], []
    for cell, (colour, shape), frame in zip(cells, looks, frames):
        obj = _place(rng, shape, colour, cell)
        out.append(SceneObject(shape, colour, cell, obj.offset, obj.radius, appear=frame))
        events.append({"type": "appear", "object": f"{colour} {shape}", "frame": frame, "at": CELL_NAMES[cell]})
    out += _static_objects(rng, cells[k:], set(looks))
    return out, events


def _position(o: SceneObject, t: int) -> tuple[float, float]:
    """Centre of ``o`` at frame ``t`` (x, y fractions): linear along its move span."""
    if o.move is None:
        return o.centre()
    first, last = o.move
    u = min(max((t - first) / max(last - first, 1), 0.0), 1.0)
    (x0, y0), (x1, y1) = o.centre(), o.centre(o.end)
    return x0 + u * (x1 - x0), y0 + u * (y1 - y0)


def _event_phrase(e: dict) -> str:
    if e["type"] == "move":
        return f"{_a(e['object'])} {_AT_CELL_BY_NAME[e['from']]} moves {e['direction']}"
    return f"{_a(e['object'])} appears {_AT_CELL_BY_NAME[e['at']]}"


_AT_CELL_BY_NAME = {CELL_NAMES[c]: p for c, p in _AT_CELL.items()}


def clip_captions(kind: str, objects: Sequence[SceneObject], events: Sequence[dict]) -> list[str]:
    """Two paraphrases: events first ("…, then …") and the still objects after; or the still objects first."""
    steps = [_event_phrase(e) for e in events]
    still = [o for o in objects if o.move is None and o.appear == 0]
    story = ", then ".join(steps)
    if not still:
        return [story, ("first " + story) if len(steps) > 1 else story]
    verb = "stays still" if kind == "move" else "is there from the start"
    plural = "stay still" if kind == "move" else "are there from the start"
    rest = _join(_group_phrases(still))
    rest += f" {verb if len(still) == 1 else plural}"
    return [f"{story}; {rest}", f"{rest}; " + ("first " if len(steps) > 1 else "") + story]


def clip_qa(kind: str, objects: Sequence[SceneObject], events: Sequence[dict], rng) -> list[tuple[str, str]]:
    """Questions about a clip: its events in order, directions, where things start and end, counts."""
    first = events[0]
    verb = f"moved {first['direction']}" if first["type"] == "move" else "appeared"
    qa = [("what happened first?", f"the {first['object']} {verb}")]
    if len(events) > 1:
        last = events[-1]
        verb = f"moved {last['direction']}" if last["type"] == "move" else "appeared"
        qa.append(("what happened last?", f"the {last['object']} {verb}"))
    refs = dict((id(o), ref) for o, ref in _references(objects))
    if kind == "move":
        qa.append(("how many shapes move?", str(len(events))))
        for o in objects:
            if id(o) in refs and o.move is not None:
                qa.append((f"which way does the {refs[id(o)]} move?", _direction_word(o)))
                qa.append((f"where does the {refs[id(o)]} end up?", CELL_NAMES[o.end]))
        still = [o for o in objects if o.move is None and id(o) in refs]
        if still:
            qa.append((f"does the {refs[id(still[int(rng.integers(len(still)))])]} move?", "no"))
        mover = next(o for o in objects if o.move is not None)
        qa.append((f"does the {refs[id(mover)]} move?", "yes"))
    else:
        qa.append(("how many shapes are there at the start?", str(sum(o.appear == 0 for o in objects))))
        qa.append(("how many shapes are there at the end?", str(len(objects))))
        qa.append(("what appeared first?", events[0]["object"]))
        if len(events) > 1:
            qa.append(("what appeared last?", events[-1]["object"]))
        appeared = [o for o in objects if o.appear and id(o) in refs]
        qa += [(f"where does the {refs[id(o)]} appear?", CELL_NAMES[o.cell]) for o in appeared]
    return qa


def _direction_word(o: SceneObject) -> str:
    step = (o.end[0] - o.cell[0], o.end[1] - o.cell[1])
    return next(w for w, d in DIRECTIONS.items() if d == step)


@dataclass(frozen=True)
class ClipPlan:
    """Everything that decides a scene clip."""

    index: int
    kind: str
    objects: tuple[SceneObject, ...]
    events: tuple[dict, ...]
    background: tuple[np.ndarray, np.ndarray] = field(compare=False)
    template: int
    qa: tuple[tuple[str, str], ...]


class SceneVideos(Dataset):
    """Clips of scenes where shapes move or appear, with captions and QA (see the module docstring).

    Clip ``k`` is a "move" clip for even k, an "appear" clip for odd k. Move clips: 1–2 shapes with looks of their
    own each move one cell (left / right / up / down) into a cell no other object ever holds, one after the other
    (frames 1 … T − 2 split between them: the first and last frames are still); the other shapes stay still.
    Appear clips: 1–3 shapes appear at evenly spaced frames, one after the other (never in frame 0); the others are
    there from the start. ``objects`` = (low, high) shapes per clip (at most 4). Items: ``pixels`` (3, T, H, W),
    ``caption``, ``objects``, ``events`` (in order), ``qa``, ``kind``, ``fps``, ``index``.
    """

    kind = "video"

    def __init__(
        self,
        num_frames: int = 12,
        size: int | tuple[int, int] = 64,
        length: int = 256,
        split: str = "train",
        fps: float = 8.0,
        seed: int = 0,
        objects: tuple[int, int] = (1, 4),
    ):
        if num_frames < 5:
            raise ValueError(f"num_frames must be >= 5 (events need frames of their own), got {num_frames}")
        if fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        if length < 0:
            raise ValueError(f"length must be >= 0, got {length}")
        self.num_frames, self.size, self.length = int(num_frames), _hw(size), int(length)
        self.split, self.fps, self.seed = _check_split(split), float(fps), int(seed)
        self.objects = _check_objects(objects)

    def __len__(self) -> int:
        return self.length

    def plan(self, index: int) -> ClipPlan:
        """Everything that decides clip ``index`` (no drawing)."""
        index = _check_index(index, self.length)
        rng = np.random.default_rng([self.seed, STREAMS[self.kind, self.split], index])
        kind = CLIP_KINDS[index % 2]
        make = plan_moves if kind == "move" else plan_appearances
        objects, events = make(rng, self.num_frames, self.objects)
        objects = sorted(objects, key=lambda o: _reading_order(o.cell))
        background = _background(rng)
        template = int(rng.integers(2))
        qa = clip_qa(kind, objects, events, rng)
        return ClipPlan(index, kind, tuple(objects), tuple(events), background, template, tuple(qa))

    def _render(self, plan: ClipPlan) -> np.ndarray:
        frames = []
        for t in range(self.num_frames):
            visible = [(o, _position(o, t)) for o in plan.objects if t >= o.appear]
            frames.append(render_scene(visible, plan.background, self.size))
        return np.stack(frames)

    def render(self, index: int) -> np.ndarray:
        """Clip ``index`` as uint8 frames (T, H, W, 3)."""
        return self._render(self.plan(index))

    def describe(self, index: int) -> dict[str, Any]:
        """Clip ``index`` as JSON-able data: kind, caption(s), objects, events (frames are 0-based) and QA."""
        plan = self.plan(index)
        captions = clip_captions(plan.kind, plan.objects, plan.events)
        return {
            "index": plan.index,
            "split": self.split,
            "kind": plan.kind,
            "num_frames": self.num_frames,
            "size": list(self.size),
            "fps": self.fps,
            "caption": captions[plan.template],
            "captions": captions,
            "objects": [o.to_json() for o in plan.objects],
            "events": [dict(e) for e in plan.events],
            "qa": [list(p) for p in plan.qa],
        }

    def __getitem__(self, index: int) -> dict[str, Any]:
        plan = self.plan(index)
        return {
            "pixels": frames_to_tensor(self._render(plan)),
            "caption": clip_captions(plan.kind, plan.objects, plan.events)[plan.template],
            "objects": [o.to_json() for o in plan.objects],
            "events": [dict(e) for e in plan.events],
            "qa": list(plan.qa),
            "kind": plan.kind,
            "fps": self.fps,
            "index": plan.index,
        }


def collate_scenes(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Batch scene items: ``pixels`` stacked, ``index`` as a LongTensor, every other field as a list."""
    if not items:
        raise ValueError("collate_scenes needs at least one item")
    out: dict[str, Any] = {k: [item[k] for item in items] for k in items[0]}
    out["pixels"] = torch.stack(out["pixels"])
    out["index"] = torch.tensor(out["index"], dtype=torch.long)
    return out


# ------------------------------------------------------------------------------------------------ writing them out


def _grid_sheet(images: Sequence[np.ndarray], columns: int = 8, gap: int = 2) -> Image.Image:
    """uint8 images (H, W, 3) tiled in rows of ``columns`` on white."""
    h, w, _ = images[0].shape
    rows = math.ceil(len(images) / columns)
    cols = min(columns, len(images))
    sheet = np.full((rows * (h + gap) - gap, cols * (w + gap) - gap, 3), 255, np.uint8)
    for k, img in enumerate(images):
        r, c = divmod(k, columns)
        sheet[r * (h + gap) : r * (h + gap) + h, c * (w + gap) : c * (w + gap) + w] = img
    return Image.fromarray(sheet)


def _write_jsonl(rows: Sequence[dict], path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_scenes(
    out: str | os.PathLike,
    n: int = 16,
    size: int = 128,
    num_clips: int = 4,
    num_frames: int = 12,
    split: str = "train",
    seed: int = 0,
    progress: bool = True,
) -> str:
    """Write scenes and clips to ``out`` to look at; returns a one-paragraph summary.

    - ``out/scenes/scene_{i:04d}.png`` for i < ``n``, ``out/scenes/sheet.png`` (all of them tiled) and
      ``out/scenes/scenes.jsonl`` (one :meth:`Scenes.describe` per line: caption, paraphrases, objects, QA);
    - ``out/clips/clip_{i:03d}_{kind}.mp4`` and ``.png`` (contact sheet) for i < ``num_clips`` and
      ``out/clips/clips.jsonl`` (:meth:`SceneVideos.describe`).
    """
    from tqdm import tqdm

    from vistok.data.video import write_video

    out = Path(out)
    scenes = Scenes(size=size, length=n, split=split, seed=seed)
    clips = SceneVideos(num_frames=num_frames, size=size, length=num_clips, split=split, seed=seed)
    images = []
    with tqdm(total=n + num_clips, desc="scenes", unit="file", file=sys.stderr, disable=not progress) as bar:
        for i in range(n):
            images.append(scenes.render(i))
            save_png(Image.fromarray(images[-1]), out / "scenes" / f"scene_{i:04d}.png")
            bar.update()
        described = []
        for i in range(num_clips):
            info, frames = clips.describe(i), clips.render(i)
            stem = out / "clips" / f"clip_{i:03d}_{info['kind']}"
            write_video(stem.with_suffix(".mp4"), frames, fps=clips.fps)
            save_png(contact_sheet(frames), stem.with_suffix(".png"))
            described.append(info)
            bar.update()
    if n:
        save_png(_grid_sheet(images), out / "scenes" / "sheet.png")
        _write_jsonl([scenes.describe(i) for i in range(n)], out / "scenes" / "scenes.jsonl")
    if num_clips:
        _write_jsonl(described, out / "clips" / "clips.jsonl")
    return (
        f"Wrote {n} {split} scene(s) at {size}x{size} (seed {seed}) as PNG to {out / 'scenes'}/ with a tiled sheet.png "
        f"and their captions, objects and QA in scenes.jsonl, and {num_clips} clip(s) of {num_frames} frames at "
        f"{clips.fps:g} fps as MP4 with a PNG contact sheet each, described in {out / 'clips' / 'clips.jsonl'}."
    )
