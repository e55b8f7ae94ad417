"""Lookup-free quantization (LFQ) — MAGVIT-v2, Yu et al., "Language Model Beats Diffusion: Tokenizer is Key to
Visual Generation", ICLR 2024, §3.1; spherical variant (BSQ) from Zhao et al., "Image and Video Tokenization with
Binary Spherical Quantization", 2024.

Quantization. A latent x ∈ R^K (K bits, vocabulary 2^K) is quantized per channel:
    q(x)_k = s·sign(x_k)  (sign(0) = −1),  codes c ∈ {−s, +s}^K,
with straight-through gradients x̂ = x + sg(q(x) − x) (computed as q(x) + (x − sg(x)), so the value is exactly q(x)).
Spherical (BSQ): x ← s·x/‖x‖ first, codes c ∈ {±s/√K}^K. Commitment loss ‖x − sg(q(x))‖² (mean over elements),
weight 0.25; there is no codebook and no codebook loss.

Token index — documented bit order. Bit k of channel k is b_k = [x_k > 0].
    "lsb" (default, the paper): index = Σ_k 2^k · b_k       (channel 0 is the least significant bit)
    "msb" (vector-quantize-pytorch): index = Σ_k 2^(K−1−k) · b_k  (channel 0 is the most significant bit)
:func:`convert_bit_order` maps one to the other. :func:`split_indices` / :func:`join_indices` cut an index into
sub-tokens of K/G bits each (sub-token g = digit g of the index in base 2^(K/G), least significant first), e.g. one
2^18 id → two 2^9 ids for factorized output heads. ``out.indices`` is always the full index; ``LFQ.to_subtokens``
gives the sub-tokens.

Entropy penalty, weight 0.1, annealed from 3× to 1× over the first 2,000 steps:
    L_ent = E_n[H(q(·|x_n))] − γ·H(E_n[q(·|x_n)]),  γ = 1,
    q(c|x) = softmax_c(2τ⟨x, c⟩) = softmax_c(−τ‖x − c‖²)   (‖c‖ is the same for every code),
with τ = ``inv_temperature`` (default 100, vector-quantize-pytorch's ``inv_temperature``). Because ⟨x, c⟩ is a sum
over channels, q(c|x) factorizes into independent bits:
    q(c|x) = Π_k Bern([c_k > 0]; p_k),  p_k = σ(u_k),  u_k = 4τ·s'·x_k   (s' = s, or s/√K for BSQ).
Hence, exactly and without materializing N × 2^K probabilities:
- per-sample entropy H(q(·|x)) = Σ_k h(p_k), h(p) = −p log p − (1−p) log(1−p), from log-sigmoids (no epsilon);
- codebook entropy H(Q̄), Q̄ = mean_n q(·|x_n): split the bits into halves a, b; log A_n(a) = Σ_{k∈a} log Bern(a_k;
  p_nk) is one (N, 2·|a|) × (2·|a|, 2^|a|) product with a bit table, A = exp(log A), likewise B; then
  Q̄ = Aᵀ B / N is one GEMM producing a 2^|a| × 2^|b| matrix (512 × 512 at K = 18, 1024 × 1024 at K = 20).
  H = −Σ Q̄ log Q̄ with 0·log 0 = 0 (only exact zeros are masked; no clamping).
- Beyond ``max_exact_bits`` (default 20) the K bits are split into G contiguous groups (sizes as equal as possible)
  and the penalty uses Σ_g H(Q̄_g), the sum of the entropies of the groups' marginals, each computed exactly as above.
  By subadditivity H(Q̄) ≤ Σ_g H(Q̄_g): an upper bound, tight when the groups are independent under Q̄.
- Under torch.distributed (training mode), the per-rank sums N·Q̄ are all-reduced differentiably and divided by the
  global N, so H(Q̄) is the entropy of the global batch (each rank's gradient is world_size × the global-batch
  gradient; DDP's averaging makes it exact).
- ``entropy_ema_decay`` = d keeps a bias-corrected EMA of Q̄ (Adam-style): m_t = d·m_{t−1} + (1−d)·Q̄_t,
  Q̃_t = m_t / (1 − d^t), H(Q̃_t) replaces H(Q̄_t). m_{t−1} is a detached buffer, so gradients flow through the current
  batch's (1−d)/(1 − d^t)·Q̄_t only. This lifts the log N ceiling of the entropy of a small batch.
All entropies are in nats and are computed in float32 (or ``entropy_dtype``) with autocast off.

Annealing: the entropy weight at step t is w·(f + (1 − f)·min(t/T, 1)) (linear) or w·(1 + (f − 1)·(1 + cos(π·min(t/T,
1)))/2) (cosine), f = ``entropy_anneal_factor`` (3), T = ``entropy_anneal_steps`` (2000). The step is the ``step``
argument of ``forward`` when given, else the ``step`` buffer, which counts training-mode forward calls (and is saved
in checkpoints). With gradient accumulation, pass ``step=`` (the optimizer step) explicitly.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vistok.quantizers.base import (
    QuantizerOutput,
    UsageTracker,
    all_reduce_sum,
    codes_channel_first,
    flatten_channels,
    full_precision,
    is_distributed,
    project,
    unflatten_channels,
)

BitOrder = Literal["lsb", "msb"]
MAX_BITS = 62  # token ids are int64

# ----------------------------------------------------------------------------------------------- token ids


def _bit_weights(num_bits: int, bit_order: BitOrder, device: torch.device | None = None) -> Tensor:
    """2^(position of channel k's bit) for k = 0..K−1 under the given bit order."""
    if bit_order not in ("lsb", "msb"):
        raise ValueError(f"bit_order must be 'lsb' or 'msb', got {bit_order!r}")
    k = torch.arange(num_bits, device=device)
    if bit_order == "msb":
        k = num_bits - 1 - k
    return torch.ones((), dtype=torch.long, device=device).bitwise_left_shift(k)


def bits_to_indices(bits: Tensor, bit_order: BitOrder = "lsb") -> Tensor:
    """Bits ``(..., K)`` (bool or 0/1; channel k is bit k) → int64 token ids ``(...)``."""
    return (bits.long() * _bit_weights(bits.shape[-1], bit_order, bits.device)).sum(-1)


def indices_to_bits(indices: Tensor, num_bits: int, bit_order: BitOrder = "lsb") -> Tensor:
    """Token ids ``(...)`` → bool bits ``(..., K)`` (inverse of :func:`bits_to_indices`)."""
    return indices.long().unsqueeze(-1).bitwise_and(_bit_weights(num_bits, bit_order, indices.device)) != 0


def convert_bit_order(indices: Tensor, num_bits: int, from_order: BitOrder, to_order: BitOrder) -> Tensor:
    """Re-number token ids from one bit order to the other (a bit reversal of the K-bit id)."""
    return bits_to_indices(indices_to_bits(indices, num_bits, from_order), to_order)


def _check_groups(num_bits: int, num_groups: int) -> int:
    if num_groups < 1 or num_bits % num_groups:
        raise ValueError(f"num_groups={num_groups} must divide num_bits={num_bits}")
    return num_bits // num_groups


def split_indices(indices: Tensor, num_bits: int, num_groups: int) -> Tensor:
    """Token ids ``(...)`` → sub-tokens ``(..., G)`` of K/G bits each; sub-token g = digit g in base 2^(K/G),
    least significant first. With LSB order, sub-token 0 holds channels 0..K/G−1."""
    bits = _check_groups(num_bits, num_groups)
    shifts = torch.arange(num_groups, device=indices.device) * bits
    return indices.long().unsqueeze(-1).bitwise_right_shift(shifts).bitwise_and((1 << bits) - 1)


def join_indices(subtokens: Tensor, num_bits: int) -> Tensor:
    """Sub-tokens ``(..., G)`` → token ids ``(...)`` (inverse of :func:`split_indices`)."""
    bits = _check_groups(num_bits, subtokens.shape[-1])
    shifts = torch.arange(subtokens.shape[-1], device=subtokens.device) * bits
    return subtokens.long().bitwise_left_shift(shifts).sum(-1)


# ----------------------------------------------------------------------------------------------- exact entropies


def per_sample_entropy(logits: Tensor) -> Tensor:
    """E_n Σ_k h(σ(u_nk)) for per-bit logits u ``(N, K)``: the mean entropy of the factorized q(·|x_n), nats."""
    h = -(torch.sigmoid(logits) * F.logsigmoid(logits) + torch.sigmoid(-logits) * F.logsigmoid(-logits))
    return h.sum(-1).mean()


def _bit_table(num_bits: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """``(2^n, n)`` table of {0, 1}: row j holds the bits of j, LSB first."""
    j = torch.arange(1 << num_bits, device=device).unsqueeze(-1)
    return j.bitwise_right_shift(torch.arange(num_bits, device=device)).bitwise_and(1).to(dtype)


def _log_joint(logits: Tensor) -> Tensor:
    """log Π_k Bern(c_k; σ(u_nk)) for every c ∈ {0,1}^n: ``(N, 2^n)`` from logits ``(N, n)`` (one GEMM)."""
    table = _bit_table(logits.shape[-1], logits.device, logits.dtype)
    log_bits = torch.cat([F.logsigmoid(logits), F.logsigmoid(-logits)], dim=-1)  # log p_k, log(1 − p_k)
    return log_bits @ torch.cat([table, 1 - table], dim=-1).T


def code_probability_sum(logits: Tensor) -> Tensor:
    """Σ_n q(c|x_n) over all 2^n codes c, flattened ``(2^n,)``, via the half-split GEMM Aᵀ B (no N × 2^n tensor).

    The flat position of code c is a(c) · 2^|b| + b(c), where a(c) is the id of the low ⌈n/2⌉ bits of c and b(c)
    that of the high bits (an internal order; only used for entropies and the EMA buffer)."""
    half = (logits.shape[-1] + 1) // 2
    a = _log_joint(logits[:, :half]).exp()
    b = _log_joint(logits[:, half:]).exp()
    return (a.T @ b).reshape(-1)


def entropy(probs: Tensor) -> Tensor:
    """−Σ p log p over the last dim with 0·log 0 = 0 (exact zeros masked, with zero gradient; nothing clamped)."""
    safe = torch.where(probs > 0, probs, torch.ones_like(probs))
    return -(probs * safe.log()).sum(-1)


def entropy_group_sizes(num_bits: int, max_exact_bits: int = 20, num_groups: int | None = None) -> list[int]:
    """Contiguous bit groups for the codebook entropy, sizes as equal as possible (larger first): one group (exact)
    when K ≤ max_exact_bits, else ⌈K / max_exact_bits⌉ groups (the upper bound), unless num_groups is given."""
    num_groups = num_groups or (1 if num_bits <= max_exact_bits else math.ceil(num_bits / max_exact_bits))
    base, extra = divmod(num_bits, num_groups)
    sizes = [base + (g < extra) for g in range(num_groups)]
    if sizes[0] > max_exact_bits or sizes[-1] < 1:
        raise ValueError(f"entropy groups {sizes} must have 1..{max_exact_bits} bits each")
    return sizes


def annealed_weight(
    step: int | Tensor, weight: float, factor: float = 3.0, steps: int = 2000, mode: str = "linear"
) -> Tensor:
    """weight × (factor → 1 over ``steps`` steps, linear or cosine), then weight (see the module docstring)."""
    if mode not in ("linear", "cosine"):
        raise ValueError(f"anneal mode must be 'linear' or 'cosine', got {mode!r}")
    progress = torch.as_tensor(step, dtype=torch.float32) / max(steps, 1)
    progress = progress.clamp(0.0, 1.0) if steps > 0 else torch.ones_like(progress)
    if mode == "cosine":
        return weight * (1 + (factor - 1) * (1 + torch.cos(math.pi * progress)) / 2)
    return weight * (factor + (1 - factor) * progress)


# ----------------------------------------------------------------------------------------------- the quantizer


class LFQ(nn.Module):
    """Lookup-free quantizer with 2^num_bits codes (see the module docstring for the maths and conventions).

    Args:
        num_bits: K, bits per token (vocabulary 2^K, at most 62).
        dim: input channels; a linear projection in (and out) is added when dim ≠ K. Default K.
        scale: code magnitude s (codes ±s; with ``spherical``, ±s/√K on a sphere of radius s).
        spherical: binary spherical quantization (BSQ): l2-normalize the latent first.
        bit_order: "lsb" (paper, default) or "msb" (vector-quantize-pytorch).
        num_subtokens: how ``to_subtokens`` splits an index (MAGVIT-v2's factorized heads use 2 for K = 18).
        commitment_weight: weight of ‖x − sg(q)‖² (0.25).
        entropy_weight: base weight of the entropy penalty (0.1); 0 disables it.
        diversity_gamma: γ, weight of the codebook entropy inside the penalty (1).
        inv_temperature: τ in q(c|x) = softmax_c(2τ⟨x, c⟩); per-bit p_k = σ(4τ s' x_k). This is the same τ as
            vector-quantize-pytorch's ``LFQ.forward(inv_temperature=100.)``, whose logits −τ·(−2⟨x, c⟩) are
            −τ‖x − c‖² up to a constant; with a temperature T = 1/τ, softmax(−‖x − c‖²/T) gives p_k = σ(4 s' x_k/T).
        entropy_anneal_factor, entropy_anneal_steps, entropy_anneal: the weight schedule (3×, 2000 steps, linear).
        max_exact_bits: largest K whose codebook entropy is computed exactly (default 20, a 1024×1024 GEMM).
        entropy_groups: number of bit groups for the upper-bound path; default 1 if K ≤ max_exact_bits, else
            ⌈K / max_exact_bits⌉.
        entropy_ema_decay: decay of the bias-corrected EMA of Q̄ (None: the batch alone).
        entropy_dtype: dtype of the entropy computation (float32; float64 for reference checks).
        usage_window: batches in the usage-statistics window (0 disables usage metrics).
    """

    def __init__(
        self,
        num_bits: int,
        dim: int | None = None,
        *,
        scale: float = 1.0,
        spherical: bool = False,
        bit_order: BitOrder = "lsb",
        num_subtokens: int = 1,
        commitment_weight: float = 0.25,
        entropy_weight: float = 0.1,
        diversity_gamma: float = 1.0,
        inv_temperature: float = 100.0,
        entropy_anneal_factor: float = 3.0,
        entropy_anneal_steps: int = 2000,
        entropy_anneal: Literal["linear", "cosine"] = "linear",
        max_exact_bits: int = 20,
        entropy_groups: int | None = None,
        entropy_ema_decay: float | None = None,
        entropy_dtype: torch.dtype = torch.float32,
        usage_window: int = 100,
        projection_bias: bool = True,
    ):
        super().__init__()
        if not 1 <= num_bits <= MAX_BITS:
            raise ValueError(f"num_bits must be in [1, {MAX_BITS}], got {num_bits}")
        _bit_weights(1, bit_order)  # validates bit_order
        _check_groups(num_bits, num_subtokens)
        if entropy_ema_decay is not None and not 0.0 <= entropy_ema_decay < 1.0:
            raise ValueError(f"entropy_ema_decay must be in [0, 1), got {entropy_ema_decay}")
        self.num_bits, self.dim = num_bits, dim or num_bits
        self.codebook_size = 2**num_bits
        self.scale, self.spherical, self.bit_order, self.num_subtokens = scale, spherical, bit_order, num_subtokens
        self.code_value = scale / math.sqrt(num_bits) if spherical else scale
        self.commitment_weight, self.entropy_weight = commitment_weight, entropy_weight
        self.diversity_gamma, self.inv_temperature = diversity_gamma, inv_temperature
        self.entropy_anneal_factor, self.entropy_anneal_steps = entropy_anneal_factor, entropy_anneal_steps
        self.entropy_anneal = entropy_anneal
        annealed_weight(0, 1.0, mode=entropy_anneal)  # validates the mode
        self.entropy_group_sizes = entropy_group_sizes(num_bits, max_exact_bits, entropy_groups)
        self.entropy_ema_decay, self.entropy_dtype = entropy_ema_decay, entropy_dtype
        project = self.dim != num_bits
        self.project_in = nn.Linear(self.dim, num_bits, bias=projection_bias) if project else nn.Identity()
        self.project_out = nn.Linear(num_bits, self.dim, bias=projection_bias) if project else nn.Identity()
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        if entropy_ema_decay is not None:
            total = sum(2**g for g in self.entropy_group_sizes)
            self.register_buffer("ema_probs", torch.zeros(total, dtype=entropy_dtype))
            self.register_buffer("ema_updates", torch.zeros((), dtype=torch.long))
        self.usage = UsageTracker(self.codebook_size, usage_window) if usage_window else None

    # -- ids ↔ codes

    def indices_to_codes(self, indices: Tensor) -> Tensor:
        """Token ids ``(B, *S)`` → channel-first codes ``(B, K, *S)`` with values ±s (±s/√K spherical)."""
        bits = indices_to_bits(indices, self.num_bits, self.bit_order)
        return codes_channel_first(torch.where(bits, self.code_value, -self.code_value).float())

    def indices_to_quantized(self, indices: Tensor) -> Tensor:
        """Token ids → what ``forward`` returns as ``quantized`` (codes through the output projection)."""
        codes = self.indices_to_codes(indices)
        x, grid = flatten_channels(codes, self.num_bits)
        return unflatten_channels(project(self.project_out, x), grid)

    def to_subtokens(self, indices: Tensor) -> Tensor:
        """Full ids ``(...)`` → ``(..., num_subtokens)`` sub-token ids of K/num_subtokens bits each."""
        return split_indices(indices, self.num_bits, self.num_subtokens)

    def from_subtokens(self, subtokens: Tensor) -> Tensor:
        """Inverse of :meth:`to_subtokens`."""
        return join_indices(subtokens, self.num_bits)

    # -- entropy penalty

    def entropy_weight_schedule(self, step: int | Tensor) -> Tensor:
        """The annealed entropy weight at ``step``."""
        return annealed_weight(
            step, self.entropy_weight, self.entropy_anneal_factor, self.entropy_anneal_steps, self.entropy_anneal
        )

    def bit_logits(self, x: Tensor) -> Tensor:
        """Per-bit logits u = 4τ s' x of q(c|x) = softmax_c(2τ⟨x, c⟩), for latents ``(N, K)`` as quantized."""
        return (4 * self.inv_temperature * self.code_value) * x.to(self.entropy_dtype)

    def entropy_terms(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(per-sample entropy, codebook entropy) in nats, differentiable, for latents ``(N, K)`` (after the input
        projection and, for BSQ, the normalization). In training mode the codebook term is that of the global batch
        under torch.distributed and updates the EMA when enabled."""
        with full_precision(x.device):
            logits = self.bit_logits(x)
            sums = torch.cat([code_probability_sum(u) for u in logits.split(self.entropy_group_sizes, dim=-1)])
            count = torch.tensor(float(logits.shape[0]), dtype=sums.dtype, device=sums.device)
            if self.training and is_distributed():
                sums, count = all_reduce_sum(sums, differentiable=True), all_reduce_sum(count)
            probs = self._ema_mix(sums / count)
            group_probs = probs.split([2**g for g in self.entropy_group_sizes])
            codebook = torch.stack([entropy(p) for p in group_probs]).sum()
            return per_sample_entropy(logits), codebook

    def _ema_mix(self, probs: Tensor) -> Tensor:
        """Bias-corrected EMA of Q̄ (identity when disabled); updates the buffer in training mode."""
        if self.entropy_ema_decay is None:
            return probs
        decay, t = self.entropy_ema_decay, self.ema_updates + 1
        mixed = decay * self.ema_probs + (1 - decay) * probs
        if self.training:
            self.ema_probs.copy_(mixed.detach())
            self.ema_updates.add_(1)
        return mixed / (1 - decay**t)

    # -- forward

    def quantize(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Float32 latents ``(N, K)`` → (latents as used: normalized for BSQ, straight-through codes, bits)."""
        if self.spherical:
            x = self.scale * F.normalize(x, dim=-1)
        bits = x > 0
        codes = torch.where(bits, self.code_value, -self.code_value).to(x.dtype)
        return x, codes + (x - x.detach()), bits

    def forward(self, z: Tensor, step: int | Tensor | None = None) -> QuantizerOutput:
        """Quantize channel-first ``z`` ``(B, dim, *S)``; the entropy penalty is computed in training mode only."""
        tokens, grid = flatten_channels(z, self.dim)
        tokens = self.project_in(tokens)
        with full_precision(z.device):
            x, quantized, bits = self.quantize(tokens.float())
            commit = F.mse_loss(x, quantized.detach())
            loss, metrics = self.commitment_weight * commit, {"commit": commit.detach()}
            if self.training and self.entropy_weight > 0:
                loss, metrics = self._add_entropy_loss(x, loss, metrics, step)
        if self.training:
            self.step.add_(1)
        quantized = self.project_out(quantized.to(tokens.dtype))
        indices = bits_to_indices(bits, self.bit_order).reshape(grid)
        self._track_usage(indices, metrics)
        return QuantizerOutput(unflatten_channels(quantized, grid), indices, loss, metrics)

    def _add_entropy_loss(
        self, x: Tensor, loss: Tensor, metrics: dict[str, Tensor], step: int | Tensor | None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        sample, codebook = self.entropy_terms(x)
        entropy_loss = sample - self.diversity_gamma * codebook
        weight = self.entropy_weight_schedule(self.step if step is None else step).to(loss.device)
        metrics.update(
            per_sample_entropy=sample.detach().float(),
            codebook_entropy=codebook.detach().float(),
            entropy_loss=entropy_loss.detach().float(),
            entropy_weight=weight.detach(),
        )
        return loss + weight * entropy_loss.float(), metrics

    def _track_usage(self, indices: Tensor, metrics: dict[str, Tensor]) -> None:
        if self.usage is not None:
            self.usage.update(indices, sync=self.training)
            metrics.update(self.usage.metrics())

    def extra_repr(self) -> str:
        return (
            f"num_bits={self.num_bits}, dim={self.dim}, bit_order={self.bit_order!r}, spherical={self.spherical}, "
            f"inv_temperature={self.inv_temperature}, entropy_groups={self.entropy_group_sizes}"
        )
