"""k-means side by side: vistok KMeans (torch: in-memory and streamed Lloyd, mini-batch; faiss backend) against
scikit-learn (MiniBatchKMeans, KMeans) and faiss, on the same synthetic Gaussian mixture in one process.

Default = the issue's setting (200k × 256 features, K = 1024, 20 iterations); ``--quick`` is a small run.
Every final inertia is recomputed by one shared function on the full data (sum of squared distances to the nearest
centroid, float64 accumulation), so the numbers are comparable whatever each library reports itself. Time is the
median over ``--repeats`` fits, seeding included except in the "given init" rows (both start from the same vistok
k-means++ centroids: Lloyd against Lloyd); ratios are against scikit-learn MiniBatchKMeans.

    python benchmarks/bench_kmeans.py --quick
    python benchmarks/bench_kmeans.py                     # 200k × 256, K = 1024
    python benchmarks/bench_kmeans.py --skip sklearn-kmeans --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from vistok._optional import has
from vistok.quantizers.kmeans import KMeans


@dataclass
class Row:
    method: str
    seconds: float
    iters: str
    inertia: float


def make_data(n: int, dim: int, components: int, seed: int) -> np.ndarray:
    """A seeded mixture of ``components`` isotropic Gaussians with random means and scales, float32 ``(n, dim)``."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(components, dim, generator=g)
    scales = 0.5 + torch.rand(components, generator=g) * 0.5
    z = torch.randint(components, (n,), generator=g)
    return (means[z] + torch.randn(n, dim, generator=g) * scales[z, None]).numpy()


def shared_inertia(x: np.ndarray, centroids: np.ndarray, chunk: int = 8192) -> float:
    """Σ min_k ‖x − c_k‖² for every method alike: float32 GEMM argmin, then the exact distance in float64."""
    c = torch.from_numpy(np.ascontiguousarray(centroids, dtype=np.float32))
    c_sq, total = (c * c).sum(1), 0.0
    for start in range(0, len(x), chunk):
        rows = torch.from_numpy(x[start : start + chunk])
        idx = torch.addmm(c_sq, rows, c.T, alpha=-2).argmin(1)
        total += float((rows.double() - c[idx].double()).square().sum())
    return total


def timed(fit: Callable[[], tuple[np.ndarray, str]], repeats: int) -> tuple[float, np.ndarray, str]:
    """Median wall time of ``repeats`` fits; the centroids and iteration count of the last one."""
    times = []
    for _ in range(repeats):
        time.sleep(0.5)  # let the previous library's OpenMP threads stop spinning (they share the cores)
        t0 = time.perf_counter()
        centroids, iters = fit()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), centroids, iters


def vistok_fit(x: np.ndarray, k: int, args, **kwargs) -> Callable[[], tuple[np.ndarray, str]]:
    kwargs = {"n_iter": args.iters, "tol": args.tol, "seed": args.seed, **kwargs}

    def fit():
        km = KMeans(k, x.shape[1]).fit(x, **kwargs)
        return km.centroids.numpy(), str(km.n_iter_)

    return fit


def vistok_stream_fit(x: np.ndarray, k: int, args) -> Callable[[], tuple[np.ndarray, str]]:
    """Lloyd on the data given as a stream of ``--stream-batch``-row minibatches (as from a memmap or a loader)."""
    batches = lambda: (x[i : i + args.stream_batch] for i in range(0, len(x), args.stream_batch))

    def fit():
        km = KMeans(k, x.shape[1]).fit(batches, n_iter=args.iters, tol=args.tol, seed=args.seed)
        return km.centroids.numpy(), str(km.n_iter_)

    return fit


def sklearn_minibatch_fit(x: np.ndarray, k: int, args) -> Callable[[], tuple[np.ndarray, str]]:
    from sklearn.cluster import MiniBatchKMeans

    def fit():
        mbk = MiniBatchKMeans(k, batch_size=args.batch, max_iter=args.iters, n_init=1, random_state=args.seed)
        mbk.fit(x)
        return mbk.cluster_centers_, f"{mbk.n_steps_} steps"

    return fit


def sklearn_kmeans_fit(x: np.ndarray, k: int, args, init: np.ndarray | None) -> Callable[[], tuple[np.ndarray, str]]:
    from sklearn.cluster import KMeans as SkKMeans

    def fit():
        km = SkKMeans(k, init="k-means++" if init is None else init, n_init=1, max_iter=args.iters, tol=args.tol)
        km.set_params(algorithm="lloyd", random_state=args.seed).fit(x)
        return km.cluster_centers_, str(km.n_iter_)

    return fit


