"""The virtual ITS against the kernel's own code in the corners (issue: "ITS tables: kernel-exact
in the corners").

Each test failed on the code before the fixes (checked one by one) and encodes what
``arch/arm64/kvm/vgic/vgic-its.c`` / ``vgic-v4.c`` do, read from the source:

* R1 -- ``vgic_its_restore_ite`` calls ``vgic_add_lpi`` as it walks, which consumes the LPI's
  pending bit (cleared in guest RAM). A later invalid entry makes the restore fail with
  ``EINVAL``; ``vgic_its_restore_device_tables`` then frees the device list and
  ``vgic_its_restore_tables_v0`` the collection list, but the bit stays cleared.
* R2 -- ``vgic_its_restore_collection_table`` frees only the collection list on error, and
  ``vgic_its_restore_tables_v0`` returns at once: devices, ITEs and LPIs that were there stay
  (their collection is gone).
* R3 -- ``vgic_its_alloc_device`` never checks for an existing DeviceID: after a restore onto an
  ITS that was not reset, two devices share one ID and ``find_its_device`` finds the older one.
* R4 -- ``vgic_its_check_event_id`` and ``vgic_its_save_itt`` compute the ITE address as
  ``itt_addr + (u32)(EventID * 8)``.
* R5 -- ``vgic_its_process_commands`` reads each 32-byte slot just before it runs it.
* R6 -- the restore stops at the first failing entry in walk order (an ``EFAULT`` from
  ``vgic_add_lpi`` wins over a later invalid pINTID).
* R7 -- ``kvm_vgic_v4_set_forwarding`` forwards only what ``vgic_its_resolve_lpi`` resolves:
  ITS enabled, ITE with a mapped collection, target vCPU with EnableLPIs = 1.
* pINTID >= 2^24 on restore: the kernel creates the LPI (it checks only >= 8192), i.e. reads its
  configuration byte first: ``EFAULT`` when that byte lies outside guest RAM.
* CTE: RDBase is ``(u32)(CTE >> 16)``.
"""

from __future__ import annotations

import errno

import numpy as np
import pytest
from scenarios.kvm_guest import COLLTAB, DEVTAB, ITT0, PROP, Guest

from vlpi.its import ItsCommand, write_ctlr
from vlpi.its.abi import ItsTableError, decode_ite, encode_cte, encode_dte, encode_ite
from vlpi.vm import VM

ITT_A = ITT0
ITT_B = ITT0 + 0x1_0000


def _w64(vm: VM, gpa: int, word) -> None:
    vm.mem.write(gpa, np.asarray(word, dtype="<u8").reshape(-1).view(np.uint8))


def _r64(vm: VM, gpa: int) -> int:
    return int(vm.mem.read(gpa, 8).view("<u8")[0])


def _vm(n: int = 2, gic: str = "v3") -> tuple[VM, Guest]:
    """A kvm-unit-tests-like guest: LPI tables, EnableLPIs, flat device table and collection
    table, ITS enabled; the config byte of LPIs 8192..8299 enabled."""
    vm = VM(n, gic=gic)
    g = Guest(vm)
    vm.mem.write(PROP, np.full(100, 0xA3, np.uint8))
    return vm, g


def _lpi_intids(vm: VM) -> list[int]:
    return sorted(int(i) for i in np.asarray(vm.lpis.intid))


# ------------------------------------------------------------------------------------ R1
def test_r1_failed_restore_keeps_consumed_pending_bits():
    vm, g = _vm()
    g.set_pending(0, 8192)
    _w64(vm, COLLTAB, encode_cte(0, 0))
    _w64(vm, COLLTAB + 8, 0)
    _w64(vm, DEVTAB + 0 * 8, encode_dte(1, ITT_A, 0))  # DTE 0, next 1, 1 EventID bit
    _w64(vm, DEVTAB + 1 * 8, encode_dte(0, ITT_B, 0))  # DTE 1, last
    _w64(vm, ITT_A, encode_ite(0, 8192, 0))
    _w64(vm, ITT_B, encode_ite(0, 100, 0))  # pINTID < 8192: EINVAL
    vm.pause()
    with pytest.raises(ItsTableError) as ei:
        vm.restore_its_tables()
    assert ei.value.errno == errno.EINVAL
    # vgic_add_lpi(8192) ran before the invalid entry was read: its pending bit was consumed
    assert not g.pending_bit(0, 8192)
    # ... and everything was freed afterwards (device list, then collection list)
    assert vm.its.devices == {} and vm.its.collections == []
    assert _lpi_intids(vm) == []


