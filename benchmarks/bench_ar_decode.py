"""Autoregressive decoding throughput: vistok ``generate`` (static KV cache) against Hugging Face
``LlamaForCausalLM.generate`` on the same weights, prompt and settings.

    python benchmarks/bench_ar_decode.py                                   # dim 512, 8 layers, B = 1, 64 + 256 tokens
    python benchmarks/bench_ar_decode.py --threads 1 --prompt-len 32 --new-tokens 64 --repeats 3   # quick, shared CPU
    python benchmarks/bench_ar_decode.py --preset lvm-300m --batch 4
    python benchmarks/bench_ar_decode.py --device cuda                      # bf16 on CUDA by default
    python benchmarks/bench_ar_decode.py --device cuda --compile            # both compiled (see below)

One vistok :class:`~vistok.models.Transformer` (random init, seeded; a ``--preset`` or the sizes given by flags) is
exported with :func:`~vistok.models.to_hf_llama` to a temporary folder and loaded with
``transformers.LlamaForCausalLM.from_pretrained`` (SDPA attention), so both sides hold identical weights.

1. Correctness, in float32 on the chosen device: both decode the same seeded prompt (B, P) greedily for N new
   tokens — vistok ``generate(model, prompt, N, temperature=0)``, HF ``generate(do_sample=False, use_cache=True,
   max_new_tokens=N, min_new_tokens=N)`` — and the script stops unless the token ids are IDENTICAL.
2. Timing, in ``--dtype`` (default float32 on CPU, bfloat16 on CUDA): each side's whole call (prefill + N − 1
   decode steps + sampling) after ``--warmup`` untimed calls, median of ``--repeats``; tokens/s = B · N / time.
   vistok's cache is allocated once before the warm-up and reused by every call (``generate`` resets it), as a
   serving loop would; HF builds its cache inside each call (its default ``DynamicCache``).
3. ``--compile``: vistok compiles its one-token decode step (``torch.compile``, fullgraph; CUDA graphs via
   ``mode="reduce-overhead"`` on CUDA); HF runs with ``cache_implementation="static"`` and its own auto-compile of the
   forward pass (``CompileConfig(mode=...)``, the same mode; enabled on CPU too). Compilation happens in the warm-up.

On a CPU shared with other jobs use ``--threads 1`` (small multi-threaded kernels stall whenever a thread is
descheduled); the load average before and after is printed.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from _util import add_model_args, backbone_config, load_average, machine_info, median, sync, timed

from vistok.generate import generate
from vistok.models import Transformer, TransformerConfig, to_hf_llama


def build_config(args: argparse.Namespace) -> TransformerConfig:
    return backbone_config(args, max_seq_len=max(4096, args.prompt_len + args.new_tokens))


def load_hf(model: Transformer, folder: Path, device: torch.device):
    """The exported checkpoint loaded by transformers (float32, SDPA attention), on ``device``."""
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    to_hf_llama(model, folder)
    hf = transformers.LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="sdpa")
    return hf.to(device).eval()


def hf_kwargs(args: argparse.Namespace, device: torch.device) -> dict:
    kwargs = {
        "max_new_tokens": args.new_tokens,
        "min_new_tokens": args.new_tokens,
        "do_sample": False,
        "use_cache": True,
        "pad_token_id": 0,
    }
    if args.compile:
        from transformers import CompileConfig

        compile_config = CompileConfig(mode="reduce-overhead" if device.type == "cuda" else "default")
        compile_config._compile_all_devices = True  # HF's switch to auto-compile on CPU as well
        kwargs.update(cache_implementation="static", compile_config=compile_config)
    return kwargs


def run_vistok(model: Transformer, prompt: torch.Tensor, args: argparse.Namespace) -> torch.Tensor:
    return generate(model, prompt, args.new_tokens, temperature=0, compile=args.compile)


def run_hf(hf, prompt: torch.Tensor, kwargs: dict) -> torch.Tensor:
    with torch.inference_mode():
        return hf.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), **kwargs)


def check_identical(ours: torch.Tensor, theirs: torch.Tensor, prompt_len: int) -> None:
    if ours.shape != theirs.shape or not torch.equal(ours, theirs.to(ours.device)):
        diff = (ours[:, prompt_len:] != theirs[:, prompt_len:].to(ours.device)).nonzero()
        first = f"first difference at (row, new token) {tuple(diff[0].tolist())}" if len(diff) else "shapes differ"
        raise SystemExit(
            f"correctness check FAILED: vistok {tuple(ours.shape)} and HF {tuple(theirs.shape)} ids differ ({first})"
        )


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    info = machine_info(device)
    print("machine: " + ", ".join(f"{k}={v}" for k, v in info.items()), flush=True)

    config = build_config(args)
    torch.manual_seed(args.seed)
    model = Transformer(config).to(device).eval()
    with tempfile.TemporaryDirectory() as tmp:
        hf = load_hf(model, Path(tmp), device)
    prompt = torch.randint(
        0, config.vocab_size, (args.batch, args.prompt_len), generator=torch.Generator().manual_seed(args.seed + 1)
    ).to(device)
    print(
        f"model: dim {config.dim}, {config.n_layers} layers, {config.n_heads} heads ({config.kv_heads} kv), "
        f"ffn {config.ffn_dim}, vocab {config.vocab_size}, {model.num_params() / 1e6:.1f}M parameters; "
        f"B={args.batch}, prompt {args.prompt_len}, new {args.new_tokens}, greedy, timing dtype {dtype}, "
        f"compile={args.compile}",
        flush=True,
    )

    # 1. correctness in float32 (eager on both sides)
    t0 = time.perf_counter()
    ours = generate(model, prompt, args.new_tokens, temperature=0)
    theirs = run_hf(hf, prompt, {**hf_kwargs(args, device), "cache_implementation": None, "compile_config": None})
    check_identical(ours, theirs, args.prompt_len)
    print(f"correctness: token ids IDENTICAL ({tuple(ours.shape)}, float32, {time.perf_counter() - t0:.1f} s)")

    # 2. timing
    model.to(dtype)
    hf.to(dtype)
    model.setup_caches(args.batch, args.prompt_len + args.new_tokens)
    kwargs = hf_kwargs(args, device)
    rows, load_before = [], load_average()
    for name, fn in (
        ("vistok", lambda: run_vistok(model, prompt, args)),
        ("transformers", lambda: run_hf(hf, prompt, kwargs)),
    ):
        t0 = time.perf_counter()
        for _ in range(args.warmup):
            fn()
        sync(device)
        warm = time.perf_counter() - t0
        times = timed(fn, args.repeats, device, warmup=0)
        rows.append({"lib": name, "times_s": times, "warmup_s": warm})
        print(f"  {name}: median {median(times):.3f} s over {args.repeats} (warm-up {warm:.1f} s)", flush=True)
    same_in_dtype = torch.equal(run_vistok(model, prompt, args), run_hf(hf, prompt, kwargs).to(device))
    model.remove_caches()

    tokens = args.batch * args.new_tokens
    base = median(rows[1]["times_s"])
    print(
        "\n| library | time per call (s) | tokens/s | ms per token | speed-up vs transformers |\n|---|---|---|---|---|"
    )
    for row in rows:
        t = median(row["times_s"])
        print(f"| {row['lib']} | {t:.3f} | {tokens / t:,.1f} | {1e3 * t / args.new_tokens:.2f} | {base / t:.2f}× |")
    print(f"\nids identical in {str(dtype).removeprefix('torch.')} as well: {'yes' if same_in_dtype else 'no'}")
    print("load average before / after: " + " / ".join(str(v) for v in (load_before, load_average())))
    result = {"machine": info, "args": vars(args), "rows": rows, "same_ids_in_timing_dtype": same_in_dtype}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--repeats", type=int, default=5, help="timed calls per library (median)")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls first (compilation happens here)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"], help="timing dtype")
    p.add_argument("--compile", action="store_true", help="torch.compile the decode step (both libraries)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="write the results to this JSON file")
    return p.parse_args(argv)


if __name__ == "__main__":
    main()
