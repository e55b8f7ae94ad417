"""Chat-UniVi with a local Hugging Face LLaMA as its language model (built here with ``transformers``, never
downloaded): the checkpoint's weights and tokenizer are used, the LM stays frozen in stage 1 and trains in stage 2,
answers are generated, and save/load round-trips (tokenizer.json included)."""

import json

import pytest
import torch

from vistok.models.hf_llama import hf_to_vistok_name
from vistok.models.univi import TOKENIZER_NAME, UniVi, UniViConfig
from vistok.train.univi import UniViTrainConfig, _run_stage, load_univi

TEXTS = [
    "how many shapes are there? 3",
    "what colour is the circle? red",
    "is there a blue square? no",
    "where is the green triangle? top left",
    "describe: a red circle at the top and two blue squares",
]
UNIVI = dict(stages=(8, 4, 2), video_stages=(8, 4, 2), max_seq_len=256)


def _hf_llama(folder, vocab_size: int, tokenizer: bool = True):
    """A tiny random LlamaForCausalLM saved to ``folder`` (+ a byte-level BPE tokenizer.json trained on TEXTS)."""
    transformers = pytest.importorskip("transformers", reason="transformers is not installed (vistok[hf])")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        max_position_embeddings=256,
        tie_word_embeddings=False,
    )
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    if tokenizer:
        tokenizers = pytest.importorskip("tokenizers")
        tok = tokenizers.Tokenizer(tokenizers.models.BPE())
        tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = tokenizers.decoders.ByteLevel()
        trainer = tokenizers.trainers.BpeTrainer(
            vocab_size=300, initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet()
        )
        tok.train_from_iterator(TEXTS * 5, trainer=trainer)
        tok.save(str(folder / "tokenizer.json"))
    return folder


def _hf_weights(folder) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return {hf_to_vistok_name(k): v.float() for k, v in load_file(str(folder / "model.safetensors")).items()}


def _batch(model: UniVi, turns):
    torch.manual_seed(1)
    feats = torch.randn(len(turns), 64, model.config.feature_dim)

    def batch(index, rank=0):
        return {"features": feats, "grid": [8, 8], "reduction": "merge", "num_tokens": None, "turns": turns}

    return batch, feats


def test_hf_llama_as_the_language_model_frozen_in_stage1_trained_in_stage2(tmp_path):
    folder = _hf_llama(tmp_path / "llm", vocab_size=300)
    model = UniVi.from_llm(folder, **UNIVI)
    hf = _hf_weights(folder)
    # the folder's tokenizer, its specials appended after its vocabulary; the tables grown to hold them
    assert type(model.text).__name__ == "HFTextTokenizer" and model.text.base_vocab_size <= 300
    assert model.config.vocab_size == len(model.text) > 300
    assert model.lm.config.dim == 64 and model.projector.fc2.out_features == 64
    lm = {k: v.clone() for k, v in model.lm.state_dict().items()}
    for name, w in hf.items():
        got = lm[name][: w.shape[0]] if name in ("tok_embeddings.weight", "output.weight") else lm[name]
        assert torch.equal(got, w), name
    torch.testing.assert_close(lm["tok_embeddings.weight"][300:], hf["tok_embeddings.weight"].mean(0).expand(16, -1))

    turns = [[("what colour is the circle?", "red")], [("how many shapes are there?", "3")]]
    batch, feats = _batch(model, turns)
    cfg = UniViTrainConfig(out=str(tmp_path / "run"), batch_size=2, progress=False, log_every=1, warmup=0)
    proj0 = {k: v.clone() for k, v in model.projector.state_dict().items()}
    _run_stage(model, 1, 2, 1e-2, batch, cfg)
    after1 = model.lm.state_dict()
    for name, w in lm.items():  # frozen in stage 1: still the checkpoint's weights
        assert torch.equal(after1[name], w), name
    assert any(not torch.equal(v, proj0[k]) for k, v in model.projector.state_dict().items())
    _run_stage(model, 2, 2, 1e-2, batch, cfg)
    assert not torch.equal(model.lm.state_dict()["layers.0.attention.wq.weight"], lm["layers.0.attention.wq.weight"])

    model.eval()
    vt = model.visual_tokens(feats, (8, 8))
    answers = model.answer(vt, [q for ((q, _),) in turns], max_new_tokens=6)
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)
    # the generated ids decode with the checkpoint's tokenizer: re-encoding an answer gives ids below its vocabulary
    assert all(i < model.text.base_vocab_size for a in answers for i in model.text.encode(a, bos=False, eos=False))

    saved = model.save_pretrained(tmp_path / "model")
    assert (saved / TOKENIZER_NAME).is_file()
    assert json.loads((saved / "config.json").read_text())["text_tokenizer"] == TOKENIZER_NAME
    back = load_univi(saved)
    assert type(back.text).__name__ == "HFTextTokenizer" and back.config.vocab_size == model.config.vocab_size
    for k, v in model.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k
    assert back.answer(vt, [q for ((q, _),) in turns], max_new_tokens=6) == answers


def test_hf_llama_without_tokenizer_uses_bytes_or_fails_clearly(tmp_path):
    small = _hf_llama(tmp_path / "small", vocab_size=200, tokenizer=False)
    with pytest.raises(ValueError, match="cannot hold the byte tokenizer's 272 ids"):
        UniVi.from_llm(small, **UNIVI)
    big = _hf_llama(tmp_path / "big", vocab_size=280, tokenizer=False)
    model = UniVi.from_llm(big, UniViConfig(**UNIVI))
    assert type(model.text).__name__ == "ByteTokenizer" and model.config.vocab_size == 280
    assert model.config.text_tokenizer is None and model.lm.config.vocab_size == 280
    torch.testing.assert_close(model.lm.tok_embeddings.weight, _hf_weights(big)["tok_embeddings.weight"])
    model.save_pretrained(tmp_path / "model")
    assert not (tmp_path / "model" / TOKENIZER_NAME).exists()
    back = load_univi(tmp_path / "model")
    vt = back.visual_tokens(torch.randn(1, 64, 10), (8, 8))
    assert back.answer(vt, ["what colour is the circle?"], max_new_tokens=3) == model.eval().answer(
        vt, ["what colour is the circle?"], max_new_tokens=3
    )


@pytest.mark.slow
def test_cli_train_with_llm_end_to_end(tmp_path, capsys):
    import argparse

    from vistok.train.univi import add_univi_parser

    folder = _hf_llama(tmp_path / "llm", vocab_size=300)
    out = tmp_path / "run"
    ap = argparse.ArgumentParser()
    add_univi_parser(ap.add_subparsers(dest="group"))
    argv = ["univi", "train", "--llm", str(folder), "--out", str(out), "--steps", "2", "--steps1", "2"]
    argv += ["--image-size", "64", "--video-size", "64", "--frames", "5", "--train-images", "6", "--train-videos"]
    argv += ["3", "--eval-images", "2", "--eval-videos", "2", "--eval-questions", "1", "--batch-size", "2", "-q"]
    argv += ["--reductions", "merge,pool", "--eval-reductions", "merge"]
    args = ap.parse_args(argv)
    assert args.func(args) == 0
    report = json.loads((out / "eval.json").read_text())
    assert report["train_config"]["llm"] == str(folder) and report["train_config"]["steps0"] == 0
    assert "stage 0: skipped" in report["stages"][0]
    model = load_univi(out / "model")
    assert type(model.text).__name__ == "HFTextTokenizer" and model.lm.config.dim == 64
    assert (out / "model" / TOKENIZER_NAME).is_file()
