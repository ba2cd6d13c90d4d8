"""KVM ITS table ABI revision 0 (vlpi.its.abi) against hand-computed encodings and against the
scalar reference walker (tests/its_table_walker.py).

Guest memory is poisoned (0xA5 or random bytes) so that every byte the save did not write is
provably untouched, and so that restore meets stale entries the way KVM does.
"""

from __future__ import annotations

import errno
import pickle

import its_table_walker as walker
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vlpi import GuestMemory
from vlpi.its import abi
from vlpi.its.abi import (
    COLLECTION_NOT_MAPPED,
    ItsDevice,
    ItsTableError,
    baser_table,
    restore_tables_v0,
    save_tables_v0,
)

RAM = 0x4000_0000
DT = RAM  # device table (or level-1 table)
CT = RAM + 0x3_0000  # collection table
ITTS = RAM + 0x10_0000  # ITT area
V = 1 << 63


def baser(gpa: int, pages: int = 1, *, valid: bool = True, indirect: bool = False, kind: int = 1) -> int:
    """A GITS_BASER value as KVM presents it (64 KiB pages, entry size 8)."""
    assert gpa % (1 << 16) == 0
    addr = (gpa & 0x0000_FFFF_FFFF_0000) | (((gpa >> 48) & 0xF) << 12)
    return (
        (V if valid else 0) | ((1 << 62) if indirect else 0) | (kind << 56) | (7 << 48) | addr | (2 << 8) | (pages - 1)
    )


def new_mem(size: int = 4 << 20, poison: int | None = 0xA5, base: int = RAM) -> tuple[GuestMemory, np.ndarray]:
    mem = GuestMemory()
    ram = mem.add_slot(base, size)
    if poison is not None:
        ram[:] = poison
    return mem, ram


def clone(mem: GuestMemory) -> GuestMemory:
    out = GuestMemory()
    for s in mem.slots:
        out.add_slot(s.gpa, s.size, readonly=s.readonly, data=s.data.copy())
    return out


def word(mem: GuestMemory, gpa: int) -> int:
    return int(mem.read(gpa, 8).view("<u8")[0])


def dev(device_id, itt, bits, ites=(), hw=None) -> ItsDevice:
    """ites: [(event_id, pintid, icid)]."""
    ites = list(ites)
    return ItsDevice(
        device_id,
        itt,
        bits,
        np.array([e for e, _, _ in ites], np.uint32),
        np.array([p for _, p, _ in ites], np.uint32),
        np.array([c for _, _, c in ites], np.uint16),
        np.zeros(len(ites), bool) if hw is None else np.array(hw, bool),
    )


def plain(devices):
    return [
        (
            d.device_id,
            d.itt_addr,
            d.eventid_bits,
            list(zip(d.event_id.tolist(), d.pintid.tolist(), d.icid.tolist(), strict=True)),
        )
        for d in devices
    ]


def written_words(before: np.ndarray, after: np.ndarray, base: int) -> dict[int, int]:
    """{GPA: word} of every 8-byte-aligned word whose bytes changed."""
    changed = np.flatnonzero((before != after).reshape(-1, 8).any(axis=1))
    w = after.view("<u8")
    return {base + 8 * int(i): int(w[i]) for i in changed}


# ------------------------------------------------------------------ oracle (engine vs walker)
def assert_save_matches(mem, baser0, baser1, devices, collections, v41):
    """Run the engine and the walker on identical copies; compare memory, dirty log, errors and
    counts. Returns (engine result or ItsTableError, engine memory)."""
    ref = clone(mem)
    mem.clear_dirty()
    ref.clear_dirty()
    log, err = walker.save(ref, baser0, baser1, devices, collections, v41)
    try:
        got = save_tables_v0(mem, baser0, baser1, devices, collections, has_gicv4_1=v41)
        got_err = None
        report = got
    except ItsTableError as e:
        got = e
        got_err = e.errno
        report = e.report
    assert got_err == (err[0] if err else None), (got, err)
    for a, b in zip(mem.slots, ref.slots, strict=True):
        if not np.array_equal(a.data, b.data):
            i = int(np.argmax(a.data != b.data))
            raise AssertionError(f"byte at GPA {a.gpa + i:#x}: engine {a.data[i]:#x}, walker {b.data[i]:#x}")
    np.testing.assert_array_equal(mem.dirty_pages(), ref.dirty_pages())
    np.testing.assert_array_equal(report.dirty_pages, ref.dirty_pages())
    kinds = [k for k, _, _ in log]
    assert report.ites_written == kinds.count("ite")
    assert report.dtes_written == kinds.count("dte")
    assert report.ctes_written == kinds.count("cte")
    assert report.terminator_written == ("term" in kinds)
    assert report.bytes_written == 8 * len(log)
    return got, mem


def assert_restore_matches(mem, baser0, baser1, n_vcpus, existing=()):
    cols, devs, err = walker.restore(mem, baser0, baser1, n_vcpus, existing)
    try:
        got_c, got_d = restore_tables_v0(mem, baser0, baser1, n_vcpus=n_vcpus, existing_collections=existing)
        got_err = None
    except ItsTableError as e:
        got_c, got_d, got_err = e.collections, e.devices, e.errno
    assert got_err == (err[0] if err else None), (got_err, err)
    assert got_c == cols
    assert plain(got_d) == devs
    for d in got_d:
        assert d.event_id.dtype == np.uint32 and d.pintid.dtype == np.uint32 and d.icid.dtype == np.uint16
        assert not d.hw.any()
    return got_c, got_d, got_err


# ------------------------------------------------------------------------------ BASER, codecs
def test_baser_table_decodes_kvm_layout():
    assert baser_table(baser(0x8_1234_0000, 3)) == (0x8_1234_0000, 3 << 16, False)
    # 52-bit PA: PA[51:48] lives in bits [15:12]
    assert baser_table(baser(0xA_0000_1234_0000, 1, indirect=True)) == (0xA_0000_1234_0000, 1 << 16, True)
    assert baser_table(0x1907000000000600) == (0, 1 << 16, False)  # KVM's reset value of BASER0
    with pytest.raises(TypeError, match="baser"):
        baser_table(1.0)
    with pytest.raises(ValueError, match="baser"):
        baser_table(1 << 64)


