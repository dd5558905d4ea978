"""Output folders: whether one can be made, checked before anything is written."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import SalientError


def check_out_dir(out: str | os.PathLike, field: str = "--out") -> None:
    """Refuse (one line naming ``field``) an output folder that cannot be made or written: it, or the
    nearest of its ancestors that exists, is a file, or that ancestor is not writable. Creates nothing."""
    out = Path(out)
    for q in (out, *Path(os.path.abspath(out)).parents):
        if not q.exists():
            continue
        if not q.is_dir():
            where = "exists and is not a directory" if q == out else f"{q} is a file, not a directory"
            raise SalientError(f"{field} {out}: {where}")
        if not os.access(q, os.W_OK | os.X_OK):
            raise SalientError(f"{field} {out}: {q} is not writable")
        return
