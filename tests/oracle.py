"""The one oracle assert: engine == reference, bytes, counts and errors, with a readable diff.

:func:`assert_engine_matches` runs a vlpi engine operation on one deep copy of a
:class:`Scenario` and the literal model of :mod:`reference` on another, then compares

* the final bytes of every slot and the dirty-page log of the memory,
* every report count (``guest_reads``, ``guest_writes``, ``vpt_reads``, ``bytes_changed``,
  ``lpis_skipped``, ``vpes_unmapped``/``vpes_remapped``, ``lpis_synced``, ``lpi_errno``,
  ``dirty_pages``, ``lpis_total``),
* ``pending_latch``,
* errors: type, errno, ``gpa``, ``intid``, ``vcpu``, ``write`` and the partial report,
* that the engine did not modify inputs it must not modify (pendbaser, VPT, intid, target, hw).

Expected engine semantics (engine contract):

* ``atomic=False``: exactly the reference (partial writes kept; ``GuestMemoryFault`` carrying
  the partial report).
* ``atomic=True``: if the reference faults, ``GuestMemoryFault`` with the same
  gpa/intid/vcpu/write, and memory, dirty log and ``pending_latch`` unchanged; otherwise
  identical to the reference.

``OPERATIONS`` is the registry operation -> (engine callable, reference callable) shared with the
benchmarks so the two cannot drift apart.
"""

from __future__ import annotations

import copy
import errno
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import reference as ref

from vlpi import GuestMemory, GuestMemoryFault, LPITable

__all__ = [
    "SlotSpec",
    "Scenario",
    "Outcome",
    "OPERATIONS",
    "assert_engine_matches",
    "assert_save_many_matches",
    "shrink",
]

PAGE_SHIFT = 12


# --------------------------------------------------------------------------- scenarios
@dataclass
class SlotSpec:
    """One memslot: initial bytes, read-only flag, initial dirty bits (one per 4 KiB page)."""

    gpa: int
    data: np.ndarray
    readonly: bool = False
    dirty: np.ndarray | None = None

    @property
    def end(self) -> int:
        return self.gpa + int(self.data.size)


