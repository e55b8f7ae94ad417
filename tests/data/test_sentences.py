import numpy as np
import pytest
import torch

from vistok.data.sentences import (
    IGNORE,
    NUM_SPECIAL,
    PAIR_TASKS,
    TASKS,
    FolderSentences,
    ListSentences,
    PackedSentences,
    PairSentences,
    SentenceFormat,
    builtin_sentences,
    pair_transform,
    segment_loss_mask,
    tokenize_sentences,
)
from vistok.data.shards import ShardReader, ShardWriter

FMT = SentenceFormat(16, (2, 3))


# ---------------------------------------------------------------------------------------------------------------------
# Format
# ---------------------------------------------------------------------------------------------------------------------


def test_special_ids_sit_above_the_visual_vocabulary_and_are_distinct():
    specials = [FMT.bos, FMT.eos, FMT.boi, FMT.eoi, FMT.pad]
    assert len(set(specials)) == 5 and min(specials) == 16 and max(specials) < FMT.vocab_size == 16 + NUM_SPECIAL


def test_encode_decode_round_trip_and_layout():
    grids = torch.randint(0, 16, (3, 2, 3))
    ids = FMT.encode(grids)
    assert ids.shape == (FMT.sentence_length(3),) == (2 + 3 * 8,)
    assert ids[0] == FMT.bos and ids[-1] == FMT.eos
    assert ids[1] == FMT.boi and ids[8] == FMT.eoi and ids[9] == FMT.boi
    assert torch.equal(ids[2:8], grids[0].reshape(-1))
    assert torch.equal(FMT.decode(ids), grids)
    assert torch.equal(FMT.decode(FMT.prompt(grids)), grids)
    assert FMT.prompt(grids)[-1] == FMT.eoi


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (lambda ids: ids[:-2], "whole images"),
        (lambda ids: torch.cat([ids[:1], torch.tensor([FMT.eoi]), ids[2:]]), "BOI"),
        (lambda ids: torch.cat([ids[:3], torch.tensor([FMT.pad]), ids[4:]]), "special id"),
    ],
)
def test_malformed_sentences_are_refused(bad, match):
    ids = FMT.encode(torch.randint(0, 16, (2, 2, 3)))
    with pytest.raises(ValueError, match=match):
        FMT.decode(bad(ids))


