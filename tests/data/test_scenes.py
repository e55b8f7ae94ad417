"""Built-in captioned scenes and scene clips: determinism and splits, pictures that match their objects, captions and
answers checked against independent re-derivations, clip events seen in the frames, batching and write_scenes."""

from __future__ import annotations

import itertools
import json
import re
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from vistok.data.samples import SPRITE_COLOURS, SPRITE_SHAPES
from vistok.data.scenes import (
    CELL_NAMES,
    DIRECTIONS,
    GRID,
    SceneObject,
    Scenes,
    SceneVideos,
    collate_scenes,
    scene_captions,
    write_scenes,
)

N = 60  # scenes checked per property


def _obj(colour: str, shape: str, cell: tuple[int, int], **kw) -> SceneObject:
    return SceneObject(shape, colour, cell, (0.0, 0.0), 0.3, **kw)


def _pixel(img: np.ndarray, centre) -> np.ndarray:
    h, w, _ = img.shape
    return img[int(centre[1] * h), int(centre[0] * w)].astype(int)


def _is_colour(rgb: np.ndarray, colour: str, tol: int = 12) -> bool:
    return bool(np.abs(rgb - np.array(SPRITE_COLOURS[colour])).max() <= tol)


# ------------------------------------------------------------------------------------------------ items, determinism


def test_items_have_the_documented_fields_and_ranges():
    ds = Scenes(size=(48, 64), length=5)
    item = ds[3]
    assert set(item) == {"pixels", "caption", "objects", "qa", "index"} and item["index"] == 3
    assert item["pixels"].shape == (3, 48, 64) and item["pixels"].dtype == torch.float32
    assert float(item["pixels"].min()) >= -1 and float(item["pixels"].max()) <= 1
    assert isinstance(item["caption"], str) and item["caption"] in ds.describe(3)["captions"]
    assert all(isinstance(q, str) and isinstance(a, str) and a for q, a in item["qa"])
    assert 1 <= len(item["objects"]) <= 4 and ds[-1]["index"] == 4
    json.dumps(ds.describe(3))  # JSON-able
    with pytest.raises(IndexError):
        ds[5]


def test_deterministic_by_seed_and_index_and_splits_differ():
    a, b = Scenes(length=8), Scenes(length=8)
    for i in range(8):
        assert torch.equal(a[i]["pixels"], b[i]["pixels"]) and a[i]["caption"] == b[i]["caption"]
    other_seed, heldout = Scenes(length=8, seed=1), Scenes(length=8, split="heldout")
    assert sum(torch.equal(a[i]["pixels"], other_seed[i]["pixels"]) for i in range(8)) == 0
    assert sum(torch.equal(a[i]["pixels"], heldout[i]["pixels"]) for i in range(8)) == 0
    assert Scenes(length=20).describe(7) == Scenes(length=8).describe(7)  # the length does not change items