def test_codecs_round_trip_and_layout():
    w = abi.encode_dte(5, 0x4010_0000, 7)
    assert int(w) == V | (5 << 49) | ((0x4010_0000 >> 8) << 5) | 7
    d = abi.decode_dte(np.array([w, 0], np.uint64))
    assert d["valid"].tolist() == [True, False]
    assert d["next"][0] == 5 and d["itt_addr"][0] == 0x4010_0000 and d["size"][0] == 7
    ite = abi.encode_ite([0, 17], [8195, 8196], [3, 2])
    assert ite.tolist() == [0x2003_0003, (17 << 48) | 0x2004_0002]
    back = abi.decode_ite(ite.astype("<u8").tobytes())  # bulk decode from raw bytes
    assert back["next"].tolist() == [0, 17] and back["pintid"].tolist() == [8195, 8196]
    cte = abi.encode_cte(COLLECTION_NOT_MAPPED, 0)
    assert int(cte) == 0x8000_FFFF_FFFF_0000
    assert abi.decode_cte(cte)["rdbase"] == COLLECTION_NOT_MAPPED
    l1 = abi.encode_l1e(0x4002_0000)
    assert int(l1) == V | 0x4002_0000
    assert abi.decode_l1e(l1)["l2_addr"] == 0x4002_0000
    with pytest.raises(ValueError, match=r"next\[1\]"):
        abi.encode_dte([1, 1 << 14], 0, 0)
    with pytest.raises(ValueError, match="256-byte"):
        abi.encode_dte(0, 0x4010_0010, 0)
    with pytest.raises(ValueError, match="whole number"):
        abi.decode_ite(b"1234567")
    assert abi.DTE_DTYPE == np.dtype("<u8") and abi.ABI_REVISIONS == (0,)


# ------------------------------------------------------------------ kvm-unit-tests its_setup1
ITT2, ITT7 = ITTS, ITTS + 0x1000


def its_setup1(extra_ites2=()):
    devices = [
        dev(2, ITT2, 8, [(20, 8195, 3), *extra_ites2]),
        dev(7, ITT7, 8, [(255, 8196, 2)]),
    ]
    return devices, [(3, 3), (2, 2)]  # MAPC col3 then col2 (creation order)


def test_its_setup1_exact_bytes():
    mem, ram = new_mem()
    before = ram.copy()
    devices, colls = its_setup1()
    rep = save_tables_v0(mem, baser(DT), baser(CT, kind=4), devices, colls, has_gicv4_1=False)
    expect = {
        ITT2 + 20 * 8: 0x0000_0000_2003_0003,  # next 0, pINTID 8195, ICID 3
        DT + 2 * 8: 0x800A_0000_0802_0007,  # V, next 5, ITT 0x40100000 >> 8 << 5, Size 7
        ITT7 + 255 * 8: 0x0000_0000_2004_0002,
        DT + 7 * 8: 0x8000_0000_0802_0207,  # last DTE: next 0
        CT: 0x8000_0000_0003_0003,
        CT + 8: 0x8000_0000_0002_0002,
        CT + 16: 0,  # terminator
    }
    assert written_words(before, ram, RAM) == expect
    assert (rep.dtes_written, rep.ites_written, rep.ctes_written, rep.bytes_written) == (2, 2, 2, 56)
    assert rep.terminator_written
    assert rep.dirty_pages.tolist() == sorted({g >> 12 for g in expect})
    assert mem.dirty_pages().tolist() == rep.dirty_pages.tolist()


def test_its_migration_round_trip_on_zeroed_tables():
    mem, _ = new_mem(poison=0)
    devices, colls = its_setup1()
    save_tables_v0(mem, baser(DT), baser(CT, kind=4), devices, colls, has_gicv4_1=True)
    got_c, got_d, err = assert_restore_matches(mem, baser(DT), baser(CT, kind=4), 4)
    assert err is None
    assert got_c == [(3, 3), (2, 2)]
    assert plain(got_d) == [(2, ITT2, 8, [(20, 8195, 3)]), (7, ITT7, 8, [(255, 8196, 2)])]


def test_its_migrate_unmapped_collection():
    """Collection 0 exists (MAPTI placeholder) but is not mapped: its CTE carries RDBase
    0xffffffff, and restore accepts it and the ITE that refers to it."""
    mem, ram = new_mem(poison=0)
    before = ram.copy()
    devices, colls = its_setup1(extra_ites2=[(0, 8192, 0)])
    colls = colls + [(0, COLLECTION_NOT_MAPPED)]
    save_tables_v0(mem, baser(DT), baser(CT, kind=4), devices, colls, has_gicv4_1=False)
    w = written_words(before, ram, RAM)
    assert w[CT + 16] == 0x8000_FFFF_FFFF_0000
    assert w[ITT2] == 0x0014_0000_2000_0000  # EventID 0: next 20, pINTID 8192, ICID 0
    assert CT + 24 not in w  # the terminator is all zero, like the zeroed table it lands on
    got_c, got_d, err = assert_restore_matches(mem, baser(DT), baser(CT, kind=4), 4)
    assert err is None
    assert got_c == [(3, 3), (2, 2), (0, COLLECTION_NOT_MAPPED)]
    assert plain(got_d)[0] == (2, ITT2, 8, [(0, 8192, 0), (20, 8195, 3)])


# --------------------------------------------------------------------------- save behaviours
def test_gicv4_0_hw_lpi_fails_with_eacces_and_keeps_earlier_writes():
    mem, ram = new_mem()
    before = ram.copy()
    devices = [
        dev(7, ITT7, 8, [(12, 8300, 1), (3, 8301, 1), (9, 8302, 1)], hw=[False, False, True]),
        dev(2, ITT2, 8, [(5, 8200, 1), (1, 8201, 1)]),
    ]
    with pytest.raises(ItsTableError) as ei:
        save_tables_v0(mem, baser(DT), baser(CT, kind=4), devices, [(1, 0)], has_gicv4_1=False)
    e = ei.value
    assert e.errno == errno.EACCES and "EventID 9" in e.where and e.gpa == ITT7 + 9 * 8
    w = written_words(before, ram, RAM)
    assert set(w) == {ITT2 + 8, ITT2 + 40, DT + 16, ITT7 + 24}  # device 2 whole, device 7's EventID 3
    assert w[ITT7 + 24] == (6 << 48) | (8301 << 16) | 1  # next = 9 - 3 although 9 never got written
    assert (e.report.ites_written, e.report.dtes_written, e.report.ctes_written) == (3, 1, 0)
    assert e.report.dirty_pages.tolist() == sorted({g >> 12 for g in w})
    # with GICv4.1 the same state saves fine
    mem2, _ = new_mem()
    rep = save_tables_v0(mem2, baser(DT), baser(CT, kind=4), devices, [(1, 0)], has_gicv4_1=True)
    assert (rep.ites_written, rep.dtes_written, rep.ctes_written) == (5, 2, 1)
    assert pickle.loads(pickle.dumps(e)).report.ites_written == 3


