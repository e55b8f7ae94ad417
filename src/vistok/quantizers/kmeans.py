"""K-means codebooks: the DiGIT tokenizer (k-means over frozen self-supervised features) as a quantizer.

A :class:`KMeans` module holds ``K`` centroids ``C`` (``(K, D)`` float32) and minimises the inertia
``Σ_i min_k ‖x_i − c_k‖²`` over a feature set that may be larger than memory.

Algorithms
----------
* **Seeding** — k-means++ (Arthur & Vassilvitskii 2007): the first centre is a uniform draw, each next one is drawn
  with probability ∝ D(x)², the squared distance to the nearest centre chosen so far. By default the *greedy* variant
  (as in scikit-learn): ``2 + ⌊ln K⌋`` candidates per step, keep the one that lowers the potential ``Σ D²`` most.
  It runs on a uniform sample of ``max(20·K, 10 000)`` rows (for streams a reservoir drawn by bottom-k random keys,
  which is exact sampling without replacement). ``init="random"`` draws K distinct sample rows.
* **Lloyd** (Lloyd 1982) — each pass assigns every row to its nearest centroid (E-step) while accumulating per-cluster
  sums and counts (``index_add_`` / ``bincount``), then sets ``c_k = sum_k / count_k`` (M-step). Streamed data gives
  the same exact full-batch update: one pass over the stream per iteration.
* **Mini-batch k-means** (Sculley 2010, ``method="minibatch"``) — per batch ``B``, with per-centre counts ``v_k``
  and learning rate ``1 / v_k``: ``v_k += n_k``, ``c_k ← c_k + (Σ_{x∈B_k} x − n_k c_k) / v_k``.
* **Spherical k-means** (``metric="cosine"``) — rows and centroids are l2-normalised; the M-step normalises the mean.
  Distances are then ``‖x − c‖² = 2 − 2 cos(x, c)``.

Nearest centroids come from one GEMM per chunk, ``argmin_k ‖c_k‖² − 2 x·c_k`` (``torch.addmm``, float32,
``chunk_size × K`` at a time); the distance to the chosen centroid is then computed directly as ``‖x − c_k‖²``, so
it has no cancellation error. Per-cluster sums are accumulated in float64.

Empty clusters are re-seeded after every update, never left as NaN: each pass also keeps up to 1024 rows sampled with
probability ∝ their squared distance (a weighted reservoir, Efraimidis & Spirakis 2006), and empty centroids are moved
farthest-first onto those candidates (scikit-learn moves them onto the farthest rows; sampling by D² spreads the new
centroids over all badly served regions instead of one outlying blob), then onto random sample rows. A final E-step
pass gives ``inertia_`` and ``counts`` for the returned centroids, so a fit reads the data ``n_iter + 2`` times at
most (sample, passes, final).

``backend="faiss"`` runs the Lloyd iterations with ``faiss.Kmeans`` (``pip install 'vistok[faiss]'``) from the same
initial centroids and reports through the same final pass (same attributes, same inertia).

Token ids: index ``k`` in ``[0, K)`` is row ``k`` of ``centroids``; there is no bit layout.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vistok._optional import require
from vistok.hub import PretrainedMixin
from vistok.quantizers.base import QuantizerOutput, full_precision
from vistok.registry import register_model

__all__ = ["KMEANS_PRESETS", "KMeans", "KMeansConfig", "QuantizerOutput"]

Metric = Literal["l2", "cosine"]
Init = Literal["k-means++", "random"]
Method = Literal["lloyd", "minibatch"]
Backend = Literal["torch", "faiss"]

_CHOICES = {
    "metric": ("l2", "cosine"),
    "init": ("k-means++", "random"),
    "method": ("lloyd", "minibatch"),
    "backend": ("torch", "faiss"),
}
_CHUNK_ELEMENTS = 1 << 22  # distance matrix elements per chunk (16 MiB of float32)
_CHUNK_FEATURES = 1 << 20  # feature elements per chunk (4 MiB of float32 rows): small K must not make chunks huge


def _chunk_rows(k: int, dim: int) -> int:
    """Default rows per distance GEMM: the chunk's K scores and its D-dim rows both stay a few MiB (the passes after
    the GEMM are memory-bound: at K = 64, D = 256, 4,096-row chunks run a pass 3× faster than 65,536-row ones)."""
    return max(256, min(_CHUNK_ELEMENTS // k, _CHUNK_FEATURES // dim))


_MAX_CANDIDATES = 1024  # rows kept per pass as re-seeding candidates for empty clusters
_FAISS_POINTS_PER_CENTROID = 256  # faiss's default training-set size per centroid, for streamed data


# ---------------------------------------------------------------------------------------------------------------------
# Config and presets
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class KMeansConfig:
    """A k-means codebook (``num_clusters × dim``) and the defaults :meth:`KMeans.fit` uses.

    ``fit`` overrides are written back into the config, so a saved ``config.json`` records how the codebook was made.
    """

    num_clusters: int
    dim: int
    metric: Metric = "l2"
    n_iter: int = 20
    tol: float = 1e-4
    init: Init = "k-means++"
    seed: int = 0
    method: Method = "lloyd"
    backend: Backend = "torch"

    def __post_init__(self) -> None:
        for name in ("num_clusters", "dim"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive int, got {getattr(self, name)!r}")
        if self.n_iter < 0 or self.tol < 0:
            raise ValueError(f"n_iter and tol must be >= 0, got n_iter={self.n_iter}, tol={self.tol}")
        for name, choices in _CHOICES.items():
            if getattr(self, name) not in choices:
                raise ValueError(f"{name} must be one of {list(choices)}, got {getattr(self, name)!r}")

    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> KMeansConfig:
        """Preset ``name`` from :data:`KMEANS_PRESETS` with ``overrides`` applied."""
        if name not in KMEANS_PRESETS:
            raise KeyError(f"no KMeansConfig preset named {name!r}; presets: {', '.join(sorted(KMEANS_PRESETS))}")
        return replace(KMEANS_PRESETS[name], **overrides)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> KMeansConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError`` naming them."""
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown KMeansConfig keys {unknown}; valid: {[f.name for f in fields(cls)]}")
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str) -> KMeansConfig:
        return cls.from_dict(json.loads(text))


