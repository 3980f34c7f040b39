"""Where the engine keeps what it computes once per machine (tokenized data,
converted builtin models): ``$LONGROPE_CACHE``, else ``$XDG_CACHE_HOME/longrope``,
else ``~/.cache/longrope``. Its own module so that models and smollm2 both
read it without importing each other."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    base = os.environ.get("LONGROPE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "longrope"
    )
    return Path(base)
