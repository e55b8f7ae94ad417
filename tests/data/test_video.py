"""vistok.data.video: probing, reading by timestamp, VideoFolder clip sampling, and bad video files."""

import warnings

import numpy as np
import pytest
import torch

from vistok.data import video
from vistok.data.errors import BadFileError, BadFileWarning
from vistok.data.video import VIDEO_EXTS, VideoFolder, probe_video, read_frames_at, read_video, write_video

VFR_TIMES = [0.0, 0.1, 0.15, 0.5, 0.55, 0.6, 1.0, 1.4, 1.45, 1.5]  # variable frame rate


# ------------------------------------------------------------------------------------------------- probe and read


def test_video_exts():
    assert set(VIDEO_EXTS) == {".mp4", ".webm", ".mkv", ".avi", ".mov", ".gif"}


@pytest.mark.parametrize("ext", [".mp4", ".webm", ".mkv", ".avi", ".mov", ".gif"])
def test_probe_and_read_every_container(tmp_path, make_video, frame_ids, ext):
    path = make_video(tmp_path / f"clip{ext}", num_frames=10, fps=8)
    info = probe_video(path)
    assert (info.num_frames, info.width, info.height) == (10, 48, 32)
    assert info.fps == pytest.approx(8, rel=0.05) and info.duration == pytest.approx(1.25, abs=0.02)
    if ext in (".webm", ".mkv"):  # no frame count in the container: counted from the packets
        assert info.timestamps == pytest.approx(np.arange(10) / 8, abs=0.006)
    frames, times = read_video(path)
    assert frames.dtype == np.uint8 and frames.shape == (10, 32, 48, 3)
    assert times == pytest.approx(np.arange(10) / 8, abs=0.006)
    if ext != ".gif":  # GIF's 256-colour palette blurs the brightness numbers
        assert frame_ids(frames) == list(range(10))


def test_probe_exact_decodes_every_frame(tmp_path, make_timed_video):
    path = make_timed_video(tmp_path / "vfr.mp4", VFR_TIMES)
    fast, exact = probe_video(path), probe_video(path, exact=True)
    assert fast.timestamps is None and fast.num_frames == 10
    assert exact.num_frames == 10 and exact.timestamps == pytest.approx(VFR_TIMES)
    assert exact.last_time == pytest.approx(1.5)


def test_read_video_window_and_max_frames(tmp_path, make_timed_video, frame_ids):
    path = make_timed_video(tmp_path / "long.mp4", np.arange(40) / 8, gop=4)
    frames, times = read_video(path, start=2.0, end=3.0)
    assert frame_ids(frames) == list(range(16, 25)) and times == pytest.approx(np.arange(16, 25) / 8)
    frames, times = read_video(path, start=1.0, max_frames=3)
    assert frame_ids(frames) == [8, 9, 10]
    frames, times = read_video(path, start=10.0)
    assert frames.shape == (0, 32, 48, 3) and times.shape == (0,)


@pytest.mark.parametrize("ext", [".mp4", ".mkv"])
def test_read_frames_at_picks_the_latest_frame_at_each_time(tmp_path, make_timed_video, frame_ids, ext):
    path = make_timed_video(tmp_path / f"vfr{ext}", VFR_TIMES)
    frames, stamps, ended = read_frames_at(path, [0.0, 0.25, 0.5, 0.75, 1.0])
    assert frame_ids(frames) == [0, 2, 3, 5, 6]
    assert stamps == pytest.approx([0.0, 0.15, 0.5, 0.6, 1.0]) and not ended
    frames, stamps, ended = read_frames_at(path, [1.42, 3.0])  # past the end: the last frame, and we are told
    assert frame_ids(frames) == [7, 9] and ended


def test_read_frames_at_seeks_into_long_videos(tmp_path, make_timed_video, frame_ids):
    path = make_timed_video(tmp_path / "long.mp4", np.arange(40) / 8, gop=4)
    frames, stamps, _ = read_frames_at(path, 3.01 + np.arange(5) / 4)
    assert frame_ids(frames) == [24, 26, 28, 30, 32] and stamps == pytest.approx(np.arange(24, 33, 2) / 8)