@pytest.mark.parametrize(
    "device_id, table, why",
    [
        (0x1_0000, dict(pages=16), "65536 > 0xffff"),
        (9000, dict(pages=1), "beyond the 8192-entry"),
        (9000, dict(pages=1, indirect=True), "not valid"),  # L1 entry 1 is zero
        (3, dict(pages=1, unmapped_dte=True), "no memslot"),
        (9000, dict(pages=1, indirect=True, unmapped_l1=True), "cannot be read"),  # L1 read faults
    ],
)
def test_save_einval_when_check_id_fails(device_id, table, why):
    mem = GuestMemory()
    ram = mem.add_slot(RAM, 0x2_0000)  # device table (and L2 page) region
    mem.add_slot(ITTS, 0x1_0000)[:] = 0xA5
    ram[:] = 0xA5
    l1_entry0 = V | (RAM + 0x1_0000)
    if table.get("indirect"):
        ram[:16] = 0
        ram[:8] = np.frombuffer(l1_entry0.to_bytes(8, "little"), np.uint8)
    b0 = baser(DT, table["pages"], indirect=table.get("indirect", False))
    if table.get("unmapped_l1"):  # level-1 entry 0 mapped, entry 1 not; the L2 page stays
        mem.remove_slot(RAM)
        mem.add_slot(RAM, data=ram[:8].copy())
        mem.add_slot(RAM + 0x1_0000, data=ram[0x1_0000:].copy())
    if table.get("unmapped_dte"):
        mem.remove_slot(RAM)
        mem.add_slot(RAM, 16)  # DTEs 0 and 1 only: the DTE of DeviceID 3 lies in no memslot
        b0 = baser(DT, 1)
    devices = [dev(1, ITTS, 4, [(2, 9000, 0)]), dev(device_id, ITTS + 0x100, 4, [(1, 9001, 0)])]
    got, _ = assert_save_matches(mem, b0, 0, devices, [], False)
    assert isinstance(got, ItsTableError) and got.errno == errno.EINVAL
    assert why in str(got) and f"DeviceID {device_id}" in got.where
    assert got.report.ites_written == 1 and got.report.dtes_written == 1  # device 1 kept


def test_next_fields_are_capped():
    mem, ram = new_mem(size=8 << 20, poison=0)
    devices = [
        dev(0, ITTS, 17, [(0, 8192, 0), (70_000, 8193, 0)]),  # EventID delta 70000 > 2^16 - 1
        dev(20_000, ITTS + (1 << 20), 1, [(1, 8194, 0)]),  # DeviceID delta 20000 > 2^14 - 1
    ]
    b0 = baser(DT, 3)  # 3 pages: 24576 DTEs
    got, _ = assert_save_matches(mem, b0, baser(CT, kind=4), devices, [(0, 0)], False)
    assert word(mem, ITTS) >> 48 == 0xFFFF
    assert (word(mem, DT) >> 49) & 0x3FFF == 0x3FFF
    # restore walks the capped step, then steps over invalid entries to the real next entry
    got_c, got_d, err = assert_restore_matches(mem, b0, baser(CT, kind=4), 1)
    assert err is None
    assert plain(got_d) == [
        (0, ITTS, 17, [(0, 8192, 0), (70_000, 8193, 0)]),
        (20_000, ITTS + (1 << 20), 1, [(1, 8194, 0)]),
    ]


def test_invalid_baser_skips_table_and_full_collection_table_has_no_terminator():
    mem, ram = new_mem()
    before = ram.copy()
    devices, _ = its_setup1()
    colls = [(i, i % 4) for i in range(8192)]  # fills a 64 KiB collection table exactly
    rep = save_tables_v0(mem, baser(DT, valid=False), baser(CT, kind=4), devices, colls, has_gicv4_1=False)
    assert (rep.dtes_written, rep.ites_written, rep.ctes_written) == (0, 0, 8192)
    assert not rep.terminator_written
    w = written_words(before, ram, RAM)
    assert min(w) == CT and max(w) == CT + 8191 * 8 and len(w) == 8192
    rep = save_tables_v0(mem, baser(DT), baser(CT, valid=False), devices, colls, has_gicv4_1=False)
    assert (rep.dtes_written, rep.ctes_written) == (2, 0)


def test_collection_table_overflow_is_written_like_the_kernel():
    """More collections than the table holds (BASER1.Size lowered after MAPC): KVM keeps
    writing past the table and still adds a terminator (filled != max_size)."""
    mem, ram = new_mem(poison=0xA5)
    colls = [(i, 0) for i in range(8193)]
    got, _ = assert_save_matches(mem, 0, baser(CT, kind=4), [], colls, False)
    assert got.ctes_written == 8193 and got.terminator_written
    assert word(mem, CT + 8193 * 8) == 0


def test_save_fault_keeps_earlier_writes():
    mem = GuestMemory()
    mem.add_slot(RAM, 0x1_0000)[:] = 0xA5  # device table
    mem.add_slot(ITTS, 0x800)[:] = 0xA5  # device 2's ITT only holds EventIDs 0..255
    devices = [dev(2, ITTS, 8, [(1, 8200, 0)]), dev(3, ITTS + 0x800, 8, [(0, 8201, 0)])]
    got, _ = assert_save_matches(mem, baser(DT), baser(CT, kind=4), devices, [(0, 0)], False)
    assert got.errno == errno.EFAULT and got.gpa == ITTS + 0x800
    assert (got.report.ites_written, got.report.dtes_written) == (1, 1)
    # a read-only collection table faults on the first CTE
    mem.add_slot(CT, 0x1_0000, readonly=True)
    got, _ = assert_save_matches(mem, baser(DT), baser(CT, kind=4), devices[:1], [(0, 0)], False)
    assert got.errno == errno.EFAULT and "CTE 0" in got.where


