"""Vector quantization (VQ) — van den Oord et al., "Neural Discrete Representation Learning", NeurIPS 2017, eq. 3;
low-dimensional l2-normalized codes as in LlamaGen (Sun et al., "Autoregressive Model Beats Diffusion: Llama for
Scalable Image Generation", 2024) after ViT-VQGAN's factorized codes (Yu et al., "Vector-quantized Image Modeling
with Improved VQGAN", ICLR 2022).

A latent x ∈ R^D (after the input projection; l2-normalized when ``l2_normalize``) is replaced by its nearest code
    k* = argmin_k ‖x − e_k‖² = argmin_k (‖e_k‖² − 2⟨x, e_k⟩)     (cosine similarity when both are normalized),
searched in row chunks so that at most ``max_distance_elements`` distances exist at a time. Output (straight-through):
x̂ = e_k* + (x − sg(x)), value exactly e_k*, gradient identity to x and none to the codebook.

Losses (eq. 3, with β on the *encoder* term — the placement of the paper and LlamaGen):
    L = β·‖sg(e_k*) − x‖²  (commitment: gradient to the encoder only)
      + w·‖e_k* − sg(x)‖²  (codebook: gradient to the codes only; w = ``codebook_weight``, 1),
each a mean over elements. With ``ema_decay`` the codebook term is dropped and the codes follow exponential moving
averages of their assigned latents (VQ-VAE appendix A.1): n_k ← d·n_k + (1−d)·count_k, m_k ← d·m_k + (1−d)·Σ x,
e_k = m_k / ñ_k with Laplace smoothing ñ_k = (n_k + ε)/(Σn + Kε)·Σn (then normalized in l2 mode). The EMA starts as
if each code had been seen once at its initial value (n_k = 1, m_k = e_k), so unused codes decay towards 0 instead
of blowing up.

Dead-code restart: each training step records, per code, the last step it was used (global batch under
torch.distributed); codes unused for ``restart_after`` steps are replaced, at the start of the next training
forward, by latents drawn from a FIFO of recent encoder outputs (rank 0's FIFO, broadcast so all ranks agree).
Optimizer state of a restarted code (e.g. Adam moments) is not reset.

Token index: the row of the codebook. Distances and losses run in float32 with autocast off.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
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


@torch.no_grad()
def nearest_code(x: Tensor, codebook: Tensor, max_distance_elements: int = 2**24) -> Tensor:
    """argmin_k ‖x_n − e_k‖² for rows x ``(N, D)`` and codes ``(K, D)``, in chunks of ≤ max_distance_elements."""
    chunk = max(1, max_distance_elements // codebook.shape[0])
    code_sq = codebook.pow(2).sum(-1)
    return torch.cat([(code_sq - 2 * rows @ codebook.T).argmin(-1) for rows in x.split(chunk)])


class VectorQuantizer(nn.Module):
    """Codebook VQ with ``codebook_size`` codes of ``code_dim`` channels.

    Args:
        codebook_size: K, number of codes.
        dim: input channels.
        code_dim: code channels (default ``dim``); linear projections in/out are added when code_dim ≠ dim
            (LlamaGen: 8-dimensional codes).
        l2_normalize: normalize latents and codes (cosine-similarity search, losses on the sphere).
        beta: commitment weight on the encoder term (0.25).
        codebook_weight: weight of the codebook term (1; unused with EMA updates).
        ema_decay: if set, EMA codebook updates with this decay instead of the codebook loss.
        ema_eps: Laplace smoothing ε of the EMA cluster sizes.
        restart_after: replace codes unused for this many training steps (None: never).
        restart_buffer_size: FIFO length of recent latents used for restarts.
        max_distance_elements: bound on the distance matrix chunk (rows × K) in the nearest-code search.
        usage_window: batches in the usage-statistics window (0 disables usage metrics).
    """

    def __init__(
        self,
        codebook_size: int,
        dim: int,
        code_dim: int | None = None,
        *,
        l2_normalize: bool = False,
        beta: float = 0.25,
        codebook_weight: float = 1.0,
        ema_decay: float | None = None,
        ema_eps: float = 1e-5,
        restart_after: int | None = None,
        restart_buffer_size: int = 4096,
        max_distance_elements: int = 2**24,
        usage_window: int = 100,
        projection_bias: bool = True,
    ):
        super().__init__()
        if codebook_size < 1 or dim < 1:
            raise ValueError(f"codebook_size and dim must be positive, got {codebook_size} and {dim}")
        if ema_decay is not None and not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {ema_decay}")
        if restart_after is not None and restart_after < 1:
            raise ValueError(f"restart_after must be >= 1 step, got {restart_after}")
        self.codebook_size, self.dim, self.code_dim = codebook_size, dim, code_dim or dim
        self.l2_normalize, self.beta, self.codebook_weight = l2_normalize, beta, codebook_weight
        self.ema_decay, self.ema_eps, self.restart_after = ema_decay, ema_eps, restart_after
        self.max_distance_elements = max_distance_elements
        init = torch.empty(codebook_size, self.code_dim).uniform_(-1 / codebook_size, 1 / codebook_size)
        self.codebook = nn.Parameter(F.normalize(init, dim=-1) if l2_normalize else init)
        project = self.code_dim != dim
        self.project_in = nn.Linear(dim, self.code_dim, bias=projection_bias) if project else nn.Identity()
        self.project_out = nn.Linear(self.code_dim, dim, bias=projection_bias) if project else nn.Identity()
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self.register_buffer("last_used", torch.zeros(codebook_size, dtype=torch.long))
        if ema_decay is not None:
            self.codebook.requires_grad_(False)
            self.register_buffer("ema_cluster_size", torch.ones(codebook_size))
            self.register_buffer("ema_embed_sum", self.codebook.detach().clone())
        if restart_after is not None:
            self.register_buffer("fifo", torch.zeros(restart_buffer_size, self.code_dim), persistent=False)
            self.register_buffer("fifo_len", torch.zeros((), dtype=torch.long), persistent=False)
            self.register_buffer("fifo_pos", torch.zeros((), dtype=torch.long), persistent=False)
        self.usage = UsageTracker(codebook_size, usage_window) if usage_window else None

    # -- ids ↔ codes

    def codes(self) -> Tensor:
        """The codebook as used for search and output (float32; normalized in l2 mode)."""
        codebook = self.codebook.float()
        return F.normalize(codebook, dim=-1) if self.l2_normalize else codebook

    def indices_to_codes(self, indices: Tensor) -> Tensor:
        """Ids ``(B, *S)`` → channel-first codes ``(B, code_dim, *S)``."""
        return codes_channel_first(F.embedding(indices.long(), self.codes()))

    def indices_to_quantized(self, indices: Tensor) -> Tensor:
        """Ids → what ``forward`` returns as ``quantized`` (codes through the output projection)."""
        codes, grid = flatten_channels(self.indices_to_codes(indices), self.code_dim)
        return unflatten_channels(project(self.project_out, codes), grid)

    # -- forward

    def forward(self, z: Tensor) -> QuantizerOutput:
        """Quantize channel-first ``z`` ``(B, dim, *S)``; EMA updates and restarts happen in training mode only."""
        tokens, grid = flatten_channels(z, self.dim)
        tokens = self.project_in(tokens)
        metrics: dict[str, Tensor] = {}
        if self.training and self.restart_after is not None:
            metrics["restarted"] = self._restart_dead_codes()
        with full_precision(z.device):
            x = tokens.float()
            x = F.normalize(x, dim=-1) if self.l2_normalize else x
            codebook = self.codes()
            indices = nearest_code(x.detach(), codebook.detach(), self.max_distance_elements)
            code = F.embedding(indices, codebook)
            loss = self._losses(x, code, metrics)
            quantized = code.detach() + (x - x.detach())
        if self.training:
            self._record_step(x.detach(), indices)
        elif self.usage is not None:
            self.usage.update(indices)
        if self.usage is not None:
            metrics.update(self.usage.metrics())
        quantized = self.project_out(quantized.to(tokens.dtype))
        return QuantizerOutput(unflatten_channels(quantized, grid), indices.reshape(grid), loss, metrics)

    def _losses(self, x: Tensor, code: Tensor, metrics: dict[str, Tensor]) -> Tensor:
        commit = F.mse_loss(x, code.detach())  # β on the encoder term
        metrics["commit"] = commit.detach()
        if self.ema_decay is not None:
            return self.beta * commit
        codebook = F.mse_loss(code, x.detach())  # moves the codes only
        metrics["codebook"] = codebook.detach()
        return self.beta * commit + self.codebook_weight * codebook

    # -- training-time state: usage, EMA, restarts

    @torch.no_grad()
    def _record_step(self, x: Tensor, indices: Tensor) -> None:
        """After a training step: global code counts → last_used, usage window, EMA update, restart FIFO."""
        counts = all_reduce_sum(torch.bincount(indices, minlength=self.codebook_size))
        self.step.add_(1)
        self.last_used.copy_(torch.where(counts > 0, self.step, self.last_used))
        if self.usage is not None:
            used = counts.nonzero().squeeze(-1)
            self.usage.update_histogram(used, counts[used])
        if self.ema_decay is not None:
            self._ema_update(x, indices, counts)
        if self.restart_after is not None:
            self._push_fifo(x)

    def _ema_update(self, x: Tensor, indices: Tensor, counts: Tensor) -> None:
        decay, eps = self.ema_decay, self.ema_eps
        sums = all_reduce_sum(torch.zeros_like(self.ema_embed_sum).index_add_(0, indices, x))
        self.ema_cluster_size.mul_(decay).add_(counts.float(), alpha=1 - decay)
        self.ema_embed_sum.mul_(decay).add_(sums, alpha=1 - decay)
        total = self.ema_cluster_size.sum()
        smoothed = (self.ema_cluster_size + eps) / (total + self.codebook_size * eps) * total
        codebook = self.ema_embed_sum / smoothed.unsqueeze(-1)
        self.codebook.copy_(F.normalize(codebook, dim=-1) if self.l2_normalize else codebook)

    def _push_fifo(self, x: Tensor) -> None:
        """Keep the most recent latents (a random subset of the batch when it exceeds the FIFO)."""
        size = self.fifo.shape[0]
        if x.shape[0] > size:
            x = x[torch.randperm(x.shape[0], device=x.device)[:size]]
        slots = (self.fifo_pos + torch.arange(x.shape[0], device=x.device)) % size
        self.fifo[slots] = x.to(self.fifo.dtype)
        self.fifo_pos.copy_((self.fifo_pos + x.shape[0]) % size)
        self.fifo_len.copy_((self.fifo_len + x.shape[0]).clamp(max=size))

    @torch.no_grad()
    def _restart_dead_codes(self) -> Tensor:
        """Replace codes unused for ``restart_after`` steps by recent latents; returns how many were replaced."""
        dead = (self.step - self.last_used) >= self.restart_after
        num_dead = int(dead.sum())
        if num_dead == 0:
            return torch.zeros((), device=dead.device)
        available = max(int(self.fifo_len), 1)
        if num_dead <= available:  # distinct latents when there are enough
            pick = torch.randperm(available, device=dead.device)[:num_dead]
        else:
            pick = torch.randint(available, (num_dead,), device=dead.device)
        new = self.fifo[pick].clone()
        if is_distributed():
            dist.broadcast(new, src=0)
        self.codebook[dead] = new.to(self.codebook.dtype)
        if self.ema_decay is not None:
            self.ema_embed_sum[dead] = new
            self.ema_cluster_size[dead] = 1.0
        self.last_used[dead] = self.step
        return torch.tensor(float(num_dead), device=dead.device)

    def extra_repr(self) -> str:
        return (
            f"codebook_size={self.codebook_size}, dim={self.dim}, code_dim={self.code_dim}, "
            f"l2_normalize={self.l2_normalize}, beta={self.beta}, ema_decay={self.ema_decay}, "
            f"restart_after={self.restart_after}"
        )


VQ = VectorQuantizer
