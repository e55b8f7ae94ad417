"""Text tokenizers for mixed text + image sequences (Transfusion, Zhou et al. 2024, §2.1: text ids and image patches
in one sequence, each image between BOI and EOI; PAPERS.md §4).

Two tokenizers with one interface:

- :class:`ByteTokenizer` — no vocabulary file: ids 0–255 are the UTF-8 bytes of the text, the special ids come after
  them (:data:`BOS` = 256, :data:`EOS` = 257, :data:`BOI` = 258, :data:`EOI` = 259, :data:`PAD` = 260), and the
  vocabulary keeps ``num_reserved`` (16) slots for specials, so up to 11 more named ones (``extra_specials``) never
  change the size of a model's embedding table: ``vocab_size`` = 256 + 16 = 272.
- :class:`HFTextTokenizer` — wraps a Hugging Face ``tokenizer.json`` (the optional ``tokenizers`` package, installed
  with ``pip install 'vistok[hf]'``); the same specials are appended after the file's vocabulary (its own added
  tokens included), in the same order, again in a block of ``num_reserved`` slots.

The shared interface (:class:`TextTokenizer`): ``encode(text, bos=True, eos=True, tensor=False)`` → ids (a list, or a
LongTensor); ``decode(ids)`` → text, skipping special ids (and, for bytes, replacing invalid UTF-8 with U+FFFD);
``batch_encode(texts, pad_to=None)`` → ``(ids, mask)`` right-padded with PAD (``mask`` True on real tokens);
``vocab_size``; ``bos_id``/``eos_id``/``boi_id``/``eoi_id``/``pad_id`` and ``special_id(name)``.
:func:`load_text_tokenizer` picks one: ``None`` (or ``"bytes"``) → bytes, a path → the ``tokenizer.json`` there.
"""

from __future__ import annotations

import numbers
import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from vistok._optional import require

__all__ = [
    "BOI",
    "BOS",
    "EOI",
    "EOS",
    "NUM_BYTES",
    "PAD",
    "SPECIAL_TOKENS",
    "ByteTokenizer",
    "HFTextTokenizer",
    "TextTokenizer",
    "load_text_tokenizer",
]

NUM_BYTES = 256
"""Ids 0 … 255 of :class:`ByteTokenizer` are the byte values."""
SPECIAL_TOKENS: tuple[str, ...] = ("bos", "eos", "boi", "eoi", "pad")
"""The built-in special tokens, in id order after the base vocabulary: begin/end of sequence, begin/end of image,
padding."""
BOS, EOS, BOI, EOI, PAD = (NUM_BYTES + i for i in range(len(SPECIAL_TOKENS)))
"""The special ids of :class:`ByteTokenizer` (256 … 260)."""
DEFAULT_RESERVED = 16


def _check_text(text: Any, where: str = "text") -> str:
    if not isinstance(text, str):
        raise TypeError(f"{where} must be a str, got {type(text).__name__}")
    return text


def _as_id_list(ids: Any) -> list[int]:
    """``ids`` (a sequence of ints or a 0/1-d integer tensor / array) as a list of Python ints."""
    if isinstance(ids, Tensor) or hasattr(ids, "dtype"):
        t = torch.as_tensor(ids)
        if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            raise TypeError(f"token ids must be integers, got a tensor of {t.dtype}")
        if t.ndim > 1:
            raise ValueError(f"decode takes one sequence of ids (0-d or 1-d), got shape {tuple(t.shape)}")
        return t.reshape(-1).tolist()
    if isinstance(ids, numbers.Integral) and not isinstance(ids, bool):
        return [int(ids)]
    if isinstance(ids, str | bytes) or not isinstance(ids, Sequence):
        raise TypeError(f"token ids must be a sequence of ints or an integer tensor, got {type(ids).__name__}")
    bad = [i for i in ids if not isinstance(i, numbers.Integral) or isinstance(i, bool)]
    if bad:
        raise TypeError(f"token ids must be ints, got {type(bad[0]).__name__} {bad[0]!r}")
    return [int(i) for i in ids]


