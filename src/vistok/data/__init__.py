"""Data: image folders, video files, built-in samples, token shards."""
