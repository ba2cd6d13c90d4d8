"""Hostile ITS tables: cost grows with the entries the guest declared, and a table naming more
ITEs than memory can hold is refused with a clear error (``ENOMEM``), not a MemoryError."""

from __future__ import annotations

import errno
import tracemalloc

import numpy as np
import pytest
from test_its_abi import CT, DT, ITTS, RAM, baser

from vlpi import GuestMemory
from vlpi.its.abi import ItsTableError, encode_cte, encode_dte, encode_ite, restore_tables_v0


def _shared_itt(n_dev: int, n_ev: int) -> tuple[GuestMemory, int, int]:
    """``n_dev`` DTEs all pointing at one ITT of ``n_ev`` valid ITEs naming LPI 8192."""
    mem = GuestMemory()
    ram = mem.add_slot(RAM, (ITTS - RAM) + 8 * n_ev)
    pages = -(-n_dev * 8 // (1 << 16))
    bits = max(1, (n_ev - 1).bit_length())
    dtes = encode_dte(np.where(np.arange(n_dev) < n_dev - 1, 1, 0), ITTS, bits - 1)
    ram[DT - RAM : DT - RAM + 8 * n_dev] = dtes.astype("<u8").view(np.uint8)
    ram[CT - RAM : CT - RAM + 8] = encode_cte(0, 0).astype("<u8").reshape(-1).view(np.uint8)
    ites = encode_ite(np.where(np.arange(n_ev) < n_ev - 1, 1, 0), 8192, 0)
    ram[ITTS - RAM :] = ites.astype("<u8").view(np.uint8)
    return mem, baser(DT, pages), baser(CT, kind=4)


def test_shared_itt_memory_grows_with_the_ites_named():
    mem, b0, b1 = _shared_itt(2048, 512)  # 1 Mi ITEs from 16 KiB of DTEs and a 4 KiB ITT
    restore_tables_v0(mem, b0, b1, n_vcpus=1)  # compiled and warm
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        cols, devs = restore_tables_v0(mem, b0, b1, n_vcpus=1)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    n = sum(len(d.event_id) for d in devs)
    assert cols == [(0, 0)] and len(devs) == 2048 and n == 2048 * 512
    assert all(d.itt_addr == ITTS and d.pintid[-1] == 8192 for d in devs)
    assert peak / n <= 64


def test_too_many_ites_is_refused_with_enomem():
    mem, b0, b1 = _shared_itt(64, 512)
    with pytest.raises(ItsTableError) as ei:
        restore_tables_v0(mem, b0, b1, n_vcpus=1, max_ites=10_000)
    e = ei.value
    assert e.errno == errno.ENOMEM and "more ITEs than memory can hold" in str(e) and e.table == "device"
    assert sum(len(d.event_id) for d in e.devices) == 10_000  # restored up to the limit, then refused
    # within the limit: restored
    _, devs = restore_tables_v0(mem, b0, b1, n_vcpus=1, max_ites=64 * 512)
    assert sum(len(d.event_id) for d in devs) == 64 * 512
    with pytest.raises(ValueError, match="max_ites"):
        restore_tables_v0(mem, b0, b1, n_vcpus=1, max_ites=-1)


def test_unbounded_itt_scan_stops_at_the_end_of_ram():
    """A DTE of 28 EventID bits makes the kernel scan its ITT without bound (the size does not
    fit its int): only guest RAM ends the walk, with EFAULT, after reading what RAM holds."""
    mem = GuestMemory()
    mem.add_slot(RAM, (ITTS - RAM) + (1 << 20))  # 128 Ki invalid ITEs, then no RAM
    mem.write(DT, encode_dte(0, ITTS, 27).astype("<u8").reshape(-1).view(np.uint8))
    with pytest.raises(ItsTableError) as ei:
        restore_tables_v0(mem, baser(DT), baser(CT, valid=False), n_vcpus=1)
    assert ei.value.errno == errno.EFAULT and ei.value.gpa == ITTS + (1 << 20)
