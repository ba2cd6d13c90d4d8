"""The memory roofline of the host-4096 save, measured in the same run as the save benchmarks.

Group ``roofline host-4096 [tier]``: streaming probes in plain C (``benchmarks/c_kernel_loop/
stream.c``) over a buffer four times the last-level cache (at least 256 MiB), timed like every
other benchmark:

* ``stream_read``  -- read every 64-bit word once (sum): read-only bandwidth;
* ``stream_rmw``   -- add 1 to every word in place: each line read once and written back once,
  the way the save updates pending-table lines;
* ``stream_copy``  -- copy to a second buffer (reported with the usual read + write byte count).

Each runs with 1 thread and, when the machine has more, with as many threads as the engine uses
(numba's thread count), the buffer split in equal parts. Every row records in ``extra_info`` its
``bandwidth_Bps`` (bytes per second in the fastest round, as STREAM reports it) and the bytes a
host-4096 save of that tier must touch (``benchmarks/roofline.py``: pending-table lines read and
written back, VPT lines, per-LPI state), counted exactly from the scenario's tables as the save
benchmarks see them.
``scripts/bench_table.py`` combines the best read and read-modify-write bandwidths into the
roofline time and prints the engine against it and against the plain C loop.

At the CI tier the tables fit in the cache, so its roofline (a DRAM bound) is only a smoke test;
the big tier is the measurement.

Group ``roofline-interleaved host-4096 [tier]``: the save against the roofline *round by round*.
This VM shares its memory bandwidth with neighbours, and the probes above may run in a quieter
(or busier) minute than the save. Here every round first re-randomises the tables, then runs the
read and read-modify-write probes with the engine's thread count (which also evicts the tables
from the cache, as the DRAM roofline assumes), then times the save. Each round's roofline time
comes from that round's probes, and ``extra_info`` records the median over rounds of save time /
roofline time (``ratio_median``, with its quartiles ``ratio_q1``/``ratio_q3``), for byte tables
(``engine_many``) and packed ones (``engine_many_packed``). The big tier times 21 rounds.
"""

from __future__ import annotations

import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import cbaseline
import pytest
import roofline
from harness import ROUNDS, SAVE_IMPLS, TIERS, get_host, packed_impl

RANDOMIZE_SEED = 12345  # the tables of the save benchmarks (test_bench_pending.py)
KINDS = ("stream_read", "stream_rmw", "stream_copy")


def _llc_bytes() -> int:
    """Largest CPU cache on this machine (sysfs), or 32 MiB if unknown."""
    best = 0
    root = "/sys/devices/system/cpu/cpu0/cache"
    try:
        for d in os.listdir(root):
            try:
                with open(os.path.join(root, d, "size"), encoding="ascii") as f:
                    txt = f.read().strip()
            except OSError:
                continue
            mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(txt[-1:].upper(), 1)
            best = max(best, int(txt.rstrip("KMGkmg")) * mult)
    except (OSError, ValueError):
        pass
    return best or 32 << 20


def _engine_threads() -> int:
    try:
        import numba

        return int(numba.get_num_threads())
    except Exception:  # noqa: BLE001 - numba missing or not initialised: one thread
        return 1


BUFFER_BYTES = max(4 * _llc_bytes(), 256 << 20)
# Rounds of the interleaved group at the big tier: each round is a few tens of ms, and the
# ratio of two noisy times needs more than the 3 rounds of the other big groups to settle.
INTERLEAVED_ROUNDS = 21
THREADS = sorted({1, _engine_threads()})
_TOUCH: dict = {}


def _touch(tier: str) -> dict:
    if tier not in _TOUCH:
        scen = get_host(tier)
        scen.randomize(RANDOMIZE_SEED)
        _TOUCH[tier] = roofline.save_touch(scen.jobs, scen.has_gicv4_1)
    return _TOUCH[tier]


@pytest.fixture(scope="module")
def buffers():
    """Two buffers of BUFFER_BYTES, pages committed outside the timing; freed after the module."""
    r = cbaseline.unavailable_reason()
    if r:
        pytest.skip(r)
    a = cbaseline.aligned_empty(BUFFER_BYTES)
    b = cbaseline.aligned_empty(BUFFER_BYTES)
    a[:] = 1
    b[:] = 0
    yield a, b
    del a, b