@dataclass
class Scenario:
    """Everything one engine call needs, as plain data; :meth:`build` makes fresh deep copies.

    LPI rows are in creation order.
    """

    slots: list[SlotSpec]
    pendbaser: np.ndarray
    intid: np.ndarray
    target_vcpu: np.ndarray
    pending_latch: np.ndarray
    hw: np.ndarray
    vpt: np.ndarray | None = None
    name: str = ""
    notes: dict = field(default_factory=dict)
    #: dtype of the pending_latch/hw arrays handed to LPITable (bool or uint8; both used in place)
    flag_dtype: type = bool
    #: build a packed LPITable (flags held as bits)
    packed: bool = False

    @property
    def n_vcpus(self) -> int:
        return int(np.asarray(self.pendbaser).size)

    @property
    def n_lpis(self) -> int:
        return int(np.asarray(self.intid).size)

    @classmethod
    def from_objects(cls, mem: GuestMemory, pendbaser, lpis: LPITable, vpt=None, name: str = "") -> Scenario:
        """Snapshot live objects (deep copies; the originals are not referenced)."""
        mem.dirty_pages()  # the engine may log dirty pages lazily: settle the per-slot bitmaps
        slots = [SlotSpec(s.gpa, s.data.copy(), s.readonly, s.dirty.copy()) for s in mem.slots]
        return cls(
            slots,
            np.array(pendbaser, dtype=np.uint64).reshape(-1),
            np.array(lpis.intid, dtype=np.int64),
            np.array(lpis.target_vcpu, dtype=np.int64),
            np.array(lpis.pending_latch, dtype=bool),
            np.array(lpis.hw, dtype=bool),
            None if vpt is None else np.array(vpt, dtype=np.uint8),
            name,
        )

    def memory(self) -> GuestMemory:
        """A fresh GuestMemory with the same slots, bytes, read-only flags and dirty log."""
        mem = GuestMemory()
        for s in self.slots:
            data = np.array(s.data, dtype=np.uint8, copy=True)
            mem.add_slot(s.gpa, data.size, readonly=s.readonly, data=data)
        if any(s.dirty is not None for s in self.slots):
            for live, s in zip(mem.slots, sorted(self.slots, key=lambda x: x.gpa), strict=True):
                if s.dirty is not None:
                    live.dirty[:] = s.dirty
        return mem

    def lpis(self) -> LPITable:
        """A fresh LPITable (own arrays)."""
        return LPITable(
            self.intid.copy(),
            self.target_vcpu.copy(),
            self.pending_latch.astype(self.flag_dtype),
            self.hw.astype(self.flag_dtype),
            packed=self.packed,
        )

    def build(self):
        """(mem, pendbaser, lpis, vpt), all fresh copies."""
        vpt = None if self.vpt is None else self.vpt.copy()
        return self.memory(), self.pendbaser.copy(), self.lpis(), vpt

    def with_lpis(self, keep: np.ndarray) -> Scenario:
        """A copy keeping only the LPI rows selected by ``keep`` (index or mask)."""
        s = copy.deepcopy(self)
        s.intid, s.target_vcpu = s.intid[keep], s.target_vcpu[keep]
        s.pending_latch, s.hw = s.pending_latch[keep], s.hw[keep]
        return s

    def describe(self, max_rows: int = 40) -> str:
        """A compact, human-readable dump (enough to rebuild the case by hand)."""
        lines = [f"Scenario {self.name!r}: {self.n_vcpus} vCPUs, {self.n_lpis} LPIs"]
        for s in sorted(self.slots, key=lambda x: x.gpa):
            nz = int(np.count_nonzero(s.data))
            lines.append(
                f"  slot [{s.gpa:#x}, {s.end:#x}) {s.data.size} B{' RO' if s.readonly else ''}, {nz} nonzero bytes"
            )
        for v, p in enumerate(np.asarray(self.pendbaser, dtype=np.uint64)):
            lines.append(f"  pendbaser[{v}] = {int(p):#018x} -> base {ref.pendbase(int(p)):#x}")
        if self.vpt is not None:
            lines.append(f"  vpt shape {self.vpt.shape}, {int(np.count_nonzero(self.vpt))} nonzero bytes")
        lines.append("  row: intid target latch hw  gpa")
        for i in range(min(self.n_lpis, max_rows)):
            t = int(self.target_vcpu[i])
            gpa = "-" if t < 0 else f"{ref.pendbase(int(self.pendbaser[t])) + int(self.intid[i]) // 8:#x}"
            lines.append(
                f"  {i:3d}: {int(self.intid[i]):8d} {t:3d} {int(self.pending_latch[i]):d} "
                f"{int(self.hw[i]):d}  {gpa}.{int(self.intid[i]) % 8}"
            )
        if self.n_lpis > max_rows:
            lines.append(f"  ... {self.n_lpis - max_rows} more rows")
        return "\n".join(lines)

    def to_code(self) -> str:
        """Python source that rebuilds this scenario exactly (for bug reports); evaluate it with
        ``np``, ``Scenario`` and ``strategies.slot`` in scope. The initial dirty log and a VPT's
        zero bytes are written compactly."""
        out = ["Scenario(", "    slots=["]
        for s in self.slots:
            nz = np.flatnonzero(s.data)
            out.append(
                f"        slot({s.gpa:#x}, {s.data.size}, readonly={s.readonly}, "
                f"nonzero={{{', '.join(f'{int(k)}: {int(s.data[k])}' for k in nz)}}}),"
            )
        out.append("    ],")
        hexes = ", ".join(hex(int(p)) for p in self.pendbaser)
        out.append(f"    pendbaser=np.array([{hexes}], dtype=np.uint64),")
        out.append(f"    intid=np.array({self.intid.tolist()}, dtype=np.int64),")
        out.append(f"    target_vcpu=np.array({self.target_vcpu.tolist()}, dtype=np.int64),")
        out.append(f"    pending_latch=np.array({np.asarray(self.pending_latch, dtype=int).tolist()}, dtype=bool),")
        out.append(f"    hw=np.array({np.asarray(self.hw, dtype=int).tolist()}, dtype=bool),")
        if self.vpt is not None:
            out.append(f"    vpt=np.array({self.vpt.tolist()}, dtype=np.uint8),")
        out.append(f"    name={self.name!r},")
        out.append(")")
        return "\n".join(out)


# ------------------------------------------------------------------------ registry
def _engine(name: str):
    import vlpi

    return getattr(vlpi, name)


def _run_engine_save(mem, pendbaser, lpis, vpt, **kw):
    return _engine("save_pending_tables")(mem, pendbaser, lpis, vpt=vpt, **kw)


def _run_engine_sync_status(mem, pendbaser, lpis, vpt, **kw):
    return _engine("sync_pending_status")(mem, pendbaser, lpis, **kw)


def _run_engine_sync_table(mem, pendbaser, lpis, vpt, *, vcpu, **kw):
    return _engine("sync_pending_table")(mem, pendbaser, lpis, vcpu, **kw)