class TextTokenizer(ABC):
    """Base class: a base vocabulary of ``base_vocab_size`` ids, then the special ids, then reserved slots.

    Subclasses implement :meth:`_encode_text` (text → base ids) and :meth:`_decode_text` (base ids → text).
    Specials are :data:`SPECIAL_TOKENS` followed by ``extra_specials``, numbered from ``base_vocab_size`` on;
    ``vocab_size = base_vocab_size + max(num_reserved, number of specials)``. Ids between the last special and
    ``vocab_size`` are unused (reserved for later specials) and decode to nothing.
    """

    def __init__(self, base_vocab_size: int, extra_specials: Sequence[str] = (), num_reserved: int = DEFAULT_RESERVED):
        names = [*SPECIAL_TOKENS, *(_check_text(n, "a special token name") for n in extra_specials)]
        if len(set(names)) != len(names) or not all(names):
            raise ValueError(f"special token names must be distinct and non-empty, got {names}")
        if num_reserved < 0:
            raise ValueError(f"num_reserved must be >= 0, got {num_reserved}")
        self.base_vocab_size = int(base_vocab_size)
        self.specials: dict[str, int] = {n: self.base_vocab_size + i for i, n in enumerate(names)}
        self.num_reserved = max(int(num_reserved), len(names))
        self.vocab_size = self.base_vocab_size + self.num_reserved

    # -- specials

    def special_id(self, name: str) -> int:
        """The id of special token ``name`` ("bos", "eos", "boi", "eoi", "pad" or one of ``extra_specials``)."""
        if name not in self.specials:
            raise KeyError(f"no special token {name!r}; this tokenizer has {list(self.specials)}")
        return self.specials[name]

    @property
    def bos_id(self) -> int:
        return self.specials["bos"]

    @property
    def eos_id(self) -> int:
        return self.specials["eos"]

    @property
    def boi_id(self) -> int:
        return self.specials["boi"]

    @property
    def eoi_id(self) -> int:
        return self.specials["eoi"]

    @property
    def pad_id(self) -> int:
        return self.specials["pad"]

    def is_special(self, token_id: int) -> bool:
        """True for ids at or above ``base_vocab_size`` (specials and reserved slots)."""
        return token_id >= self.base_vocab_size

    # -- to implement

    @abstractmethod
    def _encode_text(self, text: str) -> list[int]:
        """Text → base-vocabulary ids."""

    @abstractmethod
    def _decode_text(self, ids: list[int]) -> str:
        """Base-vocabulary ids → text."""

    # -- encoding and decoding

    def encode(self, text: str, bos: bool = True, eos: bool = True, tensor: bool = False) -> list[int] | Tensor:
        """Ids of ``text``, with BOS in front and EOS behind (unless turned off); a LongTensor with ``tensor``."""
        ids = self._encode_text(_check_text(text))
        ids = [self.bos_id] * bos + ids + [self.eos_id] * eos
        return torch.tensor(ids, dtype=torch.long) if tensor else ids

    def decode(self, ids: Sequence[int] | Tensor, skip_special: bool = True) -> str:
        """The text of ``ids`` (a list or a 0/1-d integer tensor). Special ids are skipped, or, with
        ``skip_special=False``, written as ``<bos>``, ``<eoi>``, … (reserved ids as ``<special:ID>``)."""
        ids = _as_id_list(ids)
        out_of_range = [i for i in ids if not 0 <= i < self.vocab_size]
        if out_of_range:
            raise ValueError(f"token ids must be in [0, {self.vocab_size}), got {out_of_range[0]}")
        names = {v: k for k, v in self.specials.items()}
        parts: list[str] = []
        run: list[int] = []
        for i in ids:
            if not self.is_special(i):
                run.append(i)
                continue
            if not skip_special:
                parts.append(self._decode_text(run))
                run = []
                parts.append(f"<{names[i]}>" if i in names else f"<special:{i}>")
        parts.append(self._decode_text(run))
        return "".join(parts)

    def batch_encode(
        self,
        texts: Sequence[str],
        pad_to: int | None = None,
        bos: bool = True,
        eos: bool = True,
        truncate: bool = False,
    ) -> tuple[Tensor, Tensor]:
        """``(ids, mask)``: LongTensor ``(B, L)`` right-padded with PAD and BoolTensor ``(B, L)``, True on real ids.

        ``L`` is the longest sequence, or ``pad_to``; a sequence longer than ``pad_to`` raises, unless ``truncate``
        cuts it (an EOS cut off is lost).
        """
        if isinstance(texts, str) or not isinstance(texts, Sequence):
            raise TypeError(f"batch_encode takes a list of str, got {type(texts).__name__}")
        seqs = [self.encode(_check_text(t, f"texts[{i}]"), bos=bos, eos=eos) for i, t in enumerate(texts)]
        longest = max((len(s) for s in seqs), default=0)
        if pad_to is not None:
            if pad_to < 0:
                raise ValueError(f"pad_to must be >= 0, got {pad_to}")
            if longest > pad_to and not truncate:
                i = max(range(len(seqs)), key=lambda k: len(seqs[k]))
                raise ValueError(f"texts[{i}] is {longest} tokens long, more than pad_to={pad_to} (or truncate=True)")
        length = longest if pad_to is None else pad_to
        ids = torch.full((len(seqs), length), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), length), dtype=torch.bool)
        for i, s in enumerate(seqs):
            s = s[:length]
            ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
            mask[i, : len(s)] = True
        return ids, mask

    def batch_decode(self, ids: Tensor | Sequence[Sequence[int]], skip_special: bool = True) -> list[str]:
        """:meth:`decode` of each row (PAD and other specials are skipped)."""
        return [self.decode(row, skip_special=skip_special) for row in ids]

    def __len__(self) -> int:
        return self.vocab_size

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size}, specials={self.specials})"