#: Named configs. ``digit-base``: DiGIT's base tokenizer, K = 8192 over DINOv2 ViT-B/14 features (768-d), 20 iterations.
KMEANS_PRESETS: dict[str, KMeansConfig] = {
    "kmeans-tiny": KMeansConfig(num_clusters=16, dim=8, n_iter=10),
    "digit-base": KMeansConfig(num_clusters=8192, dim=768, n_iter=20),
}


# ---------------------------------------------------------------------------------------------------------------------
# Data: tensors, arrays, or streams of minibatches → float32 row chunks
# ---------------------------------------------------------------------------------------------------------------------


def _to_tensor(x: Any) -> Tensor:
    """A batch as a tensor: tensors and arrays pass (no copy); ``(features, labels, ...)`` tuples give ``features``."""
    if isinstance(x, tuple | list) and x and isinstance(x[0], Tensor | np.ndarray):
        x = x[0]
    if isinstance(x, np.ndarray):
        return torch.from_numpy(x)
    if isinstance(x, Tensor):
        return x
    raise TypeError(f"expected a torch.Tensor or numpy.ndarray of features, got {type(x).__name__}")


def _rows(x: Tensor, dim: int) -> Tensor:
    """``(N, D)`` or channel-first ``(B, D, *S)`` features as ``(M, D)`` rows."""
    if x.ndim < 2 or x.shape[1] != dim:
        expected = f"(N, {dim}) or channel-first (B, {dim}, ...)"
        raise ValueError(f"expected features of shape {expected}, got {tuple(x.shape)}")
    return x if x.ndim == 2 else x.movedim(1, -1).reshape(-1, dim)


def _check_finite(x: Tensor) -> Tensor:
    if not bool(torch.isfinite(x).all()):
        raise ValueError("features contain NaN or Inf values")
    return x


def _prep(x: Tensor, cosine: bool, device: torch.device, check: bool = False) -> Tensor:
    """Rows as float32 on ``device``, l2-normalised for the cosine metric; ``check`` refuses NaN / Inf."""
    x = x.to(device=device, dtype=torch.float32)
    if check:
        _check_finite(x)
    return F.normalize(x, dim=1) if cosine else x


