"""Chat-UniVi: image and video understanding with dynamic visual tokens (Jin et al., "Chat-UniVi: Unified Visual
Representation Empowers Large Language Models with Image and Video Understanding", CVPR 2024, §3).

    patch features  F = E(pixels)                       frozen encoder (default: MAGVIT-v2 pre-quantization latents
                                                        of the shipped tokenizer; or a local HF CLIP/SigLIP/DINOv2)
    visual tokens   V = R(F)                            R = "merge": multi-scale DPC-KNN (§3.1, 64 → 32 → 16 clusters,
                                                        outputs concatenated: 112 tokens for 256 patches); video: frames
                                                        → contiguous events → the multi-scale merge per event (§3.2),
                                                        events concatenated in time order. R = "pool": uniform average
                                                        pooling to the same count; R = "all": every patch.
    embeddings      e_i = MLP(v_i) + P(pos_i) + S[scale_i]   one projection for all scales (as the paper)
    answer          a = LM(BOS BOI e_1 … e_L EOI question-bytes " ")   causal byte-level LLaMA (vistok Transformer)

**Positions.** Merged tokens carry no position in the public code and are ordered by score. Here every visual token
is ordered by its centroid (t, y, x) within its scale (stage-major: stage 0's tokens in (t, y, x) order, then stage
1's, …; video: event-major, then stage, then (t, y, x)) and gets a *learned embedding of its centroid* added to the
projected token: P = Linear over Fourier features (sin/cos of π·2^k·p, k < ``pos_freqs``) of the normalized
centroid p ∈ [0, 1]³ (t / (T − 1), y / (h − 1), x / (w − 1)), plus a learned scale embedding S (merge stage s, or
"all patches", or "pooled"). The LM itself uses its ordinary 1-D rotary positions over the sequence index, so a
vistok or Hugging Face LLaMA is used unchanged. P and S belong to the projector (trained in stage 1).

**Sequence format** (ids of :class:`~vistok.tokenizers.text.ByteTokenizer`): ``BOS BOI [L visual slots] EOI`` then
one or more turns ``question-bytes " " answer-bytes EOS``. Training takes the loss on answer bytes and EOS only
(:meth:`UniVi.build_batch` gives the targets, ignore = −100). Answering prefills ``BOS BOI V EOI question " "`` and
decodes greedily with the LM's static KV cache until EOS (:meth:`UniVi.answer`; batches are left-padded and padding
keys are masked, which is exact because RoPE only sees position differences).

**Language model.** By default a byte-level vistok LLaMA trained from scratch; :meth:`UniVi.from_llm` (``vistok univi
train --llm DIR``) uses a local Hugging Face ``LlamaForCausalLM`` folder instead, with its ``tokenizer.json``.

**Feature normalization.** The projector standardizes each feature channel with the training features' statistics
(:class:`FeatureStandardizer`); a per-token LayerNorm over MAGVIT-v2's 10 channels erases each token's mean and scale
over its channels, and with them much of the colour a linear read-out finds (``feature_norm="layer"`` keeps it).

Presets: ``univi-tiny`` (CPU: 4 layers × 128 dims) and ``univi-small`` (8 layers × 384 dims).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vistok.hub import PretrainedMixin
from vistok.models.transformer import Transformer, TransformerConfig
from vistok.registry import PresetMixin, register_model
from vistok.tokenizers.merge import (
    KS,
    multiscale_merge,
    pool_merge,
    spatial_order,
    video_events,
)
from vistok.tokenizers.text import ByteTokenizer, HFTextTokenizer, TextTokenizer

__all__ = [
    "IGNORE",
    "PRESETS",
    "REDUCTIONS",
    "UniVi",
    "UniViBatch",
    "UniViConfig",
    "VisualTokens",
    "reduce_features",
    "scaled_stages",
    "shipped_univi_dir",
]

REDUCTIONS = ("merge", "pool", "all")
IGNORE = -100  # target of positions without loss
FEATURE_NORMS = ("standard", "layer")
TOKENIZER_NAME = "tokenizer.json"  # a saved model's copy of its text tokenizer (when not bytes)
SCALE_ALL, SCALE_POOL, NUM_SCALES = 6, 7, 8  # scale ids: merge stage s → min(s, 5); every patch; pooled
ENCODERS = ("magvit",)  # or a local folder of a Hugging Face vision model

# ---------------------------------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class UniViConfig(PresetMixin):
    """Hyper-parameters of :class:`UniVi`.

    - ``encoder``: "magvit" (the shipped MAGVIT-v2 tokenizer's pre-quantization latents; ``encoder_path`` a tokenizer
      folder/preset instead), "vit" (``encoder_path``: a small vistok ViT folder, or a ``vistok digit fit`` run whose
      DINO-trained ViT is used) or "hf" (``encoder_path``: a local CLIP / SigLIP / DINOv2 folder). ``feature_dim``:
      the channels of its patch features (10 for the shipped MAGVIT-v2).
    - ``reduction``: the default visual-token reduction, one of :data:`REDUCTIONS`; ``stages`` / ``ks``: the image
      merge stages (default 64, 32, 16 = 112 tokens for 256 patches); ``video_stages``: per-event stages;
      ``frames_per_event``: K = ⌈T / frames_per_event⌉ contiguous events per clip.
    - LM: ``dim``, ``n_layers``, ``n_heads``, ``n_kv_heads``, ``max_seq_len`` of the byte-level LLaMA; ``vocab_size``
      is the byte tokenizer's (derived). ``pos_freqs``: Fourier frequencies per coordinate of the position embedding.
    - ``llm``: the fields of a Hugging Face ``LlamaConfig`` (a parsed ``config.json``) to use as the language model
      instead of the byte-level LLaMA above (its shape replaces ``dim`` … ``max_seq_len``; the weights come from
      :meth:`UniVi.from_llm`). ``text_tokenizer``: a ``tokenizer.json`` for the text (None: bytes); a relative path
      is taken relative to the model folder by :meth:`UniVi.from_pretrained` (a saved model stores its copy as
      ``tokenizer.json``). ``vocab_size`` (derived) is the LM's: the checkpoint's, grown to hold the tokenizer's
      appended special ids when a ``tokenizer.json`` is used; without one, the checkpoint's vocabulary must hold the
      byte tokenizer's 272 ids.
    - ``feature_norm``: how the projector normalizes patch features: "standard" (per-channel standardization with
      the training features' statistics, set by ``vistok univi train``) or "layer" (a per-token LayerNorm).
    """

    encoder: str = "magvit"
    encoder_path: str | None = None
    feature_dim: int = 10
    reduction: str = "merge"
    stages: tuple[int, ...] = (64, 32, 16)
    ks: tuple[int, ...] = KS
    video_stages: tuple[int, ...] = (32, 16, 8)
    frames_per_event: int = 4
    dim: int = 128
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int | None = None
    max_seq_len: int = 1024
    pos_freqs: int = 6
    init_std: float = 0.02
    llm: dict[str, Any] | None = None
    text_tokenizer: str | None = None
    feature_norm: str = "standard"

    vocab_size: int = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.reduction not in REDUCTIONS:
            raise ValueError(f"UniViConfig.reduction must be one of {REDUCTIONS}, got {self.reduction!r}")
        if self.feature_norm not in FEATURE_NORMS:
            raise ValueError(f"UniViConfig.feature_norm must be one of {FEATURE_NORMS}, got {self.feature_norm!r}")
        if self.encoder not in ("magvit", "vit", "hf"):
            raise ValueError(f"UniViConfig.encoder must be 'magvit', 'vit' or 'hf', got {self.encoder!r}")
        if self.encoder in ("vit", "hf") and not self.encoder_path:
            what = "a local Hugging Face vision model folder" if self.encoder == "hf" else "a vistok ViT folder"
            raise ValueError(f"UniViConfig.encoder={self.encoder!r} needs encoder_path ({what})")
        self.stages, self.ks, self.video_stages = tuple(self.stages), tuple(self.ks), tuple(self.video_stages)
        if len(self.stages) != len(self.ks) or len(self.video_stages) != len(self.ks):
            raise ValueError(
                f"stages {self.stages}, video_stages {self.video_stages} and ks {self.ks} need equal length"
            )
        for name in ("feature_dim", "dim", "n_layers", "n_heads", "max_seq_len", "frames_per_event", "pos_freqs"):
            if getattr(self, name) < 1:
                raise ValueError(f"UniViConfig.{name} must be >= 1, got {getattr(self, name)}")
        text_size = len(self.tokenizer())
        if self.llm is None:
            self.vocab_size = text_size
            return
        from vistok.models.hf_llama import hf_config_to_vistok

        self.llm = dict(self.llm)
        hf_vocab = hf_config_to_vistok(self.llm).vocab_size  # validates the LLaMA config
        if self.text_tokenizer is None and hf_vocab < text_size:
            raise ValueError(
                f"the language model's vocabulary ({hf_vocab} ids) cannot hold the byte tokenizer's {text_size} ids "
                "(bytes 0-255 + specials); give the model folder a tokenizer.json, or use a model with a vocabulary "
                f"of at least {text_size}"
            )
        self.vocab_size = max(hf_vocab, text_size)

    def tokenizer(self) -> TextTokenizer:
        """The text tokenizer: bytes, or :class:`~vistok.tokenizers.text.HFTextTokenizer` of ``text_tokenizer``."""
        if self.text_tokenizer is None:
            return ByteTokenizer()
        path = Path(self.text_tokenizer).expanduser()
        if not path.exists():
            raise FileNotFoundError(
                f"UniViConfig.text_tokenizer {self.text_tokenizer!r} does not exist (a saved model's relative "
                "'tokenizer.json' is resolved by UniVi.from_pretrained / load_univi)"
            )
        return HFTextTokenizer(path)

    def lm_config(self) -> TransformerConfig:
        if self.llm is not None:
            from vistok.models.hf_llama import hf_config_to_vistok

            return dataclasses.replace(hf_config_to_vistok(self.llm), vocab_size=self.vocab_size)
        return TransformerConfig(
            vocab_size=self.vocab_size,
            dim=self.dim,
            n_layers=self.n_layers,
            n_heads=self.n_heads,
            n_kv_heads=self.n_kv_heads,
            multiple_of=32,
            max_seq_len=self.max_seq_len,
            init_std=self.init_std,
        )


# ---------------------------------------------------------------------------------------------------------------------
# Visual-token reduction (parameter-free)
# ---------------------------------------------------------------------------------------------------------------------


class VisualTokens(NamedTuple):
    """Reduced visual tokens of a batch, ordered as they enter the LM.

    tokens (B, L, C) features; positions (B, L, 3) normalized centroid (t, y, x) ∈ [0, 1]; scale (B, L) long scale
    ids; valid (B, L) bool (invalid slots are dropped when the sequence is built).
    """

    tokens: Tensor
    positions: Tensor
    scale: Tensor
    valid: Tensor

    @property
    def counts(self) -> Tensor:
        """(B,) visual tokens per sample."""
        return self.valid.sum(1)

    @staticmethod
    def empty(batch: int, channels: int) -> VisualTokens:
        """No visual tokens at all (the text-only baseline)."""
        z = torch.zeros(batch, 0)
        return VisualTokens(torch.zeros(batch, 0, channels), torch.zeros(batch, 0, 3), z.long(), z.bool())


def scaled_stages(stages: tuple[int, ...], num_tokens: int | None) -> tuple[int, ...]:
    """Stages with the same ratios summing to ``num_tokens`` (e.g. (64, 32, 16) → (32, 16, 8) for 56)."""
    if num_tokens is None or num_tokens == sum(stages):
        return tuple(stages)
    total = sum(stages)
    out = [max(1, round(s * num_tokens / total)) for s in stages]
    out[0] += num_tokens - sum(out)
    if min(out) < 1:
        raise ValueError(f"cannot split {num_tokens} tokens over {len(stages)} stages")
    return tuple(out)


def _normalize(pos: Tensor, grid: tuple[int, int, int]) -> Tensor:
    scale = torch.tensor([max(g - 1, 1) for g in grid], dtype=pos.dtype, device=pos.device)
    return pos / scale


def _check_reduction(reduction: str) -> str:
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; expected one of {REDUCTIONS}")
    return reduction


def _grid_positions(t: int, h: int, w: int, device: torch.device) -> Tensor:
    axes = [torch.arange(s, device=device, dtype=torch.float32) for s in (t, h, w)]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(t * h * w, 3)


def _reduce_image(x: Tensor, grid: tuple[int, int], reduction: str, stages, ks) -> VisualTokens:
    b, n, _ = x.shape
    h, w = grid
    dev = x.device
    pos = _grid_positions(1, h, w, dev)
    if reduction == "all":
        scale = torch.full((b, n), SCALE_ALL, dtype=torch.long, device=dev)
        valid = torch.ones(b, n, dtype=torch.bool, device=dev)
        return VisualTokens(x, _normalize(pos, (1, h, w)).expand(b, n, 3), scale, valid)
    if reduction == "pool":
        r = pool_merge(x, sum(stages), grid=(h, w))
        cpos = r.weights() @ pos  # (B, M, 3) centroid of each cell (already raster order)
        scale = torch.full(r.valid.shape, SCALE_POOL, dtype=torch.long, device=dev)
        return VisualTokens(r.tokens, _normalize(cpos, (1, h, w)), scale, r.valid)
    ms = multiscale_merge(x, pos, stages, ks).sort_by_position()
    scale = ms.stage.clamp_max(5).expand(b, -1)
    return VisualTokens(ms.tokens, _normalize(ms.positions, (1, h, w)), scale, ms.valid)


def _reduce_video(x: Tensor, grid: tuple[int, int], reduction: str, stages, ks, frames_per_event: int):
    b, t, n, c = x.shape
    h, w = grid
    dev = x.device
    if reduction == "all":
        pos = _normalize(_grid_positions(t, h, w, dev), (t, h, w)).expand(b, t * n, 3)
        scale = torch.full((b, t * n), SCALE_ALL, dtype=torch.long, device=dev)
        return VisualTokens(x.reshape(b, t * n, c), pos, scale, torch.ones(b, t * n, dtype=torch.bool, device=dev))
    k = math.ceil(t / frames_per_event)
    if reduction == "pool":  # uniform in time (K equal chunks of frames) and in space (a rows × cols grid per chunk)
        chunk = torch.arange(t, device=dev) * k // t
        counts = torch.bincount(chunk, minlength=k).to(x.dtype)
        means = x.new_zeros(b, k, n, c).index_add_(1, chunk, x) / counts[None, :, None, None]
        r = pool_merge(means.reshape(b * k, n, c), sum(stages), grid=(h, w))
        yx = _grid_positions(1, h, w, dev)
        cpos = r.weights() @ yx  # (B·K, M, 3) with t = 0
        tmean = torch.zeros(k, device=dev).index_add_(0, chunk, torch.arange(t, device=dev).float()) / counts
        cpos[..., 0] = tmean.repeat(b)[:, None]
        m = r.tokens.shape[1]
        scale = torch.full((b, k * m), SCALE_POOL, dtype=torch.long, device=dev)
        pos = _normalize(cpos.reshape(b, k * m, 3), (t, h, w))
        return VisualTokens(r.tokens.reshape(b, k * m, c), pos, scale, r.valid.reshape(b, k * m))
    vm = video_events(x, num_events=k, stages=stages, ks=ks, positions=(h, w))
    per_stage = len(stages)
    groups = torch.where(vm.valid, vm.event * per_stage + vm.stage, 10**6).float()
    perm = spatial_order(vm.positions, vm.valid, groups=groups)
    take = lambda v: v.gather(1, perm.view(*perm.shape, *([1] * (v.ndim - 2))).expand(*perm.shape, *v.shape[2:]))
    scale = take(vm.stage).clamp(0, 5)
    return VisualTokens(take(vm.tokens), _normalize(take(vm.positions), (t, h, w)), scale, take(vm.valid))


def reduce_features(
    features: Tensor,
    grid: tuple[int, int],
    reduction: str = "merge",
    stages: tuple[int, ...] = (64, 32, 16),
    ks: tuple[int, ...] = KS,
    *,
    video_stages: tuple[int, ...] = (32, 16, 8),
    frames_per_event: int = 4,
    num_tokens: int | None = None,
) -> VisualTokens:
    """Patch features (B, N, C) of images or (B, T, N, C) of videos on an (h, w) grid → :class:`VisualTokens`.

    ``num_tokens`` rescales the stages (per image, or per event for videos) to that total, keeping their ratios.
    """
    reduction = _check_reduction(reduction)
    if not isinstance(features, Tensor) or features.ndim not in (3, 4) or not features.is_floating_point():
        got = tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__
        raise ValueError(f"features must be float (B, N, C) for images or (B, T, N, C) for videos, got {got}")
    h, w = (int(g) for g in grid)
    if features.shape[-2] != h * w:
        raise ValueError(f"features have {features.shape[-2]} patches per frame, the grid {h}×{w} has {h * w}")
    features = features.float()
    if features.ndim == 3:
        return _reduce_image(features, (h, w), reduction, scaled_stages(stages, num_tokens), ks)
    return _reduce_video(features, (h, w), reduction, scaled_stages(video_stages, num_tokens), ks, frames_per_event)


# ---------------------------------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------------------------------


class UniViBatch(NamedTuple):
    """A built batch: embeds (B, S, D) LM inputs; ids (B, S) text ids (pad at visual slots and padding); targets
    (B, S) next-token targets (IGNORE where no loss); attend (B, S) bool real (non-padding) positions."""

    embeds: Tensor
    ids: Tensor
    targets: Tensor
    attend: Tensor


class FeatureStandardizer(nn.Module):
    """x ↦ (x − mean) / std per channel, with the frozen encoder's channel statistics (buffers, saved with the model;
    identity until :meth:`set_stats`). Unlike a per-token LayerNorm it keeps each token's mean and norm over its
    channels, which matter for low-dimensional features: over MAGVIT-v2's 10 latent channels a LayerNorm removes two
    of ten degrees of freedom, and with them much of the colour a linear read-out finds."""

    def __init__(self, feature_dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(feature_dim))
        self.register_buffer("std", torch.ones(feature_dim))

    @torch.no_grad()
    def set_stats(self, features: Tensor, eps: float = 1e-4) -> None:
        """Per-channel mean and std of ``features`` (..., C) (e.g. every cached training patch)."""
        f = features.reshape(-1, features.shape[-1]).double()
        self.mean.copy_(f.mean(0).to(self.mean))
        self.std.copy_(f.std(0).clamp_min(eps).to(self.std))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


class Projector(nn.Module):
    """One projection for all scales: feature normalization → Linear → GELU → Linear, plus the centroid-position and
    scale embeddings. ``feature_norm``: "standard" (:class:`FeatureStandardizer`) or "layer" (a LayerNorm, as the
    first version; kept to load its checkpoints)."""

    def __init__(self, feature_dim: int, dim: int, pos_freqs: int, feature_norm: str = "standard") -> None:
        super().__init__()
        if feature_norm not in FEATURE_NORMS:
            raise ValueError(f"feature_norm must be one of {FEATURE_NORMS}, got {feature_norm!r}")
        self.norm = FeatureStandardizer(feature_dim) if feature_norm == "standard" else nn.LayerNorm(feature_dim)
        self.fc1 = nn.Linear(feature_dim, dim)
        self.fc2 = nn.Linear(dim, dim)
        self.pos = nn.Linear(3 * 2 * pos_freqs, dim)
        self.scale = nn.Embedding(NUM_SCALES, dim)
        self.register_buffer("freqs", math.pi * 2.0 ** torch.arange(pos_freqs).float(), persistent=False)
        nn.init.normal_(self.scale.weight, std=0.02)

    def forward(self, vt: VisualTokens) -> Tensor:
        x = self.fc2(F.gelu(self.fc1(self.norm(vt.tokens))))
        ang = (vt.positions[..., None] * self.freqs).flatten(-2)
        return x + self.pos(torch.cat([ang.sin(), ang.cos()], -1)) + self.scale(vt.scale)


class UniVi(nn.Module, PretrainedMixin):
    """Chat-UniVi understanding model: frozen patch features → reduction → projector → byte-level causal LM.

    The feature encoder is *not* a submodule (it is frozen, loaded from its own weights on first use and never
    saved); ``model.projector`` and ``model.lm`` hold every trainable parameter.
    """

    config_class = UniViConfig

    def __init__(self, config: UniViConfig, lm: Transformer | None = None) -> None:
        super().__init__()
        self.config = config
        self.text = config.tokenizer()
        lm_config = config.lm_config()
        if lm is not None and (lm.config.dim, lm.config.vocab_size) != (lm_config.dim, lm_config.vocab_size):
            raise ValueError(
                f"the given LM (dim {lm.config.dim}, vocab {lm.config.vocab_size}) does not fit the config "
                f"(dim {lm_config.dim}, vocab {lm_config.vocab_size})"
            )
        self.projector = Projector(config.feature_dim, lm_config.dim, config.pos_freqs, config.feature_norm)
        self.lm = lm if lm is not None else Transformer(lm_config)
        self.__dict__["_encoder"] = None  # not a submodule: never in the state dict, never trained

    # -- a Hugging Face LLaMA as the language model

    @classmethod
    def from_llm(cls, llm_dir: str | os.PathLike, config: UniViConfig | None = None, **overrides: Any) -> UniVi:
        """A UniVi whose language model is the Hugging Face ``LlamaForCausalLM`` folder ``llm_dir`` (loaded with
        :func:`vistok.models.hf_llama.from_hf_llama`, in float32), with the folder's ``tokenizer.json`` for the text
        when it has one (else bytes, which the checkpoint's vocabulary must hold). The projector is new (random).

        With a ``tokenizer.json``, the vistok specials (BOS, EOS, BOI, EOI, PAD, …) are appended after its vocabulary;
        rows the checkpoint lacks are added to the embedding and output tables, initialised to the mean of the
        existing rows (every checkpoint row is kept as is). ``config`` / ``overrides``: the other UniVi settings.
        """
        from vistok.models.hf_llama import CONFIG_NAME, _read_json, from_hf_llama

        folder = Path(llm_dir).expanduser()
        if not (folder / CONFIG_NAME).is_file():
            raise FileNotFoundError(f"{folder} has no {CONFIG_NAME}; expected a Hugging Face LlamaForCausalLM folder")
        tok = folder / "tokenizer.json"
        fields = {f.name: getattr(config, f.name) for f in dataclasses.fields(UniViConfig) if f.init} if config else {}
        fields |= overrides | {
            "llm": _read_json(folder / CONFIG_NAME),
            "text_tokenizer": str(tok) if tok.is_file() else None,
        }
        cfg = UniViConfig(**fields)
        lm = _grow_vocab(from_hf_llama(folder, dtype=torch.float32), cfg.vocab_size)
        return cls(cfg, lm=lm)

    def save_pretrained(self, save_directory: str | os.PathLike) -> Path:
        """``config.json`` + ``model.safetensors``, plus a copy of the text tokenizer's ``tokenizer.json`` when the
        model uses one (the saved config then names it relative to the folder)."""
        if self.config.text_tokenizer is None:
            return super().save_pretrained(save_directory)
        source = Path(self.text.path)
        saved = self.config
        self.config = copy.copy(saved)  # not dataclasses.replace: the relative name need not resolve here
        self.config.text_tokenizer = TOKENIZER_NAME
        try:
            folder = super().save_pretrained(save_directory)
        finally:
            self.config = saved
        if source.resolve() != (folder / TOKENIZER_NAME).resolve():
            shutil.copyfile(source, folder / TOKENIZER_NAME)
        return folder

    @classmethod
    def from_pretrained(cls, path_or_id: str | os.PathLike, **kwargs: Any) -> UniVi:
        """As :meth:`PretrainedMixin.from_pretrained`, resolving a relative ``text_tokenizer`` in the model folder."""
        folder = Path(path_or_id).expanduser()
        if folder.is_dir() and (folder / "config.json").is_file():
            import json

            saved = json.loads((folder / "config.json").read_text(encoding="utf-8"))
            tok = saved.get("text_tokenizer")
            if tok is not None and not Path(tok).is_absolute() and "text_tokenizer" not in kwargs:
                kwargs["text_tokenizer"] = str(folder / tok)
            if "feature_norm" not in saved and "feature_norm" not in kwargs:
                kwargs["feature_norm"] = "layer"  # saved before the field existed: a LayerNorm
        return super().from_pretrained(path_or_id, **kwargs)

    # -- features and visual tokens

    def set_encoder(self, encoder: Any) -> None:
        """Use ``encoder`` (a loaded MAGVIT-v2 tokenizer, a :class:`~vistok.tokenizers.merge.ViTPatchEncoder` or an
        :class:`~vistok.tokenizers.merge.HFPatchEncoder`)."""
        self.__dict__["_encoder"] = encoder

    def encoder(self) -> Any:
        """The frozen feature encoder (loaded on first use; never trained, never saved)."""
        if self._encoder is None:
            if self.config.encoder == "hf":
                from vistok.tokenizers.merge import HFPatchEncoder

                self.__dict__["_encoder"] = HFPatchEncoder(self.config.encoder_path, device=self._device())
            elif self.config.encoder == "vit":
                from vistok.tokenizers.merge import ViTPatchEncoder

                self.__dict__["_encoder"] = ViTPatchEncoder(self.config.encoder_path, device=self._device())
            else:
                from vistok.tokenizers.api import load_tokenizer

                tok = load_tokenizer(self.config.encoder_path, self._device())
                tok.requires_grad_(False)
                self.__dict__["_encoder"] = tok.eval()
        return self._encoder

    def _device(self) -> torch.device:
        return self.lm.tok_embeddings.weight.device

    @torch.no_grad()
    def features(self, pixels: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """Pixels in [−1, 1], images (B, 3, H, W) or videos (B, 3, T, H, W) → (patch features (B, N, C) or
        (B, T, N, C), grid (h, w))."""
        from vistok.tokenizers.merge import magvit_features

        enc = self.encoder()
        f = magvit_features(pixels, enc) if self.config.encoder == "magvit" else enc(pixels)
        if f.tokens.shape[-1] != self.config.feature_dim:
            raise ValueError(
                f"the encoder gives {f.tokens.shape[-1]}-dim features, the model expects feature_dim="
                f"{self.config.feature_dim}"
            )
        return f.tokens, f.grid[1:]

    def visual_tokens(
        self, features: Tensor, grid: tuple[int, int], reduction: str | None = None, num_tokens: int | None = None
    ) -> VisualTokens:
        """:func:`reduce_features` with this model's stages (``reduction`` default: the config's)."""
        c = self.config
        return reduce_features(
            features.to(self._device()),
            grid,
            reduction or c.reduction,
            c.stages,
            c.ks,
            video_stages=c.video_stages,
            frames_per_event=c.frames_per_event,
            num_tokens=num_tokens,
        )

    def num_events(self, features: Tensor, reduction: str | None = None) -> int | None:
        """Events per sample that ``reduction`` splits ``features`` into: 1 for images (B, N, C); for videos
        (B, T, N, C) min(T, ⌈T / frames_per_event⌉) for "merge" and "pool" (a ``num_tokens`` count is *per event*),
        None for "all" (every patch of every frame; no events)."""
        reduction = _check_reduction(reduction or self.config.reduction)
        if features.ndim == 3:
            return 1
        if reduction == "all":
            return None
        t = int(features.shape[1])
        return min(t, math.ceil(t / self.config.frames_per_event))

    def embed_visual(self, vt: VisualTokens) -> Tensor:
        """Projected visual tokens (B, L, dim)."""
        return self.projector(vt._replace(tokens=vt.tokens.to(self._device()).float()))

    # -- sequences

    def _prompt_ids(self, question: str) -> list[int]:
        return self.text.encode(question + " ", bos=False, eos=False)

    def sequence_ids(self, num_visual: int, turns: list[tuple[str, str | None]]) -> tuple[list[int], list[int]]:
        """Ids of one sample (visual slots as PAD) and, per position, 1 where the *next* id is a loss target.

        ``turns``: (question, answer) pairs; an answer of None ends the sequence at the prompt (for answering).
        """
        t = self.text
        ids = [t.bos_id, t.boi_id] + [t.pad_id] * num_visual + [t.eoi_id]
        loss = [0] * len(ids)
        for q, a in turns:
            p = self._prompt_ids(q)
            ids += p
            loss += [0] * len(p)
            if a is not None:
                ans = t.encode(a, bos=False, eos=True)
                ids += ans
                loss += [1] * len(ans)
        # loss[i] = 1 marks that ids[i] is a target, i.e. the prediction made at position i − 1
        return ids, loss

    def build_batch(self, vt: VisualTokens, turns: list[list[tuple[str, str | None]]], left_pad: bool = False):
        """Embeddings, ids, targets and attention validity of a batch (right-padded for training, ``left_pad`` for
        answering). Visual slots with ``valid`` False are dropped."""
        b = vt.tokens.shape[0]
        if len(turns) != b:
            raise ValueError(f"{b} visual samples but {len(turns)} lists of turns")
        dev = self._device()
        vis = self.embed_visual(vt) if vt.tokens.shape[1] else None
        rows = []
        for i in range(b):
            keep = vt.valid[i].nonzero().flatten().to(dev)
            ids, loss = self.sequence_ids(len(keep), turns[i])
            rows.append((ids, loss, keep))
        s = max(len(r[0]) for r in rows)
        pad = self.text.pad_id
        ids_t = torch.full((b, s), pad, dtype=torch.long, device=dev)
        targets = torch.full((b, s), IGNORE, dtype=torch.long, device=dev)
        attend = torch.zeros(b, s, dtype=torch.bool, device=dev)
        vis_mask = torch.zeros(b, s, dtype=torch.bool, device=dev)
        vis_rows = []
        for i, (ids, loss, keep) in enumerate(rows):
            o = s - len(ids) if left_pad else 0
            ids_t[i, o : o + len(ids)] = torch.tensor(ids, device=dev)
            attend[i, o : o + len(ids)] = True
            tgt = torch.tensor([ids[j + 1] if loss[j + 1] else IGNORE for j in range(len(ids) - 1)] + [IGNORE])
            targets[i, o : o + len(ids)] = tgt.to(dev)
            vis_mask[i, o + 2 : o + 2 + len(keep)] = True
            if len(keep):
                vis_rows.append(vis[i, keep])
        embeds = self.lm.tok_embeddings(ids_t)
        if vis_rows:
            embeds = embeds.masked_scatter(vis_mask[..., None], torch.cat(vis_rows).to(embeds.dtype))
        return UniViBatch(embeds, ids_t, targets, attend)

    def forward(self, batch: UniViBatch) -> Tensor:
        """Logits (B, S, V) of a right-padded batch (causal; padding only follows real tokens)."""
        return self.lm(embeds=batch.embeds)

    # -- answering

    @torch.no_grad()
    def answer(
        self, vt: VisualTokens, questions: list[str], max_new_tokens: int = 48, use_cache: bool = True
    ) -> list[str]:
        """Greedy answers, one per sample, decoding until EOS (KV cache; ``use_cache=False``: full forwards)."""
        batch = self.build_batch(vt, [[(q, None)] for q in questions], left_pad=True)
        ids = self._greedy(batch, max_new_tokens) if use_cache else self._greedy_full(batch, max_new_tokens)
        return [self.text.decode(self._until_eos(row)) for row in ids.tolist()]

    def _until_eos(self, row: list[int]) -> list[int]:
        return row[: row.index(self.text.eos_id)] if self.text.eos_id in row else row

    def _greedy(self, batch: UniViBatch, max_new_tokens: int) -> Tensor:
        lm, eos = self.lm, self.text.eos_id
        b, s = batch.ids.shape
        total = s + max_new_tokens
        lm.setup_caches(b, total)
        try:
            keys = torch.ones(b, total, dtype=torch.bool, device=batch.ids.device)
            keys[:, :s] = batch.attend
            own = torch.eye(s, total, dtype=torch.bool, device=keys.device)  # padding rows attend to themselves only
            mask = (keys[:, None, None, :] | own[None, None]).expand(b, 1, s, total)
            logits = lm(embeds=batch.embeds, input_pos=torch.arange(s, device=keys.device), mask=mask)[:, -1]
            out, done = [], torch.zeros(b, dtype=torch.bool, device=keys.device)
            for t in range(max_new_tokens):
                nxt = logits.float().argmax(-1).masked_fill(done, eos)
                out.append(nxt)
                done |= nxt == eos
                if bool(done.all()) or t == max_new_tokens - 1:
                    break
                pos = torch.tensor([s + t], device=keys.device)
                logits = lm(nxt[:, None], input_pos=pos, mask=keys[:, None, None, :])[:, -1]
        finally:
            lm.remove_caches()
        return torch.stack(out, 1)

    def _greedy_full(self, batch: UniViBatch, max_new_tokens: int) -> Tensor:
        """Reference decoding: one full forward per new token (no cache), one sample at a time."""
        outs = []
        for i in range(batch.ids.shape[0]):
            emb = batch.embeds[i : i + 1, batch.attend[i]]
            row = []
            for _ in range(max_new_tokens):
                nxt = int(self.lm(embeds=emb)[0, -1].float().argmax())
                row.append(nxt)
                if nxt == self.text.eos_id:
                    break
                emb = torch.cat([emb, self.lm.tok_embeddings.weight[nxt][None, None]], 1)
            outs.append(row + [self.text.eos_id] * (max_new_tokens - len(row)))
        return torch.tensor(outs)

    @torch.no_grad()
    def ask(
        self, pixels: Tensor, question: str, reduction: str | None = None, num_tokens: int | None = None
    ) -> tuple[str, int]:
        """Answer one question about one image (3, H, W) / video (3, T, H, W) in [−1, 1]; (answer, visual tokens)."""
        if pixels.ndim not in (3, 4):
            raise ValueError(f"pixels must be an image (3, H, W) or a video (3, T, H, W), got {tuple(pixels.shape)}")
        feats, grid = self.features(pixels[None])
        vt = self.visual_tokens(feats, grid, reduction, num_tokens)
        return self.answer(vt, [question])[0], int(vt.counts[0])

    def trainable_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameters by part: "projector" (MLP + position/scale embeddings) and "lm"."""
        return {"projector": list(self.projector.parameters()), "lm": list(self.lm.parameters())}


