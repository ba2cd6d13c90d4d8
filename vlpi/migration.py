"""Live migration end to end: source side, snapshot, destination side, verification.

The two halves run in one process (:func:`migrate`, :func:`migrate_host`) or in two, through a
snapshot file (:func:`save_source` / :func:`save_host` -> :func:`vlpi.snapshot.write`, then
:func:`vlpi.snapshot.read` -> :func:`restore_destination`).

Source (QEMU's stop sequence): pause every vCPU; record the pending set (software
``pending_latch`` and the VPT bits of forwarded VLPIs); ``SAVE_TABLES`` per VM; one
``SAVE_PENDING_TABLES`` pass over every VM (each VM's vPEs unmapped around it, the engine's
:func:`vlpi.save_pending_tables_many`); read the registers; capture the image.

Destination (QEMU's restore order): RAM, redistributors (PROPBASER, PENDBASERs, GICR_CTLR),
ITS registers, ``RESTORE_TABLES``, GITS_CTLR, forwarding as on the source, run; then
:func:`verify` compares the pending set with the source's, difference by difference.

Error policies
--------------
``"strict"``: any error aborts; the source's vPEs are mapped back and (in :func:`migrate`) the
source resumes with the pending state it had, checked interrupt by interrupt.
``"qemu"``: what QEMU does. Its ITS VM-state handler only reports a ``SAVE_TABLES`` error and
migration goes on (the destination restores whatever the tables in RAM hold); its GICv3
handler reports a ``SAVE_PENDING_TABLES`` error, tolerates ``EFAULT`` and calls ``abort()`` on
any other error, which ends the source QEMU process: vlpi raises :class:`MigrationAborted`
with ``qemu_process_abort=True`` (the modelled source itself stays resumable). Tolerated
errors are listed in the report with what they cost.

Window estimate
---------------
While the vPEs are unmapped, an MSI for a forwarded event is lost. The report gives the
window's length as vlpi measured it and as the kernel would take it, from the exact access
counts times per-access costs (:class:`KernelCosts`; the defaults are assumptions, not
measurements, and can be set).
"""

from __future__ import annotations

import errno as _errno
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from vlpi import snapshot as S
from vlpi._repr import fields_repr
from vlpi.errors import GuestMemoryFault
from vlpi.redistributor import VMSaveReport
from vlpi.vgic import LostReason, LostRecords, LostSource, VMError

if TYPE_CHECKING:
    from vlpi.gicv4 import GICv4
    from vlpi.its.abi import ItsSaveReport
    from vlpi.memory import GuestMemory
    from vlpi.pending import SaveReport
    from vlpi.vm import VM

__all__ = [
    "POLICIES",
    "KernelCosts",
    "DEFAULT_COSTS",
    "Traffic",
    "Phase",
    "Tolerated",
    "Verification",
    "MigrationAborted",
    "SourceSave",
    "HostMigrationReport",
    "DIFF_DTYPE",
    "NOT_SAVED",
    "ITS_NOT_SAVED",
    "pending_set",
    "save_host",
    "save_source",
    "restore_destination",
    "resume_source",
    "verify",
    "migrate_host",
    "migrate",
    "MigrationReport",
    "copy_memory",
    "save",
    "load",
    "coarsen_pages",
    "FAULTS",
    "FaultPlan",
    "plan_fault",
    "protect",
]

POLICIES = ("strict", "qemu")
#: difference reasons beyond :class:`vlpi.LostReason`: the pending save of this VM failed and
#: was tolerated; the ITS tables of this VM were not saved (tolerated)
NOT_SAVED = -1
ITS_NOT_SAVED = -2
DIFF_DTYPE = np.dtype([("intid", "<u4"), ("vcpu", "<i4"), ("device_id", "<i8"), ("event_id", "<i8"),
                       ("missing", "u1"), ("reason", "<i2")])


# ============================================================================ costs, traffic
@dataclass(frozen=True)
class KernelCosts:
    """Per-access costs (nanoseconds) for the kernel's time with the vPEs unmapped.

    The defaults are ASSUMPTIONS (order of magnitude for a 2020s arm64 server, not measured):
    a 1-byte ``kvm_read_guest_lock`` (SRCU, memslot lookup, ``copy_from_user``) 100 ns; a 1-byte
    ``vgic_write_guest_lock`` (plus the dirty-log bit) 150 ns; one LPI visited by the walk
    (xarray step, target and ``hw`` checks) 10 ns; a VPT bit read 5 ns; one ``VMAPP`` + ``VSYNC``
    (unmap) or ``VMAPP`` + ``VINVALL`` (map) through the physical ITS command queue 2 µs.
    """

    read_ns: float = 100.0
    write_ns: float = 150.0
    lpi_ns: float = 10.0
    vpt_read_ns: float = 5.0
    vmapp_ns: float = 2000.0
    source: str = "assumption (order of magnitude, not measured on hardware)"

    def __post_init__(self) -> None:
        for k in ("read_ns", "write_ns", "lpi_ns", "vpt_read_ns", "vmapp_ns"):
            v = getattr(self, k)
            if not isinstance(v, (int, float)) or not np.isfinite(v) or v < 0:
                raise ValueError(f"KernelCosts.{k} must be a finite number >= 0, got {v!r}")

    def window_s(self, *, lpis: int, reads: int, writes: int, vpt_reads: int, unmapped: int, remapped: int) -> float:
        """Seconds the vPEs stay unmapped: unmaps, the walk, the maps."""
        ns = (lpis * self.lpi_ns + reads * self.read_ns + writes * self.write_ns + vpt_reads * self.vpt_read_ns
              + (unmapped + remapped) * self.vmapp_ns)
        return ns * 1e-9


DEFAULT_COSTS = KernelCosts()


