"""Chat-UniVi token merging side by side: vistok's batched DPC-KNN (``multiscale_merge`` / ``video_events``) against
a straightforward per-sample reimplementation of the reference algorithm in the style of the public Chat-UniVi code
(TCFormer's ``cluster_dpc_knn`` + ``merge_tokens``): per sample, the full ``torch.cdist`` matrix, ``topk``, masks as
float tensors, Python loops over samples and events. Same seeded inputs; time, peak memory, and whether the clusters
(centres and assignments of every stage) are identical.

    python benchmarks/bench_merge.py                        # images and video, 5 / 3 repeats
    python benchmarks/bench_merge.py --cases images --repeats 3
    python benchmarks/bench_merge.py --threads 1            # on a CPU shared with other jobs
    python benchmarks/bench_merge.py --device cuda --json merge.json
    python benchmarks/bench_merge.py --device cuda --cases video --profile 15   # where each side's time goes
    python benchmarks/bench_merge.py --count --plan cuda --rounds 1 --repeats 1  # kernels a GPU would launch, on a CPU
    python benchmarks/bench_merge.py --device cuda --compile --rounds 3   # vistok's stages as one compiled graph

Cases (inputs: seeded synthetic patch features shaped like CLIP ViT-L/14 ones — each sample's tokens scattered
around 40 random "object" centres, N(0, 1) noise, C = 1024 channels — so that clusters exist and there are no exact
ties):
- ``images``: a batch of 16 images × 576 tokens through the three stages 64 → 32 → 16 (k = 5, 3, 3);
- ``video``: one 64-frame video × 256 tokens per frame, in 4 drifting scenes; ⌈64/16⌉ = 4 contiguous events
  (``segment_events``, the same function for both, inside the timed region), each event's 16 × 256 = 4,096 tokens
  through the three stages.

The reference follows the paper's definitions as vistok documents them, so that both compute the same clusters:
d = cdist/√C; ρ from the k nearest neighbours *excluding* the token itself (``topk(k + 1)`` minus the self match);
the densest token's δ is its row's maximum; no random density noise (vistok's ``jitter=0``; the public code adds
U(0, 1)·10⁻⁶); centres = ``topk`` of ρ·δ; every token joins its nearest centre; merged token = mean of members
(the public code's normalized weights, without its +10⁻⁶ in the denominator).

Measured per (case, implementation), each in a fresh subprocess, ``--rounds`` times alternating between the two: peak
memory of the first call (CPU: resident-set high-water mark above the baseline taken after the inputs exist and a
tiny warm-up call ran; CUDA: max_memory_allocated); time = median over all rounds of the ``--repeats`` calls after
it, as wall-clock time and as the process's CPU time (on a CPU shared with other jobs, wall time also counts the
time the process waited for a core; CPU time does not, so it is the steadier measure there). Workers run with a warm
heap (``--heap warm``, the default: glibc keeps freed memory instead of returning it to the OS) so that neither side's
timed calls pay first-touch page faults for fresh mappings, which otherwise come and go with unrelated allocations;
``--heap default`` measures the allocator as it is.

Identity: for every image (every event), the cluster of every original token at every stage, clusters numbered in
score order — i.e. the same partitions in the same order — from the last timed call (float32), and from one more
call of each on the float64 copy of the inputs, where the rounding differences between the two distance
computations (cdist vs vistok's GEMM panels, ~10⁻⁷ relative in float32) are ~10⁻¹⁶ and cannot flip a near-tie.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from _util import PeakMemory, load_average, machine_info, median, release_free_memory, sync, timed
from torch import Tensor

IMPLS = ("vistok", "reference")
# glibc malloc: serve every allocation from the heap and never give freed memory back to the OS, so that no timed call
# pays first-touch page faults for a fresh mapping (whether a call pays them otherwise depends on unrelated earlier
# allocations: the reference's images case moves between ~170 and ~270 ms with a 0.4 MB dummy allocation made first).
WARM_HEAP = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(2**40)}
CASES = ("images", "video")
STAGES, KS = (64, 32, 16), (5, 3, 3)

# ----------------------------------------------------------------------------------------------- inputs


def make_images(seed: int, b: int = 16, n: int = 576, c: int = 1024, objects: int = 40) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(b, objects, c, generator=g) * 1.5
    label = torch.randint(0, objects, (b, n), generator=g)
    return centres.gather(1, label[..., None].expand(b, n, c)) + torch.randn(b, n, c, generator=g)


def make_video(seed: int, t: int = 64, n: int = 256, c: int = 1024, scenes: int = 4, objects: int = 24) -> Tensor:
    """(T, N, C) per-frame tokens: ``scenes`` runs of frames, each with its own objects; tokens jitter per frame."""
    g = torch.Generator().manual_seed(seed + 1)
    frames = []
    per = -(-t // scenes)
    for _ in range(scenes):
        centres = torch.randn(objects, c, generator=g) * 1.5
        label = torch.randint(0, objects, (n,), generator=g)
        base = centres[label]
        frames += [base + torch.randn(n, c, generator=g) for _ in range(per)]
    return torch.stack(frames[:t])


# ----------------------------------------------------------------------------------------------- the reference


def ref_cluster(x: Tensor, m: int, k: int) -> tuple[Tensor, Tensor]:
    """DPC-KNN of one sample (1, N, C) the public code's way: (cluster index (1, N), centre indices (1, M))."""
    b, n, c = x.shape
    dist = torch.cdist(x, x) / (c**0.5)
    kk = min(k, n - 1)
    dist_nearest, _ = torch.topk(dist, k=kk + 1, dim=-1, largest=False)
    density = (-(dist_nearest[..., 1:] ** 2).mean(dim=-1)).exp()  # the self match (distance 0) left out
    mask = (density[:, None, :] > density[:, :, None]).type(x.dtype)
    dist_max = dist.max(dim=-1)[0][:, :, None]  # the densest token gets its row's maximum
    delta, _ = (dist * mask + dist_max * (1 - mask)).min(dim=-1)
    score = delta * density
    _, index_down = torch.topk(score, k=min(m, n), dim=-1)
    dist_to_centres = torch.gather(dist, 1, index_down[:, :, None].expand(b, index_down.shape[1], n))
    idx_cluster = dist_to_centres.argmin(dim=1)
    idx_batch = torch.arange(b, device=x.device)[:, None].expand(b, index_down.shape[1])
    idx_tmp = torch.arange(index_down.shape[1], device=x.device)[None, :].expand(b, -1)
    idx_cluster[idx_batch.reshape(-1), index_down.reshape(-1)] = idx_tmp.reshape(-1)
    return idx_cluster, index_down


