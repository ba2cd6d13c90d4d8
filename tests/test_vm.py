"""vlpi.VM: redistributor registers, MSIs, forwarding, VM-level save/restore, lost-interrupt log."""

from __future__ import annotations

import errno

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scenarios.kvm_guest import PEND, PROP, Guest, migrate

from vlpi.errors import GuestMemoryFault
from vlpi.its.abi import ItsTableError
from vlpi.vm import VM, LostReason, VMError

DEV = 5
N_EV = 64


def build(gic="v4.1", n=4, n_ev=N_EV, forward=None):
    """VM with device DEV, one collection per vCPU (ICID = vCPU), event i -> LPI 8192+i on
    vCPU i % n, all enabled; vCPUs paused afterwards (non-resident)."""
    vm = VM(n, gic=gic)
    g = Guest(vm)
    g.create_device(DEV, 8)
    itt, bits = g.itts[DEV]
    vm.its.mapd(DEV, itt, bits - 1)
    for v in range(n):
        vm.its.mapc(v, v)
    vm.mem.write(PROP, np.full(n_ev, 0xA3, np.uint8))
    ev = np.arange(n_ev)
    vm.its.map_events(DEV, ev, 8192 + ev, ev % n)
    if forward is not None:
        assert vm.forward(DEV, forward).all()
    vm.pause()
    return vm, g


def table_bits(vm, vcpu, intids):
    base = PEND + vcpu * 0x10000
    b = vm.mem.read(base, 0x2000)
    it = np.asarray(intids)
    return ((b[it >> 3] >> (it & 7)) & 1).astype(bool)


