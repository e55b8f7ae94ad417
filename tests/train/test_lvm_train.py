import json

import numpy as np
import pytest
import torch
from PIL import Image

from vistok.cli import main
from vistok.data.sentences import PackedSentences, SentenceFormat
from vistok.data.shards import ShardWriter
from vistok.models.lvm import LVM, LVMConfig
from vistok.train.loop import TrainConfig, Trainer
from vistok.train.lvm import LVMTrainConfig, lvm_loss, train_lvm


def test_tiny_lvm_overfits_a_few_sentences(tmp_path):
    """Four fixed sentences of 3 images: after a short training the model predicts every id (greedy) exactly."""
    fmt = SentenceFormat(16, (2, 2))
    g = torch.Generator().manual_seed(0)
    sentences = [torch.randint(0, 16, (3, 2, 2), generator=g) for _ in range(4)]
    for k, s in enumerate(sentences):
        s[0, 0, 0] = k  # distinct first ids: everything after the first id is then determined
    with ShardWriter(tmp_path / "tokens", fmt.vocab_size, extra={"sentence_format": fmt.to_dict()}) as w:
        for s in sentences:
            w.append(fmt.encode(s).numpy(), 0)
    packed = PackedSentences(tmp_path / "tokens", seq_len=40)
    torch.manual_seed(0)
    model = LVM(
        LVMConfig(
            visual_vocab=16,
            image_tokens=(2, 2),
            num_special=8,
            dim=64,
            n_layers=2,
            n_heads=4,
            multiple_of=16,
            max_seq_len=40,
        )
    )
    cfg = TrainConfig(steps=150, batch_size=2, lr=3e-3, warmup=10, out_dir=None, progress=False, log_every=50)
    result = Trainer(model, None, lvm_loss, packed, cfg).fit()
    floor = np.log(4) / (len(fmt.encode(sentences[0])) - 1)  # only the first visual id is uncertain: 1 of 4
    assert result.last_metrics["loss"] < floor + 0.02
    model.eval()
    # given the first image, the model reproduces images 2 and 3 of each sentence (first images are distinct)
    for s in sentences:
        assert torch.equal(model.generate(s[None, :1], 2, temperature=0.0)[0], s[1:])


def test_train_lvm_end_to_end_then_generate_and_eval(tmp_path):
    out = tmp_path / "run"
    cfg = LVMTrainConfig(
        out=str(out),
        sentences=4,
        val_sentences=3,
        image_size=32,
        frames=4,
        pairs=2,
        steps=4,
        batch_size=2,
        log_every=2,
        ckpt_every=4,
        eval_items=2,
        progress=False,
        model_overrides={"dim": 32, "n_layers": 1, "n_heads": 2, "n_kv_heads": 1, "max_seq_len": 256},
    )
    result = train_lvm(cfg)
    assert (out / "model" / "config.json").is_file() and (out / "model" / "tokenizer.json").is_file()
    report = json.loads((out / "eval.json").read_text())
    assert report == json.loads(json.dumps(result.eval))
    m = report["next_id"]
    assert m["visual_ids"] > 0 and m["perplexity"] >= 1 and 0 <= m["accuracy"] <= 1
    assert set(report) >= {"next_id", "next_frame", "analogy", "perplexity_vs_context", "pictures"}
    assert report["perplexity_vs_context"]["context_frames"] == [0, 1, 2, 3]
    for key in ("next_frame", "analogy"):
        assert np.isfinite(report[key]["psnr"]) and report[key]["items"] == 2
        assert Image.open(report["pictures"][key]).size[0] > 32 * 4
    assert "perplexity" in result.summary and "copy last image" in result.summary
    # the held-out sentences come from the held-out photos: no overlap with training tokens by construction
    assert json.loads((out / "tokens" / "val" / "meta.json").read_text())["num_items"] == 9

    prompt = []
    for k, colour in enumerate([(200, 30, 30), (30, 200, 30)]):
        prompt.append(tmp_path / f"p{k}.png")
        Image.new("RGB", (40, 32), colour).save(prompt[-1])
    strip = tmp_path / "strip.png"
    rc = main(
        [
            "lvm",
            "generate",
            "--model",
            str(out / "model"),
            "--prompt",
            *map(str, prompt),
            "--frames",
            "2",
            "--out",
            str(strip),
            "--seed",
            "3",
        ]
    )
    assert rc == 0 and Image.open(strip).size[0] >= 4 * 32

    rc = main(
        [
            "lvm",
            "eval",
            "--model",
            str(out / "model"),
            "--image-size",
            "32",
            "--frames",
            "4",
            "--items",
            "2",
            "--out",
            str(tmp_path / "eval"),
            "-q",
        ]
    )
    assert rc == 0 and (tmp_path / "eval" / "eval.json").is_file()


def test_bad_arguments_are_clear(tmp_path):
    with pytest.raises(ValueError, match="kinds"):
        LVMTrainConfig(kinds=("videos",))
    with pytest.raises(ValueError, match="loss_on"):
        LVMTrainConfig(loss_on="first")
    assert main(["lvm", "generate", "--model", str(tmp_path / "missing"), "--prompt", "a.png"]) == 2
