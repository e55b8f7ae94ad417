"""Transfusion (Zhou et al., 2024, "Transfusion: Predict the Next Token and Diffuse Images with One Multi-Modal
Model"; PAPERS.md §4): one transformer over mixed sequences of text ids and continuous image-latent patches.

**Sequence format** (§2.1). A document is a list of segments, each either text ids (1-D ints, specials included as
written) or an image latent (C, h, w) (e.g. :meth:`vistok.tokenizers.vae.KLVAE.encode`). Every image becomes
``BOI, n patch vectors, EOI`` with k×k latent patches (k = ``patch_size`` ∈ {1, 2, 4}; n = (h/k)·(w/k), row-major).
:func:`build_batch` pads (or packs, with document ids) documents into rows and returns a :class:`TransfusionBatch`.
Targets: position i predicts token i + 1 when that token is text (BOI included: the model must decide to start an
image); positions whose next token is a patch or EOI (EOI is forced by decoding) get :data:`IGNORE`. Rotary positions
are 1-D, restart at every packed document, and every patch has its own position.

**Attention** (§2.2): causal over the sequence, bidirectional inside each image (one span id per image), never across
packed documents, padding neither sees nor is seen — a :class:`vistok.layers.MaskSpec`; dense SDPA mask on CPU, a
FlexAttention block mask (built from the same :func:`vistok.layers.make_mask_mod`, cached by sequence structure) on
CUDA.

**Patches** (§3.2): a linear patch encoder (patch → ``dim``, plus the diffusion timestep embedding) and a linear
decoder, or small U-Net down/up blocks (conv + timestep-conditioned ResNet block + k×k strided conv down; transposed
conv up + skip + ResNet block), per image.

**Diffusion** (§2.3). DDPM ε-prediction (Ho et al., 2020) with the cosine schedule (Nichol & Dhariwal, 2021, eq. 17):
ᾱ(t) = f(t)/f(0), f(t) = cos²((t/T + s)/(1 + s) · π/2), s = 0.008, β_t = min(1 − ᾱ_t/ᾱ_{t−1}, 0.999), T = 1000;
step index t ∈ {0 … T − 1} holds ᾱ of step t + 1. q(x_t | x₀) = N(√ᾱ_t x₀, (1 − ᾱ_t) I), so
x_t = √ᾱ_t x₀ + √(1 − ᾱ_t) ε and x₀ = (x_t − √(1 − ᾱ_t) ε)/√ᾱ_t. Option ``objective="flow"`` (rectified flow):
σ = (t + 1)/T, x_t = (1 − σ) x₀ + σ ε, the model predicts v = ε − x₀, x₀ = x_t − σ v; everything else is shared.

**Loss** (§2.3, eq. 4): L = L_LM + λ · L_diff, λ = 5; L_LM is the mean next-token cross entropy over text targets,
L_diff the mean over images of each image's mean squared error (every image weighs the same, whatever its size).

**Noise cap rule** (§4.3: "when an image precedes its caption, its noise is capped at t ≤ 500"): an image is capped
iff a *caption token* — an id below ``num_text_tokens`` (the plain text vocabulary, i.e. not BOS/EOS/BOI/EOI/PAD) —
follows it later in the same document. Text → image documents are uncapped; image → text documents are capped.

**Classifier-free guidance** data side: :func:`drop_captions` replaces every text segment of a document by its
special ids only (the caption becomes empty, BOS/EOS stay), applied with probability p by the trainer.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vistok.hub import PretrainedMixin
from vistok.layers import MaskSpec, make_mask_mod
from vistok.models.transformer import Transformer, TransformerConfig
from vistok.registry import PresetMixin, register_model
from vistok.tokenizers.text import BOI, EOI, NUM_BYTES, PAD

__all__ = [
    "IGNORE",
    "PRESETS",
    "DiffusionSchedule",
    "Transfusion",
    "TransfusionBatch",
    "TransfusionConfig",
    "build_batch",
    "diffusion_loss",
    "drop_captions",
    "patchify",
    "sample_timesteps",
    "shipped_transfusion_dir",
    "transfusion_loss",
    "unpatchify",
]

IGNORE = -100
"""Target id of positions without a text target (cross-entropy ``ignore_index``)."""

Segment = Tensor | Sequence[int]

# ---------------------------------------------------------------------------------------------------------------------
# Helpers: patches, timestep embedding
# ---------------------------------------------------------------------------------------------------------------------


def patchify(x: Tensor, k: int) -> Tensor:
    """(N, C, h, w) → (N, (h/k)·(w/k), C·k·k), patches row-major, each patch flattened (C, k, k)."""
    n, c, h, w = x.shape
    if h % k or w % k:
        raise ValueError(f"latent size {h}x{w} is not divisible by patch_size {k}")
    x = x.reshape(n, c, h // k, k, w // k, k).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(n, (h // k) * (w // k), c * k * k)


def unpatchify(p: Tensor, k: int, c: int, h: int, w: int) -> Tensor:
    """Inverse of :func:`patchify`: (N, n, C·k·k) → (N, C, h, w)."""
    n = p.shape[0]
    x = p.reshape(n, h // k, w // k, c, k, k).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(n, c, h, w)


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding (N, dim) of (possibly fractional) timesteps t (N,) (DDPM / DiT)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


# ---------------------------------------------------------------------------------------------------------------------
# Diffusion
# ---------------------------------------------------------------------------------------------------------------------


class DiffusionSchedule:
    """Cosine DDPM schedule (ε-prediction) or rectified flow (v-prediction) over step indices 0 … T − 1.

    All methods take integer steps ``t`` (N,) and broadcast over the trailing dims of the data (N, ...).
    """

    def __init__(self, timesteps: int = 1000, objective: str = "eps", s: float = 0.008) -> None:
        if objective not in ("eps", "flow"):
            raise ValueError(f"objective must be 'eps' or 'flow', got {objective!r}")
        self.T, self.objective = timesteps, objective
        steps = torch.arange(timesteps + 1, dtype=torch.float64)
        f = torch.cos((steps / timesteps + s) / (1 + s) * math.pi / 2) ** 2
        abar = f / f[0]
        betas = (1 - abar[1:] / abar[:-1]).clamp(max=0.999)
        self.betas = betas
        self.alphas_cumprod = torch.cumprod(1 - betas, dim=0)  # ᾱ of step t + 1 at index t
        self.sigmas = (torch.arange(timesteps, dtype=torch.float64) + 1) / timesteps  # flow: σ at index t

    def _at(self, table: Tensor, t: Tensor, like: Tensor) -> Tensor:
        v = table.to(like.device)[t.long()].to(like.dtype)
        return v.view(-1, *([1] * (like.ndim - 1)))

    def abar(self, t: Tensor, like: Tensor) -> Tensor:
        """ᾱ_t broadcast like ``like`` (t = −1 means ᾱ = 1, the clean end)."""
        table = torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod])
        return self._at(table, t + 1, like)

    def sigma(self, t: Tensor, like: Tensor) -> Tensor:
        table = torch.cat([torch.zeros(1, dtype=torch.float64), self.sigmas])
        return self._at(table, t + 1, like)

    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """x_t given x₀ and noise ε."""
        if self.objective == "flow":
            s = self.sigma(t, x0)
            return (1 - s) * x0 + s * noise
        a = self.abar(t, x0)
        return a.sqrt() * x0 + (1 - a).sqrt() * noise

    def target(self, x0: Tensor, noise: Tensor) -> Tensor:
        """What the model regresses: ε (``eps``) or v = ε − x₀ (``flow``)."""
        return noise if self.objective == "eps" else noise - x0

    def predict_x0(self, x_t: Tensor, t: Tensor, out: Tensor) -> Tensor:
        """x₀ from x_t and the model output (exact inverse of :meth:`q_sample` given the true target)."""
        if self.objective == "flow":
            return x_t - self.sigma(t, x_t) * out
        a = self.abar(t, x_t)
        return (x_t - (1 - a).sqrt() * out) / a.sqrt()

    def predict_eps(self, x_t: Tensor, t: Tensor, out: Tensor) -> Tensor:
        if self.objective == "eps":
            return out
        return x_t + (1 - self.sigma(t, x_t)) * out  # ε = x_t + (1 − σ) v

    def _x0_eps(self, x_t: Tensor, t: Tensor, out: Tensor, clip_x0: float | None) -> tuple[Tensor, Tensor]:
        """(x̂₀, ε̂); with ``clip_x0`` x̂₀ is clamped to ±clip_x0 and ε̂ recomputed from it (as diffusers' DDIM does):
        near t = T − 1 the cosine schedule's ᾱ is ~1e-5, so an unclamped x̂₀ amplifies any ε error by 1/√ᾱ."""
        x0 = self.predict_x0(x_t, t, out)
        if clip_x0 is None:
            return x0, self.predict_eps(x_t, t, out)
        x0 = x0.clamp(-clip_x0, clip_x0)
        if self.objective == "flow":
            s = self.sigma(t, x_t)
            return x0, (x_t - (1 - s) * x0) / s
        a = self.abar(t, x_t)
        return x0, (x_t - a.sqrt() * x0) / (1 - a).sqrt()

    def ddim_step(self, x_t: Tensor, t: Tensor, t_prev: Tensor, out: Tensor, clip_x0: float | None = None) -> Tensor:
        """Deterministic step t → t_prev (t_prev = −1: the clean end). DDIM (η = 0) / the flow's Euler step."""
        x0, eps = self._x0_eps(x_t, t, out, clip_x0)
        if self.objective == "flow":
            s = self.sigma(t_prev, x_t)
            return (1 - s) * x0 + s * eps
        a = self.abar(t_prev, x_t)
        return a.sqrt() * x0 + (1 - a).sqrt() * eps

    def ddpm_step(
        self,
        x_t: Tensor,
        t: Tensor,
        t_prev: Tensor,
        out: Tensor,
        generator: torch.Generator | None = None,
        clip_x0: float | None = None,
    ) -> Tensor:
        """Ancestral step t → t_prev: the posterior q(x_{t'} | x_t, x̂₀) (DDPM eq. 6-7 over strided steps).

        For ``flow`` the same Gaussian bridge is used between σ levels (x̂₀, ε̂ re-noised stochastically)."""
        x0, eps = self._x0_eps(x_t, t, out, clip_x0)
        noise = torch.randn(x_t.shape, generator=generator, device=x_t.device, dtype=x_t.dtype)
        if self.objective == "flow":
            sp = self.sigma(t_prev, x_t)
            return (1 - sp) * x0 + sp * (0.5 * eps + math.sqrt(0.75) * noise)  # keeps the marginal noise level
        a, ap = self.abar(t, x_t), self.abar(t_prev, x_t)
        alpha = a / ap  # effective 1 − β over the stride
        mean = (ap.sqrt() * (1 - alpha) / (1 - a)) * x0 + (alpha.sqrt() * (1 - ap) / (1 - a)) * x_t
        var = (1 - ap) / (1 - a) * (1 - alpha)
        return mean + var.clamp(min=0).sqrt() * noise * (t_prev >= 0).to(x_t.dtype).view_as(a)


def sample_timesteps(capped: Tensor, timesteps: int, cap: int, generator: torch.Generator | None = None) -> Tensor:
    """One step index per image (I,): uniform on 0 … T − 1, or on 0 … cap for ``capped`` images (the noise cap)."""
    u = torch.rand(capped.shape, generator=generator, device=capped.device, dtype=torch.float64)
    t_max = torch.where(capped, torch.full_like(u, cap + 1), torch.full_like(u, timesteps))
    return (u * t_max).long().clamp(max=timesteps - 1)


def diffusion_loss(preds: Sequence[Tensor], targets: Sequence[Tensor]) -> Tensor:
    """Mean over images of each image's mean squared error (every image weighs the same)."""
    if not preds:
        return torch.zeros(())
    return torch.stack([F.mse_loss(p.float(), y.float()) for p, y in zip(preds, targets, strict=True)]).mean()


def transfusion_loss(
    logits: Tensor, text_targets: Tensor, preds: Sequence[Tensor], targets: Sequence[Tensor], lam: float = 5.0
) -> tuple[Tensor, Tensor, Tensor]:
    """(L, L_LM, L_diff) with L = L_LM + λ·L_diff; L_LM = mean cross entropy over non-IGNORE text targets."""
    has_text = (text_targets != IGNORE).any()
    lm = (
        F.cross_entropy(logits.flatten(0, 1).float(), text_targets.flatten(), ignore_index=IGNORE)
        if has_text
        else logits.sum() * 0.0
    )
    diff = diffusion_loss(preds, targets).to(lm.device)
    return lm + lam * diff, lm, diff


# ---------------------------------------------------------------------------------------------------------------------
# Sequence format
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class TransfusionBatch:
    """A padded / packed batch of mixed documents (see the module docstring). Shapes: B rows, L positions, I images.

    - ``ids`` (B, L): text ids; BOI/EOI around images; ``pad_id`` at patch positions (placeholder) and padding.
    - ``is_patch`` (B, L) bool; ``patches`` (P, C·k·k) the clean patches in the order of ``patch_index`` (P,), flat
      indices into B·L; ``images`` the I clean latents (C, h, w) in sequence order, ``image_row``/``image_start`` (I,)
      where each image's first patch sits, ``capped`` (I,) whether its noise is capped.
    - ``span_ids`` (B, L): 1, 2, … per image (0 elsewhere; BOI/EOI are not in the span); ``doc_ids`` (B, L): 1, 2, …
      per packed document, 0 = padding; ``valid`` (B, L) bool; ``targets`` (B, L); ``positions`` (B, L).
    """

    ids: Tensor
    is_patch: Tensor
    patches: Tensor
    patch_index: Tensor
    images: list[Tensor]
    image_row: Tensor
    image_start: Tensor
    capped: Tensor
    span_ids: Tensor
    doc_ids: Tensor
    valid: Tensor
    targets: Tensor
    positions: Tensor
    patch_size: int = 2

    def mask_spec(self) -> MaskSpec:
        return MaskSpec(causal=True, span_ids=self.span_ids, doc_ids=self.doc_ids, valid=self.valid)

    def to(self, device: torch.device | str) -> TransfusionBatch:
        moved = {k: (v.to(device) if isinstance(v, Tensor) else v) for k, v in self.__dict__.items()}
        moved["images"] = [x.to(device) for x in self.images]
        return TransfusionBatch(**moved)


def _is_image(seg: Segment) -> bool:
    return isinstance(seg, Tensor) and seg.is_floating_point()


def _flatten_doc(doc: Sequence[Segment], k: int, pad_id: int, num_text_tokens: int) -> tuple[list, list, list]:
    """(ids, kinds, images) of one document: kind 0 = text, j > 0 = patch of the doc's j-th image."""
    ids, kinds, images = [], [], []
    for seg in doc:
        if _is_image(seg):
            if seg.ndim != 3:
                raise ValueError(f"an image segment must be a latent (C, h, w), got shape {tuple(seg.shape)}")
            _, h, w = seg.shape
            if h % k or w % k:
                raise ValueError(f"latent size {h}x{w} is not divisible by patch_size {k}")
            images.append(seg)
            n = (h // k) * (w // k)
            ids += [BOI, *([pad_id] * n), EOI]
            kinds += [0, *([len(images)] * n), 0]
        else:
            seg_ids = seg.tolist() if isinstance(seg, Tensor) else list(seg)
            ids += [int(i) for i in seg_ids]
            kinds += [0] * len(seg_ids)
    return ids, kinds, images


def build_batch(
    docs: Sequence[Sequence[Segment]],
    patch_size: int = 2,
    *,
    pad_id: int = PAD,
    num_text_tokens: int = NUM_BYTES,
    pack: bool = False,
    max_len: int | None = None,
) -> TransfusionBatch:
    """Pad (one document per row) or pack (greedily, first fit in order, rows of ``max_len``) mixed documents.

    ``docs``: each a list of segments — text ids (list / 1-D int tensor) or image latents (C, h, w) float tensors.
    ``num_text_tokens``: ids below it are caption text (for the noise-cap rule). A document longer than ``max_len``
    raises (documents are never split: an image must stay whole).
    """
    k = patch_size
    flat = [_flatten_doc(d, k, pad_id, num_text_tokens) for d in docs]
    longest = max(len(f[0]) for f in flat)
    if max_len is not None and longest > max_len:
        raise ValueError(f"a document has {longest} positions, more than max_len={max_len}")
    rows: list[list[int]] = []
    if pack:
        cap = max_len or longest
        lens: list[int] = []
        for i, f in enumerate(flat):
            j = next((r for r, n in enumerate(lens) if n + len(f[0]) <= cap), None)
            if j is None:
                rows.append([]), lens.append(0)
                j = len(rows) - 1
            rows[j].append(i)
            lens[j] += len(f[0])
    else:
        rows = [[i] for i in range(len(flat))]
    length = max_len if (pack and max_len) else max(sum(len(flat[i][0]) for i in r) for r in rows)
    b = len(rows)
    ids = torch.full((b, length), pad_id, dtype=torch.long)
    span = torch.zeros(b, length, dtype=torch.long)
    doc_ids = torch.zeros(b, length, dtype=torch.long)
    positions = torch.zeros(b, length, dtype=torch.long)
    targets = torch.full((b, length), IGNORE, dtype=torch.long)
    images, image_row, image_start, capped = [], [], [], []
    for r, members in enumerate(rows):
        offset, next_span = 0, 1
        for d, i in enumerate(members):
            d_ids, kinds, d_images = flat[i]
            n = len(d_ids)
            sl = slice(offset, offset + n)
            ids[r, sl] = torch.tensor(d_ids, dtype=torch.long)
            kinds_t = torch.tensor(kinds, dtype=torch.long)
            span[r, sl] = torch.where(kinds_t > 0, kinds_t + next_span - 1, 0)
            doc_ids[r, sl] = d + 1
            positions[r, sl] = torch.arange(n)
            is_text = kinds_t == 0
            nxt_text = torch.cat([is_text[1:], torch.tensor([False])]) & torch.cat(
                [torch.tensor(d_ids[1:], dtype=torch.long) != EOI, torch.tensor([False])]
            )
            nxt = torch.tensor([*d_ids[1:], IGNORE], dtype=torch.long)
            targets[r, sl] = torch.where(nxt_text, nxt, IGNORE)
            caption = is_text & (torch.tensor(d_ids) < num_text_tokens)
            later_caption = caption.flip(0).cumsum(0).flip(0) > 0  # a caption token at or after each position
            for j, img in enumerate(d_images, start=1):
                where = (kinds_t == j).nonzero()[:, 0]
                start, end = int(where[0]), int(where[-1])
                images.append(img)
                image_row.append(r)
                image_start.append(offset + start)
                capped.append(bool(end + 2 < n and later_caption[end + 2]))
            next_span += len(d_images)
            offset += n
    valid = doc_ids > 0
    is_patch = span > 0
    patch_index = is_patch.flatten().nonzero()[:, 0]
    patches = torch.cat([patchify(x[None].float(), k)[0] for x in images]) if images else torch.zeros(0, 0)
    return TransfusionBatch(
        ids=ids,
        is_patch=is_patch,
        patches=patches,
        patch_index=patch_index,
        images=images,
        image_row=torch.tensor(image_row, dtype=torch.long),
        image_start=torch.tensor(image_start, dtype=torch.long),
        capped=torch.tensor(capped, dtype=torch.bool),
        span_ids=span,
        doc_ids=doc_ids,
        valid=valid,
        targets=targets,
        positions=positions,
        patch_size=k,
    )


def drop_captions(doc: Sequence[Segment], num_text_tokens: int = NUM_BYTES) -> list[Segment]:
    """The document with every caption token removed (special ids such as BOS/EOS kept): the CFG 'null caption'."""
    out: list[Segment] = []
    for seg in doc:
        if _is_image(seg):
            out.append(seg)
        else:
            ids = seg.tolist() if isinstance(seg, Tensor) else list(seg)
            out.append([i for i in ids if i >= num_text_tokens])
    return out


# ---------------------------------------------------------------------------------------------------------------------
# Patch encoders / decoders
# ---------------------------------------------------------------------------------------------------------------------


class TimestepEmbedder(nn.Module):
    """t → sinusoidal(256) → Linear → SiLU → Linear (DiT)."""

    def __init__(self, dim: int, freq_dim: int = 256) -> None:
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: Tensor) -> Tensor:
        return self.mlp(timestep_embedding(t, self.freq_dim).to(self.mlp[0].weight.dtype))


class ResBlock(nn.Module):
    """GroupNorm → SiLU → conv, + timestep embedding, GroupNorm → SiLU → conv, residual."""

    def __init__(self, channels: int, temb_dim: int, groups: int = 8) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.GroupNorm(groups, channels), nn.GroupNorm(groups, channels)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.temb = nn.Linear(temb_dim, channels)

    def forward(self, x: Tensor, temb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x))) + self.temb(F.silu(temb))[:, :, None, None]
        return x + self.conv2(F.silu(self.norm2(h)))


