"""Reading a real QEMU migration stream of a 256 MiB guest (``vlpi.qemu.read_stream``/``read_gic``).

Default input: the committed fixture (tests/data/qemu: the real stream with the pages the GIC does
not use sent as zero pages, so ~100k page records, few of them full pages). With
``VLPI_QEMU_STREAM=DIR`` the full stream DIR/stream.bin (~50 MB, ~13k full pages) is read instead,
as made by ``scripts/make_qemu_stream.sh``. ``stream_mb_per_s`` in extra_info.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vlpi.qemu import read_gic, read_stream
from vlpi.qemu.stream import load_bytes

FIXTURE = Path(__file__).resolve().parent.parent / "tests" / "data" / "qemu" / "stream.bin.gz"


def _raw() -> bytes:
    env = os.environ.get("VLPI_QEMU_STREAM")
    return load_bytes(Path(env) / "stream.bin" if env else FIXTURE)


@pytest.mark.parametrize("what", ["stream", "gic"])
def test_bench_read_qemu_stream(benchmark, what):
    raw = _raw()
    fn = read_stream if what == "stream" else read_gic
    fn(raw)  # JIT warm-up (cached on disk after the first run)
    benchmark.group = "qemu-stream"
    out = benchmark(fn, raw)
    s = out if what == "stream" else out.stream
    assert s.ram["mach-virt.ram"].length == 256 << 20
    stats = getattr(benchmark, "stats", None)
    if stats is not None:
        benchmark.extra_info["stream_bytes"] = len(raw)
        benchmark.extra_info["stream_mb_per_s"] = len(raw) / 1e6 / stats.stats.mean
