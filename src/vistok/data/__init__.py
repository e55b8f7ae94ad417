"""Data: image folders, video files, built-in samples, token shards.

Datasets yield dicts: images ``{"pixels": (3, H, W) in [-1, 1], "label", "path", "index"}``, video clips
``{"pixels": (3, T, H, W), "label", "path", "index", "fps"}``, token shards ``{"tokens", "label", "index"}``.
Unreadable files are skipped and counted (``ds.bad``), or raise :class:`BadFileError` with ``strict=True``.
"""

from vistok.data.errors import BadFileError, BadFiles, BadFileWarning
from vistok.data.images import IMAGE_EXTS, ImageFolder, read_image
from vistok.data.samples import PHOTOS, SamplePhotos, SyntheticVideos, load_photo, photo_names, write_samples
from vistok.data.shards import ShardDataset, ShardMapDataset, ShardReader, ShardWriter, write_shards
from vistok.data.video import VIDEO_EXTS, VideoFolder, probe_video, read_video, write_video

__all__ = [
    "IMAGE_EXTS",
    "PHOTOS",
    "VIDEO_EXTS",
    "BadFileError",
    "BadFileWarning",
    "BadFiles",
    "ImageFolder",
    "SamplePhotos",
    "ShardDataset",
    "ShardMapDataset",
    "ShardReader",
    "ShardWriter",
    "SyntheticVideos",
    "VideoFolder",
    "load_photo",
    "photo_names",
    "probe_video",
    "read_image",
    "read_video",
    "write_samples",
    "write_shards",
    "write_video",
]
