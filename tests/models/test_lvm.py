import pytest
import torch
import torch.nn.functional as F

from vistok import create_model, from_pretrained, save_pretrained
from vistok.data.sentences import SentenceFormat
from vistok.layers import MaskSpec
from vistok.models.lvm import LVM, LVMConfig
from vistok.models.transformer import Transformer


def _tiny(**kw) -> LVM:
    torch.manual_seed(0)
    cfg = dict(
        visual_vocab=32,
        image_tokens=(2, 2),
        num_special=8,
        dim=32,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        multiple_of=16,
        max_seq_len=64,
    )
    cfg.update(kw)
    return LVM(LVMConfig(**cfg)).eval()


@pytest.mark.parametrize(
    ("name", "nominal"),
    [("lvm-300m", 300e6), ("lvm-600m", 600e6), ("lvm-1b", 1e9), ("lvm-3b", 3e9), ("lvm-7b", 7e9)],
)
def test_paper_presets_have_their_nominal_size(name, nominal):
    config = LVMConfig.from_name(name)
    assert config.vocab_size == 8292 and config.max_seq_len == 4096 and config.format.tokens_per_image == 256
    assert config.max_images == 15
    with torch.device("meta"):
        model = LVM(config)
    c = config.backbone_config()
    per_layer = 2 * c.dim * c.n_heads * c.head_size + 2 * c.dim * c.kv_heads * c.head_size + 3 * c.dim * c.ffn_dim
    assert model.num_params() == 2 * c.vocab_size * c.dim + c.n_layers * (per_layer + 2 * c.dim) + c.dim
    assert 0.85 * nominal < model.num_params() < 1.15 * nominal


def test_config_validation():
    with pytest.raises(ValueError, match="num_special"):
        LVMConfig(num_special=4)
    with pytest.raises(ValueError, match="shorter than one image"):
        LVMConfig(visual_vocab=16, image_tokens=(8, 8), max_seq_len=32)


def _manual_greedy(model: LVM, context: torch.Tensor, frames: int) -> torch.Tensor:
    """Greedy rollout by full forward passes over the growing sequence, with the frame structure applied by hand."""
    fmt = model.format
    ids = torch.stack([fmt.prompt(c) for c in context])
    out = []
    for _ in range(frames):
        ids = torch.cat([ids, torch.full((len(ids), 1), fmt.boi)], 1)
        for _ in range(fmt.tokens_per_image):
            logits = model(ids)[:, -1].clone()
            logits[:, fmt.visual_vocab :] = float("-inf")
            ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], 1)
        ids = torch.cat([ids, torch.full((len(ids), 1), fmt.eoi)], 1)
        out.append(ids[:, -1 - fmt.tokens_per_image : -1].reshape(len(ids), *fmt.image_tokens))
    return torch.stack(out, 1)


def test_greedy_generation_matches_full_forward_passes():
    model = _tiny()
    context = torch.randint(0, 32, (2, 3, 2, 2))
    got = model.generate(context, 2, temperature=0.0)
    assert got.shape == (2, 2, 2, 2)
    assert torch.equal(got, _manual_greedy(model, context, 2))


def test_sampling_stays_visual_and_is_deterministic_by_seed():
    model = _tiny()
    context = torch.randint(0, 32, (3, 2, 2, 2))
    a = model.generate(context, 3, temperature=1.5, seed=1)
    assert a.min() >= 0 and a.max() < 32
    assert torch.equal(a, model.generate(context, 3, temperature=1.5, seed=1))
    assert not torch.equal(a, model.generate(context, 3, temperature=1.5, seed=2))


def test_rollout_past_the_context_uses_a_sliding_window():
    model = _tiny(max_seq_len=20)  # BOS + 3 images of 6 ids
    context = torch.randint(0, 32, (1, 2, 2, 2))
    out = model.generate(context, 5, temperature=0.0)  # 13 + 30 ids > 20: windowed
    assert out.shape == (1, 5, 2, 2)
    # the first new image only sees the prompt (13 ids, within the window): identical to the full-cache greedy
    assert torch.equal(out[:, :1], _manual_greedy(model, context, 1))
    with pytest.raises(ValueError, match="exceeds the context"):
        model.generate(torch.randint(0, 32, (1, 4, 2, 2)), 1)


