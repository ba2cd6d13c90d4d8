"""The ITS command queue in guest RAM (``vgic_its_process_commands``, vgic-its.c)."""

from __future__ import annotations

import numpy as np
from scenarios.kvm_guest import CMDQ, COLLTAB, DEVTAB, PROP, RAM, Guest

from vlpi.its import GuestCommandWriter, ItsCommand, encode, encode_many, write_cbaser, write_ctlr, write_cwriter
from vlpi.its import commands as C
from vlpi.its.queue import process_commands, queue_bytes, read_ctlr, set_creadr
from vlpi.vm import VM


def fresh(n=4):
    vm = VM(n, gic="v3")
    vm.mem.add_slot(RAM, 8 << 20)
    vm.mem.write(PROP, np.full(256, 0xA3, np.uint8))
    for v in range(n):
        vm.write_propbaser(PROP | 13, v)
        vm.write_pendbaser(v, RAM + 0x10_0000 + v * 0x10000)
        vm.enable_lpis(v)
    return vm


def test_cbaser_sanitised_and_resets_pointers():
    vm = fresh()
    its = vm.its
    its.cwriter, its.creadr = 0x40, 0x20
    write_cbaser(its, (1 << 63) | (1 << 59) | (5 << 53) | (2 << 10) | CMDQ | 0xF000 | 15)
    assert its.creadr == 0 and its.cwriter == 0
    assert (its.cbaser >> 59) & 7 == 3  # nC -> RaWb
    assert (its.cbaser >> 53) & 7 == 0  # outer 5 -> SameAsInner
    assert (its.cbaser >> 10) & 3 == 1  # outer shareable -> inner
    assert its.cbaser & 0xF000 == 0
    assert queue_bytes(its.cbaser) == 64 << 10


def test_enable_needs_valid_tables_and_runs_queued_slots():
    vm = fresh()
    its = vm.its
    its.write_baser(0, DEVTAB)  # Valid = 0
    its.write_baser(1, (1 << 63) | COLLTAB)
    w = GuestCommandWriter(its, CMDQ)
    w.send(ItsCommand.mapc(1, 1))  # queued, not executed while disabled
    assert its.cwriter == 32 and its.creadr == 0 and not its.collections
    write_ctlr(its, 1)
    assert not its.ctlr_enabled  # BASER0 not valid: the whole write is ignored
    its.write_baser(0, (1 << 63) | DEVTAB)
    write_ctlr(its, 1)
    assert its.ctlr_enabled and its.creadr == 32
    assert its.collections == [(1, 1)]
    assert read_ctlr(its) == 1 | (1 << 31)  # Quiescent
    # BASER writes are ignored while enabled
    b = its.baser[0]
    its.write_baser(0, 0)
    assert its.baser[0] == b


def test_cwriter_beyond_queue_dropped_and_retry_bit_masked():
    vm = fresh()
    g = Guest(vm, setup=False)
    vm.its.write_baser(0, (1 << 63) | DEVTAB)
    vm.its.write_baser(1, (1 << 63) | COLLTAB)
    g.cmdq = GuestCommandWriter(vm.its, CMDQ, 1)  # 4 KiB queue
    write_ctlr(vm.its, 1)
    write_cwriter(vm.its, 4096)
    assert vm.its.cwriter == 0
    vm.mem.write(CMDQ, encode(ItsCommand.mapc(2, 2)))
    write_cwriter(vm.its, 32 | 1)  # Retry bit discarded
    assert vm.its.cwriter == 32 and vm.its.creadr == 32 and vm.its.collections == [(2, 2)]


def test_wraparound_and_errors_are_logged_not_raised():
    vm = fresh()
    vm.its.write_baser(0, (1 << 63) | DEVTAB)
    vm.its.write_baser(1, (1 << 63) | COLLTAB)
    w = GuestCommandWriter(vm.its, CMDQ, 1)  # 128 slots
    write_ctlr(vm.its, 1)
    itt = RAM + 0x40_0000
    w.send(ItsCommand.mapd(3, itt, 7), ItsCommand.mapc(0, 0))
    ev = np.arange(300)
    w.send_many("MAPTI", device_id=3, event_id=ev, pintid=8192 + ev, icid=0)  # wraps twice
    log = vm.its.command_log
    # EventIDs >= 256 fail with E_ITS_MAPTI_ID_OOR; the queue moves on
    assert log.codes() == [C.E_ITS_MAPTI_ID_OOR] * 44
    assert vm.its.n_ites == 256 and vm.its.creadr == vm.its.cwriter
    assert log.executed == 302
    # unknown opcodes (and every GICv4 opcode) are no-op slots
    w.send_slots(np.stack([encode(ItsCommand(0x29)), encode(ItsCommand(0x00))]))
    assert log.executed == 304 and len(log) == 44


