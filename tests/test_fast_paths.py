"""The sort-free fast paths agree with their general (sorting) paths on random inputs."""

from __future__ import annotations

import numpy as np
import pytest

from vlpi.memory import GuestMemory
from vlpi.migration import _by_vcpu_then_intid
from vlpi.vgic import all_distinct, first_of, in_ram, peek_u8


def _first_of_ref(key, mask):
    out = np.zeros(key.size, bool)
    seen = set()
    for i in np.flatnonzero(mask).tolist():
        if int(key[i]) not in seen:
            seen.add(int(key[i]))
            out[i] = True
    return out


@pytest.mark.parametrize("seed", range(40))
def test_first_of_and_all_distinct(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(0, 300))
    kind = seed % 4
    if kind == 0:  # ascending, distinct
        key = np.cumsum(rng.integers(1, 5, n)).astype(np.int64)
    elif kind == 1:  # distinct, shuffled, small range
        key = rng.permutation(n).astype(np.int64)
    elif kind == 2:  # repeats
        key = rng.integers(0, max(1, n // 3), n).astype(np.int64)
    else:  # large values, negatives, repeats
        key = rng.integers(-(1 << 40), 1 << 40, n).astype(np.int64)
        if n > 3:
            key[n // 2] = key[1]
    if all_distinct(key):
        assert np.unique(key).size == key.size
    mask = rng.random(n) < 0.7
    assert (first_of(key, mask) == _first_of_ref(key, mask)).all()


def test_all_distinct_unsigned_and_repeats():
    assert all_distinct(np.array([3, 1, 2], np.uint64))
    assert not all_distinct(np.array([3, 1, 3], np.uint64))
    assert all_distinct(np.zeros(1, np.int64)) and all_distinct(np.zeros(0, np.int64))


@pytest.mark.parametrize("seed", range(30))
def test_pending_order(seed):
    rng = np.random.default_rng(seed)
    it = np.unique(rng.integers(8192, 70000, int(rng.integers(0, 300)))).astype(np.int64)
    if seed % 3 == 0:
        it = rng.permutation(it)
    tg = rng.integers(-1, 5 if seed % 2 else 40000, it.size).astype(np.int64)
    assert (_by_vcpu_then_intid(tg, it) == np.argsort((tg << 32) | it)).all()


def test_peek_u8_matches_in_ram_and_read_u8():
    mem = GuestMemory()
    mem.add_slot(0x10000, 0x2000)
    mem.add_slot(0x12000, 0x1000, readonly=True)
    mem.write(0x10000, np.arange(256, dtype=np.uint8))
    rng = np.random.default_rng(0)
    for gpas in (np.arange(0x10000, 0x10100, dtype=np.uint64),  # one writable slot
                 np.arange(0x12000, 0x12010, dtype=np.uint64),  # one read-only slot
                 rng.integers(0xF000, 0x14000, 500).astype(np.uint64)):  # across slots and holes
        rd, wr, byte = peek_u8(mem, gpas)
        assert (rd == in_ram(mem, gpas)).all() and (wr == in_ram(mem, gpas, True)).all()
        ref = np.zeros(gpas.size, np.uint8)
        ref[rd] = mem.read_u8(gpas[rd])
        assert (byte == ref).all()
