"""Tests of the VQGAN tokenizer: presets, save/load, frame-by-frame video, same path for encode/decode and forward,
padding, errors, pluggable quantizers, and a tiny overfit against the mean-colour baseline."""

from __future__ import annotations

import math
import re

import pytest
import torch

from vistok.data import SamplePhotos
from vistok.hub import from_pretrained
from vistok.quantizers import FSQ, LFQ, VectorQuantizer
from vistok.registry import create_model, list_models
from vistok.tokenizers.magvit2 import TokenizerOutput
from vistok.tokenizers.vqgan import VQGANConfig, VQGANTokenizer

PRESETS = ["vqgan-lvm", "vqgan-tiny", "vqgan-tiny-f8"]
# name → (spatial factor, codebook size, parameter range)
EXPECTED = {
    "vqgan-tiny": (16, 1024, (0.5e6, 2e6)),
    "vqgan-tiny-f8": (8, 1024, (0.5e6, 2e6)),
    "vqgan-lvm": (16, 8192, (70e6, 75e6)),  # taming's f16 VQGAN: ~29 M encoder + ~42 M decoder
}


def tiny(name: str = "vqgan-tiny", seed: int = 0, **overrides) -> VQGANTokenizer:
    torch.manual_seed(seed)
    return create_model(name, **overrides).eval()