class _Source:
    """Re-readable data for several passes: an in-memory tensor, a re-iterable, or a callable returning an iterator."""

    def __init__(self, data: Any, dim: int, cosine: bool, chunk_size: int, device: torch.device):
        self.dim, self.cosine, self.chunk_size, self.device = dim, cosine, chunk_size, device
        self.check = False  # check every chunk for NaN / Inf (E-step passes check their inertia instead)
        self.tensor: Tensor | None = None
        self.factory: Callable[[], Iterable] | None = None
        if isinstance(data, Tensor | np.ndarray):
            self.tensor = _rows(_to_tensor(data), dim)
        elif callable(data):
            self.factory = data
        elif isinstance(data, Iterable):
            if iter(data) is data:
                raise TypeError(
                    "k-means reads the data several times, but a generator / iterator can be read only once: pass a "
                    "zero-argument callable returning a fresh iterator (fit(lambda: make_batches())), a list, or a "
                    "DataLoader"
                )
            self.factory = lambda: iter(data)
        else:
            raise TypeError(f"data must be a tensor, an array, an iterable or a callable, got {type(data).__name__}")

    def chunks(self, order: Tensor | None = None) -> Iterator[Tensor]:
        """One pass: prepared float32 row chunks of at most ``chunk_size`` rows (``order``: a row permutation)."""
        cs = self.chunk_size
        if self.tensor is not None:
            for start in range(0, len(self.tensor), cs):
                rows = self.tensor[start : start + cs] if order is None else self.tensor[order[start : start + cs]]
                yield _prep(rows, self.cosine, self.device, self.check)
            return
        for batch in self.factory():
            rows = _rows(_to_tensor(batch), self.dim)
            for start in range(0, len(rows), cs):
                yield _prep(rows[start : start + cs], self.cosine, self.device, self.check)


class _Reservoir:
    """Keep the ``size`` streamed rows with the smallest random keys.

    Uniform random keys give a uniform sample without replacement (bottom-k sampling); exponential keys divided by
    weights, ``E / w``, give a weighted sample without replacement (Efraimidis & Spirakis 2006); ``w = 0`` never enters.
    """

    def __init__(self, size: int, gen: torch.Generator):
        self.size, self.gen, self.seen = size, gen, 0
        self.keys = torch.full((size,), math.inf, dtype=torch.float64)  # inf marks an empty slot
        self.rows: Tensor | None = None

    def add(self, x: Tensor, weights: Tensor | None = None) -> None:
        self.seen += len(x)
        if self.rows is None:
            self.rows = x.new_zeros(self.size, x.shape[1])
        if weights is None:
            keys = torch.rand(len(x), generator=self.gen, dtype=torch.float64)
        else:
            keys = torch.empty(len(x), dtype=torch.float64).exponential_(generator=self.gen) / weights.double().cpu()
        cand = (keys < self.keys.max()).nonzero().squeeze(1)
        if len(cand) == 0:
            return
        merged = torch.cat([self.keys, keys[cand]])
        keep = torch.zeros(len(merged), dtype=torch.bool)
        keep[torch.topk(merged, self.size, largest=False).indices] = True
        slots, new = (~keep[: self.size]).nonzero().squeeze(1), cand[keep[self.size :]]
        self.keys[slots] = keys[new]
        self.rows[slots.to(x.device)] = x[new.to(x.device)]

    def sample(self) -> Tensor:
        """The kept rows (an empty tensor before any row was added)."""
        if self.rows is None:
            return torch.empty(0, 0)
        return self.rows[torch.isfinite(self.keys).nonzero().squeeze(1).to(self.rows.device)]


def _random_subset(n: int, size: int, gen: torch.Generator) -> Tensor:
    """``min(n, size)`` distinct indices of ``range(n)``, uniformly at random (O(size) work when n ≫ size)."""
    if n > 4 * size:
        pick = torch.randint(n, (2 * size,), generator=gen).unique()  # ≥ 1.5·size distinct with overwhelming odds
        if len(pick) >= size:
            return pick[torch.randperm(len(pick), generator=gen)[:size]]
    return torch.randperm(n, generator=gen)[:size]


def _sample_rows(source: _Source, size: int, gen: torch.Generator) -> tuple[Tensor, int]:
    """A uniform sample of at most ``size`` prepared rows, and the number of rows in the data."""
    if source.tensor is not None:
        n = len(source.tensor)
        pick = _random_subset(n, size, gen)
        return _prep(source.tensor[pick.to(source.tensor.device)], source.cosine, source.device, check=True), n
    reservoir = _Reservoir(size, gen)
    for x in source.chunks():
        reservoir.add(x)
    return _check_finite(reservoir.sample()), reservoir.seen


