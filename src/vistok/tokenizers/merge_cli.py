"""``vistok merge show``: pictures of Chat-UniVi's dynamic visual tokens (:mod:`vistok.tokenizers.merge`).

For an image, one PNG with panels side by side: the original, then one panel per multi-scale stage in which every
merged token's patches share a colour (blended over the picture) and cluster boundaries are drawn dark. A cluster
need not be connected: the patches of one colour are one token. For a video, one PNG: a strip of frames with a
coloured bar per event (events are contiguous frame ranges), then one row per event showing, for each stage, a few
of the event's frames with the cluster map — a cluster spans frames, so one colour across frames is one token.

Patch features come from the MAGVIT-v2 encoder's latents (``--features magvit``, the shipped tokenizer or
``--model DIR``), a small vistok ViT (``--features vit:runs/digit``: the ViT ``vistok digit fit`` trained with DINO,
or any folder written by ``ViT.save_pretrained``) or a Hugging Face vision model in a local folder
(``--features hf:/path/to/dinov2``).
"""

from __future__ import annotations

import argparse
import colorsys
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor

from vistok.eval.pictures import save_png

GAP = 4  # white pixels between panels
TITLE = 14  # height of a panel's title band
GOLDEN = 0.618033988749895
EXAMPLE = "vistok merge show photo.png --out merged.png --stages 64 32 16 --features magvit"


# ----------------------------------------------------------------------------------------------- drawing


def palette(n: int, seed: int = 0) -> np.ndarray:
    """n distinct saturated colours (uint8 (n, 3)): hues spaced by the golden ratio, alternating lightness."""
    out = np.empty((n, 3), np.uint8)
    for i in range(n):
        h = (seed * 0.17 + i * GOLDEN) % 1.0
        r, g, b = colorsys.hls_to_rgb(h, 0.5 if i % 2 == 0 else 0.62, 0.85)
        out[i] = (round(r * 255), round(g * 255), round(b * 255))
    return out


