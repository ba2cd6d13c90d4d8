"""vlpi.its: one handler per command, architected error codes, nothing changed on errors,
encodings, and the vectorised MAPTI (map_events) against one-by-one MAPTIs."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scenarios.kvm_guest import DEVTAB, ITT0, PEND, PROP, Guest

from vlpi.errors import GuestMemoryFault
from vlpi.its import ItsCommand, ItsCommandError, decode, decode_many, encode, encode_many
from vlpi.its import commands as C
from vlpi.vm import VM


def make(kernel="new", gic="v3", n=4):
    vm = VM(n, gic=gic, kernel=kernel)
    g = Guest(vm)
    vm.mem.write(PROP, np.full(1024, 0xA3, np.uint8))
    for d in (1, 2):
        g.create_device(d, 4)
        itt, bits = g.itts[d]
        vm.its.mapd(d, itt, bits - 1)
    for c in range(n):
        vm.its.mapc(c, c)
    vm.its.mapti(1, 0, 8192, 0)
    vm.its.mapti(1, 1, 8193, 1)
    vm.its.mapti(2, 3, 8200, 2)
    return vm, g


def snapshot(vm):
    its = vm.its
    L = vm.vgic
    h = hashlib.sha256()
    for s in vm.mem.slots:
        h.update(s.data.tobytes())
    ites = its.ites()
    return (
        dict(its.devices), its.collections, {k: v.tolist() for k, v in ites.items()},
        {k: L[k].tolist() for k in L.FIELDS}, h.hexdigest(), len(vm.lost),
    )


def expect_error(vm, code, fn, *args, **kw):
    before = snapshot(vm)
    with pytest.raises(ItsCommandError) as ei:
        fn(*args, **kw)
    assert ei.value.code == code, ei.value
    assert snapshot(vm) == before


# ------------------------------------------------------------------------- errors
def test_mapd_errors():
    vm, g = make()
    expect_error(vm, C.E_ITS_MAPD_DEVICE_OOR, vm.its.mapd, 0x10000, ITT0, 3)  # > 0xffff
    expect_error(vm, C.E_ITS_MAPD_DEVICE_OOR, vm.its.mapd, 8192, ITT0, 3)  # beyond 1 page of DTEs
    expect_error(vm, C.E_ITS_MAPD_DEVICE_OOR, vm.its.mapd, 9000, ITT0, 3, valid=False)
    expect_error(vm, C.E_ITS_MAPD_ITTSIZE_OOR, vm.its.mapd, 3, ITT0, 16)


def test_mapc_errors_and_old_kernel_rdbase_check():
    vm, g = make()
    expect_error(vm, C.E_ITS_MAPC_PROCNUM_OOR, vm.its.mapc, 9, 4)
    vm.its.write_baser(1, 0)  # collection table gone: new ICIDs fail the table check
    vm2, _ = make()
    vm2.mem.remove_slot(vm2.mem.slots[0].gpa)
    expect_error(vm2, C.E_ITS_MAPC_COLLECTION_OOR, vm2.its.mapc, 9, 1)
    # V=0 with a bad RDbase: fine on new KVM, E_ITS_MAPC_PROCNUM_OOR on old KVM
    vm.its.mapc(0, 99, valid=False)
    old, _ = make(kernel="old")
    expect_error(old, C.E_ITS_MAPC_PROCNUM_OOR, old.its.mapc, 0, 99, valid=False)


def test_mapti_errors():
    vm, g = make()
    expect_error(vm, C.E_ITS_MAPTI_UNMAPPED_DEVICE, vm.its.mapti, 3, 0, 8300, 0)
    expect_error(vm, C.E_ITS_MAPTI_ID_OOR, vm.its.mapti, 1, 16, 8300, 0)  # 4 EventID bits
    expect_error(vm, C.E_ITS_MAPTI_PHYSICALID_OOR, vm.its.mapti, 1, 2, 8191, 0)
    expect_error(vm, C.E_ITS_MAPTI_PHYSICALID_OOR, vm.its.mapti, 1, 2, 16384, 0)  # IDbits field 13
    expect_error(vm, C.E_ITS_MAPTI_PHYSICALID_OOR, vm.its.mapi, 1, 2, 0)
    expect_error(vm, C.E_ITS_MAPC_COLLECTION_OOR, vm.its.mapti, 1, 2, 8300, 8192)  # ICID beyond the table
    # a duplicate mapping is a silent no-op
    before = snapshot(vm)
    vm.its.mapti(1, 0, 8300, 3)
    assert snapshot(vm) == before


def test_mapti_config_fault_creates_nothing():
    vm, g = make()
    vm.write_propbaser(0x7000_0000_0000 | 13, vcpu=0)  # ignored: EnableLPIs = 1
    for v in range(4):
        vm.enable_lpis(v, False)
    vm.write_propbaser(0x7000_0000_0000 | 13)
    before = snapshot(vm)
    with pytest.raises(OSError):
        vm.its.mapti(1, 2, 8300, 3)
    assert snapshot(vm) == before


def test_movi_int_clear_inv_invall_movall_discard_errors():
    vm, g = make()
    expect_error(vm, C.E_ITS_MOVI_UNMAPPED_INTERRUPT, vm.its.movi, 1, 5, 1)
    expect_error(vm, C.E_ITS_MOVI_UNMAPPED_COLLECTION, vm.its.movi, 1, 0, 42)
    expect_error(vm, C.E_ITS_CLEAR_UNMAPPED_INTERRUPT, vm.its.clear, 1, 5)
    expect_error(vm, C.E_ITS_INV_UNMAPPED_INTERRUPT, vm.its.inv, 1, 5)
    expect_error(vm, C.E_ITS_INVALL_UNMAPPED_COLLECTION, vm.its.invall, 42)
    expect_error(vm, C.E_ITS_MOVALL_PROCNUM_OOR, vm.its.movall, 0, 4)
    expect_error(vm, C.E_ITS_DISCARD_UNMAPPED_INTERRUPT, vm.its.discard, 1, 5)
    # INT on a missing ITE: the error, and the refusal is named in vm.lost
    with pytest.raises(ItsCommandError) as ei:
        vm.its.int_(1, 5)
    assert ei.value.code == C.E_ITS_INT_UNMAPPED_INTERRUPT
    assert vm.lost.count(device_id=1) == 1
    # orphaned ITE (collection unmapped): INT, MOVI and DISCARD fail; CLEAR does not check
    vm.its.mapc(1, 1, valid=False)
    expect_error(vm, C.E_ITS_MOVI_UNMAPPED_COLLECTION, vm.its.movi, 1, 1, 0)
    expect_error(vm, C.E_ITS_DISCARD_UNMAPPED_INTERRUPT, vm.its.discard, 1, 1)
    with pytest.raises(ItsCommandError):
        vm.its.int_(1, 1)
    vm.its.clear(1, 1)
    # a new MAPC of the same ICID does not re-link the orphan
    vm.its.mapc(1, 1)
    with pytest.raises(ItsCommandError):
        vm.its.int_(1, 1)


# ------------------------------------------------------------------------- effects
def test_mapc_v0_keeps_stale_target_and_save_refuses_orphan():
    vm, g = make()
    vm.its.mapc(1, 1, valid=False)
    row = int(np.flatnonzero(vm.lpis.intid == 8193)[0])
    assert vm.lpis.target_vcpu[row] == 1  # target_vcpu is not cleared
    vm.pause()
    from vlpi.its import ItsStateError

    with pytest.raises(ItsStateError):
        vm.save_its_tables()


def test_mapc_remap_retargets_its_ites():
    vm, g = make()
    vm.its.mapc(0, 3)
    row = int(np.flatnonzero(vm.lpis.intid == 8192)[0])
    assert vm.lpis.target_vcpu[row] == 3
    vm.its.int_(1, 0)
    assert vm.acknowledge(3).tolist() == [8192]


def test_mapti_pulls_and_clears_pending_bit():
    vm, g = make()
    g.set_pending(3, 8300)
    vm.its.mapti(2, 4, 8300, 3)
    row = int(np.flatnonzero(vm.lpis.intid == 8300)[0])
    assert vm.lpis.pending_latch[row]
    assert not g.pending_bit(3, 8300)
    # a second ITE naming the same INTID shares the LPI: no re-sync, no retarget
    g.set_pending(0, 8300)
    vm.its.mapti(2, 5, 8300, 0)
    assert vm.lpis.target_vcpu[row] == 3 and g.pending_bit(0, 8300)
    assert vm.vgic["refs"][row] == 2
    vm.its.discard(2, 4)
    assert 8300 in vm.lpis.intid.tolist()
    vm.its.discard(2, 5)
    assert 8300 not in vm.lpis.intid.tolist()
    assert vm.lost.count(reason=8, intid=8300) == 1  # FREED_PENDING


def test_mapd_remap_drops_ites_and_v0_zeroes_dte():
    vm, g = make()
    vm.mem.write(DEVTAB + 8 * 1, np.full(8, 0xEE, np.uint8))
    itt, bits = g.itts[1]
    vm.its.mapd(1, itt, bits - 1)  # remap: ITEs dropped
    assert vm.its.n_ites == 1 and 8192 not in vm.lpis.intid.tolist()
    vm.its.mapd(1, itt, bits - 1, valid=False)
    assert 1 not in vm.its.devices
    assert (vm.mem.read(DEVTAB + 8, 8) == 0).all()
    old, g2 = make(kernel="old")
    old.mem.write(DEVTAB + 8, np.full(8, 0xEE, np.uint8))
    old.its.mapd(1, 0, 0, valid=False)
    assert (old.mem.read(DEVTAB + 8, 8) == 0xEE).all()


def test_discard_zeroes_ite_on_new_kernel_only():
    for kernel, want in (("new", 0), ("old", 0xEE)):
        vm, g = make(kernel=kernel)
        itt, _ = g.itts[2]
        vm.mem.write(itt + 3 * 8, np.full(8, 0xEE, np.uint8))
        vm.its.discard(2, 3)
        assert (vm.mem.read(itt + 24, 8) == want).all()


def test_movall_new_moves_everything_old_only_rdbase1():
    vm, _ = make(kernel="new")
    vm.its.movall(0, 3)
    assert set(vm.lpis.target_vcpu.tolist()) == {3}
    old, _ = make(kernel="old")
    old.its.movall(0, 3)
    t = dict(zip(old.lpis.intid.tolist(), old.lpis.target_vcpu.tolist(), strict=True))
    assert t == {8192: 3, 8193: 1, 8200: 2}


def test_movi_moves_vlpi_pending_bit():
    vm, g = make(gic="v4.1")
    vm.pause()
    assert vm.forward(1, [0]).all()
    vm.signal_msi(1, 0)
    vm.its.movi(1, 0, 2)
    assert vm.gicv4.vlpi_pending([2], [8192])[0] and not vm.gicv4.vlpi_pending([0], [8192])[0]
    vm.save_pending_tables()
    assert g.pending_bit(2, 8192) and not g.pending_bit(0, 8192)


def test_inv_and_invall_reread_config():
    vm, g = make()
    g.set_config(8192, 0x40)  # priority 0x40, disabled
    g.set_config(8193, 0x51)
    vm.its.inv(1, 0)
    r = {i: k for k, i in enumerate(vm.lpis.intid.tolist())}
    assert vm.priority[r[8192]] == 0x40 and not vm.enabled[r[8192]]
    assert vm.priority[r[8193]] == 0xA0
    vm.its.invall(0)  # 8193 targets vCPU 1: untouched
    assert vm.priority[r[8193]] == 0xA0
    vm.its.invall(1)
    assert vm.priority[r[8193]] == 0x50 and vm.enabled[r[8193]]


def test_int_clear_and_lpis_disabled():
    vm, g = make()
    vm.its.int_(1, 1)
    vm.its.clear(1, 1)
    assert vm.acknowledge(1).size == 0
    vm.enable_lpis(1, False)
    with pytest.raises(OSError) as ei:
        vm.its.int_(1, 1)
    assert ei.value.errno == 16  # EBUSY
    assert vm.lost.count(reason=5) == 1


# ------------------------------------------------------------------------- bulk MAPTI
@settings(max_examples=30, deadline=None)
@given(st.data())
def test_map_events_equals_one_by_one(data):
    n = data.draw(st.integers(1, 40))
    dev = data.draw(st.lists(st.sampled_from([1, 2, 3]), min_size=n, max_size=n))
    ev = data.draw(st.lists(st.integers(0, 17), min_size=n, max_size=n))
    lpi = data.draw(st.lists(st.sampled_from([8100, 8192, 8193, 8200, 8201, 8300, 16383, 16384]), min_size=n,
                             max_size=n))
    icid = data.draw(st.lists(st.sampled_from([0, 1, 3, 7, 8192]), min_size=n, max_size=n))
    a, ga = make()
    b, gb = make()
    for vm, g in ((a, ga), (b, gb)):
        g.set_pending(1, 8201)
        g.set_pending(0, 8300)
        vm.enable_lpis(3, False)
        vm.write_pendbaser(3, 0x7000_0000_0000)  # LPIs created on collection 3 fault (EFAULT)
    codes = a.its.map_events(dev, ev, lpi, icid, errors="skip")
    want = []
    for x in zip(dev, ev, lpi, icid, strict=True):
        try:
            b.its.mapti(*x)
            want.append(0)
        except ItsCommandError as e:
            want.append(e.code)
        except OSError as e:
            want.append(-e.errno)
    assert codes.tolist() == want
    sa, sb = snapshot(a), snapshot(b)
    assert sa == sb


def test_map_events_raise_changes_nothing():
    vm, g = make()
    before = snapshot(vm)
    with pytest.raises(ItsCommandError) as ei:
        vm.its.map_events([2, 2, 2], [4, 5, 99], [8300, 8301, 8302], 0)
    assert ei.value.index == 2 and ei.value.code == C.E_ITS_MAPTI_ID_OOR
    assert snapshot(vm) == before
    for v in range(4):
        vm.enable_lpis(v, False)
    vm.write_pendbaser(3, 0x7000_0000_0000)
    g.set_pending(0, 8301)
    before = snapshot(vm)
    with pytest.raises(GuestMemoryFault):
        vm.its.map_events([2, 2], [4, 5], [8301, 8302], [0, 3])  # the second one's sync faults
    assert snapshot(vm) == before
    vm.its.map_events([2, 2], [4, 5], [8301, 8302], [0, 1])
    assert vm.lpis.pending_latch[vm.lpis.intid == 8301].all() and not g.pending_bit(0, 8301)


def test_map_events_vectorised_large():
    vm = VM(8, gic="v4.1")
    g = Guest(vm)
    vm.write_propbaser(0x10000000 | 15)  # ignored (EnableLPIs on); keep IDbits 13 layout
    n = 8000
    for v in range(8):
        vm.its.mapc(v, v)
    itt = g.create_device(9, 13)
    vm.its.mapd(9, itt, 12)
    ev = np.arange(n)
    codes = vm.its.map_events(9, ev, 8192 + ev, ev % 8)
    assert (codes == 0).all() and len(vm.lpis) == n
    out = vm.signal_msi(9, ev)
    assert (out == 1).all() and vm.lpis.pending_latch.all()


# ------------------------------------------------------------------------- encodings
cmd_strategy = st.one_of(
    st.builds(ItsCommand.mapd, st.integers(0, 2**32 - 1), st.integers(0, 2**44 - 1).map(lambda x: x << 8),
              st.integers(0, 31), st.booleans()),
    st.builds(ItsCommand.mapc, st.integers(0, 2**16 - 1), st.integers(0, 2**32 - 1), st.booleans()),
    st.builds(ItsCommand.mapti, st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1),
              st.integers(0, 2**16 - 1)),
    st.builds(ItsCommand.mapi, st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), st.integers(0, 2**16 - 1)),
    st.builds(ItsCommand.movi, st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), st.integers(0, 2**16 - 1)),
    st.builds(ItsCommand.movall, st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)),
    st.builds(ItsCommand.int_, st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)),
    st.builds(ItsCommand.invall, st.integers(0, 2**16 - 1)),
)

_READS = {  # the fields KVM reads per opcode
    C.GITS_CMD_MAPD: ("device_id", "itt_addr", "size", "valid"),
    C.GITS_CMD_MAPC: ("icid", "rdbase", "valid"),
    C.GITS_CMD_MAPTI: ("device_id", "event_id", "pintid", "icid"),
    C.GITS_CMD_MAPI: ("device_id", "event_id", "icid"),
    C.GITS_CMD_MOVI: ("device_id", "event_id", "icid"),
    C.GITS_CMD_MOVALL: ("rdbase", "rdbase2"),
    C.GITS_CMD_INT: ("device_id", "event_id"),
    C.GITS_CMD_INVALL: ("icid",),
}


@given(cmd_strategy)
def test_encode_decode_roundtrip(cmd):
    slot = encode(cmd)
    assert slot.shape == (32,)
    got = decode(slot)
    for f in _READS[cmd.opcode]:
        assert getattr(got, f) == getattr(cmd, f), f
    many = encode_many(cmd.opcode, **{f: [getattr(cmd, f)] * 3 for f in _READS[cmd.opcode]})
    assert (many == slot).all()
    dm = decode_many(many)
    for f in _READS[cmd.opcode]:
        assert int(dm[f][1]) == int(getattr(cmd, f)), f


def test_encoding_layout_matches_spec():
    s = encode(ItsCommand.mapti(0x11223344, 0x55667788, 0x2000, 0x3)).view("<u8")
    assert s[0] == (0x11223344 << 32) | 0x0A
    assert s[1] == (0x2000 << 32) | 0x55667788
    assert s[2] == 3 and s[3] == 0
    s = encode(ItsCommand.mapc(5, 3)).view("<u8")
    assert s[2] == (1 << 63) | (3 << 16) | 5
    s = encode(ItsCommand.mapd(2, 0x4030_0000, 7)).view("<u8")
    assert s[1] == 7 and s[2] == (1 << 63) | 0x4030_0000
    assert decode(np.zeros(32, np.uint8)).name == "opcode 0x00"
    with pytest.raises(ValueError):
        decode(np.zeros(31, np.uint8))


def test_pending_table_untouched_by_commands_other_than_mapti_sync():
    vm, g = make()
    before = vm.mem.read(PEND, 4 * 0x10000).copy()
    vm.its.int_(1, 0)
    vm.its.movi(1, 0, 2)
    vm.its.movall(2, 1)
    vm.its.invall(1)
    assert (vm.mem.read(PEND, 4 * 0x10000) == before).all()


# ------------------------------------------------------------------------- differential vs reference
def _diff_setup(kernel):
    from scenarios.kvm_guest import COLLTAB, RAM

    vm = VM(4, gic="v3", kernel=kernel)
    vm.mem.add_slot(RAM, 8 << 20)
    ro = np.zeros(0x10000, np.uint8)
    ro[8192 // 8 : 8192 // 8 + 32] = 0x55  # pending bits that can't be cleared (read-only)
    vm.mem.add_slot(0x8000_0000, data=ro, readonly=True)
    vm.mem.write(PROP, np.where(np.arange(512) % 7 == 0, 0x41, 0xA3).astype(np.uint8))
    vm.write_propbaser(PROP | 13)
    for v, pb in enumerate([PEND, PEND + 0x10000, 0x8000_0000, 0x7000_0000_0000]):
        vm.write_pendbaser(v, pb)
    vm.mem.write(PEND + 8192 // 8, np.full(64, 0xA5, np.uint8))  # some bits to pull and clear
    vm.enable_lpis(0)
    vm.enable_lpis(2)
    vm.its.write_baser(0, (1 << 63) | DEVTAB)
    vm.its.write_baser(1, (1 << 63) | COLLTAB)
    vm.its.ctlr_enabled = True
    return vm


@pytest.mark.parametrize("kernel", ["new", "old"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_commands_match_reference_model(kernel, seed):
    from scenarios.its_reference import RefITS, vlpi_state

    from vlpi.its import GuestCommandWriter
    from vlpi.its.queue import write_ctlr

    a, b = _diff_setup(kernel), _diff_setup(kernel)
    ref = RefITS(b, kernel)
    rng = np.random.default_rng(seed)
    itts = [ITT0, ITT0 + 0x10000, 0x9000_0000]  # device 2's ITT is not guest RAM
    cmds = []
    for _ in range(600):
        d, e = int(rng.integers(0, 3)), int(rng.integers(0, 20))
        c, v = int(rng.integers(0, 6)), int(rng.integers(0, 5))
        k = int(rng.choice(11, p=[.03, .06, .36, .05, .07, .04, .1, .06, .05, .08, .1]))
        cmds.append([
            ItsCommand.mapd(d, itts[d], int(rng.choice([3, 4, 16])), bool(rng.random() < 0.85)),
            ItsCommand.mapc(c, v, bool(rng.random() < 0.8)),
            ItsCommand.mapti(d, e, 8192 + int(rng.integers(0, 300)), c),
            ItsCommand.mapi(d, 8192 + e, c),
            ItsCommand.movi(d, e, c),
            ItsCommand.movall(int(rng.integers(0, 5)), v),
            ItsCommand.int_(d, e),
            ItsCommand.clear(d, e),
            ItsCommand.discard(d, e),
            ItsCommand.inv(d, e),
            ItsCommand.invall(c),
        ][k])
    a.its.ctlr_enabled = False
    w = GuestCommandWriter(a.its, 0x4022_0000, 16)
    write_ctlr(a.its, 1)
    want = []
    for chunk in range(0, len(cmds), 50):  # the guest rewrites config bytes between batches
        idx = rng.integers(0, 300, 60)
        val = rng.choice(np.array([0x41, 0xA3, 0x60, 0xA2], np.uint8), 60)
        for vm in (a, b):
            vm.mem.write_u8(PROP + idx, val)
        w.send(*cmds[chunk : chunk + 50])
        want += [ref.run(cmd) for cmd in cmds[chunk : chunk + 50]]
    got = a.its.command_log.codes()
    assert got == [x for x in want if x != 0]
    sa, sb = vlpi_state(a), ref.state()
    for k in sb:
        assert sa[k] == sb[k], k
    for s1, s2 in zip(a.mem.slots, b.mem.slots, strict=True):
        diff = np.flatnonzero(s1.data != s2.data) + s1.gpa
        assert ((diff >= 0x4022_0000) & (diff < 0x4023_0000)).all(), hex(diff[0])  # only the queue differs
    assert len(sb["lpis"]) >= 5 and len(set(want)) > 5
