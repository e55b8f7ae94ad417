"""MaskGIT parallel decoding against autoregressive decoding of the same token grid, at the same backbone size.

One image = a grid of N tokens (8×8 = 64 or 16×16 = 256). Both sides use the same LLaMA-style backbone
(:class:`vistok.models.transformer.Transformer`: same dim, layers, heads, SwiGLU size) and the same 1,024-code
vocabulary, randomly initialised (speed does not depend on the weights):

- **MaskGIT** (:func:`vistok.generate.maskgit.maskgit_generate`): ``--steps`` (12) full bidirectional forwards over the
  [class] + N tokens, each followed by sampling, Gumbel confidences and re-masking;
- **AR**: a causal ``Transformer`` over [BOS] + N tokens with its static KV cache — one prefill of the BOS token, then
  N − 1 one-token steps (``forward(idx, input_pos=tensor([p]))``), through :func:`vistok.generate.ar.generate`.

Eager by default; ``--compile`` compiles both sides the same way: the MaskGIT forward and the AR one-token step under
``torch.compile`` (``mode="reduce-overhead"``, i.e. CUDA graphs, on CUDA; inductor's default on CPU).

Reported per (grid, batch): median wall-clock seconds per call over ``--repeats`` calls after a warm-up call, seconds
per image, and the ratio AR / MaskGIT (> 1: MaskGIT is faster). On a CPU shared with other jobs use ``--threads 1``.

    python benchmarks/bench_maskgit.py                         # maskgit-small backbone, 8×8 and 16×16, batch 1 and 8
    python benchmarks/bench_maskgit.py --dim 512 --layers 8 --heads 8 --grids 16
    python benchmarks/bench_maskgit.py --device cuda --dim 1024 --layers 24 --heads 16 --compile
"""

from __future__ import annotations

import argparse
import json
from functools import partial

import torch
from _util import machine_info, median, timed

from vistok.generate.ar import generate as ar_generate
from vistok.generate.maskgit import maskgit_generate
from vistok.models.maskgit import MaskGIT, MaskGITConfig
from vistok.models.transformer import Transformer, TransformerConfig

VOCAB = 1024


def build_pair(grid: int, args: argparse.Namespace, device: torch.device) -> tuple[MaskGIT, Transformer]:
    """A MaskGIT and a causal Transformer with the same backbone shape for a grid×grid image."""
    backbone = dict(dim=args.dim, n_layers=args.layers, n_heads=args.heads, multiple_of=16)
    torch.manual_seed(0)
    maskgit = MaskGIT(MaskGITConfig(codebook_size=VOCAB, grid=(grid, grid), num_classes=10, **backbone))
    ar = Transformer(TransformerConfig(vocab_size=VOCAB + 1, max_seq_len=grid * grid + 1, causal=True, **backbone))
    dtype = getattr(torch, args.dtype)
    return maskgit.to(device, dtype).eval(), ar.to(device, dtype).eval()


def run(args: argparse.Namespace) -> list[dict]:
    device = torch.device(args.device)
    mode = "reduce-overhead" if device.type == "cuda" else "default"  # CUDA graphs on CUDA, as generate's AR step
    rows = []
    for grid in args.grids:
        maskgit, ar = build_pair(grid, args, device)
        n = grid * grid
        for batch in args.batch:
            cls = torch.arange(batch, device=device) % 10
            bos = torch.full((batch, 1), VOCAB, dtype=torch.long, device=device)

            model = torch.compile(maskgit, mode=mode) if args.compile else maskgit
            mg = partial(maskgit_generate, model, batch, class_ids=cls, steps=args.steps, seed=0)
            autoregressive = partial(ar_generate, ar, bos, n - 1, seed=0, compile=args.compile)  # BOS + N − 1 new
            t_mg = median(timed(mg, args.repeats, device, warmup=3 if args.compile else 1))
            t_ar = median(timed(autoregressive, args.repeats, device, warmup=3 if args.compile else 1))
            rows.append(
                {
                    "grid": f"{grid}x{grid}",
                    "tokens": n,
                    "batch": batch,
                    "maskgit_s": t_mg,
                    "ar_s": t_ar,
                    "maskgit_s_per_image": t_mg / batch,
                    "ar_s_per_image": t_ar / batch,
                    "ar_over_maskgit": t_ar / t_mg,
                }
            )
            print(_row(rows[-1]), flush=True)
    return rows


HEADER = (
    f"{'grid':>6} {'tokens':>6} {'batch':>5} | {'MaskGIT s':>10} {'s/image':>9} | {'AR s':>9} {'s/image':>9} | "
    f"{'AR/MaskGIT':>10}"
)


def _row(r: dict) -> str:
    return (
        f"{r['grid']:>6} {r['tokens']:>6} {r['batch']:>5} | {r['maskgit_s']:>10.4f} {r['maskgit_s_per_image']:>9.4f} | "
        f"{r['ar_s']:>9.4f} {r['ar_s_per_image']:>9.4f} | {r['ar_over_maskgit']:>9.2f}x"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--grids", type=int, nargs="+", default=[8, 16], help="grid sides (8 → 64 tokens, 16 → 256)")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    p.add_argument("--dim", type=int, default=128, help="backbone width (default: maskgit-small's 128)")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--steps", type=int, default=12, help="MaskGIT decoding steps")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None, help="torch threads (1 on a shared CPU)")
    p.add_argument("--compile", action="store_true", help="torch.compile the AR one-token step")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="weights and activations")
    p.add_argument("--json", default=None, help="also write the rows as JSON")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    info = machine_info(torch.device(args.device))
    print(json.dumps(info))
    backbone = f"dim {args.dim}, {args.layers} layers, {args.heads} heads, {args.dtype}"
    ar = "AR (KV cache, compiled step)" if args.compile else "AR (KV cache, eager)"
    mg = "MaskGIT (compiled forward)" if args.compile else "MaskGIT (eager)"
    print(f"{mg}, {args.steps} steps, vs {ar} on {args.device}, {backbone}, vocabulary {VOCAB}")
    print(HEADER)
    print("-" * len(HEADER))
    rows = run(args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "args": vars(args), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
