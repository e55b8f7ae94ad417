"""Dynamic visual tokens — Chat-UniVi (Jin et al., "Chat-UniVi: Unified Visual Representation Empowers Large Language
Models with Image and Video Understanding", CVPR 2024, §3.1), with ToMe (Bolya et al., "Token Merging: Your ViT but
Faster", ICLR 2023) and uniform average pooling behind one interface, :func:`reduce`.

**DPC-KNN** (density-peak clustering with k nearest neighbours, Du et al., 2016, as used by Chat-UniVi §3.1), for
tokens x_1 … x_N ∈ R^C of one sample:

    d_ij = ‖x_i − x_j‖ / √C                                          (distance)
    ρ_i  = exp(−(1/k) Σ_{j ∈ kNN(i)} d_ij²)                          (local density; kNN(i) excludes i itself)
    δ_i  = min_{j: ρ_j > ρ_i} d_ij,   δ_i = max_j d_ij for the densest token   (distance to a denser token)
    s_i  = ρ_i · δ_i                                                  (score; the top-M scores are the centres)

every token joins its nearest centre (a centre joins itself) and a merged token is the mean of its members — the
size-weighted mean Σ w_n x_n / Σ w_n when token sizes w are given. :func:`dpc_knn` runs this for a padded batch.

- **Padding** (``valid`` False) is never a centre, a member, or a neighbour, and produces no NaN (its values are not
  even read). A sample with n < k + 1 valid tokens uses its n − 1 neighbours (ρ = 1 with none); one with n < M
  valid tokens gets n clusters: slots n … M − 1 have ``valid`` False, zero tokens and sizes, and centre −1.
- **Ties** are broken by token index, so results are deterministic and need no seed: of two tokens with equal
  density the lower index counts as denser (so exactly one token is "the densest"), equal scores rank the lower index
  first, and a token equidistant from two centres joins the earlier cluster. The public code instead adds
  U(0, 1)·10⁻⁶ to the densities; ``jitter=1e-6, seed=s`` does the same with a seeded generator (same seed, same
  result; the noise then depends on the batch layout, so padding invariance holds only for ``jitter=0``).
- **Cluster order**: by score, highest first (as in the paper). :func:`spatial_order` /
  :meth:`MultiScaleResult.sort_by_position` order merged tokens by their centroid (t, y, x) instead.
- **Distances, exactly and at half the cost.** Squared distances are ‖x_i‖² + ‖x_j‖² − 2⟨x_i, x_j⟩ computed in
  *panels*: the rows of tile i (128 tokens on CPU) against the columns from tile i on, one GEMM each, so every
  unordered pair is multiplied once (about half of the full N × N GEMM that dominates the cost) and the matrix is
  exactly symmetric. The squared norms are the diagonal of the same GEMMs, so duplicate tokens are at distance 0.
  δ needs no second pass over the matrix for most tokens: when one of a token's k nearest neighbours is denser, the
  nearest such neighbour is its nearest denser token overall; only local density peaks search their whole row.
- **Memory.** When a sample's (N, N) matrix fits in ``max_bytes`` (default 256 MiB) it is assembled from the panels,
  for groups of samples with up to 16 MiB of matrices on CPU (ops large enough to use several threads) or 256 MiB on
  GPU. Otherwise (or with ``low_memory=True``) each of the three passes — densities, δ, assignment — streams over the
  panels, recomputing them (1.5× the GEMM work of the held matrix, memory O(N·(tile + k)) per sample). Both modes run
  the very same panel GEMMs, so they give bitwise the same distances and clusters. Padding does not change a real
  token's distances either, as long as the GEMM computes an output element the same way whatever the matrix width
  (true for the CPU BLAS here; the tests check padded batch = samples alone).
- **Devices.** On a GPU, where kernel launches rather than arithmetic bound these sizes, panels are larger (1,024
  rows), and the stages never read a device value on the host (which would make it wait for every queued kernel):
  padding is masked without asking whether there is any, and every token searches its whole row for δ instead of
  only the counted density peaks. Outside the stages a call reads the input's finiteness check (and, for video, the
  frame lengths when ``frame_valid`` is given, and the event boundaries, once each). The GPU plan gives
  bitwise the CPU plan's clusters (tested on the CPU). Being sync-free, the stages can also run as one compiled
  graph, ``compile=True`` in :func:`multiscale_merge` / :func:`video_events` (CUDA graphs on a GPU: one replay
  instead of hundreds of launches). It compiles once per input shape and is meant for GPUs: on a CPU it is slower
  than eager (``benchmarks/RESULTS.md``).
- Clustering runs in float32 (float64 for float64 input); half/bfloat16 tokens are upcast. Densities underflow to 0
  when mean d² ≳ 100 (as in the paper's formula); scale such features first.

**Multi-scale** (:func:`multiscale_merge`, Chat-UniVi §3.1): stages of 64 → 32 → 16 clusters (k = 5, 3, 3), stage s
clustering the merged tokens of stage s − 1; the outputs are concatenated (112 tokens per image). Every merged token
carries its members among the *original* tokens (composed across stages) and its centroid position (t, y, x), the
mean of its members' positions — for ordering and for rotary position embeddings (:mod:`vistok.layers.rope` accepts
real-valued coordinates).

**Video** (:func:`video_events`, Chat-UniVi §3.2): frames are mean-pooled to one feature each and split into
*temporally contiguous* events; the tokens of each event's frames are pooled and merged with the multi-scale
stages, so longer (or busier, with ``num_events="auto"``) videos get more tokens. The public code clusters the frame
features with DPC-KNN, whose clusters need not be contiguous in time. Here (:func:`segment_events`) the events are
the *optimal contiguous segmentation*: the K segments minimizing the within-event sum of squared deviations of the
frame features from their event's mean (k-means under the contiguity constraint), solved exactly by dynamic
programming in O(K·T²) (float64; ties → the earliest boundary). K = ⌈T/16⌉ (the paper's rule), a given number, or
"auto": the fewest events whose cost is at most ``threshold`` × the cost of a single event.

**ToMe** (:func:`tome_merge`, Bolya et al. §3): tokens alternate into sets A (even positions) and B (odd); each A token
finds its most cosine-similar B token; the r most similar edges are merged by size-weighted averaging, with sizes
tracked (x ← Σ s x / Σ s, s ← Σ s). Output order as in ToMe: unmerged A tokens (by decreasing similarity), then B.

**Patch features**: :func:`magvit_features` (the pre-quantization latents of the MAGVIT-v2 tokenizer's encoder),
:class:`ViTPatchEncoder` (a small vistok ViT, e.g. trained with DINO by ``vistok digit fit``) and
:class:`HFPatchEncoder` (patch tokens of a CLIP / SigLIP / DINOv2 model loaded from a local folder).
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "DEFAULT_MAX_BYTES",
    "TILE",
    "EventSegmentation",
    "HFPatchEncoder",
    "MergeResult",
    "MultiScaleResult",
    "PatchFeatures",
    "ViTPatchEncoder",
    "VideoMergeResult",
    "dpc_knn",
    "magvit_features",
    "multiscale_merge",
    "pool_merge",
    "reduce",
    "segment_events",
    "spatial_order",
    "tome_merge",
    "tome_reduce",
    "video_events",
]

TILE = 64  # tokens per side of every distance GEMM tile; the padded token count is a multiple of it
CPU_TILE = 128  # rows per distance panel on a CPU: in cache, and large enough for a GEMM to use several threads
GPU_TILE = 1024  # rows per distance panel on a GPU: fewer, larger GEMMs (kernel launches dominate small ones)
DEFAULT_MAX_BYTES = 2**28  # distance matrices held in memory up to 256 MiB
STAGES = (64, 32, 16)
KS = (5, 3, 3)
FRAMES_PER_EVENT = 16  # the paper's rule: ceil(T / 16) events

# ----------------------------------------------------------------------------------------------- results


class MergeResult(NamedTuple):
    """Merged tokens of a batch and how they were made.

    tokens (B, M, C): merged tokens (zeros in invalid slots); valid (B, M) bool; assignment (B, N) long: the cluster
    slot of each input token (−1 for padding); centers (B, M) long: the input token representing each cluster (the
    density peak for DPC-KNN, the surviving token for ToMe, the first member for pooling; −1 in invalid slots);
    sizes (B, M): summed member sizes (the member count when no sizes were given); member_weights (B, N): each
    token's weight in its cluster's mean (they sum to one per cluster; 0 for padding).
    """

    tokens: Tensor
    valid: Tensor
    assignment: Tensor
    centers: Tensor
    sizes: Tensor
    member_weights: Tensor

    @property
    def num_clusters(self) -> Tensor:
        """(B,) number of valid clusters per sample."""
        return self.valid.sum(-1)

    def weights(self) -> Tensor:
        """The merge matrix W (B, M, N): ``tokens = W @ x``; each valid cluster's row sums to one."""
        b, n = self.assignment.shape
        w = self.member_weights.new_zeros(b, self.valid.shape[1], n)
        src = (self.member_weights * (self.assignment >= 0))[:, None, :]
        return w.scatter_(1, self.assignment.clamp_min(0)[:, None, :], src)

    def unmerge(self, tokens: Tensor | None = None) -> Tensor:
        """(B, N, C): every input token replaced by its cluster's token (``tokens``, default the merged ones);
        zeros for padding."""
        t = self.tokens if tokens is None else tokens
        idx = self.assignment.clamp_min(0)
        out = t.gather(1, idx[..., None].expand(*idx.shape, t.shape[-1]))
        return out.masked_fill((self.assignment < 0)[..., None], 0)