def test_save_rereads_l1_entries_written_by_this_save():
    """Device 0's ITT overlaps the level-1 table: its ITE at EventID 1 (next 0x8000) becomes
    a valid L1 entry pointing at 0x40020000, and KVM's check of DeviceID 9000 (L1 index 1)
    reads it. Checking every device before writing would fail with EINVAL instead."""
    mem, ram = new_mem(poison=0)
    ram[:8] = np.frombuffer((V | (RAM + 0x1_0000)).to_bytes(8, "little"), np.uint8)
    devices = [
        dev(0, DT, 16, [(1, 0x4002, 0), (1 + 0x8000, 8200, 0)]),
        dev(9000, ITTS, 2, [(0, 8201, 0)]),
    ]
    b0 = baser(DT, indirect=True)
    got, _ = assert_save_matches(mem, b0, 0, devices, [], False)
    assert got.dtes_written == 2
    assert word(mem, DT + 8) == (0x8000 << 48) | (0x4002 << 16)
    assert word(mem, RAM + 0x2_0000 + (9000 - 8192) * 8) >> 63 == 1


def test_bad_arguments_write_nothing():
    mem, ram = new_mem()
    before = ram.copy()
    good = dev(2, ITT2, 8, [(1, 8200, 0)])
    cases = [
        (TypeError, "mem", dict(mem=object())),
        (ValueError, r"devices\[1\].itt_addr", dict(devices=[good, dev(3, ITT7 + 8, 8)])),
        (ValueError, r"devices\[0\].event_id\[0\]", dict(devices=[dev(3, ITT7, 2, [(4, 8200, 0)])])),
        (ValueError, r"pintid\[1\]", dict(devices=[dev(3, ITT7, 2, [(0, 8200, 0), (1, 8191, 0)])])),
        (ValueError, "EventID 1 twice", dict(devices=[dev(3, ITT7, 2, [(1, 8200, 0), (1, 8201, 0)])])),
        (ValueError, r"devices\[0\].eventid_bits", dict(devices=[dev(3, ITT7, 0)])),
        (ValueError, r"collections\[1\] repeats ICID 3", dict(collections=[(3, 0), (3, 1)])),
        (ValueError, r"collections\[0\] rdbase", dict(collections=[(3, 1 << 32)])),
        (TypeError, r"devices\[0\] must be an ItsDevice", dict(devices=[(2, ITT2, 8)])),
        (TypeError, "baser0", dict(baser0=None)),
    ]
    for exc, match, kw in cases:
        args = dict(mem=mem, baser0=baser(DT), baser1=baser(CT, kind=4), devices=[good], collections=[(0, 0)])
        args.update(kw)
        with pytest.raises(exc, match=match):
            save_tables_v0(
                args["mem"], args["baser0"], args["baser1"], args["devices"], args["collections"], has_gicv4_1=False
            )
    assert np.array_equal(ram, before) and mem.dirty_pages().size == 0


def test_save_duplicate_device_ids_like_the_kernel():
    """KVM's device list can hold one DeviceID twice (a restore onto an ITS that was not reset):
    list_sort is stable, so both are saved in list order; the first one's DTE says next 0."""
    mem, _ = new_mem()
    devs = [dev(2, ITT2, 8, [(1, 8200, 0)]), dev(5, ITT7, 8), dev(2, ITT7 + 0x800, 4, [(3, 8201, 0)])]
    assert_save_matches(mem, baser(DT), baser(CT, kind=4), devs, [(0, 0)], False)
    assert word(mem, DT + 2 * 8) >> 49 & 0x3FFF == 3  # the later device 2 (next: 5) wrote last


# ------------------------------------------------------------------------- restore behaviours
def put(ram: np.ndarray, gpa: int, value: int) -> None:
    ram[gpa - RAM : gpa - RAM + 8] = np.frombuffer(int(value).to_bytes(8, "little"), np.uint8)


def test_stale_entries_are_resurrected_on_restore():
    """A restore reads whatever valid-looking entries the tables hold: device 2 and ITE (7, 3)
    were saved once, then unmapped (kernels before the November 2024 fixes did not zero the
    entry on MAPD V=0 / DISCARD). A later save writes only device 7 / EventID 20, so the
    stale entries in front of them are restored again."""
    mem, ram = new_mem(poison=0)
    b0, b1 = baser(DT), baser(CT, kind=4)
    first = [dev(2, ITT2, 8, [(20, 8195, 3)]), dev(7, ITT7, 8, [(3, 8300, 2), (20, 8301, 2)])]
    save_tables_v0(mem, b0, b1, first, [(3, 3), (2, 2)], has_gicv4_1=False)
    second = [dev(7, ITT7, 8, [(20, 8301, 2)])]
    save_tables_v0(mem, b0, b1, second, [(3, 3), (2, 2)], has_gicv4_1=False)
    _, got_d, err = assert_restore_matches(mem, b0, b1, 4)
    assert err is None
    assert plain(got_d) == [(2, ITT2, 8, [(20, 8195, 3)]), (7, ITT7, 8, [(3, 8300, 2), (20, 8301, 2)])]
    # with the Nov 2024 zeroing (MAPD V=0, DISCARD write 0) nothing comes back
    put(ram, DT + 16, 0)
    put(ram, ITT7 + 24, 0)
    _, got_d, _ = assert_restore_matches(mem, b0, b1, 4)
    assert plain(got_d) == [(7, ITT7, 8, [(20, 8301, 2)])]


@pytest.mark.parametrize(
    "mutate, err, where",
    [
        (lambda r: put(r, ITT2 + 20 * 8, (8191 << 16) | 3), errno.EINVAL, "pINTID below 8192"),
        (lambda r: put(r, ITT2 + 20 * 8, (236 << 48) | (8195 << 16) | 3), errno.EINVAL, r"EventID \+ next"),
        (lambda r: put(r, ITT2 + 20 * 8, (8195 << 16) | 9), errno.EINVAL, "collection does not exist"),
        (lambda r: put(r, CT + 8, V | (4 << 16) | 2), errno.EINVAL, "RDBase is not a vCPU id"),
        (lambda r: put(r, CT + 8, V | (2 << 16) | 3), errno.EEXIST, "already exists"),
        (lambda r: put(r, CT + 8, V | (2 << 16) | 9000), errno.EINVAL, "ICID fails"),
        (lambda r: put(r, DT + 2 * 8, V | (5 << 49) | ((0x7000_0000 >> 8) << 5) | 7), errno.EFAULT, "ITT of"),
    ],
)
def test_restore_errors(mutate, err, where):
    mem, ram = new_mem(poison=0)
    b0, b1 = baser(DT), baser(CT, kind=4)
    devices, colls = its_setup1()
    save_tables_v0(mem, b0, b1, devices, colls, has_gicv4_1=False)
    mutate(ram)
    got_c, got_d, got_err = assert_restore_matches(mem, b0, b1, 4)
    assert got_err == err
    with pytest.raises(ItsTableError, match=where):
        restore_tables_v0(mem, b0, b1, n_vcpus=4)


