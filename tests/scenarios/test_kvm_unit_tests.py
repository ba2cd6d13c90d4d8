"""kvm-unit-tests ``arm/gic.c`` ITS migration tests, replayed through vlpi's command queue.

Each scenario programs the source VM through the virtual ITS command queue in guest RAM,
migrates (SAVE_TABLES, SAVE_PENDING_TABLES, RAM + registers to a fresh VM, RESTORE_TABLES),
and checks what the original test checks: which CPU takes which INTID, how many times.
Parameterised over the host GIC and the ITS kernel generation.
"""

from __future__ import annotations

import numpy as np
import pytest
from scenarios.kvm_guest import LPI, LPI_PROP_DEFAULT, Guest, migrate

from vlpi.its import ItsCommand
from vlpi.vm import VM

GICS = ["v3", "v4.1"]


def hits(taken: dict[int, list[int]]) -> dict[int, int]:
    return {v: len(x) for v, x in taken.items()}


@pytest.mark.parametrize("gic", GICS)
@pytest.mark.parametrize("kernel", ["new", "old"])
def test_its_migration(gic, kernel):
    vm = VM(4, gic=gic, kernel=kernel)
    g = Guest(vm)
    g.its_setup1()
    assert vm.its.command_log.errors == []
    dst, info = migrate(vm)
    assert info["its"].dtes_written == 2 and info["its"].ites_written == 2
    # nothing was pending: the pending-table save wrote nothing
    assert info["pending"].engine.guest_writes == 0
    # the destination guest keeps using its queue where the source left it (CREADR/CWRITER restored)
    assert dst.its.creadr == vm.its.creadr == dst.its.cwriter
    d = Guest(dst, setup=False)
    d.send(ItsCommand.int_(2, 20))
    t = d.take_all()
    assert t == {0: [], 1: [], 2: [], 3: [8195]}
    d.send(ItsCommand.int_(7, 255))
    t = d.take_all()
    assert t == {0: [], 1: [], 2: [8196], 3: []}
    assert dst.its.command_log.errors == []
    assert len(dst.lost) == 0


@pytest.mark.parametrize("gic", GICS)
@pytest.mark.parametrize("taken_before", [False, True])
def test_its_pending_migration(gic, taken_before):
    n = 4
    vm = VM(n, gic=gic)
    g = Guest(vm)
    pe0, pe1 = n - 1, n - 2
    g.create_device(2, 8)
    g.mapd(2)
    g.send(ItsCommand.mapc(pe0, pe0), ItsCommand.mapc(pe1, pe1))
    vm.enable_lpis(pe0, False)
    vm.enable_lpis(pe1, False)
    for i in range(256):
        col = pe0 if i % 2 else pe1
        g.send(ItsCommand.mapti(2, i, LPI(i), col))
        g.set_config(LPI(i), LPI_PROP_DEFAULT)
        g.set_pending(col, LPI(i), True)
    g.send(ItsCommand.invall(pe0), ItsCommand.invall(pe1))
    for pe in (pe0, pe1):
        vm.write_pendbaser(pe, vm.read_pendbaser(pe) & ~(1 << 62))
    assert vm.lpis.pending_latch.sum() == 0  # MAPTI ran before the bits were set
    vm.enable_lpis(pe0)
    vm.enable_lpis(pe1)
    assert int(vm.lpis.pending_latch.sum()) == 256  # the EnableLPIs scans loaded them
    acked = {v: 0 for v in range(n)}
    if taken_before:  # pe0 takes its LPIs before the migration; its RAM bits are still 1
        got = vm.acknowledge(pe0)
        acked[pe0] += got.size
        assert g.pending_bit(pe0, LPI(1))
    dst, info = migrate(vm)
    if taken_before:
        assert info["pending"].engine.guest_writes == 128  # save clears the taken ones
    d = Guest(dst, setup=False)
    for v, x in d.take_all().items():
        acked[v] += len(x)
    assert acked == {0: 0, 1: 0, pe1: 128, pe0: 128}
    # restore consumed every bit it used
    for i in range(256):
        assert not d.pending_bit(pe0 if i % 2 else pe1, LPI(i))
    assert int(dst.lpis.pending_latch.sum()) == 0


@pytest.mark.parametrize("gic", GICS)
def test_its_migrate_unmapped_collection(gic):
    vm = VM(4, gic=gic)
    g = Guest(vm)
    g.its_setup1()
    # collection 0 -> PE0 created but never MAPC'd; MAPTI on it makes a placeholder
    g.send(ItsCommand.mapti(2, 0, 8192, 0))
    g.set_config(8192, LPI_PROP_DEFAULT)
    assert vm.its.collections[-1] == (0, 0xFFFF_FFFF)
    row = int(np.flatnonzero(vm.lpis.intid == 8192)[0])
    assert vm.lpis.target_vcpu[row] == -1
    dst, info = migrate(vm)
    assert info["its"].ctes_written == 3
    assert (0, 0xFFFF_FFFF) in dst.its.collections
    d = Guest(dst, setup=False)
    d.send(ItsCommand.mapc(0, 0), ItsCommand.invall(0))
    d.send(ItsCommand.int_(7, 255))
    assert d.take_all() == {0: [], 1: [], 2: [8196], 3: []}
    assert d.get_config(8192) == LPI_PROP_DEFAULT
    d.send(ItsCommand.int_(2, 0))
    assert d.take_all() == {0: [8192], 1: [], 2: [], 3: []}
    assert dst.its.command_log.errors == []


def test_unmapped_collection_int_fails_before_mapc():
    """The same scenario's negative control: INT on the placeholder collection is refused
    (E_ITS_INT_UNMAPPED_INTERRUPT, dropped by the queue, named in vm.lost)."""
    vm = VM(4, gic="v3")
    g = Guest(vm)
    g.its_setup1()
    g.send(ItsCommand.mapti(2, 0, 8192, 0), ItsCommand.int_(2, 0))
    assert [r.name for r in vm.its.command_log.errors] == ["INT"]
    assert vm.lost.count(reason=4, intid=8192) == 1  # UNMAPPED_COLLECTION
    assert g.take_all() == {0: [], 1: [], 2: [], 3: []}
