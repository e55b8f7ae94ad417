"""MAGVIT-v2 tokenizer: causality, image = first frame, chunked = one-shot, save/load, overfit, sizes and errors."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

import vistok
from vistok.hub import config_from_dict, config_to_dict
from vistok.registry import create_model, list_models
from vistok.tokenizers import MagvitConfig, MagvitTokenizer, StreamState, TokenizerOutput
from vistok.tokenizers.magvit2 import (
    AdaptiveGroupNorm,
    depth_to_space,
    expand_time,
    group_norm_per_frame,
)

PRESETS = ["magvit2-tiny", "magvit2-small", "magvit2-video", "magvit2-image"]
TINY_SIZE = 16  # 16×16 pixels → 2×2 tokens with the tiny preset's 8× spatial factor


def randomize_conditioning(model: MagvitTokenizer, std: float = 0.1) -> MagvitTokenizer:
    """The adaptive norms start as plain GroupNorms (zero γ, β convs); give them weights so the latent path counts."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, AdaptiveGroupNorm):
                for p in module.to_scale_shift.parameters():
                    p.copy_(torch.randn(p.shape, generator=gen) * std)
    return model


@pytest.fixture(scope="module")
def tiny() -> MagvitTokenizer:
    torch.manual_seed(0)
    return randomize_conditioning(create_model("magvit2-tiny")).eval()


