"""LFQ side by side: vistok ``LFQ`` against vector-quantize-pytorch's ``LFQ`` on the same seeded latents — forward +
backward time, peak memory, and both libraries' entropies next to the exact values computed in float64.

Default = the issue's setting: 2,048 tokens, latents ``(1, K, 2048)`` float32 ~ N(0, ``--latent-std``²) (seeded, the
same tensor for both), K = 10, 14, 16, 18 bits (codebooks of 2^10 … 2^18 codes).

    python benchmarks/bench_lfq.py                            # K = 10 14 16 18, 2,048 tokens
    python benchmarks/bench_lfq.py --bits 10 14 --repeats 3   # quick
    python benchmarks/bench_lfq.py --skip-peer --bits 18 20   # vistok alone (exact values at 2^20: ~2 min)
    python benchmarks/bench_lfq.py --device cuda --json lfq.json
    python benchmarks/bench_lfq.py --threads 1                # on a CPU shared with other jobs (see below)

Measured per (library, K), each in a fresh subprocess (so one library's allocations cannot hide in the other's):
- a step = forward in training mode, then ``(loss + quantized.sum()).backward()``, where ``loss`` is the library's own
  weighted loss = 1 · (per-sample entropy − 1 · codebook entropy) + 0 · commitment;
- peak memory = peak of the first step (also the warm-up) above the baseline taken just before the quantizer is built
  (after imports, input creation and one step of the same library on a tiny problem — 2 bits, 16 tokens — so lazy
  initialization and code pages are not counted; the quantizer's buffers count, e.g. the peer's 2^K × K codebook).
  CPU: resident-set high-water mark (reset via /proc/self/clear_refs); CUDA: max_memory_allocated;
- time = median wall-clock time of ``--repeats`` (peer: ``--peer-repeats``) steps after that warm-up. For the peer at
  K ≥ ``--peer-single-from`` (default 18; one step takes ~1 min and ~15 GB on a small CPU machine) there is no
  warm-up and one step: the step measured for memory is also the one timed. On a CPU shared with other jobs, small
  multi-threaded kernels stall whenever one of their threads is descheduled (a step of a few ms can take 100+ ms);
  ``--threads 1`` gives stable times there.

Settings — both compute the full entropies over all 2^K codes of q(c|x) = softmax_c(2τ⟨x, c⟩), c ∈ {±1}^K:
- vistok: ``LFQ(K, bit_order="msb", commitment_weight=0, entropy_weight=1, entropy_anneal_factor=1 (no annealing),
  diversity_gamma=1, inv_temperature=τ)``, the rest default (scale 1, not spherical, exact codebook entropy for
  K ≤ 20, float32 entropies, usage statistics on);
- vector-quantize-pytorch: ``LFQ(dim=K, codebook_size=2^K, channel_first=True, entropy_loss_weight=1,
  commitment_loss_weight=0, diversity_gamma=1, frac_per_sample_entropy=1 (every token), spherical=False,
  codebook_scale=1, force_quantization_f32=True)`` (no projections), called as ``forward(z, inv_temperature=τ,
  return_loss_breakdown=True)``. It materializes N × 2^K distances and probabilities, and its entropies use
  log(p.clamp(min=1e-5)).
τ = ``--inv-temperature`` (default 100, the peer's default; vistok's ``inv_temperature`` is the same τ).

Exact values: both entropies in float64 by brute force over all 2^K codes in chunks (a pass for the log-partition
function, a pass for the entropies), from the softmax definition itself, not from the per-bit factorization; the closed
form per-sample H = mean_n Σ_k h(σ(4τ x_nk)) cross-checks it. Indices: vistok's (MSB order) against the peer's and
against sign bits computed here. Gradients w.r.t. the latents: vistok's against the peer's (max |Δ| / max |g_peer|)
and, for K ≤ ``--exact-grad-max-bits`` (default 14; ~2 GB), both against the float64 gradient of the brute-force
loss (max |Δ| / max |exact entropy gradient|).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from _util import PeakMemory, available_memory_bytes, load_average, machine_info, median, sync, timed
from torch import Tensor

LIBS = ("vistok", "peer")
PEER = "vector-quantize-pytorch"

# ----------------------------------------------------------------------------------------------- inputs, exact values


def make_latents(bits: int, tokens: int, std: float, seed: int) -> Tensor:
    """The shared input: seeded ``(1, K, tokens)`` float32 latents ~ N(0, std²), on the CPU."""
    g = torch.Generator().manual_seed(seed + bits)
    return torch.randn(1, bits, tokens, generator=g) * std


def exact_entropies(x: Tensor, tau: float, chunk_bytes: int = 2**27) -> tuple[float, float]:
    """(mean per-sample entropy, codebook entropy) in nats, float64, by brute force over all 2^K codes.

    q(c|x_n) = softmax_c(2τ⟨x_n, c⟩) for c ∈ {±1}^K, Q̄ = mean_n q(·|x_n); the codes are enumerated in chunks of
    ``chunk_bytes`` / (8 N) so that no N × 2^K tensor is held."""
    x = x.double()
    n, k = x.shape
    size = 2**k
    chunk = max(1, min(size, chunk_bytes // (8 * n)))
    weights = torch.ones((), dtype=torch.long).bitwise_left_shift(torch.arange(k - 1, -1, -1))

    def logits(start: int) -> Tensor:  # (N, C): 2τ⟨x_n, c⟩ for the codes start … start + C − 1
        ids = torch.arange(start, min(start + chunk, size))
        codes = (ids[:, None].bitwise_and(weights) != 0).double() * 2 - 1
        return (2 * tau) * (x @ codes.T)

    log_z = torch.full((n,), -math.inf, dtype=torch.float64)
    for start in range(0, size, chunk):
        log_z = torch.logaddexp(log_z, logits(start).logsumexp(1))
    per_sample = torch.zeros(n, dtype=torch.float64)
    codebook = torch.zeros((), dtype=torch.float64)
    for start in range(0, size, chunk):
        log_q = logits(start) - log_z[:, None]
        q = log_q.exp()
        per_sample -= (q * log_q).sum(1)
        q_bar = q.mean(0)
        codebook -= (q_bar * torch.where(q_bar > 0, q_bar, torch.ones_like(q_bar)).log()).sum()
    return float(per_sample.mean()), float(codebook)


def closed_form_per_sample(x: Tensor, tau: float) -> float:
    """mean_n Σ_k h(σ(4τ x_nk)) in float64: the per-sample entropy from the per-bit factorization."""
    u = 4 * tau * x.double()
    h = -(torch.sigmoid(u) * torch.nn.functional.logsigmoid(u) + torch.sigmoid(-u) * torch.nn.functional.logsigmoid(-u))
    return float(h.sum(1).mean())


def exact_entropy_gradient(x: Tensor, tau: float) -> Tensor:
    """d(per-sample H − codebook H)/dx in float64 by autograd through the brute force (all N × 2^K at once, so for
    small K only: ~8 · 8 N 2^K bytes), as ``(N, K)``."""
    x = x.double().detach().requires_grad_(True)
    k = x.shape[1]
    codes = (torch.arange(2**k)[:, None].bitwise_right_shift(torch.arange(k - 1, -1, -1)).bitwise_and(1)) * 2.0 - 1
    log_q = ((2 * tau) * (x @ codes.double().T)).log_softmax(1)
    q = log_q.exp()
    q_bar = q.mean(0)
    codebook = -(q_bar * torch.where(q_bar > 0, q_bar, torch.ones_like(q_bar)).log()).sum()
    (-(q * log_q).sum(1).mean() - codebook).backward()
    return x.grad


# ----------------------------------------------------------------------------------------------- worker (subprocess)


def build(lib: str, bits: int, tau: float) -> torch.nn.Module:
    if lib == "vistok":
        from vistok.quantizers.lfq import LFQ

        return LFQ(
            bits,
            bit_order="msb",
            commitment_weight=0.0,
            entropy_weight=1.0,
            entropy_anneal_factor=1.0,
            diversity_gamma=1.0,
            inv_temperature=tau,
        )
    from vector_quantize_pytorch import LFQ as PeerLFQ

    return PeerLFQ(
        dim=bits,
        codebook_size=2**bits,
        channel_first=True,
        entropy_loss_weight=1.0,
        commitment_loss_weight=0.0,
        diversity_gamma=1.0,
        frac_per_sample_entropy=1.0,
        spherical=False,
        codebook_scale=1.0,
        force_quantization_f32=True,
    )


def forward(lib: str, q: torch.nn.Module, z: Tensor, tau: float) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(quantized, indices, loss, per-sample entropy, codebook entropy) of one training-mode forward."""
    if lib == "vistok":
        out = q(z)
        return out.quantized, out.indices, out.loss, out.metrics["per_sample_entropy"], out.metrics["codebook_entropy"]
    (quantized, indices, loss), parts = q(z, inv_temperature=tau, return_loss_breakdown=True)
    return quantized, indices, loss, parts.per_sample_entropy, parts.batch_entropy


