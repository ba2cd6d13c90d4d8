#!/usr/bin/env python3
"""JIT cost of the engine: cold compile and warm start, each in a fresh subprocess.

* **cold**: ``NUMBA_CACHE_DIR`` is a fresh, empty temporary directory; the child imports vlpi and
  runs each engine operation once on a small VM, so every kernel it needs is compiled (and
  written to the cache).
* **warm**: a second child with the *same* (now populated) cache directory: what a CLI call or a
  migration tool pays at start-up -- interpreter start, ``import vlpi``, a first small save.

Times are measured inside the child with ``time.perf_counter`` (from before ``import vlpi``) and
also as the parent-side wall time of the whole process (which adds interpreter start-up).

Run ``python benchmarks/jit_report.py [--cache-dir DIR] [--json]``. The warm start against the
shared cache runs as a smoke test in ``benchmarks/test_bench_jit.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

__all__ = ["CHILD", "run_child", "report", "main"]

# The child: one JSON line with per-step seconds. Kept free of anything but vlpi and numpy.
CHILD = r"""
import json, sys, time
ops = sys.argv[1].split(",")
t = {}
t0 = time.perf_counter()
import numpy as np
t["import_numpy"] = time.perf_counter() - t0
a = time.perf_counter()
import vlpi
from vlpi import scenarios
t["import_vlpi"] = time.perf_counter() - a
vm = scenarios.build_vm(vcpus=4, id_bits=14, gic="v4.1", seed=0)
m, pb, lp, vpt = vm.job
calls = {
    "save": lambda: vlpi.save_pending_tables(m, pb, lp, vpt=vpt, has_gicv4_1=True),
    "save_many": lambda: vlpi.save_pending_tables_many([vm.job], has_gicv4_1=True),
    "save_insertion": lambda: vlpi.save_pending_tables(m, pb, lp, vpt=vpt, has_gicv4_1=True, order="insertion"),
    "restore": lambda: vlpi.sync_pending_status(m, pb, lp),
    "scan": lambda: vlpi.sync_pending_table(m, pb, lp, 0),
}
for op in ops:
    vm.randomize(np.random.default_rng(1))
    a = time.perf_counter()
    calls[op]()
    t["first_" + op] = time.perf_counter() - a
    a = time.perf_counter()
    calls[op]()
    t["second_" + op] = time.perf_counter() - a
t["total_in_process"] = time.perf_counter() - t0
import numba
t["numba_cache_dir"] = numba.config.CACHE_DIR
print(json.dumps(t))
"""

ALL_OPS = ("save", "save_many", "save_insertion", "restore", "scan")


def run_child(cache_dir: str, ops: tuple[str, ...] = ("save",), timeout: float = 900) -> dict:
    """Run the child with ``NUMBA_CACHE_DIR=cache_dir``; its timings plus ``process_wall_s``."""
    env = dict(os.environ)
    env["NUMBA_CACHE_DIR"] = cache_dir
    t0 = time.perf_counter()
    p = subprocess.run(
        [sys.executable, "-c", CHILD, ",".join(ops)], env=env, capture_output=True, text=True, timeout=timeout
    )
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(f"jit_report child failed ({p.returncode}):\n{p.stderr[-4000:]}")
    out = json.loads(p.stdout.strip().splitlines()[-1])
    out["process_wall_s"] = wall
    return out


def report(cache_dir: str | None = None, ops: tuple[str, ...] = ALL_OPS) -> dict:
    """``{"cold": {...}, "warm": {...}, "warm_start_s": ...}`` using a fresh temporary cache unless
    ``cache_dir`` is given (then "cold" is whatever state that directory is in)."""
    own = cache_dir is None
    tmp = tempfile.TemporaryDirectory(prefix="vlpi-numba-cold-") if own else None
    d = tmp.name if tmp else cache_dir
    try:
        cold = run_child(d, ops)
        warm = run_child(d, ops)
        warm_save = run_child(d, ("save",))
    finally:
        if tmp:
            tmp.cleanup()
    return {
        "cold": cold,
        "warm": warm,
        "warm_start_s": warm_save["import_vlpi"] + warm_save["first_save"],
        "warm_start_process_wall_s": warm_save["process_wall_s"],
        "cold_compile_s": sum(cold[f"first_{o}"] - cold[f"second_{o}"] for o in ops),
    }


def render(r: dict, ops: tuple[str, ...] = ALL_OPS) -> str:
    c, w = r["cold"], r["warm"]
    lines = [
        "JIT cost (fresh subprocesses; seconds)",
        "",
        "| step | cold cache | warm cache |",
        "|---|---:|---:|",
        f"| import numpy | {c['import_numpy']:.3f} | {w['import_numpy']:.3f} |",
        f"| import vlpi | {c['import_vlpi']:.3f} | {w['import_vlpi']:.3f} |",
    ]
    for o in ops:
        lines.append(f"| first {o} (small VM) | {c['first_' + o]:.3f} | {w['first_' + o]:.3f} |")
    lines += [
        f"| total in process | {c['total_in_process']:.3f} | {w['total_in_process']:.3f} |",
        f"| process wall time | {c['process_wall_s']:.3f} | {w['process_wall_s']:.3f} |",
        "",
        f"Cold compile (first call minus second call, summed over ops): {r['cold_compile_s']:.2f} s",
        f"Warm start (import vlpi + first small save): {r['warm_start_s']:.3f} s "
        f"(whole process incl. interpreter and numpy: {r['warm_start_process_wall_s']:.3f} s)",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Cold compile and warm start of the vlpi engine")
    ap.add_argument("--cache-dir", help="use this NUMBA_CACHE_DIR instead of a fresh temporary one")
    ap.add_argument("--json", action="store_true", help="print the raw JSON too")
    a = ap.parse_args(argv)
    r = report(a.cache_dir)
    sys.stdout.write(render(r))
    if a.json:
        print(json.dumps(r, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
