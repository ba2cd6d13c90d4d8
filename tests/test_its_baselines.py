"""The ITS table benchmark baseline (benchmarks/its_baselines.py, a compiled literal port of the
kernel's walk) agrees with the scalar walker (tests/its_table_walker.py) on random, corrupted and
faulting tables: same error code, same counts, same guest bytes and dirty pages after a save.
So the benchmark ratio vlpi / port compares two implementations that do the same thing."""

from __future__ import annotations

import os
import random
import sys

import its_table_walker as walker
import numpy as np
import pytest
from test_its_abi import CT, DT, _layout, _memory, _memory_l1, baser, clone

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import its_baselines as port  # noqa: E402


def _case(seed: int):
    rnd = random.Random(seed)
    clean = rnd.random() < 0.3
    indirect, pages, devices, colls = _layout(rnd)
    mem = _memory(rnd, indirect)
    if clean:
        for s in mem.slots:
            s.data[:] = 0
        if indirect:
            _memory_l1(mem.slots[0].data)
    b0 = baser(DT, pages, indirect=indirect, valid=clean or rnd.random() < 0.9)
    b1 = baser(CT, rnd.choice([1, 1, 2]), kind=4, valid=clean or rnd.random() < 0.9)
    v41 = clean or rnd.random() < 0.5
    return rnd, mem, b0, b1, devices, colls, v41


@pytest.mark.parametrize("seed", range(60))
def test_port_matches_walker(seed):
    rnd, mem, b0, b1, devices, colls, v41 = _case(seed)
    ref = clone(mem)
    ref.clear_dirty()
    mem.clear_dirty()
    log, err = walker.save(ref, b0, b1, devices, colls, v41)
    run = port.prepare_save(mem, b0, b1, devices, colls, v41)
    got = run()
    run.write_back()
    assert got[0] == (-err[0] if err else 0), (got, err)
    kinds = [k for k, _, _ in log]
    assert got[1:] == (kinds.count("dte"), kinds.count("ite"), kinds.count("cte"), int("term" in kinds))
    for a, b in zip(mem.slots, ref.slots, strict=True):
        np.testing.assert_array_equal(a.data, b.data)
    np.testing.assert_array_equal(mem.dirty_pages(), ref.dirty_pages())
    # restore from whatever is there now, then from a corrupted copy
    for _ in range(2):
        n_vcpus = rnd.choice([1, 3, 6])
        cols, devs, rerr = walker.restore(mem, b0, b1, n_vcpus)
        res = port.prepare_restore(mem, b0, b1, n_vcpus, 1 << 16)()
        assert res[0] == (-rerr[0] if rerr else 0), (res, rerr)
        assert res[1:] == (len(cols), len(devs), sum(len(d[3]) for d in devs))
        slot = mem.slots[0]
        for _ in range(3):
            off = rnd.choice([DT, CT]) - slot.gpa + 8 * rnd.randrange(0, 40)
            if 0 <= off and off + 8 <= slot.size:
                slot.data[off : off + 8] = np.frombuffer(rnd.randbytes(8), np.uint8)