def test_objects_are_drawn_where_they_say_with_antialiased_edges():
    ds = Scenes(size=64, length=N)
    counts = Counter()
    for i in range(N):
        img, objects = ds.render(i), ds[i]["objects"]
        cells = [tuple(o["cell"]) for o in objects]
        assert len(set(cells)) == len(cells)  # one object per cell
        for o in objects:
            counts[o["shape"], o["colour"]] += 1
            x, y = o["center"]
            assert (int(x * GRID), int(y * GRID)) == tuple(o["cell"]) and o["position"] == CELL_NAMES[tuple(o["cell"])]
            assert _is_colour(_pixel(img, o["center"]), o["colour"]), (i, o)
        for cell in set(CELL_NAMES) - set(cells):  # empty cells hold only the dark background
            c, r = cell
            assert img[r * 64 // 3 : (r + 1) * 64 // 3, c * 64 // 3 : (c + 1) * 64 // 3].max() < 100
        for o in objects:  # antialiasing: edge pixels blend the fill (max channel >= 230) with the background (< 100)
            if o["shape"] == "square":  # its edges may fall on pixel boundaries
                continue
            c, r = o["cell"]
            top = img[r * 64 // 3 : (r + 1) * 64 // 3, c * 64 // 3 : (c + 1) * 64 // 3].max(-1)
            assert ((top > 110) & (top < 210)).sum() >= 4, (i, o)
    assert {s for s, _ in counts} == set(SPRITE_SHAPES) and len({c for _, c in counts}) >= 7


# ------------------------------------------------------------------------------------------------ captions


def test_caption_examples():
    objs = [_obj("red", "circle", (0, 0)), _obj("red", "circle", (0, 2)), _obj("blue", "square", (2, 2))]
    assert scene_captions(objs) == [
        "two red circles on the left and a blue square at the bottom right",
        "there are two red circles on the left and a blue square at the bottom right",
        "three shapes: a blue square at the bottom right and two red circles on the left",
    ]
    objs = [_obj("orange", "triangle", (1, 1)), _obj("green", "square", (0, 1)), _obj("green", "square", (2, 1))]
    assert scene_captions(objs)[0] == "two green squares in the middle row and an orange triangle in the center"
    objs = [_obj("white", "circle", (0, 0)), _obj("white", "circle", (1, 1)), _obj("white", "circle", (2, 2))]
    assert scene_captions(objs)[1] == "there are three white circles at the top left, the center and the bottom right"
    assert scene_captions([_obj("yellow", "square", (1, 0))])[2] == "one shape: a yellow square at the top"


def test_captions_name_every_object_with_its_count():
    ds = Scenes(length=N)
    templates = Counter()
    for i in range(N):
        d = ds.describe(i)
        looks = Counter((o["colour"], o["shape"]) for o in d["objects"])
        for caption in d["captions"]:
            for (colour, shape), n in looks.items():
                word = {1: "an?", 2: "two", 3: "three", 4: "four"}[n]
                assert re.search(rf"\b{word} {colour} {shape}{'s' if n > 1 else ''}\b", caption), (caption, looks)
            assert len(re.findall(r"\b(circle|square|triangle)s?\b", caption)) == len(looks)
        assert d["captions"][2].startswith(["one", "two", "three", "four"][len(d["objects"]) - 1] + " shape")
        templates[d["captions"].index(d["caption"])] += 1
    assert set(templates) == {0, 1, 2}  # every paraphrase is used


# ------------------------------------------------------------------------------------------------ QA


def _answer(question: str, objects: list[dict]) -> str | None:
    """An independent re-derivation of the answer from the objects, or None for a question it does not know."""
    looks = [(o["colour"], o["shape"]) for o in objects]

    def find(ref: str) -> dict:
        hits = [o for o in objects if ref in (o["shape"], f"{o['colour']} {o['shape']}")]
        if ref in SPRITE_SHAPES and sum(o["shape"] == ref for o in objects) > 1:
            raise AssertionError(f"ambiguous reference {ref!r}")
        assert len(hits) == 1, (ref, objects)
        return hits[0]

    if m := re.fullmatch(r"how many shapes are there\?", question):
        return str(len(objects))
    if m := re.fullmatch(r"how many (\w+) (\w+)s are there\?", question):
        return str(looks.count((m[1], m[2])))
    if m := re.fullmatch(r"how many (\w+)s are there\?", question):
        return str(sum(s == m[1] for _, s in looks))
    if m := re.fullmatch(r"what colour is the (\w+)\?", question):
        return find(m[1])["colour"]
    if m := re.fullmatch(r"what shape is the (\w+) object\?", question):
        (o,) = [o for o in objects if o["colour"] == m[1]]
        return o["shape"]
    if m := re.fullmatch(r"is there an? (\w+) (\w+)\?", question):
        return "yes" if (m[1], m[2]) in looks else "no"
    if m := re.fullmatch(r"where is the (.+)\?", question):
        return find(m[1])["position"]
    if m := re.fullmatch(r"what is (left of|right of|above|below) the (.+)\?", question):
        ref = find(m[2])
        axis, sign = {"left of": (0, -1), "right of": (0, 1), "above": (1, -1), "below": (1, 1)}[m[1]]
        hits = [o for o in objects if o is not ref and sign * (o["cell"][axis] - ref["cell"][axis]) > 0]
        assert len(hits) <= 1
        return f"{hits[0]['colour']} {hits[0]['shape']}" if hits else "nothing"
    return None


def test_answers_match_an_independent_derivation():
    ds = Scenes(length=N, objects=(1, 4))
    kinds = Counter()
    for i in range(N):
        d = ds.describe(i)
        assert len({q for q, _ in d["qa"]}) == len(d["qa"])  # no question twice
        for question, answer in d["qa"]:
            expected = _answer(question, d["objects"])
            assert expected is not None, f"unknown question {question!r}"
            assert answer == expected, (i, question, answer, d["objects"])
            kinds[question.split(" the ")[0].split(" are ")[0].split(" an")[0].split(" a ")[0]] += 1
        assert sorted(a for q, a in d["qa"] if q.startswith("is there")) == ["no", "yes"]
    assert {"what is left of", "what is above", "what colour is", "how many shapes", "is there"} <= set(kinds)
    answers = Counter(a for i in range(N) for _, a in ds.describe(i)["qa"])
    assert answers["nothing"] > 0 and answers["0"] > 0 and answers["yes"] == answers["no"] == N


# ------------------------------------------------------------------------------------------------ clips


def test_clip_items_and_determinism():
    ds = SceneVideos(num_frames=8, size=32, length=4, fps=4)
    item = ds[1]
    assert set(item) == {"pixels", "caption", "objects", "events", "qa", "kind", "fps", "index"}
    assert item["pixels"].shape == (3, 8, 32, 32) and item["fps"] == 4.0
    assert [ds[k]["kind"] for k in range(4)] == ["move", "appear", "move", "appear"]
    assert torch.equal(ds[2]["pixels"], SceneVideos(num_frames=8, size=32, length=4)[2]["pixels"])
    assert not torch.equal(ds[2]["pixels"], SceneVideos(num_frames=8, size=32, length=4, split="heldout")[2]["pixels"])
    json.dumps(ds.describe(1))
    with pytest.raises(ValueError, match="num_frames must be >= 5"):
        SceneVideos(num_frames=4)


def test_move_clips_show_their_moves_in_order():
    ds = SceneVideos(num_frames=10, size=64, length=2 * 20)
    for i in range(0, len(ds), 2):
        d, frames = ds.describe(i), ds.render(i)
        plan = ds.plan(i)
        movers = [o for o in plan.objects if o.move is not None]
        assert 1 <= len(movers) <= 2 and len(d["events"]) == len(movers)
        spans = [tuple(e["frames"]) for e in d["events"]]
        assert spans == sorted(spans) and spans[0][0] == 1 and spans[-1][1] == 8  # first and last frames still
        assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans))  # one after the other
        ends = {o.end for o in movers}
        assert not ends & {o.cell for o in plan.objects}  # they move into cells nobody holds
        for o in plan.objects:
            assert _is_colour(_pixel(frames[0], o.centre()), o.colour)
            assert _is_colour(_pixel(frames[-1], o.centre(o.end if o.end else o.cell)), o.colour)
        qa = dict(d["qa"])
        for e in d["events"]:
            (o,) = [o for o in movers if o.name == e["object"]]
            assert DIRECTIONS[e["direction"]] == (o.end[0] - o.cell[0], o.end[1] - o.cell[1])
            assert f"moves {e['direction']}" in d["caption"]
        first = d["events"][0]
        assert qa["what happened first?"] == f"the {first['object']} moved {first['direction']}"
        assert qa["how many shapes move?"] == str(len(movers))
        for q, a in d["qa"]:
            if m := re.fullmatch(r"which way does the (.+) move\?", q):
                (o,) = [o for o in movers if m[1] in (o.shape, o.name)]
                assert DIRECTIONS[a] == (o.end[0] - o.cell[0], o.end[1] - o.cell[1])