# ---------------------------------------------------------------------------------------------------------------------
# Distances and seeding
# ---------------------------------------------------------------------------------------------------------------------


def _nearest(x: Tensor, c: Tensor, c_sq: Tensor) -> tuple[Tensor, Tensor]:
    """Squared distance to, and index of, each row's nearest centroid.

    The argmin comes from one GEMM, ``‖c‖² − 2 x·c``; the distance to the chosen centroid is then computed directly,
    ``‖x − c_k‖²`` (no cancellation: a row on its centroid has distance 0, not float32 noise of ``‖x‖²``).
    """
    idx = torch.addmm(c_sq, x, c.T, beta=1, alpha=-2).argmin(dim=1)
    return (x - c[idx]).square_().sum(1), idx


def _sqdist(x: Tensor, x_sq: Tensor, c: Tensor) -> Tensor:
    """``(n, m)`` squared distances between rows ``x`` (squared norms ``x_sq``) and rows ``c``."""
    return torch.addmm(x_sq[:, None], x, c.T, alpha=-2).add_((c * c).sum(1)).clamp_(min=0)


def _kmeans_plus_plus(x: Tensor, k: int, gen: torch.Generator, n_trials: int | None = None) -> Tensor:
    """Greedy k-means++ seeding of ``k`` centres among rows ``x`` (D² sampling, ``n_trials`` candidates per step)."""
    n, t = len(x), n_trials or 2 + int(math.log(k))
    x_sq = (x * x).sum(1)
    centers = x.new_empty(k, x.shape[1])
    first = int(torch.randint(n, (1,), generator=gen))
    centers[0] = x[first]
    closest = _sqdist(x, x_sq, x[first : first + 1]).squeeze(1)
    for i in range(1, k):
        cdf = torch.cumsum(closest.double(), 0)
        r = torch.rand(t, generator=gen, dtype=torch.float64).to(x.device) * cdf[-1]
        cand = torch.searchsorted(cdf, r, right=True).clamp_(max=n - 1)
        d = torch.minimum(_sqdist(x, x_sq, x[cand]), closest[:, None])
        best = d.sum(0).argmin()
        centers[i] = x[cand[best]]
        closest = d[:, best]
    return centers


def _initial_centroids(init: Any, sample: Tensor, k: int, gen: torch.Generator, cosine: bool) -> Tensor:
    """``init`` centroids: given ``(K, D)`` values, or k-means++ / random rows of ``sample``."""
    if isinstance(init, Tensor | np.ndarray):
        c = _to_tensor(init).to(device=sample.device, dtype=torch.float32).clone()
        if tuple(c.shape) != (k, sample.shape[1]):
            raise ValueError(f"init centroids must have shape ({k}, {sample.shape[1]}), got {tuple(c.shape)}")
        return F.normalize(c, dim=1) if cosine else c
    if init == "random":
        return sample[torch.randperm(len(sample), generator=gen)[:k].to(sample.device)].clone()
    if init == "k-means++":
        return _kmeans_plus_plus(sample, k, gen)
    raise ValueError(f"init must be 'k-means++', 'random' or a (K, D) tensor, got {init!r}")


# ---------------------------------------------------------------------------------------------------------------------
# One pass over the data
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class _PassStats:
    """What one E-step pass accumulates: per-cluster sums (float64) and counts, inertia, re-seeding candidates."""

    sums: Tensor
    counts: Tensor
    inertia: float
    candidates: Tensor | None
    n_rows: int


def _candidates(gen: torch.Generator | None) -> _Reservoir | None:
    """Re-seeding candidates of a pass: rows sampled with probability ∝ their squared distance (D² weighting)."""
    return _Reservoir(_MAX_CANDIDATES, gen) if gen is not None else None


def _assign_pass(source: _Source, c: Tensor, gen: torch.Generator | None = None) -> _PassStats:
    """E-step over all the data: nearest centroids, per-cluster sums and counts, inertia (and candidates if ``gen``)."""
    k = len(c)
    c_sq = (c * c).sum(1)
    sums = torch.zeros(k, c.shape[1], dtype=torch.float64, device=c.device)
    counts = torch.zeros(k, dtype=torch.int64, device=c.device)
    inertia = torch.zeros((), dtype=torch.float64, device=c.device)
    cand, n = _candidates(gen), 0
    for x in source.chunks():
        d, idx = _nearest(x, c, c_sq)
        sums.index_add_(0, idx, x.double())
        counts += torch.bincount(idx, minlength=k)
        inertia += d.sum(dtype=torch.float64)
        n += len(x)
        if cand is not None:
            cand.add(x, d)
    if n == 0:
        raise ValueError("the data yielded no feature rows")
    if not math.isfinite(float(inertia)):
        raise ValueError("features contain NaN or Inf values")
    return _PassStats(sums, counts, float(inertia), cand.sample() if cand is not None else None, n)


