"""Bad-input accounting shared by every dataset.

Datasets never die on one unreadable file: they skip it, count it under a short reason, and emit *one* summary
warning (counts per reason and the first few paths). With ``strict=True`` they raise :class:`BadFileError` instead,
naming the file and the reason.
"""

from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass, field


class BadFileError(ValueError):
    """A file could not be used; the message names the file and the reason."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


class BadFileWarning(UserWarning):
    """Summary of the files a dataset skipped."""


@dataclass
class BadFiles:
    """Collects skipped files: ``record(path, reason)``; ``summary()``; ``warn()`` emits one warning per new batch."""

    name: str = "dataset"
    max_paths: int = 5
    items: list[tuple[str, str]] = field(default_factory=list)
    _warned_at: int = 0

    def record(self, path: str, reason: str) -> None:
        self.items.append((str(path), reason))

    def __len__(self) -> int:
        return len(self.items)

    @property
    def counts(self) -> dict[str, int]:
        return dict(Counter(r for _, r in self.items))

    def summary(self) -> str:
        if not self.items:
            return f"{self.name}: no unreadable files"
        by = ", ".join(f"{n} {r}" for r, n in sorted(self.counts.items(), key=lambda kv: -kv[1]))
        first = "; ".join(f"{p} ({r})" for p, r in self.items[: self.max_paths])
        more = f" (+{len(self.items) - self.max_paths} more)" if len(self.items) > self.max_paths else ""
        return f"{self.name}: skipped {len(self.items)} unreadable file(s) [{by}]: {first}{more}"

    def warn(self) -> None:
        """Emit one summary warning if files were skipped since the last call."""
        if len(self.items) > self._warned_at:
            self._warned_at = len(self.items)
            warnings.warn(self.summary(), BadFileWarning, stacklevel=3)