def test_appear_clips_show_shapes_appearing_in_order():
    ds = SceneVideos(num_frames=12, size=64, length=2 * 20)
    for i in range(1, len(ds), 2):
        d, frames, plan = ds.describe(i), ds.render(i), ds.plan(i)
        appear = [e["frame"] for e in d["events"]]
        assert appear == sorted(set(appear)) and appear[0] >= 1 and appear[-1] <= 10
        for o in plan.objects:
            seen = [_is_colour(_pixel(f, o.centre()), o.colour) for f in frames]
            assert seen == [t >= o.appear for t in range(12)], (i, o)  # absent before, present from its frame on
        qa = dict(d["qa"])
        assert qa["what happened first?"] == f"the {d['events'][0]['object']} appeared"
        assert qa["how many shapes are there at the end?"] == str(len(plan.objects))
        assert qa["how many shapes are there at the start?"] == str(sum(o.appear == 0 for o in plan.objects))
        assert d["caption"].count("appears") == len(d["events"])


# ------------------------------------------------------------------------------------------------ batching, writing


def test_collate_with_a_dataloader():
    loader = DataLoader(Scenes(size=32, length=6), batch_size=4, collate_fn=collate_scenes)
    batch = next(iter(loader))
    assert batch["pixels"].shape == (4, 3, 32, 32) and batch["index"].tolist() == [0, 1, 2, 3]
    assert len(batch["caption"]) == len(batch["qa"]) == len(batch["objects"]) == 4
    clips = collate_scenes([SceneVideos(num_frames=5, size=16, length=2)[k] for k in range(2)])
    assert clips["pixels"].shape == (2, 3, 5, 16, 16) and clips["kind"] == ["move", "appear"]


def test_write_scenes(tmp_path):
    summary = write_scenes(tmp_path, n=3, size=32, num_clips=2, num_frames=6, progress=False)
    assert "3 train scene(s)" in summary and str(tmp_path / "scenes") in summary
    rows = [json.loads(line) for line in (tmp_path / "scenes" / "scenes.jsonl").read_text().splitlines()]
    assert [r["index"] for r in rows] == [0, 1, 2] and rows[1] == Scenes(size=32, length=3).describe(1)
    png = np.asarray(Image.open(tmp_path / "scenes" / "scene_0001.png"))
    assert np.array_equal(png, Scenes(size=32, length=3).render(1))
    assert (tmp_path / "scenes" / "sheet.png").is_file()
    clips = [json.loads(line) for line in (tmp_path / "clips" / "clips.jsonl").read_text().splitlines()]
    assert [c["kind"] for c in clips] == ["move", "appear"]
    for k, c in enumerate(clips):
        assert (tmp_path / "clips" / f"clip_{k:03d}_{c['kind']}.mp4").stat().st_size > 0
        assert Image.open(tmp_path / "clips" / f"clip_{k:03d}_{c['kind']}.png").size == (6 * 32 + 5 * 2, 32)


def test_bad_arguments():
    with pytest.raises(ValueError, match="split must be one of"):
        Scenes(split="test")
    with pytest.raises(ValueError, match="objects must be"):
        Scenes(objects=(0, 2))
    with pytest.raises(ValueError, match="objects must be"):
        SceneVideos(objects=(2, 5))
    with pytest.raises(ValueError, match="size must be positive"):
        Scenes(size=0)
