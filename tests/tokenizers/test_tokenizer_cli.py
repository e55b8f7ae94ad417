"""``vistok encode / decode / reconstruct / tokenizer eval`` on real files with a random-init magvit2-tiny saved in
tmp_path: outputs exist at the right sizes, ids and pixels equal the model's own encode/decode, folders become shard
folders (bad files skipped and reported, interrupted runs resumed), bad input exits 2 and writes nothing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
from PIL import Image

from vistok import cli
from vistok.data.images import read_image
from vistok.data.shards import ShardReader
from vistok.data.transforms import to_tensor, to_uint8
from vistok.data.video import read_video, write_video
from vistok.eval.metrics import psnr
from vistok.hub import from_pretrained
from vistok.registry import create_model
from vistok.tokenizers import api


@pytest.fixture
def vistok(monkeypatch, capsys):
    """Run ``vistok ARGS`` through ``vistok.cli.main``; returns (exit code, stdout, stderr)."""

    def run(*args: str | Path) -> tuple[int, str, str]:
        code = cli.main([*map(str, args), "--quiet"])
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    return create_model("magvit2-tiny").save_pretrained(tmp_path_factory.mktemp("tok") / "magvit2-tiny")


@pytest.fixture(scope="module")
def model(model_dir):
    return from_pretrained(model_dir)


def _smooth_image(path: Path, width: int, height: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    low = rng.integers(0, 256, (4, 5, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(low).resize((width, height), Image.Resampling.BILINEAR).save(path)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("files")
    rng = np.random.default_rng(0)
    video = np.stack([np.roll(rng.integers(0, 256, (4, 5, 3), dtype=np.uint8), t, axis=1) for t in range(6)])
    video = np.stack([np.asarray(Image.fromarray(f).resize((24, 20), Image.Resampling.BILINEAR)) for f in video])
    text = root / "notes.png"
    text.write_text("this is a text file with an image name\n")
    corrupt = root / "corrupt.mp4"
    corrupt.write_bytes(rng.integers(0, 256, 4000, dtype=np.uint8).tobytes())
    return {
        "png": _smooth_image(root / "odd.png", 50, 37),  # not a multiple of 8: padded, cropped back
        "jpg": _smooth_image(root / "photo.jpg", 64, 48, seed=1),
        "mp4": write_video(root / "clip.mp4", video, fps=10.0),
        "text_png": text,
        "corrupt_mp4": corrupt,
    }


@pytest.fixture
def folder(tmp_path) -> Path:
    """cats/ (2 images), dogs/ (1 image + 1 text file named .png)."""
    root = tmp_path / "pets"
    _smooth_image(root / "cats" / "a.png", 40, 32, seed=2)
    _smooth_image(root / "cats" / "b.jpg", 33, 30, seed=3)
    _smooth_image(root / "dogs" / "c.png", 24, 24, seed=4)
    (root / "dogs" / "broken.png").write_text("not an image")
    return root


def _expected_image_ids_and_pixels(model, path: Path) -> tuple[torch.Tensor, np.ndarray]:
    x = to_tensor(read_image(path))
    with torch.inference_mode():
        ids = model.encode(x[None], pad=True)
        recon = model.decode(ids)[0, :, : x.shape[1], : x.shape[2]]
    return ids[0], to_uint8(recon)


# ------------------------------------------------------------------------------------------------------- encode/decode


def test_image_encode_decode_reproduces_the_model_exactly(vistok, model_dir, model, files, tmp_path):
    ids_expected, pixels_expected = _expected_image_ids_and_pixels(model, files["png"])
    code, out, _ = vistok("encode", files["png"], "-o", tmp_path / "odd.npy", "--model", model_dir)
    assert code == 0 and "odd.npy" in out and "5×7 grid" in out
    ids = np.load(tmp_path / "odd.npy")
    assert ids.dtype == np.uint16 and np.array_equal(ids, ids_expected.numpy())
    meta = json.loads((tmp_path / "odd.npy.json").read_text())
    assert meta["kind"] == "image" and meta["size"] == [37, 50] and meta["grid"] == [5, 7]
    assert meta["tokenizer"]["config_sha256"] == api.tokenizer_info(model)["config_sha256"]

    code, out, _ = vistok("decode", tmp_path / "odd.npy", "-o", tmp_path / "odd_dec.png", "--model", model_dir)
    assert code == 0 and "odd_dec.png" in out
    decoded = np.asarray(Image.open(tmp_path / "odd_dec.png"))
    assert decoded.shape == (37, 50, 3) and np.array_equal(decoded, pixels_expected)


def test_size_resizes_and_centre_crops(vistok, model_dir, files, tmp_path):
    code, _, _ = vistok("encode", files["jpg"], "-o", tmp_path / "p.npy", "--model", model_dir, "--size", 32)
    assert code == 0 and np.load(tmp_path / "p.npy").shape == (4, 4)
    assert json.loads((tmp_path / "p.npy.json").read_text())["source_size"] == [48, 64]
    code, _, _ = vistok("decode", tmp_path / "p.npy", "-o", tmp_path / "p.jpg", "--model", model_dir)
    assert code == 0 and Image.open(tmp_path / "p.jpg").size == (32, 32)


def test_video_encode_decode_and_chunked_encoding(vistok, model_dir, model, files, tmp_path):
    code, out, _ = vistok("encode", files["mp4"], "-o", tmp_path / "v.npy", "--model", model_dir)
    assert code == 0 and "video" in out
    ids = np.load(tmp_path / "v.npy")
    assert ids.shape == model.token_grid((6, 20, 24), pad=True) == (3, 3, 3)
    frames, _ = read_video(files["mp4"])
    from vistok.data.transforms import frames_to_tensor

    with torch.inference_mode():
        expected = model.encode(frames_to_tensor(frames)[None], pad=True)[0]
    assert np.array_equal(ids, expected.numpy())
    meta = json.loads((tmp_path / "v.npy.json").read_text())
    assert meta["size"] == [6, 20, 24] and meta["fps"] == pytest.approx(10.0)

    code, _, _ = vistok("encode", files["mp4"], "-o", tmp_path / "c.npy", "--model", model_dir, "--chunk-frames", 2)
    assert code == 0 and np.array_equal(np.load(tmp_path / "c.npy"), ids)

    code, _, _ = vistok("decode", tmp_path / "v.npy", "-o", tmp_path / "v.mp4", "--model", model_dir)
    assert code == 0
    decoded, times = read_video(tmp_path / "v.mp4")
    assert decoded.shape == (6, 20, 24, 3) and 1 / np.median(np.diff(times)) == pytest.approx(10.0)
    with torch.inference_mode():
        exact = to_uint8(model.decode(expected[None])[0, :, :6, :20, :24])
    reference = read_video(write_video(tmp_path / "ref.mp4", exact, fps=10.0))[0]  # same frames, same codec
    # H.264 amplifies ±1 float-rounding differences between processes, so compare at the codec's own noise level
    codec_error = np.abs(reference.astype(int) - exact.astype(int)).mean()
    assert np.abs(decoded.astype(int) - exact.astype(int)).mean() <= 1.5 * codec_error + 0.5


def test_bare_npy_of_ids_decodes_at_the_grid_size(vistok, model_dir, tmp_path):
    np.save(tmp_path / "mine.npy", np.arange(12, dtype=np.int64).reshape(3, 4))
    code, out, _ = vistok("decode", tmp_path / "mine.npy", "-o", tmp_path / "mine.png", "--model", model_dir)
    assert code == 0 and "no sidecar" in out and Image.open(tmp_path / "mine.png").size == (32, 24)


# ------------------------------------------------------------------------------------------------------- reconstruct


def test_reconstruct_image_writes_recon_and_side_by_side_and_prints_metrics(vistok, model_dir, model, files, tmp_path):
    _, expected = _expected_image_ids_and_pixels(model, files["png"])
    code, out, _ = vistok("reconstruct", files["png"], "-o", tmp_path / "rec.png", "--model", model_dir)
    assert code == 0
    recon = np.array(Image.open(tmp_path / "rec.png"))
    assert np.array_equal(recon, expected)
    original = np.array(read_image(files["png"]))
    side = np.asarray(Image.open(tmp_path / "rec-compare.png"))
    assert side.shape == (37, 2 * 50 + api.GAP, 3)
    assert np.array_equal(side[:, :50], original) and np.array_equal(side[:, -50:], recon)
    value = psnr(*(torch.from_numpy(a).permute(2, 0, 1)[None] for a in (original, recon))).item()
    assert f"PSNR {value:.2f} dB" in out and "SSIM" in out


def test_reconstruct_video_writes_mp4s_and_a_frame_strip(vistok, model_dir, files, tmp_path):
    code, out, _ = vistok("reconstruct", files["mp4"], "-o", tmp_path / "rec.mp4", "--model", model_dir)
    assert code == 0 and "PSNR" in out
    assert read_video(tmp_path / "rec.mp4")[0].shape == (6, 20, 24, 3)
    assert read_video(tmp_path / "rec-compare.mp4")[0].shape == (6, 20, 2 * 24 + api.GAP, 3)
    strip = Image.open(tmp_path / "rec-frames.png")
    assert strip.size == (6 * 24 + 5 * api.GAP, 2 * 20 + api.GAP)


# ------------------------------------------------------------------------------------------------------- folders


def test_folder_encode_writes_shards_skips_the_bad_file_and_decodes_back(vistok, model_dir, model, folder, tmp_path):
    code, out, _ = vistok("encode", folder, "-o", tmp_path / "shards", "--model", model_dir)
    assert code == 0 and "Skipped 1 unreadable file" in out and "broken.png" in out
    reader = ShardReader(tmp_path / "shards")
    assert len(reader) == 3 and reader.labels.tolist() == [0, 0, 1]
    assert reader.meta["extra"]["vistok_encode"]["classes"] == ["cats", "dogs"]
    ids_a, pixels_a = _expected_image_ids_and_pixels(model, folder / "cats" / "a.png")
    assert np.array_equal(reader[0], ids_a.numpy())

    code, out, _ = vistok("decode", tmp_path / "shards", "-o", tmp_path / "decoded", "--model", model_dir)
    assert code == 0 and "3 items" in out
    names = sorted(p.relative_to(tmp_path / "decoded").as_posix() for p in (tmp_path / "decoded").rglob("*.png"))
    assert names == ["cats/a.png", "cats/b.png", "dogs/c.png"]
    assert Image.open(tmp_path / "decoded" / "cats" / "b.png").size == (33, 30)  # cropped back after padding
    assert np.array_equal(np.asarray(Image.open(tmp_path / "decoded" / "cats" / "a.png")), pixels_a)


def test_interrupted_folder_encode_resumes_to_the_same_shards(vistok, model_dir, folder, tmp_path, monkeypatch):
    code, _, _ = vistok("encode", folder, "-o", tmp_path / "clean", "--model", model_dir)
    assert code == 0
    calls, real_encode = [], api.encode_pixels

    def interrupt_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_encode(*args, **kwargs)

    monkeypatch.setattr(api, "encode_pixels", interrupt_second)
    code, _, err = vistok("encode", folder, "-o", tmp_path / "resumed", "--model", model_dir)
    assert code == 130 and "interrupted" in err
    assert len(ShardReader(tmp_path / "resumed")) == 1  # the item before the interrupt was committed
    monkeypatch.setattr(api, "encode_pixels", real_encode)
    code, out, _ = vistok("encode", folder, "-o", tmp_path / "resumed", "--model", model_dir)
    assert code == 0 and "Resumed" in out and "1 items were already there" in out
    clean, resumed = ShardReader(tmp_path / "clean"), ShardReader(tmp_path / "resumed")
    assert len(resumed) == 3 and all(np.array_equal(clean[i], resumed[i]) for i in range(3))
    assert (tmp_path / "resumed" / api.MANIFEST_NAME).read_text() == (
        tmp_path / "clean" / api.MANIFEST_NAME
    ).read_text()
    code, _, err = vistok("encode", folder, "-o", tmp_path / "resumed", "--model", model_dir, "--size", 16)
    assert code == 2 and "other settings" in err


def test_mixed_folder_stores_images_as_one_frame_videos(vistok, model_dir, files, tmp_path):
    root = tmp_path / "mixed"
    root.mkdir()
    for key in ("png", "mp4"):
        (root / files[key].name).write_bytes(files[key].read_bytes())
    code, _, _ = vistok("encode", root, "-o", tmp_path / "s", "--model", model_dir)
    assert code == 0
    reader = ShardReader(tmp_path / "s")
    assert [reader.grid_shape(i) for i in range(2)] == [(3, 3, 3), (1, 5, 7)]  # clip.mp4, odd.png
    code, _, _ = vistok("decode", tmp_path / "s", "-o", tmp_path / "d", "--model", model_dir)
    assert code == 0 and Image.open(tmp_path / "d" / "odd.png").size == (50, 37)
    assert read_video(tmp_path / "d" / "clip.mp4")[0].shape == (6, 20, 24, 3)


def test_reconstruct_folder_writes_every_file_and_metrics_json(vistok, model_dir, folder, tmp_path):
    code, out, _ = vistok("reconstruct", folder, "-o", tmp_path / "rec", "--model", model_dir)
    assert code == 0 and "mean PSNR" in out and "Skipped 1" in out
    report = json.loads((tmp_path / "rec" / "metrics.json").read_text())
    assert sorted(report["files"]) == ["cats/a.png", "cats/b.jpg", "dogs/c.png"]
    assert (tmp_path / "rec" / "cats" / "b.png").exists() and (tmp_path / "rec" / "cats" / "b-compare.png").exists()


# ------------------------------------------------------------------------------------------------------- eval


def test_eval_on_samples_prints_a_table_and_writes_json(vistok, model_dir, model, tmp_path):
    args = ("--data", "samples", "--size", 32, "--frames", 5, "--max-items", 2, "--json", tmp_path / "e.json")
    code, out, _ = vistok("tokenizer", "eval", "--model", model_dir, *args)
    assert code == 0 and "PSNR (dB)" in out and "codebook usage" in out and "skipped: pass --inception-weights" in out
    report = json.loads((tmp_path / "e.json").read_text())
    images, videos = report["sections"]["images"], report["sections"]["videos"]
    assert images["items"] == 2 and videos["items"] == 2 and videos["shape"] == [5, 32, 32]
    assert images["bpp_raw"] == pytest.approx(16 * 10 / 32**2) and videos["bpp_raw"] == pytest.approx(2 * 160 / 5120)
    # the numbers are those of the model on fixed-seed crops of the held-out photos
    from vistok.data.samples import SamplePhotos
    from vistok.tokenizers.api import EVAL_SEED

    crops = SamplePhotos(size=32, split="heldout", length=2, crop="random", hflip_p=0.0, seed=EVAL_SEED)
    x = torch.stack([crops[i]["pixels"] for i in range(2)])
    with torch.inference_mode():
        ids = model.encode(x)
        recon = model.decode(ids)
    as_u8 = lambda v: ((v.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    assert images["psnr"] == pytest.approx(psnr(as_u8(x), as_u8(recon)).mean().item(), abs=1e-4)
    used = len(torch.unique(ids))
    assert images["codebook"]["used_codes"] == used and images["codebook"]["usage"] == used / 1024
    assert images["ms_ssim_scales"] == 2 and 0 < images["ssim"] < 1


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit.script / save of the toy network
def test_eval_on_a_folder_reports_skipped_files_rfid_and_lpips(vistok, model_dir, folder, tmp_path):
    torch.jit.save(torch.jit.script(_ToyFeatures()), str(tmp_path / "features.pt"))
    lpips_files = _random_lpips_weights(tmp_path)
    code, out, _ = vistok(
        "tokenizer", "eval", "--model", model_dir, "--data", folder, "--size", 16, "--json", tmp_path / "e.json",
        "--inception-weights", tmp_path / "features.pt", "--lpips-weights", *lpips_files,
    )  # fmt: skip
    assert code == 0, out
    images = json.loads((tmp_path / "e.json").read_text())["sections"]["images"]
    assert images["items"] == 3 and [s["reason"] for s in images["skipped"]] == ["not an image (unrecognised format)"]
    assert images["rfid"] is not None and images["rfid"] >= 0 and images["rfid_samples"] == 3
    assert images["lpips"] is not None and images["lpips"] > 0


class _ToyFeatures(torch.nn.Module):
    """A stand-in for the FID Inception network (same calling convention, 6 features)."""

    def forward(self, img: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        x = img.float() / 255.0
        return torch.cat([x.mean(dim=(2, 3)), x.std(dim=(2, 3))], dim=1)


def _random_lpips_weights(tmp_path: Path) -> list[Path]:
    """Random LPIPS weights as two files: the VGG16 convolutions and the (positive) linear layers."""
    from vistok.train.perceptual import LPIPS

    torch.manual_seed(0)
    state = LPIPS().state_dict()
    vgg = {k: v for k, v in state.items() if k.startswith("net.")}
    lins = {k.replace("lins.", "lin"): v.abs() for k, v in state.items() if k.startswith("lins.")}
    paths = [tmp_path / "vgg16.safetensors", tmp_path / "lpips_lin.safetensors"]
    for path, part in zip(paths, (vgg, lins)):
        safetensors.torch.save_file({k: v.contiguous() for k, v in part.items()}, str(path))
    return paths


# ------------------------------------------------------------------------------------------------------- bad input


def _tampered_tokens(tmp_path: Path, model_dir: Path, files: dict, vistok) -> Path:
    vistok("encode", files["png"], "-o", tmp_path / "t.npy", "--model", model_dir)
    ids = np.load(tmp_path / "t.npy")
    ids[0, 0] ^= 1
    np.save(tmp_path / "t.npy", ids)
    return tmp_path / "t.npy"


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing", "no such file"),
        ("text_png", "not an image"),
        ("corrupt_mp4", "not a readable video"),
        ("unsupported", "unsupported file type"),
        ("wrong_output", "go to a .npy file"),
    ],
)
def test_encode_bad_input_exits_2_and_writes_nothing(vistok, model_dir, files, tmp_path, case, message):
    src = {"missing": tmp_path / "nope.png", "unsupported": tmp_path / "a.txt"}.get(case, files.get(case))
    if case == "unsupported":
        src.write_text("x")
    out = tmp_path / ("out.png" if case == "wrong_output" else "out.npy")
    code, _, err = vistok("encode", files["png"] if case == "wrong_output" else src, "-o", out, "--model", model_dir)
    assert code == 2 and err.startswith("vistok: error:") and message in err, err
    assert not out.exists() and not Path(str(out) + ".json").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary files left


@pytest.mark.parametrize(
    "case, message",
    [
        ("tampered", "checksum mismatch"),
        ("floats", "not token ids"),
        ("not_npy", "not a readable .npy"),
        ("png", "expected a .npy token file"),
        ("other_model", "made by a magvit2 tokenizer with config"),
        ("video_to_png", "video output must end in"),
        ("out_of_range", "outside the vocabulary"),
    ],
)
def test_decode_bad_token_files_exit_2_and_write_nothing(vistok, model_dir, files, tmp_path, case, message):
    model_arg = model_dir
    if case == "tampered":
        src = _tampered_tokens(tmp_path, model_dir, files, vistok)
    elif case == "floats":
        np.save(src := tmp_path / "f.npy", np.zeros((4, 4), np.float32))
    elif case == "not_npy":
        (src := tmp_path / "x.npy").write_text("hello")
    elif case == "png":
        src = files["png"]
    elif case == "other_model":
        vistok("encode", files["png"], "-o", src := tmp_path / "t.npy", "--model", model_dir)
        model_arg = create_model("magvit2-tiny", latent_channels=8).save_pretrained(tmp_path / "other")
    elif case == "video_to_png":
        vistok("encode", files["mp4"], "-o", src := tmp_path / "v.npy", "--model", model_dir)
    else:
        np.save(src := tmp_path / "big.npy", np.full((2, 2), 5000, np.int64))
    out = tmp_path / "out.png"
    code, _, err = vistok("decode", src, "-o", out, "--model", model_arg)
    assert code == 2 and err.startswith("vistok: error:") and message in err, err
    assert not out.exists()


def test_bad_inputs_to_reconstruct_and_folders_write_nothing(vistok, model_dir, files, tmp_path):
    code, _, err = vistok("reconstruct", files["text_png"], "-o", tmp_path / "r.png", "--model", model_dir)
    assert code == 2 and "not an image" in err and not list(tmp_path.iterdir())
    code, _, err = vistok("reconstruct", files["mp4"], "-o", tmp_path / "sub" / "r.png", "--model", model_dir)
    assert code == 2 and "video output must end in" in err and not list(tmp_path.iterdir())
    bad_only = tmp_path / "bad"
    bad_only.mkdir()
    (bad_only / "x.png").write_text("no")
    code, _, err = vistok("encode", bad_only, "-o", tmp_path / "shards", "--model", model_dir)
    assert code == 2 and "no readable files" in err and not (tmp_path / "shards").exists()
    code, _, err = vistok("decode", tmp_path / "bad", "-o", tmp_path / "d", "--model", model_dir)
    assert code == 2 and "not a vistok shard folder" in err and not (tmp_path / "d").exists()


def test_model_argument_errors_are_clear(vistok, files, tmp_path, monkeypatch):
    monkeypatch.setattr(api, "default_weights_dir", lambda: tmp_path / "weights" / "default")
    code, _, err = vistok("encode", files["png"], "-o", tmp_path / "a.npy")
    assert code == 2 and "--model DIR" in err and "no default tokenizer weights" in err
    code, _, err = vistok("encode", files["png"], "-o", tmp_path / "a.npy", "--model", "magvit2-tiyn")
    assert code == 2 and "did you mean magvit2-tiny" in err
    code, _, err = vistok("encode", files["png"], "-o", tmp_path / "a.npy", "--model", files["png"])
    assert code == 2 and "expected a folder" in err
    assert not (tmp_path / "a.npy").exists()


def test_a_preset_name_loads_an_untrained_tokenizer_with_a_warning():
    with pytest.warns(UserWarning, match="untrained"):
        tok = api.load_tokenizer("magvit2-tiny", device="cpu")
    assert tok.codebook_size == 1024 and not tok.training


def test_shipped_default_tokenizer_reconstructs_offline_without_model(vistok, files, tmp_path):
    """`vistok reconstruct any.png` works right after install: the default weights ship inside the package."""
    assert (api.default_weights_dir() / "model.safetensors").is_file()
    tok = api.load_tokenizer(device="cpu")
    assert tok.codebook_size == 1024 and tok.spatial_factor == 8 and not tok.training
    code, out, _ = vistok("reconstruct", files["png"], "-o", tmp_path / "rec.png")
    assert code == 0 and "PSNR" in out and (tmp_path / "rec.png").exists()
    # trained, not random: on held-out crops it beats an untrained tokenizer by a wide margin
    from vistok.data.samples import SamplePhotos
    from vistok.eval.metrics import psnr

    crops = SamplePhotos(size=32, split="heldout", length=8, crop="random", hflip_p=0.0, seed=api.EVAL_SEED)
    x = torch.stack([crops[i]["pixels"] for i in range(8)])
    untrained = create_model("magvit2-tiny").eval()
    with torch.inference_mode():
        trained_psnr = psnr(tok.decode(tok.encode(x)).clamp(-1, 1), x).mean()
        random_psnr = psnr(untrained.decode(untrained.encode(x)).clamp(-1, 1), x).mean()
    assert trained_psnr > 16 and trained_psnr > random_psnr + 5
