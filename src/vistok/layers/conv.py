"""Causal 3-D convolution over video (B, C, T, H, W), as in the MAGVIT-v2 tokenizer (Yu et al., ICLR 2024, §3.2).

**Time is padded only in front**: (kt − 1)·dt frames before the first frame — copies of the first frame
(``time_padding_mode="replicate"``, MAGVIT-v2's choice) or zeros — and none after. So output frame j reads input
frames j·st − (kt − 1)·dt … j·st and never a later one; in particular output frame 0 sees input frame 0 alone, which
is why an image is simply a 1-frame video.

**Temporal stride st**: T input frames give 1 + ⌊(T − 1)/st⌋ output frames, so the MAGVIT convention holds exactly:
1 + st·k input frames → 1 + k output frames (17 → 9 → 5 with two stride-2 layers).

**Space** gets "same" padding, (kh − 1)·dh rows split as ⌊·/2⌋ on top and the rest at the bottom (likewise for
width), with zeros or replicated border pixels (``padding_mode``); H spatial rows with stride sh give ⌈H/sh⌉ rows.

**Streaming**: :meth:`CausalConv3d.forward_chunk` processes a long video in temporal chunks. The cache holds the padded
input frames from the start of the next output's window onward ((kt − 1)·dt frames when st = 1), so concatenating the
chunk outputs reproduces the one-shot output exactly. Any stride works as long as consecutive windows overlap or touch
(st ≤ (kt − 1)·dt + 1); otherwise some input frames would be skipped across a chunk boundary and chunking is refused.
A chunk too short to complete a window yields zero output frames and is kept in the cache.

**First frame as a 2-D convolution**: the window of output frame 0 holds only padding and frame 0, so it equals a 2-D
convolution of frame 0 with the kernel summed over its time taps (replicate padding) or with its last time tap (zero
padding). Output frame 0 is always computed that way — for an image (T = 1, a third of the work with kt = 3), for the
first frame of a video and for the first chunk of a stream alike — so an image's output is *bit-identical* to the
first output frame of any video that starts with it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

PADDING_MODES = ("zeros", "replicate")


def _triple(v: int | tuple[int, int, int], name: str) -> tuple[int, int, int]:
    """An int or a (t, h, w) triple → (t, h, w)."""
    t = (v, v, v) if isinstance(v, int) else tuple(int(x) for x in v)
    if len(t) != 3 or min(t) < 1:
        raise ValueError(f"{name} must be a positive int or a (t, h, w) triple of them, got {v!r}")
    return t


def _check_mode(mode: str, name: str) -> str:
    if mode not in PADDING_MODES:
        raise ValueError(f"{name} must be one of {PADDING_MODES}, got {mode!r}")
    return mode


class CausalConv3d(nn.Module):
    """Conv3d that is causal in time and "same"-padded in space; see the module docstring for the exact rules."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int, int],
        stride: int | tuple[int, int, int] = 1,
        dilation: int | tuple[int, int, int] = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        time_padding_mode: str = "replicate",
    ) -> None:
        super().__init__()
        kernel, dilation = _triple(kernel_size, "kernel_size"), _triple(dilation, "dilation")
        stride = _triple(stride, "stride")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.padding_mode = _check_mode(padding_mode, "padding_mode")
        self.time_padding_mode = _check_mode(time_padding_mode, "time_padding_mode")
        self.time_pad = (kernel[0] - 1) * dilation[0]
        self.time_stride, self.space_stride = stride[0], stride[1:]
        ph, pw = ((k - 1) * d for k, d in zip(kernel[1:], dilation[1:]))
        self.space_pad = (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)  # F.pad order: left, right, top, bottom
        self.conv = nn.Conv3d(in_channels, out_channels, kernel, stride=stride, dilation=dilation, bias=bias)

    def num_output_frames(self, num_frames: int) -> int:
        """Output frames for a whole video of ``num_frames`` frames: 1 + ⌊(T − 1)/st⌋."""
        return 1 + (num_frames - 1) // self.time_stride

    def forward(self, x: Tensor) -> Tensor:
        """Convolve a whole video (B, C_in, T, H, W) → (B, C_out, 1 + ⌊(T − 1)/st⌋, ⌈H/sh⌉, ⌈W/sw⌉)."""
        self._check_input(x)
        if self.time_pad == 0:
            return self._conv(x)
        first = self._first_frame(x[:, :, :1])
        rest = self._pad_front(x)[:, :, self.time_stride :]  # windows of output frames 1, 2, ...
        if rest.shape[2] <= self.time_pad:
            return first
        return torch.cat([first, self._conv(rest)], dim=2)

    def _first_frame(self, x0: Tensor) -> Tensor:
        """Output frame 0 from input frame 0 (B, C, 1, H, W) as a 2-D convolution (see the module docstring)."""
        w = self.conv.weight
        w = w.sum(2) if self.time_padding_mode == "replicate" else w[:, :, -1]
        x = x0[:, :, 0]
        if any(self.space_pad):
            x = F.pad(x, self.space_pad, mode="constant" if self.padding_mode == "zeros" else "replicate")
        y = F.conv2d(x, w, self.conv.bias, stride=self.space_stride, dilation=self.conv.dilation[1:])
        return y.unsqueeze(2)

    def forward_chunk(self, x: Tensor, cache: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Convolve the next chunk of a video; ``cache`` is None for the first chunk. Returns (y, new_cache).

        Concatenating the ``y`` of consecutive chunks along time equals :meth:`forward` on the whole video.
        """
        self._check_input(x)
        if self.time_stride > self.time_pad + 1:
            raise ValueError(
                f"chunked processing needs temporal stride <= (kt - 1) * dt + 1 = {self.time_pad + 1}, "
                f"got stride {self.time_stride} (frames between windows would be lost at chunk boundaries)"
            )
        xp = self._pad_front(x) if cache is None else torch.cat([cache, x], dim=2)
        n_out = max(0, (xp.shape[2] - self.time_pad - 1) // self.time_stride + 1)
        new_cache = xp[:, :, n_out * self.time_stride :]
        if cache is None:  # the first chunk: exactly what forward computes
            return self.forward(x), new_cache
        return (self._conv(xp) if n_out > 0 else self._empty_output(x)), new_cache

    def _check_input(self, x: Tensor) -> None:
        if x.ndim != 5 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected input (B, {self.in_channels}, T, H, W), got {tuple(x.shape)}")

    def _pad_front(self, x: Tensor) -> Tensor:
        """Prepend (kt − 1)·dt copies of the first frame (or zeros) along time."""
        if self.time_pad == 0:
            return x
        first = x[:, :, :1]
        if self.time_padding_mode == "zeros":
            first = torch.zeros_like(first)
        return torch.cat([first.expand(-1, -1, self.time_pad, -1, -1), x], dim=2)

    def _conv(self, x: Tensor) -> Tensor:
        """Pad space ("same") and convolve; time must already be front-padded."""
        mode = "constant" if self.padding_mode == "zeros" else "replicate"
        if any(self.space_pad):
            x = F.pad(x, (*self.space_pad, 0, 0), mode=mode)
        return self.conv(x)

    def _empty_output(self, x: Tensor) -> Tensor:
        """A zero-frame output with the right batch, channel and spatial sizes."""
        (sh, sw), (h, w) = self.space_stride, x.shape[-2:]
        return x.new_zeros(x.shape[0], self.out_channels, 0, (h - 1) // sh + 1, (w - 1) // sw + 1)

    def extra_repr(self) -> str:
        return f"time_pad={self.time_pad}, padding_mode={self.padding_mode}, time_padding_mode={self.time_padding_mode}"
