"""The KL-VAE: presets, shapes and the 8× factor, the KL against brute-force Gaussian KLs, deterministic and sampled
encoding, latent scaling, save/load, a tiny overfit, and training it with the tokenizer trainer (and its CLI verb)."""

from __future__ import annotations

import argparse
import math

import pytest
import torch
from torch.distributions import MultivariateNormal, Normal, kl_divergence

from vistok.data import SamplePhotos, SyntheticVideos
from vistok.hub import from_pretrained
from vistok.registry import create_model, list_models
from vistok.tokenizers.vae import KLVAE, DiagonalGaussian, VAEConfig, VAEOutput, gaussian_kl
from vistok.train import read_jsonl
from vistok.train.tokenizer import TokenizerTrainConfig, add_tokenizer_train_parser, train_tokenizer

PRESETS = ["vae-f8c8", "vae-tiny", "vae-tiny-f4"]
# name → (spatial factor, latent channels, parameter range)
EXPECTED = {"vae-tiny": (8, 8, (2e6, 4e6)), "vae-tiny-f4": (4, 8, (0.5e6, 1e6)), "vae-f8c8": (8, 8, (80e6, 88e6))}


def tiny(seed: int = 0, **overrides) -> KLVAE:
    torch.manual_seed(seed)
    return create_model("vae-tiny", **overrides).eval()


