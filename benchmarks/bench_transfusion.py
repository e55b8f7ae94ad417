"""Transfusion training-step throughput, peak step memory and decoding time per image: vistok against lucidrains'
``transfusion-pytorch`` (the peer) at the same model size and sequence layout.

The peer is not a vistok dependency. Install it into the same environment without letting pip touch torch::

    pip install transfusion-pytorch --no-deps
    pip install --no-deps axial-positional-embedding beartype ema-pytorch jaxtyping rotary-embedding-torch \\
        torchdiffeq wadler-lindig einx loguru torch-einops-utils tqdm   # its pure-python deps (einops, scipy,
                                                                        # numpy, sympy, frozendict: install if absent)

**Same on both sides**: width ``--dim``, depth ``--layers``, heads ``--heads`` (head size dim/heads), the FFN hidden
size (vistok's SwiGLU size from ``multiple_of`` 16; the peer's GEGLU size set to the same number through its
``ff_expansion_factor``), 1-D rotary positions, fp32, the thread count, AdamW (lr 1e-4) with
``zero_grad(set_to_none=True)``, the rectified-flow objective (vistok ``objective="flow"``; the peer only has flow),
a linear patch encoder / decoder, and the batch: ``--batch`` rows of ``text prefix (--text ids) · one image latent
(C × h × w, k × k patches → n = hw/k² patch vectors of C·k² values) · text suffix (--suffix ids)``. The same random
text ids and latents go to both (the peer receives the latent already patchified as (h/k, w/k, C·k²), which is what
vistok's linear patch encoder sees). One step = forward + loss + backward + optimizer step; vistok's step includes
:func:`build_batch` (the peer assembles its sequence inside ``forward``).

**Different, because the peer does not allow otherwise** (printed with the results): the peer conditions every
attention and FFN sub-layer on the per-token flow time with adaptive LayerNorm (FiLM + ada-LN-zero projections of a
4·dim time embedding, computed on every token), mixes the layer outputs with an "attention residual" over all earlier
hidden states, soft-caps attention logits (tanh at 50) and computes attention as explicit einsums with a dense mask on
CPU; it adds biases to its FFN, and it wraps each image as ``[meta] "h,w" [som] … [eom]`` (a few more positions than
vistok's ``BOI … EOI``). Where the peer has switches they are set to vistok's design: ``gate_values=False``,
``qk_rmsnorm=False``, ``prob_uncond=0`` (no random caption dropout), no EMA velocity consistency loss
(``unet_skips=False`` would be closer but fails in the peer's forward: its skip stack is filled and never emptied, so
the peer keeps its U-Net skips, a 2·dim → dim projection in each layer of the second half). vistok adds the timestep
embedding to the patch vectors only. Parameter counts are printed.

**Measures**:

- *step*: median wall-clock (and process CPU) seconds of a training step over ``--repeats`` steps after ``--warmup``
  steps; both models live in one fresh process and their steps alternate (vistok, peer, vistok, …), so a change of
  load on a shared machine hits both alike. tokens/s = batch × (that side's own sequence length) / step; samples/s =
  batch / step. *GFLOP per step*: ``torch.utils.flop_counter`` over one step (SDPA forced to its math backend for the
  count, so vistok's attention matmuls are counted too; on CUDA FlexAttention may go uncounted on both sides), each side
  in a fresh process; achieved GFLOP/s = that / the median step.
- *peak memory*: on CPU the peak resident-set size above the pre-step baseline during one step after warm-up
  (:class:`_util.PeakMemory`: VmHWM reset through /proc/self/clear_refs), in a separate fresh process whose glibc malloc
  hands every block ≥ 64 KiB to mmap and trims on free (``MALLOC_MMAP_THRESHOLD_=65536``, ``MALLOC_TRIM_THRESHOLD_=0``),
  so freed activations really leave the RSS and one step's peak cannot hide in memory cached by an earlier step. It
  counts activations, gradients and temporaries (the AdamW state already exists after warm-up). On CUDA:
  ``torch.cuda.max_memory_allocated`` above the allocated baseline.
- *decode*: seconds to generate one image after a text prefix of ``--text`` ids, with ``--steps`` network evaluations
  on both sides, batch 1, no guidance: vistok :func:`vistok.generate.transfusion.generate` (prompt ending with BOI,
  Euler steps of the flow (``sampler="ddim"``), KV cache, then its EOI step and one text token); the peer
  ``sample_one`` (prompt ending with ``[meta] "h,w" [som]``, ``cache_kv=True``, ``odeint`` with ``method="euler"`` over
  ``steps + 1`` times, i.e. ``steps`` evaluations, ``max_length`` so that it stops after the image). Median over
  ``--decode-repeats`` after one warm-up, alternating sides like the steps.

On a CPU shared with other jobs use ``--threads 1`` (default). Examples::

    OMP_NUM_THREADS=1 python benchmarks/bench_transfusion.py
    OMP_NUM_THREADS=1 python benchmarks/bench_transfusion.py --dim 512 --layers 8 --heads 8 --batch 8
    python benchmarks/bench_transfusion.py --device cuda --threads 8 --dim 1024 --layers 16 --heads 16 --batch 16
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import torch
from _util import PeakMemory, machine_info, median, sync

TEXT_VOCAB = 256  # random caption ids below 256: bytes for vistok, plain text ids for the peer

# ---------------------------------------------------------------------------------------------------------------------
# Shared data
# ---------------------------------------------------------------------------------------------------------------------


def make_data(args: argparse.Namespace) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
    """(prefix ids, latents (C, h, w), suffix ids) per row, the same for both sides."""
    g = torch.Generator().manual_seed(0)
    pre = [torch.randint(TEXT_VOCAB, (args.text,), generator=g) for _ in range(args.batch)]
    lat = [torch.randn(args.channels, args.latent, args.latent, generator=g) for _ in range(args.batch)]
    suf = [torch.randint(TEXT_VOCAB, (args.suffix,), generator=g) for _ in range(args.batch)]
    return pre, lat, suf


def patchified(z: torch.Tensor, k: int) -> torch.Tensor:
    """(C, h, w) → (h/k, w/k, C·k·k), the same patch vectors (same order and layout) as vistok's ``patchify``."""
    from vistok.models.transfusion import patchify

    c, h, w = z.shape
    return patchify(z[None], k)[0].reshape(h // k, w // k, c * k * k)


def ffn_hidden(dim: int) -> int:
    from vistok.layers.mlp import swiglu_hidden_dim

    return swiglu_hidden_dim(dim, 16)


# ---------------------------------------------------------------------------------------------------------------------
# The two sides
# ---------------------------------------------------------------------------------------------------------------------


class VistokSide:
    name = "vistok"

    def __init__(self, args: argparse.Namespace, device: torch.device) -> None:
        from vistok.models.transfusion import Transfusion, TransfusionConfig

        n = (args.latent // args.patch) ** 2
        torch.manual_seed(0)
        cfg = TransfusionConfig(
            vocab_size=272,
            latent_channels=args.channels,
            patch_size=args.patch,
            patch_encoder="linear",
            objective="flow",
            dim=args.dim,
            n_layers=args.layers,
            n_heads=args.heads,
            multiple_of=16,
            max_seq_len=max(512, args.text + args.suffix + n + 8),
        )
        self.model = Transfusion(cfg).to(device)
        self.device, self.args = device, args
        pre, lat, suf = make_data(args)
        from vistok.tokenizers.text import BOS, EOS

        self.docs = [
            [[BOS, *p.tolist()], z.to(device), [*s.tolist(), EOS]] for p, z, s in zip(pre, lat, suf, strict=True)
        ]
        self.prompt = [[BOS, *pre[0].tolist()]]
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-4)

    def seq_len(self) -> int:
        from vistok.models.transfusion import build_batch

        return build_batch(self.docs[:1], self.args.patch).ids.shape[1]

    def step(self) -> float:
        from vistok.models.transfusion import build_batch

        self.model.train()
        batch = build_batch(self.docs, self.args.patch).to(self.device)
        loss = self.model.loss(batch)["loss"]
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    def decode(self) -> None:
        from vistok.generate.transfusion import generate
        from vistok.tokenizers.text import BOI

        size = (self.args.latent, self.args.latent)
        prompt = [[[*self.prompt[0], BOI]]]  # one document of one text segment
        out = generate(self.model, prompt, max_new_tokens=0, image_size=size, steps=self.args.steps, sampler="ddim")
        assert len(out.images[0]) == 1, "vistok decoded no image"


class PeerSide:
    name = "peer"

    def __init__(self, args: argparse.Namespace, device: torch.device) -> None:
        from loguru import logger

        logger.remove()  # the peer logs every sampling call
        from transfusion_pytorch import Transfusion

        k, n_side = args.patch, args.latent // args.patch
        hidden = ffn_hidden(args.dim)
        # the peer's GEGLU size is int(dim · f · 2/3): pick f so that it equals vistok's SwiGLU size
        f = hidden * 3 / (2 * args.dim)
        while int(args.dim * f * 2 / 3) < hidden:
            f += 1e-9
        torch.manual_seed(0)
        self.model = Transfusion(
            num_text_tokens=TEXT_VOCAB,
            dim_latent=args.channels * k * k,
            modality_default_shape=(n_side, n_side),
            transformer=dict(
                dim=args.dim,
                depth=args.layers,
                heads=args.heads,
                dim_head=args.dim // args.heads,
                ff_expansion_factor=f,
                qk_rmsnorm=False,
                attn_kwargs=dict(gate_values=False),
                use_flex_attn=device.type == "cuda",
            ),
            prob_uncond=0.0,
            odeint_kwargs=dict(method="euler"),
        ).to(device)
        ff = self.model.transformer.layers[0][2].fn.net[0]
        assert ff.out_features == 2 * hidden, (ff.out_features, hidden)
        self.device, self.args, self.n = device, args, n_side * n_side
        pre, lat, suf = make_data(args)
        self.items = [
            [p.to(device), (0, patchified(z, k).to(device)), s.to(device)]
            for p, z, s in zip(pre, lat, suf, strict=True)
        ]
        m = self.model
        shape = m.char_tokenizer(f"{n_side},{n_side}", device=device)
        self.prompt = torch.cat(
            [
                pre[0].to(device),
                torch.tensor([m.meta_id], device=device),
                shape,
                torch.tensor([m.som_ids[0]], device=device),
            ]
        )
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-4)

    def seq_len(self) -> int:
        seen = []
        h = self.model.transformer.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].shape[1]))
        with torch.no_grad():
            self.model(self.items[:1])
        h.remove()
        return seen[0]

    def step(self) -> float:
        self.model.train()
        loss = self.model(self.items)
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    def decode(self) -> None:
        out = self.model.sample_one(
            self.prompt,
            max_length=self.n - 1,  # its counter does not include the prompt: it stops right after the image
            cache_kv=True,
            fixed_modality_shape=(self.args.latent // self.args.patch,) * 2,
            modality_steps=self.args.steps + 1,
            cfg_scale=1.0,
        )
        assert sum(not torch.is_tensor(x) for x in out) >= 1, "the peer decoded no image"


# ---------------------------------------------------------------------------------------------------------------------
# Worker (one side, one fresh process)
# ---------------------------------------------------------------------------------------------------------------------


def _clock(device: torch.device, fn) -> tuple[float, float]:
    """(wall, process CPU) seconds of one call of ``fn``."""
    sync(device)
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    sync(device)
    return time.perf_counter() - w0, time.process_time() - c0


def time_both(args: argparse.Namespace) -> dict:
    """Both sides in one process, steps (then decodes) interleaved v, p, v, p, … so that a change of load on a shared
    machine hits both alike."""
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sides = [VistokSide(args, device), PeerSide(args, device)]
    res = {s.name: {"params": sum(p.numel() for p in s.model.parameters()), "seq_len": s.seq_len()} for s in sides}
    for _ in range(args.warmup):
        for s in sides:
            s.step()
    for s in sides:
        res[s.name]["step_s"], res[s.name]["step_cpu_s"] = [], []
    for _ in range(args.repeats):
        for s in sides:
            w, c = _clock(device, s.step)
            res[s.name]["step_s"].append(w)
            res[s.name]["step_cpu_s"].append(c)
    if args.decode_repeats > 0:
        for s in sides:
            s.decode()  # warm-up
            res[s.name]["decode_s"], res[s.name]["decode_cpu_s"] = [], []
        for _ in range(args.decode_repeats):
            for s in sides:
                w, c = _clock(device, s.decode)
                res[s.name]["decode_s"].append(w)
                res[s.name]["decode_cpu_s"].append(c)
    return res


def worker(args: argparse.Namespace) -> dict:
    """One side in a fresh process: the peak memory of a step after warm-up, or the FLOPs of a step."""
    if args.worker == "both":
        return time_both(args)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    side = (VistokSide if args.worker == "vistok" else PeerSide)(args, device)
    res: dict[str, object] = {"side": side.name}
    for _ in range(args.warmup):
        side.step()
    sync(device)
    if args.mode == "flops":
        from torch.nn.attention import SDPBackend, sdpa_kernel
        from torch.utils.flop_counter import FlopCounterMode

        # SDPA's math backend decomposes into matmuls the counter sees (its fused CPU kernel is not counted)
        with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as fc:
            side.step()
        res["step_flops"] = fc.get_total_flops()
        return res
    mem = PeakMemory(device)
    mem.reset()
    side.step()
    res["peak_bytes"] = mem.peak_bytes()
    res["peak_exact"] = mem.exact
    return res


def spawn(args: argparse.Namespace, side: str, mode: str) -> dict:
    argv = [sys.executable, os.path.abspath(__file__), "--worker", side, "--mode", mode]
    for key in ("device", "threads", "dim", "layers", "heads", "batch", "text", "suffix", "channels", "latent",
                "patch", "steps", "warmup", "repeats", "decode_repeats"):  # fmt: skip
        argv += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), TQDM_DISABLE="1")
    if mode in ("memory", "flops"):
        argv[argv.index("--warmup") + 1] = "1"
    if mode == "memory":
        env.update(MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    out = subprocess.run(argv, env=env, capture_output=True, text=True)
    if out.returncode != 0 and mode == "flops":  # the counter is a side measure: report n/a rather than stop
        print(f"({side}: FLOP count failed: {out.stderr.strip().splitlines()[-1:]})")
        return {"step_flops": None}
    if out.returncode != 0:
        sys.exit(f"{side} {mode} worker failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------------------------------


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch threads on both sides")
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--text", type=int, default=48, help="text prefix ids per row")
    p.add_argument("--suffix", type=int, default=16, help="text suffix ids per row")
    p.add_argument("--channels", type=int, default=4, help="latent channels C")
    p.add_argument("--latent", type=int, default=16, help="latent side h = w")
    p.add_argument("--patch", type=int, default=2, help="patch size k")
    p.add_argument("--steps", type=int, default=16, help="diffusion network evaluations per decoded image")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--decode-repeats", type=int, default=3)
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--worker", choices=["vistok", "peer", "both"], default=None, help=argparse.SUPPRESS)
    p.add_argument("--mode", choices=["time", "memory", "flops"], default="time", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return
    try:
        import transfusion_pytorch  # noqa: F401
    except ImportError:
        sys.exit(
            "transfusion-pytorch is not installed: `pip install transfusion-pytorch --no-deps`, then its pure-python "
            "deps one by one with --no-deps (see this script's docstring); never let pip replace torch."
        )
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: CUDA is not available")
    torch.set_num_threads(args.threads)
    info = machine_info(torch.device(args.device))
    print(json.dumps(info))
    t_start = time.perf_counter()
    res = spawn(args, "both", "time")
    for side in ("vistok", "peer"):
        res[side].update({k: v for k, v in spawn(args, side, "memory").items() if k.startswith("peak")})
        # torch's FLOP counter cannot trace FlexAttention (the CUDA path), so FLOPs are counted on CPU only
        res[side]["step_flops"] = spawn(args, side, "flops")["step_flops"] if args.device == "cpu" else None
    v, q = res["vistok"], res["peer"]
    n = (args.latent // args.patch) ** 2
    print(
        f"\nlayout per row: text {args.text} · image {args.channels}x{args.latent}x{args.latent} latent, "
        f"{args.patch}x{args.patch} patches → {n} patch vectors of {args.channels * args.patch**2} · text "
        f"{args.suffix}; batch {args.batch}; dim {args.dim}, {args.layers} layers, {args.heads} heads, FFN hidden "
        f"{ffn_hidden(args.dim)}; {args.threads} thread(s), fp32, {args.device}"
    )
    print(f"sequence length: vistok {v['seq_len']}, peer {q['seq_len']}")
    print(f"parameters: vistok {v['params']:,}, peer {q['params']:,}\n")
    rows = []

    def row(name: str, a: float, b: float, fmt: str, ratio: str) -> None:
        rows.append((name, format(a, fmt), format(b, fmt), ratio))

    vs, qs = median(v["step_s"]), median(q["step_s"])
    row("train step s (median)", vs, qs, ".4f", f"{qs / vs:.2f}x faster")
    row("train step CPU s (median)", median(v["step_cpu_s"]), median(q["step_cpu_s"]), ".4f",
        f"{median(q['step_cpu_s']) / median(v['step_cpu_s']):.2f}x faster")  # fmt: skip
    row("tokens/s (own seq len)", args.batch * v["seq_len"] / vs, args.batch * q["seq_len"] / qs, ",.0f",
        f"{(v['seq_len'] / vs) / (q['seq_len'] / qs):.2f}x")  # fmt: skip
    row("samples/s", args.batch / vs, args.batch / qs, ".2f", f"{qs / vs:.2f}x")
    if v["step_flops"] and q["step_flops"]:
        vf, qf = v["step_flops"] / 1e9, q["step_flops"] / 1e9
        row("GFLOP per step (counted)", vf, qf, ".2f", f"{vf / qf:.2f}x of peer")
        row("achieved GFLOP/s", vf / vs, qf / qs, ".2f", f"{(vf / vs) / (qf / qs):.2f}x")
    mib = 2**20
    vm, qm = v["peak_bytes"] / mib, q["peak_bytes"] / mib
    row("step peak memory MiB", vm, qm, ".1f", f"{vm / qm:.2f}x of peer" if qm > 0 else "n/a")
    if "decode_s" in v:
        vd, qd = median(v["decode_s"]), median(q["decode_s"])
        row(f"decode s/image ({args.steps} steps)", vd, qd, ".4f", f"{qd / vd:.2f}x faster")
        vc, qc = median(v["decode_cpu_s"]), median(q["decode_cpu_s"])
        row("decode CPU s/image", vc, qc, ".4f", f"{qc / vc:.2f}x faster")
    print("| measure | vistok | peer | vistok vs peer |\n|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    load_after = machine_info(torch.device(args.device))["load_average"]
    print(f"load average before / after: {info['load_average']} / {load_after}; {time.perf_counter() - t_start:.0f} s")
    if not (v.get("peak_exact", True) and q.get("peak_exact", True)):
        print("(peak memory inexact: the high-water mark could not be reset)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "machine": info, "results": res}, f, indent=1)


if __name__ == "__main__":
    main()