class LinearPatches(nn.Module):
    """Linear patch encoder (+ timestep embedding) and linear decoder (Transfusion §3.2, "linear")."""

    def __init__(self, config: TransfusionConfig) -> None:
        super().__init__()
        c = config
        self.k, self.c = c.patch_size, c.latent_channels
        self.proj_in = nn.Linear(c.patch_dim, c.dim)
        self.proj_out = nn.Linear(c.dim, c.patch_dim)

    def encode(self, x: Tensor, temb: Tensor) -> tuple[Tensor, None]:
        return self.proj_in(patchify(x, self.k)) + temb[:, None], None

    def decode(self, h: Tensor, temb: Tensor, skip: None, size: tuple[int, int]) -> Tensor:
        return unpatchify(self.proj_out(h), self.k, self.c, *size)


class UNetPatches(nn.Module):
    """U-Net down block (conv, ResBlock, k×k strided conv → dim) and up block (transposed conv, + skip, ResBlock)."""

    def __init__(self, config: TransfusionConfig) -> None:
        super().__init__()
        c, ch = config, config.unet_channels
        self.k, self.c = c.patch_size, c.latent_channels
        self.conv_in = nn.Conv2d(c.latent_channels, ch, 3, padding=1)
        self.down = ResBlock(ch, c.dim)
        self.to_tokens = nn.Conv2d(ch, c.dim, c.patch_size, stride=c.patch_size)
        self.from_tokens = nn.ConvTranspose2d(c.dim, ch, c.patch_size, stride=c.patch_size)
        self.up = ResBlock(ch, c.dim)
        self.norm_out = nn.GroupNorm(8, ch)
        self.conv_out = nn.Conv2d(ch, c.latent_channels, 3, padding=1)

    def encode(self, x: Tensor, temb: Tensor) -> tuple[Tensor, Tensor]:
        skip = self.down(self.conv_in(x), temb)
        tokens = self.to_tokens(skip).flatten(2).transpose(1, 2)  # row-major over the (h/k, w/k) grid
        return tokens + temb[:, None], skip

    def decode(self, h: Tensor, temb: Tensor, skip: Tensor, size: tuple[int, int]) -> Tensor:
        n, _, d = h.shape
        grid = h.transpose(1, 2).reshape(n, d, size[0] // self.k, size[1] // self.k)
        x = self.up(self.from_tokens(grid) + skip, temb)
        return self.conv_out(F.silu(self.norm_out(x)))


# ---------------------------------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class TransfusionConfig(PresetMixin):
    """Hyper-parameters of :class:`Transfusion`.

    - ``vocab_size``: text vocabulary with specials (:class:`vistok.tokenizers.text.ByteTokenizer`: 272);
      ``num_text_tokens``: ids below it are caption text (noise-cap rule, caption dropout).
    - ``latent_channels`` C, ``patch_size`` k ∈ {1, 2, 4}, ``patch_encoder`` 'linear' or 'unet' (``unet_channels``).
    - ``objective`` 'eps' (DDPM) or 'flow'; ``timesteps`` T; ``noise_cap`` (largest step of capped images);
      ``diffusion_weight`` λ; ``caption_dropout`` p for classifier-free guidance (used by the trainer).
    - backbone: ``dim``, ``n_layers``, ``n_heads``, ``n_kv_heads``, ``multiple_of``, ``max_seq_len``, ``rope_theta``,
      ``norm_eps``, ``init_std`` (see :class:`TransformerConfig`).

    Derived: ``patch_dim`` = C·k·k.
    """

    vocab_size: int = 272
    num_text_tokens: int = NUM_BYTES
    latent_channels: int = 8
    patch_size: int = 2
    patch_encoder: str = "linear"
    unet_channels: int = 64
    objective: str = "eps"
    timesteps: int = 1000
    noise_cap: int = 500
    diffusion_weight: float = 5.0
    caption_dropout: float = 0.1
    dim: int = 64
    n_layers: int = 2
    n_heads: int = 4
    n_kv_heads: int | None = None
    multiple_of: int = 16
    max_seq_len: int = 512
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6
    init_std: float = 0.02

    patch_dim: int = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.patch_size not in (1, 2, 4):
            raise ValueError(f"patch_size must be 1, 2 or 4, got {self.patch_size}")
        if self.patch_encoder not in ("linear", "unet"):
            raise ValueError(f"patch_encoder must be 'linear' or 'unet', got {self.patch_encoder!r}")
        if self.objective not in ("eps", "flow"):
            raise ValueError(f"objective must be 'eps' or 'flow', got {self.objective!r}")
        if not 0 <= self.noise_cap < self.timesteps:
            raise ValueError(f"noise_cap must be in [0, timesteps), got {self.noise_cap}")
        self.patch_dim = self.latent_channels * self.patch_size**2

    def backbone_config(self) -> TransformerConfig:
        return TransformerConfig(
            vocab_size=self.vocab_size,
            dim=self.dim,
            n_layers=self.n_layers,
            n_heads=self.n_heads,
            n_kv_heads=self.n_kv_heads,
            multiple_of=self.multiple_of,
            max_seq_len=self.max_seq_len,
            rope_theta=self.rope_theta,
            norm_eps=self.norm_eps,
            init_std=self.init_std,
            causal=True,
        )


class Transfusion(nn.Module, PretrainedMixin):
    """Text LM + image diffusion in one :class:`Transformer` (see the module docstring)."""

    config_class = TransfusionConfig

    def __init__(self, config: TransfusionConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone = Transformer(config.backbone_config())
        self.time_embed = TimestepEmbedder(config.dim)
        self.patches = LinearPatches(config) if config.patch_encoder == "linear" else UNetPatches(config)
        self.schedule = DiffusionSchedule(config.timesteps, config.objective)
        self._block_masks: dict[str, object] = {}
        self.compiled_flex: bool | None = None  # None: compiled FlexAttention on CUDA; False: eager (debugging)

    # -- attention

    def attention_mask(self, span_ids: Tensor, doc_ids: Tensor | None, valid: Tensor | None):
        """The mask for the backbone: a :class:`MaskSpec` (dense SDPA) on CPU, a cached FlexAttention block mask on
        CUDA (``use_flex``)."""
        spec = MaskSpec(causal=True, span_ids=span_ids, doc_ids=doc_ids, valid=valid)
        if span_ids.device.type != "cuda":
            return spec
        return self.block_mask(spec)

    def block_mask(self, spec: MaskSpec):
        """FlexAttention block mask for ``spec``, cached by the ids' contents (the sequence structure)."""
        from torch.nn.attention.flex_attention import create_block_mask

        h = hashlib.sha1()
        for t in spec.tensors():
            h.update(t.detach().cpu().numpy().tobytes())
            h.update(str(tuple(t.shape)).encode())
        key = h.hexdigest()
        if key not in self._block_masks:
            if len(self._block_masks) > 64:
                self._block_masks.clear()
            b, n = spec.tensors()[0].shape
            self._block_masks[key] = create_block_mask(
                make_mask_mod(spec), b, None, n, n, device=spec.tensors()[0].device
            )
        return self._block_masks[key]

    def run_backbone(self, x: Tensor, positions: Tensor, mask, cache_slots: Tensor | None = None) -> Tensor:
        """Hidden states (B, L, dim) of embeddings ``x``; ``mask``: MaskSpec / bool tensor / FlexAttention BlockMask.

        With ``cache_slots`` (L,), keys/values go into the backbone's static KV cache at those slots and ``mask`` must
        be a bool tensor (B, 1, L, S) over all S cache slots."""
        bb = self.backbone
        if isinstance(mask, MaskSpec):
            mask = bb._full_mask(mask, x.shape[1], x.device)
        cos, sin = bb.rope(positions)
        if not isinstance(mask, str | Tensor):  # a BlockMask: FlexAttention
            return self._run_flex(x, cos, sin, mask)
        for layer in bb.layers:
            x = layer(x, cos, sin, mask, cache_slots, False)
        return bb.norm(x)

    def _run_flex(self, x: Tensor, cos: Tensor, sin: Tensor, block_mask) -> Tensor:
        from vistok.layers.attention import flex_attention

        for layer in self.backbone.layers:
            attn = layer.attention
            q, k, v = attn._qkv(layer.attention_norm(x), cos, sin)
            out = flex_attention(q, k, v, block_mask, compiled=self.compiled_flex)
            b, _, n, _ = out.shape
            x = x + attn.wo(out.transpose(1, 2).reshape(b, n, -1))
            x = x + layer.feed_forward(layer.ffn_norm(x))
        return self.backbone.norm(x)

    # -- patches

    def encode_images(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor, object]:
        """Noisy latents x (N, C, h, w) at steps t (N,) → (patch embeddings (N, n, dim), timestep embedding, skip)."""
        temb = self.time_embed(t)
        tokens, skip = self.patches.encode(x, temb)
        return tokens, temb, skip

    def decode_images(self, h: Tensor, temb: Tensor, skip: object, size: tuple[int, int]) -> Tensor:
        """Hidden states of the patches (N, n, dim) → predicted ε (or v) (N, C, h, w)."""
        return self.patches.decode(h, temb, skip, size)

    # -- forward

    def forward(
        self, batch: TransfusionBatch, noisy: Sequence[Tensor] | None = None, t: Tensor | None = None
    ) -> tuple[Tensor, list[Tensor]]:
        """(text logits (B, L, V), predictions per image (C, h, w)) for ``batch`` whose images are ``noisy`` at
        steps ``t`` (I,) (default: the clean images at t = 0)."""
        images = list(batch.images) if noisy is None else list(noisy)
        dev = batch.ids.device
        t = torch.zeros(len(images), dtype=torch.long, device=dev) if t is None else t
        x = self.backbone.tok_embeddings(batch.ids)
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, img in enumerate(images):
            groups.setdefault(tuple(img.shape), []).append(i)
        encoded = []
        for shape, idx in groups.items():
            tokens, temb, skip = self.encode_images(torch.stack([images[i] for i in idx]).to(x.dtype), t[idx])
            rows, cols = self._patch_positions(batch, idx, tokens.shape[1])
            x = x.index_put((rows, cols), tokens.flatten(0, 1).to(x.dtype))
            encoded.append((shape, idx, temb, skip, rows, cols))
        mask = self.attention_mask(batch.span_ids, batch.doc_ids, batch.valid)
        h = self.run_backbone(x, batch.positions, mask)
        preds: list[Tensor | None] = [None] * len(images)
        for shape, idx, temb, skip, rows, cols in encoded:
            hp = h[rows, cols].view(len(idx), -1, h.shape[-1])
            out = self.decode_images(hp, temb, skip, shape[1:])
            for j, i in enumerate(idx):
                preds[i] = out[j]
        return self.backbone.output(h), preds

    @staticmethod
    def _patch_positions(batch: TransfusionBatch, idx: list[int], n: int) -> tuple[Tensor, Tensor]:
        idx_t = torch.tensor(idx, device=batch.ids.device)
        rows = batch.image_row[idx_t][:, None].expand(-1, n).flatten()
        cols = (batch.image_start[idx_t][:, None] + torch.arange(n, device=batch.ids.device)).flatten()
        return rows, cols

    def loss(self, batch: TransfusionBatch, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Noise every image (noise cap applied), run the model, return {'loss', 'lm', 'diffusion'}."""
        c = self.config
        dev = batch.ids.device
        t = sample_timesteps(batch.capped, c.timesteps, c.noise_cap, generator).to(dev)
        noises = [torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype) for x in batch.images]
        noisy = [
            self.schedule.q_sample(x[None], t[i : i + 1], e[None])[0]
            for i, (x, e) in enumerate(zip(batch.images, noises, strict=True))
        ]
        logits, preds = self(batch, noisy, t)
        targets = [self.schedule.target(x, e) for x, e in zip(batch.images, noises, strict=True)]
        total, lm, diff = transfusion_loss(logits, batch.targets, preds, targets, c.diffusion_weight)
        return {"loss": total, "lm": lm, "diffusion": diff, "t": t}


# ---------------------------------------------------------------------------------------------------------------------
# Presets
# ---------------------------------------------------------------------------------------------------------------------

PRESETS: dict[str, TransfusionConfig] = {
    # CPU tests: 2 layers, 64 dims, vae-tiny-like latents (4 channels), 2×2 patches.
    "transfusion-tiny": TransfusionConfig(latent_channels=4, dim=64, n_layers=2, n_heads=4, n_kv_heads=2),
    # U-Net patches variant of the tiny model.
    "transfusion-tiny-unet": TransfusionConfig(
        latent_channels=4, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, patch_encoder="unet", unet_channels=32
    ),
    # The paper's 0.76B-like shape (Table 1: 24 layers, 1536 dims, 24 heads); 8-channel latents, 2×2 patches.
    "transfusion-760m": TransfusionConfig(
        dim=1536, n_layers=24, n_heads=24, multiple_of=256, max_seq_len=4096, unet_channels=256
    ),
}

register_model("transfusion", Transfusion, presets=PRESETS)


def shipped_transfusion_dir() -> Path:
    """The folder of the small Transfusion model shipped inside the package (``vistok/models/weights/
    transfusion-scenes``, with its VAE in ``vae/``): transfusion-tiny trained on the built-in captioned scenes (see its
    ``MODEL_CARD.md``). Load it with :func:`vistok.train.transfusion_cli.load_run`."""
    return Path(__file__).resolve().parent / "weights" / "transfusion-scenes"
