"""``VM.restore_its_tables`` against a scalar model of the kernel's restore *with* LPI creation.

The reference is the scalar walker (tests/its_table_walker.py) with ``vgic_add_lpi`` written out:
an LPI that exists gains a reference; a new one reads its configuration byte, then (if its
collection is mapped) its pending byte, clearing a set bit in guest RAM; any of these accesses
faulting fails the restore there with EFAULT. After an error everything restored is freed (the
LPIs with it), but cleared pending bits stay cleared.

Random and corrupted tables (holes, read-only ITT/pending areas, poison, stale entries, two-level
tables) come from the abi tests' generators; the pending tables hold random bits.
"""

from __future__ import annotations

import errno

import its_table_walker as walker
import numpy as np
import pytest
from test_its_abi import RAM, clone
from test_its_baselines import _case

from vlpi.its.abi import ItsTableError, save_tables_v0
from vlpi.vm import VM

PROP = RAM + 0x14_0000
PEND = RAM + 0x15_0000  # vCPU v at PEND + v * 64 KiB
N_VCPUS = 6


def _reference(mem, b0, b1, n_vcpus, pend, existing=(), before=None):
    created: dict[int, bool] = dict(before or {})

    def add_lpi(intid: int, target):
        if intid in created:
            return 0
        if mem.slot_at(PROP + intid - 8192) is None:
            return errno.EFAULT
        bit = False
        if target is not None:
            g = pend[target] + intid // 8
            s = mem.slot_at(g)
            if s is None:
                return errno.EFAULT
            byte = int(mem.read(g, 1)[0])
            bit = bool(byte >> (intid % 8) & 1)
            if bit:
                if s.readonly:
                    return errno.EFAULT
                mem.write(g, np.array([byte & ~(1 << intid % 8)], np.uint8))
        created[intid] = bit
        return 0

    cols, devs, err = walker.restore(mem, b0, b1, n_vcpus, existing, add_lpi=add_lpi)
    return cols, devs, err, created


def _setup(seed: int):
    """A random case from the abi tests, saved, with random pending bits; one seed in three has a
    vCPU whose pending table is not guest RAM (its LPIs' creation faults), one in three a
    last ITE made invalid (an error after LPIs were created)."""
    rnd, mem, b0, b1, devices, colls, v41 = _case(seed)
    try:  # the tables a source VM saved (partially, if the save failed)
        save_tables_v0(mem, b0, b1, devices, colls, has_gicv4_1=v41)
    except ItsTableError:
        pass
    pend = [PEND + v * 0x1_0000 for v in range(N_VCPUS)]
    for g in pend:
        for s in mem.slots:
            lo, hi = max(g, s.gpa), min(g + 0x2000, s.end)
            if lo < hi:
                s.data[lo - s.gpa : hi - s.gpa] = np.frombuffer(rnd.randbytes(hi - lo), np.uint8)
    if seed % 3 == 1:
        pend[rnd.randrange(N_VCPUS)] = RAM + 0x40_0000  # beyond guest RAM
    elif seed % 3 == 2 and devices:
        d = rnd.choice(devices)
        if len(d.event_id):
            g = d.itt_addr + 8 * int(np.max(d.event_id))
            s = mem.slot_at(g)
            if s is not None and g + 8 <= s.end:
                s.data[g - s.gpa : g - s.gpa + 8] = np.frombuffer(((5000 << 16) | 0).to_bytes(8, "little"), np.uint8)
    return rnd, mem, b0, b1, devices, colls, v41, pend


@pytest.mark.parametrize("seed", range(90))
def test_vm_restore_matches_the_kernel_model(seed):
    rnd, mem, b0, b1, devices, colls, v41, pend = _setup(seed)
    vm = VM(N_VCPUS, gic="v3", mem=mem)
    vm.write_propbaser(PROP | 23)
    for v in range(N_VCPUS):
        vm.write_pendbaser(v, pend[v])
    vm.its.write_baser(0, b0)
    vm.its.write_baser(1, b1)
    vm.init()
    before: dict[int, bool] = {}
    existing: dict[int, int] = {}
    if seed % 2 and vm.its.baser[0] >> 63 and vm.its.baser[1] >> 63:
        # an ITS that was not reset: device 9 with an ITE (its LPI created now), collection 0
        vm.its.mapc(0, 0)
        vm.its.mapd(9, RAM + 0x1C_0000, 3)
        vm.its.map_events([9], [1], [8192 + 3], [0], errors="skip")
        existing = dict(vm.its.collections)
        before = dict(zip(np.asarray(vm.lpis.intid).tolist(), np.asarray(vm.lpis.pending_latch).tolist(),
                          strict=True))
    pre_devices = dict(vm.its.devices)
    ref = clone(mem)
    # the collection table alone tells which walk fails (restore only reads before the devices)
    coll_failed = walker.restore(clone(ref), b0 & ~(1 << 63), b1, N_VCPUS, existing)[2] is not None
    cols, devs, err, created = _reference(ref, b0, b1, N_VCPUS, pend, existing, before)
    try:
        vm.restore_its_tables()
        got = None
    except ItsTableError as e:
        got = e.errno
    assert got == (err[0] if err else None), (got, err)
    for a, b in zip(mem.slots, ref.slots, strict=True):  # the same pending bits consumed
        np.testing.assert_array_equal(a.data, b.data)
    lpis = dict(zip(np.asarray(vm.lpis.intid).tolist(), np.asarray(vm.lpis.pending_latch).astype(bool).tolist(),
                    strict=True))
    if err is None:
        assert [c for c, _ in vm.its.collections] == list(existing) + [c for c, _ in cols]
        assert lpis == created
        assert sorted(vm.its.devices) == sorted(set(pre_devices) | {d[0] for d in devs})
        found = {}
        for d in devs:  # look-ups find the first device of each DeviceID
            found.setdefault(d[0], d)
        for d in found.values():
            if d[0] not in pre_devices:
                for eid, pintid, _ in d[3]:
                    assert vm.its.translate(d[0], eid)[0] == pintid
    elif coll_failed:  # only the collection list was freed
        assert vm.its.collections == [] and vm.its.devices == pre_devices and lpis == before
    else:
        assert vm.its.devices == {} and lpis == {}
        assert vm.its.collections == []


def test_cases_include_failures_after_lpis_were_created():
    """The seeds above exercise the interesting path: an error after some LPIs were created."""
    hits = 0
    for seed in range(90):
        _, mem, b0, b1, *_, pend = _setup(seed)
        _, _, err, created = _reference(clone(mem), b0, b1, N_VCPUS, pend)
        hits += bool(err and created)
    assert hits > 0
