"""Hugging Face LLaMA import/export: logits of a small random ``LlamaForCausalLM`` (built here, never downloaded)
reproduced by the vistok backbone, and back; sharded checkpoints; refusal of what the backbone does not implement."""

import json

import pytest
import torch

from vistok.models import Transformer, TransformerConfig, from_hf_llama, to_hf_llama
from vistok.models.hf_llama import HFConversionError, hf_config_to_vistok, hf_to_vistok_name, vistok_to_hf_name

ATOL = 1e-5

# the test's LLaMA: vocab 320, hidden 64, 2 layers, 4 heads / 2 kv heads, FFN 176
HF_FIELDS = dict(
    vocab_size=320,
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=176,
    rope_theta=10000.0,
    rms_norm_eps=1e-6,
    max_position_embeddings=128,
)


def hf_llama(tie: bool = False):
    transformers = pytest.importorskip(
        "transformers", reason="transformers is not installed (pip install 'vistok[hf]'); HF comparisons skipped"
    )
    torch.manual_seed(0)
    config = transformers.LlamaConfig(**HF_FIELDS, tie_word_embeddings=tie)
    return transformers.LlamaForCausalLM(config).eval()


def random_ids(b: int = 2, n: int = 23) -> torch.Tensor:
    return torch.randint(0, 320, (b, n), generator=torch.Generator().manual_seed(3))


@torch.no_grad()
@pytest.mark.parametrize("tie", [False, True], ids=["untied", "tied"])
def test_logits_match_hf_llama_both_ways(tmp_path, tie):
    hf = hf_llama(tie)
    hf.save_pretrained(tmp_path / "hf")
    x = random_ids()
    expected = hf(x).logits

    model = from_hf_llama(tmp_path / "hf")
    assert model.config.kv_heads == 2 and model.config.ffn_dim == 176 and model.config.tie_embeddings == tie
    assert (model.output.weight is model.tok_embeddings.weight) == tie
    torch.testing.assert_close(model(x), expected, atol=ATOL, rtol=0)

    to_hf_llama(model, tmp_path / "out")
    back = type(hf).from_pretrained(tmp_path / "out").eval()  # LlamaForCausalLM
    assert back.config.tie_word_embeddings == tie
    torch.testing.assert_close(back(x).logits, expected, atol=ATOL, rtol=0)


@torch.no_grad()
def test_sharded_checkpoint_and_cached_decoding_of_an_hf_model(tmp_path):
    hf = hf_llama()
    hf.save_pretrained(tmp_path, max_shard_size="50KB")
    assert (tmp_path / "model.safetensors.index.json").is_file() and not (tmp_path / "model.safetensors").exists()
    model = from_hf_llama(tmp_path)
    x = random_ids(2, 12)
    expected = hf(x).logits
    torch.testing.assert_close(model(x), expected, atol=ATOL, rtol=0)
    model.setup_caches(2, 16)
    steps = [model(x[:, :6], input_pos=torch.arange(6))]
    steps += [model(x[:, p : p + 1], input_pos=torch.tensor([p])) for p in range(6, 12)]
    torch.testing.assert_close(torch.cat(steps, 1), expected, atol=ATOL, rtol=0)


# ---------------------------------------------------------------------------------------------------------------------
# Without transformers
# ---------------------------------------------------------------------------------------------------------------------


def tiny(**overrides) -> Transformer:
    torch.manual_seed(0)
    return Transformer(TransformerConfig.from_name("transformer-tiny", **overrides)).eval()


@torch.no_grad()
@pytest.mark.parametrize("tie", [False, True], ids=["untied", "tied"])
def test_export_then_import_is_exact(tmp_path, tie):
    model = tiny(tie_embeddings=tie, head_dim=8)  # head_dim ≠ dim / n_heads survives the trip
    to_hf_llama(model, tmp_path, dtype=torch.float64)
    hf_config = json.loads((tmp_path / "config.json").read_text())
    assert hf_config["head_dim"] == 8 and hf_config["torch_dtype"] == "float64"
    loaded = from_hf_llama(tmp_path, dtype=torch.float32)
    x = torch.randint(0, 512, (2, 9))
    assert torch.equal(loaded(x), model(x))
    assert loaded.config.tie_embeddings == tie and loaded.config.head_size == 8


def test_weight_names_map_both_ways():
    names = list(tiny().state_dict())
    assert all(hf_to_vistok_name(vistok_to_hf_name(k)) == k for k in names)
    assert vistok_to_hf_name("layers.1.feed_forward.w1.weight") == "model.layers.1.mlp.gate_proj.weight"
    assert vistok_to_hf_name("layers.0.attention_norm.weight") == "model.layers.0.input_layernorm.weight"
    assert hf_to_vistok_name("model.layers.0.self_attn.rotary_emb.inv_freq") is None


def test_config_styles_of_transformers_4_and_5():
    v4 = {**HF_FIELDS, "model_type": "llama", "rope_theta": 500000.0, "rope_scaling": None}
    assert hf_config_to_vistok(v4).rope_theta == 500000.0
    v5 = {k: v for k, v in v4.items() if k not in ("rope_theta", "rope_scaling")}
    v5["rope_parameters"] = {"rope_type": "default", "rope_theta": 250000.0}
    config = hf_config_to_vistok(v5)
    assert config.rope_theta == 250000.0 and config.causal and config.head_size == 16 and config.max_seq_len == 128


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"rope_scaling": {"rope_type": "linear", "factor": 2.0}}, "rope_scaling"),
        ({"rope_scaling": {"type": "dynamic", "factor": 2.0}}, "rope_scaling"),
        ({"rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0}}, "rope_parameters"),
        ({"attention_bias": True}, "attention_bias"),
        ({"mlp_bias": True}, "mlp_bias"),
        ({"hidden_act": "gelu"}, "hidden_act"),
        ({"model_type": "mistral"}, "model_type"),
    ],
)
def test_unsupported_configs_are_refused(tmp_path, change, message):
    (tmp_path / "config.json").write_text(json.dumps({**HF_FIELDS, "model_type": "llama", **change}))
    with pytest.raises(HFConversionError, match=message):
        from_hf_llama(tmp_path)


def test_missing_weights_pickle_files_and_unexportable_models_are_refused(tmp_path):
    to_hf_llama(tiny(), tmp_path / "ok")
    import safetensors.torch

    tensors = safetensors.torch.load_file(tmp_path / "ok" / "model.safetensors")
    del tensors["model.layers.1.mlp.up_proj.weight"]
    tensors["model.extra.weight"] = torch.zeros(1)
    safetensors.torch.save_file(tensors, tmp_path / "ok" / "model.safetensors")
    with pytest.raises(HFConversionError, match=r"up_proj[\s\S]*model\.extra\.weight"):
        from_hf_llama(tmp_path / "ok")

    (tmp_path / "pickle").mkdir()
    (tmp_path / "pickle" / "config.json").write_text(json.dumps({**HF_FIELDS, "model_type": "llama"}))
    (tmp_path / "pickle" / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="never loads pickle"):
        from_hf_llama(tmp_path / "pickle")

    with pytest.raises(HFConversionError, match="rope_axes"):
        to_hf_llama(tiny(rope_axes=2), tmp_path / "no")
    with pytest.raises(HFConversionError, match="bidirectional"):
        to_hf_llama(tiny(causal=False), tmp_path / "no")