def test_unreadable_slot_is_skipped():
    vm = fresh()
    vm.its.write_baser(0, (1 << 63) | DEVTAB)
    vm.its.write_baser(1, (1 << 63) | COLLTAB)
    q = 0x7000_0000  # queue outside RAM for its first page
    vm.mem.add_slot(q + 32, 4096 - 32)
    write_cbaser(vm.its, (1 << 63) | q)
    write_ctlr(vm.its, 1)
    vm.mem.write(q + 32, encode(ItsCommand.mapc(1, 1)))
    write_cwriter(vm.its, 64)
    assert vm.its.command_log.skipped_unreadable == 1
    assert vm.its.collections == [(1, 1)] and vm.its.creadr == 64


def test_set_creadr_userspace_rules():
    import errno

    import pytest

    vm = fresh()
    write_cbaser(vm.its, (1 << 63) | CMDQ)  # 4 KiB
    with pytest.raises(OSError) as ei:
        set_creadr(vm.its, 4096)
    assert ei.value.errno == errno.EINVAL
    set_creadr(vm.its, 64)
    assert vm.its.creadr == 64
    vm.its.ctlr_enabled = True
    with pytest.raises(OSError) as ei:
        set_creadr(vm.its, 0)
    assert ei.value.errno == errno.EBUSY


def test_queue_equals_python_calls():
    """The same command stream through the queue and through the Python calls: same state."""
    rng = np.random.default_rng(3)
    a, b = fresh(), fresh()
    for vm in (a, b):
        vm.its.write_baser(0, (1 << 63) | DEVTAB)
        vm.its.write_baser(1, (1 << 63) | COLLTAB)
    w = GuestCommandWriter(a.its, CMDQ)
    write_ctlr(a.its, 1)
    b.its.ctlr_enabled = True
    cmds = [ItsCommand.mapd(d, RAM + 0x40_0000 + d * 0x1000, 4) for d in range(3)]
    cmds += [ItsCommand.mapc(c, c) for c in range(4)]
    for _ in range(400):
        k = rng.integers(0, 8) if rng.random() < 0.5 else 0  # long MAPTI runs: the bulk path
        d, e, c = int(rng.integers(0, 4)), int(rng.integers(0, 40)), int(rng.integers(0, 6))
        cmds.append([ItsCommand.mapti(d, e, 8192 + int(rng.integers(0, 200)), c), ItsCommand.movi(d, e, c),
                     ItsCommand.discard(d, e), ItsCommand.int_(d, e), ItsCommand.clear(d, e),
                     ItsCommand.inv(d, e), ItsCommand.invall(c), ItsCommand.mapc(c, c % 4, bool(rng.random() < 0.8))
                     ][k])
    w.send(*cmds)
    codes = []
    for cmd in cmds:
        try:
            b.its.execute(cmd)
        except C.ItsCommandError as e:
            codes.append(e.code)
        except OSError as e:
            codes.append(-e.errno)
    assert a.its.command_log.codes() == codes
    assert a.its.collections == b.its.collections
    for k, v in a.its.ites().items():
        assert (v == b.its.ites()[k]).all()
    for f in ("intid", "target", "pending", "priority", "enabled", "refs"):
        assert (a.vgic[f] == b.vgic[f]).all(), f
    assert len(codes) > 0 and a.its.n_ites > 0


def test_encode_many_through_queue_is_vectorised_input():
    vm = fresh()
    vm.its.write_baser(0, (1 << 63) | DEVTAB)
    vm.its.write_baser(1, (1 << 63) | COLLTAB)
    w = GuestCommandWriter(vm.its, CMDQ)
    write_ctlr(vm.its, 1)
    slots = encode_many("MAPC", icid=np.arange(4), rdbase=np.arange(4))
    assert slots.shape == (4, 32)
    w.send_slots(slots)
    assert vm.its.collections == [(i, i) for i in range(4)]
    assert process_commands(vm.its) == 0


def test_unreadable_slot_in_a_long_run_is_skipped_others_run():
    vm = fresh()
    vm.its.write_baser(0, (1 << 63) | DEVTAB)
    vm.its.write_baser(1, (1 << 63) | COLLTAB)
    q = 0x7000_0000
    vm.mem.add_slot(q, 32 * 10)  # slots 0..9
    vm.mem.add_slot(q + 32 * 11, 4096 - 32 * 11)  # slot 10 is a hole
    write_cbaser(vm.its, (1 << 63) | q)
    write_ctlr(vm.its, 1)
    slots = encode_many("MAPC", icid=np.arange(60), rdbase=np.arange(60) % 4)
    vm.mem.write(q, slots[:10].reshape(-1))
    vm.mem.write(q + 32 * 11, slots[11:].reshape(-1))
    write_cwriter(vm.its, 60 * 32)
    log = vm.its.command_log
    assert log.skipped_unreadable == 1 and log.executed == 59
    assert [c for c, _ in vm.its.collections] == [i for i in range(60) if i != 10]