def video(frames: int, size: int = TINY_SIZE, batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, frames, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB for pixels in [-1, 1] (peak-to-peak 2)."""
    return 10 * math.log10(4 / F.mse_loss(a, b).item())


# ----------------------------------------------------------------------------------------------- helpers


def test_depth_to_space_matches_pixel_shuffle_and_interleaves_time():
    x = torch.randn(2, 3 * 4, 2, 3, 5)
    ref = torch.stack([F.pixel_shuffle(x[:, :, t], 2) for t in range(2)], dim=2)
    torch.testing.assert_close(depth_to_space(x, 1, 2), ref, rtol=0, atol=0)
    y = torch.tensor([[0.0, 2, 4], [1, 3, 5]]).view(1, 2, 3, 1, 1)  # channel dt of frame t holds 2t + dt
    assert depth_to_space(y, 2, 1).flatten().tolist() == [0, 1, 2, 3, 4, 5]  # ... and lands in frame 2t + dt


def test_expand_time_maps_frame_t_to_latent_ceil_t_over_u():
    q = torch.arange(4).float().view(1, 1, 4, 1, 1)
    first = expand_time(q, 4, first=True).flatten().tolist()
    assert first == [math.ceil(t / 4) for t in range(1 + 4 * 3)]
    assert expand_time(q, 2, first=False).flatten().tolist() == [0, 0, 1, 1, 2, 2, 3, 3]


def test_group_norm_per_frame_never_mixes_time():
    x = torch.randn(2, 8, 5, 4, 4)
    y = group_norm_per_frame(x, 4)
    ref = torch.stack([F.group_norm(x[:, :, t], 4, eps=1e-6) for t in range(5)], dim=2)
    torch.testing.assert_close(y, ref)
    x2 = x.clone()
    x2[:, :, 3] += torch.randn(2, 8, 4, 4)
    changed = (group_norm_per_frame(x2, 4) - y).abs().amax(dim=(0, 1, 3, 4)) > 1e-5
    assert changed.tolist() == [False, False, False, True, False]


# ----------------------------------------------------------------------------------------------- presets and config


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_builds(name):
    with torch.device("meta"):  # no memory, no init cost: the paper-size presets build instantly
        model = create_model(name)
    config = model.config
    params = sum(p.numel() for p in model.parameters())
    print(f"{name}: {params / 1e6:.2f} M parameters")
    expected = {
        "magvit2-tiny": (8, 4, 2**10, 0.5e6, 2e6),
        "magvit2-small": (8, 4, 2**14, 10e6, 80e6),
        "magvit2-video": (8, 4, 2**18, 150e6, 500e6),
        "magvit2-image": (16, 1, 2**18, 50e6, 200e6),
    }[name]
    assert (model.spatial_factor, model.temporal_factor, model.codebook_size) == expected[:3]
    assert expected[3] < params < expected[4]
    assert model.latent_channels == config.latent_channels == round(math.log2(model.codebook_size))
    assert MagvitConfig.from_name(name) == config


@pytest.mark.parametrize("name", ["magvit2-tiny", "magvit2-small"])
def test_small_presets_run_at_a_tiny_size(name):
    torch.manual_seed(0)
    model = create_model(name).eval()
    with torch.no_grad():
        out = model(video(5, size=16, batch=1))
    assert out.recon.shape == (1, 3, 5, 16, 16) and out.indices.shape == (1, 2, 2, 2)


@pytest.mark.slow
@pytest.mark.parametrize(("name", "shape"), [("magvit2-video", (1, 3, 5, 16, 16)), ("magvit2-image", (1, 3, 32, 32))])
def test_paper_presets_run_at_a_tiny_size(name, shape):
    model = create_model(name).eval()
    with torch.no_grad():
        out = model(torch.rand(shape) * 2 - 1)
    assert out.recon.shape == shape


def test_registry_and_config_json():
    assert set(PRESETS) <= set(list_models("magvit2-*"))
    model = create_model("magvit2-tiny", latent_channels=12)
    assert isinstance(model, MagvitTokenizer) and model.codebook_size == 2**12
    config = MagvitConfig.from_name("magvit2-tiny", quantizer="fsq", quantizer_kwargs={"levels": [8, 5, 5, 5]})
    data = json.loads(json.dumps(config_to_dict(config)))
    assert "spatial_factor" not in data  # derived fields are recomputed, not stored
    assert config_from_dict(MagvitConfig, data) == config


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"temporal_downsample": (True,)}, "one flag per level transition"),
        ({"temporal_kernel_size": 1}, "temporal_kernel_size >= 2"),
        ({"quantizer": "rvq"}, "quantizer must be one of"),
        ({"base_channels": 0}, "must be positive"),
    ],
)
def test_config_errors(overrides, match):
    with pytest.raises(ValueError, match=match):
        MagvitConfig.from_name("magvit2-tiny", **overrides)


def test_bad_quantizer_kwargs_name_the_quantizer():
    with pytest.raises(ValueError, match="do not fit FSQ"):
        create_model("magvit2-tiny", quantizer="fsq", quantizer_kwargs={"levelz": [5, 5]})


# ----------------------------------------------------------------------------------------------- causality


def test_encoder_is_causal(tiny):
    """Latent frame j sees frames ≤ 4j: changing frame t leaves latent frames j < ⌈t/4⌉ bit-identical."""
    x = video(9, batch=1)
    with torch.no_grad():
        z = tiny.encode_latents(x)
        ids = tiny.quantize(z).indices
        for t in range(9):
            x2 = x.clone()
            x2[:, :, t] = -x2[:, :, t]
            z2 = tiny.encode_latents(x2)
            ids2 = tiny.quantize(z2).indices
            first_affected = math.ceil(t / 4)
            assert torch.equal(z2[:, :, :first_affected], z[:, :, :first_affected])
            assert torch.equal(ids2[:, :first_affected], ids[:, :first_affected])
            assert not torch.equal(z2[:, :, first_affected], z[:, :, first_affected])  # it does see frame t


def test_decoder_is_causal(tiny):
    """Pixel frame t comes from latent frame ⌈t/4⌉: changing latent frame j ≥ 1 leaves frames < 4j − 3 unchanged."""
    ids = torch.randint(0, tiny.codebook_size, (1, 3, 2, 2), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = tiny.decode(ids)
        for j in (1, 2):
            ids2 = ids.clone()
            ids2[:, j] = (ids2[:, j] + 1 + torch.arange(4).view(1, 2, 2)) % tiny.codebook_size
            y2 = tiny.decode(ids2)
            first_affected = 4 * j - 3
            assert torch.equal(y2[:, :, :first_affected], y[:, :, :first_affected])
            assert (y2[:, :, first_affected] - y[:, :, first_affected]).abs().max() > 1e-3


def test_image_tokens_are_the_first_frame_tokens(tiny):
    x = video(9, batch=3, seed=1)
    with torch.no_grad():
        ids, image_ids = tiny.encode(x), tiny.encode(x[:, :, 0])
        assert image_ids.shape == (3, 2, 2) and torch.equal(image_ids, ids[:, 0])
        torch.testing.assert_close(tiny.encode_latents(x[:, :, 0]), tiny.encode_latents(x)[:, :, 0])
        frames, image = tiny.decode(ids), tiny.decode(image_ids)
    assert image.shape == (3, 3, TINY_SIZE, TINY_SIZE)
    torch.testing.assert_close(image, frames[:, :, 0], rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------------------------- chunked streaming


@pytest.mark.parametrize("chunk_frames", [1, 2, 3, 4, 5, 8, 13])
def test_chunked_encode_equals_one_shot(tiny, chunk_frames):
    x = video(13)
    with torch.no_grad():
        assert torch.equal(tiny.encode(x, chunk_frames=chunk_frames), tiny.encode(x))


@pytest.mark.parametrize("chunk_frames", [1, 2, 3])
def test_chunked_decode_equals_one_shot(tiny, chunk_frames):
    ids = torch.randint(0, tiny.codebook_size, (2, 4, 2, 2), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        one_shot, chunked = tiny.decode(ids), tiny.decode(ids, chunk_frames=chunk_frames)
    assert chunked.shape == one_shot.shape == (2, 3, 13, TINY_SIZE, TINY_SIZE)
    torch.testing.assert_close(chunked, one_shot, rtol=0, atol=1e-5)


def test_streaming_with_uneven_chunks_and_bounded_caches(tiny):
    x = video(17, batch=1)
    enc, dec, ids, frames = StreamState(), StreamState(), [], []
    with torch.no_grad():
        start = 0
        for n in (1, 3, 2, 6, 5):  # 17 frames in uneven pieces
            new_ids = tiny.encode_chunk(x[:, :, start : start + n], enc)
            start += n
            ids.append(new_ids)
            if new_ids.shape[1]:
                frames.append(tiny.decode_chunk(new_ids, dec))
        ids, frames = torch.cat(ids, dim=1), torch.cat(frames, dim=2)
        assert torch.equal(ids, tiny.encode(x))
        torch.testing.assert_close(frames, tiny.decode(ids), rtol=0, atol=1e-5)
    # Memory is bounded by the chunk: no cache holds more than (kt − 1) + (stride − 1) = 3 frames.
    assert max(cache.shape[2] for state in (enc, dec) for cache in state.caches.values()) <= 3


# ----------------------------------------------------------------------------------------------- round trips


def test_save_load_round_trip(tiny, tmp_path):
    x = video(5)
    tiny.save_pretrained(tmp_path / "magvit")
    loaded = MagvitTokenizer.from_pretrained(tmp_path / "magvit")
    generic = vistok.from_pretrained(tmp_path / "magvit")
    assert loaded.config == tiny.config and isinstance(generic, MagvitTokenizer)
    with torch.no_grad():
        ids = tiny.encode(x)
        assert torch.equal(loaded.encode(x), ids) and torch.equal(generic.encode(x), ids)
        assert torch.equal(loaded.decode(ids), tiny.decode(ids))


@pytest.mark.parametrize(
    ("quantizer", "kwargs", "codebook_size"),
    [("lfq", {}, 2**10), ("fsq", {"levels": [8, 5, 5, 5]}, 1000), ("vq", {"codebook_size": 64}, 64)],
)
def test_pluggable_quantizers_decode_what_forward_reconstructs(quantizer, kwargs, codebook_size):
    torch.manual_seed(0)
    model = create_model("magvit2-tiny", quantizer=quantizer, quantizer_kwargs=kwargs).eval()
    x = video(5, batch=1)
    with torch.no_grad():
        out, ids = model(x), model.encode(x)
        assert model.codebook_size == codebook_size and torch.equal(out.indices, ids)
        assert int(ids.min()) >= 0 and int(ids.max()) < codebook_size
        torch.testing.assert_close(model.decode(ids), out.recon, rtol=0, atol=1e-5)


def test_forward_output_and_gradients(tiny):
    model = create_model("magvit2-tiny").train()
    x = video(5, batch=1)
    out = model(x)
    assert isinstance(out, TokenizerOutput) and out.recon.shape == x.shape and out.indices.shape == (1, 2, 2, 2)
    assert out.quant_loss.ndim == 0 and {"commit", "usage"} <= set(out.metrics)
    (F.mse_loss(out.recon, x) + out.quant_loss).backward()
    assert model.encoder.conv_in.conv.weight.grad.abs().sum() > 0  # straight-through to the encoder
    assert model.last_layer_weight() is model.decoder.conv_out.conv.weight
    image_out = model(x[:, :, 0])
    assert image_out.recon.shape == (1, 3, TINY_SIZE, TINY_SIZE) and image_out.indices.shape == (1, 2, 2)


# ----------------------------------------------------------------------------------------------- sizes and errors


def test_token_grid(tiny):
    assert tiny.token_grid((17, 64, 64)) == (5, 8, 8)
    assert tiny.token_grid((64, 48)) == (8, 6)
    assert tiny.token_grid((6, 30, 33), pad=True) == (3, 4, 5)
    with torch.no_grad():
        assert tuple(tiny.encode(video(9, size=24, batch=1)).shape[1:]) == tiny.token_grid((9, 24, 24))


def test_size_errors_name_expected_and_actual(tiny):
    with pytest.raises(ValueError, match=r"multiples of the spatial factor 8, got 20×16"):
        tiny.encode(torch.zeros(1, 3, 20, 16))
    with pytest.raises(ValueError, match=r"expected 1 \+ 4·k frames \(1, 5, 9, ...\), got 6"):
        tiny.encode(torch.zeros(1, 3, 6, 16, 16))
    with pytest.raises(ValueError, match=r"expected an image \(B, 3, H, W\) or a video \(B, 3, T, H, W\), got"):
        tiny.encode(torch.zeros(1, 1, 16, 16))
    with pytest.raises(ValueError, match="expected an image"):
        tiny(torch.zeros(3, 16, 16))
    with pytest.raises(TypeError, match=r"expected float pixels in \[-1, 1\], got torch.uint8"):
        tiny.encode(torch.zeros(1, 3, 16, 16, dtype=torch.uint8))
    with pytest.raises(ValueError, match="multiples of the spatial factor"):
        tiny.token_grid((17, 20, 16))


def test_id_and_option_errors(tiny):
    with pytest.raises(TypeError, match=r"expected integer token ids, got torch\.float32"):
        tiny.decode(torch.zeros(1, 2, 2))
    with pytest.raises(ValueError, match=r"token ids must be in \[0, 1024\), got range \[0, 1024\]"):
        tiny.decode(torch.tensor([[[0, 1024], [3, 4]]]))
    with pytest.raises(ValueError, match="expected image ids"):
        tiny.decode(torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="chunk_frames must be a positive int, got 0"):
        tiny.encode(video(5), chunk_frames=0)
    with pytest.raises(ValueError, match="no larger than"):
        tiny.decode(torch.zeros(1, 2, 2, dtype=torch.long), size=(17, 16))
    with pytest.raises(ValueError, match="expected latents"):
        tiny.decode_latents(torch.zeros(1, 3, 2, 2))


def test_pad_replicates_and_crops_back(tiny):
    x = video(6, size=TINY_SIZE, batch=1)[..., :13, :11]  # 6 frames, 13×11 pixels
    with torch.no_grad():
        ids = tiny.encode(x, pad=True)
        assert ids.shape == (1, 3, 2, 2)
        padded = F.pad(x, (0, 5, 0, 3, 0, 3), mode="replicate")  # → 9 frames, 16×16
        assert torch.equal(ids, tiny.encode(padded))
        assert torch.equal(tiny.encode(x[:, :, 0], pad=True), ids[:, 0])
        y = tiny.decode(ids, size=(6, 13, 11))
        assert y.shape == x.shape
        torch.testing.assert_close(y, tiny.decode(ids)[:, :, :6, :13, :11], rtol=0, atol=0)
        out = tiny(x, pad=True)
        assert out.recon.shape == x.shape and torch.equal(out.indices, ids)
        torch.testing.assert_close(out.recon, y, rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------------------------- overfitting


@pytest.fixture
def one_thread():
    """Tiny convolutions run faster on one thread than on two contended ones (and the result is reproducible)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def overfit(steps: int, warmup: int, cosine: bool, **overrides) -> tuple[float, float]:
    """Train the tiny preset on 4 fixed 32×32 photos (MSE + quantizer loss, Adam 1e-3); PSNR before and after (dB)."""
    from vistok.data import SamplePhotos

    photos = SamplePhotos(size=32, split="train", crop="center")
    x = torch.stack([photos[i]["pixels"] for i in range(4)])
    torch.manual_seed(0)
    model = create_model("magvit2-tiny", **overrides)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.99))
    with torch.no_grad():
        before = psnr(model.eval().decode(model.encode(x)), x)
    model.train()
    for step in range(steps):
        scale = min(1.0, (step + 1) / warmup) * (0.5 * (1 + math.cos(math.pi * step / steps)) if cosine else 1.0)
        for group in opt.param_groups:
            group["lr"] = 1e-3 * scale
        out = model(x)
        loss = F.mse_loss(out.recon, x) + out.quant_loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return before, psnr(model.eval().decode(model.encode(x)), x)


def test_tiny_overfits_four_photos_quickly(one_thread):
    """150 steps, LFQ without the entropy penalty (a batch-statistics regularizer that fights memorization)."""
    before, after = overfit(150, warmup=25, cosine=False, quantizer_kwargs={"entropy_weight": 0.0})
    print(f"overfit (150 steps, no entropy penalty): {before:.1f} dB → {after:.1f} dB")
    assert before < 15 and after > 26


@pytest.mark.slow
def test_tiny_overfits_four_photos_with_the_default_quantizer(one_thread):
    """400 steps, the preset as is (LFQ with its annealed entropy penalty), cosine decay."""
    before, after = overfit(400, warmup=25, cosine=True)
    print(f"overfit (400 steps, default LFQ): {before:.1f} dB → {after:.1f} dB")
    assert after > 27