def _grow_vocab(lm: Transformer, vocab_size: int) -> Transformer:
    """``lm`` with its embedding (and untied output) table grown to ``vocab_size`` rows; new rows = the mean row."""
    old = lm.config.vocab_size
    if vocab_size <= old:
        return lm
    with torch.no_grad():
        emb = lm.tok_embeddings.weight
        new = torch.cat([emb, emb.mean(0, keepdim=True).expand(vocab_size - old, -1)])
        lm.tok_embeddings = nn.Embedding.from_pretrained(new.clone(), freeze=False)
        if lm.config.tie_embeddings:
            lm.output.weight = lm.tok_embeddings.weight
        else:
            out = lm.output.weight
            head = nn.Linear(out.shape[1], vocab_size, bias=False)
            head.weight.copy_(torch.cat([out, out.mean(0, keepdim=True).expand(vocab_size - old, -1)]))
            lm.output = head
    lm.config = dataclasses.replace(lm.config, vocab_size=vocab_size)
    return lm


def _check_model_dir(path: str | os.PathLike) -> None:
    if not os.path.isdir(path):
        raise FileNotFoundError(f"no UniVi model folder at {path} (expected config.json + model.safetensors)")


# ---------------------------------------------------------------------------------------------------------------------
# Presets
# ---------------------------------------------------------------------------------------------------------------------

PRESETS: dict[str, UniViConfig] = {
    # CPU: 4 layers × 128 dims, 4 heads (~0.9M parameters); 112 merged tokens per 128² image.
    "univi-tiny": UniViConfig(dim=128, n_layers=4, n_heads=4, n_kv_heads=2),
    # GPU: 8 layers × 384 dims, 6 heads (~14M parameters).
    "univi-small": UniViConfig(dim=384, n_layers=8, n_heads=6, n_kv_heads=2, max_seq_len=2048),
}

register_model("univi", UniVi, presets=PRESETS)


def shipped_univi_dir() -> Path:
    """The folder of the small UniVi model shipped inside the package (``vistok/models/weights/univi-scenes``):
    univi-tiny trained on the built-in scenes and sprite clips (see its ``MODEL_CARD.md``). Load it with
    :func:`vistok.train.univi.load_univi`."""
    return Path(__file__).resolve().parent / "weights" / "univi-scenes"