def _run_ref_save(mem, scn: Scenario, *, order="intid", has_gicv4_1=False, atomic=True):
    return ref.ref_save(
        mem, scn.pendbaser, scn.intid, scn.target_vcpu, scn.pending_latch, scn.hw,
        scn.vpt, has_gicv4_1, order,
    )


def _run_ref_sync_status(mem, scn: Scenario, *, stop_on_error=True, atomic=True):
    latch = scn.pending_latch.copy()
    return ref.ref_sync_pending_status(mem, scn.pendbaser, scn.intid, scn.target_vcpu, latch, stop_on_error)


def _run_ref_sync_table(mem, scn: Scenario, *, vcpu, atomic=True):
    latch = scn.pending_latch.copy()
    return ref.ref_sync_pending_table(mem, scn.pendbaser, scn.intid, scn.target_vcpu, latch, vcpu)


#: operation -> engine runner, reference runner, report fields compared, latch-changing?
OPERATIONS: dict[str, dict[str, Any]] = {
    "save": {
        "engine": _run_engine_save,
        "reference": _run_ref_save,
        "fields": ("lpis_total", "lpis_skipped", "guest_reads", "guest_writes", "vpt_reads",
                   "bytes_changed", "vpes_unmapped", "vpes_remapped", "dirty_pages"),
        "mutates_latch": False,
    },
    "sync_pending_status": {
        "engine": _run_engine_sync_status,
        "reference": _run_ref_sync_status,
        "fields": ("lpis_total", "lpis_synced", "guest_reads", "guest_writes", "lpi_errno", "dirty_pages"),
        "mutates_latch": True,
    },
    "sync_pending_table": {
        "engine": _run_engine_sync_table,
        "reference": _run_ref_sync_table,
        "fields": ("lpis_total", "lpis_synced", "guest_reads", "guest_writes", "lpi_errno", "dirty_pages"),
        "mutates_latch": True,
    },
}


# ------------------------------------------------------------------------- outcome
@dataclass
class Outcome:
    """What one side produced: report or exception, final slot bytes, dirty log, latch."""

    report: Any
    error: BaseException | None
    slot_bytes: list[np.ndarray]
    dirty: np.ndarray
    pending_latch: np.ndarray


def _snapshot(mem: GuestMemory) -> tuple[list[np.ndarray], np.ndarray]:
    return [s.data.copy() for s in mem.slots], mem.dirty_pages().copy()


def _field(obj, name):
    v = getattr(obj, name)
    if name in ("dirty_pages", "lpi_errno"):
        return None if v is None else np.asarray(v).astype(np.int64).tolist()
    return int(v)


def _fmt_list(x, limit=16):
    if isinstance(x, list) and len(x) > limit:
        return f"{x[:limit]}... ({len(x)} items)"
    return repr(x)


class _Diff:
    def __init__(self) -> None:
        self.problems: list[str] = []

    def eq(self, what: str, expected, got) -> None:
        if isinstance(expected, np.ndarray) or isinstance(got, np.ndarray):
            same = np.array_equal(np.asarray(expected), np.asarray(got))
            expected, got = np.asarray(expected).tolist(), np.asarray(got).tolist()
        else:
            same = expected == got
        if not same:
            self.problems.append(f"{what}: expected {_fmt_list(expected)}, engine gave {_fmt_list(got)}")

    def check(self, what: str, cond: bool) -> None:
        if not cond:
            self.problems.append(what)

    def bytes(self, slots: list[SlotSpec], expected: list[np.ndarray], got: list[np.ndarray], label: str):
        for s, e, g in zip(slots, expected, got, strict=True):
            bad = np.flatnonzero(e != g)
            if bad.size:
                shown = ", ".join(
                    f"{s.gpa + int(k):#x}: initial {int(s.data[k]):#04x} expected {int(e[k]):#04x} "
                    f"engine {int(g[k]):#04x}"
                    for k in bad[:8]
                )
                more = f" (+{bad.size - 8} more)" if bad.size > 8 else ""
                self.problems.append(f"{label} bytes differ in slot {s.gpa:#x}: {shown}{more}")


def _call(runner, built, kw) -> tuple[Any, BaseException | None]:
    mem, pendbaser, lpis, vpt = built
    try:
        return runner(mem, pendbaser, lpis, vpt, **kw), None
    except GuestMemoryFault as e:
        return None, e


