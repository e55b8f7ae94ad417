"""LPIPS perceptual distance — Zhang et al., "The Unreasonable Effectiveness of Deep Features as a Perceptual
Metric", CVPR 2018, Eq. 1 — with a VGG16 feature network written in plain torch (no torchvision needed).

    d(x, y) = Σ_l  mean_{h,w}  ‖ w_l ⊙ (x̂^l_hw − ŷ^l_hw) ‖²,

where x̂^l are the VGG16 activations after relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 (64, 128, 256, 512, 512
channels) of the input scaled by LPIPS's ``(x − shift) / scale`` (inputs in [−1, 1]), each unit-normalized over
channels (x / (‖x‖ + 1e-10)), and w_l ≥ 0 the learned per-channel weights (a 1×1 conv to one channel, no bias).
d(x, x) = 0 and d is symmetric.

**Weights are never downloaded.** :meth:`LPIPS.from_weights` / :func:`load_lpips_weights` read the files the user
gives (``.safetensors``, or ``.pth``/``.pt`` loaded with ``torch.load(weights_only=True)``) and merge their keys:

- VGG16 convolutions, in any of these layouts: torchvision's ``vgg16().features`` (``0.weight``, ``2.bias`` …),
  the whole torchvision ``vgg16()`` state dict (``features.0.weight`` …; the classifier is ignored), or the
  ``lpips`` package / taming-transformers network (``net.slice1.0.weight`` … — slices keep the global indices);
- the five linear layers in the official LPIPS ``vgg.pth`` layout (``lin0.model.1.weight`` … ``lin4.model.1.weight``,
  shape (1, C, 1, 1)), or ``lin0.model.0.weight`` (no dropout) or ``lin0.weight``.

So ``weights=["vgg16_features.pth", "lpips_vgg.pth"]`` or one combined file (taming's ``vgg.pth``) both work. What is
missing is named in the error. :func:`lpips` is the evaluation metric (no gradients, module cached per file set).
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from vistok.hub import WeightsError

__all__ = [
    "LPIPS",
    "LPIPS_CHANNELS",
    "VGG16_CONV_LAYERS",
    "VGG16Features",
    "load_lpips_weights",
    "lpips",
    "lpips_cache_clear",
]

WeightsArg = str | os.PathLike | Sequence[str | os.PathLike]

# torchvision vgg16().features: (index, in, out) of each 3×3 conv; a ReLU follows each, max-pools sit at 4, 9, 16, 23.
VGG16_CONV_LAYERS: tuple[tuple[int, int, int], ...] = (
    (0, 3, 64), (2, 64, 64),
    (5, 64, 128), (7, 128, 128),
    (10, 128, 256), (12, 256, 256), (14, 256, 256),
    (17, 256, 512), (19, 512, 512), (21, 512, 512),
    (24, 512, 512), (26, 512, 512), (28, 512, 512),
)  # fmt: skip
VGG16_POOLS = (4, 9, 16, 23)
LPIPS_TAPS = (3, 8, 15, 22, 29)  # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
LPIPS_CHANNELS = (64, 128, 256, 512, 512)
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)
EPS = 1e-10

_CONV_KEY = re.compile(r"(?:^|\.)(?:features|slice\d)\.(\d+)\.(weight|bias)$|^(\d+)\.(weight|bias)$")
_LIN_KEY = re.compile(r"(?:^|\.)lin(\d)\.(?:model\.\d\.)?weight$")


class VGG16Features(nn.Module):
    """``torchvision.models.vgg16().features`` up to relu5_3 (layer 29), same layer indices and state-dict keys
    (``features.<i>.weight``); :meth:`forward` returns the activations after the five LPIPS taps."""

    def __init__(self) -> None:
        super().__init__()
        convs = {i: (cin, cout) for i, cin, cout in VGG16_CONV_LAYERS}
        layers: list[nn.Module] = []
        for i in range(LPIPS_TAPS[-1] + 1):
            if i in convs:
                layers.append(nn.Conv2d(*convs[i], kernel_size=3, padding=1))
            elif i in VGG16_POOLS:
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers.append(nn.ReLU(inplace=False))
        self.features = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> list[Tensor]:
        taps = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in LPIPS_TAPS:
                taps.append(x)
        return taps


def _normalize(x: Tensor) -> Tensor:
    """Unit length over channels (LPIPS ``normalize_tensor``)."""
    return x / (x.pow(2).sum(dim=1, keepdim=True).sqrt() + EPS)


class LPIPS(nn.Module):
    """The LPIPS-VGG distance as a frozen module: ``LPIPS.from_weights(paths)(x, y) → (B,)``.

    Inputs are float images (B, 3, H, W) in [−1, 1], or videos (B, 3, T, H, W): the distance of a video is the mean
    over its frames. The module is differentiable w.r.t. its inputs (a training loss) while its own parameters are
    frozen (``requires_grad=False``, eval mode). A fresh ``LPIPS()`` has random weights (tests only).
    """

    def __init__(self) -> None:
        super().__init__()
        self.net = VGG16Features()
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in LPIPS_CHANNELS)
        self.register_buffer("shift", torch.tensor(LPIPS_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(LPIPS_SCALE).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    @classmethod
    def from_weights(cls, weights: WeightsArg) -> LPIPS:
        """Build it from weight files (one path or several; see the module docstring for the accepted layouts)."""
        model = cls()
        model.load_state_dict(load_lpips_weights(weights))
        return model

    def train(self, mode: bool = True) -> LPIPS:
        """Stays in eval mode whatever is asked (a frozen metric network)."""
        return super().train(False)

    def _check(self, x: Tensor, y: Tensor) -> None:
        if x.shape != y.shape:
            raise ValueError(f"LPIPS needs two inputs of the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
        if x.ndim not in (4, 5) or x.shape[1] != 3:
            raise ValueError(f"LPIPS expects images (B, 3, H, W) or videos (B, 3, T, H, W), got {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"LPIPS expects float pixels in [-1, 1], got {x.dtype}")

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """Per-sample distances (B,) between ``x`` and ``y``."""
        self._check(x, y)
        if x.ndim == 5:
            b, t = x.shape[0], x.shape[2]
            frames = [v.transpose(1, 2).reshape(b * t, *v.shape[1:2], *v.shape[3:]) for v in (x, y)]
            return self.forward(*frames).view(b, t).mean(dim=1)
        both = (torch.cat([x, y]) - self.shift.to(x.dtype)) / self.scale.to(x.dtype)
        total = torch.zeros(x.shape[0], device=x.device, dtype=torch.float32)
        for feats, lin in zip(self.net(both), self.lins):
            fx, fy = _normalize(feats.float()).chunk(2)
            total = total + lin((fx - fy).pow(2).to(lin.weight.dtype)).float().mean(dim=(1, 2, 3))
        return total


# ---------------------------------------------------------------------------------------------------------------------
# Loading user-given weights
# ---------------------------------------------------------------------------------------------------------------------


def _read_file(path: Path) -> Mapping[str, Tensor]:
    """A flat name → tensor mapping from a safetensors or a ``weights_only`` torch file."""
    if not path.is_file():
        raise FileNotFoundError(
            f"LPIPS weights file {path} does not exist (vistok never downloads weights: pass the paths of "
            "torchvision's VGG16 weights and the official LPIPS linear weights, vgg.pth)"
        )
    try:
        if path.suffix == ".safetensors":
            import safetensors.torch

            state = safetensors.torch.load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise WeightsError(f"{path}: not a readable safetensors or weights-only torch file ({e})") from e
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise WeightsError(f"{path}: expected a state dict (names → tensors), got {type(state).__name__}")
    return state


def _map_key(key: str) -> str | None:
    """The :class:`LPIPS` state-dict key for a key of any accepted layout, or None for keys that are not used."""
    key = key.removeprefix("module.")
    if m := _LIN_KEY.search(key):
        return f"lins.{m.group(1)}.weight" if int(m.group(1)) < len(LPIPS_CHANNELS) else None
    if m := _CONV_KEY.search(key):
        index, kind = (m.group(1), m.group(2)) if m.group(1) is not None else (m.group(3), m.group(4))
        return f"net.features.{index}.{kind}"
    return None


def _missing_message(missing: set[str], files: list[Path]) -> str:
    convs = sorted({int(k.split(".")[2]) for k in missing if k.startswith("net.")})
    lins = sorted({int(k.split(".")[1]) for k in missing if k.startswith("lins.")})
    parts = []
    if convs:
        parts.append(
            f"VGG16 convolution weights for features.{{{','.join(map(str, convs))}}} (give torchvision's vgg16 "
            "state dict or its .features state dict)"
        )
    if lins:
        parts.append(
            f"LPIPS linear layers lin{{{','.join(map(str, lins))}}} (give the official LPIPS vgg.pth, keys "
            "lin0.model.1.weight ...)"
        )
    return f"LPIPS weights incomplete in {[str(f) for f in files]}: missing " + "; and ".join(parts)


def _expected_shapes() -> dict[str, tuple[int, ...]]:
    """Every :class:`LPIPS` state-dict key and its shape (without building the network)."""
    shapes: dict[str, tuple[int, ...]] = {}
    for i, cin, cout in VGG16_CONV_LAYERS:
        shapes[f"net.features.{i}.weight"], shapes[f"net.features.{i}.bias"] = (cout, cin, 3, 3), (cout,)
    for k, c in enumerate(LPIPS_CHANNELS):
        shapes[f"lins.{k}.weight"] = (1, c, 1, 1)
    return shapes


def load_lpips_weights(weights: WeightsArg) -> dict[str, Tensor]:
    """Read and merge the given files into an :class:`LPIPS` state dict; raises naming what is missing or wrong."""
    files = [Path(weights)] if isinstance(weights, str | os.PathLike) else [Path(w) for w in weights]
    if not files:
        raise ValueError("no LPIPS weight files given")
    expected = _expected_shapes()
    state: dict[str, Tensor] = {}
    for path in files:
        for key, value in _read_file(path.expanduser()).items():
            name = _map_key(key)
            if name is None or name not in expected:
                continue
            if tuple(value.shape) != expected[name]:
                raise WeightsError(
                    f"{path}: {key} has shape {list(value.shape)}, LPIPS-VGG16 expects {list(expected[name])}"
                )
            state[name] = value.float()
    missing = set(expected) - set(state)
    if missing:
        raise WeightsError(_missing_message(missing, files), missing=sorted(missing))
    return state


@functools.lru_cache(maxsize=4)
def _cached(files: tuple[str, ...], device: str) -> LPIPS:
    return LPIPS.from_weights(list(files)).to(device)


def lpips(x: Tensor, y: Tensor, weights: WeightsArg) -> Tensor:
    """LPIPS distance per sample, (B,), between images (B, 3, H, W) or videos (B, 3, T, H, W) in [−1, 1].

    An evaluation metric: no gradients. ``weights`` are the files of :func:`load_lpips_weights`; the loaded network is
    cached per file set and device (a file changed on disk is re-read only after :func:`lpips_cache_clear`).
    """
    files = (weights,) if isinstance(weights, str | os.PathLike) else tuple(weights)
    key = tuple(str(Path(f).expanduser().resolve()) for f in files)
    with torch.no_grad():
        return _cached(key, str(x.device))(x, y)


def lpips_cache_clear() -> None:
    """Forget the networks :func:`lpips` has loaded."""
    _cached.cache_clear()
