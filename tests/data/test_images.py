"""vistok.data.images: reading any image file, ImageFolder, and what happens with bad files."""

import warnings

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from vistok.data.errors import BadFileError, BadFileWarning
from vistok.data.images import (
    IMAGE_EXTS,
    ImageFolder,
    check_image,
    list_files,
    load_image,
    read_image,
    subfolder_labels,
)
from vistok.data.transforms import apply_box, crop_box, to_tensor

# ------------------------------------------------------------------------------------------------- files and labels


def test_image_exts_cover_the_common_formats():
    assert set(IMAGE_EXTS) == {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}


def test_list_files_is_recursive_sorted_case_insensitive_and_skips_hidden(tmp_path):
    for name in ["b/2.PNG", "a/1.jpg", "a/sub/0.JPEG", "c.txt", ".hidden/x.png", "a/._1.jpg", "z.webp"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    found = [p.relative_to(tmp_path).as_posix() for p in list_files(tmp_path, IMAGE_EXTS)]
    assert found == ["a/1.jpg", "a/sub/0.JPEG", "b/2.PNG", "z.webp"]
    assert len(list_files(tmp_path)) == 5  # every file but the hidden ones


def test_subfolder_labels_sorted_with_root_files_first(tmp_path):
    files = [tmp_path / "dog" / "a.png", tmp_path / "cat" / "x" / "b.png", tmp_path / "c.png", tmp_path / "dog" / "d"]
    classes, labels = subfolder_labels(tmp_path, files)
    assert classes == [".", "cat", "dog"]
    assert labels == [2, 1, 0, 2]
    assert subfolder_labels(tmp_path, [tmp_path / "a.png", tmp_path / "b.png"]) == (["."], [0, 0])


# ------------------------------------------------------------------------------------------------- read_image


def test_read_image_png_round_trips_exactly(tmp_path, make_image):
    path = make_image(tmp_path / "a.png")
    img = read_image(path)
    assert img.mode == "RGB" and img.size == (48, 32)
    np.testing.assert_array_equal(np.asarray(img), np.asarray(Image.open(path).convert("RGB")))


def test_read_image_grey_and_palette_become_rgb(tmp_path, make_image):
    grey = np.asarray(read_image(make_image(tmp_path / "l.png", mode="L")))
    assert grey.shape == (32, 48, 3)
    np.testing.assert_array_equal(grey[..., 0], grey[..., 1])
    np.testing.assert_array_equal(grey[..., 0], np.asarray(Image.open(tmp_path / "l.png")))
    pal = read_image(make_image(tmp_path / "p.png", mode="P"))
    np.testing.assert_array_equal(np.asarray(pal), np.asarray(Image.open(tmp_path / "p.png").convert("RGB")))


def test_read_image_composites_transparency_on_white(tmp_path):
    a = np.zeros((2, 3, 4), np.uint8)
    a[0, 0] = (200, 10, 20, 255)  # opaque: kept
    a[0, 1] = (200, 10, 20, 0)  # transparent: white
    a[0, 2] = (0, 0, 0, 128)  # half black over white: 255 * (1 - 128/255) ≈ 127
    Image.fromarray(a, "RGBA").save(tmp_path / "rgba.png")
    out = np.asarray(read_image(tmp_path / "rgba.png")).astype(int)
    assert out[0, 0].tolist() == [200, 10, 20]
    assert out[0, 1].tolist() == [255, 255, 255]
    assert np.all(np.abs(out[0, 2] - 127) <= 1)
    la = np.stack([np.full((2, 2), 50, np.uint8), np.array([[0, 255], [255, 255]], np.uint8)], axis=-1)
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    out = np.asarray(read_image(tmp_path / "la.png"))
    assert out[0, 0].tolist() == [255, 255, 255] and out[0, 1].tolist() == [50, 50, 50]


def test_read_image_palette_with_transparent_index(tmp_path):
    img = Image.new("P", (2, 1))
    img.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    img.putpixel((0, 0), 0)
    img.putpixel((1, 0), 1)
    img.save(tmp_path / "t.png", transparency=0)
    assert np.asarray(read_image(tmp_path / "t.png")).tolist() == [[[255, 255, 255], [0, 0, 255]]]


def test_read_image_scales_16_bit_grey_to_8_bit(tmp_path):
    a = np.array([[0, 257 * 100, 65535]], np.uint16)
    Image.fromarray(a).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    assert np.asarray(read_image(tmp_path / "g16.png"))[0, :, 0].tolist() == [0, 100, 255]


def test_read_image_converts_cmyk_like_pillow(tmp_path, make_image):
    path = make_image(tmp_path / "c.tiff", mode="CMYK")
    ref = np.asarray(Image.open(path).convert("RGB"))
    np.testing.assert_array_equal(np.asarray(read_image(path)), ref)


def test_read_image_applies_exif_orientation(tmp_path, make_image):
    path = make_image(tmp_path / "plain.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: display needs a 90° clockwise turn
    Image.open(path).save(tmp_path / "rot.png", exif=exif)
    img = read_image(tmp_path / "rot.png")
    assert img.size == (32, 48)
    np.testing.assert_array_equal(np.asarray(img), np.rot90(np.asarray(read_image(path)), k=-1))


@pytest.mark.parametrize(
    "name, reason",
    [
        ("empty.png", "empty"),
        ("text.png", "not an image"),
        ("truncated.jpg", "truncated"),
        ("truncated.png", "truncated"),
    ],
)
def test_read_image_names_file_and_reason(tmp_path, make_bad_files, name, reason):
    path = make_bad_files(tmp_path)[name]
    with pytest.raises(BadFileError) as e:
        read_image(path)
    assert reason in e.value.reason and e.value.path == str(path) and name in str(e.value)


@pytest.mark.parametrize("name", ["truncated.jpg", "truncated.png"])
def test_truncated_images_fail_even_when_pillow_is_told_to_load_them(tmp_path, make_bad_files, monkeypatch, name):
    path = make_bad_files(tmp_path)[name]
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(BadFileError, match="truncated"):
        load_image(path)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # the global is left as the program set it


def test_complete_images_of_every_format_load_with_the_truncation_check(tmp_path, make_image, monkeypatch):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    for ext in IMAGE_EXTS:
        path = make_image(tmp_path / f"a{ext}")
        assert load_image(path).size == (48, 32), ext


def test_max_pixels_refuses_big_images_cheaply(tmp_path, make_image):
    path = make_image(tmp_path / "big.png", width=48, height=32)
    assert check_image(path, max_pixels=48 * 32) == (48, 32)
    for f in (check_image, read_image):
        with pytest.raises(BadFileError, match=r"too large \(48x32 > 1000 pixels\)"):
            f(path, max_pixels=1000)


def test_pillow_decompression_bomb_warning_and_error_stay_inside(tmp_path, make_image, monkeypatch):
    path = make_image(tmp_path / "big.png", width=48, height=32)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 1536 pixels: Pillow warns
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_image(path, max_pixels=None).size == (48, 32)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)  # > 2× the limit: Pillow raises
    with pytest.raises(BadFileError, match="too large"):
        read_image(path, max_pixels=None)


# ------------------------------------------------------------------------------------------------- ImageFolder


@pytest.fixture
def classes_folder(tmp_path, make_image):
    """cat/ with 2 images, dog/ with 1 (a JPEG), all 48×32 except one 40×60."""
    make_image(tmp_path / "cat" / "a.png", seed=1)
    make_image(tmp_path / "cat" / "b.png", width=40, height=60, seed=2)
    make_image(tmp_path / "dog" / "c.jpg", seed=3)
    return tmp_path


def test_image_folder_items_match_the_shared_transforms(classes_folder):
    ds = ImageFolder(classes_folder, size=16)
    assert len(ds) == 3 and ds.classes == ["cat", "dog"] and len(ds.bad) == 0
    assert [p.split("/")[-1] for p in ds.paths] == ["a.png", "b.png", "c.jpg"]
    for i in range(3):
        item = ds[i]
        img = read_image(ds.paths[i])
        ref = to_tensor(apply_box(img, crop_box(img.width, img.height, 16, "center")))
        assert item["pixels"].dtype == torch.float32 and item["pixels"].shape == (3, 16, 16)
        torch.testing.assert_close(item["pixels"], ref, rtol=0, atol=0)
        assert item["label"] == [0, 0, 1][i] and item["index"] == i and item["path"] == ds.paths[i]
        assert item["pixels"].min() >= -1 and item["pixels"].max() <= 1


def test_image_folder_non_square_size_and_no_labels(classes_folder):
    ds = ImageFolder(classes_folder, size=(8, 20), labels=None)
    assert ds[1]["pixels"].shape == (3, 8, 20)
    assert [ds[i]["label"] for i in range(3)] == [0, 0, 0] and ds.classes == []


def test_flat_folder_has_label_zero(tmp_path, make_image):
    make_image(tmp_path / "x.png")
    make_image(tmp_path / "y.bmp")
    ds = ImageFolder(tmp_path, size=8)
    assert ds.classes == ["."] and [ds[i]["label"] for i in range(2)] == [0, 0]


def _all(ds):
    return torch.stack([ds[i]["pixels"] for i in range(len(ds))])


def test_random_crops_and_flips_depend_on_seed_epoch_index_only(classes_folder):
    kw = dict(size=16, crop="random", hflip_p=0.5, scale=1.5)
    a, b = ImageFolder(classes_folder, seed=7, **kw), ImageFolder(classes_folder, seed=7, **kw)
    first = _all(a)
    torch.testing.assert_close(_all(b), first, rtol=0, atol=0)
    assert torch.equal(a[2]["pixels"], first[2])  # order of access does not matter
    a.set_epoch(1)
    assert not torch.equal(_all(a), first)
    a.set_epoch(0)
    torch.testing.assert_close(_all(a), first, rtol=0, atol=0)
    assert not torch.equal(_all(ImageFolder(classes_folder, seed=8, **kw)), first)


def test_random_draws_are_the_same_in_dataloader_workers(classes_folder):
    ds = ImageFolder(classes_folder, size=16, crop="random", hflip_p=0.5, scale=1.5, seed=3)
    ds.set_epoch(2)
    serial = torch.cat([b["pixels"] for b in torch.utils.data.DataLoader(ds, batch_size=2)])
    parallel = torch.cat([b["pixels"] for b in torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2)])
    torch.testing.assert_close(parallel, serial, rtol=0, atol=0)