def test_restore_deviceid_beyond_16_bits_is_einval():
    mem, ram = new_mem(size=2 << 20, poison=0)
    b0 = baser(DT, 9)  # 9 pages: DeviceIDs up to 73727 are addressable in the flat table
    put(ram, DT + 0x1_0000 * 8, V | ((ITTS >> 8) << 5))
    _, _, err = assert_restore_matches(mem, b0, 0, 1)
    assert err == errno.EINVAL


def test_restore_existing_collections_and_twice_without_reset():
    mem, _ = new_mem(poison=0)
    b0, b1 = baser(DT), baser(CT, kind=4)
    devices, colls = its_setup1()
    save_tables_v0(mem, b0, b1, devices, colls, has_gicv4_1=False)
    c, d = restore_tables_v0(mem, b0, b1, n_vcpus=4)
    with pytest.raises(ItsTableError) as ei:  # RESTORE_TABLES twice without a reset: EEXIST at the first collection
        restore_tables_v0(mem, b0, b1, n_vcpus=4, existing_collections=[icid for icid, _ in c])
    assert ei.value.errno == errno.EEXIST and ei.value.devices == []
    # without a collection table the ITEs may use collections the ITS already has
    _, d2 = restore_tables_v0(mem, b0, 0, n_vcpus=4, existing_collections=[2, 3])
    assert plain(d2) == plain(d)
    assert_restore_matches(mem, b0, 0, 4, existing=(2, 3))
    _, _, err = assert_restore_matches(mem, b0, 0, 4, existing=(3,))
    assert err == errno.EINVAL


def test_restore_partial_result_lists_what_ran_vgic_add_lpi():
    mem, ram = new_mem(poison=0)
    b0, b1 = baser(DT), baser(CT, kind=4)
    devices = [dev(2, ITT2, 8, [(1, 8200, 0), (2, 8201, 0), (3, 8202, 0)]), dev(7, ITT7, 8, [(0, 8300, 0)])]
    save_tables_v0(mem, b0, b1, devices, [(0, 1)], has_gicv4_1=False)
    put(ram, ITT2 + 24, (8202 << 16) | 5)  # EventID 3 names an unknown collection
    with pytest.raises(ItsTableError) as ei:
        restore_tables_v0(mem, b0, b1, n_vcpus=2)
    e = ei.value
    assert e.collections == [(0, 1)]
    assert plain(e.devices) == [(2, ITT2, 8, [(1, 8200, 0), (2, 8201, 0)])]
    assert e.gpa == ITT2 + 24


def test_two_level_device_table():
    mem, ram = new_mem(size=4 << 20, poison=0)
    l2 = [RAM + 0x1_0000, None, RAM + 0x2_0000]  # L1 entries 0 and 2 valid, 1 invalid
    for i, a in enumerate(l2):
        if a is not None:
            put(ram, DT + 8 * i, V | a)
    b0, b1 = baser(DT, indirect=True), baser(CT, kind=4)
    devices = [
        dev(5, ITTS, 4, [(1, 8192, 0)]),
        dev(16_390, ITTS + 0x100, 4, [(2, 8193, 0)]),
        dev(16_400, ITTS + 0x200, 4, [(3, 8194, 0)]),
    ]
    before = ram.copy()
    got, _ = assert_save_matches(mem, b0, b1, devices, [(0, 0)], False)
    w = written_words(before, ram, RAM)
    assert w[RAM + 0x1_0000 + 5 * 8] == V | (0x3FFF << 49) | ((ITTS >> 8) << 5) | 3  # next 16385, capped
    assert w[RAM + 0x2_0000 + 6 * 8] >> 49 & 0x3FFF == 10
    assert not [a for a in w if DT <= a < DT + 0x1_0000]  # the level-1 table is only read
    got_c, got_d, err = assert_restore_matches(mem, b0, b1, 1)
    assert err is None
    assert [d.device_id for d in got_d] == [5, 16_390, 16_400]
    # device 8200 needs L1 entry 1, which is invalid
    got, _ = assert_save_matches(mem, b0, b1, devices + [dev(8200, ITTS + 0x300, 1)], [(0, 0)], False)
    assert got.errno == errno.EINVAL and got.report.dtes_written == 1


# ------------------------------------------------------------------------- differential tests
def _layout(rnd):
    """A random ITS state (mostly consistent, sometimes not) for a differential case."""
    indirect = rnd.random() < 0.35
    pages = 1 if indirect else rnd.choice([1, 1, 2, 3])
    id_pool = list(range(0, 12)) + [8190, 8191, 8192, 8193, 16_383, 16_384, 20_000, 65_535]
    if rnd.random() < 0.05:
        id_pool.append(65_536)  # fails check_id
    ids = rnd.sample(id_pool, rnd.randrange(0, 5))
    icid_pool = [0, 1, 2, 3, 7, 100, 8191] + ([9000] if rnd.random() < 0.1 else [])
    icids = rnd.sample(icid_pool, rnd.randrange(0, 4) if rnd.random() < 0.2 else rnd.randrange(1, 4))
    rd_pool = [0, 1, 2, COLLECTION_NOT_MAPPED] + ([5] if rnd.random() < 0.1 else [])
    colls = [(c, rnd.choice(rd_pool)) for c in icids]
    devices = []
    for k, i in enumerate(ids):
        bits = rnd.choice([1, 2, 4, 8])
        itt = ITTS + k * 0x1000
        if rnd.random() < 0.1 and devices:
            itt = devices[-1].itt_addr  # two devices sharing an ITT: later writes win
        elif rnd.random() < 0.05:
            itt = DT + 0x100 * rnd.randrange(0, 4)  # an ITT inside the device / level-1 table
        n = rnd.randrange(0, min(6, 1 << bits) + 1)
        eids = rnd.sample(range(1 << bits), n)
        pool = icids if icids and rnd.random() < 0.95 else [0, 1, 2]
        ites = [(e, rnd.choice([8192 + e, 8192 + 40 * e + k, 0x1_0000 + e]), rnd.choice(pool)) for e in eids]
        hw = [rnd.random() < 0.08 for _ in ites]
        devices.append(dev(i, itt, bits, ites, hw))
    return indirect, pages, devices, colls