def pixels(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return 10 * math.log10(4 / float(((a.clamp(-1, 1) - b) ** 2).mean()))


# ---------------------------------------------------------------------------------------------------------------------
# Presets, shapes
# ---------------------------------------------------------------------------------------------------------------------


def test_presets_registered():
    assert list_models("vae-*") == PRESETS and VAEConfig.preset_names() == PRESETS


@pytest.mark.parametrize("name", PRESETS)
def test_preset_shapes_and_downsampling(name):
    torch.manual_seed(0)
    model = create_model(name).eval()
    factor, channels, (low, high) = EXPECTED[name]
    assert isinstance(model, KLVAE) and model.model_type == "vae"
    assert (model.spatial_factor, model.temporal_factor, model.latent_channels) == (factor, 1, channels)
    assert low < sum(p.numel() for p in model.parameters()) < high
    x = pixels(2, 3, 32, 48)
    with torch.no_grad():
        z = model.encode(x)
        assert z.shape == (2, channels, 32 // factor, 48 // factor) == (2, *model.latent_shape((32, 48)))
        assert model.decode(z).shape == x.shape
        out = model(x)
    assert isinstance(out, VAEOutput) and out.recon.shape == x.shape and out.latents.shape == z.shape
    assert out.kl.ndim == 0 and out.kl > 0 and set(out.metrics) == {"kl", "latent_mean", "latent_std", "posterior_std"}


def test_video_is_encoded_frame_by_frame():
    model = tiny()
    clip = pixels(2, 3, 3, 16, 24)
    with torch.no_grad():
        z = model.encode(clip)
        assert z.shape == (2, 8, 3, 2, 3) == (2, *model.latent_shape((3, 16, 24)))
        per_frame = torch.stack([model.encode(clip[:, :, t]) for t in range(3)], dim=2)
        torch.testing.assert_close(z, per_frame)
        x = model.decode(z)
        assert x.shape == clip.shape
        torch.testing.assert_close(x[:, :, 1], model.decode(z[:, :, 1]))
        out = model(clip, sample=False)
    torch.testing.assert_close(out.recon, x)
    assert out.latents.shape == z.shape


def test_padding_and_errors():
    model = tiny()
    x = pixels(1, 3, 20, 13)
    with pytest.raises(ValueError, match=r"multiples of the spatial factor 8, got 20×13 .*pad=True.* 24×16"):
        model.encode(x)
    with torch.no_grad():
        z = model.encode(x, pad=True)
        assert z.shape == (1, 8, 3, 2)
        assert model.decode(z, size=(20, 13)).shape == x.shape
        assert model(x, pad=True).recon.shape == x.shape
    with pytest.raises(TypeError, match="float pixels"):
        model.encode(torch.zeros(1, 3, 16, 16, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model.encode(pixels(1, 4, 16, 16))
    with pytest.raises(ValueError, match=r"latents \(B, 8, H', W'\)"):
        model.decode(torch.zeros(1, 4, 2, 2))
    with pytest.raises(ValueError, match="no larger than"):
        model.decode(torch.zeros(1, 8, 2, 2), size=(17, 16))
    with pytest.raises(ValueError, match="num_res_blocks"):
        VAEConfig(num_res_blocks=0)
    with pytest.raises(ValueError, match="scaling_factor"):
        VAEConfig(scaling_factor=0.0)
    with pytest.raises(ValueError, match="attn_levels"):
        VAEConfig(attn_levels=(4,))


# ---------------------------------------------------------------------------------------------------------------------
# KL and sampling
# ---------------------------------------------------------------------------------------------------------------------


def test_kl_matches_brute_force_gaussian_kl():
    g = torch.Generator().manual_seed(0)
    mean, logvar = (
        torch.randn(3, 2, 2, 3, generator=g, dtype=torch.float64),
        torch.randn(3, 2, 2, 3, generator=g).double(),
    )
    kl = gaussian_kl(mean, logvar)
    assert kl.shape == (3,)
    # per element against torch.distributions, summed
    per_element = kl_divergence(Normal(mean, (0.5 * logvar).exp()), Normal(torch.zeros(()), torch.ones(())))
    torch.testing.assert_close(kl, per_element.flatten(1).sum(1))
    # the full multivariate formula ½(tr Σ + μᵀμ − k − log det Σ) with a dense covariance
    for i in range(3):
        mu, var = mean[i].flatten(), logvar[i].flatten().exp()
        q = MultivariateNormal(mu, covariance_matrix=torch.diag(var))
        p = MultivariateNormal(
            torch.zeros(12, dtype=torch.float64), covariance_matrix=torch.eye(12, dtype=torch.float64)
        )
        torch.testing.assert_close(kl[i], kl_divergence(q, p))
    # Monte Carlo: E_q[log q(z) − log p(z)]
    post = DiagonalGaussian(mean[:1], logvar[:1])
    z = torch.stack([post.sample(g) for _ in range(20000)])
    q, p = Normal(mean[:1], post.std), Normal(0.0, 1.0)
    mc = (q.log_prob(z) - p.log_prob(z)).flatten(1).sum(1).mean()
    assert abs(float(mc) - float(kl[0])) < 0.1 * float(kl[0]) + 0.2
    # the model's kl is the posterior's, averaged over pictures
    model = tiny()
    x = pixels(2, 3, 16, 16)
    with torch.no_grad():
        post = model.posterior(x)
        out = model(x)
    torch.testing.assert_close(out.kl, gaussian_kl(post.mean, post.logvar).mean())
    torch.testing.assert_close(post.kl(), gaussian_kl(post.mean, post.logvar))


def test_logvar_is_clamped_like_ldm():
    post = DiagonalGaussian(torch.zeros(1, 2), torch.tensor([[-100.0, 100.0]]))
    assert post.logvar.tolist() == [[-30.0, 20.0]] and torch.isfinite(post.kl()).all()


def test_encode_is_deterministic_without_sampling_and_seeded_with():
    model = tiny()
    x = pixels(2, 3, 16, 16)
    with torch.no_grad():
        a, b = model.encode(x), model.encode(x)
        post = model.posterior(x)
        s1 = model.encode(x, sample=True, generator=torch.Generator().manual_seed(3))
        s2 = model.encode(x, sample=True, generator=torch.Generator().manual_seed(3))
        s3 = model.encode(x, sample=True, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and torch.equal(a, post.mean)
    assert torch.equal(s1, s2) and not torch.equal(s1, s3) and not torch.equal(s1, a)
    torch.testing.assert_close(post.sample(torch.Generator().manual_seed(3)), s1)
    # samples spread by exp(logvar / 2) around the mean
    many = torch.stack([post.sample(torch.Generator().manual_seed(k)) for k in range(400)])
    torch.testing.assert_close(many.std(0).mean(), post.std.mean(), rtol=0.1, atol=0)


def test_gradients_flow_through_the_sample():
    model = tiny()
    out = model(pixels(1, 3, 16, 16))
    (out.recon.mean() + out.kl).backward()
    assert model.quant_conv.weight.grad is not None and model.encoder.conv_in.weight.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------------------------------------
# Latent scaling for diffusion
# ---------------------------------------------------------------------------------------------------------------------


def test_fit_latent_scaling_normalizes_latents_and_decode_undoes_it():
    model = tiny()
    batches = [pixels(2, 3, 16, 16, seed=s) * 0.5 + 0.2 for s in range(3)]
    with torch.no_grad():
        raw = torch.cat([model.encode(b, normalize=False) for b in batches])
        before = model.decode(model.encode(batches[0]))
        scale, shift = model.fit_latent_scaling(batches)
        z = torch.cat([model.encode(b) for b in batches])
        after = model.decode(model.encode(batches[0]))
    assert (model.config.scaling_factor, model.config.shift_factor) == (scale, shift)
    assert scale != 1.0 and shift != 0.0
    torch.testing.assert_close(z, (raw - shift) * scale)
    assert abs(float(z.mean())) < 1e-5 and abs(float(z.double().pow(2).mean()) - 1) < 1e-5
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-5)  # decode undoes the scaling
    torch.testing.assert_close(model.denormalize(model.normalize(raw)), raw)
    scale, shift = model.fit_latent_scaling(batches, center=False)
    assert shift == 0.0 and abs(float((raw * scale).pow(2).mean()) - 1) < 1e-5
    with pytest.raises(ValueError, match="at least one batch"):
        model.fit_latent_scaling([])


def test_fit_latent_scaling_per_channel_standardizes_every_channel(tmp_path):
    model = tiny()
    batches = [pixels(2, 3, 16, 16, seed=s) * 0.5 + 0.2 for s in range(3)]
    with torch.no_grad():
        raw = torch.cat([model.encode(b, normalize=False) for b in batches])
        before = model.decode(model.encode(batches[0]))
        scale, shift = model.fit_latent_scaling(batches, per_channel=True)
        z = torch.cat([model.encode(b) for b in batches])
        after = model.decode(model.encode(batches[0]))
    cfg = model.config
    assert len(cfg.channel_shift) == len(cfg.channel_scale) == model.latent_channels
    flat = z.transpose(0, 1).flatten(1).double()
    assert flat.mean(1).abs().max() < 1e-5 and (flat.pow(2).mean(1) - 1).abs().max() < 1e-4
    # the global part is the same fit as without per_channel, the channel part comes on top of it
    ch_shift, ch_scale = (torch.tensor(v).view(1, -1, 1, 1) for v in cfg.channel_stats())
    torch.testing.assert_close(z, ((raw - shift) * scale - ch_shift) * ch_scale, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-5)  # decode undoes it
    video = pixels(1, 3, 2, 16, 16, seed=9)
    with torch.no_grad():
        zv = model.encode(video)
        torch.testing.assert_close(zv[:, :, 1], model.encode(video[:, :, 1]))
        torch.testing.assert_close(model.denormalize(model.normalize(zv)), zv, rtol=1e-4, atol=1e-5)
    model.save_pretrained(tmp_path / "vae")
    loaded = from_pretrained(tmp_path / "vae")
    assert loaded.config == cfg and loaded.config.channel_scale == cfg.channel_scale
    with torch.no_grad():
        assert torch.equal(loaded.encode(batches[1]), model.encode(batches[1]))
    model.fit_latent_scaling(batches)  # a global fit clears the channel statistics
    assert cfg.channel_shift is None and cfg.channel_scale is None
    assert cfg.channel_stats() == ((0.0,) * 8, (1.0,) * 8)


def test_channel_statistics_are_checked():
    with pytest.raises(ValueError, match="together"):
        VAEConfig(latent_channels=2, channel_shift=(0.0, 0.0))
    with pytest.raises(ValueError, match="one per latent channel"):
        VAEConfig(latent_channels=2, channel_shift=(0.0,), channel_scale=(1.0,))
    with pytest.raises(ValueError, match="channel_scale finite and > 0"):
        VAEConfig(latent_channels=2, channel_shift=(0.0, 0.0), channel_scale=(1.0, 0.0))
    assert VAEConfig(latent_channels=2, channel_shift=[0, 1], channel_scale=[1, 2]).channel_shift == (0.0, 1.0)


def test_save_load_round_trip(tmp_path):
    model = tiny()
    with torch.no_grad():
        model.fit_latent_scaling([pixels(2, 3, 16, 16)])
    model.save_pretrained(tmp_path / "vae")
    loaded = from_pretrained(tmp_path / "vae")
    assert isinstance(loaded, KLVAE) and loaded.config == model.config
    assert loaded.config.scaling_factor == model.config.scaling_factor != 1.0
    x = pixels(2, 3, 16, 24, seed=5)
    with torch.no_grad():
        z = model.encode(x)
        assert torch.equal(loaded.encode(x), z)
        assert torch.equal(loaded.decode(z), model.decode(z))
    assert isinstance(KLVAE.from_pretrained(tmp_path / "vae"), KLVAE)


# ---------------------------------------------------------------------------------------------------------------------
# Overfit
# ---------------------------------------------------------------------------------------------------------------------


def _overfit(model: KLVAE, x: torch.Tensor, steps: int, lr: float) -> float:
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        out = model(x)
        loss = (out.recon - x).abs().mean() + 1e-6 * out.kl / x[0].numel()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    with torch.no_grad():
        return psnr(model.eval().decode(model.encode(x)), x)


def _photos(size: int, n: int = 2) -> torch.Tensor:
    ds = SamplePhotos(size, crop="center", length=n)
    return torch.stack([ds[i]["pixels"] for i in range(n)])


def test_tiny_overfit_fast():
    """Two 16² photos through 2×2×8 latents: far better than their mean colours after 80 steps."""
    x = _photos(16)
    baseline = psnr(x.mean((2, 3), keepdim=True).expand_as(x), x)
    got = _overfit(tiny(base_channels=16), x, steps=80, lr=3e-3)
    assert got > baseline + 6 and got > 20, (got, baseline)


@pytest.mark.slow
def test_tiny_overfit_32px_to_good_psnr():
    """The vae-tiny preset memorizes two 32² photos (4×4×8 latents each) to over 30 dB in 300 steps (~20 s)."""
    x = _photos(32)
    got = _overfit(tiny(), x, steps=300, lr=2e-3)
    assert got > 30, got


# ---------------------------------------------------------------------------------------------------------------------
# Training with the tokenizer trainer
# ---------------------------------------------------------------------------------------------------------------------


def _train_config(out_dir, **kw) -> TokenizerTrainConfig:
    base = dict(
        preset="vae-tiny",
        model_overrides={"base_channels": 16},
        data="samples",
        image_size=16,
        frames=3,
        batch_size=2,
        video_batch_size=1,
        steps=4,
        warmup=0,
        schedule="constant",
        lr=1e-3,
        disc_lr=1e-3,
        disc_start=2,
        disc_warmup_start=1,
        disc_channels=8,
        disc_max_channels=16,
        log_every=1,
        ckpt_every=0,
        kl_weight=1e-3,
        out_dir=str(out_dir),
        progress=False,
    )
    return TokenizerTrainConfig(**(base | kw))


def test_trainer_trains_the_vae_end_to_end(tmp_path):
    data = {"image": SamplePhotos(16, crop="center", length=2), "video": SyntheticVideos(3, 16, length=1)}
    result = train_tokenizer(_train_config(tmp_path), datasets=data)
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and "psnr_image" in rows[0] and "psnr_video" in rows[1]
    for r in rows:
        assert "quant_loss" not in r and not any(k.startswith("q_") for k in r)
        assert r["kl"] > 0 and r["kl_loss"] == pytest.approx(1e-3 * r["kl"] / (3 * 16 * 16), rel=1e-4)
        assert {"latent_std", "posterior_std", "rec_loss", "loss_g"} <= r.keys()
    assert "loss_d" in rows[1] and rows[2]["g_adv"] != 0.0  # D from step index 1, its loss on G from index 2
    final = from_pretrained(result.final_dir)
    assert isinstance(final, KLVAE) and final.config.base_channels == 16
    # the final model's latent scaling was fitted on the training images (both of them)
    x = torch.stack([data["image"][i]["pixels"] for i in range(2)])
    with torch.no_grad():
        z = final.encode(x)
    assert final.config.scaling_factor != 1.0
    assert abs(float(z.mean())) < 1e-4 and abs(float(z.pow(2).mean()) - 1) < 1e-3


def test_cli_train_verb_with_a_vae_preset(tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="vistok")
    add_tokenizer_train_parser(parser.add_subparsers(dest="verb"))
    args = parser.parse_args(
        ["train", "--preset", "vae-tiny", "--model-arg", "base_channels=16", "--data", "samples", "--video-ratio",
         "0", "--steps", "2", "--image-size", "16", "--batch-size", "2", "--disc-start", "1", "--disc-channels", "8",
         "--kl-weight", "1e-4", "--out", str(tmp_path), "-q"]
    )  # fmt: skip
    assert args.kl_weight == 1e-4
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "Trained tokenizer vae-tiny for 2 step(s)" in out and str(tmp_path / "final") in out
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    assert rows[-1]["kl_loss"] == pytest.approx(1e-4 * rows[-1]["kl"] / (3 * 16 * 16), rel=1e-4)
    assert from_pretrained(tmp_path / "final").config.scaling_factor != 1.0


def test_kl_weight_is_checked():
    with pytest.raises(ValueError, match="kl_weight"):
        _train_config(None, kl_weight=-1.0)


def test_vae_training_resumes_exactly(tmp_path):
    """4 steps in one go == 2 steps, stop, resume to 4: the sampled latents (global RNG) resume with the run."""
    data = {"image": SamplePhotos(16, crop="center", length=2), "video": SyntheticVideos(3, 16, length=1)}
    train_tokenizer(_train_config(tmp_path / "a", ckpt_every=2), datasets=data)
    train_tokenizer(_train_config(tmp_path / "b", ckpt_every=2, stop_after=2), datasets=data)
    train_tokenizer(_train_config(tmp_path / "b", ckpt_every=2), datasets=data)
    a, b = read_jsonl(tmp_path / "a" / "metrics.jsonl"), read_jsonl(tmp_path / "b" / "metrics.jsonl")
    keys = ("loss_g", "kl", "rec_loss", "loss_d")
    assert [[r.get(k) for k in keys] for r in a] == [[r.get(k) for k in keys] for r in b]


# ---------------------------------------------------------------------------------------------------------------------
# Small objects on a plain background: the f = 4 preset and the focus-weighted reconstruction loss
# ---------------------------------------------------------------------------------------------------------------------


def _square_picture(colour=(0.9, -0.8, -0.7), background=(-0.6, -0.55, -0.6)) -> torch.Tensor:
    """(1, 3, 16, 16): a plain background with a 3×3 coloured square."""
    x = torch.tensor(background).view(1, 3, 1, 1).repeat(1, 1, 16, 16)
    x[:, :, 5:8, 9:12] = torch.tensor(colour).view(1, 3, 1, 1)
    return x


def test_focus_weights_pick_out_objects_and_zero_focus_is_plain():
    from vistok.train.tokenizer import _recon_loss, focus_weights

    x = _square_picture()
    w = focus_weights(x, 4.0)
    assert w.shape == (1, 1, 16, 16)
    square = torch.zeros(16, 16, dtype=torch.bool)
    square[5:8, 9:12] = True
    assert torch.all(w[0, 0][~square] == 1.0)  # the background is the median colour: weight exactly 1
    expected = 1 + 4.0 * (torch.tensor([0.9, -0.8, -0.7]) - torch.tensor([-0.6, -0.55, -0.6])).abs().mean()
    assert torch.allclose(w[0, 0][square], expected.expand(9))
    assert torch.all(focus_weights(x, 0.0) == 1.0)
    recon = x + 0.1 * pixels(1, 3, 16, 16)
    for kind in ("l1", "l2"):
        plain = _recon_loss(kind, recon, x)
        err = (recon - x).abs() if kind == "l1" else (recon - x).pow(2)
        assert torch.allclose(plain, err.mean()) and torch.allclose(_recon_loss(kind, recon, x, 0.0), plain)
        assert torch.allclose(_recon_loss(kind, recon, x, 4.0), (err * w).sum() / (w.sum() * 3))
    # an error on the square costs more than the same error on the background
    on_square, on_bg = x.clone(), x.clone()
    on_square[:, :, 6, 10] += 0.5
    on_bg[:, :, 1, 1] += 0.5
    assert _recon_loss("l1", on_square, x, 4.0) > 2 * _recon_loss("l1", on_bg, x, 4.0)


def test_focus_weights_of_a_video_are_per_frame():
    from vistok.train.tokenizer import focus_weights

    frames = [_square_picture(), _square_picture(colour=(-0.9, 0.9, 0.1), background=(0.2, 0.2, 0.3))]
    video = torch.stack([f[0] for f in frames], dim=1)[None]  # (1, 3, 2, 16, 16)
    w = focus_weights(video, 3.0)
    assert w.shape == (1, 1, 2, 16, 16)
    for t, f in enumerate(frames):
        assert torch.allclose(w[:, :, t], focus_weights(f, 3.0))


def test_recon_focus_option(tmp_path):
    with pytest.raises(ValueError, match="recon_focus"):
        _train_config(None, recon_focus=-1.0)
    parser = argparse.ArgumentParser(prog="vistok")
    add_tokenizer_train_parser(parser.add_subparsers(dest="verb"))
    from vistok.train.tokenizer import config_from_args

    args = parser.parse_args(["train", "--data", "samples", "--recon-focus", "8", "--recon-loss", "l2"])
    cfg = config_from_args(args)
    assert (cfg.recon_focus, cfg.recon_loss) == (8.0, "l2")
    assert config_from_args(parser.parse_args(["train", "--data", "samples"])).recon_focus == 0.0
    # the weighted loss is what the trainer logs as rec_loss
    data = {"image": SamplePhotos(16, crop="center", length=2)}
    result = train_tokenizer(_train_config(tmp_path, recon_focus=8.0, video_ratio=0.0, steps=1, disc_start=5,
                                           disc_warmup_start=5), datasets=data)  # fmt: skip
    assert result.step == 1 and read_jsonl(tmp_path / "metrics.jsonl")[0]["rec_loss"] > 0


def _scene_batch(size: int, n: int, seed: int = 0):
    from vistok.data.scenes import Scenes

    ds = Scenes(size, n, "train", seed=seed, objects=(1, 1))
    items = [ds[i] for i in range(n)]
    return torch.stack([it["pixels"] for it in items]), [it["objects"][0]["colour"] for it in items]


@pytest.mark.slow
def test_tiny_f4_round_trips_the_colours_of_small_shapes():
    """vae-tiny-f4 with the focus-weighted L1 memorizes four 32² one-shape scenes (shapes about 6 px wide, 8×8×8
    latents) so that the scene colour probe reads every shape's colour back from the reconstruction (~15-25 s)."""
    from vistok.train.tokenizer import _recon_loss
    from vistok.train.transfusion_cli import dominant_colour

    x, colours = _scene_batch(32, 4)
    assert [dominant_colour(p) for p in x] == colours
    torch.manual_seed(0)
    model = create_model("vae-tiny-f4").train()
    assert model.latent_shape((32, 32)) == (8, 8, 8)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(300):
        out = model(x)
        loss = _recon_loss("l1", out.recon, x, 16.0) + 1e-6 * out.kl / x[0].numel()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    with torch.no_grad():
        recon = model.eval().decode(model.encode(x)).clamp(-1, 1)
    assert [dominant_colour(r) for r in recon] == colours