def _upsample(labels: np.ndarray, h: int, w: int) -> np.ndarray:
    """A (gh, gw) label map → (h, w) by nearest neighbour (each patch covers an equal block)."""
    gh, gw = labels.shape
    rows = np.minimum(np.arange(h) * gh // h, gh - 1)
    cols = np.minimum(np.arange(w) * gw // w, gw - 1)
    return labels[rows][:, cols]


def overlay(image: np.ndarray, labels: np.ndarray, alpha: float = 0.55, seed: int = 0) -> np.ndarray:
    """uint8 (H, W, 3) picture with a (gh, gw) cluster map: palette colours blended in, boundaries dark."""
    h, w = image.shape[:2]
    lab = _upsample(labels, h, w)
    colours = palette(int(lab.max()) + 1 if lab.size else 1, seed)[np.maximum(lab, 0)]
    out = (image.astype(np.float32) * (1 - alpha) + colours.astype(np.float32) * alpha).astype(np.uint8)
    edge = np.zeros((h, w), bool)
    edge[:, 1:] |= lab[:, 1:] != lab[:, :-1]
    edge[1:, :] |= lab[1:, :] != lab[:-1, :]
    out[edge] = (20, 20, 20)
    out[lab < 0] = image[lab < 0]
    return out


def titled(panel: np.ndarray, title: str) -> Image.Image:
    """A panel with a white title band above it."""
    h, w = panel.shape[:2]
    img = Image.new("RGB", (w, h + TITLE), "white")
    img.paste(Image.fromarray(panel), (0, TITLE))
    ImageDraw.Draw(img).text((2, 1), title, fill=(0, 0, 0))
    return img


def hstack(images: Sequence[Image.Image], gap: int = GAP) -> Image.Image:
    w = sum(i.width for i in images) + gap * (len(images) - 1)
    out = Image.new("RGB", (w, max(i.height for i in images)), "white")
    x = 0
    for i in images:
        out.paste(i, (x, 0))
        x += i.width + gap
    return out


def vstack(images: Sequence[Image.Image], gap: int = GAP) -> Image.Image:
    out = Image.new("RGB", (max(i.width for i in images), sum(i.height for i in images) + gap * (len(images) - 1)))
    out.paste("white", (0, 0, out.width, out.height))
    y = 0
    for i in images:
        out.paste(i, (0, y))
        y += i.height + gap
    return out


# ----------------------------------------------------------------------------------------------- pictures


def stage_maps(assignments: Tensor, offsets: Sequence[int], grid: tuple[int, int]) -> list[np.ndarray]:
    """Per stage, the (h, w) map of local cluster indices of one picture's patches from ``assignments`` (S, N)."""
    h, w = grid
    return [(assignments[s] - (assignments[s] >= 0) * offsets[s]).view(h, w).numpy() for s in range(len(offsets))]


def render_image(image: np.ndarray, maps: Sequence[np.ndarray], counts: Sequence[int]) -> Image.Image:
    """The original then one overlay per stage, side by side."""
    panels = [titled(image, "original")]
    for s, (labels, m) in enumerate(zip(maps, counts)):
        panels.append(titled(overlay(image, labels, seed=s), f"stage {s + 1}: {m} tokens"))
    return hstack(panels)


def _thumb(frame: np.ndarray, size: int) -> np.ndarray:
    h, w = frame.shape[:2]
    s = size / max(h, w)
    return np.asarray(Image.fromarray(frame).resize((max(1, round(w * s)), max(1, round(h * s))), Image.BICUBIC))


def _pick(start: int, end: int, count: int) -> list[int]:
    """Up to ``count`` evenly spaced frames of [start, end)."""
    n = end - start
    return sorted({start + round(i * (n - 1) / max(count - 1, 1)) for i in range(min(count, n))})


def render_video(
    frames: np.ndarray,
    result,  # VideoMergeResult of one video (batch of one)
    grid: tuple[int, int],
    stages: Sequence[int],
    thumb: int = 96,
    per_event: int = 4,
    strip: int = 16,
) -> Image.Image:
    """Event strip, then per event and stage a few frames with their cluster maps."""
    ev = result.events
    n_events = int(ev.num_events[0])
    colours = palette(max(n_events, 1), seed=7)
    shown = _pick(0, len(frames), strip)
    cells = []
    for t in shown:
        e = int(ev.labels[0, t])
        img = titled(_thumb(frames[t], thumb), f"t={t} e{e}")
        bar = Image.new("RGB", (img.width, 8), tuple(int(v) for v in colours[e]))
        cells.append(vstack([img, bar], gap=0))
    rows = [hstack(cells, gap=2)]
    per_stage = int(sum(stages))
    offsets = np.cumsum([0, *stages[:-1]])
    h, w = grid
    for e in range(n_events):
        start, end = (int(v) for v in ev.bounds[0, e])
        blocks = []
        for s in range(len(stages)):
            tiles = []
            for t in _pick(start, end, per_event):
                a = result.assignments[0, s, t]
                local = (a - (a >= 0) * (e * per_stage + offsets[s])).view(h, w).numpy()
                tiles.append(titled(overlay(_thumb(frames[t], thumb), local, seed=s), f"t={t}"))
            blocks.append(hstack(tiles, gap=2))
        count = int(result.valid[0, e * per_stage : (e + 1) * per_stage].sum())
        head = f"event {e}: frames {start}-{end - 1}, {count} tokens; stages " + ", ".join(
            f"{s + 1} ({m})" for s, m in enumerate(stages)
        )
        band = Image.new("RGB", (1, TITLE), "white")
        row = hstack(blocks, gap=12)
        title = Image.new("RGB", (row.width, TITLE + 8), "white")
        ImageDraw.Draw(title).rectangle((0, 0, 6, TITLE + 7), fill=tuple(int(v) for v in colours[e]))
        ImageDraw.Draw(title).text((10, 4), head, fill=(0, 0, 0))
        rows.append(vstack([title, row, band], gap=0))
    return vstack(rows, gap=8)


# ----------------------------------------------------------------------------------------------- the command


def _load_pixels(source: str, size: int, frames: int):
    """(pixels tensor, kind, uint8 frames) for a file or ``builtin:NAME`` (a built-in photo)."""
    from vistok.data.transforms import apply_box, crop_box, to_tensor, to_uint8

    if source.startswith("builtin:"):
        from vistok.data.samples import load_photo

        img = load_photo(source.split(":", 1)[1])
        img = apply_box(img, crop_box(img.width, img.height, size, "center"))
        pixels = to_tensor(img)
        return pixels, "image", to_uint8(pixels)
    from vistok.tokenizers.api import read_pixels

    px = read_pixels(source, size=size, frames=frames)
    return px.pixels, px.kind, to_uint8(px.pixels)


def _encoder(spec: str, model: str | None, device: str | None) -> tuple[Callable, str]:
    """A callable pixels → PatchFeatures, and its description."""
    from vistok.tokenizers import merge

    if spec == "magvit":
        from vistok.tokenizers.api import load_tokenizer

        tok = load_tokenizer(model, device)
        return (lambda px: merge.magvit_features(px, tok)), f"MAGVIT-v2 encoder latents ({tok.latent_channels}-d)"
    if spec.startswith("hf:"):
        enc = merge.HFPatchEncoder(spec[3:], device=device)
        return enc, f"{type(enc.model).__name__} patch tokens from {spec[3:]}"
    if spec.startswith("vit:"):
        vit = merge.ViTPatchEncoder(spec[4:], device=device)
        return vit, f"vistok ViT patch tokens ({vit.dim}-d, hidden state {vit.layer}) from {spec[4:]}"
    raise ValueError(f"--features must be 'magvit', 'vit:/path/to/vit' or 'hf:/path/to/model', got {spec!r}")


def _log(quiet: bool, text: str) -> None:
    if not quiet:
        print(text, file=sys.stderr, flush=True)


def _events_arg(value: str) -> int | str:
    if value == "auto":
        return value
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'auto', got {value!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'auto', got {n}")
    return n


def merge_picture(
    pixels: Tensor,
    kind: str,
    frames: np.ndarray,
    encode: Callable,
    stages: Sequence[int] = (64, 32, 16),
    ks: Sequence[int] | None = None,
    events: int | str | None = None,
    thumb: int = 96,
) -> tuple[Image.Image, str]:
    """The picture ``vistok merge show`` draws and a one-line description of it.

    ``pixels``: (3, H, W) or (3, T, H, W) in [−1, 1]; ``frames``: the same as uint8 (H, W, 3) / (T, H, W, 3);
    ``encode``: pixels → :class:`~vistok.tokenizers.merge.PatchFeatures` (e.g. ``magvit_features``)."""
    from vistok.tokenizers import merge

    stages = tuple(stages)
    ks = tuple(ks) if ks else tuple(([5] + [3] * 8)[: len(stages)])
    if len(ks) != len(stages):
        raise ValueError(f"--ks needs one k per stage: {len(stages)} stages, got {len(ks)} values")
    with torch.inference_mode():
        if kind == "image":
            feats = encode(pixels)
            _, gh, gw = feats.grid
            res = merge.multiscale_merge(feats.tokens, feats.positions, stages, ks)
            offsets = np.cumsum([0, *stages[:-1]])
            maps = stage_maps(res.assignments[0], offsets, (gh, gw))
            counts = [int(res.valid[0, o : o + m].sum()) for o, m in zip(offsets, stages, strict=True)]
            picture = render_image(frames, maps, counts)
            detail = (
                f"{gh * gw} patch tokens ({gh}x{gw}) → {' + '.join(map(str, counts))} = {sum(counts)} merged tokens; "
                f"{len(stages) + 1} panels: original, " + ", ".join(f"stage {s + 1}" for s in range(len(stages)))
            )
        else:
            feats = encode(pixels[None])
            t, gh, gw = feats.grid
            res = merge.video_events(feats.tokens, events, stages, ks, positions=(gh, gw))
            picture = render_video(frames, res, (gh, gw), stages, thumb=thumb)
            n_events = int(res.events.num_events[0])
            bounds = ", ".join(f"{int(a)}-{int(b) - 1}" for a, b in res.events.bounds[0, :n_events].tolist())
            detail = (
                f"{t} frames x {gh * gw} patch tokens → {n_events} events (frames {bounds}) → "
                f"{int(res.valid.sum())} merged tokens; a frame strip coloured by event, then per event the cluster "
                f"maps of {len(stages)} stages"
            )
    return picture, detail


def _cmd_show(args: argparse.Namespace) -> int:
    encode, what = _encoder(args.features, args.model, args.device)
    is_video = not args.input.startswith("builtin:") and Path(args.input).suffix.lower() in _video_exts()
    size = args.size or (128 if is_video else 256)
    pixels, kind, frames = _load_pixels(args.input, size, args.frames)
    out = Path(args.out or f"{Path(args.input.split(':')[-1]).stem}_merged.png")
    _log(args.quiet, f"merge show: {args.input} ({kind}, {'x'.join(map(str, pixels.shape[1:]))}) — features: {what}")
    picture, detail = merge_picture(pixels, kind, frames, encode, args.stages, args.ks, args.events, args.thumb)
    save_png(picture, out)
    print(f"wrote {out} ({picture.width}x{picture.height}): {args.input}: {detail}.")
    return 0


def _video_exts() -> tuple[str, ...]:
    from vistok.data.video import VIDEO_EXTS

    return VIDEO_EXTS


def add_merge_parser(subparsers) -> None:
    """Add the ``merge`` group (verb: ``show``) to the top-level subparsers of ``vistok``."""
    g = subparsers.add_parser(
        "merge",
        help="Chat-UniVi dynamic visual tokens: DPC-KNN merging of patch tokens",
        description="Chat-UniVi dynamic visual tokens: multi-scale DPC-KNN merging of patch tokens, video events.",
    )
    gs = g.add_subparsers(dest="verb", metavar="VERB", required=True)
    help = "draw the merged-token clusters of an image (one panel per stage) or a video (events + cluster maps)"
    p = gs.add_parser(
        "show",
        help=help,
        description=help,
        epilog=f"example:\n  {EXAMPLE}\n  vistok merge show clip.mp4 --frames 32 --events auto",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.set_defaults(func=_cmd_show)
    p.add_argument("input", metavar="IMG|VIDEO", help="an image or video file, or builtin:NAME (a built-in photo)")
    p.add_argument("--out", default=None, help="output PNG (default: NAME_merged.png)")
    p.add_argument("--stages", type=int, nargs="+", default=[64, 32, 16], help="clusters per stage (default 64 32 16)")
    p.add_argument("--ks", type=int, nargs="+", default=None, help="neighbours per stage (default 5 3 3)")
    p.add_argument(
        "--features",
        default="magvit",
        help="'magvit' (default), 'vit:/path' (a vistok ViT folder or a `vistok digit fit` run) or 'hf:/path' "
        "(a local CLIP/SigLIP/DINOv2 folder)",
    )
    p.add_argument("--model", default=None, metavar="DIR", help="MAGVIT tokenizer folder or preset (default: shipped)")
    p.add_argument("--size", type=int, default=None, help="resize + centre-crop to S×S (default 256, video 128)")
    p.add_argument("--frames", type=int, default=32, help="video: use the first T frames (default 32)")
    p.add_argument(
        "--events", type=_events_arg, default=None, help="video: number of events, or 'auto' (default ⌈T/16⌉)"
    )
    p.add_argument("--thumb", type=int, default=96, help="video: thumbnail size in pixels (default 96)")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when available)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines")


def main(argv: list[str] | None = None) -> int:
    """Run ``merge …`` on its own (``python -m vistok.tokenizers.merge_cli show …``)."""
    parser = argparse.ArgumentParser(prog="vistok")
    add_merge_parser(parser.add_subparsers(dest="group", required=True))
    args = parser.parse_args(["merge", *(sys.argv[1:] if argv is None else argv)])
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