def _memory_l1(ram, rnd=None):
    """Level-1 entries 0..7 -> L2 pages at RAM + 0x40000 + i * 64 KiB (a few invalid)."""
    for i in range(8):
        ok = rnd is None or rnd.random() < 0.85
        put(ram, DT + 8 * i, (V | (RAM + 0x4_0000 + 0x1_0000 * i)) if ok else 0)
    put(ram, DT + 64, 0)


def _memory(rnd, indirect):
    mem = GuestMemory()
    poison = rnd.choice([0, 0, 0, 0xA5, None])
    ram = mem.add_slot(RAM, 0x20_0000)
    if poison is None:
        ram[:] = np.frombuffer(rnd.randbytes(ram.size), np.uint8)
    else:
        ram[:] = poison
    if indirect:
        _memory_l1(ram, rnd)
    roll = rnd.random()
    if roll < 0.15:  # a hole somewhere in the tables or ITTs
        lo = rnd.choice([DT + 0x8000, CT + 16, ITTS + 0x800, RAM + 0x4_0000 + 0x80, ITTS + 0x3000]) - RAM
        hi = lo + rnd.choice([8, 0x100, 0x1000, 0x8003])
        keep_hi = ram[hi:].copy()
        mem.remove_slot(RAM)
        mem.add_slot(RAM, lo, data=ram[:lo].copy())
        mem.add_slot(RAM + hi, data=keep_hi)
    elif roll < 0.25:  # the ITT area read-only
        keep = ram.copy()
        mem.remove_slot(RAM)
        cut = ITTS - RAM + rnd.choice([0, 0x1000, 0x2004])
        mem.add_slot(RAM, cut, data=keep[:cut].copy())
        mem.add_slot(RAM + cut, readonly=True, data=keep[cut:].copy())
    return mem


def _check_random_case(rnd):
    clean = rnd.random() < 0.3  # zeroed RAM, valid tables, every vCPU present: restores succeed
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
    assert_save_matches(mem, b0, b1, devices, colls, v41)
    # restore from whatever the save left (stale entries, poison, holes and all)
    assert_restore_matches(mem, b0, b1, 6 if clean else rnd.choice([1, 3, 6, 6, 6]))
    if rnd.random() < 0.3:  # corrupt a few words and restore again
        slot = mem.slots[0]
        for _ in range(3):
            off = rnd.randrange(0, min(slot.size, 0x12_0000) // 8) * 8
            if rnd.random() < 0.5:
                off = rnd.choice([DT, CT, ITTS, ITTS + 0x1000]) - RAM + 8 * rnd.randrange(0, 40)
            if off + 8 <= slot.size:
                slot.data[off : off + 8] = np.frombuffer(rnd.randbytes(8), np.uint8)
        assert_restore_matches(mem, b0, b1, rnd.choice([1, 3, 6]))


@settings(max_examples=40)
@given(seed=st.integers(0, 2**32 - 1))
def test_differential_hypothesis(seed):
    import random

    _check_random_case(random.Random(seed))


def test_differential_seeded():
    import random

    rnd = random.Random(20261126)
    for _ in range(40):
        _check_random_case(rnd)


@settings(max_examples=30)
@given(
    data=st.data(),
    ids=st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=6, unique=True),
    indirect=st.booleans(),
)
def test_round_trip_hypothesis(data, ids, indirect):
    """save then restore gives back the devices (DeviceID order, ITEs in EventID order) and the
    collections (creation order) on zeroed tables."""
    mem = GuestMemory()
    mem.add_slot(RAM, 0x10_0000)  # tables, L2 pages
    mem.add_slot(ITTS, 0x40_0000)  # ITTs
    l2_base = RAM + 0x4_0000
    if indirect:
        ram = mem.slots[0].data
        for i in range(8):
            put(ram, DT + 8 * i, V | (l2_base + 0x1_0000 * i))
    icids = data.draw(st.lists(st.integers(0, 8191), min_size=1, max_size=5, unique=True))
    colls = [(c, data.draw(st.sampled_from([0, 3, COLLECTION_NOT_MAPPED]))) for c in icids]
    devices = []
    for k, i in enumerate(ids):
        bits = data.draw(st.integers(1, 16))
        eids = data.draw(st.lists(st.integers(0, (1 << bits) - 1), max_size=8, unique=True))
        ites = [(e, data.draw(st.integers(8192, 2**32 - 1)), data.draw(st.sampled_from(icids))) for e in eids]
        devices.append(dev(i, ITTS + k * 0x8_0000, bits, ites))
    b0 = baser(DT, 8 if not indirect else 1, indirect=indirect)
    b1 = baser(RAM + 0xD_0000, kind=4)
    save_tables_v0(mem, b0, b1, devices, colls, has_gicv4_1=False)
    got_c, got_d = restore_tables_v0(mem, b0, b1, n_vcpus=4)
    assert got_c == colls
    want = sorted(
        (
            d.device_id,
            d.itt_addr,
            d.eventid_bits,
            sorted(zip(d.event_id.tolist(), d.pintid.tolist(), d.icid.tolist(), strict=True)),
        )
        for d in devices
    )
    assert plain(got_d) == want


def _check_big_case(rnd):
    """Many devices (the save's bulk-write path) and big sparse ITTs (the restore's chunked
    numpy walk), poisoned or zeroed, sometimes corrupted, against the walker."""
    mem = GuestMemory()
    ram = mem.add_slot(RAM, 0x40_0000)
    poison = rnd.choice([0, 0xA5, None])
    ram[:] = np.frombuffer(rnd.randbytes(ram.size), np.uint8) if poison is None else poison
    ids = rnd.sample(range(0, 3000), rnd.randrange(30, 60))
    colls = [(c, c % 3) for c in range(4)]
    devices = []
    for k, i in enumerate(ids):
        if k < 2:  # two big sparse ITTs (more than 1024 entries)
            bits = rnd.choice([11, 12, 13])
            itt = RAM + 0x20_0000 + k * 0x1_0000
            eids = sorted(rnd.sample(range(1 << bits), rnd.randrange(1, 30)))
        else:
            bits = rnd.choice([1, 2, 3])
            itt = ITTS + k * 0x100
            eids = rnd.sample(range(1 << bits), rnd.randrange(0, 3))
        ites = [(e, 8192 + 97 * k + e, rnd.randrange(0, 4)) for e in eids]
        devices.append(dev(i, itt, bits, ites, [rnd.random() < 0.01 for _ in ites]))
    b0, b1 = baser(DT), baser(CT, kind=4)
    assert_save_matches(mem, b0, b1, devices, colls, rnd.random() < 0.5)
    assert_restore_matches(mem, b0, b1, 3)
    for _ in range(rnd.randrange(0, 4)):  # stale or corrupt words inside the big ITTs
        gpa = RAM + 0x20_0000 + rnd.randrange(0, 2) * 0x1_0000 + 8 * rnd.randrange(0, 8192)
        put(
            ram,
            gpa,
            rnd.choice(
                [0, (8192 + rnd.randrange(100)) << 16 | rnd.randrange(4), int.from_bytes(rnd.randbytes(8), "little")]
            ),
        )
    assert_restore_matches(mem, b0, b1, 3)