def test_encode_checks_grid_shape_and_id_range():
    with pytest.raises(ValueError, match=r"\(k, 2, 3\)"):
        FMT.encode(torch.zeros(2, 3, 3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[0, 16\)"):
        FMT.encode(torch.full((1, 2, 3), 16))


def test_image_index_and_frame_plan():
    ids = FMT.encode(torch.randint(0, 16, (2, 2, 3)))
    idx = FMT.image_index(ids)
    assert idx[0] == -1 and idx[-1] == -1
    assert (idx[1:9] == 0).all() and (idx[9:17] == 1).all()
    plan = FMT.frame_plan()
    steps = [plan(s) for s in range(2 * FMT.image_length)]
    assert steps[0] == FMT.boi and steps[7] == FMT.eoi and steps[8] == FMT.boi
    assert torch.equal(steps[3], FMT.visual_mask()) and int(FMT.visual_mask().sum()) == 16


# ---------------------------------------------------------------------------------------------------------------------
# Pair tasks and builders
# ---------------------------------------------------------------------------------------------------------------------


def test_pair_transforms_do_what_they_say():
    x = torch.rand(3, 16, 16) * 2 - 1
    a, b = pair_transform("colorize", x)
    assert torch.equal(b, x) and torch.allclose(a[0], a[1]) and torch.allclose(a[1], a[2])
    a, b = pair_transform("flip", x)
    assert torch.equal(a, x) and torch.equal(b, x.flip(-1))
    a, b = pair_transform("rotate", x)
    assert torch.equal(b[:, 0, :], x[:, :, -1])  # 90° counter-clockwise: the top row was the right column
    a, b = pair_transform("inpaint", x)
    assert (a[:, 4:12, 4:12] == 0).all() and torch.equal(a[:, :4], x[:, :4]) and torch.equal(b, x)
    a, b = pair_transform("deblur", x)
    assert torch.equal(b, x) and a.diff(dim=-1).abs().mean() < 0.5 * x.diff(dim=-1).abs().mean()
    assert abs(float(a.mean() - x.mean())) < 0.05  # blurring keeps the mean
    with pytest.raises(ValueError, match="unknown pair task"):
        pair_transform("sharpen", x)


class _Images(torch.utils.data.Dataset):
    def __init__(self, n=6, size=8, labels=None):
        g = torch.Generator().manual_seed(0)
        self.x = torch.rand(n, 3, size, size, generator=g) * 2 - 1
        self.labels = labels or [i % 2 for i in range(n)]

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"pixels": self.x[i], "label": self.labels[i], "index": i}


def test_pair_sentences_use_one_task_and_distinct_images_deterministically():
    images = _Images()
    ds = PairSentences(images, pairs=3, tasks=("flip", "colorize"), length=10, seed=3)
    item = ds[1]
    assert item["task"] == "colorize" and item["label"] == TASKS.index("colorize")
    x = item["images"]
    assert x.shape == (6, 3, 8, 8)
    sources = [next(j for j in range(6) if torch.equal(images.x[j], x[2 * p + 1])) for p in range(3)]
    assert len(set(sources)) == 3
    assert torch.equal(ds[1]["images"], PairSentences(images, 3, ("flip", "colorize"), 10, seed=3)[1]["images"])
    assert not torch.equal(ds[1]["images"], PairSentences(images, 3, ("flip", "colorize"), 10, seed=4)[1]["images"])
    with pytest.raises(ValueError, match="pairs"):
        PairSentences(images, pairs=7)
    with pytest.raises(ValueError, match="tasks"):
        PairSentences(images, tasks=("nope",))


def test_list_sentences_share_a_label():
    images = _Images(labels=["a", "b", "a", "b", "a", "b"])
    ds = ListSentences(images, count=3, length=4, seed=0, labels=images.labels)
    for i in range(4):
        x = ds[i]["images"]
        src = [next(j for j in range(6) if torch.equal(images.x[j], x[k])) for k in range(3)]
        assert len({images.labels[j] for j in src}) == 1


def test_folder_sentences_read_subfolders_in_name_order(tmp_path):
    from PIL import Image

    for s, colours in enumerate([[(255, 0, 0), (0, 255, 0)], [(0, 0, 255), (255, 255, 255), (0, 0, 0)]]):
        d = tmp_path / f"s{s}"
        d.mkdir()
        for k, c in enumerate(colours):
            Image.new("RGB", (20, 12), c).save(d / f"{k:02d}.png")
    (tmp_path / "notes.txt").write_text("ignored")
    ds = FolderSentences(tmp_path, size=8)
    assert len(ds) == 2 and ds[0]["images"].shape == (2, 3, 8, 8) and ds[1]["images"].shape == (3, 3, 8, 8)
    assert torch.allclose(ds[1]["images"][0, :, 0, 0], torch.tensor([-1.0, -1.0, 1.0]))
    with pytest.raises(FileNotFoundError, match="subfolders"):
        FolderSentences(tmp_path / "s0")


def test_builtin_sentences_cover_every_kind():
    ds = builtin_sentences("heldout", size=32, count=2, frames=4, pairs=2)
    tasks = [ds[i]["task"] for i in range(len(ds))]
    assert len(ds) == 6 and tasks[:2] == ["video", "video"] and tasks[-2:] == ["list", "list"]
    assert set(tasks[2:4]) <= set(PAIR_TASKS)
    assert ds[0]["images"].shape == (4, 3, 32, 32) and ds[2]["images"].shape == (4, 3, 32, 32)


# ---------------------------------------------------------------------------------------------------------------------
# Tokenizing and packing
# ---------------------------------------------------------------------------------------------------------------------


class _ToyTokenizer(torch.nn.Module):
    """Ids = quantized mean brightness of 4×4 blocks (deterministic), 8 codes."""

    codebook_size = 8

    def __init__(self):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def encode(self, x, pad=True):
        m = torch.nn.functional.avg_pool2d(x, 4)
        return ((m.mean(1) + 1) / 2 * 7.999).long().clamp(0, 7)


class _Sentences(torch.utils.data.Dataset):
    def __init__(self, counts):
        self.counts = counts

    def __len__(self):
        return len(self.counts)

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        return {"images": torch.rand(self.counts[i], 3, 8, 8, generator=g) * 2 - 1, "task": "video", "label": 0}


def test_tokenize_sentences_stores_whole_sentences_and_resumes(tmp_path):
    tok, sents = _ToyTokenizer(), _Sentences([2, 3, 1, 4])
    fmt, n = tokenize_sentences(sents, tok, tmp_path / "a", limit=2, progress=False)
    assert n == 2 and fmt == SentenceFormat(8, (2, 2))
    _, n = tokenize_sentences(sents, tok, tmp_path / "a", progress=False)
    assert n == 4
    tokenize_sentences(sents, tok, tmp_path / "b", progress=False)
    a, b = ShardReader(tmp_path / "a"), ShardReader(tmp_path / "b")
    for i in range(4):
        assert np.array_equal(a[i], b[i])
        assert torch.equal(fmt.decode(a[i]), tok.encode(sents[i]["images"]))
    assert a.extra["sentence_format"] == fmt.to_dict()


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("batch_images", [1, 3, 64])
def test_tokenize_sentences_batches_across_sentences_and_workers_keep_order(tmp_path, workers, batch_images):
    """Encoding images of several sentences in one call (and loading in worker processes) stores the same items,
    labels and order as encoding each sentence on its own."""
    tok, sents = _ToyTokenizer(), _Sentences([2, 3, 1, 4, 5, 1, 2])
    tokenize_sentences(sents, tok, tmp_path / "ref", batch_images=1, progress=False)
    _, n = tokenize_sentences(
        sents, tok, tmp_path / "x", batch_images=batch_images, num_workers=workers, limit=5, progress=False
    )
    assert n == 5
    _, n = tokenize_sentences(
        sents, tok, tmp_path / "x", batch_images=batch_images, num_workers=workers, progress=False
    )
    assert n == 7
    ref, got = ShardReader(tmp_path / "ref"), ShardReader(tmp_path / "x")
    for i in range(7):
        assert np.array_equal(ref[i], got[i])


def test_tokenize_sentences_refuses_shards_made_from_other_sentences(tmp_path):
    tok, sents = _ToyTokenizer(), _Sentences([2, 3, 1, 4])
    tokenize_sentences(sents, tok, tmp_path, source={"kinds": ["video"], "sentences": 4}, progress=False)
    _, n = tokenize_sentences(sents, tok, tmp_path, source={"kinds": ["video"], "sentences": 4}, progress=False)
    assert n == 4  # same source: resumes (nothing left to do)
    with pytest.raises(ValueError, match="made from other sentences"):
        tokenize_sentences(sents, tok, tmp_path, source={"kinds": ["video"], "sentences": 3}, progress=False)
    with pytest.raises(ValueError, match="more than the 2 asked for"):
        tokenize_sentences(sents, tok, tmp_path, limit=2, progress=False)
    assert len(ShardReader(tmp_path)) == 4  # nothing was written or lost


def _write_sentences(path, lengths, fmt=FMT, seed=0):
    g = torch.Generator().manual_seed(seed)
    with ShardWriter(path, fmt.vocab_size, extra={"sentence_format": fmt.to_dict()}) as w:
        for k in lengths:
            w.append(fmt.encode(torch.randint(0, fmt.visual_vocab, (k, *fmt.image_tokens), generator=g)).numpy(), 0)
    return ShardReader(path)


def test_packing_keeps_sentences_whole_and_restarts_positions(tmp_path):
    reader = _write_sentences(tmp_path, [1, 2, 3, 1, 5, 2, 1])  # 10, 18, 26, 10, 42, 18, 10 ids
    packed = PackedSentences(tmp_path, seq_len=30, seed=1)
    assert packed.skipped_long == 1  # the 42-id sentence
    placed = sorted(i for w in packed.windows for i in w)
    assert placed == [0, 1, 2, 3, 5, 6]
    for k in range(len(packed)):
        item = packed[k]
        assert sum(len(reader[i]) for i in packed.windows[k]) <= 30
        at = 0
        for d, i in enumerate(packed.windows[k]):
            s = torch.from_numpy(reader[i].astype(np.int64))
            n = len(s)
            assert torch.equal(item["ids"][at : at + n], s)
            assert (item["doc_ids"][at : at + n] == d).all()
            assert torch.equal(item["positions"][at : at + n], torch.arange(n))
            assert torch.equal(item["targets"][at : at + n - 1], s[1:])  # loss_on="all": every next id
            assert item["targets"][at + n - 1] == IGNORE  # never predict across sentences
            at += n
        assert (item["ids"][at:] == FMT.pad).all() and (item["targets"][at:] == IGNORE).all()
        assert (~item["valid"][at:]).all() and item["valid"][:at].all()
    stats = packed.stats()
    assert stats["sentences"] == 6 and 0 < stats["fill"] <= 1


def test_packing_is_deterministic_by_seed(tmp_path):
    _write_sentences(tmp_path, [1, 2, 1, 1, 2, 1, 1, 1])
    assert PackedSentences(tmp_path, 30, seed=0).windows == PackedSentences(tmp_path, 30, seed=0).windows


def test_segment_loss_masks():
    ids = FMT.encode(torch.randint(0, 16, (4, 2, 3)))
    last = segment_loss_mask(ids, FMT, "last")
    assert last.sum() == FMT.image_length and last[-2] and not last[-1]  # BOI..EOI of image 4, not EOS
    outs = segment_loss_mask(ids, FMT, "outputs", TASKS.index("flip"))
    img = FMT.image_index(ids)
    assert torch.equal(outs, (img == 1) | (img == 3))
    assert torch.equal(segment_loss_mask(ids, FMT, "outputs", TASKS.index("video")), segment_loss_mask(ids, FMT))
    with pytest.raises(ValueError, match="loss_on"):
        segment_loss_mask(ids, FMT, "first")


def test_packed_last_image_policy(tmp_path):
    reader = _write_sentences(tmp_path, [3])
    item = PackedSentences(tmp_path, seq_len=40, loss_on="last")[0]
    n = len(reader[0])
    keep = item["targets"] != IGNORE
    # predictions made at positions p take the loss iff id p+1 is in the last image (its BOI … EOI)
    assert keep.sum() == FMT.image_length
    assert torch.equal(torch.nonzero(keep)[:, 0], torch.arange(n - 2 - FMT.image_length, n - 2))


def test_packing_rejects_non_sentence_shards_and_impossible_windows(tmp_path):
    with ShardWriter(tmp_path / "plain", 16) as w:
        w.append(np.zeros(4, dtype=np.int64))
    with pytest.raises(ValueError, match="not a sentence shard folder"):
        PackedSentences(tmp_path / "plain", 16)
    _write_sentences(tmp_path / "s", [3])
    with pytest.raises(ValueError, match="no sentence fits"):
        PackedSentences(tmp_path / "s", 10)