@dataclass(frozen=True)
class Traffic:
    """Devices that were not quiesced: each device of each VM sends MSIs at ``msi_per_s``
    (Poisson arrivals, each to a uniformly drawn mapped event of the device) while the vPEs are
    unmapped; the window is the kernel's estimated one. Deterministic for a ``seed``."""

    msi_per_s: float
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.msi_per_s, (int, float)) or not np.isfinite(self.msi_per_s) or self.msi_per_s < 0:
            raise ValueError(f"msi_per_s must be a finite number >= 0, got {self.msi_per_s!r}")

    def draw(self, vm: VM, window_s: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(device_ids, event_ids) of the MSIs sent during ``window_s`` seconds."""
        ites = vm.its.ites()
        dev, ev = ites["device_id"].astype(np.int64), ites["event_id"].astype(np.int64)
        if dev.size == 0 or self.msi_per_s == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        o = np.lexsort((ev, dev))
        dev, ev = dev[o], ev[o]
        ud, start, cnt = np.unique(dev, return_index=True, return_counts=True)
        k = rng.poisson(self.msi_per_s * window_s, ud.size)
        which = np.repeat(start, k) + (rng.random(int(k.sum())) * np.repeat(cnt, k)).astype(np.int64)
        return dev[which], ev[which]


# ============================================================================ reports
@dataclass
class Phase:
    """One timed step (``side`` "source" or "destination")."""

    side: str
    name: str
    seconds: float
    detail: str = ""


@dataclass
class Tolerated:
    """An error the ``"qemu"`` policy reported and went on after, and what it cost."""

    vm: int
    phase: str
    errno: int
    error: str
    cost: str


@dataclass
class Verification:
    """The destination's pending set against the source's.

    Attributes
    ----------
    ok : bool
        No difference.
    expected, found : int
        Pending interrupts on the source when it stopped; on the destination after restore.
    differences : numpy.ndarray
        :data:`DIFF_DTYPE`: ``missing`` 1 = pending on the source, not on the destination;
        0 = pending only on the destination. ``reason``: a :class:`vlpi.LostReason` from the
        lost-interrupt logs, :data:`NOT_SAVED`, :data:`ITS_NOT_SAVED`, or 0 (unexplained).
    """

    ok: bool
    expected: int
    found: int
    differences: np.ndarray = field(repr=False)

    def __repr__(self) -> str:
        return fields_repr(self, ("ok", "expected", "found", "differences"), {"differences": "differences"})

    def reasons(self) -> dict[str, int]:
        """Count of differences per reason name."""
        out: dict[str, int] = {}
        for r in self.differences["reason"].tolist():
            out[_reason_name(r)] = out.get(_reason_name(r), 0) + 1
        return out

    def describe(self, max_rows: int = 20) -> str:
        """The verdict and up to ``max_rows`` differences, one per line (a string: print it)."""
        lines = [f"verification {'OK' if self.ok else 'FAILED'}: {self.expected:,} pending before, "
                 f"{self.found:,} after, {self.differences.size:,} differences"]
        for d in self.differences[:max_rows]:
            lines.append(f"  INTID {int(d['intid'])} vCPU {int(d['vcpu'])} device {int(d['device_id'])} "
                         f"event {int(d['event_id'])}: {'missing on destination' if d['missing'] else 'extra'} "
                         f"({_reason_name(int(d['reason']))})")
        if self.differences.size > max_rows:
            lines.append(f"  ... {self.differences.size - max_rows} more")
        return "\n".join(lines)


def _reason_name(r: int) -> str:
    if r == NOT_SAVED:
        return "PENDING_NOT_SAVED"
    if r == ITS_NOT_SAVED:
        return "ITS_TABLES_NOT_SAVED"
    if r == 0:
        return "UNEXPLAINED"
    try:
        return LostReason(r).name
    except ValueError:
        return f"REASON_{r}"


class MigrationAborted(RuntimeError):
    """The migration stopped. ``report`` is what was done (phases, rollback check);
    ``cause`` the error; ``qemu_process_abort`` True where QEMU would ``abort()`` the source
    process (policy "qemu", a non-EFAULT ``SAVE_PENDING_TABLES`` error)."""

    def __init__(self, message: str, *, phase: str, cause: BaseException | None,
                 report: HostMigrationReport | None = None, qemu_process_abort: bool = False) -> None:
        super().__init__(message)
        self.phase = phase
        self.cause = cause
        self.report = report
        self.qemu_process_abort = qemu_process_abort


@dataclass
class SourceSave:
    """What the source side produced: the snapshot (images) plus its own report."""

    snapshot: S.Snapshot
    phases: list[Phase]
    tolerated: list[Tolerated]
    its_saves: list[ItsSaveReport | None] = field(repr=False)
    pending_saves: list[VMSaveReport] = field(repr=False)
    window_lost: list[LostRecords] = field(repr=False)
    window_vlpi_s: float = 0.0
    window_kernel_s: float = 0.0
    traffic_sent: int = 0

    def __repr__(self) -> str:
        return fields_repr(self, ("snapshot", "phases", "tolerated", "its_saves", "pending_saves", "window_lost",
                                  "window_vlpi_s", "window_kernel_s", "traffic_sent"),
                           {"phases": "phases", "tolerated": "errors", "its_saves": "reports",
                            "pending_saves": "reports", "window_lost": "VMs"})


@dataclass
class HostMigrationReport:
    """A whole migration: phases on both sides, per-VM numbers, verification, window.

    ``vms`` holds one :class:`vlpi.vm.MigrationReport`-compatible entry per VM
    (``its_save``, ``pending_save``, ``registers``, ``forwarded``) plus its verification.
    ``lost_in_window`` holds the records (:class:`~vlpi.vgic.LostRecords`) of every interrupt
    lost while the vPEs were unmapped; ``dirty_pages`` and ``bytes_changed`` are counts over the
    host (in ``page_size`` pages), the per-VM reports hold the page arrays. :meth:`describe`
    returns the table ``vlpi migrate`` prints.
    """

    policy: str
    page_size: int
    phases: list[Phase]
    tolerated: list[Tolerated]
    vms: list[MigrationReport]
    verification: list[Verification]
    lpis: int
    forwarded: int
    bytes_changed: int
    dirty_pages: int
    vpes_unmapped: int
    vpes_remapped: int
    traffic_sent: int
    lost_in_window: np.ndarray = field(repr=False)
    window_vlpi_s: float = 0.0
    window_kernel_s: float = 0.0
    costs: KernelCosts = DEFAULT_COSTS
    snapshot_bytes: int | None = None
    aborted: str | None = None
    rollback_lost: int | None = None
    n_vms: int = 0

    @property
    def ok(self) -> bool:
        return self.aborted is None and all(v.ok for v in self.verification)

    def __repr__(self) -> str:
        return fields_repr(
            self,
            ("ok", "policy", "n_vms", "lpis", "forwarded", "bytes_changed", "dirty_pages", "vpes_unmapped",
             "vpes_remapped", "traffic_sent", "lost_in_window", "window_vlpi_s", "window_kernel_s",
             "snapshot_bytes", "aborted", "rollback_lost", "phases", "tolerated", "vms", "verification"),
            {"lost_in_window": "records", "phases": "phases", "tolerated": "errors", "vms": "VMs",
             "verification": "VMs"},
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary (what ``vlpi migrate --json`` prints)."""
        lost = self.lost_in_window
        return {
            "ok": self.ok,
            "policy": self.policy,
            "page_size": self.page_size,
            "phases": [asdict(p) for p in self.phases],
            "tolerated": [asdict(t) for t in self.tolerated],
            "vms": self.n_vms,
            "lpis": self.lpis,
            "forwarded": self.forwarded,
            "bytes_changed": self.bytes_changed,
            "dirty_pages": self.dirty_pages,
            "vpes_unmapped": self.vpes_unmapped,
            "vpes_remapped": self.vpes_remapped,
            "traffic_sent": self.traffic_sent,
            "interrupts_lost": int(lost.size),
            "lost_by_reason": {LostReason(int(r)).name: int(c) for r, c in
                               zip(*np.unique(lost["reason"], return_counts=True), strict=True)},
            "lost": [{"intid": int(r["intid"]), "vcpu": int(r["vcpu"]), "device_id": int(r["device_id"]),
                      "event_id": int(r["event_id"]), "reason": LostReason(int(r["reason"])).name,
                      "time_s": float(r["time_s"])}
                     for r in lost[:1000]],
            "window_vlpi_s": self.window_vlpi_s,
            "window_kernel_s": self.window_kernel_s,
            "kernel_costs": asdict(self.costs),
            "verification": {"ok": all(v.ok for v in self.verification),
                             "expected": sum(v.expected for v in self.verification),
                             "found": sum(v.found for v in self.verification),
                             "differences": sum(int(v.differences.size) for v in self.verification),
                             "reasons": _merge_counts(v.reasons() for v in self.verification)},
            "snapshot_bytes": self.snapshot_bytes,
            "aborted": self.aborted,
            "rollback_lost": self.rollback_lost,
        }

    def describe(self) -> str:
        """The human-readable table ``vlpi migrate`` prints (a string: print it)."""
        lines = [f"{'side':<12} {'phase':<38} {'time':>10}  detail"]
        for p in self.phases:
            lines.append(f"{p.side:<12} {p.name:<38} {p.seconds * 1e3:>8.1f} ms  {p.detail}")
        tot = sum(p.seconds for p in self.phases)
        lines.append(f"{'':<12} {'total':<38} {tot * 1e3:>8.1f} ms")
        d = self.to_dict()
        lines += [
            "",
            f"VMs {self.n_vms}, LPIs {self.lpis:,} ({self.forwarded:,} forwarded), policy {self.policy}",
            f"bytes changed {self.bytes_changed:,}, dirty pages {self.dirty_pages:,} "
            f"({self.page_size // 1024} KiB host pages), vPEs unmapped/remapped {self.vpes_unmapped}/"
            f"{self.vpes_remapped}",
            f"vPE-unmapped window: vlpi {self.window_vlpi_s * 1e3:.2f} ms, kernel est. "
            f"{self.window_kernel_s * 1e3:.2f} ms (costs: {self.costs.source})",
            f"MSIs during the window {self.traffic_sent:,}, interrupts lost {d['interrupts_lost']:,} "
            f"{d['lost_by_reason'] or ''}",
        ]
        for t in self.tolerated:
            lines.append(f"tolerated: VM {t.vm} {t.phase}: {t.error} -> {t.cost}")
        if self.snapshot_bytes is not None:
            lines.append(f"snapshot {self.snapshot_bytes:,} bytes")
        if self.aborted:
            lines.append(f"ABORTED: {self.aborted}; source resumed, interrupts lost in rollback: {self.rollback_lost}")
        v = d["verification"]
        if self.aborted:
            lines.append("verification FAILED: the migration was aborted (nothing to verify on a destination)")
        else:
            lines.append(f"verification {'OK' if v['ok'] else 'FAILED'}: {v['expected']:,} pending when the source "
                         f"stopped, {v['found']:,} on the destination, {v['differences']:,} differences "
                         f"{v['reasons'] or ''}")
        for ver in self.verification:
            if not ver.ok:
                lines.append(ver.describe(10))
                break
        return "\n".join(lines)


    def table(self) -> str:
        """The same string as :meth:`describe` (the earlier name, kept for existing callers)."""
        return self.describe()


def _merge_counts(dicts: Iterable[dict[str, int]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for d in dicts:
        for k, v in d.items():
            out[k] = out.get(k, 0) + v
    return out


# ============================================================================ pending sets
def pending_set(vm: VM, *, events: bool = True) -> np.ndarray:
    """The VM's pending interrupts (:data:`vlpi.snapshot.PENDING_DTYPE`, sorted by vCPU then
    INTID): software ``pending_latch`` ∪ the hardware state of forwarded VLPIs, each with the
    first event (creation order) that maps it (``events=False``: device and event left -1)."""
    lp = vm.lpis
    it = np.asarray(lp.intid, np.int64)
    tg = np.asarray(lp.target_vcpu, np.int64)
    hw = np.asarray(lp.hw, bool)
    p = np.asarray(lp.pending_latch, bool).copy()
    h = np.flatnonzero(hw & (tg >= 0))
    if h.size and vm.gicv4 is not None:
        p[h] |= vm.gicv4.vlpi_pending(tg[h], it[h])
    rows = np.flatnonzero(p)
    rows = rows[_by_vcpu_then_intid(tg[rows], it[rows])]
    out = np.zeros(rows.size, S.PENDING_DTYPE)
    out["intid"], out["vcpu"], out["forwarded"] = it[rows], tg[rows], hw[rows]
    if events:
        out["device_id"], out["event_id"] = _events_of(vm, it[rows])
    else:
        out["device_id"] = out["event_id"] = -1
    return out


def _by_vcpu_then_intid(tg: np.ndarray, it: np.ndarray) -> np.ndarray:
    """The order sorting (vCPU, INTID) pairs (unique keys). When the INTIDs already ascend, a
    stable sort by vCPU alone gives it: a radix sort on 16-bit vCPU ids, no 64-bit key sort."""
    if it.size > 1 and np.all(it[1:] > it[:-1]) and int(tg.min()) >= -(1 << 15) and int(tg.max()) < (1 << 15):
        return np.argsort(tg.astype(np.int16), kind="stable")
    return np.argsort((tg << 32) | it)


def _events_of(vm: VM, intids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    dev, evt, ii = vm.its.ite_events()
    ii = ii.astype(np.int64)
    d = np.full(intids.size, -1, np.int64)
    e = np.full(intids.size, -1, np.int64)
    if ii.size == 0 or intids.size == 0:
        return d, e
    first = np.full(int(max(ii.max(), intids.max())) + 1, -1, np.int64)
    first[ii[::-1]] = np.arange(ii.size - 1, -1, -1)  # the last write wins: the first ITE per INTID
    r = first[intids]
    hit = r >= 0
    d[hit] = dev[r[hit]]
    e[hit] = evt[r[hit]]
    return d, e


def _member(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``np.isin(a, b)`` for a sorted ``b`` (pending sets are sorted by key)."""
    if b.size == 0:
        return np.zeros(a.size, bool)
    if b.size > 1 and np.any(b[1:] < b[:-1]):
        b = np.sort(b)
    j = np.minimum(np.searchsorted(b, a), b.size - 1)
    hit: npt.NDArray[np.bool_] = b[j] == a
    return hit


def _keys(p: np.ndarray) -> np.ndarray:
    return (p["vcpu"].astype(np.int64) << 32) | p["intid"].astype(np.int64)


def verify(expected: np.ndarray, dst: VM, *, logs: Sequence[np.ndarray] = (), fallback_reason: int = 0) -> Verification:
    """Compare ``expected`` (the source's pending set) with ``dst``'s pending set now.

    Each difference gets the reason of the latest record naming its INTID (and vCPU, when
    the record has one) in ``logs`` (lost-interrupt records, most relevant first) or in
    ``dst.lost``; otherwise ``fallback_reason``.
    """
    found = pending_set(dst, events=False)
    ke, kf = _keys(expected), _keys(found)
    miss = expected[~_member(ke, kf)]
    extra = found[~_member(kf, ke)]
    if extra.size:  # name the events only where needed
        extra["device_id"], extra["event_id"] = _events_of(dst, extra["intid"].astype(np.int64))
    diff = np.zeros(miss.size + extra.size, DIFF_DTYPE)
    for name in ("intid", "vcpu", "device_id", "event_id"):
        diff[name] = np.concatenate([miss[name], extra[name]])
    diff["missing"][: miss.size] = 1
    diff["reason"] = fallback_reason
    if diff.size:
        recs = [np.asarray(dst.lost.records)] + [np.asarray(x) for x in reversed(list(logs))]
        rec = np.concatenate(recs[::-1]) if recs else None  # most relevant last: it wins
        if rec is not None and rec.size:
            key_iv = (rec["vcpu"].astype(np.int64) << 32) | rec["intid"].astype(np.int64)
            for keys, mine in ((rec["intid"].astype(np.int64), diff["intid"].astype(np.int64)),
                               (key_iv, _keys(diff))):
                order = np.argsort(keys, kind="stable")
                ks = keys[order]
                j = np.searchsorted(ks, mine, side="right") - 1
                ok = (j >= 0) & (ks[np.maximum(j, 0)] == mine)
                diff["reason"][ok] = rec["reason"][order[j[ok]]]
    return Verification(diff.size == 0, int(expected.size), int(found.size), diff)


def coarsen_pages(pages_4k: np.ndarray, page_size: int) -> np.ndarray:
    """4 KiB page numbers (GPA >> 12) as the host's dirty log has them (GPA >> PAGE_SHIFT)."""
    if page_size not in S.PAGE_SIZES:
        raise ValueError(f"page_size must be one of {S.PAGE_SIZES}, got {page_size}")
    shift = {4096: 0, 16384: 2, 65536: 4}[page_size]
    return np.unique(np.asarray(pages_4k, np.int64) >> shift)


# ============================================================================ source side
def _check_policy(policy: str) -> None:
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")


def _not_quiescent(vm: VM) -> OSError | None:
    if not vm.initialized:
        return VMError(_errno.ENXIO, "SAVE_PENDING_TABLES: the vgic is not initialised")
    if vm.running.any():
        return VMError(_errno.EBUSY, f"SAVE_PENDING_TABLES: vCPU {int(np.flatnonzero(vm.running)[0])} is running")
    return None


def save_host(
    vms: Sequence[VM],
    *,
    policy: str = "strict",
    traffic: Traffic | None = None,
    during: Callable[[VM], object] | None = None,
    costs: KernelCosts = DEFAULT_COSTS,
    page_size: int = 4096,
    order: str = "intid",
    progress: Callable[[str], object] | None = None,
) -> SourceSave:
    """The source side for every VM of a host: pause, pending sets, ``SAVE_TABLES`` per VM, one
    ``SAVE_PENDING_TABLES`` pass (:func:`vlpi.save_pending_tables_many`, vPEs unmapped around it;
    ``traffic`` and ``during(vm)`` run after the walk while they are unmapped), registers,
    images.

    Raises
    ------
    MigrationAborted
        Policy "strict": on any error; policy "qemu": on a non-EFAULT ``SAVE_PENDING_TABLES``
        error. Every vPE is mapped back; the VMs stay paused (:func:`resume_source`).
    """
    from vlpi.its.abi import ItsTableError
    from vlpi.its.its import ItsStateError
    from vlpi.pending import save_pending_tables_many
    _check_policy(policy)
    if page_size not in S.PAGE_SIZES:
        raise ValueError(f"page_size must be one of {S.PAGE_SIZES}, got {page_size}")
    if not isinstance(costs, KernelCosts):
        raise TypeError(f"costs must be a KernelCosts, got {type(costs).__name__}")
    vms = list(vms)
    if not vms:
        raise ValueError("no VMs to migrate")
    if len({id(vm.mem) for vm in vms}) != len(vms):
        raise ValueError("VMs must not share guest memory")
    phases: list[Phase] = []
    tol: list[Tolerated] = []
    say = progress or (lambda s: None)

    def phase(name: str, t0: float, detail: str = "") -> None:
        phases.append(Phase("source", name, time.perf_counter() - t0, detail))

    t0 = time.perf_counter()
    for vm in vms:
        vm.pause()
    expected = [pending_set(vm) for vm in vms]
    phase("pause + pending sets", t0, f"{sum(e.size for e in expected):,} pending")

    say("SAVE_TABLES")
    t0 = time.perf_counter()
    its_reps: list[ItsSaveReport | None] = []
    its_failed = np.zeros(len(vms), bool)
    for i, vm in enumerate(vms):
        try:
            its_reps.append(vm.save_its_tables())
        except (ItsTableError, ItsStateError, GuestMemoryFault, VMError) as e:
            if policy == "strict":
                phase("SAVE_TABLES", t0, "failed")
                raise MigrationAborted(f"VM {i}: SAVE_TABLES failed: {e}", phase="SAVE_TABLES", cause=e) from e
            its_reps.append(None)
            its_failed[i] = True
            tol.append(Tolerated(i, "SAVE_TABLES", int(e.errno or 0), str(e),
                                 f"ITS tables in guest RAM not (fully) written: up to {vm.its.n_ites:,} ITEs may "
                                 "restore stale or not at all"))
    ok_its = [r for r in its_reps if r is not None]
    phase("SAVE_TABLES", t0, f"{sum(r.ites_written for r in ok_its):,} ITEs, "
          f"{sum(r.bytes_written for r in ok_its):,} bytes written, "
          f"{sum(coarsen_pages(r.dirty_pages, page_size).size for r in ok_its):,} dirty pages")

    say("SAVE_PENDING_TABLES")
    t0 = time.perf_counter()
    v41 = [vm.gic == "v4.1" for vm in vms]
    unmapped = [0] * len(vms)
    remapped = [0] * len(vms)
    reports: list[SaveReport | None] = [None] * len(vms)
    pend_failed = np.zeros(len(vms), bool)
    window_lost: list[LostRecords] = [LostRecords() for _ in vms]
    marks = [len(vm.lost) for vm in vms]
    rng = np.random.default_rng(traffic.seed) if traffic is not None else None
    sent = 0
    t_window = t_kernel = 0.0
    for i, vm in enumerate(vms):
        err = _not_quiescent(vm)
        if err is not None:
            phase("SAVE_PENDING_TABLES", t0, "refused")
            if policy == "qemu":
                raise MigrationAborted(f"VM {i}: {err}; QEMU calls abort(): the source QEMU process dies",
                                       phase="SAVE_PENDING_TABLES", cause=err, qemu_process_abort=True)
            raise MigrationAborted(f"VM {i}: {err}", phase="SAVE_PENDING_TABLES", cause=err)
    tw = time.perf_counter()
    abort: BaseException | None = None
    try:
        for i, vm in enumerate(vms):
            if v41[i]:
                unmapped[i] = _gicv4(vm).unmap_all_vpes()
        # one pass per GIC generation (the engine takes has_gicv4_1 per call)
        for gen in (True, False):
            idx = [i for i in range(len(vms)) if v41[i] == gen]
            while idx:
                jobs = [(vms[i].mem, vms[i].pendbaser, vms[i].lpis, _gicv4(vms[i]).vpt if gen else None) for i in idx]
                try:
                    for i, r in zip(idx, save_pending_tables_many(jobs, has_gicv4_1=gen, order=order, atomic=False),
                                    strict=True):
                        reports[i] = r
                    idx = []
                except GuestMemoryFault as e:
                    j = getattr(e, "job", 0) or 0
                    for i, r in zip(idx[:j], getattr(e, "reports", []) or [], strict=False):
                        reports[i] = r
                    bad = idx[j]
                    reports[bad] = e.report
                    pend_failed[bad] = True
                    if policy == "strict":
                        abort = MigrationAborted(f"VM {bad}: SAVE_PENDING_TABLES: {e}", phase="SAVE_PENDING_TABLES",
                                                 cause=e)
                        break
                    lp = vms[bad].lpis
                    later = int(np.count_nonzero((np.asarray(lp.target_vcpu) >= 0) &
                                                 (np.asarray(lp.intid) > (e.intid or 0)))) if order == "intid" else -1
                    tol.append(Tolerated(bad, "SAVE_PENDING_TABLES", _errno.EFAULT, str(e),
                                         f"walk stopped at INTID {e.intid}: "
                                         + (f"{later:,} later LPIs not saved" if later >= 0 else
                                            "the LPIs after it in creation order not saved")))
                    idx = idx[j + 1 :]
            if abort is not None:
                break
        if abort is None:
            # the vPEs are still unmapped: devices that were not quiesced lose their VLPIs
            for i, vm in enumerate(vms):
                sr = reports[i]
                assert sr is not None  # no abort: every VM's walk ran
                est = costs.window_s(lpis=sr.lpis_total, reads=sr.guest_reads, writes=sr.guest_writes,
                                     vpt_reads=sr.vpt_reads, unmapped=unmapped[i], remapped=unmapped[i])
                t_kernel += est
                if traffic is None and during is None:
                    continue
                latch0 = np.asarray(vm.lpis.pending_latch, bool).copy()
                intid0 = np.asarray(vm.lpis.intid).copy()
                if traffic is not None:
                    assert rng is not None  # made with the traffic
                    d, ev = traffic.draw(vm, est, rng)
                    sent += int(d.size)
                    if d.size:
                        vm.signal_msi(d, ev)
                if during is not None:
                    during(vm)
                lp = vm.lpis
                same = (len(lp) == intid0.size) and np.array_equal(np.asarray(lp.intid), intid0)
                if same:
                    newly = np.flatnonzero(np.asarray(lp.pending_latch, bool) & ~latch0)
                    if newly.size:  # pending now, but after the walk: not in the image
                        it = np.asarray(lp.intid, np.int64)[newly]
                        d2, e2 = _events_of(vm, it)
                        vm.lost.record(LostSource.SAVE, LostReason.NOT_IN_SAVED_IMAGE, d2, e2, it,
                                       np.asarray(lp.target_vcpu)[newly])
    finally:
        for i, vm in enumerate(vms):
            if v41[i]:
                remapped[i] = _gicv4(vm).map_all_vpes()
        t_window = time.perf_counter() - tw
    for i, vm in enumerate(vms):  # what the VM logged in the window (VLPIs on unmapped vPEs, ...)
        if vm.gic == "v4.0" and reports[i] is not None:
            _log_unsaved_vlpis(vm)
        window_lost[i] = vm.lost.records[marks[i]:].copy()
    if abort is not None:
        phase("SAVE_PENDING_TABLES", t0, "fault")
        raise abort
    pend_reps = [VMSaveReport(reports[i], unmapped[i], remapped[i], int(window_lost[i].size), window_lost[i])
                 for i in range(len(vms))]
    ok_rep = [r for r in reports if r is not None]
    phase("SAVE_PENDING_TABLES", t0,
          f"{sum(r.lpis_total for r in ok_rep):,} LPIs, {sum(r.bytes_changed for r in ok_rep):,} bytes changed, "
          f"{sum(coarsen_pages(r.dirty_pages, page_size).size for r in ok_rep):,} dirty pages, "
          f"{sum(unmapped)} vPEs unmapped")

    t0 = time.perf_counter()
    images: list[S.VMImage] = []
    for i, vm in enumerate(vms):
        im = S.capture(vm, pending=expected[i], name=f"vm{i}", page_size=page_size)
        im.meta["its_saved"] = not bool(its_failed[i])
        im.meta["pending_saved"] = not bool(pend_failed[i])
        images.append(im)
    phase("registers + image", t0, f"{sum(im.ram_bytes for im in images):,} RAM bytes")
    snap = S.Snapshot(images, {"policy": policy, "page_size": page_size, "order": order,
                               "kernel_window_s": t_kernel, "vlpi_window_s": t_window})
    return SourceSave(snap, phases, tol, its_reps, pend_reps, window_lost, t_window, t_kernel, sent)


def _gicv4(vm: VM) -> GICv4:
    """The GICv4.x of a VM on such a host (callers have checked ``vm.gic``)."""
    assert vm.gicv4 is not None
    return vm.gicv4


def _log_unsaved_vlpis(vm: VM) -> None:
    """GICv4.0: pending VLPIs whose state the save could not read (saved as not pending) go
    into the VM's lost-interrupt log as VLPI_UNSAVED."""
    lp = vm.lpis
    tg = np.asarray(lp.target_vcpu, np.int64)
    it = np.asarray(lp.intid, np.int64)
    h = np.flatnonzero(np.asarray(lp.hw, bool) & ~np.asarray(lp.pending_latch, bool) & (tg >= 0))
    p = _gicv4(vm).vlpi_pending(tg[h], it[h]) if h.size else np.zeros(0, bool)
    if p.any():
        d, e = _events_of(vm, it[h[p]])
        vm.lost.record(LostSource.SAVE, LostReason.VLPI_UNSAVED, d, e, it[h[p]], tg[h[p]])


def save_source(vm: VM, **kw: Any) -> SourceSave:
    """:func:`save_host` for one VM."""
    return save_host([vm], **kw)


def resume_source(vms: VM | list[VM] | tuple[VM, ...], expected: Sequence[np.ndarray] | None = None) -> int:
    """Run the source VMs again (their vPEs are mapped: every save path maps them back) and
    return how many interrupts of ``expected`` (pending sets taken when they stopped) are no
    longer pending: 0 when nothing was lost."""
    vms = list(vms) if isinstance(vms, (list, tuple)) else [vms]
    lost = 0
    for i, vm in enumerate(vms):
        if vm.gicv4 is not None:
            vm.gicv4.map_all_vpes()
        vm.run()
        if expected is not None:
            now = pending_set(vm, events=False)
            lost += int(np.count_nonzero(~_member(_keys(expected[i]), _keys(now))))
    return lost


# ============================================================================ destination
def restore_destination(
    snap: S.Snapshot,
    *,
    gic: str | None = None,
    run: bool = True,
    forward: bool | tuple[npt.ArrayLike, npt.ArrayLike] = True,
    prepare: Callable[[VM], object] | None = None,
    progress: Callable[[int], object] | None = None,
    forwarded_out: list[Any] | None = None,
) -> tuple[list[VM], list[Phase], list[Verification]]:
    """The destination side: each VM restored in QEMU's order (:func:`vlpi.snapshot.restore`)
    and verified against the source's pending set. ``forward``: True forwards the events the
    source had forwarded, False none, or (device_ids, event_ids) those (one-VM snapshots);
    ``forwarded_out``, if a list, receives per VM which events ended up forwarded.

    Returns
    -------
    (vms, phases, verifications)
    """
    out: list[VM] = []
    ver: list[Verification] = []
    t = {"ram": 0.0, "registers": 0.0, "forward": 0.0}
    fwd_masks: list[Any] = []
    tv = 0.0
    for im in snap.vms:
        ti: dict[str, Any] = {}
        vm = S.restore(im, gic=gic, forward=forward, run=run, prepare=prepare, timings=ti)
        for k in t:
            t[k] += ti.get(k, 0.0)
        fwd_masks.append(ti.get("forwarded"))
        t0 = time.perf_counter()
        fb = 0
        if not im.meta.get("pending_saved", True):
            fb = NOT_SAVED
        elif not im.meta.get("its_saved", True):
            fb = ITS_NOT_SAVED
        ver.append(verify(im.pending, vm, logs=[im.lost], fallback_reason=fb))
        tv += time.perf_counter() - t0
        out.append(vm)
        if progress is not None:
            progress(1)
    phases = [
        Phase("destination", "RAM + vCPUs", t["ram"]),
        Phase("destination", "redistributors + ITS + RESTORE_TABLES", t["registers"]),
        Phase("destination", "forwarding (VFIO)", t["forward"]),
        Phase("destination", "verify", tv),
    ]
    if forwarded_out is not None:
        forwarded_out.extend(fwd_masks)
    return out, phases, ver


# ============================================================================ one call
def migrate_host(
    vms: Sequence[VM],
    *,
    policy: str = "strict",
    traffic: Traffic | None = None,
    during: Callable[[VM], object] | None = None,
    costs: KernelCosts = DEFAULT_COSTS,
    page_size: int = 4096,
    order: str = "intid",
    gic: str | None = None,
    run: bool = True,
    forward: bool | tuple[npt.ArrayLike, npt.ArrayLike] = True,
    snapshot_path: str | os.PathLike[str] | None = None,
    through_bytes: bool = False,
    corrupt: Callable[[bytes], bytes] | None = None,
    prepare: Callable[[VM], object] | None = None,
    resume_on_abort: bool = True,
    progress: Callable[[str], object] | None = None,
) -> tuple[list[VM], HostMigrationReport]:
    """Migrate every VM of a host: :func:`save_host`, the snapshot (through ``snapshot_path``
    when given, or its bytes with ``through_bytes``; ``corrupt`` may alter those bytes, to test
    a bad snapshot), :func:`restore_destination`, verification.

    On an abort (any side) the source VMs' vPEs are mapped back and, with ``resume_on_abort``,
    they run again; :class:`MigrationAborted` is raised with a report whose ``rollback_lost``
    counts interrupts the source lost (0 expected).

    Returns
    -------
    (vms, report) : tuple[list of VM, HostMigrationReport]
        The destination VMs (in the order of ``vms``) and the report.
    """
    vms = list(vms)
    try:
        src = save_host(vms, policy=policy, traffic=traffic, during=during, costs=costs, page_size=page_size,
                        order=order, progress=progress)
    except MigrationAborted as e:
        lost = resume_source(vms, None) if resume_on_abort else None
        e.report = _report(policy, page_size, costs, [], [], vms, None, None, aborted=f"{e.phase}: {e}",
                           rollback_lost=lost)
        raise
    expected = [im.pending for im in src.snapshot.vms]
    phases = list(src.phases)
    size = None
    try:
        snap = src.snapshot
        if snapshot_path is not None or through_bytes or corrupt is not None:
            t0 = time.perf_counter()
            if snapshot_path is not None:
                size = S.write(snapshot_path, snap)
                phases.append(Phase("source", "write snapshot", time.perf_counter() - t0, f"{size:,} bytes"))
                t0 = time.perf_counter()
                if corrupt is None:
                    snap = S.read(snapshot_path)
                else:  # damaged in transit: the file on disk stays as written
                    with open(snapshot_path, "rb") as f:
                        snap = S.from_bytes(corrupt(f.read()), snapshot_path)
            else:
                data = S.to_bytes(snap)
                size = len(data)
                if corrupt is not None:
                    data = corrupt(data)
                snap = S.from_bytes(data)
            phases.append(Phase("destination", "read + check snapshot", time.perf_counter() - t0))
        if progress is not None:
            progress("restore")
        fwd_masks: list[Any] = []
        dst, dphases, ver = restore_destination(
            snap, gic=gic, run=run, prepare=prepare, forward=forward, forwarded_out=fwd_masks,
            progress=None if progress is None else (lambda _n: progress("vm restored")))
    except Exception as e:  # noqa: BLE001  (any destination failure rolls the source back)
        lost = resume_source(vms, expected) if resume_on_abort else None
        rep = _report(policy, page_size, costs, phases, src.tolerated, vms, src, None,
                      aborted=f"destination: {type(e).__name__}: {e}", rollback_lost=lost, snapshot_bytes=size)
        raise MigrationAborted(f"destination failed: {e}", phase="destination", cause=e, report=rep) from e
    phases += dphases
    rep = _report(policy, page_size, costs, phases, src.tolerated, vms, src, ver, snapshot_bytes=size, dst=dst,
                  forwarded=fwd_masks)
    return dst, rep


def _report(
    policy: str,
    page_size: int,
    costs: KernelCosts,
    phases: list[Phase],
    tolerated: Sequence[Tolerated],
    vms: Sequence[VM],
    src: SourceSave | None,
    ver: list[Verification] | None,
    *,
    aborted: str | None = None,
    rollback_lost: int | None = None,
    snapshot_bytes: int | None = None,
    dst: list[VM] | None = None,
    forwarded: list[Any] | None = None,
) -> HostMigrationReport:
    entries: list[MigrationReport] = []
    bytes_changed = dirty = unm = rem = 0
    lost = LostRecords()
    if src is not None:
        for i, im in enumerate(src.snapshot.vms):
            pr = src.pending_saves[i]
            e = pr.engine
            its = src.its_saves[i]
            pages: list[np.ndarray] = [] if e is None else [np.asarray(e.dirty_pages)]
            if its is not None:
                pages.append(np.asarray(its.dirty_pages))
            dirty += int(coarsen_pages(np.concatenate(pages) if pages else np.zeros(0, np.int64), page_size).size)
            bytes_changed += 0 if e is None else int(e.bytes_changed)
            unm += pr.vpes_unmapped
            rem += pr.vpes_remapped
            entries.append(MigrationReport(its, pr, im.meta["registers"],
                                           None if not forwarded else forwarded[i]))
        lost = LostRecords(np.concatenate(src.window_lost)) if src.window_lost else lost
    lpis = sum(len(vm.lpis) for vm in vms)
    fw = sum(int(np.count_nonzero(vm.lpis.hw)) for vm in vms)
    return HostMigrationReport(
        policy, page_size, phases, list(tolerated), entries, list(ver or []), lpis, fw, bytes_changed, dirty, unm,
        rem, 0 if src is None else src.traffic_sent, lost, 0.0 if src is None else src.window_vlpi_s,
        0.0 if src is None else src.window_kernel_s, costs, snapshot_bytes, aborted, rollback_lost, len(vms),
    )


# ============================================================================ fault injection
FAULTS = ("none", "its-save", "pending-save", "restore", "snapshot")


def protect(mem: GuestMemory, gpa: int, size: int = 4096, *, hole: bool = False) -> Callable[[], None]:
    """Make ``[gpa, gpa + size)`` read-only (``hole=True``: unmapped) by splitting its memslot
    (the bytes stay where they are); returns a function that puts the slot back as it was.
    The split slot's dirty log is cleared."""
    s = mem.slot_at(gpa)
    if s is None:
        raise ValueError(f"GPA {gpa:#x} is not in a memslot")
    lo = max(s.gpa, gpa)
    hi = min(s.end, gpa + size)
    base, data, ro = s.gpa, s.data, s.readonly
    mem.remove_slot(base)
    made = []
    for a, b, r in ((base, lo, ro), (lo, hi, True), (hi, base + s.size, ro)):
        if b > a and not (hole and a == lo):
            mem.add_slot(a, b - a, readonly=r, data=data[a - base : b - base])
            made.append(a)

    def undo() -> None:
        for a in made:
            mem.remove_slot(a)
        mem.add_slot(base, data.size, readonly=ro, data=data)

    return undo


@dataclass
class FaultPlan:
    """A fault to inject into a migration: ``description`` says where it is aimed, ``undo`` heals
    the source, ``prepare`` (for the destination) and ``corrupt`` (for the snapshot bytes) go to
    :func:`migrate_host`."""

    kind: str
    description: str
    undo: Callable[[], None] = lambda: None
    prepare: Callable[[VM], object] | None = None
    corrupt: Callable[[bytes], bytes] | None = None

    def describe(self) -> str:
        """Where the fault is aimed (``description``), as for every ``describe()``: a string."""
        return self.description


def _pending_byte(vm: VM, at: float) -> tuple[int, int, int]:
    p = pending_set(vm)
    p = p[np.argsort(p["intid"], kind="stable")]
    if p.size == 0:
        raise ValueError("the VM has no pending LPI to aim a fault at")
    r = p[min(p.size - 1, int(at * p.size))]
    pend = int(vm.read_pendbaser(int(r["vcpu"]))) & 0x000F_FFFF_FFFF_0000
    return pend + int(r["intid"]) // 8, int(r["intid"]), int(r["vcpu"])


def plan_fault(vms: Sequence[VM], kind: str, at: float = 0.5) -> FaultPlan:
    """Aim a fault of ``kind`` (:data:`FAULTS`) at position ``at`` in [0, 1): which VM, and
    which pending LPI (in INTID order) or device inside it.

    * "its-save": the page of a device's ITT becomes read-only (``SAVE_TABLES`` faults);
    * "pending-save": the page holding a pending LPI's bit becomes read-only
      (``SAVE_PENDING_TABLES`` faults writing it);
    * "restore": on the destination, that page is read-only (``RESTORE_TABLES`` faults clearing
      the bit);
    * "snapshot": one bit of the snapshot's bytes is flipped in transit.
    """
    if kind not in FAULTS:
        raise ValueError(f"fault must be one of {FAULTS}, got {kind!r}")
    if not 0.0 <= at < 1.0:
        raise ValueError(f"fault position must be in [0, 1), got {at}")
    vms = list(vms)
    i = min(len(vms) - 1, int(at * len(vms)))
    vm = vms[i]
    if kind == "none":
        return FaultPlan(kind, "no fault")
    if kind == "its-save":
        devs = sorted(vm.its.devices)
        if not devs:
            raise ValueError("the VM has no device whose ITT could fault")
        d = devs[min(len(devs) - 1, int(at * len(devs)))]
        itt = vm.its.devices[d][0]
        return FaultPlan(kind, f"VM {i}: ITT of device {d} at {itt:#x} read-only",
                         undo=protect(vm.mem, itt & ~0xFFF))
    if kind == "pending-save":
        gpa, intid, v = _pending_byte(vm, at)
        return FaultPlan(kind, f"VM {i}: pending table byte {gpa:#x} (INTID {intid}, vCPU {v}) read-only",
                         undo=protect(vm.mem, gpa & ~0xFFF))
    if kind == "restore":
        gpa, intid, v = _pending_byte(vm, at)
        seen = {"n": 0}

        def prepare(dst: VM) -> None:
            if seen["n"] == i:
                protect(dst.mem, gpa & ~0xFFF)
            seen["n"] += 1

        return FaultPlan(kind, f"destination VM {i}: pending table byte {gpa:#x} (INTID {intid}) read-only",
                         prepare=prepare)

    def corrupt(data: bytes) -> bytes:
        b = bytearray(data)
        k = int(at * len(b) * 8)
        b[k // 8] ^= 1 << (k % 8)
        return bytes(b)

    return FaultPlan(kind, f"bit {int(at * 100)}% into the snapshot flipped", corrupt=corrupt)


# ============================================================================ one VM, files
@dataclass(frozen=True)
class MigrationReport:
    """What :func:`migrate` did for one VM.

    Attributes
    ----------
    its_save : ItsSaveReport or None
        Source ``SAVE_TABLES`` (None if it failed and policy "qemu" went on).
    pending_save : VMSaveReport
        Source ``SAVE_PENDING_TABLES`` (vPEs unmapped/remapped, interrupts lost in the window).
    registers : dict
        The register state carried over (:meth:`vlpi.VM.get_registers`).
    forwarded : numpy.ndarray or None
        Destination: per ``forward_after`` event, whether it is forwarded again.
    verification : Verification or None
        The destination's pending set against the source's.
    host : HostMigrationReport or None
        Phases, times, tolerated errors, dirty pages, window, as for a host.
    """

    its_save: ItsSaveReport | None
    pending_save: VMSaveReport
    registers: dict[str, Any]
    forwarded: np.ndarray | None = None
    verification: Verification | None = None
    host: HostMigrationReport | None = field(default=None, repr=False)

    def __repr__(self) -> str:
        return fields_repr(self, ("its_save", "pending_save", "registers", "forwarded", "verification"),
                           {"registers": "registers", "forwarded": "events"})

    def describe(self) -> str:
        """The human-readable table of the whole migration (:meth:`HostMigrationReport.describe`)
        when there is one, else a line per field; a string: print it."""
        if self.host is not None:
            return self.host.describe()
        return repr(self)


def copy_memory(mem: GuestMemory) -> GuestMemory:
    """A new GuestMemory with the same slots and a copy of their bytes (RAM sent to the target)."""
    from vlpi.memory import GuestMemory

    out = GuestMemory()
    for s in mem.slots:
        out.add_slot(s.gpa, s.size, readonly=s.readonly, data=s.data.copy())
    return out


def migrate(
    src: VM,
    *,
    during: Callable[[VM], object] | None = None,
    forward_after: str | tuple[npt.ArrayLike, npt.ArrayLike] | None = None,
    gic: str | None = None,
    run: bool = True,
    **kw: Any,
) -> tuple[VM, MigrationReport]:
    """Migrate one VM the way QEMU drives KVM: :func:`migrate_host` for ``[src]``.

    ``forward_after`` = (device_ids, event_ids) forwarded on the destination after the restore
    (VFIO); None forwards nothing; ``"source"`` forwards what the source had forwarded. Other
    keywords (``policy``, ``traffic``, ``page_size``, ``snapshot_path``, ...) go to
    :func:`migrate_host`. Returns ``(dst, MigrationReport)``.
    """
    # "source" (any string): what the source forwarded; None: nothing
    fa: bool | tuple[npt.ArrayLike, npt.ArrayLike] = (
        True if isinstance(forward_after, str) else (False if forward_after is None else forward_after)
    )
    (dst,), rep = migrate_host([src], during=during, gic=gic, run=run, forward=fa, **kw)
    m = rep.vms[0]
    return dst, MigrationReport(m.its_save, m.pending_save, m.registers, m.forwarded, rep.verification[0], rep)


def save(path: str | os.PathLike[str], vms: VM | list[VM] | tuple[VM, ...], **kw: Any) -> SourceSave:
    """Source side into a file: :func:`save_host` then :func:`vlpi.snapshot.write`
    (``vms`` a VM or a list). Returns the source's report."""
    vms = vms if isinstance(vms, (list, tuple)) else [vms]
    src = save_host(vms, **kw)
    S.write(path, src.snapshot)
    return src


def load(path: str | os.PathLike[str], **kw: Any) -> tuple[list[VM], list[Phase], list[Verification]]:
    """Destination side from a file: :func:`vlpi.snapshot.read` (checked whole first) then
    :func:`restore_destination`; returns its tuple ``(vms, phases, verifications)``."""
    return restore_destination(S.read(path), **kw)