def ref_merge(x: Tensor, idx_cluster: Tensor, m: int) -> Tensor:
    """Mean of every cluster (TCFormer's ``merge_tokens`` with unit token weights)."""
    b, n, c = x.shape
    idx = (idx_cluster + torch.arange(b, device=x.device)[:, None] * m).reshape(-1)
    weight = x.new_ones(b * n, 1)
    all_weight = x.new_zeros(b * m, 1).index_add_(0, idx, weight)
    norm_weight = weight / all_weight[idx]
    return x.new_zeros(b * m, c).index_add_(0, idx, x.reshape(b * n, c) * norm_weight).reshape(b, m, c)


def ref_multiscale(x: Tensor) -> list[list[tuple[Tensor, Tensor]]]:
    """Per sample (a Python loop), per stage: (assignment of the previous stage's tokens, centre indices)."""
    out = []
    for i in range(x.shape[0]):
        cur, stages = x[i : i + 1], []
        for m, k in zip(STAGES, KS):
            idx, centres = ref_cluster(cur, m, k)
            cur = ref_merge(cur, idx, centres.shape[1])
            stages.append((idx[0], centres[0]))
        out.append(stages)
    return out


def ref_video(tokens: Tensor) -> tuple[list[list[tuple[Tensor, Tensor]]], list[tuple[int, int]]]:
    """Events (the same contiguous segmentation), then per event (a Python loop) the pooled tokens' stages."""
    from vistok.tokenizers.merge import segment_events

    ev = segment_events(tokens.mean(1))
    spans = [tuple(int(v) for v in ev.bounds[0, e]) for e in range(int(ev.num_events[0]))]
    out = []
    for start, end in spans:
        out += ref_multiscale(tokens[start:end].reshape(1, -1, tokens.shape[-1]))
    return out, spans


# ----------------------------------------------------------------------------------------------- comparable clusters


def composed(stages: list[tuple[Tensor, Tensor]]) -> Tensor:
    """(S, N): the cluster (in that stage's score order) of every original token, stage by stage."""
    orig = torch.arange(stages[0][0].numel(), device=stages[0][0].device)
    rows = []
    for assign, _ in stages:
        orig = assign[orig]
        rows.append(orig)
    return torch.stack(rows)