def test_differential_many_devices_and_big_itts():
    import random

    rnd = random.Random(7)
    for _ in range(6):
        _check_big_case(rnd)


def test_tables_above_256_tib_use_pa_bits_51_48():
    hi = 0xA_0000_0000_0000  # PA[51:48] = 0xA: BASER bits [15:12]
    mem = GuestMemory()
    ram = mem.add_slot(hi, 0x20_0000)
    ram[:0x10_0000] = 0xA5  # poisoned tables, zeroed ITTs
    b0, b1 = baser(hi, indirect=False), baser(hi + 0x1_0000, kind=4)
    assert (b0 >> 12) & 0xF == 0xA and baser_table(b0)[0] == hi
    devices = [dev(3, hi + 0x10_0000, 4, [(0, 8192, 1)]), dev(4, hi + 0x10_0100, 4, [(1, 8193, 1)])]
    got, _ = assert_save_matches(mem, b0, b1, devices, [(1, 0)], False)
    assert got.dtes_written == 2
    assert word(mem, hi + 3 * 8) == V | (1 << 49) | (((hi + 0x10_0000) >> 8) << 5) | 3
    ram[:24] = 0  # DTEs 0..2 are poison: make them invalid
    _, got_d, err = assert_restore_matches(mem, b0, b1, 1)
    assert err is None and [d.itt_addr for d in got_d] == [hi + 0x10_0000, hi + 0x10_0100]


def test_collection_baser_indirect_bit_is_ignored():
    mem, ram = new_mem(poison=0)
    devices, colls = its_setup1()
    flat = save_tables_v0(mem, baser(DT), baser(CT, kind=4), devices, colls, has_gicv4_1=False)
    snap = ram.copy()
    ind = save_tables_v0(mem, baser(DT), baser(CT, kind=4, indirect=True), devices, colls, has_gicv4_1=False)
    assert np.array_equal(ram, snap) and ind.ctes_written == flat.ctes_written
    assert restore_tables_v0(mem, baser(DT), baser(CT, kind=4, indirect=True), n_vcpus=4)[0] == colls


def test_restore_read_faults():
    mem = GuestMemory()
    ram = mem.add_slot(RAM, 0x3_0000 + 16)  # collection table: only CTEs 0 and 1 are mapped
    b1 = baser(CT, kind=4)
    put(ram, CT, V | (0 << 16) | 1)  # ICIDs must index a mapped CTE slot (check_id)
    put(ram, CT + 8, V | (1 << 16) | 0)
    _, _, err = assert_restore_matches(mem, 0, b1, 2)
    assert err == errno.EFAULT
    with pytest.raises(ItsTableError, match="CTE 2") as ei:
        restore_tables_v0(mem, 0, b1, n_vcpus=2)
    assert ei.value.collections == [(1, 0), (0, 1)] and ei.value.gpa == CT + 16
    put(ram, CT + 8, V | (1 << 16) | 2)  # ICID 2's slot is unmapped: EINVAL before the fault
    _, _, err = assert_restore_matches(mem, 0, b1, 2)
    assert err == errno.EINVAL
    # a two-level table whose level-1 table ends in the middle of an entry
    mem2 = GuestMemory()
    ram2 = mem2.add_slot(RAM, 20)
    put(ram2, RAM, 0)
    put(ram2, RAM + 8, 0)
    _, _, err = assert_restore_matches(mem2, baser(DT, indirect=True), 0, 1)
    assert err == errno.EFAULT


def test_two_level_scan_deviceid_wraps_at_32_bits():
    """L1 index 2^19 covers DeviceIDs 2^32 .. : the kernel computes them in 32 bits, so the
    DTE found there is checked (through L1 entry 0) and restored as DeviceID 0."""
    mem = GuestMemory()
    l1 = mem.add_slot(RAM, 128 << 16)  # an 8 MiB level-1 table: 2^20 entries
    pages = mem.add_slot(RAM + (128 << 16), 0x3_0000)
    page0, page_w = RAM + (128 << 16), RAM + (128 << 16) + 0x1_0000
    l1[:8] = np.frombuffer((V | page0).to_bytes(8, "little"), np.uint8)
    l1[(1 << 19) * 8 : (1 << 19) * 8 + 8] = np.frombuffer((V | page_w).to_bytes(8, "little"), np.uint8)
    itt = RAM + (128 << 16) + 0x2_0000
    pages[0x1_0000:0x1_0008] = np.frombuffer((V | ((itt >> 8) << 5) | 1).to_bytes(8, "little"), np.uint8)
    pages[0x2_0000:0x2_0008] = np.frombuffer(((8192 << 16) | 0).to_bytes(8, "little"), np.uint8)
    cols, devs = restore_tables_v0(mem, baser(DT, 128, indirect=True), 0, n_vcpus=1, existing_collections=[0])
    assert plain(devs) == [(0, itt, 2, [(0, 8192, 0)])]
    l1[:8] = 0  # now the check of DeviceID 0 fails
    with pytest.raises(ItsTableError, match="DeviceID 0") as ei:
        restore_tables_v0(mem, baser(DT, 128, indirect=True), 0, n_vcpus=1, existing_collections=[0])
    assert ei.value.errno == errno.EINVAL


def test_restore_bad_arguments():
    mem, _ = new_mem()
    with pytest.raises(TypeError, match="n_vcpus"):
        restore_tables_v0(mem, 0, 0, n_vcpus=1.5)
    with pytest.raises(ValueError, match=r"existing_collections\[1\]"):
        restore_tables_v0(mem, 0, 0, n_vcpus=1, existing_collections=[1, 1 << 16])
    with pytest.raises(TypeError, match="mem"):
        restore_tables_v0(bytearray(16), 0, 0, n_vcpus=1)
    assert restore_tables_v0(mem, 0, 0, n_vcpus=1) == ([], [])  # both tables invalid: nothing