def worker(args: argparse.Namespace) -> None:
    """One (library, K) in this process: peak memory of the first step, then the timed steps; results to files."""
    lib, bits, device = args.worker, args.bits[0], torch.device(args.device)
    if lib == "vistok":
        import vistok.quantizers.lfq  # noqa: F401  (imports before the baseline)
    else:
        import vector_quantize_pytorch  # noqa: F401
    z = make_latents(bits, args.tokens, args.latent_std, args.seed).to(device).requires_grad_(True)
    # Before the baseline, one step of the same library on a tiny problem (2 bits, 16 tokens): lazy initialization,
    # thread pools and the code pages of the kernels are then not counted as the benchmark's memory.
    tiny = make_latents(2, 16, args.latent_std, args.seed).to(device).requires_grad_(True)
    quantized, _, loss, _, _ = forward(
        lib, build(lib, 2, args.inv_temperature).to(device).train(), tiny, args.inv_temperature
    )
    (loss + quantized.sum()).backward()
    del tiny, quantized, loss
    single = lib == "peer" and bits >= args.peer_single_from
    repeats = 1 if single else (args.repeats if lib == "vistok" else args.peer_repeats)

    meter = PeakMemory(device)
    meter.reset()
    q = build(lib, bits, args.inv_temperature).to(device).train()
    result: dict[str, Tensor] = {}

    def step() -> None:
        z.grad = None
        quantized, indices, loss, sample, codebook = forward(lib, q, z, args.inv_temperature)
        (loss + quantized.sum()).backward()
        result.update(indices=indices, loss=loss, sample=sample, codebook=codebook)

    t0 = time.perf_counter()
    step()
    sync(device)
    first = time.perf_counter() - t0
    peak = meter.peak_bytes()
    times = [first] if single else timed(step, repeats, device, warmup=0)

    out = Path(args.worker_dir)
    record = {
        "lib": lib,
        "bits": bits,
        "peak_bytes": peak,
        "peak_exact": meter.exact,
        "times_s": times,
        "first_step_s": first,
        "warmup": not single,
        "per_sample_entropy": float(result["sample"]),
        "codebook_entropy": float(result["codebook"]),
        "loss": float(result["loss"]),
        "torch_threads": torch.get_num_threads(),
    }
    (out / f"{lib}-{bits}.json").write_text(json.dumps(record))
    torch.save({"indices": result["indices"].cpu(), "grad": z.grad.cpu()}, out / f"{lib}-{bits}.pt")