def test_flip_probability_one_mirrors_the_center_crop(classes_folder):
    plain = ImageFolder(classes_folder, size=16)[0]["pixels"]
    flipped = ImageFolder(classes_folder, size=16, hflip_p=1.0)[0]["pixels"]
    torch.testing.assert_close(flipped, plain.flip(-1), rtol=0, atol=0)


@pytest.mark.parametrize(
    "kw", [dict(crop="middle"), dict(hflip_p=1.5), dict(size=0), dict(scale=0.5), dict(labels="folder")]
)
def test_image_folder_rejects_bad_arguments(classes_folder, kw):
    with pytest.raises(ValueError):
        ImageFolder(classes_folder, **{"size": 8, **kw})


def test_empty_folder_and_folder_without_images_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match=r"no image files found under .*\.jpg.*\.png"):
        ImageFolder(tmp_path, size=8)
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(ValueError, match=str(tmp_path)):
        ImageFolder(tmp_path, size=8)
    with pytest.raises(FileNotFoundError):
        ImageFolder(tmp_path / "missing", size=8)


@pytest.fixture
def mixed_folder(tmp_path, make_image, make_bad_files):
    """3 good images (a, b, z) and every kind of bad image; big.png is 64×64 (over a 3000-pixel limit)."""
    make_image(tmp_path / "a.png", seed=1)
    make_image(tmp_path / "b.jpg", seed=2)
    make_image(tmp_path / "z.png", seed=3)
    make_image(tmp_path / "big.png", width=64, height=64)
    make_bad_files(tmp_path)
    return tmp_path