# ----------------------------------------------------------------------------- registers
def test_pendbaser_res0_ptz_and_enable_scan():
    vm = VM(2, gic="v3")
    vm.mem.add_slot(0, 1 << 22)
    vm.write_pendbaser(0, (1 << 64) - 1)
    res0 = (1 << 63) | (7 << 59) | (0xF << 52) | (0xF << 12) | 0x7F
    assert int(vm.pendbaser[0]) == ((1 << 64) - 1) & ~res0  # PTZ stored
    assert vm.read_pendbaser(0) == ((1 << 64) - 1) & ~res0 & ~(1 << 62)  # PTZ reads 0
    # an LPI exists, its bit is set in RAM; EnableLPIs with PTZ=1 stored skips the scan
    vm.write_propbaser(0x10000 | 13)
    vm.mem.write(0x10000, np.full(16, 0xA3, np.uint8))
    vm.its.write_baser(0, (1 << 63) | 0x20000)
    vm.its.write_baser(1, (1 << 63) | 0x30000)
    vm.its.mapd(1, 0x40000, 3)
    vm.its.mapc(0, 0)
    vm.write_pendbaser(0, 0x100000 | (1 << 62))
    vm.its.mapti(1, 0, 8200, 0)
    vm.mem.write(0x100000 + 8200 // 8, np.array([1 << (8200 % 8)], np.uint8))
    vm.enable_lpis(0)
    assert not vm.lpis.pending_latch[0]
    vm.enable_lpis(0, False)
    vm.write_pendbaser(0, 0x100000)
    vm.enable_lpis(0)
    assert vm.lpis.pending_latch[0]
    # the scan does not clear RAM; PENDBASER writes are ignored while EnableLPIs = 1
    assert vm.mem.read(0x100000 + 8200 // 8, 1)[0] == 1 << (8200 % 8)
    vm.write_pendbaser(0, 0x200000)
    assert vm.read_pendbaser(0) == 0x100000


def test_propbaser_res0_and_ignored_while_enabled():
    vm = VM(2, gic="v3")
    vm.write_propbaser((1 << 64) - 1)
    assert vm.read_propbaser() == ((1 << 64) - 1) & ~((0x1F << 59) | (0xF << 52) | (3 << 5))
    vm.enable_lpis(1)
    vm.write_propbaser(0x1234_0000, vcpu=1)
    assert vm.read_propbaser() != 0x1234_0000


def test_distinct_pendbaser_per_vcpu():
    vm, g = build("v3")
    vm.lpis.pending_latch[:] = True
    vm.save_pending_tables()
    intid = vm.lpis.intid
    tgt = vm.lpis.target_vcpu
    for v in range(4):
        assert table_bits(vm, v, intid[tgt == v]).all()
        assert not table_bits(vm, v, intid[tgt != v]).any()


def test_two_lpis_one_byte_on_different_vcpus():
    """INTIDs 8192 (vCPU 0) and 8193 (vCPU 1) share byte offset 1024 of two different tables:
    each lands in its own vCPU's table (the ca185b260951 byte-cache bug)."""
    vm, g = build("v3")
    lp = vm.lpis
    lp.pending_latch[:] = np.isin(lp.intid, [8192, 8193])
    vm.save_pending_tables()
    assert vm.mem.read(PEND + 1024, 1)[0] == 0b01
    assert vm.mem.read(PEND + 0x10000 + 1024, 1)[0] == 0b10
    dst, _ = migrate(vm)
    d = Guest(dst, setup=False)
    assert d.take_all() == {0: [8192], 1: [8193], 2: [], 3: []}
    assert dst.mem.read(PEND + 1024, 1)[0] == 0 and dst.mem.read(PEND + 0x10000 + 1024, 1)[0] == 0


# ----------------------------------------------------------------------------- save errors
def test_save_enxio_when_not_initialised():
    vm = VM(2, gic="v4.1")
    with pytest.raises(VMError) as ei:
        vm.save_pending_tables()
    assert ei.value.errno == errno.ENXIO
    assert vm.gicv4.counts["VMAPP"] == 0


def test_save_ebusy_when_running_and_when_not_quiesced():
    vm, g = build("v4.1")
    vm.lpis.pending_latch[:] = True
    vm.run([2])
    before = vm.mem.read(PEND, 0x40000).copy()
    vmapp = vm.gicv4.counts["VMAPP"]
    with pytest.raises(VMError) as ei:
        vm.save_pending_tables()
    assert ei.value.errno == errno.EBUSY and "vCPU 2" in str(ei.value)
    with pytest.raises(VMError) as ei:
        vm.save_its_tables()
    assert ei.value.errno == errno.EBUSY
    vm.pause()
    with pytest.raises(VMError) as ei:
        vm.save_pending_tables(require_quiesced=True)
    assert ei.value.errno == errno.EBUSY
    assert (vm.mem.read(PEND, 0x40000) == before).all()
    assert vm.gicv4.counts["VMAPP"] == vmapp
    vm.quiesce_devices()
    rep = vm.save_pending_tables(require_quiesced=True)
    assert rep.engine.guest_writes == N_EV


def test_remap_after_fault_and_after_exception():
    vm, g = build("v4.1", forward=np.arange(0, N_EV, 2))
    vm.enable_lpis(3, False)
    vm.write_pendbaser(3, 0x7000_0000_0000)  # no RAM there
    vm.enable_lpis(3)  # the EnableLPIs scan faults; KVM ignores that
    assert vm.last_scan_error is not None and vm.last_scan_error.vcpu == 3
    vm.lpis.pending_latch[:] = ~vm.lpis.hw
    with pytest.raises(GuestMemoryFault) as ei:
        vm.save_pending_tables()
    assert ei.value.vcpu == 3
    assert vm.gicv4.mapped.all()
    assert vm.gicv4.counts["VMAPP"] == 4 + 4 + 4  # init map, unmap, remap
    vm.enable_lpis(3, False)
    vm.write_pendbaser(3, PEND + 3 * 0x10000)

    def boom(vm):
        raise RuntimeError("device model crashed")

    with pytest.raises(RuntimeError):
        vm.save_pending_tables(during=boom, during_at="before_walk")
    assert vm.gicv4.mapped.all()


# ----------------------------------------------------------------------------- GICv4.1
def test_pending_vlpis_survive_save_restore_via_vpt():
    fwd = np.arange(0, N_EV, 2)
    vm, g = build("v4.1", forward=fwd)
    rng = np.random.default_rng(1)
    send = rng.choice(N_EV, 40, replace=False)
    out = vm.signal_msi(DEV, send)
    assert set(out.tolist()) <= {1, 2}
    assert ((out == 2) == np.isin(send, fwd)).all()
    # non-resident vPEs: a doorbell for each VLPI that became pending
    assert int(vm.gicv4.doorbells.sum()) == int(np.isin(send, fwd).sum())
    assert not vm.lpis.pending_latch[vm.lpis.hw].any()
    dst, info = migrate(vm, forward_after=(DEV, fwd))
    rep = info["pending"]
    assert rep.vpes_unmapped == 4 and rep.vpes_remapped == 4 and rep.lost_in_window == 0
    assert rep.engine.vpt_reads == fwd.size
    # guest RAM of the source holds exactly the sent events' bits
    intids = 8192 + np.arange(N_EV)
    for v in range(4):
        m = intids % 4 == v
        assert (table_bits(vm, v, intids[m]) == np.isin(np.arange(N_EV)[m], send)).all()
    # destination: restore pulled them into pending_latch, forwarding pushed hw ones to the VPT
    assert dst.lpis.hw.sum() == fwd.size
    assert not dst.lpis.pending_latch[dst.lpis.hw].any()
    d = Guest(dst, setup=False)
    taken = d.take_all()
    got = sorted(i for x in taken.values() for i in x)
    assert got == sorted((8192 + send).tolist())
    for v, x in taken.items():
        assert all((i - 8192) % 4 == v for i in x)
    assert d.take_all() == {0: [], 1: [], 2: [], 3: []}


def test_msi_during_unmapped_window_is_lost_and_named():
    fwd = np.arange(0, N_EV, 2)
    vm, g = build("v4.1", forward=fwd)

    def devices_still_running(vm):
        vm.signal_msi([DEV, DEV], [2, 3])  # event 2 forwarded (vCPU 2), event 3 software (vCPU 3)

    rep = vm.save_pending_tables(during=devices_still_running)
    assert rep.lost_in_window == 2
    r = rep.lost
    hwrec = r[r["reason"] == LostReason.VPE_UNMAPPED]
    assert hwrec.size == 1 and (hwrec["device_id"][0], hwrec["event_id"][0], hwrec["intid"][0], hwrec["vcpu"][0]) == (
        DEV, 2, 8194, 2
    )
    swrec = r[r["reason"] == LostReason.NOT_IN_SAVED_IMAGE]
    assert swrec.size == 1 and swrec["intid"][0] == 8195 and swrec["vcpu"][0] == 3
    assert not table_bits(vm, 2, [8194])[0] and not table_bits(vm, 3, [8195])[0]
    assert vm.gicv4.mapped.all()
    # the VLPI is gone for good; the software LPI is still pending on the source
    vm.run()
    assert Guest(vm, setup=False).take_all() == {0: [], 1: [], 2: [], 3: [8195]}
    # before the walk: the software LPI makes it into the image, the VLPI still does not
    vm.pause()
    rep = vm.save_pending_tables(during=devices_still_running, during_at="before_walk")
    assert rep.lost_in_window == 1 and rep.lost["reason"][0] == LostReason.VPE_UNMAPPED
    assert table_bits(vm, 3, [8195])[0] and not table_bits(vm, 2, [8194])[0]


def test_unforward_loses_pending_vlpi_and_says_so():
    vm, g = build("v4.1", forward=[4, 5])
    assert (vm.signal_msi(DEV, [4]) == 2).all()
    lost = vm.unforward(DEV, [4, 5])
    assert lost.tolist() == [True, False]
    rec = vm.lost.select(reason=LostReason.UNFORWARDED_PENDING)
    assert rec.size == 1 and rec["intid"][0] == 8196 and rec["event_id"][0] == 4 and rec["vcpu"][0] == 0
    assert not vm.lpis.hw.any() and not vm.lpis.pending_latch.any()
    vm.run()
    assert Guest(vm, setup=False).take_all() == {0: [], 1: [], 2: [], 3: []}


def test_forward_transfers_pending_latch_to_vpt():
    vm, g = build("v4.1")
    assert (vm.signal_msi(DEV, [6]) == 1).all()
    assert vm.forward(DEV, [6]).all()
    row = int(np.flatnonzero(vm.lpis.intid == 8198)[0])
    assert vm.lpis.hw[row] and not vm.lpis.pending_latch[row]
    assert vm.gicv4.vlpi_pending([2], [8198])[0]
    vm.save_pending_tables()
    assert table_bits(vm, 2, [8198])[0]


def test_gicv40_its_save_eacces_and_pending_save_uses_latch():
    vm, g = build("v4.0", forward=[1])
    vm.signal_msi(DEV, [1])
    with pytest.raises(ItsTableError) as ei:
        vm.save_its_tables()
    assert ei.value.errno == errno.EACCES
    rep = vm.save_pending_tables()
    assert rep.vpes_unmapped == 0 and rep.engine.vpt_reads == 0
    assert not table_bits(vm, 1, [8193])[0]  # the VLPI's state is unknowable on v4.0
    assert rep.lost["reason"].tolist() == [LostReason.VLPI_UNSAVED] and rep.lost["intid"].tolist() == [8193]


def test_v3_cannot_forward():
    vm, g = build("v3")
    with pytest.raises(VMError) as ei:
        vm.forward(DEV, [0])
    assert ei.value.errno == errno.ENODEV


# ----------------------------------------------------------------------------- MSIs
def test_msi_refusals_are_named():
    vm, g = build("v3")
    vm.enable_lpis(1, False)
    vm.its.mapc(3, 3, valid=False)  # event 3 -> orphaned ITE
    out = vm.signal_msi([DEV, DEV, DEV, 99, DEV], [1, 3, 200, 0, 0])
    assert out.tolist() == [-LostReason.LPIS_DISABLED, -LostReason.UNMAPPED_COLLECTION, -LostReason.NO_ITE,
                            -LostReason.NO_DEVICE, 1]
    r = vm.lost.records
    assert r["reason"].tolist() == [5, 4, 3, 2]
    assert r["intid"].tolist() == [8193, 8195, 0, 0]
    assert r["vcpu"].tolist() == [1, -1, -1, -1]
    vm.its.ctlr_enabled = False
    assert vm.signal_msi(DEV, 0)[0] == -LostReason.ITS_DISABLED


def test_signal_msi_bulk_equals_one_by_one():
    fwd = np.arange(0, N_EV, 3)
    a, _ = build("v4.1", forward=fwd)
    b, _ = build("v4.1", forward=fwd)
    for vm in (a, b):
        vm.enable_lpis(2, False)
        vm.run([1])
    rng = np.random.default_rng(7)
    d = np.where(rng.random(500) < 0.9, DEV, 6)
    e = rng.integers(0, N_EV + 8, 500)
    out_a = a.signal_msi(d, e)
    out_b = np.array([b.signal_msi(int(x), int(y))[0] for x, y in zip(d, e, strict=True)])
    assert (out_a == out_b).all()
    assert (a.lpis.pending_latch == b.lpis.pending_latch).all()
    assert (a.gicv4._live == b.gicv4._live).all()
    assert (a.gicv4.doorbells == b.gicv4.doorbells).all()
    ra, rb = a.lost.records, b.lost.records
    for f in ("reason", "device_id", "event_id", "intid", "vcpu"):
        assert (ra[f] == rb[f]).all()


# ----------------------------------------------------------------------------- debug view
def test_describe_lists_flags_and_summarises():
    vm, g = build("v4.1", forward=[0])
    vm.signal_msi(DEV, [0, 1])
    s = vm.describe(max_rows=4)
    lines = s.splitlines()
    assert any(ln.split()[:3] == ["8192", "0", "PEH"] for ln in lines)
    assert any(ln.split()[:3] == ["8193", "1", "PE-"] for ln in lines)
    assert any(ln.split()[:3] == ["8194", "2", "-E-"] for ln in lines)
    assert f"... {N_EV - 4} more LPIs" in s
    assert f"LPIs: {N_EV} total, 2 pending" in s
    assert "VM(4 vCPUs" in repr(vm)


# ----------------------------------------------------------------------------- ITS tables
def test_restore_bad_cte_einval_frees_everything():
    from scenarios.kvm_guest import COLLTAB

    from vlpi.its.abi import encode_cte

    vm, g = build("v3")
    vm.pause()
    vm.save_its_tables()
    vm.save_pending_tables()
    regs = vm.get_registers()
    from scenarios.kvm_guest import copy_memory

    mem = copy_memory(vm.mem)
    mem.write(COLLTAB + 8, encode_cte(99, 1).reshape(1).astype("<u8").view(np.uint8))  # RDBase 99: no such vCPU
    dst = VM(4, gic="v3", mem=mem)
    dst.init()
    with pytest.raises(ItsTableError) as ei:
        dst.set_registers(regs)
    assert ei.value.errno == errno.EINVAL
    assert not dst.its.devices and not dst.its.collections and len(dst.lpis) == 0


def test_restore_twice_eexist_and_lpi_fault_rolls_back():
    from scenarios.kvm_guest import copy_memory

    vm, g = build("v3")
    vm.lpis.pending_latch[:] = True
    vm.save_its_tables()
    vm.save_pending_tables()
    regs = vm.get_registers()
    dst = VM(4, gic="v3", mem=copy_memory(vm.mem))
    dst.init()
    dst.set_registers(regs)
    assert len(dst.lpis) == N_EV and dst.lpis.pending_latch.all()
    with pytest.raises(ItsTableError) as ei:
        dst.restore_its_tables()
    assert ei.value.errno == errno.EEXIST
    # vgic_its_restore_collection_table frees only the collection list and returns: the devices,
    # ITEs and LPIs of the first restore stay (without their collections)
    assert list(dst.its.devices) == [DEV] and not dst.its.collections and len(dst.lpis) == N_EV
    assert dst.its.translate(DEV, 0) == (8192, -1)
    # an LPI creation that faults (vCPU 2's pending table unmapped) aborts the restore with EFAULT;
    # the LPIs created before it had their bits consumed, as in KVM
    dst2 = VM(4, gic="v3", mem=copy_memory(vm.mem))
    dst2.init()
    regs2 = dict(regs, pendbaser=list(regs["pendbaser"]))
    regs2["pendbaser"][2] = 0x7000_0000_0000
    with pytest.raises(ItsTableError) as ei:
        dst2.set_registers(regs2)
    assert ei.value.errno == errno.EFAULT and "8194" in str(ei.value)
    assert not dst2.its.devices and len(dst2.lpis) == 0
    assert not table_bits(dst2, 0, [8192])[0] and not table_bits(dst2, 1, [8193])[0]
    assert table_bits(dst2, 3, [8195])[0]  # never reached


def test_two_level_device_table():
    vm = VM(2, gic="v3")
    Guest(vm)
    from scenarios.kvm_guest import DEVTAB, RAM

    from vlpi.its import ItsCommandError
    from vlpi.its import commands as C
    from vlpi.its.abi import encode_l1e
    from vlpi.its.queue import write_ctlr

    l2 = RAM + 0x70_0000
    write_ctlr(vm.its, 0)
    vm.its.write_baser(0, (1 << 63) | (1 << 62) | DEVTAB)
    write_ctlr(vm.its, 1)
    vm.mem.write(DEVTAB + 8, encode_l1e(l2).reshape(1).astype("<u8").view(np.uint8))  # L1[1]: DeviceIDs 8192..16383
    with pytest.raises(ItsCommandError) as ei:
        vm.its.mapd(5, RAM + 0x60_0000, 3)  # L1[0] not valid
    assert ei.value.code == C.E_ITS_MAPD_DEVICE_OOR
    vm.its.mapd(8192 + 5, RAM + 0x60_0000, 3)
    vm.its.mapc(0, 1)
    vm.mem.write(PROP, np.full(8, 0xA3, np.uint8))
    vm.its.mapti(8197, 2, 8195, 0)
    vm.pause()
    rep = vm.save_its_tables()
    assert rep.dtes_written == 1
    assert vm.mem.read(l2 + 5 * 8, 8).view("<u8")[0] >> 63 == 1
    dst, _ = migrate(vm)
    assert dst.its.translate(8197, 2) == (8195, 1)


def test_gicv40_restore_forward_pushes_pending_with_int():
    vm, g = build("v4.0")
    vm.signal_msi(DEV, [9, 10])
    dst, info = migrate(vm, forward_after=(DEV, [9]))
    assert dst.gicv4.counts["INT"] == 1
    assert Guest(dst, setup=False).take_all() == {0: [], 1: [8201], 2: [8202], 3: []}


# ----------------------------------------------------------------------------- end to end property
_OPS = st.lists(
    st.tuples(st.sampled_from(["msi", "fwd", "unfwd", "run", "pause", "ack", "movi", "int"]),
              st.lists(st.integers(0, N_EV - 1), min_size=1, max_size=12), st.integers(0, 3)),
    max_size=25,
)


@settings(max_examples=25, deadline=None)
@given(gic=st.sampled_from(["v3", "v4.1"]), ops=_OPS)
def test_migration_neither_loses_nor_duplicates(gic, ops):
    """Whatever is pending on the source when it stops (software latches and VLPIs in VPTs) is
    delivered exactly once on the destination, to the same vCPU; every refused MSI is named."""
    vm, g = build(gic)
    refused = 0
    for op, evs, v in ops:
        ev = np.array(evs)
        if op == "msi":
            refused += int(np.count_nonzero(vm.signal_msi(DEV, ev) < 0))
        elif op == "fwd" and gic == "v4.1":
            vm.forward(DEV, ev)
        elif op == "unfwd" and gic == "v4.1":
            vm.unforward(DEV, ev)
        elif op == "run":
            vm.run([v])
        elif op == "pause":
            vm.pause([v])
        elif op == "ack":
            vm.acknowledge(v)
        elif op == "movi":
            vm.its.movi(DEV, int(ev[0]), v)
        elif op == "int":
            vm.its.int_(DEV, int(ev[0]))
    assert vm.lost.count(source=1) == refused
    vm.pause()
    L = vm.vgic
    pend = L["pending"].copy()
    if gic == "v4.1":
        h = np.flatnonzero(L["hw"])
        pend[h] |= vm.gicv4.vlpi_pending(L["target"][h], L["intid"][h])
    expected = {v: sorted(L["intid"][pend & (L["target"] == v)].tolist()) for v in range(4)}
    fwd_ev = vm.its.ites()["event_id"][vm.vgic.hw_of(vm.its.ites()["intid"])]
    dst, info = migrate(vm, forward_after=(DEV, fwd_ev) if gic == "v4.1" else None)
    got = {v: sorted(x) for v, x in Guest(dst, setup=False).take_all().items()}
    assert got == expected
    assert len(dst.lost) == 0 and int(dst.lpis.hw.sum()) == fwd_ev.size


def _python_calls(fn) -> int:
    import cProfile
    import pstats

    pr = cProfile.Profile()
    pr.enable()
    fn()
    pr.disable()
    return sum(s[1] for s in pstats.Stats(pr).stats.values())  # primitive call counts


@pytest.mark.parametrize("what", ["map_events", "signal_msi", "forward", "unforward", "queue"])
def test_bulk_paths_are_vectorised(what):
    """Python-level call counts do not grow with the number of MSIs/mappings (no per-element loop)."""
    from vlpi.its import GuestCommandWriter, encode_many
    from vlpi.its.queue import write_ctlr

    def setup(n):
        vm = VM(8, gic="v4.1")
        g = Guest(vm)
        vm.mem.write(PROP, np.full(8192, 0xA3, np.uint8))
        for v in range(8):
            vm.its.mapc(v, v)
        vm.its.mapd(1, g.create_device(1, 14), 13)
        ev = np.arange(n)
        if what != "map_events" and what != "queue":
            vm.its.map_events(1, ev, 8192 + ev, ev % 8)
        if what == "unforward":
            vm.forward(1, ev)
            vm.pause()
            vm.signal_msi(1, ev)
        return vm, ev

    def run(n):
        vm, ev = setup(n)
        if what == "map_events":
            return _python_calls(lambda: vm.its.map_events(1, ev, 8192 + ev, ev % 8))
        if what == "signal_msi":
            return _python_calls(lambda: vm.signal_msi(1, np.concatenate([ev, ev + n])))
        if what == "forward":
            return _python_calls(lambda: vm.forward(1, ev))
        if what == "unforward":
            return _python_calls(lambda: vm.unforward(1, ev))
        write_ctlr(vm.its, 0)
        w = GuestCommandWriter(vm.its, 0x4050_0000, 256)
        write_ctlr(vm.its, 1)
        slots = encode_many("MAPTI", device_id=1, event_id=ev, pintid=8192 + ev, icid=ev % 8)
        return _python_calls(lambda: w.send_slots(slots))

    run(200)  # warm-up: first calls import and compile
    small, large = run(200), run(4000)
    assert large < small * 1.5 + 200, (small, large)


def test_its_save_einval_leaves_its_state_alone():
    """A DeviceID the (shrunk) device table no longer covers: EINVAL from SAVE_TABLES, the ITS
    keeps its devices, collections and LPIs (guest RAM may hold the entries written before)."""
    from scenarios.kvm_guest import DEVTAB

    from vlpi.its.queue import write_ctlr

    vm, g = build("v3")
    g.create_device(8000, 4)
    vm.its.mapd(8000, g.itts[8000][0], 3)
    before = (dict(vm.its.devices), vm.its.collections, vm.lpis.intid.copy())
    write_ctlr(vm.its, 0)
    vm.its.write_baser(0, (1 << 63) | DEVTAB | (1 << 62))  # now two-level, L1[0] invalid
    with pytest.raises(ItsTableError) as ei:
        vm.save_its_tables()
    assert ei.value.errno == errno.EINVAL
    assert (dict(vm.its.devices), vm.its.collections) == before[:2] and (vm.lpis.intid == before[2]).all()


def test_restored_lpi_beyond_idbits_is_created():
    """RESTORE_TABLES checks only pINTID >= 8192, not PROPBASER.IDbits: an ITE saved
    while IDbits was larger comes back, and its bit is pulled from wherever intid/8 lands."""
    from scenarios.kvm_guest import copy_memory

    vm = VM(2, gic="v3")
    g = Guest(vm)
    for v in range(2):
        vm.enable_lpis(v, False)
    vm.write_propbaser(PROP | 15)  # 16 INTID bits for now
    for v in range(2):
        vm.enable_lpis(v)
    itt = g.create_device(1, 4)
    vm.its.mapd(1, itt, 3)
    vm.its.mapc(0, 1)
    vm.mem.write(PROP + 40000 - 8192, np.array([0xA3], np.uint8))
    vm.its.mapti(1, 0, 40000, 0)
    vm.its.int_(1, 0)
    vm.pause()
    vm.save_its_tables()
    vm.save_pending_tables()
    assert table_bits(vm, 1, [40000])[0]
    regs = vm.get_registers()
    regs["propbaser"] = PROP | 13  # the guest lowered IDbits: MAPTI of 40000 would now fail
    dst = VM(2, gic="v3", mem=copy_memory(vm.mem))
    dst.init()
    dst.set_registers(regs)
    assert dst.lpis.intid.tolist() == [40000] and dst.lpis.pending_latch[0]
    dst.run()
    assert dst.acknowledge(1).tolist() == [40000]


def test_enable_lpis_scan_after_restore_wipes_restored_latches_and_says_so():
    """RESTORE_TABLES consumes the RAM bits into pending_latch; a later EnableLPIs 0 -> 1 scan
    reassigns the latches from RAM (now 0): KVM silently drops them; vlpi names them."""
    vm, g = build("v3")
    vm.signal_msi(DEV, [1, 5])
    dst, _ = migrate(vm)
    assert int(dst.lpis.pending_latch.sum()) == 2
    dst.enable_lpis(1, False)
    dst.enable_lpis(1)
    assert int(dst.lpis.pending_latch.sum()) == 0
    rec = dst.lost.select(reason=LostReason.SCAN_CLEARED)
    assert sorted(rec["intid"].tolist()) == [8193, 8197] and set(rec["vcpu"].tolist()) == {1}


def test_bad_arguments_name_the_argument_and_change_nothing():
    vm, g = build("v4.1")
    before = (vm.lpis.pending_latch.copy(), len(vm.lost), vm.gicv4._live.sum())
    with pytest.raises(ValueError, match=r"event_ids\[2\]"):
        vm.signal_msi(DEV, [0, 1, -3])
    with pytest.raises(TypeError, match="device_ids"):
        vm.signal_msi([1.5], [0])
    with pytest.raises(ValueError, match="device_ids has 2 entries but event_ids has 3"):
        vm.forward([DEV, DEV], [0, 1, 2])
    with pytest.raises(ValueError, match=r"vcpus\[0\]"):
        vm.run([7])
    with pytest.raises(ValueError, match="vcpu"):
        vm.write_pendbaser(4, 0)
    with pytest.raises(ValueError, match=r"intids\[1\]"):
        vm.its.map_events(DEV, [0, 1], [8192, -1], 0)
    with pytest.raises(ValueError, match="gic"):
        VM(2, gic="v5")
    with pytest.raises(ValueError, match="n_vcpus"):
        VM(0)
    assert (vm.lpis.pending_latch == before[0]).all() and len(vm.lost) == before[1]
    assert vm.gicv4._live.sum() == before[2]


def test_shared_lpi_one_forwarded_event():
    """Two events name one LPI; VFIO forwards one. The forwarded event's MSIs go to the GIC
    directly; the other's go through KVM's ITS checks and then become a hardware INT. Freeing
    any ITE of a forwarded LPI unmaps the VLPI and loses (names) its pending state."""
    vm, g = build("v4.1")
    vm.its.mapti(DEV, 100, 8192, 0)  # event 100 shares LPI 8192 with event 0
    assert vm.forward(DEV, [0, 100]).tolist() == [True, False]
    assert vm.its.ites()["forwarded"].sum() == 1
    vm.its.ctlr_enabled = False
    out = vm.signal_msi(DEV, [0, 100])
    assert out.tolist() == [2, -LostReason.ITS_DISABLED]
    vm.its.ctlr_enabled = True
    vm.its.clear(DEV, 0)
    assert vm.signal_msi(DEV, [100]).tolist() == [2]  # via KVM: a hardware INT on the VLPI
    assert vm.gicv4.vlpi_pending([0], [8192])[0]
    vm.its.discard(DEV, 100)  # the non-forwarded ITE goes: KVM still unmaps the VLPI
    rec = vm.lost.select(reason=LostReason.FREED_PENDING)
    assert rec.size == 1 and rec["intid"][0] == 8192 and rec["event_id"][0] == 100
    row = int(np.flatnonzero(vm.lpis.intid == 8192)[0])
    assert not vm.lpis.hw[row] and not vm.its.ites()["forwarded"].any()
    assert vm.signal_msi(DEV, [0]).tolist() == [1]  # software LPI again


def test_vfio_resetting_forwarding_on_load_loses_pending_vlpis():
    """The v1 cover letter's open problem: QEMU's VFIO load path unsets and sets forwarding again
    after it was set up; the pending state pushed into the VPT is discarded, not moved back."""
    fwd = np.array([0, 1, 2, 3])
    vm, g = build("v4.1", forward=fwd)
    vm.signal_msi(DEV, [1, 2])
    dst, _ = migrate(vm, forward_after=(DEV, fwd))
    dst.pause()
    lost = dst.unforward(DEV, fwd)  # VFIO: disable vectors...
    dst.forward(DEV, fwd)  # ...and enable them again
    assert lost.tolist() == [False, True, True, False]
    assert sorted(dst.lost.select(reason=LostReason.UNFORWARDED_PENDING)["intid"].tolist()) == [8193, 8194]
    dst.run()
    assert Guest(dst, setup=False).take_all() == {0: [], 1: [], 2: [], 3: []}


def test_restore_of_a_pintid_beyond_24_bits_is_refused_and_changes_nothing():
    """KVM restores any pINTID >= 8192; vlpi's LPIs have 24-bit INTIDs: a clear error, no partial state."""
    from vlpi.its import abi

    vm = VM(2, gic="v3")
    vm.mem.add_slot(0x4000_0000, 64 << 20)  # large enough for the LPI's config byte (PROPBASER + 16 MiB)
    vm.write_propbaser(0x4000_0000 | 13)
    for v in range(2):
        vm.write_pendbaser(v, 0x4010_0000 + v * 0x10000)
    vm.its.write_baser(0, (1 << 63) | 0x4020_0000)
    vm.its.write_baser(1, (1 << 63) | 0x4021_0000)

    def w(gpa, word):
        vm.mem.write(gpa, np.array([int(word)], "<u8").view(np.uint8))

    w(0x4021_0000, abi.encode_cte(0, 0)[()])
    w(0x4020_0000 + 8, abi.encode_dte(0, 0x4030_0000, 7)[()])
    w(0x4030_0000, abi.encode_ite(1, 8192, 0)[()])
    w(0x4030_0008, abi.encode_ite(0, (1 << 24) + 5, 0)[()])
    before = vm.mem.slots[0].data.copy()
    with pytest.raises(ValueError, match=r"device 1 event 1 has pINTID 16777221 >= 2\*\*24"):
        vm.restore_its_tables()
    assert vm.its.devices == {} and len(vm.lpis) == 0
    assert np.array_equal(vm.mem.slots[0].data, before)
