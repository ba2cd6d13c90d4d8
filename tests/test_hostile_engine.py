"""Hostile input to the array API: GuestMemory, LPITable and the four engine functions.

Three kinds of test:

* cases that used to crash or store to wild addresses (flag bytes that are not 0/1, arrays changed
  in place after they were handed over, attribute writes into slots and tables) run each in its own
  process; the child checks the engine's result against ``tests/reference.py`` and that no byte
  outside the pending tables changed, and the parent asserts a clean exit (no signal);
* refusals: the error names the argument and the problem, and memory bytes, the dirty log and
  ``pending_latch`` are unchanged afterwards;
* concurrency: slots removed and re-added in one thread while another saves into the memory
  (``VLPI_SLOT_SWAPS`` swaps, default 300; 3,000 in the ``slow`` variant); no byte outside the
  intended slot may change.

The raw-address check (``VLPI_RAW_CHECK=1``, run over the engine tests by ``.ci/run``) is tested
here too: a view outside the registered memory ends the process with status 86.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

import vlpi
from vlpi import GuestMemory, GuestMemoryFault, LPITable

pytestmark = pytest.mark.engine

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
B0 = 0x10000

# ---------------------------------------------------------------- isolated (crash-prone) cases
PRELUDE = """
import numpy as np, vlpi
from vlpi import GuestMemory, LPITable
from reference import ref_save, ref_sync_pending_status

B0 = 0x10000

def fresh(nv=2):
    mem = GuestMemory()
    mem.add_slot(B0, 0x40000)
    rng = np.random.default_rng(1)
    mem.write(B0, rng.integers(0, 256, 0x40000, dtype=np.uint8))
    mem.clear_dirty()
    return mem, np.array([B0 + v * 0x10000 for v in range(nv)], np.uint64)

def clone(mem):
    m = GuestMemory()
    for s in mem.slots:
        m.add_slot(s.gpa, data=s.data.copy(), readonly=s.readonly)
    return m

def check_save(mem, pb, lp, **kw):
    ref = clone(mem)
    latch = np.asarray(lp.pending_latch).view(np.uint8) != 0
    hw = np.asarray(lp.hw).view(np.uint8) != 0
    r = ref_save(ref, pb, lp.intid, lp.target_vcpu, latch, hw, vpt=kw.get("vpt"),
                 has_gicv4_1=kw.get("has_gicv4_1", False))
    got = vlpi.save_pending_tables(mem, pb, lp, **kw)
    assert (got.guest_reads, got.guest_writes, got.vpt_reads, got.bytes_changed) == (
        r.guest_reads, r.guest_writes, r.vpt_reads, r.bytes_changed), (got, r)
    for a, b in zip(mem.slots, ref.slots):
        assert np.array_equal(a.data, b.data), "guest memory differs from the reference"
    assert np.array_equal(got.dirty_pages, r.dirty_pages)
    return got
