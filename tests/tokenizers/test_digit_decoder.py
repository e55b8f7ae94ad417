"""vistok.tokenizers.digit_decoder: the DiGIT pixel decoder overfits a small batch through the tokenizer trainer with
its tokenizer untouched, save/load and the tokenizer API round trips, embeddings from the centroids, video frame by
frame, resizing for a non-power-of-two factor, the lookup-table baseline, presets and clear errors."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from vistok.data.samples import SamplePhotos
from vistok.hub import from_pretrained
from vistok.models.vit import ViT, ViTConfig
from vistok.registry import create_model
from vistok.tokenizers.api import decode_ids, encode_pixels, load_tokenizer
from vistok.tokenizers.digit import DigitConfig, DigitTokenizer, ViTFeatureEncoder
from vistok.tokenizers.digit_decoder import DIGIT_DECODER_PRESETS, DigitAutoencoder, DigitDecoderConfig
from vistok.train.digit_ar import DigitDecoderTrainConfig, cluster_mean_patches, render_patches
from vistok.train.tokenizer import TokenizerTrainConfig, TokenizerTrainer

TINY_VIT = ViTConfig(image_size=32, patch_size=8, dim=32, depth=3, n_heads=2, head_out_dim=64, head_hidden_dim=64)
SMALL = {"base_channels": 8, "channel_multipliers": (1, 2, 2, 2), "z_channels": 16, "norm_groups": 4}


@pytest.fixture(scope="module")
def photos() -> torch.Tensor:
    ds = SamplePhotos(size=32, split="train", length=32, seed=3)
    return torch.stack([ds[i]["pixels"] for i in range(len(ds))])


@pytest.fixture(scope="module")
def tokenizer(photos) -> DigitTokenizer:
    torch.manual_seed(0)
    tok = DigitTokenizer(DigitConfig(num_clusters=16, n_iter=8), ViTFeatureEncoder(ViT(TINY_VIT)))
    return tok.fit(photos).eval()


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = ((a.clamp(-1, 1) - b) / 2).pow(2).flatten(1).mean(1)
    return float((-10 * torch.log10(mse)).mean())


def test_decoder_overfits_a_small_batch_with_the_tokenizer_frozen(photos, tokenizer):
    torch.manual_seed(0)
    model = DigitAutoencoder.from_tokenizer(tokenizer, **SMALL)
    x = photos[:8]
    frozen = {k: v.clone() for k, v in model.tokenizer.state_dict().items()}
    ids_before = model.encode(x)
    with torch.no_grad():
        start_l1 = float((model(x).recon - x).abs().mean())
        start_psnr = _psnr(model(x).recon, x)
    cfg = TokenizerTrainConfig(
        preset="", data="samples", video_ratio=0.0, image_size=32, batch_size=8, steps=60, lr=3e-3, warmup=5,
        gan_weight=0.0, disc_start=60, disc_warmup_start=60, ema_decay=None, out_dir=None, progress=False,
        log_every=60,
    )  # fmt: skip
    trainer = TokenizerTrainer(cfg, model=model, datasets={"image": [{"pixels": p} for p in x]})
    optimised = {id(p) for group in trainer.opt_g.param_groups for p in group["params"]}
    decoder_side = {id(p) for n, p in model.named_parameters() if not n.startswith("tokenizer.")}
    assert optimised == decoder_side  # the embeddings, the 1x1 conv and the decoder; no tokenizer weight
    assert all(not p.requires_grad for p in model.tokenizer.parameters())
    trainer.fit()
    model.eval()
    with torch.no_grad():
        end_l1 = float((model(x).recon - x).abs().mean())
        end_psnr = _psnr(model(x).recon, x)
    assert end_l1 < 0.5 * start_l1, (start_l1, end_l1)
    assert end_psnr > start_psnr + 5, (start_psnr, end_psnr)
    for k, v in model.tokenizer.state_dict().items():  # the tokenizer was not trained
        assert torch.equal(v, frozen[k]), k
    assert torch.equal(model.encode(x), ids_before)
    assert not torch.equal(model.embed.weight, tokenizer.quantizer.centroids)  # the table was trained


@pytest.mark.parametrize("adaptive", [False, True])
def test_gan_and_adaptive_weight_run_on_the_decoder(photos, tokenizer, adaptive):
    torch.manual_seed(0)
    model = DigitAutoencoder.from_tokenizer(tokenizer, **SMALL)
    c = DigitDecoderTrainConfig(out="unused", size=32, steps=4, batch_size=4, disc_start=2, warmup=1, ema_decay=None)
    cfg = c.trainer_config()
    assert (cfg.disc_warmup_start, cfg.disc_start, cfg.gan_weight) == (2, 2, 0.1)
    assert DigitDecoderTrainConfig(steps=10).trainer_config().disc_warmup_start == 10  # no GAN: D never runs
    cfg = dataclasses.replace(cfg, out_dir=None, progress=False, log_every=1, adaptive_gan_weight=adaptive)
    trainer = TokenizerTrainer(cfg, model=model, datasets={"image": [{"pixels": p} for p in photos[:8]]})
    trainer.fit()
    m = trainer.last_metrics  # the last step's: generator adversarial loss on, discriminator trained
    assert m["adv_weight"] > 0 and "loss_d" in m and m["nonfinite_total"] == 0


def test_embeddings_start_as_the_centroids_or_learned(tokenizer):
    model = DigitAutoencoder.from_tokenizer(tokenizer, **SMALL)
    assert torch.equal(model.embed.weight, tokenizer.quantizer.centroids)
    assert model.latent_channels == tokenizer.dim and model.spatial_factor == 8 and model.codebook_size == 16
    learned = DigitAutoencoder.from_tokenizer(tokenizer, embed="learned", embed_dim=5, freeze_embed=True, **SMALL)
    assert learned.embed.weight.shape == (16, 5) and not learned.embed.weight.requires_grad
    ids = torch.randint(0, 16, (2, 3, 4))
    assert learned.decode(ids).shape == (2, 3, 24, 32)


def test_save_load_round_trip_and_tokenizer_api(tmp_path, photos, tokenizer):
    torch.manual_seed(1)
    model = DigitAutoencoder.from_tokenizer(tokenizer, **SMALL).eval()
    with torch.no_grad():
        model.decoder.conv_out.weight.add_(0.01)  # weights that no fresh build has
    x = photos[:4]
    ids = model.encode(x)
    assert ids.shape == (4, 4, 4) and ids.dtype == torch.int64 and torch.equal(ids, tokenizer.encode(x))
    recon = model.decode(ids)
    model.save_pretrained(tmp_path / "ae")
    loaded = from_pretrained(tmp_path / "ae")
    assert isinstance(loaded, DigitAutoencoder) and loaded.config == model.config
    assert torch.equal(loaded.encode(x), ids)
    assert torch.equal(loaded.decode(ids), recon)
    assert torch.equal(loaded.tokenizer.quantizer.centroids, tokenizer.quantizer.centroids)
    tok = load_tokenizer(tmp_path / "ae", device="cpu")
    one = encode_pixels(tok, x[0])
    assert torch.equal(one, ids[0])
    assert torch.allclose(decode_ids(tok, one), recon[0], atol=1e-6)


def test_video_is_frame_by_frame_and_pad_crops_back(photos, tokenizer):
    model = DigitAutoencoder.from_tokenizer(tokenizer, **SMALL).eval()
    clip = torch.stack([photos[:2], photos[2:4], photos[4:6]], dim=2)  # (2, 3, T=3, 32, 32)
    ids = model.encode(clip)
    assert ids.shape == (2, 3, 4, 4)
    for t in range(3):
        assert torch.equal(ids[:, t], model.encode(clip[:, :, t]))
    video = model.decode(ids, chunk_frames=2)
    assert video.shape == (2, 3, 3, 32, 32)
    assert torch.allclose(video[:, :, 1], model.decode(ids[:, 1]), atol=1e-5)
    odd = photos[:2, :, :30, :27]
    with pytest.raises(ValueError, match="multiples of the patch size 8"):
        model.encode(odd)
    padded = model.encode(odd, pad=True)
    assert padded.shape == (2, 4, 4)
    assert model.decode(padded, size=(30, 27)).shape == (2, 3, 30, 27)
    with torch.no_grad():
        assert model(odd, pad=True).recon.shape == odd.shape


def test_decoder_upsampling_other_than_the_factor_is_resized(tokenizer):
    model = DigitAutoencoder.from_tokenizer(tokenizer, base_channels=8, channel_multipliers=(1, 2), norm_groups=4)
    assert model.config.upsampling == 2 and model.spatial_factor == 8
    assert model.decode(torch.randint(0, 16, (1, 2, 3))).shape == (1, 3, 16, 24)


def test_lookup_baseline_is_the_mean_patch_of_each_id(photos, tokenizer):
    model = DigitAutoencoder.from_tokenizer(tokenizer, **SMALL)
    x = photos[:6]
    table = cluster_mean_patches(model, x, batch_size=4)
    ids = model.encode(x)
    patches = x.unfold(2, 8, 8).unfold(3, 8, 8).permute(0, 2, 3, 1, 4, 5)  # (B, h, w, 3, 8, 8)
    for k in range(16):
        sel = patches[ids == k]
        expected = sel.mean(0) if len(sel) else patches.reshape(-1, 3, 8, 8).mean(0)
        assert torch.allclose(table[k], expected, atol=1e-5), k
    pictures = render_patches(table, ids)
    assert pictures.shape == x.shape
    assert torch.equal(pictures[1, :, 8:16, 16:24], table[ids[1, 1, 2]])
    # the table is the best per-id constant patch: it beats any other table on its own pictures
    assert F.mse_loss(pictures, x) < F.mse_loss(render_patches(table + 0.05, ids), x)


def test_presets_build_and_bad_inputs_are_clear(tokenizer):
    for name in DIGIT_DECODER_PRESETS:
        model = create_model(name)
        assert model.decode(torch.zeros(1, 8, 8, dtype=torch.long)).shape == (1, 3, 64, 64)
        with pytest.raises(RuntimeError, match="no centroids"):
            model.encode(torch.zeros(1, 3, 64, 64))
    model = DigitAutoencoder.from_tokenizer(tokenizer, **SMALL)
    with pytest.raises(ValueError, match=r"token ids must be in \[0, 16\), got range \[0, 16\]"):
        model.decode(torch.tensor([[[0, 16]]]))
    with pytest.raises(TypeError, match="integer token ids"):
        model.decode(torch.zeros(1, 2, 2))
    with pytest.raises(ValueError, match=r"expected pixels in \[-1, 1\]"):
        model.encode(torch.full((1, 3, 32, 32), 2.0))
    with pytest.raises(ValueError, match=r"expected an image \(B, 3, H, W\)"):
        model.encode(torch.zeros(3, 32, 32))
    with pytest.raises(ValueError, match="spatial_factor"):
        DigitDecoderConfig(digit=DigitConfig(encoder="hf", hf_path="/nowhere", image_size=224))
    with pytest.raises(ValueError, match="embed_dim"):
        DigitDecoderConfig(embed="learned")
    with pytest.raises(ValueError, match="no centroids"):
        DigitAutoencoder.from_tokenizer(DigitTokenizer(DigitConfig(vit=TINY_VIT, num_clusters=4)))
