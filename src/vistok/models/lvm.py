"""LVM: a Large Vision Model over visual sentences (Bai et al., 2023, "Sequential Modeling Enables Scalable Learning
for Large Vision Models").

Images are tokenized one by one (VQGAN f = 16 in the paper: 256 ids per 256² image; any vistok tokenizer here) and
concatenated into visual sentences (:mod:`vistok.data.sentences`); a LLaMA-architecture decoder
(:class:`~vistok.models.transformer.Transformer`) is trained with plain next-token prediction,

    L = − Σᵢ log p(xᵢ | x<ᵢ)

over packed sentences (document-masked, positions restarting per sentence). Tasks are prompts: give k frames and
predict the next ones (:meth:`LVM.generate`), or give A₁ B₁ … Aₖ then read Bₖ (an analogy A:B :: C:?).

Generation builds the prompt ``BOS BOI img₁ EOI … BOI imgₖ EOI`` and samples whole images: BOI and EOI are forced
and the n ids in between are sampled among the visual ids only (:meth:`SentenceFormat.frame_plan`). The prompt is
encoded once; each generated id is one cached decode step; when a rollout outgrows the context the KV cache turns
into a sliding window (:mod:`vistok.generate.ar`), so no frame ever re-encodes the context (the public LVM inference
re-encodes the last 15 frames for every new frame).

:meth:`LVM.target_nll` scores an image given a context (LVM's perplexity-vs-context curve).

Presets: ``lvm-tiny`` (CPU; 1,024 codes, 8×8 ids per image, the default vistok tokenizer at 64²) and the paper's
sizes ``lvm-300m`` … ``lvm-7b`` with the dimensions of the public code (EasyLM ``vqlm_*``: 8,192 VQGAN codes, 100
special ids, 16×16 ids per image, context 4,096 = 15 images and change).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vistok.data.sentences import NUM_SPECIAL, SentenceFormat
from vistok.hub import PretrainedMixin
from vistok.models.transformer import Mask, Transformer, TransformerConfig
from vistok.registry import PresetMixin, register_model

__all__ = ["LVM", "PRESETS", "LVMConfig", "shipped_lvm_dir"]


@dataclass
class LVMConfig(PresetMixin):
    """An LVM: the sentence format (``visual_vocab`` codes, ``image_tokens`` = (h, w) ids per image, ``num_special``
    ids reserved above the codes, at least :data:`~vistok.data.sentences.NUM_SPECIAL`) and the backbone's shape
    (fields as in :class:`~vistok.models.transformer.TransformerConfig`; always causal).
    """

    visual_vocab: int = 8192
    image_tokens: tuple[int, int] = (16, 16)
    num_special: int = 100
    dim: int = 1024
    n_layers: int = 22
    n_heads: int = 8
    n_kv_heads: int | None = None
    intermediate_size: int | None = None
    multiple_of: int = 256
    norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    max_seq_len: int = 4096
    tie_embeddings: bool = False
    init_std: float = 0.02

    format: SentenceFormat = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.num_special < NUM_SPECIAL:
            raise ValueError(
                f"num_special must be >= {NUM_SPECIAL} (BOS, EOS, BOI, EOI, PAD, ...), got {self.num_special}"
            )
        self.image_tokens = tuple(int(s) for s in self.image_tokens)
        self.format = SentenceFormat(self.visual_vocab, self.image_tokens)
        if self.max_seq_len < self.format.sentence_length(1):
            raise ValueError(
                f"max_seq_len {self.max_seq_len} is shorter than one image's sentence "
                f"({self.format.sentence_length(1)} ids)"
            )
        self.backbone_config()  # validates the shape

    @property
    def vocab_size(self) -> int:
        return self.visual_vocab + self.num_special

    def backbone_config(self) -> TransformerConfig:
        return TransformerConfig(
            vocab_size=self.vocab_size,
            dim=self.dim,
            n_layers=self.n_layers,
            n_heads=self.n_heads,
            n_kv_heads=self.n_kv_heads,
            intermediate_size=self.intermediate_size,
            multiple_of=self.multiple_of,
            norm_eps=self.norm_eps,
            rope_theta=self.rope_theta,
            max_seq_len=self.max_seq_len,
            causal=True,
            tie_embeddings=self.tie_embeddings,
            init_std=self.init_std,
        )

    @property
    def max_images(self) -> int:
        """Whole images that fit the context after BOS (and before EOS)."""
        return (self.max_seq_len - 2) // self.format.image_length


class LVM(nn.Module, PretrainedMixin):
    """The autoregressive model over visual sentences; see the module docstring."""

    config_class = LVMConfig

    def __init__(self, config: LVMConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone = Transformer(config.backbone_config())

    @property
    def format(self) -> SentenceFormat:
        return self.config.format

    def num_params(self, include_embeddings: bool = True) -> int:
        return self.backbone.num_params(include_embeddings)

    def forward(
        self, ids: Tensor, *, positions: Tensor | None = None, mask: Mask = None, input_pos: Tensor | None = None
    ) -> Tensor:
        """Logits (B, L, vocab_size) for sentence ids (B, L); arguments as :meth:`Transformer.forward`."""
        return self.backbone(ids, positions=positions, mask=mask, input_pos=input_pos)

    def _grids(self, images: Tensor, what: str) -> Tensor:
        h, w = self.format.image_tokens
        if images.ndim != 4 or tuple(images.shape[-2:]) != (h, w):
            raise ValueError(f"{what} must be id grids (B, k, {h}, {w}), got shape {tuple(images.shape)}")
        return images.long()

    def _prompt(self, context: Tensor) -> Tensor:
        ctx = self._grids(context, "context")
        return torch.stack([self.format.prompt(c.cpu()) for c in ctx]).to(self.backbone.output.weight.device)

    def generate(
        self,
        context: Tensor,
        num_frames: int = 1,
        *,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = 0,
        window: int | None = None,
        compile: bool = False,
    ) -> Tensor:
        """Continue each context (B, k, h, w) by ``num_frames`` images → (B, num_frames, h, w) visual ids.

        The prompt is encoded once and every new id is one KV-cached step. ``window`` (in ids) bounds the attention
        span; by default it is the context length ``max_seq_len`` when the whole rollout does not fit, else unused.
        ``temperature=0`` is greedy.
        """
        from vistok.generate.ar import generate

        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        prompt = self._prompt(context)
        fmt, total = self.format, prompt.shape[1] + num_frames * self.format.image_length
        if prompt.shape[1] > self.config.max_seq_len:
            raise ValueError(
                f"the prompt of {context.shape[1]} images ({prompt.shape[1]} ids) exceeds the context of "
                f"{self.config.max_seq_len} ids ({self.config.max_images} images)"
            )
        if window is None and total > self.config.max_seq_len:
            window = self.config.max_seq_len
        out = generate(
            self.backbone,
            prompt,
            num_frames * fmt.image_length,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            seed=seed,
            plan=fmt.frame_plan(prompt.device, self.config.vocab_size),
            window=window,
            compile=compile,
        )
        new = out[:, prompt.shape[1] :].reshape(prompt.shape[0], num_frames, fmt.image_length)
        return new[:, :, 1:-1].reshape(prompt.shape[0], num_frames, *fmt.image_tokens)

    @torch.no_grad()
    def target_nll(self, context: Tensor | None, target: Tensor) -> Tensor:
        """Mean negative log-likelihood (nats per id) of each target image's visual ids (B, h, w) given its context
        (B, k, h, w) or None (k = 0) → (B,). ``exp`` of it is the target's perplexity."""
        fmt = self.format
        tgt = self._grids(target[:, None], "target")[:, 0]
        b = tgt.shape[0]
        ctx = tgt.new_zeros(b, 0, *fmt.image_tokens) if context is None else self._grids(context, "context")
        ids = torch.stack([fmt.prompt(torch.cat([c, t[None]]).cpu()) for c, t in zip(ctx, tgt)])
        ids = ids.to(self.backbone.output.weight.device)
        n = fmt.tokens_per_image
        start = ids.shape[1] - 1 - n  # the target's first visual id (before its EOI)
        logits = self.backbone(ids[:, :-1])[:, start - 1 : start - 1 + n].float()
        logits[..., fmt.visual_vocab :] = float("-inf")  # the id is known to be visual: score among visual ids
        nll = F.cross_entropy(logits.transpose(1, 2), ids[:, start : start + n], reduction="none")
        return nll.mean(dim=1)


