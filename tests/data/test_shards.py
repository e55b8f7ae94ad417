"""Token shards: round trips, validation, crash-safe resume, corruption detection, rank/worker splitting."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from vistok.data.errors import BadFileError
from vistok.data.shards import (
    NO_LABEL,
    ShardChecksumError,
    ShardDataset,
    ShardMapDataset,
    ShardReader,
    ShardWriter,
    config_hash,
    write_shards,
)

CONFIG = {"name": "toy", "codebook": 2**16, "levels": [8, 8, 5]}


def video_item(i: int, vocab: int = 1000) -> np.ndarray:
    """A deterministic (T, 4, 5) token grid whose T varies with i."""
    return np.random.default_rng(i).integers(0, vocab, size=(1 + i % 3, 4, 5))


def fixed_items(n: int, vocab: int, seed: int = 0) -> list[np.ndarray]:
    return list(np.random.default_rng(seed).integers(0, vocab, size=(n, 4, 4)))


def write_fixed(folder: Path, n: int = 20, vocab: int = 65536, **kwargs) -> list[np.ndarray]:
    items = fixed_items(n, vocab)
    kwargs = {"grid_shape": (4, 4), "max_tokens_per_shard": 64, "commit_every": 3, "fsync": False, **kwargs}
    with ShardWriter(folder, vocab, "toy", CONFIG, **kwargs) as writer:
        for i, tokens in enumerate(items):
            writer.append(tokens, label=i * 10)
    return items


def shard_files(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir() if p.name.startswith("shard_")}


# ------------------------------------------------------------------------------------------------ round trips


def test_round_trip_fixed_grid_across_shards(tmp_path):
    items = fixed_items(20, 65536)
    items[0][0, 0], items[1][3, 3] = 0, 65535  # both ends of the uint16 range
    with ShardWriter(tmp_path, 65536, "toy", CONFIG, grid_shape=(4, 4), max_tokens_per_shard=64, commit_every=3) as w:
        for i, tokens in enumerate(items):
            assert w.append(tokens, label=i * 10) == i
        assert w.num_items == 20

    reader = ShardReader(tmp_path)
    assert len(reader) == 20 and reader.num_tokens == 320 and reader.vocab_size == 65536
    for i, tokens in enumerate(items):
        assert reader[i].dtype == np.uint16 and reader.grid_shape(i) == (4, 4)
        np.testing.assert_array_equal(reader[i], tokens)
        assert reader.label(i) == i * 10
    np.testing.assert_array_equal(reader[-1], items[-1])
    np.testing.assert_array_equal(reader.labels, np.arange(20) * 10)

    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["vistok_shards"] == 1 and meta["dtype"] == "uint16" and meta["grid_shape"] == [4, 4]
    assert meta["tokenizer"] == "toy" and meta["tokenizer_config_sha256"] == config_hash(CONFIG)
    # 64 tokens per shard = 4 items of 16: five shards, all but the last finalized
    assert [s["num_items"] for s in meta["shards"]] == [4] * 5
    assert [s["finalized"] for s in meta["shards"]] == [True] * 4 + [False]
    assert (tmp_path / "shard_00000.bin").stat().st_size == 64 * 2
    np.testing.assert_array_equal(np.fromfile(tmp_path / "shard_00002.idx", "<i8"), [0, 16, 32, 48, 64])
    np.testing.assert_array_equal(np.fromfile(tmp_path / "shard_00001.label", "<i8"), [40, 50, 60, 70])
    assert not (tmp_path / "shard_00000.shape").exists()  # one shared grid: no per-item shapes

    sample = reader.sample(3)
    assert sample["tokens"].dtype == torch.int64 and sample["label"] == 30 and sample["index"] == 3
    torch.testing.assert_close(sample["tokens"], torch.from_numpy(items[3].astype(np.int64)))
    with pytest.raises(IndexError, match="item 20 out of range"):
        reader[20]


@pytest.mark.parametrize(("vocab", "dtype", "itemsize"), [(65536, "uint16", 2), (65537, "uint32", 4)])
def test_dtype_boundary(tmp_path, vocab, dtype, itemsize):
    items = [np.array([[0, vocab - 1], [vocab // 2, 1]]), np.array([[vocab - 1, vocab - 2], [7, 0]])]
    with ShardWriter(tmp_path, vocab, grid_shape=(2, 2)) as writer:
        writer.extend(items)
        with pytest.raises(ValueError, match=rf"token id {vocab} at index \(1, 0\) is outside \[0, {vocab}\)"):
            writer.append(np.array([[1, 2], [vocab, 3]]))
    reader = ShardReader(tmp_path)
    assert reader.meta["dtype"] == dtype and reader[0].dtype == np.dtype(dtype)
    assert (tmp_path / "shard_00000.bin").stat().st_size == 8 * itemsize
    assert [r.tolist() for r in reader] == [it.tolist() for it in items]


def test_varying_grid_shapes_and_input_types(tmp_path):
    items = [video_item(i) for i in range(7)]
    inputs = [torch.from_numpy(items[0]).int(), items[1].astype(np.uint16), items[2].tolist(), *items[3:]]
    with ShardWriter(tmp_path, 1000, commit_every=2) as writer:
        writer.extend(inputs)
    reader = ShardReader(tmp_path)
    assert reader.meta["grid_shape"] is None and reader.meta["grid_rank"] == 3
    assert [reader.grid_shape(i) for i in range(7)] == [it.shape for it in items]
    for i, tokens in enumerate(items):
        np.testing.assert_array_equal(reader[i], tokens)
        assert reader.label(i) is None
    np.testing.assert_array_equal(np.fromfile(tmp_path / "shard_00000.shape", "<i4")[:6], [1, 4, 5, 2, 4, 5])
    assert reader.labels is None and reader.sample(2)["label"] == NO_LABEL


def test_invalid_items_are_rejected_and_lose_nothing(tmp_path):
    with ShardWriter(tmp_path, 100, commit_every=1) as writer:
        writer.append(np.zeros((2, 3), np.int64), label=5)
        with pytest.raises(ValueError, match=r"item 1: token id 700 at index \(1, 2\) is outside \[0, 100\)"):
            writer.append(np.array([[1, 2, 3], [4, 5, 700]]), label=1)
        with pytest.raises(ValueError, match=r"token id -3 at index \(0,\) .*\(1 more ids out of range\)"):
            writer.append(np.array([-3, 100]), label=1)
        with pytest.raises(TypeError, match="must be integers, got dtype float32"):
            writer.append(np.zeros((2, 3), np.float32), label=1)
        with pytest.raises(ValueError, match=r"stores 2-D token grids, got shape \(6,\)"):
            writer.append(np.zeros(6, np.int64), label=1)
        with pytest.raises(ValueError, match="stores a label for every item; got no label"):
            writer.append(np.zeros((2, 3), np.int64))
        with pytest.raises(TypeError, match="a label must be an integer"):
            writer.append(np.zeros((2, 3), np.int64), label=1.5)
        writer.append(np.ones((1, 2), np.int64), label=torch.tensor(7))
        assert writer.num_items == 2
    reader = ShardReader(tmp_path)
    assert len(reader) == 2 and reader[1].tolist() == [[1, 1]] and reader.label(1) == 7

    writer = ShardWriter(tmp_path / "fixed", 100, grid_shape=(2, 2))
    with pytest.raises(ValueError, match=r"expected grid shape \(2, 2\), got \(4,\)"):
        writer.append(np.zeros(4, np.int64))
    writer.close()


def test_uncommitted_tail_is_invisible_and_one_writer_at_a_time(tmp_path):
    items = fixed_items(6, 50)
    writer = ShardWriter(tmp_path, 50, grid_shape=(4, 4), commit_every=4)
    writer.extend(items)
    assert writer.num_items == 6 and writer.num_committed == 4
    reader = ShardReader(tmp_path)  # verify=True: the committed prefix checks out while the writer is open
    assert len(reader) == 4
    with pytest.raises(RuntimeError, match="another ShardWriter"):
        ShardWriter(tmp_path, 50, grid_shape=(4, 4))
    writer.flush()
    assert len(ShardReader(tmp_path)) == 6 and len(reader) == 4  # an open reader keeps its snapshot
    writer.close()
    with pytest.raises(RuntimeError, match="closed"):
        writer.append(items[0])
    with ShardWriter(tmp_path, 50, grid_shape=(4, 4)) as resumed:  # the lock was released
        assert resumed.num_items == 6


def test_write_shards_skips_what_is_already_there(tmp_path):
    pairs = [(video_item(i), i % 4) for i in range(12)]
    assert write_shards(tmp_path, iter(pairs[:5]), 1000, "toy", CONFIG, commit_every=2) == 5
    drawn = []
    source = (drawn.append(i) or pair for i, pair in enumerate(pairs))
    assert write_shards(tmp_path, source, 1000, "toy", CONFIG, commit_every=2) == 12
    assert write_shards(tmp_path, iter(pairs), 1000, "toy", CONFIG) == 12  # nothing left to add
    reader = ShardReader(tmp_path)
    assert [(r.tolist(), reader.label(i)) for i, r in enumerate(reader)] == [(t.tolist(), y) for t, y in pairs]
    assert drawn == list(range(12))


def test_config_hash_is_canonical_json_sha256():
    expected = hashlib.sha256(b'{"a":1,"b":[2,3],"c":"\xc3\xa9"}').hexdigest()
    assert config_hash({"c": "é", "b": (2, 3), "a": 1}) == expected
    assert config_hash(None) == config_hash({}) == hashlib.sha256(b"{}").hexdigest()
    with pytest.raises(ValueError, match="JSON-serializable"):
        config_hash({"weights": object()})


# ------------------------------------------------------------------------------------------------ crashes and resume

CRASH_SCRIPT = r"""
import os, signal, sys
import numpy as np
from vistok.data import shards