# ------------------------------------------------------------------------------------ R2
def test_r2_collection_table_failure_frees_only_collections():
    vm, g = _vm()
    g.create_device(1, 2)
    g.mapd(1)
    g.send(ItsCommand.mapc(0, 0), ItsCommand.mapti(1, 0, 8192, 0))
    assert vm.its.translate(1, 0) == (8192, 0)
    _w64(vm, COLLTAB, encode_cte(0, 0))  # ICID 0 exists already: EEXIST
    _w64(vm, DEVTAB, encode_dte(0, ITT_B, 0))
    vm.pause()
    with pytest.raises(ItsTableError) as ei:
        vm.restore_its_tables()
    assert ei.value.errno == errno.EEXIST
    assert vm.its.collections == []  # the collection list was freed
    assert list(vm.its.devices) == [1]  # the device table was never scanned; device 1 stays
    assert _lpi_intids(vm) == [8192]  # its ITE and LPI stay (with no collection)
    assert vm.its.translate(1, 0) == (8192, -1)
    vm.run()
    out = vm.signal_msi([1], [0])
    assert out[0] != 1  # the ITE's collection is gone: blocked


# ------------------------------------------------------------------------------------ R3
def test_r3_duplicate_device_id_lookups_find_the_older_device():
    vm, g = _vm()
    g.create_device(1, 2)
    g.mapd(1)  # device 1, no ITEs (not reset before the restore)
    _w64(vm, COLLTAB, encode_cte(0, 0))
    _w64(vm, COLLTAB + 8, 0)
    _w64(vm, DEVTAB + 8, encode_dte(0, ITT_A, 1))  # DTE 1 again, with an ITE for event 0
    _w64(vm, ITT_A, encode_ite(0, 8192, 0))
    vm.pause()
    vm.restore_its_tables()  # the kernel never checks for a duplicate DeviceID
    assert _lpi_intids(vm) == [8192]
    vm.run()
    write_ctlr(vm.its, 1)
    out = vm.signal_msi([1], [0])
    # find_its_device returns the first device of the list: the older one, without the ITE
    assert out[0] != 1
    assert not np.asarray(vm.lpis.pending_latch).any()
    # MAPD V=0 frees the device found (the older one): now the restored one is found
    g.send(ItsCommand.mapd(1, ITT_A, 1, valid=False))
    assert list(vm.its.devices) == [1] and vm.its.translate(1, 0) == (8192, 0)
    assert vm.signal_msi([1], [0])[0] == 1


# ------------------------------------------------------------------------------------ R4
def test_r4_ite_address_wraps_in_32_bits():
    vm, g = _vm()
    _w64(vm, COLLTAB, encode_cte(0, 0))
    _w64(vm, COLLTAB + 8, 0)
    _w64(vm, DEVTAB, encode_dte(0, ITT_A, 29))  # a restored DTE may declare 30 EventID bits
    vm.pause()
    vm.restore_its_tables()
    assert vm.its.devices[0][1] == 30
    vm.run()
    ev = 1 << 29  # ITE address = ITT + (u32)(2^29 * 8) = ITT + 0: visible, so MAPTI maps it
    g.send(ItsCommand.mapti(0, ev, 8193, 0))
    assert vm.its.translate(0, ev) == (8193, 0)
    vm.pause()
    vm.save_its_tables()  # the ITE is written at ITT + 0
    ite = decode_ite(vm.mem.read(ITT_A, 8))[0]
    assert (int(ite["pintid"]), int(ite["icid"])) == (8193, 0)