def _lloyd_update(c: Tensor, stats: _PassStats, cosine: bool) -> Tensor:
    """M-step: each non-empty cluster's centroid becomes the mean (normalised for cosine) of its rows."""
    filled = stats.counts > 0
    new = c.clone()
    new[filled] = (stats.sums[filled] / stats.counts[filled, None]).to(c.dtype)
    return F.normalize(new, dim=1) if cosine else new


def _reseed(c: Tensor, counts: Tensor, candidates: Tensor | None, pool: Tensor, gen: torch.Generator) -> int:
    """Move the centroids of empty clusters (in place); returns how many.

    Farthest-first over the pass's D²-weighted candidate rows: each empty centroid goes to the candidate farthest from
    all centroids so far (the filled ones and those just re-seeded); with no candidate left at a positive distance,
    to a random row of ``pool``.
    """
    empty = (counts == 0).nonzero().squeeze(1).tolist()
    if not empty:
        return 0
    filled = c[counts > 0]
    cand = candidates if candidates is not None else c.new_empty(0, c.shape[1])
    d = _nearest(cand, filled, (filled * filled).sum(1))[0] if len(filled) else torch.full_like(cand[:, 0], math.inf)
    for j in empty:
        i = int(d.argmax()) if len(d) else -1
        if i >= 0 and float(d[i]) > 0:
            c[j] = cand[i]
            d = torch.minimum(d, (cand - c[j]).square().sum(1))
        else:
            c[j] = pool[int(torch.randint(len(pool), (1,), generator=gen))]
    return len(empty)


# ---------------------------------------------------------------------------------------------------------------------
# Fitting loops
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class _FitResult:
    centroids: Tensor
    final: _PassStats  # E-step pass at the final centroids
    history: list[float]
    n_iter: int
    n_reseeded: int


def _converged(history: list[float], tol: float) -> bool:
    """Relative inertia decrease ≤ ``tol`` over the last update.

    Lloyd updates and re-seeds never raise the inertia (an empty centroid serves no row, so moving it hurts none),
    so a small or negative (float noise) decrease means the fit has settled.
    """
    return len(history) >= 2 and history[-2] - history[-1] <= tol * abs(history[-1])


def _log(verbose: bool, it: int, inertia: float, reseeded: int) -> None:
    if verbose:
        print(f"k-means pass {it}: inertia {inertia:.6g}, re-seeded {reseeded}", flush=True)


def _fit_lloyd(
    source: _Source, c: Tensor, n_iter: int, tol: float, cosine: bool, pool: Tensor, gen: torch.Generator, verbose: bool
) -> _FitResult:
    """Lloyd iterations (one pass each); stops early when the inertia stops improving by more than ``tol``."""
    history: list[float] = []
    it = reseeded = 0
    while True:
        stats = _assign_pass(source, c, gen if it < n_iter else None)
        history.append(stats.inertia)
        _log(verbose, it, stats.inertia, reseeded)
        if it == n_iter or _converged(history, tol):
            return _FitResult(c, stats, history, it, reseeded)
        c = _lloyd_update(c, stats, cosine)
        reseeded += _reseed(c, stats.counts, stats.candidates, pool, gen)
        it += 1


def _minibatch_pass(
    source: _Source, c: Tensor, v: Tensor, cosine: bool, order: Tensor | None, gen: torch.Generator
) -> _PassStats:
    """One epoch of Sculley's mini-batch updates (in place on ``c`` and counts ``v``)."""
    k = len(c)
    seen = torch.zeros(k, dtype=torch.int64, device=c.device)
    inertia = torch.zeros((), dtype=torch.float64, device=c.device)
    cand, n = _candidates(gen), 0
    for x in source.chunks(order):
        d, idx = _nearest(x, c, (c * c).sum(1))
        cnt = torch.bincount(idx, minlength=k)
        sums = torch.zeros_like(c).index_add_(0, idx, x)
        v += cnt
        hit = cnt > 0
        c[hit] += ((sums[hit] - cnt[hit, None] * c[hit]) / v[hit, None]).to(c.dtype)
        if cosine:
            c[hit] = F.normalize(c[hit], dim=1)
        seen += cnt
        inertia += d.sum(dtype=torch.float64)
        n += len(x)
        cand.add(x, d)
    return _PassStats(torch.empty(0), seen, float(inertia), cand.sample(), n)