class ByteTokenizer(TextTokenizer):
    """UTF-8 bytes as ids 0–255; specials from 256 (:data:`BOS`, :data:`EOS`, :data:`BOI`, :data:`EOI`, :data:`PAD`).

    Text that is not valid Unicode (lone surrogates) raises on encode; decoding replaces invalid UTF-8 byte runs
    with U+FFFD, so any id sequence decodes.
    """

    def __init__(self, extra_specials: Sequence[str] = (), num_reserved: int = DEFAULT_RESERVED):
        super().__init__(NUM_BYTES, extra_specials, num_reserved)

    def _encode_text(self, text: str) -> list[int]:
        try:
            return list(text.encode("utf-8"))
        except UnicodeEncodeError as e:
            raise ValueError(f"text is not valid Unicode at position {e.start}: {e.reason} ({text[e.start]!r})") from e

    def _decode_text(self, ids: list[int]) -> str:
        return bytes(ids).decode("utf-8", errors="replace")


class HFTextTokenizer(TextTokenizer):
    """A Hugging Face ``tokenizers`` file (``tokenizer.json``) with the vistok specials appended after its vocabulary.

    Encoding adds none of the file's own special tokens (its post-processor's [CLS]/[SEP] and the like): BOS/EOS are
    the vistok ones. Decoding skips vistok specials and the file's special tokens.
    """

    def __init__(
        self, path: str | os.PathLike, extra_specials: Sequence[str] = (), num_reserved: int = DEFAULT_RESERVED
    ):
        tokenizers = require("tokenizers", "hf", "Hugging Face tokenizer files")
        path = Path(path).expanduser()
        if path.is_dir():
            path = path / "tokenizer.json"
        if not path.is_file():
            raise FileNotFoundError(f"no Hugging Face tokenizer file at {path}")
        try:
            self.tokenizer = tokenizers.Tokenizer.from_file(str(path))
        except Exception as e:
            raise ValueError(f"{path} is not a readable Hugging Face tokenizer.json ({e})") from e
        self.path = path
        super().__init__(self.tokenizer.get_vocab_size(with_added_tokens=True), extra_specials, num_reserved)

    def _encode_text(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def _decode_text(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True) if ids else ""

    def __repr__(self) -> str:
        return f"HFTextTokenizer({str(self.path)!r}, vocab_size={self.vocab_size}, specials={self.specials})"


def load_text_tokenizer(
    path: str | os.PathLike | None = None, extra_specials: Sequence[str] = (), num_reserved: int = DEFAULT_RESERVED
) -> TextTokenizer:
    """``None`` or ``"bytes"`` → :class:`ByteTokenizer`; a ``tokenizer.json`` file (or a folder holding one) →
    :class:`HFTextTokenizer`."""
    if path is None or (isinstance(path, str) and path in ("bytes", "byte")):
        return ByteTokenizer(extra_specials, num_reserved)
    return HFTextTokenizer(path, extra_specials, num_reserved)
