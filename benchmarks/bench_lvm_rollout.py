"""Multi-frame LVM rollout: vistok's one-prefill sliding-window rollout against the public LVM inference pattern that
re-encodes the context for every new frame — same model, same sampler, same random stream.

    python benchmarks/bench_lvm_rollout.py                       # dim 512, 8 layers; 8 context + 8 new frames of 256
    python benchmarks/bench_lvm_rollout.py --threads 1 --dim 256 --n-layers 4 --tokens-per-frame 64   # quick
    python benchmarks/bench_lvm_rollout.py --preset lvm-300m --device cuda          # bf16 on CUDA by default
    python benchmarks/bench_lvm_rollout.py --device cuda --compile

A visual sentence is a sequence of frames, each ``BOI, v₁ … v₂₅₆, EOI`` (258 ids; v from the 8,192 visual codes,
BOI/EOI the first two special ids above them). The prompt is ``--context-frames`` (8) random frames; both methods then
generate ``--new-frames`` (8) frames under the plan "BOI forced, 256 visual ids sampled (only visual ids allowed), EOI
forced" (:func:`vistok.generate.frame_plan`), sampling with ``--temperature`` / ``--top-k``:

(a) vistok: ``generate(model, prompt, 8 · 258, window=W, plan=...)`` — one prefill of the prompt, then one token per
    step through a ring KV cache of W slots, which the generated frames reuse (W = ``--window-frames`` × 258, default
    (context + 1) frames: every new token sees its frame's tokens so far and at least the 8 frames before it).
(b) re-encode baseline, the pattern of LVM's public inference (``evaluation/vqlm_demo/inference.py``: one HF
    ``generate`` call per new frame on the last context frames): for every new frame, a fresh prefill of the last 8
    frames (positions restart at 0), then that frame's 258 tokens with a KV cache — ``generate(model, last_8_frames,
    258, plan=...)`` per frame, with the same model, code path and generator as (a).

Both caches are allocated once before timing. Check: with W ≥ (context + 1) frames the first new frame sees exactly the
same tokens in both methods, so it must come out identical (same generator, forced ids consume no draws); later frames
legitimately differ (the window keeps the earlier keys' history, the baseline forgets it). The two-frame warm-up of
each method (compilation included) produces the checked output; then each rollout is timed ``--repeats`` times
(median). The prefill P of one context and the decode steps D of one frame (greedy) are also timed alone, to show
where the ratio comes from: (a) ≈ P + F·D and (b) ≈ F·(P + D) for F new frames, so the speed-up F(P + D) / (P + FD) is
at most F and reaches 5× for F = 8 only when P ≥ 32/3 · D — when re-encoding 8 frames costs over 10× the decoding of
one frame.
Token-by-token decoding is bound by memory traffic (weights and cache read once per step) and, on GPUs, by kernel
launches; a prefill is bound by arithmetic. Larger batches (``--batch``) raise P much more than D.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from _util import add_model_args, backbone_config, load_average, machine_info, median, sync, timed

from vistok.generate import decode_step, frame_plan, generate, prefill
from vistok.models import Transformer, TransformerConfig

VISUAL_CODES = 8192  #: VQGAN codes, ids 0 … 8191
BOI = VISUAL_CODES  #: begin-of-image: the first special id above the visual codes
EOI = VISUAL_CODES + 1  #: end-of-image


def build_config(args: argparse.Namespace) -> TransformerConfig:
    return backbone_config(args, max_seq_len=4096)


def random_frames(n: int, tokens: int, batch: int, seed: int) -> torch.Tensor:
    """(batch, n · (tokens + 2)) ids: n frames of random visual ids, each wrapped as BOI … EOI."""
    g = torch.Generator().manual_seed(seed)
    visual = torch.randint(0, VISUAL_CODES, (batch, n, tokens), generator=g)
    boi, eoi = torch.full((batch, n, 1), BOI), torch.full((batch, n, 1), EOI)
    return torch.cat([boi, visual, eoi], dim=2).reshape(batch, -1)


class Rollouts:
    """The two methods on one model; each call restarts its generator from ``seed``."""

    def __init__(self, model: Transformer, prompt: torch.Tensor, args: argparse.Namespace, device: torch.device):
        self.model, self.prompt, self.args, self.device = model, prompt, args, device
        self.frame = args.tokens_per_frame + 2
        self.window = args.window_frames * self.frame
        allowed = torch.zeros(model.config.vocab_size, dtype=torch.bool, device=device)
        allowed[:VISUAL_CODES] = True
        self.plan = frame_plan(BOI, EOI, args.tokens_per_frame, allowed)
        self.sampling = {"temperature": args.temperature, "top_k": args.top_k, "compile": args.compile}

    def generator(self) -> torch.Generator:
        return torch.Generator(self.device).manual_seed(self.args.seed)

    def _cache(self, length: int | None, window: int | None) -> None:
        """Allocate the cache once per method (``generate`` then reuses it, resetting it first)."""
        if not self.model.has_caches or self.model.window != window:
            self.model.setup_caches(self.prompt.shape[0], length, window=window)

    def vistok(self, frames: int) -> torch.Tensor:
        """(a): one prefill, then every frame through the ring cache."""
        self._cache(None, self.window)
        new = frames * self.frame
        return generate(
            self.model,
            self.prompt,
            new,
            window=self.window,
            plan=self.plan,
            generator=self.generator(),
            **self.sampling,
        )

    def reencode(self, frames: int) -> torch.Tensor:
        """(b): per frame, a fresh prefill of the last ``context_frames`` frames, then the frame's tokens."""
        context = self.args.context_frames * self.frame
        self._cache(context + self.frame, None)
        seq, g = self.prompt, self.generator()
        for _ in range(frames):
            out = generate(self.model, seq[:, -context:], self.frame, plan=self.plan, generator=g, **self.sampling)
            seq = torch.cat([seq, out[:, context:]], dim=1)
        return seq