def pixels(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB for pixels in [-1, 1] (peak-to-peak 2)."""
    return 10 * math.log10(4 / float(((a - b) ** 2).mean()))


# ---------------------------------------------------------------------------------------------------------------------
# Presets and config
# ---------------------------------------------------------------------------------------------------------------------


def test_presets_registered():
    assert list_models("vqgan*") == PRESETS
    assert VQGANConfig.preset_names() == PRESETS


@pytest.mark.parametrize("name", PRESETS)
def test_preset_constructs_and_runs_32px(name):
    model = tiny(name)
    factor, codes, (low, high) = EXPECTED[name]
    assert isinstance(model, VQGANTokenizer) and model.model_type == "vqgan"
    assert (model.spatial_factor, model.temporal_factor, model.codebook_size) == (factor, 1, codes)
    assert model.latent_channels == model.config.z_channels
    assert low < sum(p.numel() for p in model.parameters()) < high
    with torch.no_grad():
        out = model(pixels(1, 3, 32, 32))
    assert isinstance(out, TokenizerOutput)
    assert out.recon.shape == (1, 3, 32, 32) and out.indices.shape == (1, 32 // factor, 32 // factor)
    assert torch.isfinite(out.recon).all() and out.indices.dtype == torch.int64


def test_lvm_preset_is_the_lvm_tokenizer():
    """f = 16, 8,192 LlamaGen-style codes (8-dim, l2-normalized, β = 0.25): 256² → 16×16 = 256 tokens."""
    model = create_model("vqgan-lvm")
    config = model.config
    assert (config.base_channels, config.channel_multipliers, config.num_res_blocks) == (128, (1, 1, 2, 2, 4), 2)
    assert config.attn_levels == (4,)  # the 16×16 level for a 256² input
    assert model.token_grid((256, 256)) == (16, 16) and math.prod(model.token_grid((256, 256))) == 256
    assert model.token_grid((8, 256, 256)) == (8, 16, 16)
    q = model.quantizer
    assert isinstance(q, VectorQuantizer)
    assert (q.codebook_size, q.dim, q.code_dim, q.l2_normalize, q.beta) == (8192, 256, 8, True, 0.25)
    assert len(model.encoder.down[4].attn) == 2 and len(model.decoder.up[4].attn) == 3
    assert not any(level.attn for level in [*model.encoder.down[:4], *model.decoder.up[:4]])


def test_parameter_names_and_shapes_follow_taming():
    """Spot checks of taming's state-dict keys for its f16 VQGAN (ch 128, mult (1, 1, 2, 2, 4), z 256)."""
    shapes = {k: tuple(v.shape) for k, v in create_model("vqgan-lvm").state_dict().items()}
    expected = {
        "encoder.conv_in.weight": (128, 3, 3, 3),
        "encoder.down.0.block.0.conv1.weight": (128, 128, 3, 3),
        "encoder.down.0.downsample.conv.weight": (128, 128, 3, 3),
        "encoder.down.2.block.0.nin_shortcut.weight": (256, 128, 1, 1),
        "encoder.down.4.attn.1.q.weight": (512, 512, 1, 1),
        "encoder.mid.attn_1.proj_out.weight": (512, 512, 1, 1),
        "encoder.conv_out.weight": (256, 512, 3, 3),
        "quant_conv.weight": (256, 256, 1, 1),
        "post_quant_conv.weight": (256, 256, 1, 1),
        "decoder.conv_in.weight": (512, 256, 3, 3),
        "decoder.mid.block_2.norm2.weight": (512,),
        "decoder.up.4.attn.2.k.weight": (512, 512, 1, 1),
        "decoder.up.4.upsample.conv.weight": (512, 512, 3, 3),
        "decoder.up.3.block.0.nin_shortcut.weight": (256, 512, 1, 1),
        "decoder.up.0.block.2.conv2.weight": (128, 128, 3, 3),
        "decoder.conv_out.weight": (3, 128, 3, 3),
    }
    assert {k: shapes.get(k) for k in expected} == expected
    assert not any("downsample" in k for k in shapes if k.startswith("encoder.down.4."))
    assert not any("upsample" in k for k in shapes if k.startswith("decoder.up.0."))


def test_downsampling_halves_with_taming_padding():
    """Every level transition halves H and W (taming's asymmetric padding keeps H/16 × W/16 exact)."""
    model = tiny()
    with torch.no_grad():
        z = model.encode_latents(pixels(1, 3, 48, 80))
    assert z.shape == (1, 32, 3, 5)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"attn_levels": (5,)}, "attn_levels must be in [0, 5)"),
        ({"quantizer": "rq"}, "quantizer must be one of"),
        ({"quantizer": "lfq", "codebook_size": 1000}, "power-of-two codebook_size, got 1000"),
        ({"quantizer": "fsq"}, "needs quantizer_kwargs"),
        ({"quantizer": "fsq", "quantizer_kwargs": {"levels": [8, 8]}}, "give 64 codes, expected codebook_size 1024"),
        ({"num_res_blocks": 0}, "num_res_blocks must be >= 1"),
        ({"channel_multipliers": ()}, "must be positive, got in_channels=3, base_channels=16, channel_multipliers=()"),
        ({"quantizer_kwargs": {"bogus": 1}}, "do not fit quantizer 'vq'"),
    ],
)
def test_bad_config_raises(overrides, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        VQGANTokenizer(VQGANConfig.from_name("vqgan-tiny", **overrides))


@pytest.mark.parametrize(
    ("kind", "kwargs", "cls"),
    [("lfq", {}, LFQ), ("fsq", {"levels": [8, 8, 4, 4]}, FSQ), ("vq", {"l2_normalize": False}, VectorQuantizer)],
)
def test_pluggable_quantizers(kind, kwargs, cls):
    model = tiny(quantizer=kind, quantizer_kwargs=kwargs)
    assert isinstance(model.quantizer, cls) and model.codebook_size == 1024
    x = pixels(2, 3, 32, 32)
    with torch.no_grad():
        ids, out = model.encode(x), model(x)
        assert torch.equal(ids, out.indices)
        torch.testing.assert_close(model.decode(ids), out.recon, rtol=0, atol=1e-5)
    assert int(ids.max()) < 1024


# ---------------------------------------------------------------------------------------------------------------------
# Round trips and shared paths
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("overrides", [{}, {"quantizer": "fsq", "quantizer_kwargs": {"levels": [8, 8, 4, 4]}}])
def test_save_load_round_trip(tmp_path, overrides):
    model = tiny(**overrides)
    model.train()
    model(pixels(2, 3, 32, 32, seed=3))  # one training forward: quantizer statistics move off their initial values
    model.eval()
    x = pixels(2, 3, 64, 32)
    with torch.no_grad():
        ids, recon = model.encode(x), model.decode(model.encode(x))
    model.save_pretrained(tmp_path / "vqgan")
    for loaded in (VQGANTokenizer.from_pretrained(tmp_path / "vqgan"), from_pretrained(tmp_path / "vqgan")):
        assert isinstance(loaded, VQGANTokenizer) and not loaded.training
        assert loaded.config == model.config
        with torch.no_grad():
            assert torch.equal(loaded.encode(x), ids)
            assert torch.equal(loaded.decode(ids), recon)


def test_decode_of_encode_is_forward_in_eval():
    model = tiny()
    for x in (pixels(2, 3, 32, 48), pixels(2, 3, 3, 32, 32)):
        with torch.no_grad():
            out, ids = model(x), model.encode(x)
            assert torch.equal(ids, out.indices)
            torch.testing.assert_close(model.decode(ids), out.recon, rtol=0, atol=1e-5)
            torch.testing.assert_close(
                model.decode_latents(model.quantize(model.encode_latents(x)).quantized), out.recon
            )


def test_video_is_tokenized_frame_by_frame():
    model = tiny()
    video = pixels(2, 3, 4, 32, 48)
    with torch.no_grad():
        ids = model.encode(video)
        frame_ids = torch.stack([model.encode(video[:, :, t]) for t in range(4)], dim=1)
        assert ids.shape == (2, 4, 2, 3) == (2, *model.token_grid((4, 32, 48)))
        assert torch.equal(ids, frame_ids)
        frames = model.decode(ids)
        assert frames.shape == video.shape
        for t in range(4):
            torch.testing.assert_close(frames[:, :, t], model.decode(ids[:, t]), rtol=0, atol=1e-5)
        assert torch.equal(model.encode(video, chunk_frames=3), ids)
        torch.testing.assert_close(model.decode(ids, chunk_frames=3), frames, rtol=0, atol=1e-5)
        z = model.encode_latents(video)
        assert z.shape == (2, 32, 4, 2, 3)
        assert torch.equal(model.quantize(z).indices, ids)


def test_pad_and_crop():
    model = tiny()
    x = pixels(1, 3, 40, 24)
    with torch.no_grad():
        ids = model.encode(x, pad=True)
        assert ids.shape == (1, 3, 2) == (1, *model.token_grid((40, 24), pad=True))
        padded = torch.nn.functional.pad(x, (0, 8, 0, 8), mode="replicate")
        assert torch.equal(ids, model.encode(padded))
        recon = model.decode(ids, size=(40, 24))
        assert recon.shape == x.shape
        torch.testing.assert_close(model(x, pad=True).recon, recon, rtol=0, atol=1e-5)
        video = pixels(1, 3, 2, 40, 24)
        assert model.decode(model.encode(video, pad=True), size=(2, 40, 24)).shape == video.shape
        assert model(video, pad=True).recon.shape == video.shape


def test_gradients_reach_encoder_codebook_and_last_layer():
    model = tiny().train()
    x = pixels(2, 3, 32, 32)
    out = model(x)
    ((out.recon - x) ** 2).mean().add(out.quant_loss).backward()
    assert model.last_layer_weight() is model.decoder.conv_out.weight
    for p in (model.last_layer_weight(), model.encoder.conv_in.weight, model.quantizer.codebook):
        assert p.grad is not None and p.grad.abs().sum() > 0
    assert out.quant_loss.ndim == 0 and out.quant_loss > 0 and "commit" in out.metrics


# ---------------------------------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------------------------------


def test_bad_inputs_raise_with_expected_and_got():
    model = tiny()
    with pytest.raises(ValueError, match=r"multiples of the spatial factor 16, got 40×32 \(pass pad=True .* 48×32\)"):
        model.encode(pixels(1, 3, 40, 32))
    with pytest.raises(ValueError, match=r"multiples of the spatial factor 16, got 32×33"):
        model(pixels(1, 3, 2, 32, 33))
    with pytest.raises(ValueError, match=r"expected an image \(B, 3, H, W\) or a video \(B, 3, T, H, W\), got \(3, 32"):
        model.encode(pixels(3, 32, 32))
    with pytest.raises(ValueError, match=r"got \(1, 4, 32, 32\)"):
        model.encode(pixels(1, 4, 32, 32))
    with pytest.raises(TypeError, match=r"expected float pixels in \[-1, 1\], got torch\.uint8"):
        model.encode(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(TypeError, match=r"expected integer token ids, got torch\.float32"):
        model.decode(torch.zeros(1, 2, 2))
    with pytest.raises(ValueError, match=r"image ids \(B, H', W'\) or video ids \(B, T', H', W'\), got \(2, 2\)"):
        model.decode(torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"token ids must be in \[0, 1024\), got range \[0, 1024\]"):
        model.decode(torch.tensor([[[0, 1024]]]))
    with pytest.raises(ValueError, match=r"expected latents \(B, 32, H', W'\) .* got \(1, 8, 2, 2\)"):
        model.decode_latents(torch.zeros(1, 8, 2, 2))
    with pytest.raises(ValueError, match=r"size must be .* no larger than \(32, 32\), got \(48, 32\)"):
        model.decode(torch.zeros(1, 2, 2, dtype=torch.long), size=(48, 32))
    with pytest.raises(ValueError, match="chunk_frames must be a positive int, got 0"):
        model.encode(pixels(1, 3, 2, 32, 32), chunk_frames=0)
    with pytest.raises(ValueError, match=r"expected an input shape \(T, H, W\) or \(H, W\), got \(32,\)"):
        model.token_grid((32,))


# ---------------------------------------------------------------------------------------------------------------------
# Overfit
# ---------------------------------------------------------------------------------------------------------------------


def overfit(name: str, size: int, steps: int) -> tuple[float, float]:
    """Adam (lr 3e-4) on MSE + quantizer loss over 4 fixed crops; returns (eval PSNR of decode∘encode, baseline PSNR).

    The baseline reconstructs every crop as its own mean colour. lr 3e-4 escapes the early plateau (codes collapsed,
    output ≈ the batch mean) reliably; at 1e-3 some seeds stay on it for 150+ steps.
    """
    photos = SamplePhotos(size=size, seed=0)
    x = torch.stack([photos[i]["pixels"] for i in range(4)])
    model = tiny(name).train()
    opt = torch.optim.Adam(model.parameters(), lr=3e-4)
    for _ in range(steps):
        out = model(x)
        loss = (out.recon - x).pow(2).mean() + out.quant_loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        recon = model.decode(model.encode(x))
    return psnr(recon, x), psnr(x.mean(dim=(2, 3), keepdim=True).expand_as(x), x)


def test_tiny_overfits_a_small_batch():
    """Measured (1 thread, ~5 s): 120 steps at 32² (2×2 tokens) → 21.6–23.4 dB over 10 init seeds vs 14.7 dB."""
    achieved, baseline = overfit("vqgan-tiny", 32, 120)
    assert achieved > baseline + 4.0, (achieved, baseline)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["vqgan-tiny", "vqgan-tiny-f8"])
def test_tiny_overfits_64px(name):
    """Measured (1 thread, ~30 s each): 400 steps at 64² → 26.5–28.7 dB over 2 seeds × 2 presets vs 14.3 dB."""
    achieved, baseline = overfit(name, 64, 400)
    assert achieved > baseline + 8.0, (achieved, baseline)