class MultiScaleResult(NamedTuple):
    """The concatenated outputs of the multi-scale stages, L = Σ M_s slots.

    tokens (B, L, C); valid (B, L); positions (B, L, 3) float: centroid (t, y, x) of each token's original members;
    sizes (B, L): number (or summed sizes) of original members; stage (L,) long: the stage of each slot;
    assignments (B, S, N) long: at stage s, the slot (in 0 … L − 1) holding each original token (−1 for padding).
    """

    tokens: Tensor
    valid: Tensor
    positions: Tensor
    sizes: Tensor
    stage: Tensor
    assignments: Tensor

    def members(self, b: int, slot: int) -> Tensor:
        """Indices of the original tokens merged into ``slot`` of sample ``b``."""
        s = int(self.stage[slot])
        return (self.assignments[b, s] == slot).nonzero().flatten()

    def sort_by_position(self) -> MultiScaleResult:
        """The same result with each stage's tokens ordered by centroid (t, y, x), valid first."""
        perm = spatial_order(self.positions, self.valid, groups=self.stage)
        inv = torch.empty_like(perm).scatter_(1, perm, torch.arange(perm.shape[1], device=perm.device).expand_as(perm))
        a = self.assignments
        remapped = inv[:, None, :].expand(-1, a.shape[1], -1).gather(2, a.clamp_min(0)).masked_fill(a < 0, -1)
        take = lambda t: t.gather(1, perm.view(*perm.shape, *([1] * (t.ndim - 2))).expand(*perm.shape, *t.shape[2:]))
        return self._replace(
            tokens=take(self.tokens),
            valid=take(self.valid),
            positions=take(self.positions),
            sizes=take(self.sizes),
            assignments=remapped,
        )


class EventSegmentation(NamedTuple):
    """Contiguous events of a batch of videos.

    labels (B, T) long: event of each frame (−1 for padding frames); bounds (B, E, 2) long: [start, end) frames of each
    event ((−1, −1) for unused slots); num_events (B,) long; cost (B,) float64: the within-event sum of squared
    deviations of the frame features (d-units: divided by C) — the minimized objective.
    """

    labels: Tensor
    bounds: Tensor
    num_events: Tensor
    cost: Tensor


class VideoMergeResult(NamedTuple):
    """Merged tokens of a batch of videos: every event contributes the multi-scale stages' L_e = Σ M_s slots.

    tokens (B, L, C), L = E_max · L_e, event-major; valid (B, L); positions (B, L, 3) centroid (t, y, x); sizes (B, L);
    event (B, L) long and stage (B, L) long per slot (−1 for unused slots); assignments (B, S, T, N) long: the slot
    of each original token at each stage (−1 for padding); events: the :class:`EventSegmentation`.
    """

    tokens: Tensor
    valid: Tensor
    positions: Tensor
    sizes: Tensor
    event: Tensor
    stage: Tensor
    assignments: Tensor
    events: EventSegmentation


class PatchFeatures(NamedTuple):
    """Patch tokens of pictures: tokens (B, N, C) for images or (B, T, N, C) for videos (frame by frame);
    positions (N, 3) for images or (T, N, 3) for videos: (t, y, x) grid coordinates; grid (T, h, w)."""

    tokens: Tensor
    positions: Tensor
    grid: tuple[int, int, int]


# ----------------------------------------------------------------------------------------------- input checks


def _check_tokens(x: Any, name: str = "x") -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a tensor (B, N, C), got {type(x).__name__}")
    if x.ndim != 3:
        raise ValueError(f"{name} must be tokens of shape (B, N, C), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a float tensor, got {x.dtype}")
    if x.shape[2] < 1:
        raise ValueError(f"{name} must have at least one channel, got shape {tuple(x.shape)}")
    return x


def _check_valid(valid: Tensor | None, b: int, n: int, device: torch.device) -> Tensor:
    if valid is None:
        return torch.ones(b, n, dtype=torch.bool, device=device)
    if not isinstance(valid, Tensor) or valid.dtype != torch.bool:
        raise TypeError(f"valid must be a bool tensor (True = real token), got {getattr(valid, 'dtype', valid)}")
    if tuple(valid.shape) != (b, n):
        raise ValueError(f"valid must have shape (B, N) = {(b, n)}, got {tuple(valid.shape)}")
    return valid.to(device)


def _check_sizes(sizes: Tensor | None, valid: Tensor) -> Tensor | None:
    if sizes is None:
        return None
    if not isinstance(sizes, Tensor):
        raise TypeError(f"sizes must be a tensor (B, N), got {type(sizes).__name__}")
    if tuple(sizes.shape) != tuple(valid.shape):
        raise ValueError(f"sizes must have shape (B, N) = {tuple(valid.shape)}, got {tuple(sizes.shape)}")
    sizes = sizes.to(valid.device)
    bad = valid & ~(sizes > 0)
    if bad.any():
        raise ValueError(f"sizes of valid tokens must be positive, got {sizes[bad][0].item()}")
    return sizes