# ------------------------------------------------------------------------------------ R5
def test_r5_queue_slots_are_read_one_by_one():
    vm, g = _vm()
    cmdq = g.cmdq.base
    # device 1's ITT is the command queue itself: ITE of event e lies at queue + 8e, i.e. the
    # ITE of event 4k is the first doubleword of slot k
    g.send(ItsCommand.mapd(1, cmdq, 11), ItsCommand.mapc(0, 0))
    start = vm.its.cwriter // 32
    target = start + 20
    g.send(ItsCommand.mapti(1, 4 * target, 8192, 0))
    start += 1
    cmds = [ItsCommand.sync(0)] * 40
    cmds[0] = ItsCommand.discard(1, 4 * target)  # zeroes the ITE = DW0 of slot `target`
    cmds[target - start] = ItsCommand.mapti(1, 7, 8193, 0)  # ... so this slot reads as opcode 0
    assert vm.its.cwriter // 32 == start
    g.send(*cmds)
    assert vm.its.translate(1, 4 * target) is None
    assert vm.its.translate(1, 7) is None  # the kernel read the zeroed slot: a no-op
    assert _r64(vm, cmdq + 32 * target) == 0


# ------------------------------------------------------------------------------------ R6
def test_r6_first_failing_entry_in_walk_order_wins():
    vm, g = _vm()
    _w64(vm, COLLTAB, encode_cte(0, 0))
    _w64(vm, COLLTAB + 8, 0)
    _w64(vm, DEVTAB + 0 * 8, encode_dte(1, ITT_A, 0))
    _w64(vm, DEVTAB + 1 * 8, encode_dte(0, ITT_B, 0))
    big = 8192 + (8 << 20)  # its configuration byte lies beyond the end of guest RAM
    _w64(vm, ITT_A, encode_ite(0, big, 0))  # vgic_add_lpi faults here first: EFAULT
    _w64(vm, ITT_B, encode_ite(0, 100, 0))  # a later invalid pINTID
    vm.pause()
    with pytest.raises(ItsTableError) as ei:
        vm.restore_its_tables()
    assert ei.value.errno == errno.EFAULT


# ------------------------------------------------------------------------------------ R7
def _v40_vm():
    vm, g = _vm(gic="v4.0")
    g.create_device(1, 2)
    g.mapd(1)
    g.send(ItsCommand.mapc(0, 0), ItsCommand.mapc(1, 1))
    g.send(ItsCommand.mapti(1, 0, 8192, 0), ItsCommand.mapti(1, 1, 8193, 1))
    return vm, g


def test_r7_no_forwarding_with_enable_lpis_off():
    vm, _ = _v40_vm()
    vm.enable_lpis(0, False)
    assert not vm.forward([1], [0])[0]
    assert not np.asarray(vm.lpis.hw).any()
    vm.pause()
    vm.save_its_tables()  # nothing forwarded: a GICv4.0 save succeeds


def test_r7_no_forwarding_with_its_disabled():
    vm, _ = _v40_vm()
    write_ctlr(vm.its, 0)
    assert not vm.forward([1], [0])[0]
    assert not np.asarray(vm.lpis.hw).any()
    vm.pause()
    vm.save_its_tables()


def test_r7_no_forwarding_with_unmapped_collection():
    vm, g = _v40_vm()
    g.send(ItsCommand.mapc(0, 0, valid=False))  # the ITE's collection goes; the LPI keeps vCPU 0
    out = vm.forward([1, 1], [0, 1])
    assert out.tolist() == [False, True]
    hw = dict(zip(np.asarray(vm.lpis.intid).tolist(), np.asarray(vm.lpis.hw).tolist(), strict=True))
    assert hw == {8192: False, 8193: True}


# ------------------------------------------------------------------------ pINTID >= 2^24
def test_restore_pintid_beyond_24_bits_with_config_byte_outside_ram_is_efault():
    vm, g = _vm()
    g.set_pending(0, 8192)
    _w64(vm, COLLTAB, encode_cte(0, 0))
    _w64(vm, COLLTAB + 8, 0)
    _w64(vm, DEVTAB, encode_dte(0, ITT_A, 1))
    _w64(vm, ITT_A, encode_ite(1, 8192, 0))
    _w64(vm, ITT_A + 8, encode_ite(0, 1 << 24, 0))  # config byte at PROP + 2^24 - 8192: no RAM
    vm.pause()
    with pytest.raises(ItsTableError) as ei:
        vm.restore_its_tables()
    assert ei.value.errno == errno.EFAULT
    assert not g.pending_bit(0, 8192)  # the first ITE's LPI was created (bit consumed)
    assert vm.its.devices == {} and _lpi_intids(vm) == []


