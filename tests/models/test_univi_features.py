"""Chat-UniVi projector input: per-channel standardization of the frozen features (not a per-token LayerNorm, which
over 10 MAGVIT-v2 channels erases each token's mean and scale), its statistics from the training features, and
loading models saved before the option existed."""

import json

import torch

from vistok.models.univi import FeatureStandardizer, UniVi, UniViConfig
from vistok.train.univi import load_univi, set_feature_stats

TINY = dict(dim=32, n_layers=2, n_heads=2, max_seq_len=256, stages=(8, 4, 2), video_stages=(8, 4, 2))


def test_standardized_features_keep_what_a_layernorm_erases():
    torch.manual_seed(0)
    x = torch.randn(10)
    # tokens that differ only in their mean over the channels, or only in their scale (e.g. a dark and a bright
    # patch of one hue): a per-token LayerNorm maps them to the same projector input
    tokens = torch.stack([x, x + 0.7, 2.5 * x])[None]
    layer = UniVi(UniViConfig(**TINY, feature_norm="layer")).projector.norm
    out = layer(tokens)[0]
    torch.testing.assert_close(out[0], out[1], atol=1e-4, rtol=0)
    torch.testing.assert_close(out[0], out[2], atol=1e-4, rtol=0)
    model = UniVi(UniViConfig(**TINY))
    assert isinstance(model.projector.norm, FeatureStandardizer)
    out = model.projector.norm(tokens)[0]
    assert (out[0] - out[1]).abs().max() > 0.5 and (out[0] - out[2]).abs().max() > 0.5


def test_feature_stats_come_from_the_training_features_and_are_saved(tmp_path):
    torch.manual_seed(0)
    scale, shift = torch.linspace(0.2, 3.0, 10), torch.linspace(-2.0, 2.0, 10)
    images = {"features": (torch.randn(40, 16, 10) * scale + shift).half()}
    videos = {"features": (torch.randn(10, 5, 16, 10) * scale + shift).half()}
    model = UniVi(UniViConfig(**TINY))
    set_feature_stats(model, [images, videos])
    flat = torch.cat([images["features"].reshape(-1, 10), videos["features"].reshape(-1, 10)]).float()
    z = model.projector.norm(flat)
    torch.testing.assert_close(z.mean(0), torch.zeros(10), atol=1e-3, rtol=0)
    torch.testing.assert_close(z.std(0), torch.ones(10), atol=1e-3, rtol=0)
    model.save_pretrained(tmp_path / "m")
    back = load_univi(tmp_path / "m")
    torch.testing.assert_close(back.projector.norm.mean, model.projector.norm.mean)
    torch.testing.assert_close(back.projector.norm.std, model.projector.norm.std)


def test_models_saved_before_feature_norm_load_with_their_layernorm(tmp_path):
    torch.manual_seed(0)
    model = UniVi(UniViConfig(**TINY, feature_norm="layer")).eval()
    folder = model.save_pretrained(tmp_path / "old")
    config = json.loads((folder / "config.json").read_text())
    del config["feature_norm"]  # as written by the first version
    (folder / "config.json").write_text(json.dumps(config))
    back = load_univi(folder)
    assert isinstance(back.projector.norm, torch.nn.LayerNorm)
    vt = back.visual_tokens(torch.randn(1, 64, 10), (8, 8))
    assert back.answer(vt, ["how many shapes are there?"], max_new_tokens=3) == model.answer(
        vt, ["how many shapes are there?"], max_new_tokens=3
    )
