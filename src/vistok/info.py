"""``vistok info``: versions, device and optional extras."""

from __future__ import annotations

import platform

from vistok._optional import has

EXTRAS = {
    "huggingface_hub": "hub",
    "tensorboard": "tensorboard",
    "transformers": "hf",
    "faiss": "faiss",
    "matplotlib": "plots",
    "vector_quantize_pytorch": "bench",
}


def collect_info() -> dict:
    import av
    import numpy
    import PIL
    import torch

    import vistok

    dev = "cpu"
    if torch.cuda.is_available():
        dev = f"cuda ({torch.cuda.device_count()}× {torch.cuda.get_device_name(0)})"
    elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        dev = "mps"
    return {
        "vistok": vistok.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "pillow": PIL.__version__,
        "av": av.__version__,
        "device": dev,
        "cpu_threads": torch.get_num_threads(),
        "extras": {mod: has(mod) for mod in EXTRAS},
    }


def format_info() -> str:
    info = collect_info()
    lines = [f"{k:12s} {v}" for k, v in info.items() if k != "extras"]
    lines.append("extras:")
    for mod, ok in info["extras"].items():
        hint = "installed" if ok else f"missing (pip install 'vistok[{EXTRAS[mod]}]')"
        lines.append(f"  {mod:24s} {hint}")
    return "\n".join(lines)