def cluster_maps(impl: str, case: str, out) -> list[Tensor]:
    """Per image / per event, the (S, N) composed cluster maps of the implementation's output."""
    if impl == "reference":
        per_sample = out if case == "images" else out[0]
        return [composed(stages) for stages in per_sample]
    offsets = torch.tensor([0, *STAGES[:-1]]).cumsum(0)[:, None].to(out.tokens.device)
    if case == "images":
        a = out.assignments  # (B, S, N) slots in the concatenated output
        return [a[i] - offsets * (a[i] >= 0) for i in range(a.shape[0])]
    a, per = out.assignments[0], sum(STAGES)  # (S, T, N)
    maps = []
    for e in range(int(out.events.num_events[0])):
        start, end = (int(v) for v in out.events.bounds[0, e])
        local = a[:, start:end].reshape(len(STAGES), -1)
        maps.append(local - (e * per + offsets))
    return maps


COMPILE = False  # vistok's compile=True (set by --compile in the workers)


def run_impl(impl: str, case: str, x: Tensor):
    """The timed call: the implementation's whole pipeline on the case's input."""
    if impl == "reference":
        return ref_multiscale(x) if case == "images" else ref_video(x)
    from vistok.tokenizers.merge import multiscale_merge, video_events

    if case == "images":
        return multiscale_merge(x, stages=STAGES, ks=KS, compile=COMPILE)
    return video_events(x, stages=STAGES, ks=KS, compile=COMPILE)


# ----------------------------------------------------------------------------------------------- worker (subprocess)