def test_bad_images_are_skipped_counted_and_warned_about_once(mixed_folder):
    with pytest.warns(BadFileWarning) as record:
        ds = ImageFolder(mixed_folder, size=8, max_pixels=3000)
    assert len(record) == 1
    names = [p.split("/")[-1] for p in ds.paths]
    # truncated files pass the cheap header checks; the decode finds them later
    assert names == ["a.png", "b.jpg", "truncated.jpg", "truncated.png", "z.png"]
    assert ds.bad.counts == {
        "empty file (0 bytes)": 1,
        "not an image (unrecognised format)": 1,
        "too large (64x64 > 3000 pixels)": 1,
    }
    message = str(record[0].message)
    assert "skipped 3" in message and "empty.png" in message and "1 too large" in message


def test_truncated_images_found_while_decoding_give_the_next_good_item(mixed_folder):
    with pytest.warns(BadFileWarning):
        ds = ImageFolder(mixed_folder, size=8, max_pixels=3000)
    with pytest.warns(BadFileWarning) as record:
        item = ds[2]  # truncated.jpg → truncated.png → z.png
    assert item["index"] == 4 and item["path"].endswith("z.png")
    torch.testing.assert_close(item["pixels"], ds[4]["pixels"], rtol=0, atol=0)
    assert ds.bad.counts["truncated image data"] == 2 and len(ds.bad) == 5
    assert len(record) == 2  # the 1st and 2nd decode failures warn, then only the 4th, 8th, ...
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ds[3]["index"] == 4  # known bad: skipped without decoding or warning again
    assert len(ds.bad) == 5


def test_strict_raises_naming_the_file_and_reason(mixed_folder):
    with pytest.raises(BadFileError, match=r"empty\.png: empty file"):
        ImageFolder(mixed_folder, size=8, strict=True)


def test_strict_raises_on_decode_failures_too(tmp_path, make_image, make_bad_files):
    make_image(tmp_path / "good" / "a.png")
    (tmp_path / "good" / "t.png").write_bytes(make_bad_files(tmp_path / "bad")["truncated.png"].read_bytes())
    ds = ImageFolder(tmp_path / "good", size=8, strict=True)
    assert ds[0]["index"] == 0
    with pytest.raises(BadFileError, match=r"t\.png: truncated image data"):
        ds[1]


def test_every_file_bad_is_a_clear_error(tmp_path, make_bad_files):
    bad = make_bad_files(tmp_path)
    for name in ("corrupt.mp4", "truncated.mp4", "one_frame.mp4", "truncated.jpg", "truncated.png"):
        bad[name].unlink()
    with pytest.raises(ValueError, match=r"no usable image files.*skipped 2.*empty file.*not an image"):
        ImageFolder(tmp_path, size=8)


def test_every_file_failing_to_decode_is_a_clear_error(tmp_path, make_bad_files):
    bad = make_bad_files(tmp_path)
    for name in ("corrupt.mp4", "truncated.mp4", "one_frame.mp4", "empty.png", "text.png"):
        bad[name].unlink()
    ds = ImageFolder(tmp_path, size=8)
    with pytest.warns(BadFileWarning), pytest.raises(RuntimeError, match="every file"):
        ds[0]
    with pytest.raises(IndexError):
        ds[2]