def _fit_minibatch(
    source: _Source, c: Tensor, n_iter: int, tol: float, cosine: bool, pool: Tensor, gen: torch.Generator, verbose: bool
) -> _FitResult:
    """``n_iter`` epochs of mini-batch k-means (in-memory data is reshuffled each epoch), then a final E-step pass."""
    v = torch.zeros(len(c), dtype=torch.float64, device=c.device)
    history: list[float] = []
    reseeded = 0
    for it in range(n_iter):
        order = torch.randperm(len(source.tensor), generator=gen) if source.tensor is not None else None
        stats = _minibatch_pass(source, c, v, cosine, order, gen)
        history.append(stats.inertia)
        _log(verbose, it, stats.inertia, reseeded)
        reseeded += _reseed(c, stats.counts, stats.candidates, pool, gen)
        v[stats.counts == 0] = 0
        if _converged(history, tol):
            break
    final = _assign_pass(source, c)
    history.append(final.inertia)
    return _FitResult(c, final, history, len(history) - 1, reseeded)


def _fit_faiss(
    source: _Source, c0: Tensor, n_iter: int, cosine: bool, seed: int, sample_size: int | None, gen: torch.Generator
) -> _FitResult:
    """Lloyd iterations by ``faiss.Kmeans`` from ``c0``, on all in-memory rows or a sample of a stream."""
    faiss = require("faiss", "faiss", "KMeans(backend='faiss')")
    if source.tensor is not None and sample_size is None:
        train = torch.cat(list(source.chunks()))
    else:
        train, _ = _sample_rows(source, sample_size or _FAISS_POINTS_PER_CENTROID * len(c0), gen)
    x = np.ascontiguousarray(train.cpu().numpy(), dtype=np.float32)
    k, d = c0.shape
    km = faiss.Kmeans(
        d, k, niter=n_iter, seed=seed, spherical=cosine, max_points_per_centroid=len(x) // k + 1,
        min_points_per_centroid=1, verbose=False,
    )  # fmt: skip
    km.train(x, init_centroids=np.ascontiguousarray(c0.cpu().numpy(), dtype=np.float32))
    c = torch.from_numpy(km.centroids.copy()).to(c0.device)
    final = _assign_pass(source, c)
    history = [float(o) for o in km.obj] + [final.inertia]
    splits = sum(int(st.get("nsplit", 0)) for st in getattr(km, "iteration_stats", []))
    return _FitResult(c, final, history, len(km.obj), splits)


# ---------------------------------------------------------------------------------------------------------------------
# The module
# ---------------------------------------------------------------------------------------------------------------------