def worker(args: argparse.Namespace) -> None:
    impl, case, device = args.worker, args.cases[0], torch.device(args.device)
    import vistok.tokenizers.merge as merge  # imported before the baseline

    if args.plan == "cuda":
        merge._plan_for = lambda device: merge.GPU_PLAN
    global COMPILE
    COMPILE = args.compile

    x = (make_images(args.seed) if case == "images" else make_video(args.seed)).to(device)
    tiny = x[:2, :40].contiguous() if case == "images" else x[:2, :20].contiguous()
    run_impl(impl, case, tiny)  # warm-up on a tiny problem: lazy initialization is not counted
    if COMPILE and impl == "vistok":
        t0 = time.perf_counter()
        run_impl(impl, case, x)  # compiles for the full-size shapes (not in the peak or the timings)
        print(f"  compiled {case} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    release_free_memory()  # a warm heap would otherwise hide the first call's peak in memory freed before it
    meter = PeakMemory(device)
    meter.reset()
    run_impl(impl, case, x)
    sync(device)
    peak = meter.peak_bytes()
    result = []
    cpu_times = []

    def call() -> None:
        t0 = time.process_time()
        result.append(run_impl(impl, case, x))
        sync(device)
        cpu_times.append(time.process_time() - t0)

    times = timed(call, args.repeats, device, warmup=0)
    record = {"impl": impl, "case": case, "peak_bytes": peak, "peak_exact": meter.exact, "times_s": times}
    record["cpu_times_s"] = cpu_times
    if args.profile:
        record["profile"] = profile_call(impl, case, x, device, args.profile)
    if args.count:
        record["count"] = count_call(impl, case, x)
    out = Path(args.worker_dir)
    (out / f"{impl}-{case}.json").write_text(json.dumps(record))
    maps = {
        "float32": [m.cpu() for m in cluster_maps(impl, case, result[-1])],
        "float64": [m.cpu() for m in cluster_maps(impl, case, run_impl(impl, case, x.double()))],
    }
    torch.save(maps, out / f"{impl}-{case}.pt")


def profile_call(impl: str, case: str, x: Tensor, device: torch.device, rows: int) -> str:
    """One more call under ``torch.profiler``: the ``rows`` ops with the most self time (device time on CUDA), how
    many ops ran, and on CUDA how many times the host waited for the device (synchronizing calls)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    syncs = 0
    if device.type == "cuda":
        torch.cuda.set_sync_debug_mode("warn")
    import warnings

    with warnings.catch_warnings(record=True) as caught, profile(activities=activities) as prof:
        warnings.simplefilter("always")
        run_impl(impl, case, x)
        sync(device)
    if device.type == "cuda":
        torch.cuda.set_sync_debug_mode("default")
        syncs = sum("synchroniz" in str(w.message) for w in caught)
    events = prof.key_averages()
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    head = f"{sum(e.count for e in events)} ops" + (f", {syncs} synchronizing calls" if device.type == "cuda" else "")
    return head + "\n" + events.table(sort_by=key, row_limit=rows)


def count_call(impl: str, case: str, x: Tensor) -> dict:
    """One more call with every aten op counted: ``ops``, those that run a kernel (views, allocations and value reads
    excluded) — what a GPU launches one by one, which bounds the time of both sides on a GPU at these sizes — and
    ``reads``, the values read back into Python (``int(t)``, ``.item()``, ``torch.equal``, copies to the host; a CPU
    copy to the CPU is invisible, so on a CPU ``.tolist()`` / ``.cpu()`` of a GPU tensor are not counted)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    aten = torch.ops.aten
    reads = {aten._local_scalar_dense.default, aten.is_nonzero.default, aten.equal.default}
    free = {"empty", "empty_strided", "empty_like", "detach", "lift_fresh", "alias", "set_"}

    class Count(TorchDispatchMode):
        ops = host = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            src = args[0] if args and isinstance(args[0], Tensor) else None
            to_host = isinstance(out, Tensor) and out.device.type == "cpu" and src is not None and src.is_cuda
            if func in reads or to_host:
                Count.host += 1
            elif not func.is_view and func.overloadpacket.__name__ not in free:
                Count.ops += 1
            return out

    with Count():
        run_impl(impl, case, x)
    return {"ops": Count.ops, "reads": Count.host}


def run_worker(impl: str, case: str, args: argparse.Namespace, work: Path) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", impl, "--worker-dir", str(work)]
    cmd += ["--cases", case, "--seed", str(args.seed), "--device", args.device, "--repeats", str(args.repeats)]
    cmd += ["--threads", str(args.threads)] if args.threads else []
    cmd += ["--profile", str(args.profile)] if args.profile else []
    cmd += ["--count"] if args.count else []
    cmd += ["--compile"] if args.compile else []
    cmd += ["--plan", args.plan]
    env = dict(os.environ)
    if args.heap == "warm":
        env.update(WARM_HEAP)
    load = load_average()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        return {"impl": impl, "case": case, "error": f"exit code {proc.returncode}: " + " | ".join(tail)}
    record = json.loads((work / f"{impl}-{case}.json").read_text())
    record["load_average_before"] = load
    record["clusters"] = torch.load(work / f"{impl}-{case}.pt")
    return record


# ----------------------------------------------------------------------------------------------- the run


def compare(a: list[Tensor], b: list[Tensor]) -> dict:
    """Are the per-stage cluster maps of every image / event identical? Counts of differing (token, stage) entries."""
    same = sum(bool(torch.equal(u, v)) for u, v in zip(a, b)) if len(a) == len(b) else 0
    diff = sum(int((u != v).sum()) for u, v in zip(a, b) if u.shape == v.shape)
    return {"identical": same == len(a) == len(b), "samples": len(a), "same": same, "diff": diff}


def fmt(value: float | None, spec: str) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def run(args: argparse.Namespace) -> list[dict]:
    device = torch.device(args.device)
    info = machine_info(device)
    print("machine: " + ", ".join(f"{k}={v}" for k, v in info.items()))
    print(
        f"setting: stages {STAGES}, k {KS}; images: 16 × 576 tokens × 1024; video: 64 frames × 256 tokens × 1024, "
        f"4 events; seed {args.seed}, device {device}, {args.threads or torch.get_num_threads()} torch threads, "
        f"median of {args.rounds} rounds × {args.repeats} calls, {args.heap} heap\n",
        flush=True,
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for case in args.cases:
            row: dict = {"case": case}
            for r in range(args.rounds):  # alternate the two, so that a change of load hits both
                for impl in IMPLS:
                    record = run_worker(impl, case, args, Path(tmp))
                    if "error" in record:
                        print(f"  {case} {impl}: FAILED ({record['error']})", flush=True)
                        row[impl] = record
                        continue
                    wall, cpu = median(record["times_s"]) * 1e3, median(record["cpu_times_s"]) * 1e3
                    mb, load = record["peak_bytes"] / 2**20, record["load_average_before"]
                    print(
                        f"  {case} {impl} (round {r + 1}): {wall:.0f} ms wall, {cpu:.0f} ms CPU, peak {mb:.0f} MiB "
                        f"(load average before: {load})",
                        flush=True,
                    )
                    if r == 0 and record.get("profile"):
                        print(f"\n  profile of one {case} call, {impl}: {record['profile']}", flush=True)
                    if r == 0 and record.get("count"):
                        n = record["count"]
                        print(
                            f"  {case} {impl}: {n['ops']} kernel ops, {n['reads']} values read by the host", flush=True
                        )
                        row.setdefault("counts", {})[impl] = n
                    merged = row.setdefault(impl, {"times_s": [], "cpu_times_s": [], "peak_bytes": []})
                    if "error" not in merged:
                        merged["times_s"] += record["times_s"]
                        merged["cpu_times_s"] += record["cpu_times_s"]
                        merged["peak_bytes"].append(record["peak_bytes"])
                        merged["clusters"] = record["clusters"]
            if all("clusters" in row.get(i, {}) for i in IMPLS):
                for precision in ("float32", "float64"):
                    row[precision] = compare(
                        row["vistok"]["clusters"][precision], row["reference"]["clusters"][precision]
                    )
            for impl in IMPLS:
                row.get(impl, {}).pop("clusters", None)
            rows.append(row)
    print_table(rows)
    print("\nload average at the end: " + ", ".join(f"{v:.2f}" for v in load_average() or ()))
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": info, "args": vars(args), "rows": rows}, indent=2))
    return rows


def print_table(rows: list[dict]) -> None:
    def get(row: dict, impl: str, key: str) -> float | None:
        r = row.get(impl)
        if not r or "error" in r or not r.get("times_s"):
            return None
        if key == "MB":
            return median(r["peak_bytes"]) / 2**20
        return median(r[key]) * 1e3

    def ratio(a: float | None, b: float | None) -> str:
        return fmt(a / b if a is not None and b else None, ".2f")

    def ident(row: dict, precision: str) -> str:
        c = row.get(precision)
        if c is None:
            return "—"
        if c["identical"]:
            return f"yes ({c['samples']}/{c['samples']})"
        return f"no: {c['same']}/{c['samples']} identical, {c['diff']} tokens differ"

    print(
        "\n| case | vistok ms (wall / CPU) | reference ms (wall / CPU) | speed-up × (wall / CPU) | vistok peak MiB "
        "| reference peak MiB | memory × | clusters identical (float32) | clusters identical (float64) |\n|"
        + "---|"
        * 9
    )
    for row in rows:
        vw, vc, rw, rc = (get(row, i, k) for i in IMPLS for k in ("times_s", "cpu_times_s"))
        v_mb, r_mb = get(row, "vistok", "MB"), get(row, "reference", "MB")
        print(
            f"| {row['case']} | {fmt(vw, '.0f')} / {fmt(vc, '.0f')} | {fmt(rw, '.0f')} / {fmt(rc, '.0f')} "
            f"| {ratio(rw, vw)} / {ratio(rc, vc)} | {fmt(v_mb, '.0f')} | {fmt(r_mb, '.0f')} | {ratio(r_mb, v_mb)} "
            f"| {ident(row, 'float32')} | {ident(row, 'float64')} |"
        )
    counted = [row for row in rows if len(row.get("counts", {})) == 2]
    if counted:
        print(
            "\n| case | vistok kernel ops | reference kernel ops | reference / vistok | vistok host reads "
            "| reference host reads |\n|" + "---|" * 6
        )
        for row in counted:
            v, r = row["counts"]["vistok"], row["counts"]["reference"]
            print(
                f"| {row['case']} | {v['ops']} | {r['ops']} | {r['ops'] / v['ops']:.2f} | {v['reads']} | {r['reads']} |"
            )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    p.add_argument("--repeats", type=int, default=5, help="timed calls after the first, per worker")
    p.add_argument("--rounds", type=int, default=2, help="workers per implementation, alternating (median of all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--json", default=None, help="write the results to this JSON file")
    p.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="ROWS",
        help="after timing, profile one more call per side (first round) and print its ROWS costliest ops",
    )
    p.add_argument(
        "--heap",
        choices=("warm", "default"),
        default="warm",
        help="warm (default): workers keep freed memory (glibc MALLOC_MMAP_MAX_=0, MALLOC_TRIM_THRESHOLD_), so no call "
        "pays page faults for fresh mappings; default: the allocator's own behaviour",
    )
    p.add_argument(
        "--count",
        action="store_true",
        help="count each side's kernel-launching ops and host reads of device values in one more call",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="vistok with compile=True (one torch.compile graph; CUDA graphs on a GPU). Compiling happens in the "
        "untimed first call at full size; the tiny warm-up call compiles its own shape",
    )
    p.add_argument(
        "--plan",
        choices=("auto", "cuda"),
        default="auto",
        help="vistok's execution plan: auto = the device's own; cuda = the GPU plan on any device (with --count on a "
        "CPU: the ops a GPU would launch; its CPU timings mean nothing)",
    )
    p.add_argument("--worker", choices=IMPLS, default=None, help=argparse.SUPPRESS)
    p.add_argument("--worker-dir", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker:
        worker(args)
    else:
        run(args)


if __name__ == "__main__":
    main()
