"""vistok.tokenizers.text: the byte tokenizer (round trips, specials, padding, errors) and the Hugging Face wrapper."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vistok._optional import MissingDependencyError
from vistok.tokenizers import text as text_mod
from vistok.tokenizers.text import (
    BOI,
    BOS,
    EOI,
    EOS,
    PAD,
    SPECIAL_TOKENS,
    ByteTokenizer,
    HFTextTokenizer,
    load_text_tokenizer,
)

TEXTS = [
    "two red circles on the left and a blue square at the bottom right",
    "",
    "café, naïve, Ångström, Straße",
    "emoji 🙂👍🏽 and CJK 視覺 and Greek λόγος",
    "tabs\tand\nnewlines\r\n and NUL \x00",
]

# ------------------------------------------------------------------------------------------------------- bytes


@pytest.mark.parametrize("text", TEXTS)
def test_byte_round_trip(text):
    tok = ByteTokenizer()
    ids = tok.encode(text)
    assert ids[0] == BOS and ids[-1] == EOS
    assert ids[1:-1] == list(text.encode("utf-8"))  # ids are exactly the UTF-8 bytes
    assert tok.decode(ids) == text
    t = tok.encode(text, bos=False, eos=False, tensor=True)
    assert t.dtype == torch.long and t.shape == (len(text.encode("utf-8")),)
    assert tok.decode(t) == text


def test_specials_sit_above_the_bytes_and_never_collide():
    tok = ByteTokenizer()
    assert (BOS, EOS, BOI, EOI, PAD) == (256, 257, 258, 259, 260)
    assert [tok.bos_id, tok.eos_id, tok.boi_id, tok.eoi_id, tok.pad_id] == [BOS, EOS, BOI, EOI, PAD]
    assert [tok.special_id(n) for n in SPECIAL_TOKENS] == [BOS, EOS, BOI, EOI, PAD]
    assert tok.vocab_size == 272 == len(tok)  # 16 reserved slots: room for more specials
    every_byte = bytes(range(256)).decode("latin-1")  # every byte value appears in some encoding
    ids = tok.encode(every_byte, bos=False, eos=False)
    assert max(ids) < 256 and all(not tok.is_special(i) for i in ids)
    more = ByteTokenizer(extra_specials=("bov", "eov"))
    assert more.special_id("bov") == 261 and more.special_id("eov") == 262 and more.vocab_size == 272
    many = ByteTokenizer(extra_specials=[f"x{i}" for i in range(20)])
    assert many.vocab_size == 256 + 25 and many.special_id("x19") == 280
    with pytest.raises(KeyError, match="no special token 'cls'"):
        tok.special_id("cls")
    with pytest.raises(ValueError, match="distinct"):
        ByteTokenizer(extra_specials=("bos",))


def test_decode_skips_or_shows_specials_and_replaces_bad_utf8():
    tok = ByteTokenizer()
    ids = [BOS, *b"a", BOI, EOI, *"é".encode(), PAD, 270, EOS]
    assert tok.decode(ids) == "aé"
    assert tok.decode(ids, skip_special=False) == "<bos>a<boi><eoi>é<pad><special:270><eos>"
    assert tok.decode([0xC3]) == "\ufffd"  # a truncated 2-byte sequence
    split = [*"é".encode()[:1], BOI, *"é".encode()[1:]]  # a special inside a character's bytes
    assert tok.decode(split) == "é" and tok.decode(split, skip_special=False) == "\ufffd<boi>\ufffd"
    assert tok.decode(np.array([104, 105])) == "hi" and tok.decode(torch.tensor(104)) == "h"
    assert tok.decode([np.int64(104)]) == "h"


def test_batch_encode_pads_and_masks():
    tok = ByteTokenizer()
    ids, mask = tok.batch_encode(["ab", "", "héllo"])
    lengths = [4, 2, 8]  # + BOS/EOS; é is two bytes
    assert ids.shape == mask.shape == (3, 8) and ids.dtype == torch.long and mask.dtype == torch.bool
    assert mask.sum(1).tolist() == lengths
    for row, m, n, text in zip(ids, mask, lengths, ["ab", "", "héllo"]):
        assert m[:n].all() and not m[n:].any()  # right padding
        assert (row[n:] == PAD).all() and row[:n].tolist() == tok.encode(text)
        assert tok.decode(row) == text
    assert tok.batch_decode(ids) == ["ab", "", "héllo"]
    ids, mask = tok.batch_encode(["ab"], pad_to=6, bos=False)
    assert ids.tolist() == [[97, 98, EOS, PAD, PAD, PAD]] and mask.tolist() == [[True] * 3 + [False] * 3]
    with pytest.raises(ValueError, match=r"texts\[1\] is 7 tokens long, more than pad_to=4"):
        tok.batch_encode(["a", "hello"], pad_to=4)
    ids, mask = tok.batch_encode(["a", "hello"], pad_to=4, truncate=True)
    assert ids[1].tolist() == [BOS, *b"hel"] and mask[1].all()
    ids, mask = tok.batch_encode([])
    assert ids.shape == (0, 0)


def test_bad_input_errors():
    tok = ByteTokenizer()
    with pytest.raises(TypeError, match="text must be a str, got bytes"):
        tok.encode(b"abc")
    with pytest.raises(ValueError, match="not valid Unicode at position 1"):
        tok.encode("a\ud800b")
    with pytest.raises(TypeError, match="list of str"):
        tok.batch_encode("abc")
    with pytest.raises(TypeError, match=r"texts\[1\] must be a str"):
        tok.batch_encode(["a", 3])
    with pytest.raises(ValueError, match=r"\[0, 272\), got 272"):
        tok.decode([1, 272])
    with pytest.raises(ValueError, match=r"got -1"):
        tok.decode([-1])
    with pytest.raises(TypeError, match="integers"):
        tok.decode(torch.tensor([1.0]))
    with pytest.raises(TypeError, match="must be ints"):
        tok.decode([1, 2.0])
    with pytest.raises(ValueError, match="one sequence"):
        tok.decode(torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(TypeError, match="sequence of ints"):
        tok.decode("abc")


def test_load_text_tokenizer_defaults_to_bytes(tmp_path):
    assert isinstance(load_text_tokenizer(), ByteTokenizer) and isinstance(load_text_tokenizer("bytes"), ByteTokenizer)
    pytest.importorskip("tokenizers")
    with pytest.raises(FileNotFoundError, match="no Hugging Face tokenizer file"):
        load_text_tokenizer(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"not a readable Hugging Face tokenizer\.json"):
        load_text_tokenizer(tmp_path / "bad.json")


# ------------------------------------------------------------------------------------------------------- Hugging Face


def _word_level(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    vocab = {"[UNK]": 0, "a": 1, "red": 2, "circle": 3, "blue": 4, "square": 5, "and": 6}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok.add_special_tokens(["[UNK]"])
    path = tmp_path / "tokenizer.json"
    tok.save(str(path))
    return path


def _byte_bpe(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    tok = tokenizers.Tokenizer(tokenizers.models.BPE())
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=300, initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(), special_tokens=["<s>"]
    )
    tok.train_from_iterator(TEXTS * 5, trainer=trainer)
    path = tmp_path / "bpe.json"
    tok.save(str(path))
    return path


def test_hf_word_level_specials_appended(tmp_path):
    path = _word_level(tmp_path)
    tok = load_text_tokenizer(path)
    assert isinstance(tok, HFTextTokenizer) and tok.base_vocab_size == 7
    assert [tok.bos_id, tok.eos_id, tok.boi_id, tok.eoi_id, tok.pad_id] == [7, 8, 9, 10, 11]
    assert tok.vocab_size == 7 + 16
    assert tok.encode("a red circle and a blue square") == [7, 1, 2, 3, 6, 1, 4, 5, 8]
    assert tok.decode([7, 1, 2, 9, 10, 3, 8, 11]) == "a red circle"
    assert tok.decode([1, 0, 2]) == "a red"  # the file's own special ([UNK]) is skipped too
    ids, mask = tok.batch_encode(["a red circle", "blue"])
    assert ids.tolist() == [[7, 1, 2, 3, 8], [7, 4, 8, 11, 11]] and mask.sum(1).tolist() == [5, 3]
    assert isinstance(load_text_tokenizer(tmp_path), HFTextTokenizer)  # a folder holding tokenizer.json


def test_hf_byte_level_bpe_round_trip(tmp_path):
    tok = HFTextTokenizer(_byte_bpe(tmp_path))
    assert tok.base_vocab_size == 300 and tok.bos_id == 300 and tok.vocab_size == 316
    for text in TEXTS:
        ids = tok.encode(text)
        assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id
        assert all(not tok.is_special(i) for i in ids[1:-1])
        assert tok.decode(ids) == text
    assert len(tok.encode(TEXTS[0], bos=False, eos=False)) < len(TEXTS[0])  # merges learned


def test_hf_missing_dependency_names_the_extra(monkeypatch, tmp_path):
    def missing(module, extra, feature=""):
        raise MissingDependencyError(f"'{module}' is needed; install it with: pip install 'vistok[{extra}]'")

    monkeypatch.setattr(text_mod, "require", missing)
    with pytest.raises(MissingDependencyError, match=r"pip install 'vistok\[hf\]'"):
        HFTextTokenizer(tmp_path / "tokenizer.json")
