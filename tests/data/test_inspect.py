"""vistok.data.inspect and `vistok data inspect`: counts, resolutions, durations, unreadable files, shard folders."""

import json

import pytest

from vistok.cli import main
from vistok.data.inspect import format_report, inspect_path


@pytest.fixture
def data_folder(tmp_path, make_image, make_video, make_bad_files):
    """3 good images (two 48×32, one 40×60), 2 good videos, 1 text file, and the bad-files set."""
    make_image(tmp_path / "imgs" / "a.png")
    make_image(tmp_path / "imgs" / "b.jpg")
    make_image(tmp_path / "imgs" / "c.webp", width=40, height=60)
    make_video(tmp_path / "vids" / "v.mp4", num_frames=10, fps=8)
    make_video(tmp_path / "vids" / "w.webm", num_frames=20, fps=10, width=64, height=48)
    (tmp_path / "notes.txt").write_text("hello")
    make_bad_files(tmp_path / "bad")
    return tmp_path


def test_inspect_counts_sizes_and_unreadable_files(data_folder):
    r = inspect_path(data_folder, progress=False)
    json.dumps(r)  # JSON-serialisable
    assert r["kind"] == "folder" and r["files_found"] == r["files_inspected"] == 13
    # bad set: 4 broken images (empty, text, truncated jpg/png) and 3 videos (corrupt, truncated, one frame: fine)
    assert r["counts"] == {"images": 7, "videos": 5, "other": 1, "unreadable": 6}
    assert r["total_bytes"] == sum(p.stat().st_size for p in data_folder.rglob("*") if p.is_file())
    assert r["images"]["readable"] == 3
    assert r["images"]["resolution"] == {"min": [48, 32], "max": [40, 60], "most_common": [[48, 32, 2], [40, 60, 1]]}
    v = r["videos"]
    assert v["readable"] == 3 and v["resolution"]["max"] == [64, 48]
    assert v["frames"] == {"min": 1, "max": 20, "mean": pytest.approx(31 / 3), "total": 31}
    assert v["duration_s"]["max"] == pytest.approx(2.0, abs=0.02) and v["duration_s"]["min"] == pytest.approx(0.125)
    assert v["fps"]["min"] == pytest.approx(8) and v["fps"]["max"] == pytest.approx(10)
    assert r["other_extensions"] == {".txt": 1}
    bad = {u["path"]: u["reason"] for u in r["unreadable"]}
    assert bad == {
        "bad/corrupt.mp4": "not a readable video",
        "bad/empty.png": "empty file (0 bytes)",
        "bad/text.png": "not an image (unrecognised format)",
        "bad/truncated.jpg": "truncated image data",
        "bad/truncated.mp4": "not a readable video",
        "bad/truncated.png": "truncated image data",
    }
    assert r["unreadable_reasons"]["truncated image data"] == 2


def test_max_files_limits_the_walk(data_folder):
    r = inspect_path(data_folder, max_files=4, progress=False)
    assert r["files_found"] == 13 and r["files_inspected"] == 4
    assert sum(r["counts"][k] for k in ("images", "videos", "other")) == 4
    assert "4 of 13" in format_report(r)
    with pytest.raises(ValueError, match="max_files"):
        inspect_path(data_folder, max_files=0)


def test_inspect_a_single_file(tmp_path, make_video):
    path = make_video(tmp_path / "v.mkv", num_frames=6, fps=8)
    r = inspect_path(path, progress=False)
    assert r["kind"] == "video" and r["counts"]["videos"] == 1 and r["videos"]["frames"]["total"] == 6
    assert r["unreadable"] == [] and r["total_bytes"] == path.stat().st_size


def test_inspect_a_token_shard_folder_reads_meta_json_only(tmp_path):
    meta = {
        "vistok_shards": 1,
        "num_items": 1234,
        "vocab_size": 262144,
        "dtype": "uint32",
        "grid_shape": [4, 8],
        "tokenizer_config": {"z": 1},
        "shards": [{"name": "shard_00000", "num_items": 1234}],
    }
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    (tmp_path / "shard_00000.bin").write_bytes(b"\x00" * 100)
    r = inspect_path(tmp_path, progress=False)
    json.dumps(r)
    assert r["kind"] == "shards"
    assert r["shards"]["items"] == 1234 and r["shards"]["vocab_size"] == 262144 and r["shards"]["files"] == 2
    assert r["shards"]["shards"] == 1 and r["shards"]["meta"]["grid_shape"] == [4, 8]
    assert r["shards"]["meta"]["dtype"] == "uint32" and "tokenizer_config" not in r["shards"]["meta"]
    text = format_report(r)
    assert "token-shard folder" in text and "1234" in text and "262144" in text


def test_a_meta_json_without_the_shard_key_is_an_ordinary_file(tmp_path):
    (tmp_path / "meta.json").write_text('{"items": 3}')
    r = inspect_path(tmp_path, progress=False)
    assert r["kind"] == "folder" and r["other_extensions"] == {".json": 1}


def test_format_report_is_aligned_and_lists_unreadable_files(data_folder):
    text = format_report(inspect_path(data_folder, progress=False))
    lines = text.splitlines()
    assert lines[0] == str(data_folder)
    rows = [line for line in lines[1:] if line.startswith("  ") and not line.startswith("    ")]
    value_columns = {len(line) - len(line[2:].split("  ", 1)[1].lstrip()) for line in rows if "  " in line[2:]}
    assert len(value_columns) == 1, text  # every value starts in the same column
    assert "48x32 (2)" in text and "6 (2 not a readable video; 2 truncated image data;" in text
    assert "    bad/truncated.png: truncated image data" in lines


def test_inspect_missing_path_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing"):
        inspect_path(tmp_path / "missing")


def test_cli_data_inspect_text_json_and_errors(data_folder, tmp_path, capsys):
    assert main(["data", "inspect", str(data_folder), "-q"]) == 0
    out, err = capsys.readouterr()
    assert "unreadable" in out and "bad/corrupt.mp4: not a readable video" in out and err == ""
    assert main(["data", "inspect", str(data_folder), "--json", "--max-files", "5", "-q"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["files_inspected"] == 5 and report["files_found"] == 13
    assert main(["data", "inspect", str(data_folder / "imgs")]) == 0
    out, err = capsys.readouterr()
    assert "3 (3 readable)" in out and "inspect" in err  # the progress bar goes to stderr
    assert main(["data", "inspect", str(tmp_path / "nope")]) == 2
    assert "no such file or folder" in capsys.readouterr().err
