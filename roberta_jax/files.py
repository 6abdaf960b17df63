"""Atomic text writes: readers never see a half-written file (write a temporary, then
os.replace, which is atomic on one filesystem)."""

from __future__ import annotations

import os


def write_text_atomic(path: str, text: str) -> str:
    """Write `text` (UTF-8) to `path` via a per-process temporary; returns path."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)
    return path
