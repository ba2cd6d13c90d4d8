"""RESTORE_TABLES over large ITTs (more than 1024 entries: the bulk walk) against the scalar
reference walker (tests/its_table_walker.py): canonical tables as SAVE_TABLES writes them, and
the same with entries, next fields and memory holes disturbed."""

from __future__ import annotations

import random

import its_table_walker as walker
import numpy as np
import pytest

from vlpi import GuestMemory
from vlpi.its.abi import COLLECTION_NOT_MAPPED, ItsDevice, ItsTableError, restore_tables_v0, save_tables_v0

RAM = 0x4000_0000
DT, CT, ITTS = RAM, RAM + 0x1_0000, RAM + 0x2_0000
V = 1 << 63


def baser(gpa: int, kind: int) -> int:
    return V | (kind << 56) | (7 << 48) | (2 << 8) | gpa


def plain(devs):
    return [(d.device_id, d.itt_addr, d.eventid_bits,
             list(zip(d.event_id.tolist(), d.pintid.tolist(), d.icid.tolist(), strict=True))) for d in devs]


def case(rnd: random.Random):
    bits = rnd.choice([11, 12, 13, 14])
    n_dev = rnd.randrange(1, 4)
    mem = GuestMemory()
    size = 0x2_0000 + n_dev * (8 << bits)
    ram = mem.add_slot(RAM, size)
    colls = [(c, c % 4) for c in range(4)]
    devices = []
    for d in range(n_dev):
        n = rnd.choice([0, 1, 5, 1500, (1 << bits) // 2, (1 << bits)])
        ev = np.sort(np.array(rnd.sample(range(1 << bits), min(n, 1 << bits)), np.uint32))
        devices.append(ItsDevice(device_id=d, itt_addr=ITTS + d * (8 << bits), eventid_bits=bits, event_id=ev,
                                 pintid=(8192 + ev).astype(np.uint32),
                                 icid=np.array([rnd.randrange(4) for _ in ev], np.uint16), hw=np.zeros(ev.size, bool)))
    b0, b1 = baser(DT, 1), baser(CT, 4)
    save_tables_v0(mem, b0, b1, devices, colls, has_gicv4_1=True)
    words = ram[ITTS - RAM :].view("<u8")
    for _ in range(rnd.choice([0, 0, 1, 3, 20])):  # disturb: invalid entries, other next fields, junk
        k = rnd.randrange(words.size)
        what = rnd.random()
        if what < 0.3:
            words[k] = 0
        elif what < 0.6:
            words[k] = (int(words[k]) & ((1 << 48) - 1)) | (rnd.randrange(0, 1 << 16) << 48)
        elif what < 0.8:
            words[k] = (int(words[k]) & ((1 << 48) - 1)) | (rnd.randrange(0, 4) << 48)
        else:
            words[k] = rnd.getrandbits(64)
    if rnd.random() < 0.25:  # a hole in the ITT area
        lo = ITTS - RAM + 8 * rnd.randrange(words.size)
        hi = min(size, lo + rnd.choice([8, 0x100, 0x2000]))
        data = ram.copy()
        mem.remove_slot(RAM)
        mem.add_slot(RAM, lo, data=data[:lo].copy())
        if hi < size:
            mem.add_slot(RAM + hi, data=data[hi:].copy())
    return mem, b0, b1


def check(seed):
    mem, b0, b1 = case(random.Random(seed))
    cols, devs, err = walker.restore(mem, b0, b1, 4)
    try:
        got_c, got_d = restore_tables_v0(mem, b0, b1, n_vcpus=4)
        got_err = None
    except ItsTableError as e:
        got_c, got_d, got_err = e.collections, e.devices, e.errno
    assert got_err == (err[0] if err else None)
    assert got_c == cols
    assert plain(got_d) == devs
    assert all(c[1] != COLLECTION_NOT_MAPPED for c in got_c)
    return sum(len(d[3]) for d in devs), got_err


@pytest.mark.parametrize("block", range(4))
def test_large_itt_restore_matches_the_reference(block):
    outcomes = [check(seed) for seed in range(block * 12, block * 12 + 12)]
    assert any(n > 1000 for n, _ in outcomes) or block  # the bulk walk really ran on big tables