def assert_engine_matches(op: str, scn: Scenario, *, live=None, **kw) -> tuple[ref.RefResult, Outcome]:
    """Run ``op`` on the engine and on the reference (separate deep copies) and compare.

    Parameters
    ----------
    op : {"save", "sync_pending_status", "sync_pending_table"}
    scn : Scenario
    **kw
        Keyword arguments of the engine call (``order``, ``atomic``, ``has_gicv4_1``,
        ``stop_on_error``, ``vcpu``); the reference takes the ones that apply. ``atomic``
        defaults to True, as in the engine.
    live : (mem, pendbaser, lpis, vpt), optional
        Run the engine on these objects (whose content must equal ``scn``, e.g.
        ``scn = Scenario.from_objects(*live)``) instead of fresh copies: checks the engine's
        caches that live on long-lived LPITables and memories. They are mutated.

    Returns
    -------
    (RefResult, Outcome)
        For further assertions by the caller.

    Raises
    ------
    AssertionError
        With a readable diff and a dump of the scenario.
    """
    spec = OPERATIONS[op]
    atomic = kw.get("atomic", True)
    stop = kw.get("stop_on_error", True)
    slots_sorted = sorted(scn.slots, key=lambda s: s.gpa)

    # --- reference on copy A
    mem_r = scn.memory()
    init_bytes, init_dirty = _snapshot(mem_r)
    r = spec["reference"](mem_r, scn, **kw)
    ref_bytes, ref_dirty = _snapshot(mem_r)
    ref_latch = r.pending_latch if r.pending_latch is not None else scn.pending_latch

    # --- engine on copy B
    built = scn.build() if live is None else tuple(live)
    pend_in, vpt_in = built[1].copy(), None if built[3] is None else built[3].copy()
    report, err = _call(spec["engine"], built, kw)
    mem_e, pend_e, lpis_e, vpt_e = built
    eng_bytes, eng_dirty = _snapshot(mem_e)
    got = Outcome(report, err, eng_bytes, eng_dirty, np.asarray(lpis_e.pending_latch, dtype=bool).copy())

    d = _Diff()
    # inputs the engine must leave alone
    d.eq("pendbaser (input) modified", pend_in, pend_e)
    if vpt_in is not None:
        d.eq("vpt (input) modified", vpt_in, vpt_e)
    d.eq("intid modified", scn.intid, np.asarray(lpis_e.intid, dtype=np.int64))
    d.eq("target_vcpu modified", scn.target_vcpu, np.asarray(lpis_e.target_vcpu, dtype=np.int64))
    d.eq("hw modified", scn.hw, np.asarray(lpis_e.hw, dtype=bool))

    ref_faults = r.fault is not None and (op != "sync_pending_status" or stop)
    if not ref_faults:
        d.check(f"engine raised {err!r} but the reference completed (ret={r.ret})", err is None)
        rep = report
    else:
        f = r.fault
        if err is None:
            d.problems.append(
                f"reference faults ({'write' if f.write else 'read'} GPA {f.gpa:#x}, INTID {f.intid}, "
                f"vCPU {f.vcpu}) but the engine returned {report!r}"
            )
            rep = None
        else:
            d.eq("fault errno", errno.EFAULT, err.errno)
            d.eq("fault gpa", hex(f.gpa), hex(err.gpa))
            d.eq("fault intid", f.intid, err.intid)
            d.eq("fault vcpu", f.vcpu, err.vcpu)
            d.eq("fault write", f.write, err.write)
            rep = err.report
            d.check("GuestMemoryFault.report is None", rep is not None)

    if ref_faults and atomic:
        # nothing may have changed
        d.bytes(slots_sorted, init_bytes, eng_bytes, "atomic fault: memory changed;")
        d.eq("atomic fault: dirty log changed", init_dirty, eng_dirty)
        d.eq("atomic fault: pending_latch changed", scn.pending_latch, got.pending_latch)
        if rep is not None:
            for name in ("guest_writes", "bytes_changed"):
                if hasattr(rep, name):
                    d.eq(f"atomic fault report.{name}", 0, _field(rep, name))
            if hasattr(rep, "dirty_pages"):
                d.eq("atomic fault report.dirty_pages", [], _field(rep, "dirty_pages"))
            if hasattr(rep, "vpes_unmapped"):
                d.eq("atomic fault report vpes remapped == unmapped", _field(rep, "vpes_unmapped"),
                     _field(rep, "vpes_remapped"))
    else:
        d.bytes(slots_sorted, ref_bytes, eng_bytes, "final")
        d.eq("dirty log (mem.dirty_pages())", ref_dirty, eng_dirty)
        d.eq("pending_latch", np.asarray(ref_latch, dtype=bool), got.pending_latch)
        if rep is not None:
            for name in spec["fields"]:
                if not hasattr(rep, name):
                    d.problems.append(f"report has no field {name!r}")
                    continue
                d.eq(f"report.{name}", _field(r, name), _field(rep, name))
            if op == "sync_pending_status" and not stop:
                d.eq("report.lpi_errno", r.lpi_errno.tolist(), _field(rep, "lpi_errno"))

    if d.problems:
        kwtxt = ", ".join(f"{k}={v!r}" for k, v in kw.items())
        trace = (
            f"reference: ret={r.ret} fault={r.fault} reads={_fmt_list([hex(g) for g in r.read_trace])} "
            f"writes={_fmt_list([(hex(g), hex(v)) for g, v in r.write_trace])}"
        )
        raise AssertionError(
            f"engine {op}({kwtxt}) disagrees with the reference:\n  - "
            + "\n  - ".join(d.problems)
            + f"\n{trace}\nengine: report={report!r} error={err!r}\n"
            + scn.describe()
        )
    return r, got