@pytest.mark.parametrize("tier", TIERS)
@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("kind", KINDS)
def test_stream_host(benchmark, buffers, kind, threads, tier):
    touch = _touch(tier)
    a, b = buffers
    nbytes = a.nbytes
    with ThreadPoolExecutor(max_workers=threads) as pool:
        if kind == "stream_read":
            fn, moved = (lambda: cbaseline.stream_sum(a, pool=pool, threads=threads)), nbytes
        elif kind == "stream_rmw":
            fn, moved = (lambda: cbaseline.stream_rmw(a, pool=pool, threads=threads)), nbytes
        else:
            fn, moved = (lambda: cbaseline.stream_copy(b, a, pool=pool, threads=threads)), 2 * nbytes
        benchmark.group = f"roofline host-4096 [{tier}]"
        benchmark.extra_info.update(
            impl=f"{kind} x{threads}", kind=kind, threads=threads, scenario="host-4096", op="roofline",
            tier=tier, buffer_bytes=nbytes, bytes_moved=moved, touch=touch,
        )
        if not benchmark.disabled:
            fn()  # warm-up (library load, pool threads)
        benchmark.pedantic(fn, rounds=10, iterations=1, warmup_rounds=0)
    stats = getattr(benchmark, "stats", None)
    if stats is not None and getattr(stats, "stats", None) is not None:
        best = stats.stats.min  # the fastest round, as STREAM reports: the roofline is a bound
        benchmark.extra_info["bandwidth_Bps"] = moved / best if best > 0 else float("inf")
    assert touch["pt_lines_written"] > 0 and touch["bytes_touched"] > touch["written_bytes"]
    if kind == "stream_copy":
        assert b[0] == a[0] and b[-1] == a[-1]


@pytest.mark.parametrize("tier", TIERS)
@pytest.mark.parametrize("impl", ["engine_many", "engine_many_packed"])
def test_save_against_the_roofline_interleaved(benchmark, buffers, impl, tier):
    touch = _touch(tier)
    scen = get_host(tier, packed_impl(impl))
    a, _ = buffers
    threads = _engine_threads()
    save = SAVE_IMPLS[impl]
    probes: list[tuple[float, float]] = []
    with ThreadPoolExecutor(max_workers=threads) as pool:

        def setup():
            scen.randomize(RANDOMIZE_SEED)
            t0 = time.perf_counter()
            cbaseline.stream_sum(a, pool=pool, threads=threads)
            t1 = time.perf_counter()
            cbaseline.stream_rmw(a, pool=pool, threads=threads)
            probes.append((t1 - t0, time.perf_counter() - t1))

        setup()
        reps = save(scen.jobs, scen.has_gicv4_1)  # warm-up: plans and jobs cached, as in the other benchmarks
        assert sum(r.guest_writes for r in reps) > scen.n_lpis // 8
        probes.clear()
        benchmark.group = f"roofline-interleaved host-4096 [{tier}]"
        benchmark.extra_info.update(impl=impl, scenario="host-4096", op="save", tier=tier, n_lpis=scen.n_lpis,
                                    threads=threads, touch=touch)
        benchmark.pedantic(lambda: save(scen.jobs, scen.has_gicv4_1), setup=setup,
                           rounds=ROUNDS.get(tier, impl, big=INTERLEAVED_ROUNDS), iterations=1, warmup_rounds=0)
    assert probes and all(r > 0 and w > 0 for r, w in probes)
    stats = getattr(benchmark, "stats", None)
    data = list(getattr(getattr(stats, "stats", None), "data", None) or [])
    if data:  # timed (not --benchmark-disable): one save time per round, after that round's probes
        assert len(data) == len(probes)
        roof = [roofline.roofline_seconds(touch, a.nbytes / r, a.nbytes / w) for r, w in probes]
        ratios = [t / rs for t, rs in zip(data, roof, strict=True)]
        q1, _, q3 = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else (ratios[0],) * 3
        benchmark.extra_info.update(
            roofline_s_median=statistics.median(roof),
            ratio_median=statistics.median(ratios),
            ratio_q1=q1,
            ratio_q3=q3,
            read_bw_median=statistics.median(a.nbytes / r for r, _ in probes),
            rmw_bw_median=statistics.median(a.nbytes / w for _, w in probes),
        )