def test_target_nll_equals_a_manual_cross_entropy():
    model = _tiny()
    fmt = model.format
    ctx, tgt = torch.randint(0, 32, (2, 2, 2, 2)), torch.randint(0, 32, (2, 2, 2))
    got = model.target_nll(ctx, tgt)
    for b in range(2):
        ids = fmt.prompt(torch.cat([ctx[b], tgt[b][None]]))
        logits = model(ids[None])[0]
        start = len(ids) - 1 - 4  # the target's visual ids sit before the final EOI
        lp = logits[start - 1 : start + 3, :32].log_softmax(-1)
        want = -lp.gather(1, ids[start : start + 4, None]).mean()
        assert torch.allclose(got[b], want, atol=1e-5)
    no_ctx = model.target_nll(None, tgt)
    assert no_ctx.shape == (2,) and torch.isfinite(no_ctx).all()


def test_packed_windows_never_attend_across_sentences():
    """Gradient check: the loss on sentence 2 of a packed window does not depend on sentence 1's embeddings, and a
    sentence's logits in a packed window equal its logits alone."""
    model = _tiny()
    fmt: SentenceFormat = model.format
    s1, s2 = fmt.encode(torch.randint(0, 32, (2, 2, 2))), fmt.encode(torch.randint(0, 32, (3, 2, 2)))
    ids = torch.cat([s1, s2])[None]
    doc = torch.cat([torch.zeros(len(s1)), torch.ones(len(s2))]).long()[None]
    pos = torch.cat([torch.arange(len(s1)), torch.arange(len(s2))])[None]
    emb = model.backbone.tok_embeddings(ids).detach().requires_grad_(True)
    h = model.backbone.forward_hidden(embeds=emb, positions=pos, mask=MaskSpec(True, doc_ids=doc))
    logits = model.backbone.output(h)
    loss2 = F.cross_entropy(logits[0, len(s1) : -1], ids[0, len(s1) + 1 :])
    loss2.backward()
    assert emb.grad[0, : len(s1)].abs().max() == 0
    assert emb.grad[0, len(s1) :].abs().max() > 0
    alone = model(s2[None])
    assert torch.allclose(logits[0, len(s1) :], alone[0], atol=1e-5)


def test_save_load_round_trip_and_registry(tmp_path):
    model = _tiny()
    path = save_pretrained(model, tmp_path / "lvm")
    loaded = from_pretrained(path)
    assert isinstance(loaded, LVM) and loaded.format == model.format
    ids = model.format.encode(torch.randint(0, 32, (2, 2, 2)))[None]
    assert torch.equal(loaded(ids), model(ids))
    tiny = create_model("lvm-tiny")
    assert isinstance(tiny.backbone, Transformer) and tiny.format == SentenceFormat(1024, (8, 8))
    assert tiny.config.max_images == 15


def test_shipped_lvm_loads_and_matches_the_shipped_tokenizer():
    import json

    from vistok.hub import from_pretrained
    from vistok.models.lvm import LVM, shipped_lvm_dir
    from vistok.train.lvm import load_run_tokenizer

    folder = shipped_lvm_dir()
    model = from_pretrained(folder)
    assert isinstance(model, LVM) and (folder / "MODEL_CARD.md").is_file()
    assert json.loads((folder / "tokenizer.json").read_text())["source"] == "default"
    tok = load_run_tokenizer(folder, device="cpu")  # checks the recorded tokenizer config against the shipped one
    assert tok.codebook_size == model.config.visual_vocab
    # it has learned the clips: a real clip's next frames are far more likely than under a uniform guess
    from vistok.data.sentences import builtin_sentences

    clip = builtin_sentences("train", 64, ["video"], 1, frames=4, seed=123)[0]["images"]
    with torch.no_grad():
        grids = tok.encode(clip.to(torch.float32), pad=True).long()
        nll = model.eval().target_nll(grids[None, :-1], grids[None, -1])
    assert float(nll.exp()) < model.config.visual_vocab / 4