def test_a_clip_late_in_a_video_decodes_about_one_gop_not_the_whole_video(tmp_path, make_timed_video, monkeypatch):
    path = make_timed_video(tmp_path / "long.mp4", np.arange(40) / 8, gop=4)
    decoded = []
    frame_time = video._frame_time
    monkeypatch.setattr(video, "_frame_time", lambda *a: decoded.append(1) or frame_time(*a))
    read_frames_at(path, 3.01 + np.arange(5) / 4)  # frames 24..32; keyframes every 4 frames
    assert len(decoded) <= 12


def test_an_imprecise_seek_falls_back_to_decoding_from_the_start(tmp_path, make_timed_video, frame_ids, monkeypatch):
    path = make_timed_video(tmp_path / "long.mp4", np.arange(40) / 8, gop=4)
    seek = video._seek
    monkeypatch.setattr(video, "_seek", lambda c, s, t: seek(c, s, t + 1.0))  # an index that overshoots by 1 s
    assert frame_ids(read_frames_at(path, [2.0, 2.5])[0]) == [16, 20]
    assert frame_ids(read_video(path, start=2.0, max_frames=2)[0]) == [16, 17]


def test_write_video_pads_odd_sizes_and_validates(tmp_path):
    path = write_video(tmp_path / "odd.mp4", np.full((3, 31, 47, 3), 100, np.uint8))
    assert probe_video(path).width == 48 and probe_video(path).height == 32
    with pytest.raises(ValueError, match="uint8 frames"):
        write_video(tmp_path / "x.mp4", np.zeros((3, 8, 8), np.uint8))
    with pytest.raises(ValueError, match="unsupported video extension"):
        write_video(tmp_path / "x.flv", np.zeros((3, 8, 8, 3), np.uint8))


# ------------------------------------------------------------------------------------------------- clip sampling


def _ids(ds, frame_ids):
    return [frame_ids(ds[i]["pixels"]) for i in range(len(ds))]


def test_stride_clips_spread_evenly_from_first_to_last_frame(tmp_path, make_video, frame_ids):
    make_video(tmp_path / "a.mp4", num_frames=20)
    ds = VideoFolder(tmp_path, num_frames=5, frame_stride=2, size=16, clips_per_video=3)
    assert len(ds) == 3 and ds.needed == 9
    assert _ids(ds, frame_ids) == [[0, 2, 4, 6, 8], [6, 8, 10, 12, 14], [11, 13, 15, 17, 19]]
    item = ds[0]
    assert item["pixels"].shape == (3, 5, 16, 16) and item["pixels"].dtype == torch.float32
    assert item["fps"] == pytest.approx(4.0) and item["index"] == 0 and item["label"] == 0
    assert item["path"].endswith("a.mp4")


def test_stride_clips_from_containers_without_frame_counts(tmp_path, make_video, frame_ids):
    make_video(tmp_path / "a.webm", num_frames=12)
    ds = VideoFolder(tmp_path, num_frames=4, frame_stride=3, size=16, clips_per_video=2)
    assert _ids(ds, frame_ids) == [[0, 3, 6, 9], [2, 5, 8, 11]]


def test_random_clip_starts_are_deterministic_and_in_range(tmp_path, make_timed_video, frame_ids):
    make_timed_video(tmp_path / "long.mp4", np.arange(40) / 8, gop=4)
    kw = dict(num_frames=4, frame_stride=3, size=16, crop="random", clips_per_video=4)
    ds = VideoFolder(tmp_path, seed=1, **kw)
    ids = _ids(ds, frame_ids)
    for clip in ids:
        assert 0 <= clip[0] <= 40 - 10 and np.all(np.diff(clip) == 3)
    assert len({c[0] for c in ids}) > 1
    assert _ids(VideoFolder(tmp_path, seed=1, **kw), frame_ids) == ids
    ds.set_epoch(1)
    assert _ids(ds, frame_ids) != ids


def test_fps_sampling_of_a_constant_rate_video(tmp_path, make_video, frame_ids):
    make_video(tmp_path / "a.mp4", num_frames=10, fps=8)
    half = VideoFolder(tmp_path, num_frames=5, fps=4, size=16)
    assert _ids(half, frame_ids) == [[0, 2, 4, 6, 8]] and half[0]["fps"] == 4.0
    double = VideoFolder(tmp_path, num_frames=6, fps=16, size=16)
    assert _ids(double, frame_ids) == [[0, 0, 1, 1, 2, 2]]


