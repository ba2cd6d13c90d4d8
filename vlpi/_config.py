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


# VLPI_RAW_CHECK=1: debug mode in which every raw-address access of a kernel is checked against
# the memory the engine validated for the call (see vlpi._kernels._jit). Its kernels differ from
# the normal ones but have the same source, so they get their own cache directory.
RAW_CHECK = os.environ.get("VLPI_RAW_CHECK", "0") not in ("", "0")

if not os.environ.get("NUMBA_CACHE_DIR"):
    os.environ["NUMBA_CACHE_DIR"] = _default_cache_dir()
if RAW_CHECK and not os.environ["NUMBA_CACHE_DIR"].rstrip(os.sep).endswith("-rawcheck"):
    os.environ["NUMBA_CACHE_DIR"] = os.environ["NUMBA_CACHE_DIR"].rstrip(os.sep) + "-rawcheck"
if "numba" in sys.modules:  # numba was imported first: tell its config too
    import numba

    # ignore: numba.config makes its settings at import from the environment; its types do not list them
    numba.config.CACHE_DIR = os.environ["NUMBA_CACHE_DIR"]  # type: ignore[attr-defined]

# Numba's OpenMP threading layer spins idle workers by default. On a 2-core machine with anything
# else running, a parallel region then waits for a descheduled spinner: measured (benchmarks, 2-core
# Sapphire Rapids guest, other core busy) host-4096 save 51.7 -> 27.1 ms and a 4-VM CI-sized save
# 7.4 -> 0.41 ms with passive waiting. Re-measured (ns/LPI, host-4096 one call / 64 per-VM calls):
# idle machine: passive 1.67 / 3.09, active 1.65 / 2.40, GOMP_SPINCOUNT 2e4-2e5 ~1.68 / 2.40; other core
# busy: passive 3.07 / 3.93, active 3.61 / 5.84, GOMP_SPINCOUNT 2e4 3.23 / 12.4, 2e5 4.16 / 20.7.
# Passive costs ~90 us to wake a worker (hence the serial path for small batches) but never collapses.
# Must be set before libgomp loads; the user's choice wins.
os.environ.setdefault("OMP_WAIT_POLICY", "passive")

CACHE_DIR = os.environ["NUMBA_CACHE_DIR"]
