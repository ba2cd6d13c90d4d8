"""ITS table save and restore (ABI rev 0) against a compiled literal port of the kernel's walk.

Groups (``op scenario [tier]``), each with ``impl`` = ``vlpi`` (:func:`vlpi.its.abi.save_tables_v0`
/ ``restore_tables_v0``) and ``kernel_port`` (``benchmarks/its_baselines.py``: the kernel's code,
entry by entry, compiled with numba; its guest-memory copy is made outside the timing):

* ``lpi-stress VxDxE`` -- ``vgic_lpi_stress``'s shape: V vCPUs (one collection each), D devices of
  E events, LPIs from 8192 round-robin over the vCPUs (ci 4x16x256, big 64x56x1024);
* ``one-intid N`` -- one device whose ITT holds N valid ITEs all naming LPI 8192 (legal: the kernel
  takes a reference on the existing LPI); ci 2^16, big 2^20;
* ``host-4096 its`` -- every VM of host-4096 (64 VMs x 57,344 LPIs) saves then restores its ITS
  tables (3,670,016 ITEs); ci: 4 VMs of the ci lpi-stress shape.

``n_lpis`` counts ITEs. Peak memory (tracemalloc) per ITE is measured by
``test_its_tables_peak_memory`` (deterministic: allocation sizes, not time).
"""

from __future__ import annotations

import tracemalloc

import its_baselines as port
import numpy as np
import pytest
from harness import run_bench
from test_bench_its import STRESS, TABLE_GPA, ItsLayout, abi_baser

from vlpi import GuestMemory
from vlpi.its import abi

TIERS = ["ci", pytest.param("big", marks=pytest.mark.big)]
ONE_INTID = {"ci": 1 << 16, "big": 1 << 20}
HOST_VMS = {"ci": 4, "big": 64}
MAX_BYTES_PER_ITE = 64


class _State:
    """One ITS: memory with saved tables, BASERs, devices and collections."""

    def __init__(self, mem, baser0, baser1, devices, collections, n_vcpus):
        self.mem, self.baser0, self.baser1 = mem, baser0, baser1
        self.devices, self.collections, self.n_vcpus = devices, collections, n_vcpus
        self.n_ites = sum(len(d.event_id) for d in devices)
        abi.save_tables_v0(mem, baser0, baser1, devices, collections, has_gicv4_1=False)

    def save(self):
        return abi.save_tables_v0(self.mem, self.baser0, self.baser1, self.devices, self.collections,
                                  has_gicv4_1=False)

    def restore(self):
        return abi.restore_tables_v0(self.mem, self.baser0, self.baser1, n_vcpus=self.n_vcpus)


def _stress(vcpus: int, devices: int, events: int) -> _State:
    lay = ItsLayout(vcpus, devices, events)
    mem = GuestMemory()
    mem.add_slot(TABLE_GPA, lay.end - TABLE_GPA)
    return _State(mem, lay.baser0, lay.baser1, lay.its_devices(), lay.collections(), vcpus)


def _one_intid(n: int) -> _State:
    bits = max(1, (n - 1).bit_length())
    itt = TABLE_GPA + (2 << 16)
    mem = GuestMemory()
    mem.add_slot(TABLE_GPA, (2 << 16) + 8 * n)
    dev = abi.ItsDevice(0, itt, bits, np.arange(n, dtype=np.uint32), np.full(n, 8192, np.uint32),
                        np.zeros(n, np.uint16), np.zeros(n, bool))
    b0 = abi_baser(0x1907_0000_0000_0000, TABLE_GPA, 1)
    b1 = abi_baser(0x1C07_0000_0000_0000, TABLE_GPA + (1 << 16), 1)
    return _State(mem, b0, b1, [dev], [(0, 0)], 1)


_CACHE: dict = {}


def _get(layout: str, tier: str) -> list[_State]:
    key = (layout, tier)
    if key not in _CACHE:
        if layout == "lpi-stress":
            _CACHE[key] = [_stress(*STRESS[tier][:3])]
        elif layout == "one-intid":
            _CACHE[key] = [_one_intid(ONE_INTID[tier])]
        else:
            _CACHE[key] = [_stress(*STRESS[tier][:3]) for _ in range(HOST_VMS[tier])]
    return _CACHE[key]


def _scenario(layout: str, tier: str) -> str:
    if layout == "lpi-stress":
        v, d, e = STRESS[tier][:3]
        return f"lpi-stress {v}x{d}x{e}"
    if layout == "one-intid":
        return f"one-intid {ONE_INTID[tier]}"
    return f"host-{HOST_VMS[tier] * STRESS[tier][0]} its"


#: (op, layout): the single operations per ITS, and save + restore of a whole host
CASES = [(op, lay) for lay in ("lpi-stress", "one-intid") for op in ("save", "restore")] + [("save+restore", "host")]


def _fns(states: list[_State], op: str, impl: str):
    if impl == "vlpi":
        if op == "save":
            return lambda: [s.save() for s in states]
        if op == "restore":
            return lambda: [s.restore() for s in states]
        return lambda: [(s.save(), s.restore()) for s in states]
    saves = [port.prepare_save(s.mem, s.baser0, s.baser1, s.devices, s.collections, False) for s in states]
    restores = [port.prepare_restore(s.mem, s.baser0, s.baser1, s.n_vcpus, s.n_ites) for s in states]
    if op == "save":
        return lambda: [f() for f in saves]
    if op == "restore":
        return lambda: [f() for f in restores]
    return lambda: [(f(), g()) for f, g in zip(saves, restores, strict=True)]


@pytest.mark.parametrize("tier", TIERS)
@pytest.mark.parametrize(("op", "layout"), CASES)
@pytest.mark.parametrize("impl", ["vlpi", "kernel_port"])
def test_its_tables(benchmark, impl, op, layout, tier):
    states = _get(layout, tier)
    n = sum(s.n_ites for s in states)
    out = run_bench(benchmark, _fns(states, op, impl), scenario=_scenario(layout, tier), op=f"its-{op}",
                    tier=tier, impl=impl, n_lpis=n)
    # both implementations did the whole job
    if impl == "vlpi":
        if op == "save":
            assert sum(r.ites_written for r in out) == n
        elif op == "restore":
            assert sum(len(d.event_id) for _, devs in out for d in devs) == n
        else:
            assert sum(r.ites_written for r, _ in out) == n
    else:
        if op == "save":
            assert all(r[0] == 0 for r in out) and sum(r[2] for r in out) == n
        elif op == "restore":
            assert all(r[0] == 0 for r in out) and sum(r[3] for r in out) == n
        else:
            assert all(a[0] == 0 and b[0] == 0 for a, b in out) and sum(b[3] for _, b in out) == n


def _peak(fn) -> int:
    fn()  # compiled and warm
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        r = fn()
        peak = tracemalloc.get_traced_memory()[1] - base
        del r
    finally:
        tracemalloc.stop()
    return peak


@pytest.mark.parametrize("tier", TIERS)
@pytest.mark.parametrize("layout", ["lpi-stress", "one-intid"])
@pytest.mark.parametrize("op", ["save", "restore"])
def test_its_tables_peak_memory(op, layout, tier):
    """Peak bytes allocated per ITE by one save or restore (the result included)."""
    (state,) = _get(layout, tier)
    peak = _peak(state.save if op == "save" else state.restore)
    per_ite = peak / state.n_ites
    print(f"its-{op} {_scenario(layout, tier)}: {per_ite:.1f} B/ITE peak")
    assert per_ite <= MAX_BYTES_PER_ITE
