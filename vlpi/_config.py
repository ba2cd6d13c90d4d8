"""Process-wide settings applied before numba is imported anywhere in vlpi.

Compiled kernels are cached on disk (``cache=True``). Tests, notebooks, benchmarks and the
CLI share one cache directory: ``$NUMBA_CACHE_DIR`` if set, else ``~/.cache/vlpi/numba``
(``$XDG_CACHE_HOME`` respected). A warm start then costs a cache load, not a compile.
"""

from __future__ import annotations

import os
import sys


def _default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "vlpi", "numba")


if not os.environ.get("NUMBA_CACHE_DIR"):
    os.environ["NUMBA_CACHE_DIR"] = _default_cache_dir()
    if "numba" in sys.modules:  # numba was imported first: tell its config too
        import numba

        numba.config.CACHE_DIR = os.environ["NUMBA_CACHE_DIR"]

CACHE_DIR = os.environ["NUMBA_CACHE_DIR"]