"""

ISOLATED = {
    "bool_bytes_not_0_1_at_construction": """
        mem, pb = fresh(1)
        lp = LPITable([8192, 8193, 8200], [0, 0, 0], np.frombuffer(b"\\x03\\x00\\x02", bool))
        assert lp.pending_latch.view(np.uint8).tolist() == [1, 0, 1]  # normalised copy
        assert lp.pending_latch.tolist() == [True, False, True]
        check_save(mem, pb, lp)
    """,
    "uint8_latch_in_place_set_to_2": """
        mem, pb = fresh()
        n = 4096
        latch = np.zeros(n, np.uint8)
        lp = LPITable(8192 + np.arange(n), np.arange(n) % 2, latch)
        check_save(mem, pb, lp)
        latch[::2] = 2
        assert lp.pending_latch is latch
        check_save(mem, pb, lp)
        latch[:] = 255
        check_save(mem, pb, lp)
    """,
    "bool_latch_in_place_raw_bytes": """
        mem, pb = fresh()
        n = 3000
        latch = np.zeros(n, bool)
        lp = LPITable(8192 + 3 * np.arange(n), np.arange(n) % 2, latch)  # shared bytes: merge paths
        check_save(mem, pb, lp)
        latch.view(np.uint8)[1::3] = 0x80
        check_save(mem, pb, lp, order="intid")
    """,
    "hw_in_place_set_to_2_fast_and_fault_paths_agree": """
        mem, pb = fresh()
        n = 2048
        hw = np.zeros(n, np.uint8)
        lp = LPITable(8192 + np.arange(n), np.arange(n) % 2, np.ones(n, bool), hw)
        vpt = np.zeros((2, 8192 // 8 + n // 8 + 1), np.uint8)
        check_save(mem, pb, lp, vpt=vpt, has_gicv4_1=True)
        hw[:] = 2
        fast = check_save(mem, pb, lp, vpt=vpt, has_gicv4_1=True)
        assert fast.vpt_reads == n  # every hw LPI read its VPT bit: 2 means forwarded
        # the same LPIs on memory where the walk faults at the last LPI: the literal path
        mem2, _ = fresh()
        mem3 = GuestMemory()
        mem3.add_slot(B0, data=mem2.slots[0].data[: 0x10000 + 1024 + n // 16].copy())
        ref = clone(mem3)
        r = ref_save(ref, pb, lp.intid, lp.target_vcpu, np.ones(n, bool), hw != 0, vpt=vpt, has_gicv4_1=True)
        try:
            vlpi.save_pending_tables(mem3, pb, lp, vpt=vpt, has_gicv4_1=True, atomic=False)
            raise AssertionError("no fault")
        except vlpi.GuestMemoryFault as e:
            assert e.report.vpt_reads == r.vpt_reads and e.report.guest_writes == r.guest_writes
        assert np.array_equal(mem3.slots[0].data, ref.slots[0].data)
    """,
    "intid_and_targets_cannot_be_made_writeable": """
        mem, pb = fresh()
        lp = LPITable(8192 + np.arange(47), np.zeros(47, int), np.ones(47, bool))
        check_save(mem, pb, lp)
        for name in ("intid", "target_vcpu"):
            a = getattr(lp, name)
            for obj in (a, a.base):
                try:
                    obj.flags.writeable = True
                except (ValueError, AttributeError):
                    pass
                else:
                    raise AssertionError(f"{name} made writeable")
            try:
                a[0] = 9000
                raise AssertionError(f"{name} written")
            except ValueError:
                pass
        lp.set_targets([0], 1)
        check_save(mem, pb, lp)
        assert lp.intid.tolist() == list(range(8192, 8192 + 47))
    """,
    "memslot_fields_and_generation_cannot_be_reassigned": """
        import dataclasses
        mem, pb = fresh()
        lp = LPITable(8192 + np.arange(512), np.arange(512) % 2, np.ones(512, bool))
        check_save(mem, pb, lp)
        s = mem.slots[0]
        for field, value in (("size", 1 << 32), ("gpa", 0), ("data", np.zeros(1 << 20, np.uint8)),
                             ("readonly", False)):
            try:
                setattr(s, field, value)
                raise AssertionError(f"MemSlot.{field} reassigned")
            except dataclasses.FrozenInstanceError:
                pass
        for obj, name in ((mem, "generation"), (lp, "version")):
            try:
                setattr(obj, name, 0)
                raise AssertionError(f"{name} reassigned")
            except AttributeError:
                pass
        for a in mem.extents() + mem.extents(True):
            assert not a.flags.writeable
        lp.pending_latch[:] = False
        check_save(mem, pb, lp)
        # going around the frozen dataclass: refused when the slot tables are next built
        object.__setattr__(s, "size", 1 << 32)
        mem.add_slot(0x2_0000_0000, 0x1000)
        snap = s.data.copy()
        try:
            vlpi.save_pending_tables(mem, pb, lp)
            raise AssertionError("accepted")
        except RuntimeError as e:
            assert "memslot at GPA 0x10000 was changed behind GuestMemory's back" in str(e)
        assert np.array_equal(snap, s.data)
    """,
    "slot_swapped_between_saves": """
        mem, pb = fresh()
        lp = LPITable(8192 + np.arange(4096), np.arange(4096) % 2, np.ones(4096, bool))
        check_save(mem, pb, lp)
        old = mem.slots[0].data
        mem.remove_slot(B0)
        del old
        mem.add_slot(B0 - 0x1000, 0x40000)  # same size, shifted: cached tables must not be reused
        lp.pending_latch[::3] = False
        check_save(mem, pb, lp)
        mem.remove_slot(B0 - 0x1000)
        mem.add_slot(B0, 0x20000)  # shorter: vCPU1's table (B0 + 0x10000 + 1024..) still inside
        check_save(mem, pb, lp)
        mem.remove_slot(B0)
        mem.add_slot(B0, 0x10000)  # vCPU1's table gone: atomic save faults, nothing written
        snap = mem.slots[0].data.copy()
        try:
            vlpi.save_pending_tables(mem, pb, lp)
            raise AssertionError("no fault")
        except vlpi.GuestMemoryFault:
            pass
        assert np.array_equal(snap, mem.slots[0].data)
    """,
    "pendbaser_and_vpt_changed_in_place": """
        mem, pb = fresh()
        n = 2048
        lp = LPITable(8192 + np.arange(n), np.arange(n) % 2, np.ones(n, bool), np.ones(n, bool))
        vpt = np.full((2, (8192 + n) // 8), 0xFF, np.uint8)
        check_save(mem, pb, lp, vpt=vpt, has_gicv4_1=True)
        pb[1] = B0 + 0x20000  # moved table: a new plan
        check_save(mem, pb, lp, vpt=vpt, has_gicv4_1=True)
        pb[1] = 0x7000_0000  # unmapped: fault, nothing written
        snap = mem.slots[0].data.copy()
        try:
            vlpi.save_pending_tables(mem, pb, lp, vpt=vpt, has_gicv4_1=True)
            raise AssertionError("no fault")
        except vlpi.GuestMemoryFault:
            pass
        assert np.array_equal(snap, mem.slots[0].data)
        pb[1] = B0 + 0x10000
        vpt.shape = (1, 2 * ((8192 + n) // 8))  # reshaped in place: refused (one VPT per vPE)
        try:
            vlpi.save_pending_tables(mem, pb, lp, vpt=vpt, has_gicv4_1=True)
            raise AssertionError("accepted")
        except ValueError as e:
            assert "vpt" in str(e)
        assert np.array_equal(snap, mem.slots[0].data)
    """,
    "restore_and_scan_with_flag_bytes": """
        mem, pb = fresh()
        n = 1024
        latch = np.full(n, 7, np.uint8)
        latch[:] = 0
        lp = LPITable(8192 + np.arange(n), np.arange(n) % 2, latch)
        latch[:] = 9  # overwritten by restore anyway
        ref = clone(mem)
        rl = np.zeros(n, bool)
        r = ref_sync_pending_status(ref, pb, lp.intid, lp.target_vcpu, rl)
        got = vlpi.sync_pending_status(mem, pb, lp)
        assert got.guest_writes == r.guest_writes
        assert np.array_equal(latch != 0, rl) and set(latch.tolist()) <= {0, 1}
        assert np.array_equal(mem.slots[0].data, ref.slots[0].data)
        latch[:] = 5
        vlpi.sync_pending_table(mem, pb, lp, 1)
        assert set(latch[1::2].tolist()) <= {0, 1} and set(latch[0::2].tolist()) == {5}
    """,
}


def run_isolated(body: str, env: dict | None = None) -> subprocess.CompletedProcess:
    code = PRELUDE + textwrap.dedent(body) + "\nprint('CHILD-OK')\n"
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join([ROOT, os.path.join(ROOT, "tests")])
    e.update(env or {})
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, env=e, cwd=ROOT)


@pytest.mark.parametrize("case", sorted(ISOLATED))
def test_isolated_case(case):
    r = run_isolated(ISOLATED[case])
    assert r.returncode == 0, f"exit {r.returncode} (negative: killed by a signal)\n{r.stderr[-3000:]}"
    assert "CHILD-OK" in r.stdout


def test_raw_check_ends_the_process_on_an_access_outside_validated_memory():
    """The CI check itself: in VLPI_RAW_CHECK mode a view one byte past a registered array is caught
    before it is used; views inside registered arrays pass."""
    body = """
        import numba
        from vlpi._kernels import _jit
        assert _jit.RAW_CHECK

        @numba.njit
        def poke(addr, n):
            v = _jit.view_u8(addr, n)
            v[n - 1] = 7

        a = np.zeros(16, np.uint8)
        with _jit.guard([a]):
            poke(np.uint64(a.ctypes.data), 16)
            assert a[15] == 7
            print("inside ok", flush=True)
            poke(np.uint64(a.ctypes.data), 17)
        print("NOT CAUGHT", flush=True)
    """
    r = run_isolated(body, env={"VLPI_RAW_CHECK": "1"})
    assert "inside ok" in r.stdout and "NOT CAUGHT" not in r.stdout
    assert r.returncode == 86, r.stderr[-2000:]
    assert re.search(r"raw-access check: a kernel accessed \[0x[0-9a-f]+, 0x[0-9a-f]+\) \(17 bytes\)", r.stderr)


# ---------------------------------------------------------------- refusals change nothing
def setup(n=64, nv=2, hw=False):
    mem = GuestMemory()
    mem.add_slot(B0, 0x30000)
    mem.write(B0 + 1024, np.full(8, 0xA5, np.uint8))
    mem.clear_dirty()
    mem.write(B0 + 0x20000, [1])  # a dirty log to preserve
    lpis = LPITable(8192 + np.arange(n), np.arange(n) % nv, np.arange(n) % 3 == 0, np.full(n, hw))
    return mem, np.array([B0 + v * 0x10000 for v in range(nv)], np.uint64), lpis


class Unchanged:
    def __init__(self, mem: GuestMemory, *tables: LPITable):
        self.mem, self.tables = mem, tables
        self.bytes = [s.data.copy() for s in mem.slots]
        self.dirty = mem.dirty_pages().copy()
        self.latch = [np.array(t.pending_latch, copy=True) for t in tables]
        self.gen = mem.generation

    def check(self):
        assert self.mem.generation == self.gen
        assert all(np.array_equal(a, s.data) for a, s in zip(self.bytes, self.mem.slots, strict=True))
        assert np.array_equal(self.dirty, self.mem.dirty_pages())
        for t, l0 in zip(self.tables, self.latch, strict=True):
            assert np.array_equal(t.pending_latch, l0)


def refused(exc, patterns, fn, *args, mem, lpis=(), **kw):
    snap = Unchanged(mem, *lpis)
    with pytest.raises(exc) as ei:
        fn(*args, **kw)
    msg = str(ei.value)
    for p in patterns:
        assert re.search(p, msg), f"message {msg!r} does not match {p!r}"
    snap.check()


OPS = {
    "save": (lambda m, p, lp, **kw: vlpi.save_pending_tables(m, p, lp, **kw), ("has_gicv4_1", "atomic")),
    "save_many": (lambda m, p, lp, **kw: vlpi.save_pending_tables_many([(m, p, lp, None)], **kw),
                  ("has_gicv4_1", "atomic")),
    "sync_status": (lambda m, p, lp, **kw: vlpi.sync_pending_status(m, p, lp, **kw), ("atomic", "stop_on_error")),
    "sync_table": (lambda m, p, lp, **kw: vlpi.sync_pending_table(m, p, lp, 0, **kw), ("atomic",)),
}


@pytest.mark.parametrize("value", ["yes", "False", "", 1, 0, None, 1.0, np.array([True])])
@pytest.mark.parametrize("op", sorted(OPS))
def test_flags_that_are_not_bools_are_refused(op, value):
    fn, flags = OPS[op]
    for flag in flags:
        mem, pb, lp = setup()
        refused(TypeError, [rf"^{flag} must be a bool", re.escape(type(value).__name__)], fn, mem, pb, lp,
                mem=mem, lpis=(lp,), **{flag: value})


def test_numpy_bools_are_flags():
    mem, pb, lp = setup()
    r = vlpi.save_pending_tables(mem, pb, lp, has_gicv4_1=np.bool_(False), atomic=np.True_)
    assert r.lpis_total == len(lp)


@pytest.mark.parametrize("order", [5, "INTID", None, b"intid"])
def test_bad_order_is_refused(order):
    mem, pb, lp = setup()
    refused(ValueError, [r"^order must be one of"], vlpi.save_pending_tables, mem, pb, lp, order=order,
            mem=mem, lpis=(lp,))


def test_huge_and_negative_reads_name_the_size():
    mem, _, _ = setup()
    refused(ValueError, [r"^read: n = 1099511627776 bytes is more than one read may copy"], mem.read, B0, 2**40,
            mem=mem)
    refused(ValueError, [r"^read: n must be >= 0, got -1"], mem.read, B0, -1, mem=mem)
    refused(ValueError, [r"^read: gpa = -16 is negative"], mem.read, -16, 1, mem=mem)
    refused(TypeError, [r"^read: n must be an integer, got float"], mem.read, B0, 1.0, mem=mem)
    refused(ValueError, [r"^write: gpa = -1 is negative"], mem.write, -1, [0], mem=mem)
    # a read beyond the mapping faults at the first hole, before allocating anything
    with pytest.raises(GuestMemoryFault) as ei:
        mem.read(B0 + 0x2FFFF, 2)
    assert ei.value.gpa == B0 + 0x30000
    with pytest.raises(GuestMemoryFault) as ei:
        mem.read(B0, 2**32)
    assert ei.value.gpa == B0 + 0x30000


def test_vector_accesses_refuse_bad_gpas_by_index():
    mem, _, _ = setup()
    refused(ValueError, [r"^read_u8: gpas\[1\] = -1 is negative"], mem.read_u8, [B0, -1], mem=mem)
    refused(ValueError, [r"^write_u8: gpas\[2\] = -5 is negative"], mem.write_u8, [B0, B0 + 1, -5], [1, 2, 3],
            mem=mem)
    refused(TypeError, [r"^read_u8: gpas must be integer guest physical addresses, got dtype float64"],
            mem.read_u8, [1.5], mem=mem)
    refused(TypeError, [r"^write_u8: gpas must be integer.*str"], mem.write_u8, "0x10000", [1], mem=mem)
    refused(TypeError, [r"^read_u8: gpas must be integer guest physical addresses below 2\*\*52"], mem.read_u8,
            [2**70], mem=mem)
    refused(ValueError, [r"^write_u8: values\[0\] = 256 is not a byte value"], mem.write_u8, [B0], [256], mem=mem)
    refused(ValueError, [r"^write_u8: 2 values for 3 gpas"], mem.write_u8, [B0, B0 + 1, B0 + 2], [1, 2], mem=mem)
    assert mem.read_u8(np.zeros(0, np.int64)).shape == (0,)
    assert mem.read_u8([B0 + 1024]).tolist() == [0xA5]


def test_two_memories_cannot_share_a_backing_array():
    buf = np.zeros(0x20000, np.uint8)
    a = GuestMemory()
    a.add_slot(B0, data=buf[:0x10000])
    b = GuestMemory()
    refused(ValueError, [r"^add_slot: data shares memory with another GuestMemory's slot at GPA 0x10000"],
            b.add_slot, 0x100000, mem=b, data=buf[0x8000:0x18000])
    refused(ValueError, [r"this GuestMemory's slot at GPA 0x10000"], a.add_slot, 0x100000, mem=a, data=buf[:0x1000])
    refused(ValueError, [r"another GuestMemory's"], b.add_slot, 0x100000, mem=b, data=a.slots[0].data)
    b.add_slot(0x100000, data=buf[0x10000:])  # disjoint part of the same buffer: fine
    a.remove_slot(B0)
    b.add_slot(0x200000, data=buf[:0x10000])  # released by a: fine
    assert [s.gpa for s in b.slots] == [0x100000, 0x200000]


def test_slot_flags_and_shapes_are_checked():
    mem, _, _ = setup()
    refused(TypeError, [r"^add_slot: readonly must be a bool, got str"], mem.add_slot, 0x100000, 16, mem=mem,
            readonly="no")
    refused(TypeError, [r"^gpa must be an integer, got str"], mem.add_slot, "0x100000", 16, mem=mem)
    refused(ValueError, [r"^add_slot: size must be > 0, got 0"], mem.add_slot, 0x100000, 0, mem=mem)
    refused(ValueError, [r"^add_slot: size = 2251799813685248 bytes cannot be allocated"], mem.add_slot,
            1 << 51, 1 << 51, mem=mem)


@pytest.mark.parametrize(
    ("kwargs", "exc", "pattern"),
    [
        (dict(intid="8192", target_vcpu=[0]), TypeError, r"^intid must be an integer array, got str"),
        (dict(intid=[8192], target_vcpu=[0], pending_latch="1"), TypeError, r"^pending_latch must be bool"),
        (dict(intid=[8192], target_vcpu=[0], hw=[2]), ValueError, r"^hw\[0\] = 2: flags must be 0 or 1"),
        (dict(intid=[8192], target_vcpu=[0], hw=[0.5]), TypeError, r"^hw must be bool or 0/1 integers"),
        (dict(intid=[8192, 8192], target_vcpu=[0, 0]), ValueError, r"^intid\[1\] = 8192 duplicates intid\[0\]"),
        (dict(intid=[8191], target_vcpu=[0]), ValueError, r"^intid\[0\] = 8191 is not an LPI INTID"),
        (dict(intid=[8192], target_vcpu=[-2]), ValueError, r"^target_vcpu\[0\] = -2"),
        (dict(intid=[[8192]], target_vcpu=[[0]]), ValueError, r"^intid must be 1-D"),
    ],
)
def test_lpitable_refusals_name_the_argument(kwargs, exc, pattern):
    with pytest.raises(exc, match=pattern):
        LPITable(**kwargs)


def test_set_targets_refusals_change_nothing():
    _, _, lp = setup()
    t0, v0 = lp.target_vcpu.copy(), lp.version
    for args, exc, pat in [
        (([0], "1"), TypeError, r"vcpu must be integers"),
        (([99], 0), IndexError, r"index\[0\] = 99 out of range"),
        (([0], -2), ValueError, r"vcpu\[0\] = -2"),
        (("0", 1), TypeError, r"index must be an integer array"),
    ]:
        with pytest.raises(exc, match=pat):
            lp.set_targets(*args)
        assert np.array_equal(lp.target_vcpu, t0) and lp.version == v0


def test_jobs_sharing_a_memory_are_refused_before_anything():
    mem, pb, lp = setup()
    refused(ValueError, [r"^jobs\[1\] shares its GuestMemory with jobs\[0\]"], vlpi.save_pending_tables_many,
            [(mem, pb, lp, None), (mem, pb, lp.copy(), None)], mem=mem, lpis=(lp,))


# ---------------------------------------------------------------- zero-length tables
def test_zero_length_lpitable_works_everywhere():
    mem, pb, _ = setup()
    snap = Unchanged(mem)
    for lp in (LPITable([], []), LPITable(np.zeros(0, np.uint32), np.zeros(0, np.int8), np.zeros(0, bool),
                                          np.zeros(0, np.uint8))):
        assert len(lp) == 0 and lp.max_target == -1 and repr(lp) == "LPITable(0 LPIs)"
        for v41 in (False, True):
            r = vlpi.save_pending_tables(mem, pb, lp, has_gicv4_1=v41)
            assert (r.lpis_total, r.guest_reads, r.guest_writes, r.bytes_changed, len(r.dirty_pages)) == (0,) * 5
            (r,) = vlpi.save_pending_tables_many([(mem, pb, lp, None)], has_gicv4_1=v41, order="insertion")
            assert (r.lpis_total, r.guest_writes) == (0, 0)
        r = vlpi.sync_pending_status(mem, pb, lp)
        assert (r.lpis_total, r.lpis_synced, r.guest_reads, r.lpi_errno.size) == (0, 0, 0, 0)
        r = vlpi.sync_pending_status(mem, pb, lp, stop_on_error=False, atomic=False)
        assert r.lpis_synced == 0
        r = vlpi.sync_pending_table(mem, pb, lp, 1)
        assert (r.lpis_total, r.guest_reads) == (0, 0)
        assert vlpi.save_pending_tables(mem, np.zeros(0, np.uint64), lp).lpis_total == 0
        lp.set_targets([], 0)
        assert lp.copy().intid.size == 0
    snap.check()


# ---------------------------------------------------------------- concurrency
def _swap_race(swaps: int, many: bool = False) -> tuple[int, int, int]:
    """One thread saves into slot T (the pending tables) while another removes T and an
    unrelated, same-size slot U and adds fresh ones. Old T arrays are dropped at once, so their
    memory is freed and likely reused for the next U: a save still using a stale T pointer would
    write into U (or fault the process). ``many``: the saves are ``save_pending_tables_many``
    calls with the same job list (which caches it across calls). Returns (bytes changed in any U
    array, bytes changed outside the tables of the last T plus LPI bits of a last save missing
    from it, saves done)."""
    nv, size = 4, 0x40000
    gpa_t, gpa_u = 0x100000, 0x400000
    n = 1 << 16  # a save long enough (~0.1 ms) for a swap to land in the middle of it
    mem = GuestMemory()
    mem.add_slot(gpa_t, size)
    u_arrays = [mem.add_slot(gpa_u, data=np.full(size, 0xA5, np.uint8))]
    pb = np.array([gpa_t + v * 0x10000 for v in range(nv)], np.uint64)
    lp = LPITable(8192 + np.arange(n), np.arange(n) % nv)
    table = np.zeros(size, bool)  # bytes of T that LPIs map
    for v in range(nv):
        table[v * 0x10000 + 1024 : v * 0x10000 + 1024 + n // 8] = True
    jobs = [(mem, pb, lp, None)]
    stop = threading.Event()
    saving = threading.Event()  # set by the saver just before each save: the swapper then swaps
    saves = [0]
    errors: list[BaseException] = []
    bad_u = 0

    def saver():
        rng = np.random.default_rng(0)
        try:
            while not stop.is_set():
                lp.pending_latch[:] = rng.random(n) < 0.5
                saving.set()
                try:
                    if many:
                        vlpi.save_pending_tables_many(jobs)
                    else:
                        vlpi.save_pending_tables(mem, pb, lp)
                    saves[0] += 1
                except GuestMemoryFault:
                    pass  # T was absent at this moment: atomic, nothing written
        except BaseException as e:  # noqa: BLE001 (reported by the main thread)
            errors.append(e)

    th = threading.Thread(target=saver)
    th.start()
    try:
        for _ in range(swaps):
            if not saving.wait(10):
                break
            saving.clear()
            mem.remove_slot(gpa_t)
            mem.remove_slot(gpa_u)
            u_arrays.append(mem.add_slot(gpa_u, data=np.full(size, 0xA5, np.uint8)))
            mem.add_slot(gpa_t, size)  # the old T array is freed here
            if len(u_arrays) > 64:  # bounded memory: check and drop the oldest
                bad_u += int(np.count_nonzero(u_arrays.pop(0) != 0xA5))
    finally:
        stop.set()
        th.join()
        saving.set()
    assert not errors, errors
    bad_u += sum(int(np.count_nonzero(a != 0xA5)) for a in u_arrays)
    bad_t = int(np.count_nonzero(mem.slots[0].data[~table]))
    # one more save must land in the current T: every LPI's bit there is its pending_latch
    vlpi.save_pending_tables_many(jobs) if many else vlpi.save_pending_tables(mem, pb, lp)
    t = next(s for s in mem.slots if s.gpa == gpa_t).data
    iid = lp.intid.astype(np.int64)
    off = (pb[lp.target_vcpu].astype(np.int64) - gpa_t) + (iid >> 3)
    bad_t += int(np.count_nonzero(((t[off] >> (iid & 7)) & 1).astype(bool) != lp.pending_latch))
    return bad_u, bad_t, saves[0]


def _swap_race_isolated(swaps: int, many: bool = False) -> None:
    """Run :func:`_swap_race` in its own process (a stale pointer may crash it)."""
    r = run_isolated(f"from test_hostile_engine import _swap_race\nprint('RESULT', *_swap_race({swaps}, {many}))\n")
    assert r.returncode == 0, f"exit {r.returncode} (negative: killed by a signal)\n{r.stderr[-3000:]}"
    bad_u, bad_t, saves = map(int, r.stdout.split("RESULT", 1)[1].split()[:3])
    print(f"{swaps} slot swaps, {saves} saves: {bad_u} bytes changed in the unrelated slot, "
          f"{bad_t} outside the tables or missing from them")
    assert (bad_u, bad_t) == (0, 0)
    assert saves > 0


@pytest.mark.parametrize("many", [False, True], ids=["one", "many"])
def test_slot_swaps_during_saves_never_write_outside_the_slot(many):
    # under VLPI_RAW_CHECK every kernel access calls into Python: a few swaps only
    default = "20" if os.environ.get("VLPI_RAW_CHECK", "0") not in ("", "0") else "300"
    _swap_race_isolated(int(os.environ.get("VLPI_SLOT_SWAPS", default)), many)


@pytest.mark.slow
def test_slot_swaps_during_saves_3000():
    _swap_race_isolated(3000)


def test_memslot_is_frozen_and_documented():
    mem, _, _ = setup()
    assert dataclasses.is_dataclass(mem.slots[0]) and mem.slots[0].__dataclass_params__.frozen
    for cls in (GuestMemory, LPITable):
        doc = cls.__doc__
        assert "Thread safety" in doc and "may change in place" in doc and "may not" in doc