def assert_large_matches(scn: Scenario, shape: str) -> None:
    """The checks of a large scenario of ``shape`` (``strategies.gen_large_scenario``): saves in
    three modes, restores (atomic except for a late fault, and running on past errors), a scan."""
    for order, atomic, v41 in (("intid", True, True), ("insertion", False, True), ("intid", False, False)):
        assert_engine_matches("save", scn, order=order, atomic=atomic, has_gicv4_1=v41)
    assert_engine_matches("sync_pending_status", scn, atomic=shape != "late_fault")
    assert_engine_matches("sync_pending_status", scn, stop_on_error=False)
    assert_engine_matches("sync_pending_table", scn, vcpu=int(scn.target_vcpu[-1]) % scn.n_vcpus, atomic=False)


def assert_save_many_matches(scns: list[Scenario], **kw) -> list:
    """``save_pending_tables_many`` over several VMs == the reference run VM by VM.

    Only for scenarios where no VM faults (the fault semantics of the batch call are checked
    separately). Returns the engine's reports.
    """
    import vlpi

    refs = []
    for s in scns:
        m = s.memory()
        r = _run_ref_save(m, s, **{k: v for k, v in kw.items() if k in ("order", "has_gicv4_1")})
        assert r.fault is None, "assert_save_many_matches needs fault-free scenarios"
        refs.append((r, _snapshot(m)))
    builts = [s.build() for s in scns]
    reports = vlpi.save_pending_tables_many([(m, p, lp, v) for m, p, lp, v in builts], **kw)
    assert len(reports) == len(scns), f"{len(reports)} reports for {len(scns)} jobs"
    for j, (s, (r, (rb, rd)), (m, _, lp, _), rep) in enumerate(zip(scns, refs, builts, reports, strict=True)):
        d = _Diff()
        eb, ed = _snapshot(m)
        d.bytes(sorted(s.slots, key=lambda x: x.gpa), rb, eb, f"job {j}")
        d.eq(f"job {j} dirty log", rd, ed)
        d.eq(f"job {j} pending_latch", s.pending_latch, np.asarray(lp.pending_latch, dtype=bool))
        for name in OPERATIONS["save"]["fields"]:
            d.eq(f"job {j} report.{name}", _field(r, name), _field(rep, name))
        if d.problems:
            raise AssertionError(
                f"save_pending_tables_many({kw}) job {j} disagrees with the reference:\n  - "
                + "\n  - ".join(d.problems) + "\n" + s.describe()
            )
    return reports


# ------------------------------------------------------------------------- shrinking
def shrink(scn: Scenario, fails, max_rounds: int = 50) -> Scenario:
    """Greedy delta-debugging: drop LPI rows (halves, then single rows) and slots while
    ``fails(scenario)`` stays True. For turning a random disagreement into a small report."""
    cur = scn
    for _ in range(max_rounds):
        progress = False
        n = cur.n_lpis
        chunk = max(n // 2, 1)
        while chunk >= 1 and not progress:
            for start in range(0, n, chunk):
                keep = np.ones(n, dtype=bool)
                keep[start : start + chunk] = False
                cand = cur.with_lpis(keep)
                if cand.n_lpis < n and _safe(fails, cand):
                    cur, progress = cand, True
                    break
            chunk //= 2
        for k in range(len(cur.slots)):
            cand = copy.deepcopy(cur)
            del cand.slots[k]
            if _safe(fails, cand):
                cur, progress = cand, True
                break
        if not progress:
            break
    return cur


def _safe(fails, scn) -> bool:
    try:
        return bool(fails(scn))
    except Exception:
        return False
