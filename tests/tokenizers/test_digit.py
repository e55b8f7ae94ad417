"""vistok.tokenizers.digit: HF layer selection (checked against hooks), k-means fits (seeded, streamed = in memory =
on disk), save/load, token shards, presets, pictures and clear errors."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from vistok.data.samples import SamplePhotos
from vistok.data.shards import ShardReader
from vistok.hub import from_pretrained
from vistok.models.vit import ViT, ViTConfig
from vistok.registry import create_model
from vistok.tokenizers.digit import (
    DIGIT_PRESETS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    DigitConfig,
    DigitTokenizer,
    HFFeatureEncoder,
    ViTFeatureEncoder,
    check_pixels,
    cluster_stats,
    palette,
    pixel_batches,
    token_map_picture,
    tokenize_to_shards,
)

TINY_VIT = ViTConfig(image_size=32, patch_size=8, dim=32, depth=4, n_heads=2, head_out_dim=64, head_hidden_dim=64)


def _vit(seed: int = 0) -> ViT:
    torch.manual_seed(seed)
    return ViT(TINY_VIT).eval()


@pytest.fixture(scope="module")
def photos() -> torch.Tensor:
    ds = SamplePhotos(size=32, split="train", length=48, seed=5)
    return torch.stack([ds[i]["pixels"] for i in range(len(ds))])


def _tokenizer(k: int = 16, seed: int = 0) -> DigitTokenizer:
    return DigitTokenizer(DigitConfig(num_clusters=k, n_iter=8, seed=seed), ViTFeatureEncoder(_vit(), layer=-3))


# ----------------------------------------------------------------------------------------------- HF encoders


def _hf_model(registers: int):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(registers)
    kw = dict(hidden_size=32, num_hidden_layers=5, num_attention_heads=2, intermediate_size=64, patch_size=8)
    if registers:
        cfg = transformers.Dinov2WithRegistersConfig(image_size=32, num_register_tokens=registers, **kw)
        return transformers.Dinov2WithRegistersModel(cfg).eval()
    return transformers.Dinov2Model(transformers.Dinov2Config(image_size=32, **kw)).eval()


@pytest.fixture(scope="module", params=[0, 4], ids=["dinov2", "dinov2-registers"])
def hf_folder(request, tmp_path_factory):
    model = _hf_model(request.param)
    folder = tmp_path_factory.mktemp(f"hf{request.param}")
    model.save_pretrained(folder)
    return folder, model, request.param


def _imagenet(x: torch.Tensor) -> torch.Tensor:
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return ((x + 1) / 2 - mean) / std


@pytest.mark.parametrize("layer", [-3, -1, 2])
def test_hf_layer_is_that_blocks_patch_tokens_after_the_final_norm(hf_folder, layer):
    folder, model, registers = hf_folder
    x = torch.rand(2, 3, 32, 40) * 2 - 1  # 4 x 5 patches, a size other than the config's image_size
    enc = HFFeatureEncoder(folder, layer=layer)
    got = enc.features(x)
    assert got.shape == (2, 4, 5, 32)
    # reference 1: HF's hidden_states, then the final layernorm, then drop [CLS] and the registers
    with torch.no_grad():
        out = model(pixel_values=_imagenet(x), output_hidden_states=True)
        ref = model.layernorm(out.hidden_states[layer])[:, 1 + registers :].reshape(2, 4, 5, 32)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    # reference 2 (independent of hidden_states): a forward hook on the block itself (hidden_states[0] = embeddings)
    block = model.encoder.layer[(layer % (len(model.encoder.layer) + 1)) - 1]
    seen = {}
    hook = block.register_forward_hook(lambda m, i, o: seen.setdefault("out", o[0] if isinstance(o, tuple) else o))
    with torch.no_grad():
        model(pixel_values=_imagenet(x))
    hook.remove()
    torch.testing.assert_close(got, model.layernorm(seen["out"])[:, 1 + registers :].reshape(2, 4, 5, 32))
    if layer == -1:  # the last block after the norm is HF's own last_hidden_state
        torch.testing.assert_close(got, out.last_hidden_state[:, 1 + registers :].reshape(2, 4, 5, 32))


def test_hf_layers_differ_and_norm_matters(hf_folder):
    folder = hf_folder[0]
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    a, b = HFFeatureEncoder(folder, layer=-3).features(x), HFFeatureEncoder(folder, layer=-1).features(x)
    raw = HFFeatureEncoder(folder, layer=-3, norm=False).features(x)
    assert (a - b).abs().max() > 1e-2 and (a - raw).abs().max() > 1e-2
    torch.testing.assert_close(a.mean(-1), torch.zeros(1, 4, 4), atol=1e-5, rtol=0)  # layernorm: zero mean per token


def test_hf_pixel_normalisation_comes_from_preprocessor_config(tmp_path):
    model = _hf_model(0)
    model.save_pretrained(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.5] * 3, "image_std": [0.5] * 3}))
    enc = HFFeatureEncoder(tmp_path, layer=-1)
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        ref = model(pixel_values=x).last_hidden_state[:, 1:].reshape(1, 2, 2, 32)  # ((x+1)/2 - .5)/.5 == x
    torch.testing.assert_close(enc.features(x), ref)
    assert enc.norm_source.endswith("preprocessor_config.json")


def test_hf_image_size_resizes_first(hf_folder):
    folder = hf_folder[0]
    enc = HFFeatureEncoder(folder, layer=-1, image_size=16)
    assert enc.token_grid(30, 50) == (2, 2)  # any input size works once resized
    assert enc.features(torch.zeros(1, 3, 30, 50)).shape == (1, 2, 2, 32)


def test_hf_missing_folder_and_bad_layer_are_clear(tmp_path, hf_folder):
    with pytest.raises(FileNotFoundError, match=r"does not exist.*never downloads"):
        HFFeatureEncoder(tmp_path / "no-such-dinov2")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no config\.json"):
        HFFeatureEncoder(tmp_path / "empty")
    with pytest.raises(ValueError, match="layer must be in"):
        HFFeatureEncoder(hf_folder[0], layer=9)


def test_hf_tokenizer_round_trip_and_moved_folder(tmp_path, photos, hf_folder):
    folder, _, _ = hf_folder
    copy = tmp_path / "dinov2"
    shutil.copytree(folder, copy)
    tok = DigitTokenizer(DigitConfig(encoder="hf", hf_path=str(copy), num_clusters=8, n_iter=5))
    tok.fit(photos[:16])
    ids = tok.encode(photos[16:24])
    tok.save_pretrained(tmp_path / "tok")
    state_keys = set(tok.state_dict())
    assert all(k.startswith("quantizer.") for k in state_keys)  # the HF weights are not ours to store
    saved = json.loads((tmp_path / "tok" / "config.json").read_text())
    assert saved["hf_path"] == str(copy.absolute()) and saved["layer"] == -3
    again = DigitTokenizer.from_pretrained(tmp_path / "tok")
    assert torch.equal(again.encode(photos[16:24]), ids)
    shutil.move(copy, tmp_path / "moved")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        DigitTokenizer.from_pretrained(tmp_path / "tok")
    moved = DigitTokenizer.from_pretrained(tmp_path / "tok", hf_path=str(tmp_path / "moved"))
    assert torch.equal(moved.encode(photos[16:24]), ids)


# ----------------------------------------------------------------------------------------------- vistok ViT


def test_vit_encoder_reads_the_right_block_after_the_final_norm(photos):
    vit = _vit()
    x = photos[:3]
    got = ViTFeatureEncoder(vit, layer=-3).features(x)
    with torch.no_grad():
        z = vit.embed(x)
        for block in vit.blocks[: TINY_VIT.depth - 2]:  # hidden_states[-3] = output of the 3rd block from the end
            z = block(z)
        ref = vit.norm(z)[:, 1:].reshape(3, 4, 4, -1)
    torch.testing.assert_close(got, ref)
    assert got.shape == (3, 4, 4, 32)


# ----------------------------------------------------------------------------------------------- fitting


def test_same_seed_same_centroids_and_ids_other_seed_differs(photos):
    a, b = _tokenizer(seed=3).fit(photos), _tokenizer(seed=3).fit(photos)
    assert torch.equal(a.quantizer.centroids, b.quantizer.centroids)
    assert torch.equal(a.encode(photos), b.encode(photos))
    c = _tokenizer(seed=4).fit(photos)
    assert not torch.equal(a.quantizer.centroids, c.quantizer.centroids)
    assert a.config.seed == 3 and a.fit_stats_["images"] == len(photos) and a.fit_stats_["rows"] == len(photos) * 16


def test_streamed_in_memory_and_on_disk_fits_agree(photos, tmp_path):
    ds = SamplePhotos(size=32, split="train", length=48, seed=5)  # the same pictures as `photos`, as a dataset
    mem = _tokenizer().fit(photos, batch_size=10)
    streamed = _tokenizer().fit(ds, batch_size=10, cache="stream")
    disk = _tokenizer().fit(lambda: iter(photos.split(10)), cache=tmp_path / "features")
    for other in (streamed, disk):
        torch.testing.assert_close(other.quantizer.centroids, mem.quantizer.centroids, atol=1e-5, rtol=0)
        assert torch.equal(other.encode(photos), mem.encode(photos))
        assert other.quantizer.inertia_ == pytest.approx(mem.quantizer.inertia_, rel=1e-6)
    assert (tmp_path / "features" / "features.f32").stat().st_size == len(photos) * 16 * 32 * 4


def test_ids_are_the_nearest_centroids_of_the_features(photos):
    tok = _tokenizer().fit(photos)
    f = tok.features(photos[:5]).reshape(-1, 32)
    brute = torch.cdist(f.double(), tok.quantizer.centroids.double()).argmin(1)
    assert torch.equal(tok.encode(photos[:5]).flatten(), brute)
    assert tok.encode(photos[:5], batch_size=2).shape == (5, 4, 4)
    torch.testing.assert_close(
        tok.indices_to_features(tok.encode(photos[:1])), tok.quantizer.centroids[brute[:16]].view(1, 4, 4, -1)
    )


def test_fit_inputs(photos):
    batches = pixel_batches([{"pixels": photos[:7]}, (photos[7:20], None)], batch_size=4, max_images=10)
    assert [len(b) for b in batches()] == [7, 3]
    with pytest.raises(ValueError, match="at least 16 feature rows"):
        _tokenizer(k=16).fit(photos[:0].new_zeros(0, 3, 32, 32))
    with pytest.raises(ValueError, match=r"in \[-1, 1\]"):
        _tokenizer().fit(photos * 127.5 + 127.5)
    with pytest.raises(TypeError, match="read only once"):
        _tokenizer().fit((b for b in photos.split(8)), cache="stream")
    one_shot = _tokenizer().fit(b for b in photos.split(8))  # fine when the features are computed once
    given = _tokenizer().fit(photos, init=one_shot.quantizer.centroids, n_iter=0)  # given centroids are used as is
    torch.testing.assert_close(given.quantizer.centroids, one_shot.quantizer.centroids)


def test_cluster_stats():
    s = cluster_stats(torch.tensor([5, 5, 0, 0]))
    assert s == {"usage": 0.5, "used": 2, "perplexity": pytest.approx(2.0)}


# ----------------------------------------------------------------------------------------------- save / load


def test_save_load_round_trip_gives_identical_ids(photos, tmp_path):
    tok = _tokenizer().fit(photos)
    tok.save_pretrained(tmp_path / "tok")
    assert any(k.startswith("encoder.vit.") for k in tok.state_dict())  # the ViT is saved alongside
    for loaded in (DigitTokenizer.from_pretrained(tmp_path / "tok"), from_pretrained(tmp_path / "tok")):
        assert isinstance(loaded, DigitTokenizer)
        assert torch.equal(loaded.encode(photos), tok.encode(photos))
        assert loaded.config == tok.config and loaded.config.vit == TINY_VIT


def test_unfitted_tokenizer_refuses_to_encode(photos):
    with pytest.raises(RuntimeError, match="no centroids yet"):
        _tokenizer().encode(photos[:1])


# ----------------------------------------------------------------------------------------------- bad input


def test_bad_pixels_give_clear_errors(photos):
    tok = _tokenizer().fit(photos)
    with pytest.raises(ValueError, match="not a multiple of the vit encoder's patch size 8"):
        tok.encode(torch.zeros(1, 3, 30, 32))
    with pytest.raises(ValueError, match=r"shape \(B, 3, H, W\)"):
        tok.encode(torch.zeros(3, 32, 32))
    with pytest.raises(TypeError, match="float pixels"):
        tok.encode(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"got values in \[0, 255\]"):
        check_pixels(torch.tensor([0.0, 255.0]).view(1, 1, 1, 2).expand(1, 3, 1, 2))
    with pytest.raises(ValueError, match="no hf_path"):
        DigitTokenizer(DigitConfig(encoder="hf"))


# ----------------------------------------------------------------------------------------------- presets


@pytest.mark.parametrize("name", sorted(DIGIT_PRESETS))
def test_presets(name, hf_folder):
    cfg = DigitConfig.from_name(name)
    if cfg.encoder == "vit":
        tok = create_model(name)
        assert tok.codebook_size == 256 and tok.token_grid(64, 64) == (8, 8)
        return
    assert cfg.layer == -3 and cfg.image_size == 224 and cfg.num_clusters in (8192, 16384)
    with pytest.raises(ValueError, match="no hf_path"):
        create_model(name)
    tok = create_model(name, hf_path=str(hf_folder[0]), num_clusters=8)
    assert tok.dim == 32 and tok.token_grid(256, 256) == (28, 28)  # 224 / patch 8 for the tiny stand-in


# ----------------------------------------------------------------------------------------------- shards, pictures


def test_tokenize_to_shards_with_labels_resumes_and_refuses_another_codebook(photos, tmp_path):
    ds = SamplePhotos(size=32, split="train", length=20, seed=9)
    tok = _tokenizer().fit(photos)
    assert tokenize_to_shards(tok, ds, tmp_path / "ids", batch_size=6, max_items=8) == 8
    assert tokenize_to_shards(tok, ds, tmp_path / "ids", batch_size=6) == 20  # resumes after item 8
    reader = ShardReader(tmp_path / "ids")
    expected = tok.encode(torch.stack([ds[i]["pixels"] for i in range(20)]))
    assert len(reader) == 20 and reader.vocab_size == 16
    assert all(np.array_equal(reader[i], expected[i].numpy()) for i in range(20))
    assert reader.labels.tolist() == [ds[i]["label"] for i in range(20)]
    other = _tokenizer(seed=1).fit(photos)
    with pytest.raises(ValueError, match="cannot resume"):
        tokenize_to_shards(other, ds, tmp_path / "ids")


def test_token_map_picture_colours_cells_by_cluster(photos):
    tok = _tokenizer().fit(photos)
    img = np.asarray(token_map_picture(tok, photos[:2], cell=8, titles=["a", "b"]))
    ids = tok.encode(photos[:2])
    colours = palette(16)
    # second panel of the first row: cell (i, j) is painted with the colour of its id (cell 8 → no numbers drawn)
    x0, y0 = 32 + 4, 14
    for i in range(4):
        for j in range(4):
            assert tuple(img[y0 + i * 8 + 4, x0 + j * 8 + 4]) == tuple(colours[ids[0, i, j]])
    assert img.shape[1] == 3 * 32 + 8