def _check_count(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def _work_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _masked(x: Tensor, valid: Tensor, dtype: torch.dtype, check: bool = True, sync_free: bool | None = None) -> Tensor:
    """x in ``dtype`` with padding zeroed (so garbage or NaN there is never read); non-finite valid tokens raise
    (``check``). ``sync_free`` (default: on a GPU): zero the padding without asking whether there is any."""
    x = x.to(dtype)
    if (_plan_for(x.device).sync_free if sync_free is None else sync_free) or not bool(valid.all()):
        x = x.masked_fill(~valid[..., None], 0)
    if check:
        _check_finite(x, valid)
    return x


def _check_finite(x: Tensor, valid: Tensor) -> None:
    """Raise if a valid token holds NaN or ±inf (padding may hold anything)."""
    if not torch.isfinite(x.sum()) and not bool((torch.isfinite(x) | ~valid[..., None]).all()):  # a sum may overflow
        raise ValueError("tokens contain NaN or infinite values")


# ----------------------------------------------------------------------------------------------- distances


class _Plan(NamedTuple):
    """How the clustering runs on a kind of device (the results are the same under every plan)."""

    tile: int  # rows per distance panel
    group_bytes: int  # distance matrices held at once, per group of samples
    block_bytes: int  # elementwise work on a held matrix, per row block
    sync_free: bool  # never read device values on the host inside a stage: on a GPU every such read stalls the
    # queue of kernel launches, which dominate at these sizes; on a CPU a read is free and lets work be skipped


CPU_PLAN = _Plan(CPU_TILE, 2**24, 2**21, False)  # panels and row blocks in cache; groups of 16 MiB of matrices
GPU_PLAN = _Plan(GPU_TILE, 2**28, 2**28, True)  # few large kernels; 256 MiB of matrices per group


def _plan_for(device: torch.device) -> _Plan:
    return CPU_PLAN if device.type == "cpu" else GPU_PLAN


def _compile_plan(device: torch.device) -> _Plan:
    """The plan for ``compile=True``: the device's own, but sync-free (a compiled graph cannot read values)."""
    return _plan_for(device)._replace(sync_free=True)


class _Panels:
    """Squared distances D_ij = ‖x_i − x_j‖² of a padded batch x (B, Np, C) by panels of ``tile`` rows.

    Panel [s, e) holds the rows s … e − 1 against the columns s … Np − 1: one (B, e − s, C) × (B, C, Np − s) GEMM G,
    D = G_rr + G_cc − 2·G, where the squared norms G_rr are the diagonals of the panels' own GEMMs (so a duplicate
    token is at distance exactly 0; panels are first computed last to first so the norms of later columns are known).
    Each unordered pair is in exactly one panel, which serves both D_ij and D_ji (the diagonal block is symmetrized
    from its upper triangle): the matrix is exactly symmetric and only half of it is multiplied. The diagonal and all
    entries of padding rows/columns are +inf. Iterating yields (s, e, panel) from the last panel to the first,
    recomputed by the very same GEMM calls every time (the same bits). ``tile``: :data:`CPU_TILE` on CPU (the panels
    stay in cache); larger on a GPU (:data:`GPU_TILE`), where each panel costs a handful of kernel launches.
    """

    def __init__(self, x: Tensor, valid: Tensor, tile: int = TILE, sync_free: bool = False) -> None:
        self.x, self.valid = x, valid
        b, n, _ = x.shape
        self.n = n
        self.bounds = [(s, min(s + tile, n)) for s in range(0, n, tile)]
        self.padded = sync_free or not bool(valid.all())  # sync-free: mask every panel rather than ask
        self.sq = x.new_zeros(b, n)
        self._known = False  # are the squared norms computed?
        self._upper: dict[int, Tensor] = {}

    def _compute(self, s: int, e: int) -> Tensor:
        r = e - s
        d = torch.bmm(self.x[:, s:e], self.x[:, s:].mT)  # (B, r, Np − s)
        if not self._known:
            self.sq[:, s:e] = d[:, :, :r].diagonal(dim1=1, dim2=2)
        d.mul_(-2).add_(self.sq[:, None, s:]).add_(self.sq[:, s:e, None]).clamp_min_(0)
        if r not in self._upper:
            self._upper[r] = torch.ones(r, r, dtype=torch.bool, device=self.x.device).triu()
        block = d[:, :, :r]
        block.copy_(torch.where(self._upper[r], block, block.mT))
        block.diagonal(dim1=1, dim2=2).fill_(math.inf)
        if self.padded:
            d.masked_fill_(~self.valid[:, None, s:], math.inf)
            d.masked_fill_(~self.valid[:, s:e, None], math.inf)
        return d

    def __iter__(self):
        for s, e in reversed(self.bounds):
            yield s, e, self._compute(s, e)
        self._known = True

    def matrix(self, out: Tensor | None = None) -> Tensor:
        """The whole (B, Np, Np) matrix, each panel written with its transpose (into ``out`` when given)."""
        shape = (self.x.shape[0], self.n, self.n)
        d = out[: shape[0]] if out is not None and tuple(out.shape[1:]) == shape[1:] else self.x.new_empty(shape)
        for s, e, p in self:
            d[:, s:e, s:] = p
            d[:, e:, s:e] = p[:, :, e - s :].mT
        return d


def _finite_max(x: Tensor, dim: int) -> Tensor:
    return torch.where(torch.isfinite(x), x, -math.inf).amax(dim)


def _density_from(near: Tensor, c: int) -> Tensor:
    """exp(−mean of the finite values of the k smallest d² per row / C), summed in ascending order; 1 if none."""
    near = near.sort(-1).values
    finite = torch.isfinite(near)
    return torch.exp(-(torch.where(finite, near, 0).sum(-1) / finite.sum(-1).clamp_min(1)) / c)


def _finish_assign(dist: Tensor, centers: Tensor, cvalid: Tensor, valid: Tensor) -> Tensor:
    """argmin over the centres (first slot on ties), then centres join themselves; padding −1."""
    b, m = centers.shape
    assign = F.pad(dist.argmin(-1), (0, 1))  # a spare column takes the writes of invalid slots
    slots = torch.arange(m, device=centers.device).expand(b, m)
    assign.scatter_(1, centers.masked_fill(~cvalid, dist.shape[1]), slots)
    return assign[:, :-1].masked_fill(~valid, -1)


# The three passes over the held matrix D (B, Np, Np), in row blocks of ``rows`` rows.


def _row_blocks(n: int, rows: int) -> list[slice]:
    return [slice(r, min(r + rows, n)) for r in range(0, n, rows)]


def _densities_held(d: Tensor, k: int, c: int, rows: int) -> tuple[Tensor, Tensor, Tensor]:
    """(ρ, the k smallest d² per row in ascending order, their column indices)."""
    kk = min(k, d.shape[1] - 1)
    near = [d[:, r].topk(kk, dim=2, largest=False, sorted=True) for r in _row_blocks(d.shape[1], rows)]
    values, index = torch.cat([t.values for t in near], 1), torch.cat([t.indices for t in near], 1)
    return _density_from(values, c), values, index


def _deltas_held(
    d: Tensor,
    rank: Tensor,
    densest: Tensor,
    c: int,
    rows: int,
    near: Tensor,
    near_idx: Tensor,
    valid: Tensor,
    sync_free: bool = False,
) -> Tensor:
    """δ from the kNN lists where possible: if one of a token's k nearest neighbours is denser, the nearest of those
    is its nearest denser token overall (every other token is at least as far as the k-th neighbour), so
    δ² = that neighbour's d². Only the rest — local density peaks — search their whole row. ``sync_free``: every
    row searches its whole row instead (one masked minimum over the matrix; the same values, as a minimum is exact),
    since counting the peaks would make the host wait for the device."""
    b, n = rank.shape
    if sync_free:
        best = torch.cat(
            [torch.where(rank[:, None, :] < rank[:, r, None], d[:, r], math.inf).amin(2) for r in _row_blocks(n, rows)],
            1,
        )
        top = _finite_max(d.gather(1, densest.view(-1, 1, 1).expand(-1, 1, n))[:, 0], 1)
        return torch.sqrt(best.scatter_(1, densest[:, None], top.clamp_min(0)[:, None]) / c)
    denser = (rank.gather(1, near_idx.flatten(1)).view_as(near_idx) < rank[..., None]) & torch.isfinite(near)
    found = denser.any(-1)
    first = denser.to(torch.uint8).argmax(-1, keepdim=True)  # the first denser neighbour (ascending distance)
    best = (
        torch.where(found, near.gather(2, first)[..., 0], math.inf)
        if near.shape[2]
        else near.new_full((b, n), math.inf)
    )
    peaks = valid & ~found
    count = int(peaks.sum(1).max())
    if count:
        order = torch.sort((~peaks).to(torch.uint8), dim=1, stable=True).indices[:, :count]  # peaks first
        is_peak = peaks.gather(1, order)
        step = max(1, rows)
        for p0 in range(0, count, step):
            idx = order[:, p0 : p0 + step]
            row = d.gather(1, idx[..., None].expand(b, idx.shape[1], n))
            full = torch.where(rank[:, None, :] < rank.gather(1, idx)[..., None], row, math.inf).amin(2)
            best.scatter_(1, idx, torch.where(is_peak[:, p0 : p0 + step], full, best.gather(1, idx)))
    top = _finite_max(d.gather(1, densest.view(-1, 1, 1).expand(-1, 1, n))[:, 0], 1)
    return torch.sqrt(best.scatter_(1, densest[:, None], top.clamp_min(0)[:, None]) / c)


def _assign_held(d: Tensor, centers: Tensor, cvalid: Tensor, valid: Tensor) -> Tensor:
    b, m = centers.shape
    dist = d.gather(2, centers.clamp_min(0)[:, None, :].expand(b, d.shape[1], m))
    return _finish_assign(dist.masked_fill_(~cvalid[:, None, :], math.inf), centers, cvalid, valid)


# The same three passes streaming over the panels (memory O(B·Np·(tile + k))).


def _densities_streamed(panels: _Panels, k: int, c: int) -> Tensor:
    """A running top-k per row merges each panel's row-wise and column-wise k smallest."""
    b, n = panels.x.shape[:2]
    kk = min(k, n - 1)
    near = panels.x.new_full((b, n, kk), math.inf)
    for start, after, d in panels:
        rows, r = slice(start, after), after - start
        row_best = d.topk(min(kk, d.shape[2]), dim=2, largest=False).values
        near[:, rows] = torch.cat([near[:, rows], row_best], 2).topk(kk, dim=2, largest=False).values
        if after < n:
            col_best = d[:, :, r:].topk(min(kk, r), dim=1, largest=False).values.mT
            near[:, after:] = torch.cat([near[:, after:], col_best], 2).topk(kk, dim=2, largest=False).values
    return _density_from(near, c)


def _deltas_streamed(panels: _Panels, rank: Tensor, densest: Tensor, c: int) -> Tensor:
    b, n = rank.shape
    best = panels.x.new_full((b, n), math.inf)
    top = panels.x.new_full((b,), -math.inf)
    for start, after, d in panels:
        rows, r = slice(start, after), after - start
        col_denser = rank[:, None, start:] < rank[:, rows, None]
        best[:, rows] = torch.minimum(best[:, rows], d.masked_fill(~col_denser, math.inf).amin(2))
        if after < n:  # the transposed part: row token denser than column token (ranks are distinct)
            below = d[:, :, r:].masked_fill(col_denser[:, :, r:], math.inf).amin(1)
            best[:, after:] = torch.minimum(best[:, after:], below)
        local = (densest - start).clamp(0, d.shape[2] - 1)
        row = _finite_max(d.gather(1, local.clamp_max(r - 1).view(b, 1, 1).expand(b, 1, d.shape[2]))[:, 0], 1)
        col = _finite_max(d.gather(2, local.view(b, 1, 1).expand(b, r, 1))[..., 0], 1)
        top = torch.maximum(top, torch.where((densest >= start) & (densest < after), row, -math.inf))
        top = torch.maximum(top, torch.where(densest >= start, col, -math.inf))
    return torch.sqrt(best.scatter_(1, densest[:, None], top.clamp_min(0)[:, None]) / c)


def _assign_streamed(panels: _Panels, centers: Tensor, cvalid: Tensor) -> Tensor:
    b, m = centers.shape
    dist = panels.x.new_full((b, panels.n, m), math.inf)
    for start, after, d in panels:
        rows, r = slice(start, after), after - start
        local = centers - start
        in_cols = cvalid & (local >= 0)
        cols = d.gather(2, local.clamp(0, d.shape[2] - 1)[:, None, :].expand(b, r, m))
        dist[:, rows] = torch.where(in_cols[:, None, :], cols, dist[:, rows])
        trans = d.gather(1, local.clamp(0, r - 1)[:, :, None].expand(b, m, d.shape[2])).mT
        dist[:, start:] = torch.where((in_cols & (centers < after))[:, None, :], trans, dist[:, start:])
    return _finish_assign(dist, centers, cvalid, panels.valid)


def _cluster_group(
    x: Tensor,
    valid: Tensor,
    m: int,
    k: int,
    hold: bool,
    noise: Tensor | None,
    plan: _Plan,
    buffer: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Centres (B, m; −1 in invalid slots) and assignment (B, Np) of padded tokens x (B, Np, C)."""
    b, n, c = x.shape
    panels = _Panels(x, valid, plan.tile, plan.sync_free)
    d = panels.matrix(buffer) if hold else None
    rows = max(1, plan.block_bytes // (b * n * x.element_size()))
    if hold:
        rho, near, near_idx = _densities_held(d, k, c, rows)
    else:
        rho = _densities_streamed(panels, k, c)
    if noise is not None:
        rho = rho + noise
    rho = rho.masked_fill(~valid, -1.0)  # padding ranks last; valid ρ ≥ 0
    order = torch.sort(rho, dim=1, descending=True, stable=True).indices  # ties → lower index first
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(n, device=x.device).expand_as(order))
    densest = order[:, 0]
    if hold:
        delta = _deltas_held(d, rank, densest, c, rows, near, near_idx, valid, plan.sync_free)
    else:
        delta = _deltas_streamed(panels, rank, densest, c)
    score = (rho * delta).masked_fill(~valid, -math.inf)
    if n < m:
        score = F.pad(score, (0, m - n), value=-math.inf)
    top = torch.sort(score, dim=1, descending=True, stable=True)
    cvalid = top.values[:, :m] > -math.inf
    centers = top.indices[:, :m].masked_fill(~cvalid, -1)
    assign = _assign_held(d, centers, cvalid, valid) if hold else _assign_streamed(panels, centers, cvalid)
    return centers, assign


def _plan(b: int, n: int, itemsize: int, max_bytes: int, low_memory: bool, plan: _Plan) -> tuple[int, bool]:
    """(samples per group, hold the matrix?)."""
    per_sample = n * n * itemsize
    hold = not low_memory and per_sample <= max_bytes
    group_bytes = min(plan.group_bytes, max_bytes)
    return (max(1, min(b, group_bytes // per_sample)) if hold else 1), hold


def _merge_tokens(
    x: Tensor, valid: Tensor, assign: Tensor, centers: Tensor, sizes: Tensor | None, out_dtype: torch.dtype
) -> MergeResult:
    """Plain or size-weighted means of the clusters (one ``index_add_`` of the member tokens, then a division)."""
    b, n, c = x.shape
    m = centers.shape[1]
    w = (sizes.to(x.dtype) if sizes is not None else torch.ones_like(x[..., 0])) * valid
    idx = assign.clamp_min(0)
    total = x.new_zeros(b, m).scatter_add_(1, idx, w)
    member = torch.where(valid, w / total.gather(1, idx).clamp_min(torch.finfo(x.dtype).tiny), 0)
    flat = (idx + m * torch.arange(b, device=x.device)[:, None]).flatten()
    src = x if sizes is None else x * w[..., None]  # padding rows of x are zero
    tokens = x.new_zeros(b * m, c).index_add_(0, flat, src.reshape(b * n, c)).view(b, m, c)
    tokens = tokens / total.clamp_min(torch.finfo(x.dtype).tiny)[..., None]
    return MergeResult(tokens.to(out_dtype), centers >= 0, assign, centers, total.to(out_dtype), member.to(out_dtype))


def dpc_knn(
    x: Tensor,
    num_clusters: int,
    k: int = 5,
    valid: Tensor | None = None,
    sizes: Tensor | None = None,
    *,
    jitter: float = 0.0,
    seed: int = 0,
    max_bytes: int = DEFAULT_MAX_BYTES,
    low_memory: bool = False,
) -> MergeResult:
    """DPC-KNN merging of tokens ``x`` (B, N, C) into ``num_clusters`` (M) tokens per sample (module docstring).

    ``valid`` (B, N) bool marks real tokens (default: all); ``sizes`` (B, N) > 0 makes merged tokens size-weighted
    means (clustering ignores sizes). ``jitter``: add U(0, 1)·jitter to the densities (seeded by ``seed``), as the
    public code does with 10⁻⁶; 0 = ties by index. ``max_bytes``: the most memory the distances of one sample may
    hold (about N²/2 values); beyond it, or with ``low_memory``, each pass recomputes them panel by panel (same
    result, memory O(N·(tile + k))). Returns a :class:`MergeResult` with M slots.
    """
    x = _check_tokens(x)
    m, k = _check_count(num_clusters, "num_clusters"), _check_count(k, "k")
    b, n, _ = x.shape
    valid = _check_valid(valid, b, n, x.device)
    sizes = _check_sizes(sizes, valid)
    return _dpc_knn(x, m, k, valid, sizes, jitter, seed, max_bytes, low_memory, checked=False)


def _dpc_knn(
    x: Tensor,
    m: int,
    k: int,
    valid: Tensor,
    sizes: Tensor | None,
    jitter: float = 0.0,
    seed: int = 0,
    max_bytes: int = DEFAULT_MAX_BYTES,
    low_memory: bool = False,
    checked: bool = False,
    plan: _Plan | None = None,
) -> MergeResult:
    """:func:`dpc_knn` of checked arguments; ``checked``: x is known to be finite; ``plan``: default the device's."""
    b, n, _ = x.shape
    plan = plan or _plan_for(x.device)
    xw = _masked(x, valid, _work_dtype(x), check=not checked, sync_free=plan.sync_free)
    np_ = -(-max(n, 1) // TILE) * TILE
    xp, vp = (F.pad(xw, (0, 0, 0, np_ - n)), F.pad(valid, (0, np_ - n), value=False)) if np_ > n else (xw, valid)
    noise = None
    if jitter:
        g = torch.Generator().manual_seed(int(seed))
        noise = F.pad(torch.rand(b, n, generator=g, dtype=torch.float64) * jitter, (0, np_ - n))
        noise = noise.to(x.device, xw.dtype)
    group, hold = _plan(b, np_, xp.element_size(), max_bytes, low_memory, plan)
    buffer = xp.new_empty(group, np_, np_) if hold and b > group else None  # one matrix reused by every group
    centers, assign = [], []
    for g0 in range(0, b, group):
        sl = slice(g0, g0 + group)
        cen, asg = _cluster_group(xp[sl], vp[sl], m, k, hold, None if noise is None else noise[sl], plan, buffer)
        centers.append(cen)
        assign.append(asg[:, :n])
    one = len(assign) == 1  # a single group: no copy but of a padded slice
    assign_all, centers_all = (assign[0].contiguous(), centers[0]) if one else (torch.cat(assign), torch.cat(centers))
    return _merge_tokens(xw, valid, assign_all, centers_all, sizes, x.dtype)


# ----------------------------------------------------------------------------------------------- positions, order


def _positions(positions: Tensor | Sequence[int] | None, b: int, n: int, device: torch.device) -> Tensor:
    """(B, N, 3) float (t, y, x) from (N, 3) / (B, N, 3) / (N, 2) (y, x) coordinates, a grid (T, H, W), or None
    (the token index as x)."""
    if positions is None:
        p = torch.zeros(n, 3, device=device)
        p[:, 2] = torch.arange(n, device=device)
    elif not isinstance(positions, Tensor):
        dims = tuple(int(s) for s in positions)
        if len(dims) not in (2, 3) or math.prod(dims) != n:
            raise ValueError(f"a position grid must be (H, W) or (T, H, W) with N = {n} cells, got {dims}")
        axes = [torch.arange(s, device=device, dtype=torch.float32) for s in ((1,) * (3 - len(dims)) + dims)]
        p = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(n, 3)
    else:
        p = positions.to(device=device, dtype=torch.float32)
        if p.shape[-1] == 2:
            p = F.pad(p, (1, 0))
        if p.shape[-1] != 3 or p.shape[-2] != n or p.ndim not in (2, 3) or (p.ndim == 3 and p.shape[0] != b):
            raise ValueError(
                f"positions must be (N, 3) or (B, N, 3) (t, y, x) or (N, 2) (y, x) with B = {b}, N = {n}; "
                f"got {tuple(positions.shape)}"
            )
    return p.expand(b, n, 3) if p.ndim == 2 else p


def spatial_order(positions: Tensor, valid: Tensor | None = None, groups: Tensor | None = None) -> Tensor:
    """Permutation (B, M) sorting tokens by (group, t, y, x) with invalid tokens last within their group.

    ``positions`` (B, M, 3) (or (B, M, D): lexicographic over the D coordinates); ``groups`` (M,) or (B, M), e.g. the
    stage of each slot, keeps groups in place. Ties keep the current order. Apply with ``x.gather(1, perm...)``.
    """
    b, m = positions.shape[:2]
    perm = torch.arange(m, device=positions.device).expand(b, m)
    keys = [positions[..., d] for d in range(positions.shape[-1] - 1, -1, -1)]
    if valid is not None:
        keys.append((~valid).to(positions.dtype))
    if groups is not None:
        keys.append(groups.expand(b, m).to(positions.dtype))
    for key in keys:  # least significant first; stable sorts compose into a lexicographic order
        order = torch.sort(key.gather(1, perm), dim=1, stable=True).indices
        perm = perm.gather(1, order)
    return perm


# ----------------------------------------------------------------------------------------------- multi-scale


def _check_stages(stages: Sequence[int], ks: Sequence[int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    stages, ks = tuple(stages), tuple(ks)
    if not stages or len(stages) != len(ks):
        raise ValueError(f"stages and ks must be non-empty and of equal length, got {stages} and {ks}")
    for s in stages:
        _check_count(s, "every stage's cluster count")
    for k in ks:
        _check_count(k, "every k")
    return stages, ks


def multiscale_merge(
    x: Tensor,
    positions: Tensor | Sequence[int] | None = None,
    stages: Sequence[int] = STAGES,
    ks: Sequence[int] = KS,
    valid: Tensor | None = None,
    size_weighted: bool = False,
    sizes: Tensor | None = None,
    compile: bool = False,
    **dpc: Any,
) -> MultiScaleResult:
    """Chat-UniVi's multi-scale merging: DPC-KNN stage s (``stages[s]`` clusters, ``ks[s]`` neighbours) clusters the
    merged tokens of stage s − 1; outputs concatenated (64 + 32 + 16 = 112 tokens by default).

    ``positions``: (N, 3) / (B, N, 3) (t, y, x), (N, 2) (y, x), a grid (H, W) / (T, H, W) in raster order, or None
    (token index as x). ``size_weighted``: merge stage s's tokens weighted by their number of original members (so
    every merged token is the mean of its original members); default False = plain means of the previous stage's
    tokens, as in the paper. ``sizes`` (B, N): sizes of the input tokens (weights for merging and centroids).
    ``dpc`` goes to :func:`dpc_knn` (``jitter``, ``seed``, ``max_bytes``, ``low_memory``). ``compile``: run the stages
    as one ``torch.compile`` graph (CUDA graphs on a GPU: one replay instead of hundreds of kernel launches; the same
    clusters). Each new input shape compiles once (tens of seconds), so it pays for repeated calls at fixed shapes.
    """
    x = _check_tokens(x)
    stages, ks = _check_stages(stages, ks)
    b, n, _ = x.shape
    valid = _check_valid(valid, b, n, x.device)
    w0 = _check_sizes(sizes, valid)
    opts = _dpc_options(dpc, "multiscale_merge", compile)
    pos = _positions(positions, b, n, x.device)
    if compile:
        _check_finite(x, valid)
        run = _compiled(_multiscale, x.device)
        return run(x, pos, valid, w0, stages, ks, size_weighted, opts, _compile_plan(x.device), checked=True)
    return _multiscale(x, pos, valid, w0, stages, ks, size_weighted, opts)


def _dpc_options(dpc: dict, name: str, compile: bool) -> dict:
    """The :func:`dpc_knn` options among ``dpc``; anything else is an error."""
    opts = {key: dpc.pop(key) for key in ("jitter", "seed", "max_bytes", "low_memory") if key in dpc}
    if dpc:
        raise TypeError(f"{name} got unexpected keyword arguments {sorted(dpc)}")
    if compile and opts.get("jitter"):
        raise ValueError("compile=True needs jitter=0: the density noise is drawn on the host")
    if not opts.get("jitter"):
        opts.pop("seed", None)  # only the noise uses it (and a compiled graph would specialize on it)
    return opts


def _multiscale(
    x: Tensor,
    pos: Tensor,
    valid: Tensor,
    sizes: Tensor | None,
    stages: tuple[int, ...],
    ks: tuple[int, ...],
    size_weighted: bool,
    opts: dict,
    plan: _Plan | None = None,
    checked: bool = False,
) -> MultiScaleResult:
    """:func:`multiscale_merge` of checked arguments (``pos`` (B, N, 3) unweighted); with a sync-free ``plan`` it
    reads no device value (``checked``: the input is known to be finite), so it can be compiled as one graph."""
    b, n, _ = x.shape
    w0 = (torch.ones(b, n, device=x.device) if sizes is None else sizes.float()) * valid
    pos = pos * w0[..., None]
    orig = torch.arange(n, device=x.device).expand(b, n).masked_fill(~valid, -1)
    cur, cur_valid, cur_sizes = x, valid, (w0 if sizes is not None or size_weighted else None)
    outs, offset = [], 0
    for s, (m, k) in enumerate(zip(stages, ks)):
        # later stages cluster merged tokens: finite means of valid tokens with positive sizes (nothing to check)
        r = _dpc_knn(
            cur,
            m,
            k,
            cur_valid,
            cur_sizes if (size_weighted or cur is x) else None,
            **opts,
            checked=checked or s > 0,
            plan=plan,
        )
        orig = r.assignment.gather(1, orig.clamp_min(0)).masked_fill(orig < 0, -1)
        idx = orig.clamp_min(0)
        count = w0.new_zeros(b, m).scatter_add_(1, idx, w0)
        centroid = pos.new_zeros(b, m, 3).scatter_add_(1, idx[..., None].expand(b, n, 3), pos)
        centroid = centroid / count.clamp_min(torch.finfo(count.dtype).tiny)[..., None]
        outs.append((r.tokens, r.valid, centroid, count, orig.masked_fill(orig < 0, -1 - offset) + offset))
        cur, cur_valid, cur_sizes = r.tokens, r.valid, count if size_weighted else None
        offset += m
    stage = torch.cat([torch.full((m,), s, dtype=torch.long, device=x.device) for s, m in enumerate(stages)])
    tokens, valids, cents, counts, assigns = zip(*outs)
    return MultiScaleResult(
        torch.cat(tokens, 1),
        torch.cat(valids, 1),
        torch.cat(cents, 1),
        torch.cat(counts, 1).to(x.dtype),
        stage,
        torch.stack(assigns, 1),
    )


_COMPILED: dict[tuple[str, str], Any] = {}
_EAGER_FALLBACK: set[str] = set()  # functions that reached torch.compile's recompile limit (warned once)


def _compiled(fn: Any, device: torch.device) -> Any:
    """``fn`` compiled as one graph (``torch.compile``, fixed shapes; on CUDA with CUDA graphs, so that a call is one
    graph replay instead of hundreds of kernel launches). Results on CUDA are copied out of the graph's buffers
    at once, so the graph's outputs are dead before the next call. Every new input shape compiles again; past
    torch's recompile limit (``torch._dynamo.config.recompile_limit``) new shapes run eagerly, with a warning."""
    key = (fn.__name__, device.type)
    if key not in _COMPILED:
        mode = "reduce-overhead" if device.type == "cuda" else None
        _COMPILED[key] = torch.compile(fn, fullgraph=True, dynamic=False, mode=mode)
    compiled = _COMPILED[key]

    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            out = compiled(*args, **kwargs)
        except torch._dynamo.exc.FailOnRecompileLimitHit:
            if fn.__name__ not in _EAGER_FALLBACK:
                _EAGER_FALLBACK.add(fn.__name__)
                warnings.warn(
                    f"merge: compile=True has compiled {fn.__name__} for as many input shapes as torch allows; "
                    "further shapes run eagerly (the same results). Pad inputs to a few fixed shapes to avoid this.",
                    stacklevel=3,
                )
            return fn(*args, **kwargs)
        if device.type != "cuda":
            return out
        return type(out)(*(t.clone() for t in out)) if hasattr(out, "_fields") else tuple(t.clone() for t in out)

    return run


# ----------------------------------------------------------------------------------------------- video events


def _frame_valid(valid: Tensor | None, b: int, t: int, device: torch.device) -> tuple[Tensor, Tensor, list[int]]:
    """(valid (B, T), lengths (B,), lengths as ints); valid frames must be a prefix of each video, of ≥ 1 frame."""
    if valid is None and t >= 1:
        return torch.ones(b, t, dtype=torch.bool, device=device), torch.full((b,), t, device=device), [t] * b
    valid = _check_valid(valid, b, t, device)
    lengths = valid.sum(1)
    prefix = torch.arange(t, device=device)[None] < lengths[:, None]
    *host, not_prefix = torch.cat([lengths, (prefix != valid).any()[None]]).tolist()  # one read from the device
    if not_prefix:
        raise ValueError("frame_valid must mark a prefix of each video's frames (padding frames at the end)")
    if min(host) < 1:
        raise ValueError("every video needs at least one valid frame")
    return valid, lengths, host


def _segment_costs(f: Tensor, c: int) -> Tensor:
    """cost[b, i, j] (B, T+1, T+1) float64: within-segment squared deviation (/C) of frames [i, j); inf for i ≥ j."""
    t = f.shape[1]
    p = F.pad(f.cumsum(1), (0, 0, 1, 0))  # prefix sums (B, T+1, C)
    q = F.pad((f * f).sum(-1).cumsum(1), (1, 0))  # (B, T+1)
    pp = (p * p).sum(-1)
    diff = (pp[:, :, None] + pp[:, None, :] - 2 * p @ p.mT).clamp_min(0)  # ‖P_j − P_i‖²
    idx = torch.arange(t + 1, device=f.device, dtype=torch.float64)
    length = idx[None, :] - idx[:, None]
    cost = (q[:, None, :] - q[:, :, None]) - diff / length.clamp_min(1)
    return torch.where(length > 0, cost.clamp_min(0) / c, math.inf)


def segment_events(
    frame_features: Tensor,
    num_events: int | str | None = None,
    valid: Tensor | None = None,
    threshold: float = 0.25,
    max_events: int | None = None,
) -> EventSegmentation:
    """Optimal contiguous events of frame features (T, C) or (B, T, C) (module docstring).

    ``num_events``: None → ⌈T/16⌉ (the paper's rule); an int → min(that, T); "auto" → the fewest events whose cost is
    at most ``threshold`` × the one-event cost, trying up to ``max_events`` (default ⌈T/4⌉). ``valid`` (B, T) marks
    real frames (a prefix of each video).
    """
    f = frame_features
    if not isinstance(f, Tensor) or f.ndim not in (2, 3) or not f.is_floating_point():
        got = tuple(f.shape) if isinstance(f, Tensor) else type(f).__name__
        raise ValueError(f"frame_features must be float (T, C) or (B, T, C), got {got}")
    return _segment_events(frame_features, num_events, valid, threshold, max_events)[0]


def _segment_events(
    f: Tensor,
    num_events: int | str | None,
    valid: Tensor | tuple[Tensor, Tensor, list[int]] | None,
    threshold: float,
    max_events: int | None,
) -> tuple[EventSegmentation, list[list[tuple[int, int]]]]:
    """:func:`segment_events`, and each video's events as [start, end) frame pairs on the host. ``valid`` may be
    the result of :func:`_frame_valid` (read once by the caller)."""
    f = f[None] if f.ndim == 2 else f
    b, t, c = f.shape
    valid, lengths, host_lengths = valid if isinstance(valid, tuple) else _frame_valid(valid, b, t, f.device)
    if num_events == "auto":
        if not 0 <= threshold <= 1:
            raise ValueError(f"threshold must be in [0, 1], got {threshold}")
        cap = [min(n, _check_count(max_events, "max_events")) if max_events else (n + 3) // 4 for n in host_lengths]
    elif num_events is None:
        cap = [-(-n // FRAMES_PER_EVENT) for n in host_lengths]
    elif isinstance(num_events, int) and not isinstance(num_events, bool) and num_events >= 1:
        cap = [min(n, num_events) for n in host_lengths]
    else:
        raise ValueError(f"num_events must be None, a positive int or 'auto', got {num_events!r}")
    cap = [max(1, v) for v in cap]
    f = f.double().masked_fill(~valid[..., None], 0)
    mean = f.sum(1, keepdim=True) / lengths[:, None, None]
    cost = _segment_costs((f - mean).masked_fill(~valid[..., None], 0), c)
    kmax = max(cap)
    e = torch.full((b, t + 1), math.inf, dtype=torch.float64, device=f.device)
    e[:, 0] = 0
    back, totals = [], []
    for _ in range(kmax):  # E_k[j] = min_i E_{k−1}[i] + cost[i, j]
        best = (e[:, :, None] + cost).min(1)
        e = best.values
        back.append(best.indices)
        totals.append(e.gather(1, lengths[:, None])[:, 0])
    totals = torch.stack(totals, 1)  # (B, kmax): optimal cost with k + 1 events
    back = torch.stack(back, 1)  # (B, kmax, T + 1)
    if num_events == "auto":
        cap_t = torch.tensor(cap, device=f.device)
        ks = torch.arange(1, kmax + 1, device=f.device)
        ok = (totals <= threshold * totals[:, :1]) & (ks[None] <= cap_t[:, None])
        ok[torch.arange(b), cap_t - 1] = True
        count = ok.long().argmax(1) + 1
        back_host, count_host = _to_host(back, count)
    else:
        (back_host,), count_host = _to_host(back), cap
    return _backtrack(back_host, host_lengths, count_host, totals, t, f.device)


def _to_host(*tensors: Tensor) -> list:
    """The tensors' values as nested lists, in one transfer (long tensors)."""
    flat = torch.cat([x.reshape(-1) for x in tensors]).cpu()
    return [part.view(x.shape).tolist() for part, x in zip(flat.split([x.numel() for x in tensors]), tensors)]


def _backtrack(
    back: list, lengths: list[int], count: list[int], totals: Tensor, t: int, dev: torch.device
) -> tuple[EventSegmentation, list[list[tuple[int, int]]]]:
    b = len(lengths)
    emax = max(count)
    labels = [[-1] * t for _ in range(b)]
    bounds = [[[-1, -1] for _ in range(emax)] for _ in range(b)]
    spans = []
    for i in range(b):
        end, video = lengths[i], []
        for k in range(count[i], 0, -1):
            start = back[i][k - 1][end]
            video.append((start, end))
            end = start
        video.reverse()
        for k, (start, end) in enumerate(video):
            bounds[i][k] = [start, end]
            labels[i][start:end] = [k] * (end - start)
        spans.append(video)
    host = torch.tensor(
        [v for row in labels for v in row] + [v for row in bounds for pair in row for v in pair] + count
    )
    labels_t, bounds_t, count_t = (p.clone() for p in host.to(dev).split([b * t, b * emax * 2, b]))  # one transfer
    cost = totals.gather(1, (count_t - 1)[:, None])[:, 0]
    events = EventSegmentation(labels_t.view(b, t), bounds_t.view(b, emax, 2), count_t, cost)
    return events, spans


def _video_positions(positions: Tensor | Sequence[int] | None, t: int, n: int, device: torch.device) -> Tensor:
    """(T, N, 3) (t, y, x) of the tokens of every frame."""
    if positions is None:
        spatial = torch.stack([torch.zeros(n, device=device), torch.arange(n, device=device, dtype=torch.float32)], -1)
    elif not isinstance(positions, Tensor):
        spatial = _positions(tuple(positions), 1, n, device)[0, :, 1:]
    elif positions.shape == (t, n, 3):
        return positions.to(device=device, dtype=torch.float32)
    elif positions.shape == (n, 2):
        spatial = positions.to(device=device, dtype=torch.float32)
    else:
        raise ValueError(f"positions must be (N, 2) (y, x), (T, N, 3) or a grid (H, W); got {tuple(positions.shape)}")
    frames = torch.arange(t, device=device, dtype=torch.float32)
    return torch.cat([frames[:, None, None].expand(t, n, 1), spatial.expand(t, n, 2)], -1)


def video_events(
    tokens: Tensor,
    num_events: int | str | None = None,
    stages: Sequence[int] = STAGES,
    ks: Sequence[int] = KS,
    frame_valid: Tensor | None = None,
    positions: Tensor | Sequence[int] | None = None,
    size_weighted: bool = False,
    threshold: float = 0.25,
    max_events: int | None = None,
    compile: bool = False,
    **dpc: Any,
) -> VideoMergeResult:
    """Chat-UniVi's video tokens: contiguous events (:func:`segment_events` on mean-pooled frames), then the
    multi-scale merge of each event's pooled tokens, all events of all videos in one padded batch.

    ``tokens``: per-frame tokens (T, N, C) or (B, T, N, C); ``frame_valid`` (B, T) marks real frames (a prefix);
    ``positions``: the spatial (y, x) of a frame's tokens (N, 2) or grid (H, W), or (T, N, 3); t is the frame index.
    ``compile``: pack, merge and unpack the events as one compiled graph (as in :func:`multiscale_merge`; the packed
    shape depends on the longest event, so a new event layout may compile again).
    """
    if not isinstance(tokens, Tensor) or tokens.ndim not in (3, 4) or not tokens.is_floating_point():
        got = tuple(tokens.shape) if isinstance(tokens, Tensor) else type(tokens).__name__
        raise ValueError(f"tokens must be float per-frame tokens (T, N, C) or (B, T, N, C), got {got}")
    x = tokens[None] if tokens.ndim == 3 else tokens
    b, t, n, c = x.shape
    frames_ok = _frame_valid(frame_valid, b, t, x.device)
    fvalid = frames_ok[0]
    stages, ks = _check_stages(stages, ks)
    opts = _dpc_options(dpc, "video_events", compile)
    events, spans = _segment_events(x.mean(2), num_events, frames_ok, threshold, max_events)
    pos = _video_positions(positions, t, n, x.device)
    flat = [(i, e, e0, e1) for i, video in enumerate(spans) for e, (e0, e1) in enumerate(video)]
    table, dims = _event_tables(flat, b, t)
    args = (x, pos, table.to(x.device), (b, t, n, c, *dims), stages, ks, size_weighted, opts)
    if compile:
        _check_finite(x.reshape(b, t * n, c), fvalid[..., None].expand(b, t, n).reshape(b, t * n))
        out = _compiled(_video_stages, x.device)(*args, _compile_plan(x.device), checked=True)
    else:
        out = _video_stages(*args)
    return VideoMergeResult(*out, events)


def _event_tables(flat: list[tuple[int, int, int, int]], b: int, t: int) -> tuple[Tensor, tuple[int, int, int]]:
    """Index tables for packing events (video i, event e, frames e0 … e1 − 1) into one padded batch and for putting
    the results back, built on the host as one long tensor; and (events, frames of the longest, most events)."""
    frames, emax = max(e1 - e0 for _, _, e0, e1 in flat), max(e for _, e, _, _ in flat) + 1
    local = [[-1] * frames for _ in flat]  # frame (within its video) of packed frame f
    glob = [[0] * frames for _ in flat]  # the same frame's row in x.reshape(B · T, N, C)
    slot_src = [-1] * (b * emax)  # packed event of every (video, event slot)
    frame_src = [[-1] * t for _ in range(b)]  # packed event of every (video, frame)
    frame_off = [[0] * t for _ in range(b)]  # frame offset within its event
    frame_event = [[0] * t for _ in range(b)]  # event of every (video, frame)
    for j, (i, e, e0, e1) in enumerate(flat):
        local[j][: e1 - e0] = range(e0, e1)
        glob[j] = [i * t + max(f, 0) for f in local[j]]
        slot_src[i * emax + e] = j
        frame_src[i][e0:e1] = [j] * (e1 - e0)
        frame_off[i][e0:e1] = range(e1 - e0)
        frame_event[i][e0:e1] = [e] * (e1 - e0)
    flat_lists = [
        v for table in (local, glob, [slot_src], frame_src, frame_off, frame_event) for row in table for v in row
    ]
    return torch.tensor(flat_lists, dtype=torch.long), (len(flat), frames, emax)


def _video_stages(
    x: Tensor,
    pos: Tensor,
    table: Tensor,
    dims: tuple[int, ...],
    stages: tuple[int, ...],
    ks: tuple[int, ...],
    size_weighted: bool,
    opts: dict,
    plan: _Plan | None = None,
    checked: bool = False,
) -> tuple[Tensor, ...]:
    """Pack the events of x (B, T, N, C) by ``table`` (:func:`_event_tables`), merge them (:func:`_multiscale`), and
    put the results back in their videos: the fields of a :class:`VideoMergeResult` but ``events``. Index ops only:
    with a sync-free ``plan`` it reads no device value, so it can be compiled as one graph."""
    b, t, n, c, count, frames, emax = dims
    local, glob, slot_src, frame_src, frame_off, frame_event = table.split(
        [count * frames, count * frames, b * emax, b * t, b * t, b * t]
    )
    local, glob = local.view(count, frames), glob.view(count, frames)
    pvalid = (local >= 0)[..., None].expand(-1, -1, n).reshape(count, frames * n)
    packed = x.reshape(b * t, n, c)[glob].reshape(count, frames * n, c)
    ppos = pos[local.clamp_min(0)].reshape(count, frames * n, 3)
    ms = _multiscale(packed, ppos, pvalid, None, stages, ks, size_weighted, opts, plan, checked)
    per, dev = ms.tokens.shape[1], x.device
    has = slot_src >= 0
    src = slot_src.clamp_min(0)

    def gather_slots(values: Tensor, fill: float | bool) -> Tensor:
        out = values[src].masked_fill(~has.view(-1, *[1] * (values.ndim - 1)), fill)
        return out.reshape(b, emax * per, *values.shape[2:])

    tokens, positions = gather_slots(ms.tokens, 0), gather_slots(ms.positions, 0)
    valid, sizes = gather_slots(ms.valid, False), gather_slots(ms.sizes, 0)
    event = torch.where(valid, torch.arange(emax, device=dev).repeat_interleave(per), -1)
    stage = torch.where(valid, ms.stage.repeat(emax), -1)
    # assignments (B, S, T, N): token (i, f, k) was token (f − e0)·N + k of packed event j, offset by e · per slots
    rows = frame_src.clamp_min(0).view(b, t, 1)
    cols = (frame_off.view(b, t, 1) * n + torch.arange(n, device=dev)).view(b, t, n)
    picked = ms.assignments.permute(0, 2, 1)[rows, cols] + frame_event.view(b, t, 1, 1) * per  # (B, T, N, S)
    assignments = picked.masked_fill((frame_src < 0).view(b, t, 1, 1), -1).permute(0, 3, 1, 2).contiguous()
    return tokens, valid, positions, sizes, event, stage, assignments


# ----------------------------------------------------------------------------------------------- ToMe, pooling


def _bipartite_step(x: Tensor, sizes: Tensor, r: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One ToMe step on (B, N, C) with sizes (B, N).

    Returns (merged tokens (B, N − r, C), their sizes, the output slot of each input token (B, N), the input index
    of the token surviving in each output slot (B, N − r)).
    """
    b, n, c = x.shape
    dev = x.device
    a_idx, b_idx = torch.arange(0, n, 2, device=dev), torch.arange(1, n, 2, device=dev)
    na, nb = len(a_idx), len(b_idx)
    metric = F.normalize(x, dim=-1)
    scores = metric[:, a_idx] @ metric[:, b_idx].mT  # (B, Na, Nb) cosine similarities
    node_idx = scores.argmax(-1)  # each A token's best B match (first on ties)
    node_max = scores.gather(2, node_idx[..., None])[..., 0]
    edge = torch.sort(node_max, dim=1, descending=True, stable=True).indices  # ties → lower index first
    unm, src = edge[:, r:], edge[:, :r]
    dst = node_idx.gather(1, src)
    xs = x * sizes[..., None]
    xa, xb, sa, sb = xs[:, a_idx], xs[:, b_idx], sizes[:, a_idx], sizes[:, b_idx]
    out_b = xb.scatter_add(1, dst[..., None].expand(b, r, c), xa.gather(1, src[..., None].expand(b, r, c)))
    size_b = sb.scatter_add(1, dst, sa.gather(1, src))
    out = torch.cat([xa.gather(1, unm[..., None].expand(b, na - r, c)), out_b], 1)
    new_sizes = torch.cat([sa.gather(1, unm), size_b], 1)
    a_slot = torch.empty(b, na, dtype=torch.long, device=dev)
    a_slot.scatter_(1, unm, torch.arange(na - r, device=dev).expand(b, na - r))
    a_slot.scatter_(1, src, dst + (na - r))
    slot = torch.empty(b, n, dtype=torch.long, device=dev)
    slot[:, a_idx] = a_slot
    slot[:, b_idx] = (torch.arange(nb, device=dev) + (na - r)).expand(b, nb)
    keep = torch.cat([a_idx[unm], b_idx.expand(b, nb)], 1)
    return out / new_sizes[..., None], new_sizes, slot, keep


def _tome(x: Tensor, steps: list[int], sizes: Tensor | None) -> MergeResult:
    """ToMe steps of r = steps[0], steps[1], … tokens, composing assignments, sizes and representatives."""
    b, n, _ = x.shape
    dtype = _work_dtype(x)
    cur = _masked(x, torch.ones(b, n, dtype=torch.bool, device=x.device), dtype)
    s0 = torch.ones(b, n, dtype=dtype, device=x.device) if sizes is None else sizes.to(dtype)
    s, assign, rep = s0, torch.arange(n, device=x.device).expand(b, n), torch.arange(n, device=x.device).expand(b, n)
    for r in steps:
        cur, s, slot, keep = _bipartite_step(cur, s, r)
        assign, rep = slot.gather(1, assign), rep.gather(1, keep)
    member = s0 / s.gather(1, assign)
    valid = torch.ones(b, cur.shape[1], dtype=torch.bool, device=x.device)
    return MergeResult(cur.to(x.dtype), valid, assign, rep, s.to(x.dtype), member.to(x.dtype))


def tome_merge(x: Tensor, r: int, sizes: Tensor | None = None) -> MergeResult:
    """One ToMe bipartite soft-matching step: N → N − r tokens (0 ≤ r ≤ N // 2), size-weighted, sizes tracked.

    ``sizes`` (B, N) > 0: the tokens' current sizes (default 1). ``MergeResult.centers`` holds each output token's
    surviving input token; ``sizes`` the summed sizes.
    """
    x = _check_tokens(x)
    b, n, _ = x.shape
    if isinstance(r, bool) or not isinstance(r, int) or not 0 <= r <= n // 2:
        raise ValueError(f"r must be an int in [0, N // 2] = [0, {n // 2}], got {r!r}")
    sizes = _check_sizes(sizes, torch.ones(b, n, dtype=torch.bool, device=x.device))
    return _tome(x, [r], sizes)


def tome_reduce(x: Tensor, target: int, sizes: Tensor | None = None) -> MergeResult:
    """Repeated ToMe steps (each merging at most half the tokens, r = min(N − target, N // 2)) down to ``target``."""
    x = _check_tokens(x)
    b, n, _ = x.shape
    target = _check_count(target, "target")
    if target > n:
        raise ValueError(f"target must be at most N = {n}, got {target}")
    sizes = _check_sizes(sizes, torch.ones(b, n, dtype=torch.bool, device=x.device))
    steps, cur = [], n
    while cur > target:
        steps.append(min(cur - target, cur // 2))
        cur -= steps[-1]
    return _tome(x, steps, sizes)


def _pool_grid(target: int, h: int, w: int) -> tuple[int, int]:
    """(rows, cols) with rows · cols = target, rows ≤ h, cols ≤ w, aspect closest to h : w."""
    best = None
    for rows in range(1, target + 1):
        if target % rows or rows > h or target // rows > w:
            continue
        err = abs(math.log(rows / (target // rows)) - math.log(h / w))
        if best is None or err < best[0]:
            best = (err, rows, target // rows)
    if best is None:
        raise ValueError(f"cannot pool a {h}×{w} grid into {target} cells of a rows × cols grid")
    return best[1], best[2]


def pool_merge(
    x: Tensor, target: int, grid: Sequence[int] | None = None, valid: Tensor | None = None, sizes: Tensor | None = None
) -> MergeResult:
    """Uniform average pooling to ``target`` tokens: the baseline Chat-UniVi compares against.

    With ``grid`` (H, W) (raster-order tokens, N = H·W) the grid is split into rows × cols = ``target`` cells of
    (nearly) equal size, aspect ratio closest to H : W; without, into ``target`` contiguous runs of the sequence.
    Padding (``valid`` False) is left out of every mean; an empty cell is an invalid slot.
    """
    x = _check_tokens(x)
    target = _check_count(target, "target")
    b, n, _ = x.shape
    valid = _check_valid(valid, b, n, x.device)
    sizes = _check_sizes(sizes, valid)
    dev = x.device
    if grid is not None:
        h, w = (int(v) for v in grid)
        if h * w != n:
            raise ValueError(f"grid {tuple(grid)} has {h * w} cells, expected N = {n}")
        rows, cols = _pool_grid(target, h, w)
        y, xx = torch.arange(n, device=dev) // w, torch.arange(n, device=dev) % w
        cell = (y * rows // h) * cols + xx * cols // w
    else:
        if target > n:
            raise ValueError(f"target must be at most N = {n} without a grid, got {target}")
        cell = torch.arange(n, device=dev) * target // n
    assign = cell.expand(b, n).masked_fill(~valid, -1)
    slots = torch.arange(n, device=dev).expand(b, n).masked_fill(~valid, n)
    first = torch.full((b, target), n, dtype=torch.long, device=dev).scatter_reduce(
        1, assign.clamp_min(0), slots, "amin"
    )
    centers = first.masked_fill(first == n, -1)
    return _merge_tokens(_masked(x, valid, _work_dtype(x)), valid, assign, centers, sizes, x.dtype)


METHODS = ("dpc-knn", "tome", "pool")


def reduce(
    tokens: Tensor,
    method: str = "dpc-knn",
    target: int = 64,
    *,
    k: int = 5,
    valid: Tensor | None = None,
    sizes: Tensor | None = None,
    grid: Sequence[int] | None = None,
    **options: Any,
) -> MergeResult:
    """Reduce tokens (B, N, C) to ``target`` per sample by "dpc-knn" (:func:`dpc_knn`, ``k`` neighbours), "tome"
    (:func:`tome_reduce`; no padding) or "pool" (:func:`pool_merge`, over ``grid`` (H, W) when given).
    ``options`` go to :func:`dpc_knn`."""
    if method == "dpc-knn":
        return dpc_knn(tokens, target, k, valid, sizes, **options)
    if options:
        raise TypeError(f"unexpected options for method {method!r}: {sorted(options)}")
    if method == "tome":
        if valid is not None and not bool(valid.all()):
            raise ValueError("method 'tome' does not support padding (valid must be all True)")
        return tome_reduce(tokens, target, sizes)
    if method == "pool":
        return pool_merge(tokens, target, grid, valid, sizes)
    raise ValueError(f"method must be one of {METHODS}, got {method!r}")


# ----------------------------------------------------------------------------------------------- patch features


def _as_frames(pixels: Tensor) -> tuple[Tensor, int, int]:
    """Pixels in [−1, 1] → frames (B·T, 3, H, W), B, T. An image is (3, H, W) or (B, 3, H, W) (T = 0 then); a video
    is (B, 3, T, H, W) — a single video needs its batch axis."""
    if not isinstance(pixels, Tensor) or not pixels.is_floating_point():
        raise TypeError(f"pixels must be a float tensor in [-1, 1], got {getattr(pixels, 'dtype', type(pixels))}")
    if pixels.ndim == 3:
        pixels = pixels[None]
    if pixels.ndim not in (4, 5) or pixels.shape[1] != 3:
        raise ValueError(
            f"pixels must be images (3, H, W) / (B, 3, H, W) or videos (B, 3, T, H, W), got {tuple(pixels.shape)}"
        )
    if pixels.ndim == 4:
        return pixels, pixels.shape[0], 0
    b, _, t = pixels.shape[:3]
    return pixels.transpose(1, 2).reshape(b * t, 3, *pixels.shape[3:]), b, t


def _features(tokens: Tensor, b: int, t: int, h: int, w: int) -> PatchFeatures:
    """Frame tokens (B·T, h·w, C) → :class:`PatchFeatures` (image layout when t == 0)."""
    yx = torch.stack(torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij"), -1).reshape(-1, 2).float()
    if t == 0:
        return PatchFeatures(tokens, F.pad(yx, (1, 0)), (1, h, w))
    frames = torch.arange(t, dtype=torch.float32)[:, None, None].expand(t, h * w, 1)
    return PatchFeatures(tokens.reshape(b, t, h * w, -1), torch.cat([frames, yx.expand(t, -1, -1)], -1), (t, h, w))


@torch.inference_mode()
def magvit_features(pixels: Tensor, tokenizer: Any = None, batch_size: int = 16) -> PatchFeatures:
    """Patch tokens from the MAGVIT-v2 encoder's pre-quantization latents (``encode_latents``), one token per latent
    cell, C = ``latent_channels``. Videos are encoded frame by frame (each frame as an image), so every frame keeps
    its own tokens. ``tokenizer``: a loaded tokenizer or a :func:`~vistok.tokenizers.api.load_tokenizer` argument
    (default: the weights shipped with vistok). Pixels are replicate-padded to the spatial factor.
    """
    if tokenizer is None or isinstance(tokenizer, str | os.PathLike):
        from vistok.tokenizers.api import load_tokenizer

        tokenizer = load_tokenizer(tokenizer, "cpu" if not torch.cuda.is_available() else None)
    frames, b, t = _as_frames(pixels)
    dev = next(tokenizer.parameters()).device
    outs = [tokenizer.encode_latents(chunk.to(dev), pad=True).float().cpu() for chunk in frames.split(batch_size)]
    z = torch.cat(outs)  # (B·T, K, h, w)
    h, w = z.shape[2:]
    return _features(z.flatten(2).mT.contiguous(), b, t, h, w)


_DEFAULT_NORMS = {  # (mean, std) when the folder has no preprocessor config
    "clip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
    "siglip": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}
_IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


class HFPatchEncoder:
    """Patch tokens of a Hugging Face vision model (CLIP, SigLIP, DINOv2, …) loaded from a local folder.

    ``AutoModel.from_pretrained(path, local_files_only=True)`` — nothing is downloaded; CLIP/SigLIP dual encoders use
    their ``vision_model``. Pixels in [−1, 1] are resized (bicubic) to the model's ``image_size`` and normalized with
    the folder's image processor mean/std (else the family's defaults, ImageNet for DINOv2 and others). ``layer``:
    a hidden-state index (e.g. −2, the penultimate layer LLaVA/Chat-UniVi use for CLIP), default the last hidden
    state. Only patch tokens are returned (CLS and register tokens, which come first, are dropped).
    """

    def __init__(self, path: str | os.PathLike, device: str | torch.device | None = None, layer: int | None = None):
        from vistok._optional import require

        transformers = require("transformers", "hf", "Hugging Face vision encoders")
        path = os.fspath(path)
        if not os.path.isdir(path):
            raise FileNotFoundError(f"no such model folder: {path} (a folder written by save_pretrained is needed)")
        model = transformers.AutoModel.from_pretrained(path, local_files_only=True)
        self.model = getattr(model, "vision_model", model).eval()
        if device is not None:
            self.model.to(device)
        cfg = getattr(model.config, "vision_config", model.config)
        self.image_size, self.patch_size = int(cfg.image_size), int(cfg.patch_size)
        self.layer = layer
        self.mean, self.std = self._norm(transformers, path, model.config.model_type)

    @staticmethod
    def _norm(transformers: Any, path: str, model_type: str) -> tuple[Tensor, Tensor]:
        try:
            proc = transformers.AutoImageProcessor.from_pretrained(path, local_files_only=True)
            mean, std = proc.image_mean, proc.image_std
        except (OSError, ValueError, AttributeError):
            mean, std = _DEFAULT_NORMS.get(model_type, _IMAGENET)
        return torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)

    @torch.inference_mode()
    def __call__(self, pixels: Tensor, batch_size: int = 16) -> PatchFeatures:
        frames, b, t = _as_frames(pixels)
        dev = next(self.model.parameters()).device
        s = self.image_size
        x = F.interpolate(frames.float(), size=(s, s), mode="bicubic", align_corners=False, antialias=True)
        x = ((x + 1) / 2 - self.mean) / self.std
        g = s // self.patch_size
        outs = []
        for chunk in x.split(batch_size):
            out = self.model(pixel_values=chunk.to(dev), output_hidden_states=self.layer is not None)
            hidden = out.last_hidden_state if self.layer is None else out.hidden_states[self.layer]
            outs.append(hidden[:, hidden.shape[1] - g * g :].float().cpu())
        return _features(torch.cat(outs), b, t, g, g)


def _vit_folder(path: str | os.PathLike) -> str:
    """A folder holding a saved vistok ViT, or a ``vistok digit fit`` run folder (its DINO teacher, ``ssl/teacher``)."""
    root = os.fspath(path)
    for folder in (root, os.path.join(root, "ssl", "teacher")):
        if os.path.isfile(os.path.join(folder, "config.json")):
            return folder
    raise FileNotFoundError(
        f"no vistok ViT in {root}: expected config.json + model.safetensors (ViT.save_pretrained) or a "
        "`vistok digit fit` run folder (its ssl/teacher)"
    )


class ViTPatchEncoder:
    """Patch tokens of a small vistok :class:`~vistok.models.vit.ViT` — e.g. the one ``vistok digit fit`` trains with
    DINO on the built-in photos (``OUT/ssl/teacher``; the run folder ``OUT`` itself is accepted too) — read by DiGIT's
    :class:`~vistok.tokenizers.digit.ViTFeatureEncoder`.

    ``vit``: a ViT module or a folder written by ``save_pretrained``. Pixels in [−1, 1] (what vistok's ViTs are trained
    on) are used at their own size when it is a multiple of the patch size, else resized (bicubic) to the nearest
    multiple; other sizes than the training one interpolate the position embedding. ``layer``: the hidden state, after
    the final LayerNorm when ``norm`` (default −3, the third block from the end, as DiGIT reads it); ``[CLS]`` dropped.
    """

    def __init__(self, vit: Any, device: str | torch.device | None = None, layer: int = -3, norm: bool = True) -> None:
        from vistok.models.vit import ViT
        from vistok.tokenizers.digit import ViTFeatureEncoder

        if not isinstance(vit, ViT):
            folder = _vit_folder(vit)
            try:
                vit = ViT.from_pretrained(folder, map_location=device or "cpu")
            except (TypeError, ValueError, KeyError) as e:
                raise ValueError(f"{folder} does not hold a vistok ViT: {e}") from e
        elif device is not None:
            vit = vit.to(device)
        self.encoder = ViTFeatureEncoder(vit, layer, norm)
        self.layer, self.patch_size, self.dim = self.encoder.layer, self.encoder.patch_size, self.encoder.dim

    def __call__(self, pixels: Tensor, batch_size: int = 16) -> PatchFeatures:
        frames, b, t = _as_frames(pixels)
        p = self.patch_size
        h, w = frames.shape[2:]
        gh, gw = max(1, round(h / p)), max(1, round(w / p))
        x = frames.float()
        if (gh * p, gw * p) != (h, w):
            x = F.interpolate(x, size=(gh * p, gw * p), mode="bicubic", align_corners=False, antialias=True)
            x = x.clamp(-1, 1)
        z = torch.cat([self.encoder.features(chunk).cpu() for chunk in x.split(batch_size)])  # (B·T, h, w, C)
        return _features(z.flatten(1, 2), b, t, gh, gw)