def _lvm(dim: int, n_layers: int, n_heads: int, intermediate_size: int) -> LVMConfig:
    """An LVM size from the public LVM code (EasyLM ``vqlm_*``): multi-head attention, untied, ε = 1e-6."""
    return LVMConfig(
        visual_vocab=8192,
        image_tokens=(16, 16),
        num_special=100,
        dim=dim,
        n_layers=n_layers,
        n_heads=n_heads,
        intermediate_size=intermediate_size,
        max_seq_len=4096,
    )


PRESETS: dict[str, LVMConfig] = {
    # CPU: the default vistok tokenizer's 1,024 codes and 8×8 ids per 64² image; 15 images of context.
    "lvm-tiny": LVMConfig(
        visual_vocab=1024,
        image_tokens=(8, 8),
        num_special=8,
        dim=128,
        n_layers=4,
        n_heads=4,
        n_kv_heads=2,
        multiple_of=32,
        max_seq_len=1024,
    ),
    # The paper's sizes (parameter counts with 8,292 ids, untied embeddings): 291M, 648M, 1.15B, 3.27B, 6.54B.
    "lvm-300m": _lvm(1024, 22, 8, 2688),
    "lvm-600m": _lvm(1536, 22, 16, 4096),
    "lvm-1b": _lvm(2048, 22, 16, 5504),
    "lvm-3b": _lvm(3200, 26, 32, 8640),
    "lvm-7b": _lvm(4096, 32, 32, 11008),
}

register_model("lvm", LVM, presets=PRESETS)


def shipped_lvm_dir() -> Path:
    """The folder of the small LVM shipped inside the package (``vistok/models/weights/lvm-clips``): a 6.4M-parameter
    LVM trained on clips and in-context analogy pairs of the built-in photos, tokenized by the shipped default
    tokenizer (see its ``MODEL_CARD.md``). Load it with ``vistok.from_pretrained(shipped_lvm_dir())``."""
    return Path(__file__).resolve().parent / "weights" / "lvm-clips"
