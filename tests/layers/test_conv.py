"""CausalConv3d against a tap-by-tap loop reference, causality, frame counts, and chunked streaming."""

import pytest
import torch
import torch.nn.functional as F

from vistok.layers import CausalConv3d


def naive_causal_conv3d(conv: CausalConv3d, x: torch.Tensor, kernel, stride, dilation) -> torch.Tensor:
    """Explicit padding by index lists, then y = bias + Σ over kernel taps (a, p, q) of W[:, :, a, p, q] · x-slice."""
    (kt, kh, kw), (st, sh, sw), (dt, dh, dw) = kernel, stride, dilation
    x = x.double()
    t_len, h_len, w_len = x.shape[2:]
    first = x[:, :, :1] if conv.time_padding_mode == "replicate" else torch.zeros_like(x[:, :, :1])
    x = torch.cat([first] * ((kt - 1) * dt) + [x], dim=2)  # front padding only
    ph, pw = (kh - 1) * dh, (kw - 1) * dw
    rows = torch.arange(-(ph // 2), h_len + ph - ph // 2)
    cols = torch.arange(-(pw // 2), w_len + pw - pw // 2)
    if conv.padding_mode == "replicate":
        x = x[:, :, :, rows.clamp(0, h_len - 1)][:, :, :, :, cols.clamp(0, w_len - 1)]
    else:
        padded = torch.zeros(*x.shape[:3], len(rows), len(cols), dtype=x.dtype)
        padded[:, :, :, ph // 2 : ph // 2 + h_len, pw // 2 : pw // 2 + w_len] = x
        x = padded
    t_out, h_out, w_out = 1 + (t_len - 1) // st, 1 + (h_len - 1) // sh, 1 + (w_len - 1) // sw
    weight = conv.conv.weight.detach().double()
    y = torch.zeros(x.shape[0], weight.shape[0], t_out, h_out, w_out, dtype=torch.float64)
    for a in range(kt):
        for p in range(kh):
            for q in range(kw):
                patch = x[
                    :,
                    :,
                    a * dt : a * dt + st * (t_out - 1) + 1 : st,
                    p * dh : p * dh + sh * (h_out - 1) + 1 : sh,
                    q * dw : q * dw + sw * (w_out - 1) + 1 : sw,
                ]
                y += torch.einsum("oc,bcthw->bothw", weight[:, :, a, p, q], patch)
    if conv.conv.bias is not None:
        y += conv.conv.bias.detach().double().view(1, -1, 1, 1, 1)
    return y


CASES = [
    # kernel, stride, dilation, padding_mode, time_padding_mode
    ((3, 3, 3), (1, 1, 1), (1, 1, 1), "zeros", "replicate"),
    ((3, 3, 3), (1, 1, 1), (1, 1, 1), "replicate", "zeros"),
    ((2, 4, 3), (1, 1, 1), (1, 1, 1), "replicate", "replicate"),  # even kernels: asymmetric spatial padding
    ((3, 3, 3), (2, 2, 2), (1, 1, 1), "zeros", "replicate"),
    ((4, 3, 3), (1, 2, 1), (2, 1, 2), "zeros", "replicate"),
    ((1, 3, 3), (1, 1, 1), (1, 1, 1), "zeros", "replicate"),  # no temporal padding at all
]


@pytest.mark.parametrize(("kernel", "stride", "dilation", "padding_mode", "time_padding_mode"), CASES)
def test_matches_naive_reference(kernel, stride, dilation, padding_mode, time_padding_mode):
    torch.manual_seed(0)
    conv = CausalConv3d(2, 3, kernel, stride, dilation, padding_mode=padding_mode, time_padding_mode=time_padding_mode)
    conv = conv.double()
    x = torch.randn(2, 2, 7, 6, 5, dtype=torch.float64)
    y = conv(x)
    ref = naive_causal_conv3d(conv, x, kernel, stride, dilation)
    assert y.shape == ref.shape
    torch.testing.assert_close(y, ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("stride", [1, 2])
def test_causality_perturbing_a_frame_changes_no_earlier_output(stride):
    torch.manual_seed(0)
    conv = CausalConv3d(2, 2, 3, stride=(stride, 1, 1)).double()
    x = torch.randn(1, 2, 9, 4, 4, dtype=torch.float64)
    y = conv(x)
    for t in range(9):
        x2 = x.clone()
        x2[:, :, t] += 1.0
        changed = (conv(x2) - y).abs().sum(dim=(0, 1, 3, 4)) > 0  # per output frame
        out_times = torch.arange(y.shape[2]) * stride  # output j ends at input frame j·stride
        assert not changed[out_times < t].any()
        assert changed[out_times >= t][:1].all()  # the first window that reaches frame t does see it


def test_image_is_a_one_frame_video():
    torch.manual_seed(0)
    conv = CausalConv3d(3, 4, 3, stride=(2, 2, 2))
    video = torch.randn(1, 3, 5, 8, 8)
    image_out = conv(video[:, :, :1])
    assert image_out.shape == (1, 4, 1, 4, 4)
    torch.testing.assert_close(image_out, conv(video)[:, :, :1], rtol=0, atol=1e-6)


@pytest.mark.parametrize("k", [0, 1, 4])
def test_magvit_frame_counts(k):
    """1 + s·k frames → 1 + k frames; 17 → 9 → 5 through two stride-2 layers, or in one stride-4 layer."""
    x = torch.randn(1, 1, 1 + 4 * k, 4, 4)
    down2 = CausalConv3d(1, 1, 3, stride=(2, 1, 1))
    assert down2(down2(x)).shape[2] == 1 + k
    assert CausalConv3d(1, 1, 4, stride=(4, 1, 1))(x).shape[2] == 1 + k
    assert down2.num_output_frames(1 + 4 * k) == 1 + 2 * k


def test_spatial_output_is_ceil_of_size_over_stride():
    conv = CausalConv3d(1, 1, (1, 4, 3), stride=(1, 2, 3))
    assert conv(torch.randn(1, 1, 2, 7, 10)).shape == (1, 1, 2, 4, 4)


def run_in_chunks(conv: CausalConv3d, x: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    outs, cache, start = [], None, 0
    for n in sizes:
        y, cache = conv.forward_chunk(x[:, :, start : start + n], cache)
        outs.append(y)
        start += n
    assert start == x.shape[2]
    return torch.cat(outs, dim=2)


@pytest.mark.parametrize(
    ("kernel", "stride", "dilation", "time_padding_mode"),
    [
        (3, 1, 1, "replicate"),
        (3, 1, 1, "zeros"),
        ((4, 3, 3), 1, (2, 1, 1), "replicate"),  # 6 cached frames, longer than some chunks
        (1, 1, 1, "replicate"),  # empty cache
        (3, (2, 2, 2), 1, "replicate"),  # temporal stride 2
        ((4, 3, 3), (3, 1, 1), 1, "zeros"),  # temporal stride 3
    ],
)
@pytest.mark.parametrize("sizes", [[1] * 11, [5, 6], [2, 1, 3, 1, 4], [11]])
def test_chunked_equals_one_shot(kernel, stride, dilation, time_padding_mode, sizes):
    torch.manual_seed(0)
    conv = CausalConv3d(2, 3, kernel, stride, dilation, time_padding_mode=time_padding_mode).double()
    x = torch.randn(1, 2, 11, 4, 4, dtype=torch.float64)
    torch.testing.assert_close(run_in_chunks(conv, x, sizes), conv(x), rtol=1e-12, atol=1e-12)


def test_stride_1_cache_is_the_last_padded_frames():
    conv = CausalConv3d(1, 1, (3, 1, 1), dilation=(2, 1, 1))
    x = torch.randn(1, 1, 6, 2, 2)
    _, cache = conv.forward_chunk(x[:, :, :2])
    assert cache.shape[2] == 4 and torch.equal(cache[:, :, 2:], x[:, :, :2])
    assert torch.equal(cache[:, :, :2], x[:, :, :1].expand(-1, -1, 2, -1, -1))  # replicated first frame


def test_short_strided_chunk_gives_no_frames_and_keeps_them():
    conv = CausalConv3d(1, 2, 3, stride=2)
    x = torch.randn(1, 1, 2, 6, 6)
    y0, cache = conv.forward_chunk(x[:, :, :1])  # output 0
    y1, cache = conv.forward_chunk(x[:, :, 1:2], cache)  # output 1 needs input frame 2: nothing yet
    assert y0.shape == (1, 2, 1, 3, 3) and y1.shape == (1, 2, 0, 3, 3) and cache.shape[2] == 2


def test_clear_errors():
    with pytest.raises(ValueError, match="chunked processing needs temporal stride"):
        CausalConv3d(1, 1, (1, 3, 3), stride=(2, 1, 1)).forward_chunk(torch.randn(1, 1, 3, 4, 4))
    with pytest.raises(ValueError, match="padding_mode"):
        CausalConv3d(1, 1, 3, padding_mode="reflect")
    with pytest.raises(ValueError, match="time_padding_mode"):
        CausalConv3d(1, 1, 3, time_padding_mode="circular")
    with pytest.raises(ValueError, match="kernel_size"):
        CausalConv3d(1, 1, (3, 3))
    with pytest.raises(ValueError, match=r"expected input \(B, 2, T, H, W\)"):
        CausalConv3d(2, 1, 3)(torch.randn(1, 3, 2, 4, 4))


@pytest.mark.parametrize("time_padding_mode", ["replicate", "zeros"])
@pytest.mark.parametrize("stride", [1, 2])
def test_image_output_is_bit_identical_to_the_first_frame_of_a_video(time_padding_mode, stride):
    torch.manual_seed(0)
    conv = CausalConv3d(3, 5, 3, stride=(stride, 1, 1), time_padding_mode=time_padding_mode)
    video = torch.randn(2, 3, 5, 6, 7)
    image_out = conv(video[:, :, :1])
    assert image_out.shape[2] == 1
    assert torch.equal(image_out, conv(video)[:, :, :1])
    # and the 2-D path is the same maths as the padded 3-D convolution
    reference = conv.conv(F.pad(conv._pad_front(video[:, :, :1]), (*conv.space_pad, 0, 0)))
    torch.testing.assert_close(image_out, reference, rtol=1e-5, atol=1e-5)
