"""Visual sentences (Bai et al., 2023, "Sequential Modeling Enables Scalable Learning for Large Vision Models", §3).

A *visual sentence* is a list of images — consecutive video frames, input→output pairs of an in-context task, or
several views of one source — each tokenized by any vistok tokenizer and joined into one 1-D sequence of ids::

    BOS  BOI t¹₁ … t¹ₙ EOI  BOI t²₁ … t²ₙ EOI  …  BOI tᵏ₁ … tᵏₙ EOI  EOS

where tʲ are the n = h·w visual ids of image j in raster order. The special ids live *above* the visual vocabulary
(:class:`SentenceFormat`): with V visual codes, BOS = V, EOS = V + 1, BOI = V + 2, EOI = V + 3, PAD = V + 4, and
``NUM_SPECIAL`` = 8 ids are reserved (so the model's vocabulary is V + 8). LVM's paper uses BOS/EOS only; the image
boundary ids make a sentence self-describing (it parses back into images without knowing where it came from) and
give generation a fixed rhythm (BOI forced, n visual ids, EOI forced; see :meth:`SentenceFormat.frame_plan`).

**Builders** (map-style datasets whose items are ``{"images": (k, 3, H, W) in [-1, 1], "task", "label", "index"}``,
deterministic in ``(seed, index)``):

- :class:`VideoSentences`: the frames of a clip (the built-in :class:`~vistok.data.samples.SyntheticVideos`, or a
  user :class:`~vistok.data.video.VideoFolder`);
- :class:`PairSentences`: in-context input→output pairs ``A₁ B₁ A₂ B₂ … Aₖ Bₖ`` derived from any image dataset by
  a known transform (``PAIR_TASKS``: grayscale→colour, masked→inpainted, flipped, blurred→sharp, rotated), one task
  per sentence, every pair from a different image;
- :class:`ListSentences`: several random views of the same source (same photo / same class);
- :class:`FolderSentences`: user sentences on disk, one subfolder per sentence, images in sorted name order.

**Storage.** :func:`tokenize_sentences` encodes each sentence once and writes the whole id sequence as one item of a
token-shard folder (:mod:`vistok.data.shards`), with the task as its label and the format in ``meta.json``'s
``extra``; it resumes after a crash where the last commit ended.

**Packing** (:class:`PackedSentences`): sentences are packed whole into windows of ``seq_len`` ids (first-fit
decreasing over a seeded order; never split across windows; a sentence longer than the window is skipped and
counted), padded with PAD. Each window carries ``doc_ids`` (attention never crosses sentences: pass
``MaskSpec(doc_ids=..., valid=...)``), ``positions`` that restart at 0 in every sentence, and ``targets`` (the next
id, or ``IGNORE`` = −100 where no loss is taken: padding, the last id of each sentence, and the positions the
per-segment loss policy excludes — e.g. ``loss_on="last"`` trains only on the last image, as an in-context prompt
is scored). The public LVM code packs without a document mask and lets sentences straddle windows; vistok does not.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from vistok.data.images import IMAGE_EXTS, read_image
from vistok.data.transforms import apply_box, crop_box, to_tensor

__all__ = [
    "IGNORE",
    "LOSS_POLICIES",
    "NUM_SPECIAL",
    "PAIR_TASKS",
    "TASKS",
    "FolderSentences",
    "ListSentences",
    "PackedSentences",
    "PairSentences",
    "SentenceFormat",
    "VideoSentences",
    "builtin_sentences",
    "pair_transform",
    "segment_loss_mask",
    "tokenize_sentences",
]

NUM_SPECIAL = 8  # ids reserved above the visual vocabulary: BOS, EOS, BOI, EOI, PAD and three spare
IGNORE = -100  # target id that takes no loss (torch's cross_entropy ignore_index)
PAIR_TASKS = ("colorize", "inpaint", "flip", "deblur", "rotate")
#: every sentence kind; a shard item's label is its index here
TASKS = ("video", "list", "folder", *PAIR_TASKS)
LOSS_POLICIES = ("all", "last", "outputs")


# ---------------------------------------------------------------------------------------------------------------------
# The sequence format
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SentenceFormat:
    """How images become one id sequence: ``visual_vocab`` codes, ``image_tokens`` = (h, w) ids per image."""

    visual_vocab: int
    image_tokens: tuple[int, int]

    def __post_init__(self) -> None:
        if self.visual_vocab < 1:
            raise ValueError(f"visual_vocab must be >= 1, got {self.visual_vocab}")
        grid = tuple(int(s) for s in self.image_tokens)
        if len(grid) != 2 or min(grid) < 1:
            raise ValueError(f"image_tokens must be (h, w) with h, w >= 1, got {self.image_tokens!r}")
        object.__setattr__(self, "image_tokens", grid)

    # special ids
    @property
    def bos(self) -> int:
        return self.visual_vocab

    @property
    def eos(self) -> int:
        return self.visual_vocab + 1

    @property
    def boi(self) -> int:
        return self.visual_vocab + 2

    @property
    def eoi(self) -> int:
        return self.visual_vocab + 3

    @property
    def pad(self) -> int:
        return self.visual_vocab + 4

    @property
    def vocab_size(self) -> int:
        """Visual codes + the reserved special ids: the size of the model's vocabulary."""
        return self.visual_vocab + NUM_SPECIAL

    @property
    def tokens_per_image(self) -> int:
        return self.image_tokens[0] * self.image_tokens[1]

    @property
    def image_length(self) -> int:
        """Ids one image takes: BOI + h·w + EOI."""
        return self.tokens_per_image + 2

    def sentence_length(self, num_images: int) -> int:
        """Ids of a whole sentence of ``num_images`` images (BOS … EOS)."""
        return 2 + num_images * self.image_length

    def to_dict(self) -> dict[str, Any]:
        return {"visual_vocab": self.visual_vocab, "image_tokens": list(self.image_tokens)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SentenceFormat:
        return cls(int(data["visual_vocab"]), tuple(data["image_tokens"]))

    # encoding / decoding

    def _check_grids(self, grids: Tensor | Sequence[Tensor]) -> Tensor:
        g = torch.stack([torch.as_tensor(x) for x in grids]) if not isinstance(grids, Tensor) else grids
        if g.ndim != 3 or tuple(g.shape[1:]) != self.image_tokens:
            raise ValueError(
                f"expected image id grids (k, {self.image_tokens[0]}, {self.image_tokens[1]}), got "
                f"shape {tuple(g.shape)}"
            )
        g = g.long()
        if g.numel() and (int(g.min()) < 0 or int(g.max()) >= self.visual_vocab):
            raise ValueError(f"visual ids must lie in [0, {self.visual_vocab}), got [{int(g.min())}, {int(g.max())}]")
        return g

    def images_to_ids(self, grids: Tensor | Sequence[Tensor]) -> Tensor:
        """(k, h, w) visual id grids → the k·(n + 2) ids ``BOI img EOI …`` (no BOS/EOS)."""
        g = self._check_grids(grids)
        k = g.shape[0]
        body = g.reshape(k, -1)
        boi = torch.full((k, 1), self.boi, dtype=torch.long)
        eoi = torch.full((k, 1), self.eoi, dtype=torch.long)
        return torch.cat([boi, body, eoi], dim=1).reshape(-1)

    def encode(self, grids: Tensor | Sequence[Tensor]) -> Tensor:
        """(k, h, w) visual id grids → the whole sentence ``BOS BOI img₁ EOI … EOS`` (1-D int64)."""
        body = self.images_to_ids(grids)
        return torch.cat([torch.tensor([self.bos]), body, torch.tensor([self.eos])])

    def prompt(self, grids: Tensor | Sequence[Tensor]) -> Tensor:
        """A generation prompt: ``BOS BOI img₁ EOI … BOI imgₖ EOI`` (no EOS), so the next id to produce is a BOI."""
        return torch.cat([torch.tensor([self.bos]), self.images_to_ids(grids)])

    def decode(self, ids: Tensor | np.ndarray | Sequence[int]) -> Tensor:
        """A sentence (with or without BOS/EOS) → its (k, h, w) image grids; raises on a malformed sequence."""
        x = ids.long() if isinstance(ids, Tensor) else torch.as_tensor(np.array(ids, dtype=np.int64))
        x = x.reshape(-1)
        if x.numel() and x[0] == self.bos:
            x = x[1:]
        if x.numel() and x[-1] == self.eos:
            x = x[:-1]
        n = self.image_length
        if x.numel() % n:
            raise ValueError(
                f"a sentence body must hold whole images of {n} ids (BOI + {n - 2} + EOI), got {x.numel()} ids"
            )
        rows = x.reshape(-1, n)
        if rows.numel() and not (bool((rows[:, 0] == self.boi).all()) and bool((rows[:, -1] == self.eoi).all())):
            raise ValueError("malformed sentence: every image must start with BOI and end with EOI")
        body = rows[:, 1:-1]
        if body.numel() and int(body.max()) >= self.visual_vocab:
            raise ValueError("malformed sentence: a special id sits inside an image")
        return body.reshape(-1, *self.image_tokens)

    def image_index(self, ids: Tensor) -> Tensor:
        """For a sentence (B, L) or (L,) starting with BOS: the image each id belongs to (0-based), −1 outside images.

        BOI and EOI belong to their image; BOS, EOS and padding get −1.
        """
        pos = torch.arange(ids.shape[-1], device=ids.device) - 1  # BOS at position 0
        img = torch.div(pos, self.image_length, rounding_mode="floor")
        inside = (pos >= 0) & (ids != self.bos) & (ids != self.eos) & (ids != self.pad)
        return torch.where(inside, img, torch.full_like(img, -1)).expand_as(ids)

    def visual_mask(self, device: torch.device | str | None = None, vocab_size: int | None = None) -> Tensor:
        """Bool (vocab_size,): True at the visual ids — what sampling inside an image is restricted to.

        ``vocab_size`` defaults to :attr:`vocab_size`; a model may reserve more special ids than the format uses.
        """
        m = torch.zeros(vocab_size or self.vocab_size, dtype=torch.bool, device=device)
        m[: self.visual_vocab] = True
        return m

    def frame_plan(
        self, device: torch.device | str | None = None, vocab_size: int | None = None
    ) -> Callable[[int], int | Tensor]:
        """Token plan for generating whole images after a prompt that ends with EOI: step s of each
        ``image_length`` block is BOI (forced), then n visual ids (sampled among visual ids only), then EOI (forced).
        """
        visual, n = self.visual_mask(device, vocab_size), self.image_length

        def plan(step: int) -> int | Tensor:
            j = step % n
            return self.boi if j == 0 else self.eoi if j == n - 1 else visual

        return plan


# ---------------------------------------------------------------------------------------------------------------------
# Pair transforms (the built-in in-context tasks)
# ---------------------------------------------------------------------------------------------------------------------


def _gray(x: Tensor) -> Tensor:
    w = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype).view(3, 1, 1)
    return (x * w).sum(0, keepdim=True).expand_as(x).clone()