def faiss_fit(x: np.ndarray, k: int, args) -> Callable[[], tuple[np.ndarray, str]]:
    import faiss

    def fit():
        km = faiss.Kmeans(x.shape[1], k, niter=args.iters, seed=args.seed, max_points_per_centroid=len(x) // k + 1)
        km.train(x)
        return km.centroids, str(len(km.obj))

    return fit


def run(args) -> list[Row]:
    x = make_data(args.n, args.dim, args.components or args.k, args.seed)
    k, rows = args.k, []
    print(f"data: {args.n} × {args.dim} float32, {args.components or args.k} components; K = {k}, {args.iters} iters")
    print(f"torch threads: {torch.get_num_threads()}, repeats: {args.repeats}\n", flush=True)

    def add(name: str, fit: Callable[[], tuple[np.ndarray, str]], repeats: int | None = None) -> np.ndarray:
        seconds, centroids, iters = timed(fit, repeats or args.repeats)
        rows.append(Row(name, seconds, iters, shared_inertia(x, centroids)))
        print(f"  done: {name} ({seconds:.2f} s)", flush=True)
        return centroids

    if "sklearn-minibatch" not in args.skip and has("sklearn"):
        add("sklearn MiniBatchKMeans", sklearn_minibatch_fit(x, k, args))
    init = KMeans(k, args.dim).fit(x, n_iter=0, seed=args.seed).centroids.numpy()  # vistok's k-means++ init
    if "vistok" not in args.skip:
        add("vistok Lloyd, in-memory (torch)", vistok_fit(x, k, args))
        add("vistok Lloyd, streamed (torch)", vistok_stream_fit(x, k, args))
        add("vistok Lloyd, in-memory, given init", vistok_fit(x, k, args, init=init))
        minibatch = {"method": "minibatch", "batch_size": args.batch, "tol": 1e-4}  # stops when an epoch gains < 0.01%
        add("vistok mini-batch (torch)", vistok_fit(x, k, args, **minibatch))
    if "sklearn-kmeans" not in args.skip and has("sklearn"):
        add("sklearn KMeans (lloyd), given init", sklearn_kmeans_fit(x, k, args, init), repeats=1)
    if "faiss" not in args.skip and has("faiss"):
        add("faiss Kmeans (own random init)", faiss_fit(x, k, args))
        add("vistok backend=faiss", vistok_fit(x, k, args, backend="faiss"))
    return rows


def print_table(rows: list[Row]) -> None:
    ref = next((r for r in rows if r.method.startswith("sklearn MiniBatch")), rows[0])
    header = (
        f"| {'method':<38} | {'time (s)':>9} | {'iters':>10} | {'inertia':>14} "
        f"| {'time / MBK':>10} | {'inertia / MBK':>13} |"
    )
    print("\n" + header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    for r in rows:
        print(
            f"| {r.method:<38} | {r.seconds:>9.2f} | {r.iters:>10} | {r.inertia:>14.6g} | "
            f"{r.seconds / ref.seconds:>10.2f} | {r.inertia / ref.inertia:>13.4f} |"
        )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=200_000, help="number of feature rows")
    p.add_argument("--dim", type=int, default=256, help="feature size")
    p.add_argument("--k", type=int, default=1024, help="number of clusters")
    p.add_argument("--components", type=int, default=None, help="mixture components in the data (default: K)")
    p.add_argument("--iters", type=int, default=20, help="Lloyd iterations / epochs (DiGIT: 20)")
    p.add_argument("--tol", type=float, default=0.0, help="early-stopping tolerance (0: run all iterations)")
    p.add_argument("--batch", type=int, default=1024, help="mini-batch size (sklearn's default)")
    p.add_argument("--stream-batch", type=int, default=10_000, help="rows per streamed minibatch")
    p.add_argument("--repeats", type=int, default=1, help="timed fits per method (median)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument(
        "--skip",
        nargs="*",
        default=[],
        choices=["vistok", "sklearn-minibatch", "sklearn-kmeans", "faiss"],
        help="methods to leave out",
    )
    p.add_argument("--quick", action="store_true", help="small run: 20k × 64, K = 128, 3 repeats")
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.dim, args.k, args.repeats = 20_000, 64, 128, 3
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print_table(run(args))


if __name__ == "__main__":
    main()