# ------------------------------------------------------ restore of arbitrary table contents
ITT_SLOTS = [ITTS + 0x80 * k for k in range(4)]  # four 16-entry ITTs back to back


@st.composite
def dte_words(draw):
    if draw(st.integers(0, 3)) == 0:
        return draw(st.sampled_from([0, (1 << 49) | 0x1F, int.from_bytes(b"\xa5" * 8, "little")]))
    valid = draw(st.booleans()) or draw(st.booleans())
    nxt = draw(st.sampled_from([0, 0, 1, 1, 2, 3, 5, 40, 0x3FFF]))
    itt = draw(st.sampled_from(ITT_SLOTS + [ITTS + 0x40, 0x7000_0000]))
    size = draw(st.sampled_from([0, 1, 3, 3, 4, 5, 26, 27, 28, 31]))
    return (V if valid else 0) | (nxt << 49) | ((itt >> 8) << 5) | size


@st.composite
def ite_words(draw):
    pint = draw(st.sampled_from([0, 0, 0, 8192, 8200, 8300, 0xFFFF_FFFF] * 3 + [5000]))
    nxt = draw(st.sampled_from([0, 1, 1, 1, 2, 2, 3, 3, 5] * 3 + [20, 0xFFFF]))
    icid = draw(st.sampled_from([0, 1, 2] * 6 + [9]))
    return (nxt << 48) | (pint << 16) | icid


@st.composite
def cte_words(draw):
    valid = draw(st.integers(0, 5)) > 0
    rd = draw(st.sampled_from([0, 1, 2, COLLECTION_NOT_MAPPED] * 4 + [3, 1 << 32]))
    icid = draw(st.sampled_from([0, 1, 2, 9, 8191] * 4 + [9000]))
    return (V if valid else 0) | (rd << 16) | icid


@settings(max_examples=60)
@given(
    dtes=st.lists(dte_words(), min_size=1, max_size=24),
    ites=st.lists(ite_words(), min_size=64, max_size=64),
    ctes=st.lists(cte_words(), min_size=0, max_size=5),
    n_dte_mapped=st.integers(1, 64),
    n_vcpus=st.integers(1, 4),
)
def test_restore_arbitrary_tables_hypothesis(dtes, ites, ctes, n_dte_mapped, n_vcpus):
    """Random DTE/ITE/CTE words (stale, invalid, inconsistent, half-mapped tables): the scan
    rules, error checks and order must equal the walker's."""
    mem = GuestMemory()
    dt = mem.add_slot(DT, 8 * n_dte_mapped)  # the device table ends inside the flat table
    ct = mem.add_slot(CT, 0x1_0000)
    itts = mem.add_slot(ITTS, 0x200 + 8)  # four ITTs, then one stray entry, then nothing
    for i, w in enumerate(dtes[:n_dte_mapped]):
        dt[8 * i : 8 * i + 8] = np.frombuffer(w.to_bytes(8, "little"), np.uint8)
    for i, w in enumerate(ites):
        itts[8 * i : 8 * i + 8] = np.frombuffer(w.to_bytes(8, "little"), np.uint8)
    for i, w in enumerate(ctes):
        w &= (1 << 64) - 1
        ct[8 * i : 8 * i + 8] = np.frombuffer(w.to_bytes(8, "little"), np.uint8)
    assert_restore_matches(mem, baser(DT), baser(CT, kind=4), n_vcpus)
    assert_restore_matches(mem, baser(DT), baser(CT, kind=4), n_vcpus, existing=(9,))
    # no collection table, every ICID but 9 known: only the device and ITT rules matter
    assert_restore_matches(mem, baser(DT), baser(CT, valid=False), n_vcpus, existing=(0, 1, 2))


@settings(max_examples=15)
@given(
    l1=st.lists(
        st.sampled_from([0, V | (RAM + 0x1_0000), V | (RAM + 0x2_0000), V | 0x7000_0000]), min_size=2, max_size=6
    ),
    dtes=st.lists(st.tuples(st.integers(0, 2), st.integers(0, 8191), dte_words()), max_size=8),
    ites=st.lists(ite_words(), min_size=64, max_size=64),
)
def test_restore_arbitrary_two_level_tables_hypothesis(l1, dtes, ites):
    mem = GuestMemory()
    ram = mem.add_slot(RAM, 0x3_0000)
    ram[: 8 * len(l1)] = np.frombuffer(b"".join(w.to_bytes(8, "little") for w in l1), np.uint8)
    mem.add_slot(RAM + 0x3_0000, 0x1_0000)  # the rest of the level-1 table: zero
    for page, idx, w in dtes:  # page 0 is the level-1 table itself
        off = page * 0x1_0000 + 8 * idx
        if page == 0 and idx < len(l1):
            continue
        ram[off : off + 8] = np.frombuffer(w.to_bytes(8, "little"), np.uint8)
    itts = mem.add_slot(ITTS, 0x200)
    itts[:] = np.frombuffer(b"".join(w.to_bytes(8, "little") for w in ites), np.uint8)
    assert_restore_matches(mem, baser(DT, 4, indirect=True), 0, 2, existing=(0, 1, 2, 9))


@pytest.mark.parametrize("size, want", [(3, [0, 1]), (26, [0, 1]), (28, [0]), (31, [0])])
def test_restore_huge_itt_size_truncates_like_the_kernel(size, want):
    """A restored DTE may claim up to 32 EventID bits. The kernel passes the ITT size to
    scan_its_table as a C int: 2^29 * 8 bytes and more truncate to 0, so only EventID 0 is
    looked at; 2^27 * 8 fits and the scan goes on."""
    mem, ram = new_mem(poison=0)
    put(ram, DT, V | ((ITTS >> 8) << 5) | size)
    put(ram, ITTS, (1 << 48) | (8192 << 16) | 0)
    put(ram, ITTS + 8, (8193 << 16) | 0)
    _, got_d, err = assert_restore_matches(mem, baser(DT), 0, 1, existing=(0,))
    assert err is None
    assert got_d[0].eventid_bits == size + 1 and got_d[0].event_id.tolist() == want


def test_docstring_examples():
    import doctest

    assert doctest.testmod(abi, raise_on_error=False).failed == 0