def _masked(x: Tensor) -> Tensor:
    """The central half-size square set to mid-grey (0 in [-1, 1])."""
    h, w = x.shape[-2:]
    y = x.clone()
    y[:, h // 4 : h // 4 + h // 2, w // 4 : w // 4 + w // 2] = 0.0
    return y


def _blurred(x: Tensor, sigma: float = 2.0) -> Tensor:
    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    k = k / k.sum()
    y = F.pad(x[None], (radius, radius, radius, radius), mode="replicate")
    y = F.conv2d(y, k.view(1, 1, 1, -1).expand(3, 1, 1, -1), groups=3)
    return F.conv2d(y, k.view(1, 1, -1, 1).expand(3, 1, -1, 1), groups=3)[0]


def pair_transform(task: str, x: Tensor) -> tuple[Tensor, Tensor]:
    """The (input, output) pair of in-context task ``task`` for image ``x`` (3, H, W) in [-1, 1].

    colorize: (grey, colour); inpaint: (centre masked, whole); flip: (x, mirrored); deblur: (blurred, sharp);
    rotate: (x, x turned 90° counter-clockwise; square images only).
    """
    if task == "colorize":
        return _gray(x), x
    if task == "inpaint":
        return _masked(x), x
    if task == "flip":
        return x, x.flip(-1)
    if task == "deblur":
        return _blurred(x), x
    if task == "rotate":
        if x.shape[-1] != x.shape[-2]:
            raise ValueError(f"the rotate task needs square images, got {tuple(x.shape[-2:])}")
        return x, torch.rot90(x, 1, dims=(-2, -1))
    raise ValueError(f"unknown pair task {task!r}; tasks: {', '.join(PAIR_TASKS)}")


# ---------------------------------------------------------------------------------------------------------------------
# Sentence builders
# ---------------------------------------------------------------------------------------------------------------------


def _check_index(index: int, length: int) -> int:
    i = index + length if index < 0 else index
    if not 0 <= i < length:
        raise IndexError(f"index {index} out of range for a dataset of {length} sentences")
    return i


class VideoSentences(Dataset):
    """Sentences of consecutive frames: item i = the frames of clip i of ``clips`` (items with (3, T, H, W) pixels),
    optionally every ``stride``-th frame and at most ``frames`` of them."""

    task = "video"

    def __init__(self, clips: Dataset, frames: int | None = None, stride: int = 1):
        if stride < 1 or (frames is not None and frames < 1):
            raise ValueError(f"frames and stride must be >= 1, got frames={frames}, stride={stride}")
        self.clips, self.frames, self.stride = clips, frames, stride

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.clips[_check_index(index, len(self))]
        x = item["pixels"][:, :: self.stride]
        if self.frames is not None:
            x = x[:, : self.frames]
        return {
            "images": x.transpose(0, 1).contiguous(),
            "task": self.task,
            "label": TASKS.index(self.task),
            "index": index,
        }


class PairSentences(Dataset):
    """In-context task sentences ``A₁ B₁ … Aₖ Bₖ`` (k = ``pairs``) of one task from ``PAIR_TASKS`` each.

    Item i uses task ``tasks[i % len(tasks)]`` and k images of ``images`` drawn without replacement by a generator
    seeded with ``(seed, i)``.
    """

    def __init__(
        self, images: Dataset, pairs: int = 3, tasks: Sequence[str] = PAIR_TASKS, length: int = 1000, seed: int = 0
    ):
        unknown = [t for t in tasks if t not in PAIR_TASKS]
        if unknown or not tasks:
            raise ValueError(f"tasks must be a non-empty subset of {PAIR_TASKS}, got {list(tasks)}")
        if pairs < 1 or pairs > len(images):
            raise ValueError(f"pairs must be in [1, {len(images)}] (the number of images), got {pairs}")
        self.images, self.pairs, self.tasks = images, pairs, tuple(tasks)
        self.length, self.seed = int(length), int(seed)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = _check_index(index, self.length)
        task = self.tasks[index % len(self.tasks)]
        rng = np.random.default_rng([self.seed, index])
        picks = rng.choice(len(self.images), size=self.pairs, replace=False)
        out = []
        for j in picks:
            out.extend(pair_transform(task, self.images[int(j)]["pixels"]))
        return {"images": torch.stack(out), "task": task, "label": TASKS.index(task), "index": index}


class ListSentences(Dataset):
    """Sentences of ``count`` views of one source: item i = ``count`` items of ``images`` that share a label.

    The label of item i is ``labels[i % n_labels]``; its views are drawn by a generator seeded with ``(seed, i)``
    (with random-crop datasets such as the built-in photos, these are different crops of one photo).
    """

    task = "list"

    def __init__(
        self, images: Dataset, count: int = 4, length: int = 1000, seed: int = 0, labels: Sequence[Any] | None = None
    ):
        if count < 1:
            raise ValueError(f"count must be >= 1, got {count}")
        self.images, self.count, self.length, self.seed = images, int(count), int(length), int(seed)
        if labels is None:
            labels = [int(images[i]["label"]) for i in range(len(images))]
        groups: dict[Any, list[int]] = {}
        for i, lab in enumerate(labels):
            groups.setdefault(lab, []).append(i)
        self.groups = list(groups.values())  # in order of first appearance

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = _check_index(index, self.length)
        members = self.groups[index % len(self.groups)]
        rng = np.random.default_rng([self.seed, index])
        picks = rng.choice(members, size=self.count, replace=len(members) < self.count)
        return {
            "images": torch.stack([self.images[int(j)]["pixels"] for j in picks]),
            "task": self.task,
            "label": TASKS.index(self.task),
            "index": index,
        }


class FolderSentences(Dataset):
    """User sentences: every subfolder of ``root`` (sorted) is one sentence, its images in sorted name order,
    resized (shorter side) and centre-cropped to ``size``."""

    task = "folder"

    def __init__(self, root: str | os.PathLike, size: int = 256):
        self.root, self.size = Path(root), size
        if not self.root.is_dir():
            raise FileNotFoundError(f"no such sentence folder: {self.root}")
        self.sentences = []
        for d in sorted(p for p in self.root.iterdir() if p.is_dir()):
            files = sorted(f for f in d.iterdir() if f.suffix.lower() in IMAGE_EXTS)
            if files:
                self.sentences.append(files)
        if not self.sentences:
            raise FileNotFoundError(f"{self.root} has no subfolders with images (one subfolder per sentence)")

    def __len__(self) -> int:
        return len(self.sentences)

    def __getitem__(self, index: int) -> dict[str, Any]:
        files = self.sentences[_check_index(index, len(self))]
        images = []
        for f in files:
            img = read_image(f)
            images.append(to_tensor(apply_box(img, crop_box(img.width, img.height, self.size, "center"))))
        return {
            "images": torch.stack(images),
            "task": self.task,
            "label": TASKS.index(self.task),
            "index": index,
            "path": str(files[0].parent),
        }


def builtin_sentences(
    split: str = "train",
    size: int = 64,
    kinds: Sequence[str] = ("video", "pairs", "list"),
    count: int = 200,
    frames: int = 8,
    pairs: int = 3,
    seed: int = 0,
) -> Dataset:
    """Sentences over the built-in data: ``count`` of each kind in ``kinds`` ("video": synthetic clips of
    ``frames`` frames; "pairs": in-context tasks on random photo crops; "list": crops of one photo), concatenated."""
    from torch.utils.data import ConcatDataset

    from vistok.data.samples import SamplePhotos, SyntheticVideos

    parts: list[Dataset] = []
    for kind in kinds:
        if kind == "video":
            parts.append(VideoSentences(SyntheticVideos(frames, size, length=count, split=split, seed=seed)))
        elif kind == "pairs":
            # a pool of about one fresh crop per image slot, so sentences do not recycle a few crops
            photos = SamplePhotos(size, split, length=max(64, count * pairs), seed=seed + 1)
            parts.append(PairSentences(photos, pairs=pairs, length=count, seed=seed))
        elif kind == "list":
            names = len(SamplePhotos(size, split).names)
            photos = SamplePhotos(size, split, length=max(16 * names, count * (frames // 2 or 1)), seed=seed + 2)
            parts.append(
                ListSentences(
                    photos,
                    count=frames // 2 or 1,
                    length=count,
                    seed=seed,
                    labels=[photos.box(i)[0] for i in range(len(photos))],
                )
            )
        else:
            raise ValueError(f"unknown sentence kind {kind!r}; kinds: video, pairs, list")
    return ConcatDataset(parts)


# ---------------------------------------------------------------------------------------------------------------------
# Pre-tokenizing
# ---------------------------------------------------------------------------------------------------------------------


@torch.inference_mode()
def _encode_images(tokenizer: Any, images: Tensor, batch: int) -> Tensor:
    device = next(tokenizer.parameters()).device
    out = [
        tokenizer.encode(images[i : i + batch].to(device), pad=True).long().cpu() for i in range(0, len(images), batch)
    ]
    ids = torch.cat(out)
    return ids[:, 0] if ids.ndim == 4 else ids  # a 1-frame video tokenizer returns (k, 1, h, w)


def _identity(item: Any) -> Any:
    return item


def tokenize_sentences(
    sentences: Dataset,
    tokenizer: Any,
    out_dir: str | os.PathLike,
    *,
    limit: int | None = None,
    batch_images: int = 32,
    tokenizer_name: str = "tokenizer",
    tokenizer_config: dict[str, Any] | None = None,
    progress: bool = True,
    num_workers: int = 0,
    source: dict[str, Any] | None = None,
) -> tuple[SentenceFormat, int]:
    """Encode every sentence of ``sentences`` (each image on its own, as an image) and store it as one shard item.

    Images of consecutive sentences are encoded together, ``batch_images`` at a time (one sentence is never split
    across shards: items are written in order once all their images are encoded). ``num_workers`` > 0 renders /
    loads the sentences in that many worker processes (a ``DataLoader``, order kept), which pays off when making a
    sentence costs more than encoding it (synthetic clips, decoded videos) and the tokenizer sits on a GPU.

    Resumes: items already committed in ``out_dir`` are not encoded again. ``source`` (JSON-able: how the sentences
    were made) is stored with the shards; resuming a folder made from another source, or one that holds more items
    than asked for, is refused (its items would silently stand in for the ones asked for). Returns the format and the
    item count.
    """
    from torch.utils.data import DataLoader, Subset

    from vistok.data.shards import META_NAME, ShardWriter, _read_meta
    from vistok.train.metrics import Progress

    n = len(sentences) if limit is None else min(limit, len(sentences))
    if (Path(out_dir) / META_NAME).is_file():
        meta = _read_meta(Path(out_dir))
        old = meta["extra"].get("sentence_source")
        if source is not None and old is not None and old != json.loads(json.dumps(source)):
            raise ValueError(
                f"{out_dir}: these token shards were made from other sentences ({old}), not {source}; "
                "use a fresh output folder (or delete this one) to tokenize the new ones"
            )
        if meta["num_items"] > n:
            raise ValueError(
                f"{out_dir}: holds {meta['num_items']} tokenized sentences, more than the {n} asked for; it was made "
                "with other settings: use a fresh output folder (or delete this one)"
            )
    first = sentences[0]["images"]
    grid = tuple(_encode_images(tokenizer, first[:1], 1).shape[-2:])
    fmt = SentenceFormat(int(tokenizer.codebook_size), grid)
    extra = {"sentence_format": fmt.to_dict(), "tasks": list(TASKS), "image_size": list(first.shape[-2:])}
    if source is not None:
        extra["sentence_source"] = source
    with ShardWriter(out_dir, fmt.vocab_size, tokenizer_name, tokenizer_config, extra=extra) as writer:
        start = writer.num_items
        bar = Progress(total=n, desc="tokenizing sentences", enabled=progress, initial=start)
        todo = Subset(sentences, range(start, n))
        items: Any = (
            DataLoader(todo, batch_size=None, num_workers=num_workers, collate_fn=_identity, prefetch_factor=4)
            if num_workers > 0 and len(todo) > 0
            else (todo[i] for i in range(len(todo)))
        )
        pending: list[tuple[int, int]] = []  # (images, label) per sentence waiting for its ids
        images: list[Tensor] = []

        def flush() -> None:
            if not pending:
                return
            grids = _encode_images(tokenizer, torch.cat(images), batch_images)
            offset = 0
            for count, label in pending:
                writer.append(fmt.encode(grids[offset : offset + count]).numpy(), label)
                offset += count
            bar.update(len(pending))
            pending.clear()
            images.clear()

        queued = 0
        for item in items:
            pending.append((len(item["images"]), int(item["label"])))
            images.append(item["images"])
            queued += len(item["images"])
            if queued >= batch_images:
                flush()
                queued = 0
        flush()
        bar.close()
        return fmt, writer.num_items


# ---------------------------------------------------------------------------------------------------------------------
# Packing
# ---------------------------------------------------------------------------------------------------------------------


def segment_loss_mask(ids: Tensor, fmt: SentenceFormat, loss_on: str = "all", task: int | None = None) -> Tensor:
    """Bool mask over the ids of one sentence (L,) (starting with BOS): which ids are *predicted* with a loss.

    ``"all"``: every id after BOS (LVM's plain next-token loss); ``"last"``: the ids of the last image (BOI … EOI);
    ``"outputs"``: for in-context pair tasks the output images (B₁ … Bₖ, the odd-numbered ones), else as "all".
    """
    if loss_on not in LOSS_POLICIES:
        raise ValueError(f"loss_on must be one of {LOSS_POLICIES}, got {loss_on!r}")
    img = fmt.image_index(ids)
    if loss_on == "all" or (loss_on == "outputs" and (task is None or TASKS[task] not in PAIR_TASKS)):
        mask = torch.ones_like(ids, dtype=torch.bool)
        mask[..., 0] = False
        return mask
    if loss_on == "last":
        return img == img.max()
    return (img >= 0) & (img % 2 == 1)


class PackedSentences(Dataset):
    """Windows of ``seq_len`` ids packed with whole sentences from a sentence shard folder (see the module docstring).

    Item: ``{"ids", "targets", "doc_ids", "positions", "valid"}``, each (seq_len,): ``doc_ids`` numbers the
    sentences of the window from 0 (padding: −1), ``valid`` is False on padding. ``windows[i]`` lists the shard items
    in window i. Packing is first-fit decreasing over a ``seed``-shuffled order, computed once.
    """

    def __init__(
        self,
        source: str | os.PathLike | Any,
        seq_len: int,
        loss_on: str = "all",
        seed: int = 0,
        indices: Iterable[int] | None = None,
    ):
        from vistok.data.shards import ShardReader

        if loss_on not in LOSS_POLICIES:
            raise ValueError(f"loss_on must be one of {LOSS_POLICIES}, got {loss_on!r}")
        self.reader = source if isinstance(source, ShardReader) else ShardReader(source)
        if "sentence_format" not in self.reader.extra:
            raise ValueError(
                f"{getattr(self.reader, 'dir', source)} is not a sentence shard folder (no "
                "sentence_format in meta.json extra); write it with tokenize_sentences"
            )
        self.format = SentenceFormat.from_dict(self.reader.extra["sentence_format"])
        self.seq_len, self.loss_on = int(seq_len), loss_on
        items = np.arange(len(self.reader)) if indices is None else np.asarray(list(indices), dtype=np.int64)
        lengths = np.array([len(self.reader[int(i)]) for i in items], dtype=np.int64)
        fits = lengths <= self.seq_len
        self.skipped_long = int((~fits).sum())
        if not fits.any():
            raise ValueError(f"no sentence fits a window of {seq_len} ids (shortest: {int(lengths.min())} ids)")
        self.windows = self._pack(items[fits], lengths[fits], seed)

    def _pack(self, items: np.ndarray, lengths: np.ndarray, seed: int) -> list[list[int]]:
        order = np.random.default_rng(seed).permutation(len(items))
        order = order[np.argsort(-lengths[order], kind="stable")]  # first-fit decreasing, ties in shuffled order
        windows: list[list[int]] = []
        room: list[int] = []
        for j in order:
            n = int(lengths[j])
            w = next((k for k, r in enumerate(room) if r >= n), None)
            if w is None:
                windows.append([])
                room.append(self.seq_len)
                w = len(windows) - 1
            windows[w].append(int(items[j]))
            room[w] -= n
        perm = np.random.default_rng(seed + 1).permutation(len(windows))
        return [windows[k] for k in perm]

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        index = _check_index(index, len(self))
        L, fmt = self.seq_len, self.format
        ids = torch.full((L,), fmt.pad, dtype=torch.long)
        targets = torch.full((L,), IGNORE, dtype=torch.long)
        doc = torch.full((L,), -1, dtype=torch.long)
        pos = torch.zeros(L, dtype=torch.long)
        at = 0
        for d, item in enumerate(self.windows[index]):
            s = torch.from_numpy(np.asarray(self.reader[item]).astype(np.int64))
            n = s.numel()
            ids[at : at + n] = s
            keep = segment_loss_mask(s, fmt, self.loss_on, self.reader.label(item))
            tgt = torch.where(keep[1:], s[1:], IGNORE)
            targets[at : at + n - 1] = tgt
            doc[at : at + n] = d
            pos[at : at + n] = torch.arange(n)
            at += n
        return {"ids": ids, "targets": targets, "doc_ids": doc, "positions": pos, "valid": doc >= 0}

    def stats(self) -> dict[str, Any]:
        """Windows, sentences packed, skipped (too long), and the fraction of window ids that are real ids."""
        used = sum(len(self.reader[i]) for w in self.windows for i in w)
        return {
            "windows": len(self.windows),
            "sentences": sum(len(w) for w in self.windows),
            "skipped_long": self.skipped_long,
            "fill": used / (len(self.windows) * self.seq_len),
        }