def run_worker(lib: str, bits: int, args: argparse.Namespace, work: Path) -> dict:
    """Run one (library, K) in a fresh Python process; its record (or its error) and its tensors."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", lib, "--worker-dir", str(work)]
    cmd += ["--bits", str(bits), "--tokens", str(args.tokens), "--seed", str(args.seed), "--device", args.device]
    cmd += ["--repeats", str(args.repeats), "--peer-repeats", str(args.peer_repeats)]
    cmd += ["--peer-single-from", str(args.peer_single_from), "--inv-temperature", repr(args.inv_temperature)]
    cmd += ["--latent-std", repr(args.latent_std)] + (["--threads", str(args.threads)] if args.threads else [])
    load = load_average()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        return {"lib": lib, "bits": bits, "error": f"exit code {proc.returncode}: " + " | ".join(tail)}
    record = json.loads((work / f"{lib}-{bits}.json").read_text())
    record["load_average_before"] = load
    record["tensors"] = torch.load(work / f"{lib}-{bits}.pt")
    return record


# ----------------------------------------------------------------------------------------------- the run


def fmt(value: float | None, spec: str) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def run(args: argparse.Namespace) -> list[dict]:
    device = torch.device(args.device)
    info = machine_info(device)
    peer = not args.skip_peer and importlib.util.find_spec("vector_quantize_pytorch") is not None
    info["vector_quantize_pytorch"] = importlib.metadata.version(PEER) if peer else None
    print("machine: " + ", ".join(f"{k}={v}" for k, v in info.items()))
    print(
        f"setting: {args.tokens} tokens, latents ~ N(0, {args.latent_std}²), τ = {args.inv_temperature}, seed "
        f"{args.seed}, device {device}, {torch.get_num_threads()} torch threads; repeats: vistok {args.repeats}, "
        f"peer {args.peer_repeats} (one step without warm-up for K ≥ {args.peer_single_from})\n",
        flush=True,
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for bits in args.bits:
            z = make_latents(bits, args.tokens, args.latent_std, args.seed)
            x = z[0].T  # tokens (N, K)
            t0 = time.perf_counter()
            exact_sample, exact_codebook = exact_entropies(x, args.inv_temperature)
            closed = closed_form_per_sample(x, args.inv_temperature)
            ref_indices = ((x > 0).long() * (2 ** torch.arange(bits - 1, -1, -1))).sum(1)
            grad = exact_entropy_gradient(x, args.inv_temperature) if bits <= args.exact_grad_max_bits else None
            print(f"K={bits}: exact values in {time.perf_counter() - t0:.1f} s", flush=True)
            row = {
                "bits": bits,
                "codebook_size": 2**bits,
                "exact": {"per_sample_entropy": exact_sample, "codebook_entropy": exact_codebook},
                "closed_form_per_sample_entropy": closed,
            }
            for lib in LIBS if peer else LIBS[:1]:
                needed = 8 * 4 * args.tokens * 2**bits  # the peer holds ~7-8 N × 2^K float32 tensors at its peak
                free = available_memory_bytes()
                if lib == "peer" and device.type == "cpu" and free is not None and free < needed:
                    print(f"  warning: {free / 2**30:.1f} GiB available, the peer may need ~{needed / 2**30:.1f} GiB")
                record = run_worker(lib, bits, args, Path(tmp))
                if "error" in record:
                    print(f"  {lib}: FAILED ({record['error']})", flush=True)
                else:
                    ms, mb, load = (
                        median(record["times_s"]) * 1e3,
                        record["peak_bytes"] / 2**20,
                        record["load_average_before"],
                    )
                    load = "?" if load is None else ", ".join(f"{v:.2f}" for v in load)
                    print(f"  {lib}: {ms:.1f} ms, peak {mb:.1f} MiB (load average before: {load})", flush=True)
                row[lib] = record
            compare(row, ref_indices, grad)
            rows.append(row)
    info["load_average_end"] = load_average()
    print_tables(rows)
    print("\nload average at the end: " + ", ".join(f"{v:.2f}" for v in info["load_average_end"] or ()))
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": info, "args": vars(args), "rows": rows}, indent=2))
    return rows


def compare(row: dict, ref_indices: Tensor, exact_grad: Tensor | None) -> None:
    """Index and gradient agreement; drops the tensors from the row. A library's gradient w.r.t. the latents is that
    of its entropy loss plus 1 (from quantized.sum(), straight through), compared with the exact one + 1."""
    ours, peer = row.get("vistok", {}), row.get("peer", {})
    t_ours, t_peer = ours.pop("tensors", None), peer.pop("tensors", None)
    for lib, tensors in (("vistok", t_ours), ("peer", t_peer)):
        if tensors is not None and exact_grad is not None:
            diff = tensors["grad"][0].T.double() - (exact_grad + 1)
            row[lib]["grad_rel_err"] = float(diff.abs().max() / exact_grad.abs().max())
    if t_ours is not None:
        row["vistok_indices_equal_sign_bits"] = bool(torch.equal(t_ours["indices"].reshape(-1), ref_indices))
    if t_ours is not None and t_peer is not None:
        row["indices_equal"] = bool(torch.equal(t_ours["indices"], t_peer["indices"].to(t_ours["indices"].dtype)))
        g_ours, g_peer = t_ours["grad"].double(), t_peer["grad"].double()
        row["grad_rel_diff"] = float((g_ours - g_peer).abs().max() / g_peer.abs().max())


def print_tables(rows: list[dict]) -> None:
    def get(row: dict, lib: str, key: str) -> float | None:
        record = row.get(lib)
        if not record or "error" in record:
            return None
        if key == "ms":
            return median(record["times_s"]) * 1e3
        return record["peak_bytes"] / 2**20 if key == "MB" else record.get(key)

    def ratio(a: float | None, b: float | None) -> float | None:
        return a / b if a is not None and b is not None and b > 0 else None

    header = (
        "| K | codes | vistok ms | peer ms | speed-up × | vistok peak MiB | peer peak MiB | memory × "
        "| per-sample H (vistok / peer / exact) | codebook H (vistok / peer / exact) | indices equal |"
    )
    print("\n" + header + "\n|" + "---|" * 11)
    for row in rows:
        v_ms, p_ms, v_mb, p_mb = (get(row, lib, key) for key in ("ms", "MB") for lib in LIBS)
        h = {
            key: " / ".join(
                [fmt(get(row, "vistok", key), ".6f"), fmt(get(row, "peer", key), ".6f"), f"{row['exact'][key]:.6f}"]
            )
            for key in ("per_sample_entropy", "codebook_entropy")
        }
        equal = {None: "—", True: "yes", False: "no"}[row.get("indices_equal")]
        cells = [str(row["bits"]), f"{row['codebook_size']:,}", fmt(v_ms, ".2f"), fmt(p_ms, ".1f")]
        cells += [fmt(ratio(p_ms, v_ms), ".0f"), fmt(v_mb, ".1f"), fmt(p_mb, ".1f"), fmt(ratio(p_mb, v_mb), ".0f")]
        cells += [h["per_sample_entropy"], h["codebook_entropy"], equal]
        print("| " + " | ".join(cells) + " |")

    print(
        "\n| K | per-sample H abs err: vistok | peer | codebook H abs err: vistok | peer | loss: vistok | peer "
        "| grad vs exact: vistok | peer | grad vistok vs peer | exact per-sample H: brute force − closed form |\n|"
        + "---|"
        * 11
    )
    for row in rows:
        errs = []
        for key in ("per_sample_entropy", "codebook_entropy"):
            for lib in LIBS:
                value = get(row, lib, key)
                errs.append(fmt(None if value is None else abs(value - row["exact"][key]), ".2e"))
        check = row["exact"]["per_sample_entropy"] - row["closed_form_per_sample_entropy"]
        print(
            f"| {row['bits']} | {' | '.join(errs)} | {fmt(get(row, 'vistok', 'loss'), '.6f')} "
            f"| {fmt(get(row, 'peer', 'loss'), '.6f')} | {fmt(get(row, 'vistok', 'grad_rel_err'), '.2e')} "
            f"| {fmt(get(row, 'peer', 'grad_rel_err'), '.2e')} | {fmt(row.get('grad_rel_diff'), '.2e')} | {check:.1e} |"
        )
    notes = [
        f"K={r['bits']}: vistok indices ≠ sign bits" for r in rows if r.get("vistok_indices_equal_sign_bits") is False
    ]
    notes += [
        f"K={r['bits']} {lib}: peak RSS not exact (high-water mark not resettable)"
        for r in rows
        for lib in LIBS
        if r.get(lib, {}).get("peak_exact") is False
    ]
    notes += [f"K={r['bits']} peer: one step, no warm-up" for r in rows if r.get("peer", {}).get("warmup") is False]
    notes += [f"K={r['bits']} {lib}: {r[lib]['error']}" for r in rows for lib in LIBS if "error" in r.get(lib, {})]
    for note in notes:
        print("note: " + note)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bits", type=int, nargs="+", default=[10, 14, 16, 18], help="K: codebooks of 2^K codes")
    p.add_argument("--tokens", type=int, default=2048, help="tokens per batch (latents (1, K, tokens))")
    p.add_argument("--repeats", type=int, default=10, help="timed vistok steps after one warm-up (median)")
    p.add_argument("--peer-repeats", type=int, default=3, help="timed peer steps after one warm-up (median)")
    p.add_argument(
        "--peer-single-from", type=int, default=18, help="for K ≥ this the peer runs one step: no warm-up, one timing"
    )
    p.add_argument("--skip-peer", action="store_true", help="vistok alone (also when the peer is not installed)")
    p.add_argument("--inv-temperature", type=float, default=100.0, help="τ for both (the peer's default: 100)")
    p.add_argument("--latent-std", type=float, default=1.0, help="standard deviation of the random latents")
    p.add_argument(
        "--exact-grad-max-bits", type=int, default=14, help="exact float64 gradient check for K ≤ this (memory ∝ 2^K)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--json", default=None, help="write the results to this JSON file")
    p.add_argument("--worker", choices=LIBS, default=None, help=argparse.SUPPRESS)
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