def test_restore_pintid_beyond_24_bits_with_config_byte_in_ram_says_what_kvm_does():
    vm = VM(1, gic="v3")
    vm.mem.add_slot(0, 1 << 25)  # 32 MiB: the config byte of LPI 2^24 is guest RAM
    vm.write_propbaser(0x100_0000 - 0x10000 | 23)
    vm.write_pendbaser(0, 0x1E0_0000)
    vm.its.write_baser(0, (1 << 63) | 0x10000)
    vm.its.write_baser(1, (1 << 63) | 0x20000)
    _w64(vm, 0x20000, encode_cte(0, 0))
    _w64(vm, 0x10000, encode_dte(0, 0x30000, 0))
    _w64(vm, 0x30000, encode_ite(0, 1 << 24, 0))
    with pytest.raises((ValueError, ItsTableError)) as ei:
        vm.restore_its_tables()
    assert "KVM" in str(ei.value) and "2**24" in str(ei.value).replace("2^24", "2**24")


# ----------------------------------------------------------------------------- CTE RDBase
def test_cte_rdbase_is_bits_47_16_as_u32():
    vm, _ = _vm()
    # bits 51:48 set on top of vCPU 1, and an unmapped collection
    _w64(vm, COLLTAB, (1 << 63) | (0xF << 48) | (1 << 16) | 3)
    _w64(vm, COLLTAB + 8, encode_cte(0xFFFF_FFFF, 4))
    _w64(vm, COLLTAB + 16, 0)
    vm.pause()
    vm.restore_its_tables()
    assert vm.its.collections == [(3, 1), (4, 0xFFFF_FFFF)]


# ---------------------------------------------------------- R5, random command streams
def _stream_vm():
    vm, g = _vm()
    cmdq = g.cmdq.base
    g.send(ItsCommand.mapd(1, cmdq, 11), ItsCommand.mapc(0, 0), ItsCommand.mapc(1, 1))
    g.create_device(2, 4)
    g.mapd(2)
    return vm, g


@pytest.mark.parametrize("seed", range(12))
def test_r5_random_streams_over_a_queue_that_is_an_itt(seed):
    """One batch of >= 32 slots (read ahead) against the same slots run one CWRITER step at a
    time (each slot read just before it runs): same ITS state, LPIs and guest memory. Device 1's
    ITT is the queue, so its DISCARDs zero slots that are still to run."""
    import random

    from vlpi.its import encode, write_cwriter

    rnd = random.Random(seed)
    start = _stream_vm()[0].its.cwriter // 32
    cmds = []
    for _ in range(rnd.randrange(40, 90)):
        k = rnd.random()
        slot_ev = 4 * (start + rnd.randrange(0, 100))  # the ITE over some slot's first doubleword
        if k < 0.35:
            cmds.append(ItsCommand.mapti(1, slot_ev, 8192 + rnd.randrange(0, 90), rnd.randrange(2)))
        elif k < 0.6:
            cmds.append(ItsCommand.discard(1, slot_ev))
        elif k < 0.7:
            cmds.append(ItsCommand.mapti(2, rnd.randrange(16), 8192 + rnd.randrange(0, 90), 0))
        elif k < 0.8:
            cmds.append(ItsCommand.int_(1, slot_ev))
        else:
            cmds.append(ItsCommand.sync(0))
    states = []
    for stepwise in (False, True):
        vm, g = _stream_vm()
        its = vm.its
        base, off = g.cmdq.base, its.cwriter
        slots = np.stack([encode(c) for c in cmds])
        vm.mem.write(base + off, slots.reshape(-1))
        if stepwise:
            for i in range(len(cmds)):
                write_cwriter(its, off + 32 * (i + 1))
        else:
            write_cwriter(its, off + 32 * len(cmds))
        ites = {(d, e): its.translate(d, e) for d in (1, 2) for e in range(0, 4 * (start + 100))}
        lpis = sorted(zip(np.asarray(vm.lpis.intid).tolist(), np.asarray(vm.lpis.pending_latch).tolist(), strict=True))
        states.append((ites, lpis, vm.mem.read(base, 0x1_0000).tobytes(), len(its.command_log.errors)))
    assert states[0] == states[1]