@pytest.mark.parametrize("ext", [".mp4", ".mkv"])
def test_fps_sampling_follows_timestamps_of_variable_rate_files(tmp_path, make_timed_video, frame_ids, ext):
    make_timed_video(tmp_path / f"vfr{ext}", VFR_TIMES)
    ds = VideoFolder(tmp_path, num_frames=5, fps=4, size=16)
    assert _ids(ds, frame_ids) == [[0, 2, 3, 5, 6]]  # by frame count it would be [0, 1, 2, 3, 4] or similar


def test_fps_clips_of_a_long_video_are_spread_and_seeked(tmp_path, make_timed_video, frame_ids):
    make_timed_video(tmp_path / "long.mp4", np.arange(40) / 8, gop=4)
    ds = VideoFolder(tmp_path, num_frames=3, fps=2, size=16, clips_per_video=3)
    ids = _ids(ds, frame_ids)
    assert ids[0] == [0, 4, 8] and all(np.diff(c).tolist() == [4, 4] for c in ids)
    assert ids[2][-1] >= 37  # the last clip ends near the last frame (39)


def test_one_crop_box_for_the_whole_clip(tmp_path, make_video):
    make_video(tmp_path / "ramp.mp4", num_frames=10, width=48, height=32, ramp=True)
    ds = VideoFolder(tmp_path, num_frames=6, size=16, crop="random", hflip_p=0.5, scale=1.5, clips_per_video=8)
    flips = set()
    for i in range(len(ds)):
        x = ds[i]["pixels"]
        profile = x.mean(dim=(0, 2))  # (T, W): the ramp seen by each frame
        profile = profile - profile.mean(dim=1, keepdim=True)
        torch.testing.assert_close(profile, profile[:1].expand_as(profile), atol=0.03, rtol=0)
        flips.add(bool(profile[0, -1] < profile[0, 0]))
    assert flips == {True, False}


def test_dataloader_workers_give_the_same_clips(tmp_path, make_video):
    make_video(tmp_path / "a.mp4", num_frames=12)
    make_video(tmp_path / "b" / "c.webm", num_frames=12)
    ds = VideoFolder(tmp_path, num_frames=4, size=16, crop="random", hflip_p=0.5, clips_per_video=2, seed=5)
    serial = [b["pixels"] for b in torch.utils.data.DataLoader(ds, batch_size=2)]
    parallel = [b["pixels"] for b in torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2)]
    torch.testing.assert_close(torch.cat(parallel), torch.cat(serial), rtol=0, atol=0)
    assert ds.classes == [".", "b"] and [ds[i]["label"] for i in range(4)] == [0, 0, 1, 1]


# ------------------------------------------------------------------------------------------------- short videos


def test_short_videos_are_skipped_with_the_reason(tmp_path, make_video):
    make_video(tmp_path / "long.mp4", num_frames=20)
    make_video(tmp_path / "one.mp4", num_frames=1)
    with pytest.warns(BadFileWarning, match=r"too short \(1 frames < 17 needed\)"):
        ds = VideoFolder(tmp_path, num_frames=17, size=16)
    assert len(ds) == 1 and ds.bad.counts == {"too short (1 frames < 17 needed)": 1}
    with pytest.raises(ValueError, match=r"no usable video files.*too short \(5 frames < 6 needed\)"):
        VideoFolder(tmp_path, num_frames=6, fps=2, size=16)  # 20 frames at 8 fps span 19/8 s: 5 frames at 2 fps


def test_short_videos_loop_from_the_first_frame(tmp_path, make_video, frame_ids):
    make_video(tmp_path / "three.mp4", num_frames=3, fps=8)
    assert _ids(VideoFolder(tmp_path, num_frames=8, size=16, short="loop"), frame_ids) == [[0, 1, 2, 0, 1, 2, 0, 1]]
    strided = VideoFolder(tmp_path, num_frames=4, frame_stride=2, size=16, short="loop")
    assert _ids(strided, frame_ids) == [[0, 2, 1, 0]]
    timed = VideoFolder(tmp_path, num_frames=6, fps=16, size=16, short="loop")  # period 3/8 s
    assert _ids(timed, frame_ids) == [[0, 0, 1, 1, 2, 2]]
    one = tmp_path / "one"
    make_video(one / "one.mp4", num_frames=1)
    assert _ids(VideoFolder(one, num_frames=5, size=16, short="loop"), frame_ids) == [[0] * 5]


# ------------------------------------------------------------------------------------------------- bad files


