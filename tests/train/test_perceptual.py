"""LPIPS with random weights saved to temporary files: invariants, a hand-computed first layer, key layouts, errors."""

import functools

import pytest
import safetensors.torch
import torch
import torch.nn.functional as F

from vistok.hub import WeightsError
from vistok.train.perceptual import (
    LPIPS,
    LPIPS_CHANNELS,
    VGG16_CONV_LAYERS,
    VGG16Features,
    load_lpips_weights,
    lpips,
    lpips_cache_clear,
)


@functools.cache
def _vgg_state() -> dict[str, torch.Tensor]:
    """torchvision ``vgg16().features`` keys (``0.weight`` …), random weights (shared: do not modify)."""
    torch.manual_seed(0)
    return VGG16Features().features.state_dict()


def _lin_state(seed: int = 1, zero_but: int | None = None) -> dict[str, torch.Tensor]:
    """Official LPIPS ``vgg.pth`` keys (``lin0.model.1.weight`` …), positive random weights."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for k, c in enumerate(LPIPS_CHANNELS):
        w = torch.rand(1, c, 1, 1, generator=g)
        state[f"lin{k}.model.1.weight"] = w if zero_but in (None, k) else torch.zeros_like(w)
    return state


@pytest.fixture(scope="module")
def weight_files(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("lpips")
    vgg, lin = tmp_path / "vgg16_features.pth", tmp_path / "lpips_vgg.pth"
    torch.save(_vgg_state(), vgg)
    torch.save(_lin_state(), lin)
    return [vgg, lin]


def _images(n: int = 2, size: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g) * 2 - 1


def test_identity_symmetry_and_positivity(weight_files):
    net = LPIPS.from_weights(weight_files)
    x, y = _images(seed=0), _images(seed=1)
    d_xx, d_xy, d_yx = net(x, x), net(x, y), net(y, x)
    assert d_xy.shape == (2,)
    assert torch.equal(d_xx, torch.zeros(2))
    torch.testing.assert_close(d_xy, d_yx)
    assert (d_xy > 0).all()
    assert not any(p.requires_grad for p in net.parameters()) and not net.train().training


def test_first_layer_by_hand(tmp_path):
    """With only lin0 non-zero the distance is the relu1_2 term, computed here from the two convs directly."""
    vgg, lin = _vgg_state(), _lin_state(zero_but=0)
    path = tmp_path / "both.pth"
    torch.save(dict(vgg) | lin, path)
    x, y = _images(seed=0), _images(seed=1)
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)

    def relu1_2(v: torch.Tensor) -> torch.Tensor:
        h = F.relu(F.conv2d((v - shift) / scale, vgg["0.weight"], vgg["0.bias"], padding=1))
        h = F.relu(F.conv2d(h, vgg["2.weight"], vgg["2.bias"], padding=1))
        return h / (h.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)

    diff = (relu1_2(x) - relu1_2(y)).pow(2)
    expected = (diff * lin["lin0.model.1.weight"]).sum(1).mean(dim=(1, 2))
    torch.testing.assert_close(LPIPS.from_weights(path)(x, y), expected, rtol=1e-4, atol=1e-6)


def test_key_layouts_give_the_same_network(tmp_path, weight_files):
    vgg, lin = _vgg_state(), _lin_state()
    x, y = _images(seed=0), _images(seed=1)
    reference = LPIPS.from_weights(weight_files)(x, y)
    torchvision_full = {f"features.{k}": v for k, v in vgg.items()} | {"classifier.0.weight": torch.zeros(4, 4)}
    slices = {0: 1, 2: 1, 5: 2, 7: 2, 10: 3, 12: 3, 14: 3, 17: 4, 19: 4, 21: 4, 24: 5, 26: 5, 28: 5}
    lpips_pkg = {f"net.slice{slices[int(k.split('.')[0])]}.{k}": v for k, v in vgg.items()}
    bare_lin = {f"lin{k}.weight": lin[f"lin{k}.model.1.weight"] for k in range(5)}
    layouts = {
        "torchvision.pth": torchvision_full,
        "lpips_package.safetensors": lpips_pkg | bare_lin,
    }
    for name, state in layouts.items():
        path = tmp_path / name
        if name.endswith(".safetensors"):
            safetensors.torch.save_file({k: v.contiguous() for k, v in state.items()}, path)
        else:
            torch.save(state, path)
        files = [path] if "lin0.weight" in state else [path, weight_files[1]]
        torch.testing.assert_close(LPIPS.from_weights(files)(x, y), reference, msg=name)
    assert len(load_lpips_weights(weight_files)) == 2 * len(VGG16_CONV_LAYERS) + len(LPIPS_CHANNELS)


def test_missing_and_bad_files_raise_clear_errors(tmp_path, weight_files):
    vgg, lin = weight_files
    with pytest.raises(FileNotFoundError, match=r"never downloads.*|does not exist"):
        LPIPS.from_weights(tmp_path / "nope.pth")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match=r"garbage\.pth"):
        LPIPS.from_weights([garbage, lin])
    with pytest.raises(WeightsError, match=r"LPIPS linear layers lin\{0,1,2,3,4\}.*vgg.pth"):
        LPIPS.from_weights(vgg)
    with pytest.raises(WeightsError, match=r"VGG16 convolution weights for features\.\{0,2,5"):
        LPIPS.from_weights(lin)
    bad = tmp_path / "bad_shape.pth"
    torch.save(_lin_state() | {"lin0.model.1.weight": torch.ones(1, 32, 1, 1)}, bad)
    with pytest.raises(WeightsError, match=r"lin0.model.1.weight has shape \[1, 32, 1, 1\]"):
        LPIPS.from_weights([vgg, bad])


def test_metric_function_videos_and_gradients(weight_files):
    lpips_cache_clear()
    net = LPIPS.from_weights(weight_files)
    x, y = _images(seed=0), _images(seed=1)
    torch.testing.assert_close(lpips(x, y, weights=weight_files), net(x, y))
    video_x = torch.stack([x, y, x], dim=2)  # (B, 3, T=3, H, W)
    video_y = torch.stack([y, y, y], dim=2)
    expected = (net(x, y) + net(y, y) + net(x, y)) / 3
    torch.testing.assert_close(lpips(video_x, video_y, weights=weight_files), expected)
    xg = x.clone().requires_grad_(True)
    net(xg, y).sum().backward()
    assert torch.isfinite(xg.grad).all() and xg.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="same shape"):
        net(x, y[:1])
