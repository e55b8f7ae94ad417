"""Hugging Face ``LlamaForCausalLM`` checkpoints ⇄ the vistok :class:`~vistok.models.transformer.Transformer`.

The two are the same network: both rotate queries and keys in the rotate-half layout (so q/k weights need no
permutation), compute RMSNorm statistics in float32 and cast back before the gain, and use SwiGLU without biases.
Weight names map one to one (``{i}`` = layer index)::

    model.embed_tokens.weight                       tok_embeddings.weight
    model.layers.{i}.self_attn.{q,k,v,o}_proj.weight  layers.{i}.attention.{wq,wk,wv,wo}.weight
    model.layers.{i}.mlp.gate_proj.weight           layers.{i}.feed_forward.w1.weight
    model.layers.{i}.mlp.up_proj.weight             layers.{i}.feed_forward.w3.weight
    model.layers.{i}.mlp.down_proj.weight           layers.{i}.feed_forward.w2.weight
    model.layers.{i}.input_layernorm.weight         layers.{i}.attention_norm.weight
    model.layers.{i}.post_attention_layernorm.weight  layers.{i}.ffn_norm.weight
    model.norm.weight                               norm.weight
    lm_head.weight                                  output.weight   (absent when tie_word_embeddings)

:func:`from_hf_llama` reads a checkpoint folder (``config.json`` + ``model.safetensors``, or shards listed in
``model.safetensors.index.json``) with ``safetensors`` alone — ``transformers`` is not needed — and never unpickles
``*.bin`` files. It reads ``rope_theta`` from the top level (transformers 4.x) or from ``rope_parameters``
(transformers 5.x), and refuses what the backbone does not implement: RoPE scaling (``rope_scaling`` /
``rope_parameters`` of a type other than ``"default"``), attention or MLP biases, activations other than SiLU.
:func:`to_hf_llama` writes a folder that ``LlamaForCausalLM.from_pretrained`` loads.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from vistok.models.transformer import Transformer, TransformerConfig

__all__ = [
    "HFConversionError",
    "from_hf_llama",
    "hf_config_to_vistok",
    "hf_to_vistok_name",
    "to_hf_llama",
    "vistok_config_to_hf",
    "vistok_to_hf_name",
]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"

# HF name → vistok name, per layer ({i}) and global.
_LAYER_NAMES = {
    "self_attn.q_proj": "attention.wq",
    "self_attn.k_proj": "attention.wk",
    "self_attn.v_proj": "attention.wv",
    "self_attn.o_proj": "attention.wo",
    "mlp.gate_proj": "feed_forward.w1",
    "mlp.up_proj": "feed_forward.w3",
    "mlp.down_proj": "feed_forward.w2",
    "input_layernorm": "attention_norm",
    "post_attention_layernorm": "ffn_norm",
}
_GLOBAL_NAMES = {
    "model.embed_tokens.weight": "tok_embeddings.weight",
    "model.norm.weight": "norm.weight",
    "lm_head.weight": "output.weight",
}
_HF_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)\.weight$")
_VISTOK_LAYER = re.compile(r"^layers\.(\d+)\.(.+)\.weight$")
_IGNORED = re.compile(r"rotary_emb\.inv_freq$")  # a buffer some old checkpoints stored; recomputed from rope_theta


class HFConversionError(ValueError):
    """A checkpoint or config that cannot be converted (unsupported feature, missing or unexpected weights)."""


# ---------------------------------------------------------------------------------------------------------------------
# Names
# ---------------------------------------------------------------------------------------------------------------------


def hf_to_vistok_name(name: str) -> str | None:
    """The vistok parameter name for HF weight ``name``, or None when it is not a LLaMA weight."""
    if name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[name]
    m = _HF_LAYER.match(name)
    if m and m.group(2) in _LAYER_NAMES:
        return f"layers.{m.group(1)}.{_LAYER_NAMES[m.group(2)]}.weight"
    return None


def vistok_to_hf_name(name: str) -> str:
    """The HF weight name for vistok parameter ``name``."""
    for hf, ours in _GLOBAL_NAMES.items():
        if name == ours:
            return hf
    m = _VISTOK_LAYER.match(name)
    inverse = {v: k for k, v in _LAYER_NAMES.items()}
    if m and m.group(2) in inverse:
        return f"model.layers.{m.group(1)}.{inverse[m.group(2)]}.weight"
    raise KeyError(f"{name!r} has no Hugging Face LLaMA counterpart")


# ---------------------------------------------------------------------------------------------------------------------
# Configs
# ---------------------------------------------------------------------------------------------------------------------


def _rope_theta(hf: Mapping[str, Any]) -> float:
    """rope θ from a 4.x-style (``rope_theta`` + ``rope_scaling``) or 5.x-style (``rope_parameters``) config."""
    for key in ("rope_scaling", "rope_parameters"):
        rope = hf.get(key)
        if rope is None:
            continue
        if not isinstance(rope, Mapping):
            raise HFConversionError(f"{key} must be an object or null, got {rope!r}")
        kind = rope.get("rope_type", rope.get("type", "default"))
        if kind != "default":
            raise HFConversionError(
                f"unsupported {key} {dict(rope)}: vistok's backbone implements plain RoPE only (rope_type 'default')"
            )
    params = hf.get("rope_parameters") or {}
    theta = hf.get("rope_theta", params.get("rope_theta", 10000.0))
    return float(theta)


def hf_config_to_vistok(hf: Mapping[str, Any]) -> TransformerConfig:
    """A :class:`TransformerConfig` for the HF ``LlamaConfig`` fields ``hf`` (a parsed ``config.json``)."""
    if hf.get("model_type", "llama") != "llama":
        raise HFConversionError(f"expected a LLaMA checkpoint (model_type 'llama'), got {hf.get('model_type')!r}")
    for key in ("attention_bias", "mlp_bias"):
        if hf.get(key, False):
            raise HFConversionError(f"unsupported {key}=true: vistok's backbone has no biases")
    if hf.get("hidden_act", "silu") != "silu":
        raise HFConversionError(f"unsupported hidden_act {hf['hidden_act']!r}: the backbone's SwiGLU uses SiLU")
    try:
        dim, n_heads = int(hf["hidden_size"]), int(hf["num_attention_heads"])
        return TransformerConfig(
            vocab_size=int(hf["vocab_size"]),
            dim=dim,
            n_layers=int(hf["num_hidden_layers"]),
            n_heads=n_heads,
            n_kv_heads=int(hf.get("num_key_value_heads") or n_heads),
            head_dim=int(hf.get("head_dim") or dim // n_heads),
            intermediate_size=int(hf["intermediate_size"]),
            norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            rope_theta=_rope_theta(hf),
            max_seq_len=int(hf.get("max_position_embeddings", 2048)),
            causal=True,
            tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
            init_std=float(hf.get("initializer_range", 0.02)),
        )
    except KeyError as e:
        raise HFConversionError(f"LLaMA config is missing {e.args[0]!r}") from None


def vistok_config_to_hf(config: TransformerConfig, dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    """``LlamaConfig`` fields for ``config``; raises for what HF LLaMA cannot express (N-D RoPE, bidirectional)."""
    if config.rope_axes != 1:
        raise HFConversionError(f"HF LLaMA has 1-D RoPE only; this model uses rope_axes={config.rope_axes}")
    if not config.causal:
        raise HFConversionError("HF LlamaForCausalLM is causal; this model is bidirectional (causal=False)")
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": config.vocab_size,
        "hidden_size": config.dim,
        "intermediate_size": config.ffn_dim,
        "num_hidden_layers": config.n_layers,
        "num_attention_heads": config.n_heads,
        "num_key_value_heads": config.kv_heads,
        "head_dim": config.head_size,
        "hidden_act": "silu",
        "max_position_embeddings": config.max_seq_len,
        "initializer_range": config.init_std,
        "rms_norm_eps": config.norm_eps,
        "rope_theta": config.rope_theta,
        "rope_scaling": None,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "tie_word_embeddings": config.tie_embeddings,
        "bos_token_id": None,
        "eos_token_id": None,
        "pad_token_id": None,
        "torch_dtype": str(dtype).removeprefix("torch."),
        "use_cache": True,
    }


# ---------------------------------------------------------------------------------------------------------------------
# Checkpoint files
# ---------------------------------------------------------------------------------------------------------------------


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise HFConversionError(f"{path}: invalid JSON ({e})") from e
    if not isinstance(data, dict):
        raise HFConversionError(f"{path}: expected a JSON object")
    return data


def _weight_files(folder: Path) -> list[Path]:
    """The safetensors files of a checkpoint folder: the single file, or the shards named by the index."""
    if (folder / WEIGHTS_NAME).is_file():
        return [folder / WEIGHTS_NAME]
    if (folder / INDEX_NAME).is_file():
        weight_map = _read_json(folder / INDEX_NAME).get("weight_map")
        if not isinstance(weight_map, dict):
            raise HFConversionError(f"{folder / INDEX_NAME} has no 'weight_map'")
        files = [folder / name for name in dict.fromkeys(weight_map.values())]
        absent = [f.name for f in files if not f.is_file()]
        if absent:
            raise HFConversionError(f"{folder}: shards listed in {INDEX_NAME} are missing: {absent}")
        return files
    pickled = sorted(p.name for p in folder.glob("*.bin"))
    hint = f"; found {pickled}, but vistok never loads pickle files (re-save them as safetensors)" if pickled else ""
    raise FileNotFoundError(f"{folder} has neither {WEIGHTS_NAME} nor {INDEX_NAME}{hint}")


def _iter_tensors(files: list[Path], device: torch.device) -> Iterator[tuple[str, torch.Tensor]]:
    from safetensors import safe_open

    for path in files:
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            for name in f.keys():  # noqa: SIM118 (not a dict)
                yield name, f.get_tensor(name)


# ---------------------------------------------------------------------------------------------------------------------
# Import / export
# ---------------------------------------------------------------------------------------------------------------------


def from_hf_llama(
    path_or_dir: str | os.PathLike,
    *,
    dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
) -> Transformer:
    """Load a Hugging Face ``LlamaForCausalLM`` checkpoint folder into a :class:`Transformer` (in eval mode).

    ``dtype`` casts the weights (default: keep the checkpoint's); ``device`` is where they are read to. The model is
    built on the meta device and takes the checkpoint's tensors, so no memory is spent on a random init.
    Raises :class:`HFConversionError` for unsupported configs and missing/unexpected/mis-shaped weights.
    """
    folder = Path(path_or_dir).expanduser()
    if not (folder / CONFIG_NAME).is_file():
        raise FileNotFoundError(f"{folder} has no {CONFIG_NAME}; expected a Hugging Face LLaMA checkpoint folder")
    config = hf_config_to_vistok(_read_json(folder / CONFIG_NAME))
    device = torch.device(device)
    state, unexpected = {}, []
    for name, tensor in _iter_tensors(_weight_files(folder), device):
        ours = hf_to_vistok_name(name)
        if ours is None:
            if not _IGNORED.search(name):
                unexpected.append(name)
        elif not (ours == "output.weight" and config.tie_embeddings):
            state[ours] = tensor if dtype is None else tensor.to(dtype)
    with torch.device("meta"):
        model = Transformer(config)
    expected = [k for k in model.state_dict() if not (k == "output.weight" and config.tie_embeddings)]
    missing = [vistok_to_hf_name(k) for k in expected if k not in state]
    if missing or unexpected:
        raise HFConversionError(
            f"{folder} does not match a LLaMA of its config: missing {missing or 'none'}, "
            f"unexpected {unexpected or 'none'}"
        )
    try:  # keys were checked above; this raises on shape mismatches
        model.load_state_dict(state, strict=False, assign=True)
    except RuntimeError as e:
        raise HFConversionError(f"{folder}: weights do not fit the config ({e})") from e
    if config.tie_embeddings:
        model.output.weight = model.tok_embeddings.weight
    return model.eval()


def to_hf_llama(model: Transformer, out_dir: str | os.PathLike, *, dtype: torch.dtype | None = None) -> Path:
    """Write ``model`` as a Hugging Face LLaMA folder: ``config.json`` + ``model.safetensors``; returns the folder.

    ``dtype`` casts the saved weights (default: the model's). Each file is written to a temporary name and then
    renamed (config last), so an interrupted export never leaves a half-written file.
    """
    import safetensors.torch

    state = model.state_dict()
    dtype = dtype or state["tok_embeddings.weight"].dtype
    hf_config = vistok_config_to_hf(model.config, dtype)
    tensors = {
        vistok_to_hf_name(k): v.detach().to(device="cpu", dtype=dtype).contiguous()
        for k, v in state.items()
        if not (k == "output.weight" and model.config.tie_embeddings)
    }
    folder = Path(out_dir).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    tmp_weights, tmp_config = folder / f".{WEIGHTS_NAME}.tmp", folder / f".{CONFIG_NAME}.tmp"
    try:
        safetensors.torch.save_file(tensors, str(tmp_weights), metadata={"format": "pt"})
        tmp_config.write_text(json.dumps(hf_config, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp_weights, folder / WEIGHTS_NAME)
        os.replace(tmp_config, folder / CONFIG_NAME)
    finally:
        for tmp in (tmp_weights, tmp_config):
            tmp.unlink(missing_ok=True)
    return folder