class KMeans(nn.Module, PretrainedMixin):
    """A k-means codebook: ``fit`` it on features, then ``assign`` / ``forward`` turns features into token ids.

    ``KMeans(num_clusters, dim, metric="l2")`` or ``KMeans(KMeansConfig(...))``. Buffers (saved with the weights):
    ``centroids`` ``(K, D)`` float32, ``counts`` ``(K,)`` int64 cluster sizes on the fit data, ``initted`` (bool).
    After ``fit``: ``inertia_`` (sum of squared distances of the fit data to the final centroids; for ``cosine``, of the
    l2-normalised data), ``n_iter_`` (centroid updates made: Lloyd passes, mini-batch epochs, faiss iterations),
    ``history`` (inertia per pass — of the centroids entering a Lloyd pass, running during a mini-batch epoch, faiss's
    own objective — and last ``inertia_``), ``n_empty_`` (clusters with no rows at the end), ``n_reseeded_``
    (empty-cluster re-seeds made; faiss: its cluster splits) and ``n_samples_`` (rows per pass).
    """

    config_class = KMeansConfig

    def __init__(self, num_clusters: int | KMeansConfig, dim: int | None = None, metric: Metric = "l2", **kwargs: Any):
        super().__init__()
        if isinstance(num_clusters, KMeansConfig):
            if dim is not None or kwargs:
                raise TypeError("pass either a KMeansConfig or num_clusters, dim, ... — not both")
            config = num_clusters
        else:
            if dim is None:
                raise TypeError("KMeans needs dim (the feature size) as well as num_clusters")
            config = KMeansConfig(num_clusters=num_clusters, dim=dim, metric=metric, **kwargs)
        self.config = config
        self.register_buffer("centroids", torch.zeros(config.num_clusters, config.dim))
        self.register_buffer("counts", torch.zeros(config.num_clusters, dtype=torch.int64))
        self.register_buffer("initted", torch.tensor(False))
        self.inertia_: float | None = None
        self.n_iter_: int | None = None
        self.history: list[float] = []
        self.n_empty_: int | None = None
        self.n_reseeded_: int | None = None
        self.n_samples_: int | None = None

    @property
    def num_clusters(self) -> int:
        return self.config.num_clusters

    @property
    def codebook_size(self) -> int:
        return self.config.num_clusters

    @property
    def dim(self) -> int:
        return self.config.dim

    @property
    def cosine(self) -> bool:
        return self.config.metric == "cosine"

    # --- fitting -------------------------------------------------------------------------------------------------

    def fit(
        self,
        data: Any,
        *,
        n_iter: int | None = None,
        tol: float | None = None,
        init: Init | Tensor | np.ndarray | None = None,
        seed: int | None = None,
        method: Method | None = None,
        backend: Backend | None = None,
        sample_size: int | None = None,
        chunk_size: int | None = None,
        batch_size: int = 1024,
        verbose: bool = False,
    ) -> KMeans:
        """Fit the centroids to ``data``; returns ``self``.

        ``data``: a ``(N, D)`` (or channel-first ``(B, D, ...)``) tensor / array in memory, or a stream of such
        minibatches — a re-iterable (list, DataLoader; ``(features, labels)`` batches use ``features``) or a
        zero-argument callable returning a fresh iterator (called once per pass). Rows are read in float32.
        ``n_iter``, ``tol``, ``init``, ``seed``, ``method``, ``backend`` override the config's fit defaults and are
        written back into ``self.config`` (an ``init`` given as ``(K, D)`` centroids leaves the config's ``init``).
        ``tol``: stop when a Lloyd pass lowers the inertia by at most ``tol`` (relative); faiss stops on its own when
        its objective stops changing. ``sample_size``: rows for the k-means++ / random init sample (default
        ``max(20·K, 10 000)``); with ``backend="faiss"`` it is instead the training sample for faiss (default: all
        in-memory rows; ``256·K`` reservoir rows of a stream). ``chunk_size``: rows per distance GEMM (default
        ``min(2**22 // K, 2**20 // D)``, at least 256); ``batch_size``: rows per mini-batch update
        (``method="minibatch"``).
        Runs on the device of the module's buffers; the same seed gives the same result on the same device.
        """
        given = {"n_iter": n_iter, "tol": tol, "seed": seed, "method": method, "backend": backend}
        if isinstance(init, str):
            given["init"] = init
        self.config = replace(self.config, **{k: v for k, v in given.items() if v is not None})
        cfg, device = self.config, self.centroids.device
        chunk = batch_size if cfg.method == "minibatch" else chunk_size or _chunk_rows(cfg.num_clusters, self.dim)
        source = _Source(data, self.dim, self.cosine, chunk, device)
        source.check = cfg.method == "minibatch"  # a NaN would corrupt centroids before the pass ends
        with torch.no_grad(), full_precision(device):
            self._record(self._fit(source, init, sample_size, verbose))
        return self

    def _fit(self, source: _Source, init: Any, sample_size: int | None, verbose: bool) -> _FitResult:
        """Sample, seed, iterate."""
        cfg, k = self.config, self.num_clusters
        gen = torch.Generator().manual_seed(cfg.seed)
        init_size = sample_size if sample_size is not None and cfg.backend == "torch" else max(20 * k, 10_000)
        sample, n_rows = _sample_rows(source, init_size, gen)
        if n_rows < k:
            raise ValueError(f"k-means needs at least num_clusters={k} rows, got {n_rows}")
        c0 = _initial_centroids(
            cfg.init if init is None or isinstance(init, str) else init, sample, k, gen, self.cosine
        )
        if cfg.backend == "faiss":
            return _fit_faiss(source, c0, cfg.n_iter, self.cosine, cfg.seed, sample_size, gen)
        loop = _fit_lloyd if cfg.method == "lloyd" else _fit_minibatch
        return loop(source, c0, cfg.n_iter, cfg.tol, self.cosine, sample, gen, verbose)

    def _record(self, result: _FitResult) -> None:
        with torch.no_grad():
            self.centroids.copy_(result.centroids)
            self.counts.copy_(result.final.counts)
            self.initted.fill_(True)
        self.inertia_ = result.final.inertia
        self.n_iter_ = result.n_iter
        self.history = result.history
        self.n_empty_ = int((result.final.counts == 0).sum())
        self.n_reseeded_ = result.n_reseeded
        self.n_samples_ = result.final.n_rows

    # --- using the codebook ----------------------------------------------------------------------------------------

    def _check_initted(self) -> None:
        if not bool(self.initted):
            raise RuntimeError("this KMeans has no centroids yet: call fit(features) or load fitted weights")

    @torch.no_grad()
    def _nearest_rows(self, rows: Tensor, chunk_size: int | None = None) -> tuple[Tensor, Tensor]:
        """Squared distances (float32) and indices (int64) of each row's nearest centroid, chunk by chunk."""
        self._check_initted()
        c = self.centroids.float()
        c_sq = (c * c).sum(1)
        cs = chunk_size or _chunk_rows(self.num_clusters, self.dim)
        with full_precision(c.device):
            parts = [_nearest(_prep(rows[i : i + cs], self.cosine, c.device), c, c_sq) for i in range(0, len(rows), cs)]
        if not parts:
            return c.new_empty(0), torch.empty(0, dtype=torch.int64, device=c.device)
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    def assign(self, features: Tensor | np.ndarray, chunk_size: int | None = None) -> Tensor:
        """Token ids (int64) of ``(N, D)`` → ``(N,)`` or channel-first ``(B, D, *S)`` → ``(B, *S)`` features."""
        x = _to_tensor(features)
        idx = self._nearest_rows(_rows(x, self.dim), chunk_size)[1]
        return idx if x.ndim == 2 else idx.view(x.shape[0], *x.shape[2:])

    @torch.no_grad()
    def inertia(self, data: Any, chunk_size: int | None = None) -> float:
        """Sum of squared distances of ``data`` (tensor, array, or stream as in :meth:`fit`) to the nearest centroid."""
        self._check_initted()
        cs = chunk_size or _chunk_rows(self.num_clusters, self.dim)
        source = _Source(data, self.dim, self.cosine, cs, self.centroids.device)
        with full_precision(self.centroids.device):
            return _assign_pass(source, self.centroids.float()).inertia

    def indices_to_codes(self, indices: Tensor) -> Tensor:
        """Centroid vectors of ``indices``: ``(N,)`` → ``(N, D)``, ``(B, *S)`` → channel-first ``(B, D, *S)``."""
        self._check_initted()
        codes = self.centroids[indices.long()]
        return codes if indices.ndim <= 1 else codes.movedim(-1, 1)

    def forward(self, z: Tensor) -> QuantizerOutput:
        """Quantize ``(N, D)`` or channel-first ``(B, D, *S)`` features to their nearest centroids (no gradient).

        ``metrics``: ``inertia`` (sum of squared distances), ``mean_sq_distance``, ``mean_distance``, ``usage``
        (fraction of the codebook used) and ``perplexity`` of the token distribution.
        """
        d, idx = self._nearest_rows(_rows(z, self.dim))
        indices = idx if z.ndim == 2 else idx.view(z.shape[0], *z.shape[2:])
        quantized = self.indices_to_codes(indices).to(z.dtype)
        return QuantizerOutput(quantized, indices, z.new_zeros(()), self._metrics(d, idx))

    def _metrics(self, d: Tensor, idx: Tensor) -> dict[str, Tensor]:
        p = torch.bincount(idx, minlength=self.num_clusters).float() / max(len(idx), 1)
        entropy = -(p * p.clamp_min(1e-12).log()).sum()
        return {
            "inertia": d.sum(dtype=torch.float64).float(),
            "mean_sq_distance": d.mean(),
            "mean_distance": d.sqrt().mean(),
            "usage": (p > 0).float().mean(),
            "perplexity": entropy.exp(),
        }

    def extra_repr(self) -> str:
        return f"num_clusters={self.num_clusters}, dim={self.dim}, metric={self.config.metric!r}"


register_model("kmeans", KMeans, presets=KMEANS_PRESETS)