@pytest.fixture
def video_folder(tmp_path, make_video, make_bad_files):
    """Two good 20-frame videos (a.mp4, z.mkv) and every kind of bad file (the image ones are not listed)."""
    make_video(tmp_path / "a.mp4", num_frames=20)
    make_video(tmp_path / "z.mkv", num_frames=20)
    make_bad_files(tmp_path)
    (tmp_path / "empty.webm").write_bytes(b"")
    (tmp_path / "text.avi").write_text("not a video")
    return tmp_path


def test_bad_videos_are_skipped_counted_and_warned_about_once(video_folder):
    with pytest.warns(BadFileWarning) as record:
        ds = VideoFolder(video_folder, num_frames=17, size=16)
    assert len(record) == 1
    assert [p.split("/")[-1] for p in ds.paths] == ["a.mp4", "z.mkv"]
    assert ds.bad.counts == {
        "not a readable video": 3,
        "too short (1 frames < 17 needed)": 1,
        "empty file (0 bytes)": 1,
    }
    message = str(record[0].message)
    assert "skipped 5" in message and "3 not a readable video" in message and "corrupt.mp4" in message


def test_strict_video_folder_names_the_file(video_folder):
    with pytest.raises(BadFileError, match=r"corrupt\.mp4: not a readable video"):
        VideoFolder(video_folder, num_frames=17, size=16, strict=True)


def test_probe_and_read_name_the_file_and_reason(tmp_path, make_bad_files):
    bad = make_bad_files(tmp_path)
    for name, reason in [
        ("corrupt.mp4", "not a readable video"),
        ("truncated.mp4", "not a readable video"),
        ("empty.png", "empty file"),
    ]:
        with pytest.raises(BadFileError, match=reason) as e:
            probe_video(bad[name])
        assert e.value.path == str(bad[name])
        with pytest.raises(BadFileError, match=reason):
            read_video(bad[name])


def _truncated_faststart(tmp_path, make_timed_video):
    """An MP4 with its index first and half its frame data cut off: it probes fine, decoding fails."""
    full = make_timed_video(tmp_path / "full.mp4", np.arange(40) / 8, gop=4, faststart=True).read_bytes()
    (tmp_path / "full.mp4").unlink()
    (tmp_path / "b.mp4").write_bytes(full[: len(full) // 2])


@pytest.mark.parametrize("fps", [None, 4.0])
def test_decode_failures_give_the_next_good_clip(tmp_path, make_video, make_timed_video, frame_ids, fps):
    make_video(tmp_path / "a.mp4", num_frames=40)
    _truncated_faststart(tmp_path, make_timed_video)
    make_video(tmp_path / "c.mkv", num_frames=40)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = VideoFolder(tmp_path, num_frames=8, fps=fps, size=16, clips_per_video=2)
    assert len(ds) == 6 and len(ds.bad) == 0
    with pytest.warns(BadFileWarning, match=r"b\.mp4"):
        item = ds[3]  # b.mp4's 2nd clip needs frames past the cut → c.mkv's 1st clip
    assert item["path"].endswith("c.mkv") and item["index"] == 4
    torch.testing.assert_close(item["pixels"], ds[4]["pixels"], rtol=0, atol=0)
    assert ds[2]["index"] == 4  # the file is known bad now: its other clip is skipped too
    assert len(ds.bad) == 1 and any(word in ds.bad.items[0][1] for word in ("truncated", "corrupt"))
    strict = VideoFolder(tmp_path, num_frames=8, fps=fps, size=16, clips_per_video=2, strict=True)
    with pytest.raises(BadFileError, match=r"b\.mp4"):
        strict[3]


def test_no_videos_is_a_clear_error(tmp_path, make_image):
    make_image(tmp_path / "a.png")
    with pytest.raises(ValueError, match=r"no video files found under .*\.mp4.*\.gif"):
        VideoFolder(tmp_path, size=16)


@pytest.mark.parametrize(
    "kw",
    [
        dict(num_frames=0),
        dict(frame_stride=0),
        dict(fps=0),
        dict(short="pad"),
        dict(clips_per_video=0),
        dict(crop="middle"),
    ],
)
def test_video_folder_rejects_bad_arguments(tmp_path, make_video, kw):
    make_video(tmp_path / "a.mp4")
    with pytest.raises(ValueError):
        VideoFolder(tmp_path, **{"size": 16, **kw})