def time_parts(model: Transformer, prompt: torch.Tensor, frame: int, args, device) -> tuple[float, float]:
    """Median seconds of one context prefill (P) and of one frame's decode steps after it (D), timed separately."""
    model.setup_caches(prompt.shape[0], prompt.shape[1] + frame)
    p_times, d_times = [], []
    with torch.inference_mode():
        for _ in range(args.repeats + 1):  # the first round is a warm-up
            model.reset_caches()
            sync(device)
            t0 = time.perf_counter()
            logits = prefill(model, prompt)
            sync(device)
            t1 = time.perf_counter()
            pos = torch.tensor([prompt.shape[1]], device=device)
            for _ in range(frame - 1):
                logits = decode_step(model, logits.argmax(-1, keepdim=True), pos)
                pos += 1
            sync(device)
            p_times.append(t1 - t0)
            d_times.append(time.perf_counter() - t1)
    model.remove_caches()
    return median(p_times[1:]), median(d_times[1:])


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
    model = Transformer(config).to(device=device, dtype=dtype).eval()
    frame = args.tokens_per_frame + 2
    prompt = random_frames(args.context_frames, args.tokens_per_frame, args.batch, args.seed + 1).to(device)
    if args.window_frames is None:
        args.window_frames = args.context_frames + 1
    if (args.context_frames + 1) * frame > config.max_seq_len:
        raise SystemExit(f"{args.context_frames} context frames + 1 of {frame} tokens exceed max_seq_len")
    print(
        f"model: dim {config.dim}, {config.n_layers} layers, {config.n_heads} heads ({config.kv_heads} kv), "
        f"{model.num_params() / 1e6:.1f}M parameters, {dtype}; B={args.batch}; {args.context_frames} context frames "
        f"+ {args.new_frames} new frames of {frame} tokens; window {args.window_frames} frames = "
        f"{args.window_frames * frame} slots; temperature {args.temperature}, top-k {args.top_k}, "
        f"compile={args.compile}",
        flush=True,
    )
    runs = Rollouts(model, prompt, args, device)
    n_prompt = prompt.shape[1]

    # warm-up (and compilation) on two frames, which also serves as the check: the first new frame sees the same
    # tokens in both methods (window ≥ context + 1 frames), so it must come out identical
    warm = min(2, args.new_frames)
    a, b = runs.vistok(warm), runs.reencode(warm)
    if a.shape != b.shape:
        raise SystemExit(f"shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    same_first = torch.equal(a[:, n_prompt : n_prompt + frame], b[:, n_prompt : n_prompt + frame])
    if args.window_frames >= args.context_frames + 1 and not same_first:
        raise SystemExit("check FAILED: the first new frame differs between the two methods")
    for out in (a, b):
        new = out[:, n_prompt:].reshape(args.batch, warm, frame)
        if not (
            (new[:, :, 0] == BOI).all() and (new[:, :, -1] == EOI).all() and (new[:, :, 1:-1] < VISUAL_CODES).all()
        ):
            raise SystemExit("check FAILED: a generated frame is not BOI + visual ids + EOI")
    print(f"check: first new frame identical in both methods: {same_first}; frame structure kept: True", flush=True)

    load_before = load_average()
    rows = []
    for name, fn in (("vistok (one prefill, ring cache)", runs.vistok), ("re-encode per frame (LVM)", runs.reencode)):
        times = timed(lambda fn=fn: fn(args.new_frames), args.repeats, device, warmup=0)
        rows.append({"method": name, "times_s": times})
        print(f"  {name}: median {median(times):.2f} s over {args.repeats}", flush=True)
    model.remove_caches()
    p, d = time_parts(model, prompt, frame, args, device)
    sync(device)

    base = median(rows[1]["times_s"])
    print(
        f"\n| method | total s ({args.new_frames} frames) | s per frame | frames/s | tokens/s | speed-up |\n"
        "|---|---|---|---|---|---|"
    )
    tokens = args.batch * args.new_frames * frame
    for row in rows:
        t = median(row["times_s"])
        print(
            f"| {row['method']} | {t:.2f} | {t / args.new_frames:.3f} | {args.new_frames / t:.2f} | "
            f"{tokens / t:,.0f} | {base / t:.2f}× |"
        )
    f = args.new_frames
    print(
        f"\nparts: prefill of the {args.context_frames}-frame context P = {p:.3f} s, decode of one frame D = {d:.3f} s "
        f"→ model (F·(P + D)) / (P + F·D) = {(f * (p + d)) / (p + f * d):.2f}× for F = {f}"
    )
    print("load average before / after: " + " / ".join(str(v) for v in (load_before, load_average())))
    result = {
        "machine": info,
        "args": vars(args),
        "rows": rows,
        "prefill_s": p,
        "frame_decode_s": d,
        "first_frame_identical": same_first,
    }
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--context-frames", type=int, default=8)
    p.add_argument("--new-frames", type=int, default=8)
    p.add_argument("--tokens-per-frame", type=int, default=256, help="visual tokens per frame (plus BOI and EOI)")
    p.add_argument("--window-frames", type=int, default=None, help="ring cache size in frames (default: context + 1)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--repeats", type=int, default=3, help="timed rollouts per method (median)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"])
    p.add_argument("--compile", action="store_true", help="torch.compile the one-token decode step (both methods)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="write the results to this JSON file")
    return p.parse_args(argv)


if __name__ == "__main__":
    main()