folder, items_file, mode, kind, kill_at = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
data = np.load(items_file)
items = [data[f"item_{i}"] for i in range(len(data.files))]
count = [0]

def die():
    os.kill(os.getpid(), signal.SIGKILL)

if mode == "mid_write":  # die halfway through the kill_at-th write to a .{kind} file
    real_append = shards._append_bytes
    def append_bytes(f, data, hasher):
        if f.name.endswith(kind):
            count[0] += 1
            if count[0] == kill_at:
                f.write(data[: len(data) // 2])
                f.flush()
                die()
        real_append(f, data, hasher)
    shards._append_bytes = append_bytes
elif mode == "before_meta":  # die with data and offsets synced, just before the kill_at-th meta.json replace
    real_replace = os.replace
    def replace(src, dst):
        count[0] += 1
        if count[0] == kill_at:
            die()
        real_replace(src, dst)
    os.replace = replace

with shards.ShardWriter(folder, 1000, "toy", {"v": 1}, max_tokens_per_shard=200, commit_every=4) as writer:
    for i in range(writer.num_items, len(items)):
        writer.append(items[i], label=i % 5)
        if mode == "between_commits" and writer.num_items == kill_at:
            die()
sys.exit("the writer was never killed")
"""


def run_until_killed(folder: Path, items: list[np.ndarray], mode: str, kind: str, kill_at: int) -> None:
    items_file = folder.parent / "items.npz"
    np.savez(items_file, **{f"item_{i}": tokens for i, tokens in enumerate(items)})
    args = [sys.executable, "-c", CRASH_SCRIPT, str(folder), str(items_file), mode, kind, str(kill_at)]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr


@pytest.mark.parametrize(
    ("mode", "kind", "kill_at"),
    [
        ("between_commits", "", 10),  # 10 appended, 9 committed
        ("mid_write", "bin", 4),  # half of the 4th commit's tokens on disk
        ("mid_write", "idx", 6),  # half of an offsets write on disk
        ("before_meta", "", 5),  # a whole commit on disk but not in meta.json
    ],
)
def test_resume_after_sigkill(tmp_path, mode, kind, kill_at):
    folder = tmp_path / "shards"
    items = [video_item(i) for i in range(40)]
    run_until_killed(folder, items, mode, kind, kill_at)

    crashed = ShardReader(folder)  # what the last commit described, and only that, checksums included
    committed = len(crashed)
    assert 0 < committed < len(items)
    if mode == "between_commits":  # shard 0 was finalized at items 0-4 (180 of 200 tokens), items 5-8 committed
        assert committed == 9
    for i in range(committed):
        np.testing.assert_array_equal(crashed[i], items[i])

    # a crash inside a commit leaves bytes meta.json does not describe (a longer file, or a new shard's files);
    # between commits the uncommitted items were still in memory
    described = {}
    for entry in crashed.meta["shards"]:
        n, t = entry["num_items"], entry["num_tokens"]
        sizes = {"bin": 2 * t, "idx": 8 * (n + 1), "shape": 12 * n, "label": 8 * n}
        described.update({f"{entry['name']}.{kind}": size for kind, size in sizes.items()})
    leftovers = [n for n in shard_files(folder) if n not in described or (folder / n).stat().st_size > described[n]]
    assert bool(leftovers) == (mode != "between_commits")

    with ShardWriter(folder, 1000, "toy", {"v": 1}, max_tokens_per_shard=200, commit_every=4) as writer:
        assert writer.num_items == committed  # the next item to produce
        for i in range(writer.num_items, len(items)):
            writer.append(items[i], label=i % 5)

    reader = ShardReader(folder)
    assert len(reader) == len(items)
    for i, tokens in enumerate(items):
        np.testing.assert_array_equal(reader[i], tokens)
        assert reader.label(i) == i % 5
    names = {entry["name"] for entry in reader.meta["shards"]}
    assert len(names) > 1
    assert shard_files(folder) == {f"{n}.{k}" for n in names for k in ("bin", "idx", "shape", "label")}


# ------------------------------------------------------------------------------------------------ damaged folders


@pytest.mark.parametrize("shard", ["shard_00001", "shard_00004"])  # a finalized shard and the open last one
def test_truncated_shard_is_refused(tmp_path, shard):
    write_fixed(tmp_path)
    path = tmp_path / f"{shard}.bin"
    os.truncate(path, path.stat().st_size - 2)
    message = rf"{shard}\.bin: truncated shard file: expected 128 bytes, found 126"
    with pytest.raises(BadFileError, match=message):
        ShardReader(tmp_path, verify=False)
    with pytest.raises(BadFileError, match=message):
        ShardWriter(tmp_path, 65536, "toy", CONFIG, grid_shape=(4, 4))


def test_grown_finalized_shard_is_refused(tmp_path):
    write_fixed(tmp_path)
    with open(tmp_path / "shard_00000.idx", "ab") as f:
        f.write(b"\0" * 8)
    with pytest.raises(BadFileError, match=r"shard_00000\.idx: wrong size shard file: expected 40 bytes, found 48"):
        ShardReader(tmp_path)


@pytest.mark.parametrize("kind", ["bin", "label", "idx"])
def test_flipped_byte_fails_the_checksum(tmp_path, kind):
    items = write_fixed(tmp_path)
    path = tmp_path / f"shard_00002.{kind}"
    raw = bytearray(path.read_bytes())
    raw[9] ^= 0x01
    path.write_bytes(bytes(raw))
    with pytest.raises(ShardChecksumError, match=rf"shard_00002\.{kind}: checksum mismatch"):
        ShardReader(tmp_path, verify=True)
    reader = ShardReader(tmp_path, verify=False)  # opening without verification shows the damage
    if kind == "bin":
        assert not np.array_equal(reader[8], items[8])
    elif kind == "label":
        assert reader.label(9) == 90 + 256
    else:
        with pytest.raises(BadFileError, match=r"shard_00002\.idx: (inconsistent offsets|item \d has)"):
            reader[8]


def test_flipped_byte_in_open_shard_blocks_resume(tmp_path):
    write_fixed(tmp_path)
    path = tmp_path / "shard_00004.bin"
    raw = bytearray(path.read_bytes())
    raw[0] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(ShardChecksumError, match=r"shard_00004\.bin: checksum mismatch"):
        ShardWriter(tmp_path, 65536, "toy", CONFIG, grid_shape=(4, 4))


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"tokenizer_config": {**CONFIG, "levels": [8, 8, 6]}}, "tokenizer_config_sha256"),
        ({"vocab_size": 65537}, "vocab_size"),
        ({"tokenizer": "other"}, "tokenizer"),
        ({"grid_shape": (2, 8)}, "grid_shape"),
    ],
)
def test_resume_with_a_different_tokenizer_is_refused(tmp_path, change, key):
    write_fixed(tmp_path)
    kwargs = {"vocab_size": 65536, "tokenizer": "toy", "tokenizer_config": CONFIG, "grid_shape": (4, 4), **change}
    with pytest.raises(ValueError, match=rf"cannot resume: meta.json has {key}="):
        ShardWriter(tmp_path, **kwargs)
    assert len(ShardReader(tmp_path)) == 20  # nothing was touched


def test_not_a_shard_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a vistok shard folder"):
        ShardReader(tmp_path)
    (tmp_path / "shard_00000.bin").write_bytes(b"\0\0")
    with pytest.raises(FileExistsError, match="has shard files"):
        ShardWriter(tmp_path, 10)


# ------------------------------------------------------------------------------------------------ datasets


def collect(dataset: ShardDataset, num_workers: int = 2) -> list[dict]:
    loader = DataLoader(dataset, batch_size=None, num_workers=num_workers)
    return list(loader)


def test_dataset_covers_every_item_once_across_ranks_and_workers(tmp_path):
    items = write_fixed(tmp_path, n=24)
    ranks = [ShardDataset(tmp_path, seed=3, rank=r, world_size=2) for r in range(2)]
    assert [len(ds) for ds in ranks] == [12, 12]

    def epoch(e: int) -> list[list[int]]:
        order = []
        for ds in ranks:
            ds.set_epoch(e)
            samples = collect(ds)
            for s in samples:
                np.testing.assert_array_equal(s["tokens"].numpy(), items[s["index"]])
                assert s["tokens"].dtype == torch.int64 and s["label"] == s["index"] * 10
            order.append([s["index"] for s in samples])
        return order

    first, again, second = epoch(0), epoch(0), epoch(1)
    for order in (first, second):
        assert [len(o) for o in order] == [12, 12]
        assert sorted(order[0] + order[1]) == list(range(24))
    assert first == again  # deterministic given (seed, epoch)
    assert first != second and sorted(first[0]) != sorted(second[0])  # reshuffled: other items on each rank
    assert first[0] != sorted(first[0])  # shuffled within the epoch

    unshuffled = ShardDataset(tmp_path, shuffle=False, rank=1, world_size=2, verify=False)
    assert sorted(s["index"] for s in collect(unshuffled)) == list(range(1, 24, 2))


@pytest.mark.parametrize(("drop_last", "per_rank"), [(False, 4), (True, 3)])
def test_dataset_uneven_ranks_stay_equal(tmp_path, drop_last, per_rank):
    write_fixed(tmp_path, n=11)
    ranks = [ShardDataset(tmp_path, seed=1, rank=r, world_size=3, drop_last=drop_last) for r in range(3)]
    seen = [[s["index"] for s in ds] for ds in ranks]  # in-process: no worker split
    assert [len(s) for s in seen] == [len(ds) for ds in ranks] == [per_rank] * 3
    flat = sorted(itertools.chain(*seen))
    if drop_last:
        assert len(set(flat)) == 9  # 11 - 11 % 3 distinct items
    else:
        assert set(flat) == set(range(11)) and len(flat) == 12  # every item, one repeated to even out


def test_dataset_defaults_to_a_single_process(tmp_path):
    write_fixed(tmp_path, n=5)
    ds = ShardDataset(tmp_path, shuffle=False)
    assert (ds.rank, ds.world_size) == (0, 1)
    assert [s["index"] for s in ds] == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="rank must be in"):
        ShardDataset(tmp_path, rank=2, world_size=2)


def test_map_dataset_batches_with_the_default_collate(tmp_path):
    items = write_fixed(tmp_path, n=6)
    batch = next(iter(DataLoader(ShardMapDataset(tmp_path), batch_size=4)))
    assert batch["tokens"].shape == (4, 4, 4) and batch["tokens"].dtype == torch.int64
    torch.testing.assert_close(batch["tokens"], torch.from_numpy(np.stack(items[:4]).astype(np.int64)))
    assert batch["label"].tolist() == [0, 10, 20, 30] and batch["index"].tolist() == [0, 1, 2, 3]
    assert re.fullmatch(r"[0-9a-f]{64}", ShardReader(tmp_path).tokenizer_config_hash)
