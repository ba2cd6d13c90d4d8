"""The VM that migration tooling drives: redistributors, virtual ITS, vPEs, guest memory, LPIs.

A :class:`VM` ties together

* guest memory (``vm.mem``, a :class:`~vlpi.memory.GuestMemory`);
* one redistributor per vCPU: ``GICR_PENDBASER`` (PTZ stored but read as 0, RES0 bits
  cleared), ``GICR_CTLR.EnableLPIs`` (0 -> 1 runs the pending-table scan
  :func:`vlpi.sync_pending_table`), and the VM's single ``GICR_PROPBASER`` (IDbits; the LPI
  configuration table in guest RAM: priority and enable per LPI);
* the vgic's LPIs (one per INTID, created by MAPTI/MAPI or ITS restore, in creation order),
  kept as numpy arrays and exposed as an :class:`~vlpi.lpi.LPITable` (``vm.lpis``, rebuilt
  lazily when the mapping changes; ``pending_latch`` and ``hw`` are shared in place);
* the virtual ITS (``vm.its``, :class:`~vlpi.its.VirtualITS`) with its command queue;
* on ``gic="v4.0"`` / ``"v4.1"`` the host's vPEs and VPTs (``vm.gicv4``,
  :class:`~vlpi.gicv4.GICv4`), with forwarding as VFIO does it;
* a structured log of every interrupt that did not become pending, or whose pending state was
  thrown away (``vm.lost``): Linux drops these silently, vlpi names them.

Operations: :meth:`VM.signal_msi` (vectorised device MSIs), :meth:`VM.forward` /
:meth:`VM.unforward`, :meth:`VM.acknowledge` (the guest takes interrupts),
:meth:`VM.save_pending_tables` (``KVM_DEV_ARM_VGIC_SAVE_PENDING_TABLES`` with the GICv4.1
unmap/remap of every vPE around the engine), :meth:`VM.save_its_tables` /
:meth:`VM.restore_its_tables`, :meth:`VM.describe`, and :func:`migrate` (the whole QEMU-ordered
source stop + destination restore).

Example
-------
>>> import numpy as np
>>> vm = VM(2, gic="v4.1")
>>> _ = vm.mem.add_slot(0x4000_0000, 8 << 20)
>>> vm.write_propbaser(0x4000_0000 | 13)                     # LPI config table, 14 INTID bits
>>> vm.mem.write(0x4000_0000, np.full(64, 0xA3, np.uint8))   # priority 0xa0, enabled
>>> for v in range(2):
...     vm.write_pendbaser(v, 0x4010_0000 + v * 0x10000); vm.enable_lpis(v)
>>> vm.its.write_baser(0, (1 << 63) | 0x4020_0000); vm.its.write_baser(1, (1 << 63) | 0x4021_0000)
>>> vm.its.ctlr_enabled = True                               # (a guest writes GITS_CTLR)
>>> vm.its.mapd(1, 0x4030_0000, 7); vm.its.mapc(0, 1)
>>> _ = vm.its.map_events(1, np.arange(16), 8192 + np.arange(16), 0)
>>> vm.init(); vm.forward(1, [3]).tolist()
[True]
>>> vm.signal_msi(1, [3, 4]).tolist()                        # a VLPI and a software LPI
[2, 1]
>>> dst, rep = migrate(vm, forward_after=(1, [3]))
>>> rep.pending_save.vpes_unmapped, rep.pending_save.lost_in_window
(2, 0)
>>> dst.acknowledge(1).tolist()
[8195, 8196]
"""

from __future__ import annotations

import enum
import errno as _errno
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from vlpi.errors import GuestMemoryFault
from vlpi.gicv4 import VPT_BYTES, GICv4
from vlpi.its.its import VirtualITS, _first_of
from vlpi.lpi import LPI_MIN_INTID, LPITable
from vlpi.memory import GuestMemory

__all__ = [
    "VM",
    "VMError",
    "LostReason",
    "LostSource",
    "LostInterruptLog",
    "VMSaveReport",
    "MigrationReport",
    "LOST_DTYPE",
    "migrate",
    "copy_memory",
]

PENDBASER_RES0_MASK = (1 << 63) | (7 << 59) | (0xF << 52) | (0xF << 12) | 0x7F
PENDBASER_PTZ = 1 << 62
PROPBASER_RES0_MASK = (0x1F << 59) | (0xF << 52) | (3 << 5)
PROPBASER_ADDRESS_MASK = 0x000F_FFFF_FFFF_F000  # [51:12]
INITIAL_PENDBASER = (1 << 10) | (7 << 7)  # inner RaWb, inner shareable, address 0


def _engine():
    from vlpi import pending

    return pending


class VMError(OSError):
    """A VM-level operation refused with an errno (``ENXIO`` not initialised, ``EBUSY`` a vCPU is
    running or devices are not quiesced, ``ENODEV`` no GICv4 for forwarding)."""


class LostReason(enum.IntEnum):
    """Why an interrupt did not become pending, or why its pending state was discarded."""

    ITS_DISABLED = 1  #: GITS_CTLR.Enabled = 0 (KVM: -EBUSY)
    NO_DEVICE = 2  #: DeviceID not mapped (MAPD)
    NO_ITE = 3  #: no ITE for (DeviceID, EventID)
    UNMAPPED_COLLECTION = 4  #: the ITE's collection is unmapped or was deleted (MAPC V=0)
    LPIS_DISABLED = 5  #: GICR_CTLR.EnableLPIs = 0 on the target vCPU (KVM: -EBUSY)
    VPE_UNMAPPED = 6  #: forwarded: the vPE is unmapped (e.g. during SAVE_PENDING_TABLES)
    UNFORWARDED_PENDING = 7  #: unforwarding discarded a pending VLPI (not moved to pending_latch)
    FREED_PENDING = 8  #: the LPI's last ITE went away (DISCARD, MAPD) while it was pending
    NOT_IN_SAVED_IMAGE = 9  #: became pending after the save walk: pending here, absent from the image
    PTZ_DISCARDED = 10  #: a vPE was mapped with PTZ=1 over a non-empty VPT
    VLPI_UNSAVED = 11  #: GICv4.0: a pending VLPI's state is unreadable, the image says not pending
    SCAN_CLEARED = 12  #: EnableLPIs 0->1 scan assigned 0 to a set pending_latch (RAM bit was 0)


class LostSource(enum.IntEnum):
    MSI = 1  #: a device MSI (vm.signal_msi)
    INT = 2  #: an ITS INT command
    FORWARDING = 3  #: set/unset forwarding
    DISCARD = 4  #: DISCARD command
    MAPD = 5  #: MAPD / BASER / reset dropping ITEs
    SAVE = 6  #: SAVE_PENDING_TABLES window
    ENABLE_LPIS = 7  #: GICR_CTLR.EnableLPIs 0 -> 1 pending-table scan


LOST_DTYPE = np.dtype(
    [("seq", "<i8"), ("source", "u1"), ("reason", "u1"), ("device_id", "<i8"), ("event_id", "<i8"),
     ("intid", "<u4"), ("vcpu", "<i4")]
)


class LostInterruptLog:
    """Numpy-backed log of interrupts that did not become pending (or were thrown away).

    Each record: ``seq`` (position in the log), ``source`` (:class:`LostSource`), ``reason``
    (:class:`LostReason`), ``device_id``, ``event_id`` (-1 if not applicable), ``intid`` (0 if
    unknown), ``vcpu`` (-1 if none).
    """

    def __init__(self) -> None:
        self._a = np.zeros(64, dtype=LOST_DTYPE)
        self._n = 0

    def _append(self, source, reason, device_id, event_id, intid, vcpu) -> None:
        cols = [np.asarray(x).reshape(-1) for x in (reason, device_id, event_id, intid, vcpu)]
        m = max(c.size for c in cols)
        if m == 0:
            return
        if self._n + m > self._a.size:
            b = np.zeros(max(2 * self._a.size, self._n + m), dtype=LOST_DTYPE)
            b[: self._n] = self._a[: self._n]
            self._a = b
        r = self._a[self._n : self._n + m]
        r["seq"] = np.arange(self._n, self._n + m)
        r["source"] = int(source)
        r["reason"], r["device_id"], r["event_id"], r["intid"], r["vcpu"] = (np.broadcast_to(c, (m,)) for c in cols)
        self._n += m

    @property
    def records(self) -> np.ndarray:
        """All records (a read-only structured array view)."""
        v = self._a[: self._n].view()
        v.flags.writeable = False
        return v

    def __len__(self) -> int:
        return self._n

    def select(self, *, reason=None, source=None, vcpu=None, intid=None, device_id=None) -> np.ndarray:
        """Records matching every given field (each may be a value or a list of values)."""
        r = self.records
        m = np.ones(r.size, bool)
        for name, val in (("reason", reason), ("source", source), ("vcpu", vcpu), ("intid", intid),
                          ("device_id", device_id)):
            if val is not None:
                m &= np.isin(r[name], np.asarray(val, dtype=np.int64).reshape(-1))
        return r[m]

    def count(self, **kw) -> int:
        return int(self.select(**kw).size)

    def summary(self) -> dict[str, int]:
        """Count per reason name."""
        r = self.records["reason"]
        vals, cnt = np.unique(r, return_counts=True)
        return {LostReason(int(v)).name: int(c) for v, c in zip(vals, cnt, strict=False)}

    def clear(self) -> None:
        self._n = 0

    def __repr__(self) -> str:
        return f"LostInterruptLog({self._n} records: {self.summary()})"


@dataclass(frozen=True)
class VMSaveReport:
    """What :meth:`VM.save_pending_tables` did.

    Attributes
    ----------
    engine : SaveReport
        The engine's report (reads, writes, dirty pages, ...).
    vpes_unmapped, vpes_remapped : int
        vPEs actually unmapped before the walk and mapped back after it (GICv4.1).
    lost_in_window : int
        Interrupts lost (or missed by the image) while the vPEs were unmapped.
    lost : numpy.ndarray
        Those records (:data:`LOST_DTYPE`).
    """

    engine: object
    vpes_unmapped: int
    vpes_remapped: int
    lost_in_window: int
    lost: np.ndarray = field(repr=False)


class _Lpis:
    """The vgic's LPIs: growable arrays in creation order + dense INTID -> row map."""

    FIELDS = {"intid": np.uint32, "target": np.int32, "pending": bool, "hw": bool, "priority": np.uint8,
              "enabled": bool, "refs": np.int32}

    def __init__(self) -> None:
        self.n = 0
        self.a = {k: np.zeros(16, dtype=dt) for k, dt in self.FIELDS.items()}
        self.row_of = np.full(LPI_MIN_INTID + 8192, -1, dtype=np.int64)
        self.table: LPITable | None = None

    def __getitem__(self, k: str) -> np.ndarray:
        return self.a[k][: self.n]

    def rows(self, intids) -> np.ndarray:
        it = np.asarray(intids, dtype=np.int64)
        out = np.full(it.shape, -1, dtype=np.int64)
        ok = it < self.row_of.size
        out[ok] = self.row_of[it[ok]]
        return out

    def append(self, **cols) -> None:
        m = int(np.size(cols["intid"]))
        if m == 0:
            return
        need = self.n + m
        cap = self.a["intid"].size
        if need > cap:
            cap = max(need, 2 * cap)
            for k, arr in self.a.items():
                b = np.zeros(cap, dtype=arr.dtype)
                b[: self.n] = arr[: self.n]
                self.a[k] = b
        for k, v in cols.items():
            self.a[k][self.n : need] = v
        top = int(np.max(cols["intid"])) + 1
        if top > self.row_of.size:
            r = np.full(max(top, 2 * self.row_of.size), -1, dtype=np.int64)
            r[: self.row_of.size] = self.row_of
            self.row_of = r
        self.row_of[np.asarray(cols["intid"], dtype=np.int64)] = np.arange(self.n, need)
        self.n = need
        self.table = None

    def remove(self, rows: np.ndarray) -> None:
        if rows.size == 0:
            return
        keep = np.ones(self.n, bool)
        keep[rows] = False
        self.row_of[self["intid"][rows].astype(np.int64)] = -1
        m = int(keep.sum())
        for _k, arr in self.a.items():
            arr[:m] = arr[: self.n][keep]
        self.n = m
        self.row_of[self["intid"].astype(np.int64)] = np.arange(m)
        self.table = None

    def lpitable(self) -> LPITable:
        if self.table is None:
            self.table = LPITable(self["intid"], self["target"], self["pending"], self["hw"])
        return self.table


class VM:
    """A VM with ``n_vcpus`` vCPUs, a GICv3 (optionally GICv4.x-backed) and one virtual ITS.

    Parameters
    ----------
    n_vcpus : int
        Number of vCPUs (vCPU ids ``0 .. n_vcpus - 1`` = redistributor Processor_Number).
    gic : {"v3", "v4.0", "v4.1"}
        Host GIC: plain GICv3 (no forwarding), GICv4.0 (per-VLPI doorbells, VPT unreadable,
        ITS save refuses forwarded LPIs with EACCES) or GICv4.1.
    mem : GuestMemory, optional
        Guest RAM (default: a new, empty GuestMemory; add slots with ``vm.mem.add_slot``).
    kernel : {"new", "old"}
        ITS behaviour generation (see :mod:`vlpi.its.its`).
    vpt_bytes : int
        Bytes per VPT (GICv4.x).

    Examples
    --------
    >>> vm = VM(2, gic="v4.1")
    >>> _ = vm.mem.add_slot(0, 1 << 24)
    >>> vm.write_propbaser(0x10000 | 13)          # config table at 64 KiB, 14 INTID bits
    >>> vm.write_pendbaser(0, 0x100000); vm.write_pendbaser(1, 0x110000)
    >>> vm.enable_lpis(0); vm.enable_lpis(1)
    """

    SOURCE_MSI = LostSource.MSI
    SOURCE_INT = LostSource.INT
    SOURCE_DISCARD = LostSource.DISCARD
    SOURCE_MAPD = LostSource.MAPD

    def __init__(
        self,
        n_vcpus: int,
        *,
        gic: str = "v4.1",
        mem: GuestMemory | None = None,
        kernel: str = "new",
        vpt_bytes: int = VPT_BYTES,
    ) -> None:
        if isinstance(n_vcpus, bool) or not isinstance(n_vcpus, (int, np.integer)):
            raise TypeError(f"n_vcpus must be an integer, got {type(n_vcpus).__name__}")
        if not 1 <= n_vcpus <= 4096:
            raise ValueError(f"n_vcpus must be in [1, 4096], got {n_vcpus}")
        if gic not in ("v3", "v4.0", "v4.1"):
            raise ValueError(f"gic must be 'v3', 'v4.0' or 'v4.1', got {gic!r}")
        if mem is not None and not isinstance(mem, GuestMemory):
            raise TypeError(f"mem must be a GuestMemory, got {type(mem).__name__}")
        self.n_vcpus = int(n_vcpus)
        self.gic = gic
        self.mem = GuestMemory() if mem is None else mem
        self._pendbaser = np.full(self.n_vcpus, INITIAL_PENDBASER, dtype=np.uint64)
        self.propbaser = 0
        self.enable_lpis_state = np.zeros(self.n_vcpus, dtype=bool)
        self.running = np.zeros(self.n_vcpus, dtype=bool)
        self.initialized = False
        self.devices_quiesced = False
        self.gicv4 = None if gic == "v3" else GICv4(self.n_vcpus, version=gic, vpt_bytes=vpt_bytes)
        self._l = _Lpis()
        self.lost = LostInterruptLog()
        self.last_scan_error: GuestMemoryFault | None = None
        self.its = VirtualITS(self, kernel=kernel)

    # ================================================================= state
    @property
    def has_gicv4_1(self) -> bool:
        return self.gic == "v4.1"

    @property
    def pendbaser(self) -> np.ndarray:
        """Raw stored GICR_PENDBASER per vCPU (as the engine takes it; PTZ included)."""
        return self._pendbaser

    @property
    def lpis(self) -> LPITable:
        """The vgic's LPIs as an LPITable (rows in creation order; ``pending_latch``/``hw``
        shared in place). Rebuilt lazily after the mapping changes."""
        return self._l.lpitable()

    def _lpi_view(self, name: str) -> np.ndarray:
        return self._l[name]

    @property
    def priority(self) -> np.ndarray:
        """Priority (config byte & 0xFC) per LPI row."""
        return self._l["priority"]

    @property
    def enabled(self) -> np.ndarray:
        """Enable bit (config byte bit 0) per LPI row."""
        return self._l["enabled"]

    def init(self) -> None:
        """KVM_DEV_ARM_VGIC_CTRL_INIT: the vgic becomes initialised; on GICv4.x the vPEs are
        allocated and mapped (VMAPP V=1, Alloc=1)."""
        if self.initialized:
            return
        self.initialized = True
        if self.gicv4 is not None:
            self.gicv4.map_all_vpes()

    def _vcpus(self, vcpus) -> np.ndarray:
        if vcpus is None:
            return np.arange(self.n_vcpus)
        v = np.atleast_1d(np.asarray(vcpus))
        if v.size and (v.dtype == np.bool_ or not np.issubdtype(v.dtype, np.integer)):
            raise TypeError(f"vcpus must be integers, got dtype {v.dtype}")
        bad = np.flatnonzero((v < 0) | (v >= self.n_vcpus))
        if bad.size:
            raise ValueError(f"vcpus[{bad[0]}] = {v[bad[0]]} is not a vCPU (0 <= vcpu < {self.n_vcpus})")
        return v.astype(np.int64)

    def run(self, vcpus=None) -> None:
        """Enter KVM_RUN on the given vCPUs (default all): initialises the vgic if needed and
        makes their vPEs resident."""
        self.init()
        for v in self._vcpus(vcpus).tolist():
            self.running[v] = True
            if self.gicv4 is not None:
                self.gicv4.schedule(v)

    def pause(self, vcpus=None) -> None:
        """Leave KVM_RUN: vPEs become non-resident (Valid=0, Dirty handshake completed)."""
        for v in self._vcpus(vcpus).tolist():
            self.running[v] = False
            if self.gicv4 is not None:
                self.gicv4.deschedule(v)

    def quiesce_devices(self, quiesced: bool = True) -> None:
        """Record that devices are stopped (VFIO migration protocol) or running again."""
        self.devices_quiesced = bool(quiesced)

    # ============================================================ redistributors
    def _vcpu(self, vcpu) -> int:
        if isinstance(vcpu, (bool, np.bool_)) or not isinstance(vcpu, (int, np.integer)):
            raise TypeError(f"vcpu must be an integer, got {type(vcpu).__name__}")
        if not 0 <= int(vcpu) < self.n_vcpus:
            raise ValueError(f"vcpu = {vcpu} is not a vCPU (0 <= vcpu < {self.n_vcpus})")
        return int(vcpu)

    def write_pendbaser(self, vcpu: int, value: int) -> None:
        """Guest/userspace write of GICR_PENDBASER (ignored while EnableLPIs = 1; RES0 bits
        63, 61:59, 55:52, 15:12, 6:0 cleared; PTZ stored)."""
        v = self._vcpu(vcpu)
        value = int(value) & ((1 << 64) - 1)
        if self.enable_lpis_state[v]:
            return
        self._pendbaser[v] = np.uint64(value & ~PENDBASER_RES0_MASK)

    def read_pendbaser(self, vcpu: int) -> int:
        """GICR_PENDBASER as read back (PTZ reads as 0)."""
        return int(self._pendbaser[self._vcpu(vcpu)]) & ~PENDBASER_PTZ

    def write_propbaser(self, value: int, vcpu: int = 0) -> None:
        """Write GICR_PROPBASER through ``vcpu``'s redistributor (one value per VM; ignored while
        that redistributor has EnableLPIs = 1; RES0 bits cleared)."""
        v = self._vcpu(vcpu)
        if self.enable_lpis_state[v]:
            return
        self.propbaser = int(value) & ((1 << 64) - 1) & ~PROPBASER_RES0_MASK

    def read_propbaser(self) -> int:
        return self.propbaser

    def write_ctlr(self, vcpu: int, value: int) -> None:
        """Write GICR_CTLR: bit 0 is EnableLPIs (see :meth:`enable_lpis`)."""
        self.enable_lpis(vcpu, bool(int(value) & 1))

    def read_ctlr(self, vcpu: int) -> int:
        return int(self.enable_lpis_state[self._vcpu(vcpu)])

    def enable_lpis(self, vcpu: int, enable: bool = True) -> None:
        """Set GICR_CTLR.EnableLPIs. On 0 -> 1 with the stored PTZ = 0 the vCPU's pending table
        is scanned (:func:`vlpi.sync_pending_table`, kernel-exact): bits become
        ``pending_latch`` of LPIs targeting this vCPU (an assignment: a set latch whose bit is
        0 is cleared, and named in ``vm.lost`` as SCAN_CLEARED), RAM is not cleared. A scan
        fault is ignored, as by KVM (kept in ``vm.last_scan_error``)."""
        v = self._vcpu(vcpu)
        was = bool(self.enable_lpis_state[v])
        self.enable_lpis_state[v] = bool(enable)
        if enable and not was and not (int(self._pendbaser[v]) & PENDBASER_PTZ):
            before = self._l["pending"].copy()
            try:
                _engine().sync_pending_table(self.mem, self._pendbaser, self.lpis, v, atomic=False)
                self.last_scan_error = None
            except GuestMemoryFault as e:
                self.last_scan_error = e
            wiped = before & ~self._l["pending"]
            if wiped.any():  # e.g. latches restored by RESTORE_TABLES, whose RAM bits were consumed
                L = self._l
                self.lost._append(LostSource.ENABLE_LPIS, LostReason.SCAN_CLEARED, -1, -1, L["intid"][wiped],
                                  L["target"][wiped])

    # ============================================================ LPI lifecycle
    def _config(self, intids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Config bytes for the LPIs: (ok mask, byte) (byte 0 where the read faults)."""
        it = np.asarray(intids, dtype=np.uint64)
        gpa = np.uint64(self.propbaser & PROPBASER_ADDRESS_MASK) + it - np.uint64(LPI_MIN_INTID)
        ok = self.mem._covered(gpa, gpa, False) if it.size else np.zeros(0, bool)
        byte = np.zeros(it.size, np.uint8)
        if ok.any():
            byte[ok] = self.mem.read_u8(gpa[ok])
        return ok, byte

    def _predict_add(self, it: np.ndarray, tg: np.ndarray):
        """Would creating LPI ``it[i]`` with target ``tg[i]`` succeed? The config byte must be
        readable; the pending byte readable, and writable if the bit is 1 (the clearing write).
        Returns (ok, cfg_ok, cfg_byte, rd_ok, pending_gpa)."""
        it = np.asarray(it, dtype=np.uint32)
        tg = np.asarray(tg, dtype=np.int64)
        cfg_ok, cfg = self._config(it)
        targeted = tg >= 0
        base = self._pendbaser[np.maximum(tg, 0)] & np.uint64(0x000F_FFFF_FFFF_0000)
        gpa = base + (it >> 3).astype(np.uint64)
        rd_ok = np.ones(it.size, bool)
        wr_ok = np.ones(it.size, bool)
        if targeted.any():
            g = gpa[targeted]
            rd = self.mem._covered(g, g, False)
            byte = np.zeros(g.size, np.uint8)
            if rd.any():
                byte[rd] = self.mem.read_u8(g[rd])
            b1 = ((byte >> (it[targeted] & 7).astype(np.uint8)) & 1).astype(bool)
            rd_ok[targeted] = rd
            wr_ok[targeted] = ~b1 | self.mem._covered(g, g, True)
        return cfg_ok & rd_ok & wr_ok, cfg_ok, cfg, rd_ok, gpa

    def _get_lpis(self, intids, targets, *, atomic: bool = False, stop_on_error: bool = False) -> np.ndarray:
        """vgic_add_lpi for each element, as if one by one in array order.

        An existing LPI gains a reference (no config read, no sync, no retarget). A new one
        reads its config byte and pulls its pending bit from its target's table, clearing it
        in RAM (:func:`vlpi.sync_pending_status`); if either access faults the add fails and a
        later element naming the same INTID tries again. Whether an attempt faults depends only
        on the addresses (and on the bit, for the clearing write), so it is decided up front.

        Returns an errno per element (0 = referenced or created). ``atomic``: raise
        GuestMemoryFault before changing anything if any attempt faults. ``stop_on_error``:
        stop at the first failing attempt (later elements get ECANCELED and are not applied).
        """
        it = np.asarray(intids, dtype=np.uint32).reshape(-1)
        tg = np.asarray(targets, dtype=np.int64).reshape(-1)
        n = it.size
        err = np.zeros(n, np.int64)
        if n == 0:
            return err
        L = self._l
        cand = L.rows(it) < 0
        ci = np.flatnonzero(cand)
        succ, cfg_ok, cfg, rd_ok, gpa = self._predict_add(it[ci], tg[ci])
        t = tg[ci]
        # creator of each INTID: its first successful attempt; attempts before it fail
        key = it[ci].astype(np.int64)
        creator = _first_of(key, succ)
        cidx = ci[creator]
        has_creator_before = np.zeros(ci.size, bool)
        if cidx.size:
            ck = it[cidx].astype(np.int64)
            o = np.argsort(ck)
            ck, cpos = ck[o], cidx[o]
            j = np.minimum(np.searchsorted(ck, key), ck.size - 1)
            hit = ck[j] == key
            has_creator_before[hit] = cpos[j[hit]] < ci[hit]
        failed = ~succ & ~has_creator_before
        err[ci[failed]] = _errno.EFAULT
        if failed.any():
            k = int(np.flatnonzero(failed)[0])
            if atomic:
                if not cfg_ok[k]:
                    gpa_k = (self.propbaser & PROPBASER_ADDRESS_MASK) + int(it[ci[k]]) - LPI_MIN_INTID
                    what = "configuration byte"
                else:
                    gpa_k, what = int(gpa[k]), "pending table"
                raise GuestMemoryFault(
                    gpa_k, write=bool(rd_ok[k] and cfg_ok[k]), intid=int(it[ci[k]]),
                    vcpu=None if t[k] < 0 else int(t[k]), detail=f"creating the LPI: {what} (nothing was changed)",
                )
            if stop_on_error:
                f = int(ci[k])
                err[f + 1 :] = _errno.ECANCELED
        apply = err == 0
        # create: one engine sync over the creators, in order (no faults by construction)
        cr = cidx[apply[cidx]]
        pend = np.zeros(cr.size, bool)
        if cr.size:
            tbl = LPITable(it[cr], tg[cr], np.zeros(cr.size, bool))
            rep = _engine().sync_pending_status(self.mem, self._pendbaser, tbl, atomic=False, stop_on_error=False)
            pend = tbl.pending_latch.astype(bool).copy()
            bad = np.asarray(rep.lpi_errno) != 0
            if bad.any():  # defensive: the prediction missed a fault
                err[cr[bad]] = _errno.EFAULT
                cr, pend = cr[~bad], pend[~bad]
                apply = err == 0
        cpos_in_ci = np.searchsorted(ci, cr)
        byte_cfg = cfg[cpos_in_ci]
        L.append(
            intid=it[cr], target=tg[cr], pending=pend, hw=False,
            priority=byte_cfg & 0xFC, enabled=(byte_cfg & 1).astype(bool), refs=0,
        )
        good = err == 0
        np.add.at(L.a["refs"], L.rows(it[good]), 1)
        return err

    def _clear_fwd(self, intids) -> None:
        a = self.its._ite.arrays
        n = self.its._ite.n
        a["fwd"][:n][np.isin(a["intid"][:n], np.asarray(intids))] = False

    def _drop_vlpis(self, intids, devs, evs, source) -> None:
        """Freed ITEs whose LPI is forwarded: the VLPI mapping is DISCARDed (its_unmap_vlpi) and
        its pending state lost (logged FREED_PENDING). vlpi also clears ``hw``; KVM leaves it set
        when another ITE still holds the LPI (a dangling state not modelled)."""
        rows = self._l.rows(intids)
        m = rows >= 0
        m[m] = self._l["hw"][rows[m]]
        if not m.any() or self.gicv4 is None:
            return
        idx = np.flatnonzero(m)
        _, first = np.unique(rows[idx], return_index=True)
        idx = idx[first]
        rr = rows[idx]
        L = self._l
        was = self.gicv4.discard_vlpis(L["target"][rr], L["intid"][rr])
        L.a["hw"][rr] = False
        L.table = None
        self._clear_fwd(L["intid"][rr])
        if was.any():
            d = np.asarray(devs, dtype=np.int64)[idx]
            e = np.asarray(evs, dtype=np.int64)[idx]
            self.lost._append(source, LostReason.FREED_PENDING, d[was], e[was], L["intid"][rr][was],
                              L["target"][rr][was])

    def _put_lpis(self, intids, devs, evs, source) -> None:
        """Drop one reference per element; LPIs reaching 0 go away (a forwarded one is unmapped
        from the GIC; pending state that goes with it is logged)."""
        rows = self._l.rows(intids)
        ok = rows >= 0
        np.subtract.at(self._l.a["refs"], rows[ok], 1)
        dead = np.unique(rows[ok][self._l.a["refs"][rows[ok]] <= 0])
        if dead.size == 0:
            return
        L = self._l
        # which (dev, ev) freed each dead LPI: the last element naming it
        rev = rows[::-1]
        u, last_rev = np.unique(rev, return_index=True)
        idx = (rows.size - 1 - last_rev)[np.searchsorted(u, dead)]
        d = np.asarray(devs, dtype=np.int64)[idx]
        e = np.asarray(evs, dtype=np.int64)[idx]
        was = L["pending"][dead].copy()
        hw = L["hw"][dead]
        if hw.any() and self.gicv4 is not None:
            was[hw] = self.gicv4.discard_vlpis(L["target"][dead][hw], L["intid"][dead][hw])
        if was.any():
            self.lost._append(
                source, LostReason.FREED_PENDING, d[was], e[was], L["intid"][dead][was], L["target"][dead][was]
            )
        L.remove(dead)

    def _retarget(self, intids, vcpu: int) -> None:
        rows = self._l.rows(np.asarray(intids).reshape(-1))
        rows = rows[rows >= 0]
        if rows.size == 0:
            return
        L = self._l
        old = L["target"][rows].copy()
        hw = L["hw"][rows] & (old != vcpu) & (old >= 0)
        if hw.any() and self.gicv4 is not None:
            self.gicv4.vmovi(L["intid"][rows][hw], old[hw], np.full(int(hw.sum()), vcpu))
        L.a["target"][rows] = vcpu
        L.table = None

    def _hw_of(self, intids) -> np.ndarray:
        rows = self._l.rows(intids)
        return np.where(rows >= 0, self._l.a["hw"][np.maximum(rows, 0)], False)

    def _clear_pending(self, intids) -> None:
        rows = self._l.rows(intids)
        rows = rows[rows >= 0]
        L = self._l
        L.a["pending"][rows] = False
        hw = L["hw"][rows]
        if hw.any() and self.gicv4 is not None:
            self.gicv4.clear_vlpis(L["target"][rows][hw], L["intid"][rows][hw])

    def _update_config(self, intids, vcpu: int | None) -> None:
        """INV (``intids``) or INVALL (``vcpu``): re-read configuration bytes."""
        L = self._l
        if intids is not None:
            rows = L.rows(intids)
            rows = rows[rows >= 0]
            ok, cfg = self._config(L["intid"][rows])
            if not ok.all():
                gpa = (self.propbaser & PROPBASER_ADDRESS_MASK) + int(L["intid"][rows][~ok][0]) - LPI_MIN_INTID
                raise GuestMemoryFault(gpa, intid=int(L["intid"][rows][~ok][0]), detail="INV: configuration byte")
        else:
            ok, cfg = self._config(L["intid"])
            ok &= L["target"] == vcpu
            rows = np.arange(L.n)
            if self.gicv4 is not None:
                self.gicv4.vinvall(vcpu)
        L.a["priority"][rows[ok]] = cfg[ok] & 0xFC
        L.a["enabled"][rows[ok]] = (cfg[ok] & 1).astype(bool)

    # ============================================================ MSIs
    def signal_msi(self, device_ids, event_ids) -> np.ndarray:
        """Devices send MSIs (vectorised; as if one by one in array order).

        Non-forwarded events go through the virtual ITS (KVM_SIGNAL_MSI / irqfd): ITS enabled,
        an ITE, a mapped collection, and EnableLPIs on the target, then ``pending_latch``.
        Forwarded events go straight to the GIC: the VLPI's VPT bit (a doorbell if the vPE is
        not resident), or lost if the vPE is unmapped.

        Returns
        -------
        numpy.ndarray of int8
            Per MSI: 1 = LPI pending (software), 2 = VLPI pending (hardware), or
            ``-LostReason`` (the MSI is recorded in ``vm.lost``).
        """
        d, e = _pair_ids(device_ids, event_ids)
        return self._inject(d, e, source=LostSource.MSI, via_its=False)

    def _inject(self, d: np.ndarray, e: np.ndarray, *, source, via_its: bool) -> np.ndarray:
        n = d.size
        out = np.zeros(n, np.int8)
        its = self.its
        r = its._lookup(d, e)
        have = r >= 0
        rc = np.maximum(r, 0)
        intid = np.where(have, its._ite.arrays["intid"][rc] if its._ite.n else 0, 0).astype(np.int64)
        lr = self._l.rows(intid)
        L = self._l
        hw = have & (lr >= 0) & (L.a["hw"][np.maximum(lr, 0)] if L.n else False)
        known_dev = np.isin(d, np.fromiter(its.devices, dtype=np.int64, count=len(its.devices)))
        out[~have] = -np.where(known_dev[~have], LostReason.NO_ITE, LostReason.NO_DEVICE)
        coll_t = its._coll_target(its._ite.arrays["coll"][rc]) if its._ite.n else np.full(n, -1)
        # a forwarded event's MSI is translated by the physical ITS: no virtual-ITS checks;
        # anything else goes through KVM (vgic_its_trigger_msi), a hw LPI then gets a hardware INT
        direct = have & hw & (its._ite.arrays["fwd"][rc] if its._ite.n else False) & (not via_its)
        checks = have & ~direct
        if not its.ctlr_enabled:
            out[checks] = -LostReason.ITS_DISABLED
            checks[:] = False
        out[checks & (coll_t < 0)] = -LostReason.UNMAPPED_COLLECTION
        checks &= coll_t >= 0
        ct = np.maximum(coll_t, 0)
        off = checks & ~self.enable_lpis_state[ct]
        out[off] = -LostReason.LPIS_DISABLED
        checks &= ~off
        go_sw = checks & ~hw
        L.a["pending"][lr[go_sw]] = True
        out[go_sw] = 1
        go_hw = direct | (checks & hw)
        if go_hw.any():
            vpe = L.a["target"][lr[go_hw]]
            delivered, _ = self.gicv4.raise_vlpis(vpe, intid[go_hw], source="INT" if via_its else "MSI")
            idx = np.flatnonzero(go_hw)
            out[idx[delivered]] = 2
            out[idx[~delivered]] = -LostReason.VPE_UNMAPPED
        lost = out < 0
        if lost.any():
            vc = np.where(hw, L.a["target"][np.maximum(lr, 0)] if L.n else -1, np.where(have, coll_t, -1))
            self.lost._append(source, -out[lost].astype(np.int64), d[lost], e[lost],
                              np.where(have, intid, 0)[lost], vc[lost])
        return out

    # ============================================================ forwarding (VFIO)
    def _event_rows(self, device_ids, event_ids, *, ite_rows: bool = False):
        d, e = _pair_ids(device_ids, event_ids)
        r = self.its._lookup(d, e)
        intid = np.where(r >= 0, self.its._ite.arrays["intid"][np.maximum(r, 0)] if self.its._ite.n else 0, 0)
        rows = self._l.rows(intid.astype(np.int64))
        return (d, e, rows, r) if ite_rows else (d, e, rows)

    def forward(self, device_ids, event_ids) -> np.ndarray:
        """Set up forwarding (kvm_vgic_v4_set_forwarding) for events, vectorised.

        VMAPTI each event's LPI to its target's vPE, mark it ``hw``, and move a set
        ``pending_latch`` into the VPT (an INT), then clear the latch. Events without an ITE or
        without a target vCPU are not forwarded (KVM falls back to software injection); already
        forwarded ones stay as they are.

        Returns
        -------
        numpy.ndarray of bool
            True where the event is now forwarded (its MSIs go to the GIC directly). An LPI has
            one host IRQ: a second event naming an already forwarded LPI is not forwarded (its
            MSIs go through KVM, which sends a hardware INT).
        """
        if self.gicv4 is None:
            raise VMError(_errno.ENODEV, "forwarding needs a GICv4.x host (gic='v4.0' or 'v4.1')")
        d, e, rows, ite = self._event_rows(device_ids, event_ids, ite_rows=True)
        L = self._l
        ok = rows >= 0
        ok[ok] &= L["target"][rows[ok]] >= 0
        # one host IRQ per LPI: an LPI that is already hw stays with its forwarded event
        new = np.zeros(ok.size, bool)
        new[ok] = ~L["hw"][rows[ok]]
        new &= _first_of(np.where(new, rows, -1), new)
        self.its._ite.arrays["fwd"][ite[new]] = True
        rr = rows[new]
        if rr.size:
            tgt, it = L["target"][rr].astype(np.int64), L["intid"][rr].astype(np.int64)
            self.gicv4.vmapti(tgt, it)
            L.a["hw"][rr] = True
            p = L["pending"][rr]
            if p.any():
                delivered, _ = self.gicv4.raise_vlpis(tgt[p], it[p], source="INT")
                if not delivered.all():
                    lost = ~delivered
                    self.lost._append(LostSource.FORWARDING, LostReason.VPE_UNMAPPED, -1, -1, it[p][lost], tgt[p][lost])
                L.a["pending"][rr[p]] = False
            L.table = None
        return ok & self.its._ite.arrays["fwd"][np.maximum(ite, 0)]

    def unforward(self, device_ids, event_ids) -> np.ndarray:
        """Tear down forwarding (kvm_vgic_v4_unset_forwarding): ``hw`` cleared, the VLPI mapping
        DISCARDed. A pending VLPI is **lost** (not moved to ``pending_latch``, as in Linux) and
        recorded in ``vm.lost`` as UNFORWARDED_PENDING.

        Returns
        -------
        numpy.ndarray of bool
            Per event: True where a pending VLPI was discarded.
        """
        if self.gicv4 is None:
            raise VMError(_errno.ENODEV, "forwarding needs a GICv4.x host")
        d, e, rows = self._event_rows(device_ids, event_ids)
        L = self._l
        out = np.zeros(d.size, bool)
        sel = np.flatnonzero(rows >= 0)
        sel = sel[L["hw"][rows[sel]]]
        if sel.size == 0:
            return out
        _, first = np.unique(rows[sel], return_index=True)
        sel = sel[first]
        rr = rows[sel]
        was = self.gicv4.discard_vlpis(L["target"][rr], L["intid"][rr])
        L.a["hw"][rr] = False
        L.table = None
        self._clear_fwd(L["intid"][rr])
        out[sel] = was
        if was.any():
            self.lost._append(LostSource.FORWARDING, LostReason.UNFORWARDED_PENDING, d[sel][was], e[sel][was],
                              L["intid"][rr][was], L["target"][rr][was])
        return out

    # ============================================================ guest CPU interface
    def acknowledge(self, vcpu: int) -> np.ndarray:
        """The guest on ``vcpu`` takes every deliverable interrupt (pending, enabled, targeting
        ``vcpu``, EnableLPIs = 1, vCPU running), highest priority first then lowest INTID; their
        pending state clears. Returns the INTIDs taken, in that order."""
        v = self._vcpu(vcpu)
        L = self._l
        if not (self.running[v] and self.enable_lpis_state[v]) or L.n == 0:
            return np.zeros(0, np.uint32)
        mine = (L["target"] == v) & L["enabled"]
        sw = mine & L["pending"]  # software pending state (a hw LPI's latch too, as KVM queues it)
        hw = mine & L["hw"]
        hwp = np.zeros(L.n, bool)
        if hw.any():
            idx = np.flatnonzero(hw)
            hwp[idx] = self.gicv4.vlpi_pending(np.full(idx.size, v), L["intid"][idx])
        take = np.flatnonzero(sw | hwp)
        order = np.lexsort((L["intid"][take], L["priority"][take]))
        take = take[order]
        L.a["pending"][take] = False
        h = take[hwp[take]]
        if h.size:
            self.gicv4.acknowledge(v, L["intid"][h])
        return L["intid"][take].copy()

    # ============================================================ save / restore
    def _check_stopped(self, what: str) -> None:
        if not self.initialized:
            raise VMError(_errno.ENXIO, f"{what}: the vgic is not initialised (call vm.init())")
        if self.running.any():
            v = int(np.flatnonzero(self.running)[0])
            raise VMError(_errno.EBUSY, f"{what}: vCPU {v} is running (pause every vCPU first)")

    def save_pending_tables(
        self,
        *,
        order: str = "intid",
        atomic: bool = True,
        during: Callable[[VM], object] | None = None,
        during_at: str = "after_walk",
        require_quiesced: bool = False,
    ) -> VMSaveReport:
        """KVM_DEV_ARM_VGIC_SAVE_PENDING_TABLES.

        ENXIO if not initialised, EBUSY if a vCPU runs (or, with ``require_quiesced``, while
        devices can still send MSIs). On GICv4.1 every vPE is unmapped (its VPT becomes
        authoritative), the engine (:func:`vlpi.save_pending_tables`) merges ``pending_latch``
        and VPT bits into the guest's tables, and the vPEs are mapped back (PTZ=0) on every
        exit path: success, guest-memory fault, or an exception in ``during``. On GICv4.0 the
        VLPIs' state cannot be read: pending VLPIs are saved as not pending, and named in the
        report (VLPI_UNSAVED). ``lost_in_window`` counts every record this call added.

        Parameters
        ----------
        order, atomic
            Passed to the engine.
        during : callable(vm), optional
            Called while the vPEs are unmapped (models devices still sending MSIs). VLPIs
            raised then are lost; with ``during_at="after_walk"`` (default) software LPIs that
            become pending are also recorded, as NOT_IN_SAVED_IMAGE, since the walk is over.
            With ``"after_walk"`` it is not called if the walk raised.
        during_at : {"after_walk", "before_walk"}
        require_quiesced : bool
            Refuse (EBUSY) unless :meth:`quiesce_devices` was called.

        Returns
        -------
        VMSaveReport

        Raises
        ------
        VMError
            ENXIO / EBUSY, before anything is touched.
        GuestMemoryFault
            From the engine (vPEs were remapped).
        """
        self._check_stopped("SAVE_PENDING_TABLES")
        if during_at not in ("after_walk", "before_walk"):
            raise ValueError(f"during_at must be 'after_walk' or 'before_walk', got {during_at!r}")
        if require_quiesced and not self.devices_quiesced:
            raise VMError(_errno.EBUSY, "SAVE_PENDING_TABLES: devices can still send MSIs (require_quiesced=True)")
        v41 = self.has_gicv4_1
        mark = len(self.lost)
        unmapped = self.gicv4.unmap_all_vpes() if v41 else 0
        remapped = 0
        rep = None
        try:
            if during is not None and during_at == "before_walk":
                during(self)
            rep = _engine().save_pending_tables(
                self.mem, self._pendbaser, self.lpis, vpt=self.gicv4.vpt if v41 else None,
                has_gicv4_1=v41, order=order, atomic=atomic,
            )
        finally:
            try:
                if during is not None and during_at == "after_walk" and rep is not None:
                    before = self._l["pending"].copy()
                    intids = self._l["intid"].copy()
                    during(self)
                    now_rows = self._l.rows(intids)
                    alive = now_rows >= 0
                    newly = np.zeros(intids.size, bool)
                    newly[alive] = self._l["pending"][now_rows[alive]] & ~before[alive]
                    if newly.any():
                        self.lost._append(LostSource.SAVE, LostReason.NOT_IN_SAVED_IMAGE, -1, -1, intids[newly],
                                          self._l["target"][now_rows[newly]])
            finally:
                if v41:
                    remapped = self.gicv4.map_all_vpes()
        if self.gic == "v4.0" and rep is not None:
            L = self._l
            h = np.flatnonzero(L["hw"] & ~L["pending"] & (L["target"] >= 0))
            if h.size:
                p = self.gicv4.vlpi_pending(L["target"][h], L["intid"][h])
                if p.any():
                    self.lost._append(LostSource.SAVE, LostReason.VLPI_UNSAVED, -1, -1, L["intid"][h[p]],
                                      L["target"][h[p]])
        lost = self.lost.records[mark:].copy()
        return VMSaveReport(rep, unmapped, remapped, int(lost.size), lost)

    def save_its_tables(self):
        """KVM_DEV_ARM_ITS_SAVE_TABLES (ABI rev 0, :func:`vlpi.its.abi.save_tables_v0`).
        EBUSY while a vCPU runs; EACCES on a non-4.1 host with a forwarded ITE."""
        if self.running.any():
            raise VMError(_errno.EBUSY, f"SAVE_TABLES: vCPU {int(np.flatnonzero(self.running)[0])} is running")
        return self.its.save_tables(has_gicv4_1=self.has_gicv4_1)

    def restore_its_tables(self):
        """KVM_DEV_ARM_ITS_RESTORE_TABLES: collections, devices and ITEs from the tables; LPIs
        created in scan order, each pulling (and clearing) its pending bit through
        :func:`vlpi.sync_pending_status`. Returns ``(collections, devices)``."""
        if self.running.any():
            raise VMError(_errno.EBUSY, f"RESTORE_TABLES: vCPU {int(np.flatnonzero(self.running)[0])} is running")
        return self.its.restore_tables()

    # ============================================================ registers (migration)
    def get_registers(self) -> dict:
        """Register state as userspace reads it (PENDBASER with PTZ reading 0)."""
        its = self.its
        return {
            "propbaser": self.propbaser,
            "pendbaser": [self.read_pendbaser(v) for v in range(self.n_vcpus)],
            "ctlr": [self.read_ctlr(v) for v in range(self.n_vcpus)],
            "gits_ctlr": int(its.ctlr_enabled),
            "gits_cbaser": its.cbaser,
            "gits_creadr": its.creadr,
            "gits_cwriter": its.cwriter,
            "gits_baser": list(its.baser),
            "gits_iidr_rev": its.abi_revision,
        }

    def set_registers(self, regs: dict, *, restore_its_tables: bool = True) -> None:
        """Restore registers in QEMU's order: PROPBASER, PENDBASERs, GICR_CTLR (EnableLPIs
        scans run here, normally finding no LPI), then GITS_CBASER, CREADR, CWRITER, BASERs,
        RESTORE_TABLES (optional) and GITS_CTLR last."""
        from vlpi.its import queue as Q

        for v in range(self.n_vcpus):
            self.write_propbaser(regs["propbaser"], v)
        for v in range(self.n_vcpus):
            self.write_pendbaser(v, regs["pendbaser"][v])
        for v in range(self.n_vcpus):
            self.write_ctlr(v, regs["ctlr"][v])
        its = self.its
        Q.write_cbaser(its, regs["gits_cbaser"])
        Q.set_creadr(its, regs["gits_creadr"])
        its.cwriter = regs["gits_cwriter"]
        for n, b in enumerate(regs["gits_baser"][:2]):
            its.write_baser(n, b)
        if restore_its_tables:
            self.restore_its_tables()
        Q.write_ctlr(its, regs["gits_ctlr"])

    # ============================================================ debug view
    def describe(self, max_rows: int = 64) -> str:
        """A vgic-debug-like dump: one line per LPI (INTID, vCPU, P/E/H flags, priority) for
        up to ``max_rows`` LPIs, then a summary.

        Legend: P = pending (``pending_latch``, or the VLPI's hardware state when H),
        E = enabled, H = hw (forwarded as a VLPI); ``-`` = not set; vCPU -1 = no target.
        """
        L = self._l
        lines = [
            f"VM: {self.n_vcpus} vCPUs, gic={self.gic}, initialized={self.initialized}, "
            f"running={int(self.running.sum())}, EnableLPIs={int(self.enable_lpis_state.sum())}/{self.n_vcpus}",
            f"{self.its!r}",
        ]
        if self.gicv4 is not None:
            lines.append(repr(self.gicv4))
        pend = L["pending"].copy()
        if self.gicv4 is not None and L["hw"].any():
            h = np.flatnonzero(L["hw"])
            pend[h] = self.gicv4.vlpi_pending(L["target"][h], L["intid"][h])
        if L.n:
            lines.append("Legend: P=pending E=enabled H=hw(VLPI)")
            lines.append(f"{'INTID':>8} {'vCPU':>5} PEH {'prio':>4}")
            order = np.argsort(L["intid"], kind="stable")[:max_rows]
            for r in order.tolist():
                flags = ("P" if pend[r] else "-") + ("E" if L.a["enabled"][r] else "-") + ("H" if L.a["hw"][r] else "-")
                lines.append(
                    f"{int(L.a['intid'][r]):>8} {int(L.a['target'][r]):>5} {flags} {int(L.a['priority'][r]):>#4x}"
                )
            if L.n > max_rows:
                lines.append(f"... {L.n - max_rows} more LPIs")
        lines.append(
            f"LPIs: {L.n} total, {int(pend.sum())} pending, {int(L['enabled'].sum())} enabled, "
            f"{int(L['hw'].sum())} hw, {int(np.count_nonzero(L['target'] < 0))} without target"
        )
        if L.n:
            per = np.bincount(L["target"][L["target"] >= 0], minlength=self.n_vcpus)
            lines.append("per vCPU: " + " ".join(f"{v}:{int(c)}" for v, c in enumerate(per[:16])) +
                         (" ..." if self.n_vcpus > 16 else ""))
        lines.append(f"lost: {len(self.lost)} {self.lost.summary()}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        L = self._l
        return (
            f"VM({self.n_vcpus} vCPUs, gic={self.gic!r}, {L.n} LPIs, {int(L['pending'].sum())} pending_latch, "
            f"{int(L['hw'].sum())} hw, {len(self.its.devices)} devices, {len(self.lost)} lost)"
        )


@dataclass(frozen=True)
class MigrationReport:
    """What :func:`migrate` did on each side.

    Attributes
    ----------
    its_save : ItsSaveReport
        Source ``SAVE_TABLES``.
    pending_save : VMSaveReport
        Source ``SAVE_PENDING_TABLES`` (vPEs unmapped/remapped, interrupts lost in the window).
    registers : dict
        The register state carried over (:meth:`VM.get_registers`).
    forwarded : numpy.ndarray or None
        Destination: which ``forward_after`` events were forwarded again.
    """

    its_save: object
    pending_save: VMSaveReport
    registers: dict
    forwarded: np.ndarray | None = None


def copy_memory(mem: GuestMemory) -> GuestMemory:
    """A new GuestMemory with the same slots and a copy of their bytes (RAM sent to the target)."""
    out = GuestMemory()
    for s in mem.slots:
        out.add_slot(s.gpa, s.size, readonly=s.readonly, data=s.data.copy())
    return out


def migrate(
    src: VM,
    *,
    during: Callable[[VM], object] | None = None,
    forward_after=None,
    gic: str | None = None,
    run: bool = True,
) -> tuple[VM, MigrationReport]:
    """Migrate ``src`` to a new VM the way QEMU drives KVM (kernel-semantics §4.6).

    Source: pause every vCPU, ``SAVE_TABLES``, ``SAVE_PENDING_TABLES`` (``during`` as in
    :meth:`VM.save_pending_tables`), read the registers. Destination: copy guest RAM, create the
    VM, initialise it, restore PROPBASER, PENDBASERs and GICR_CTLR (EnableLPIs scans run here,
    normally finding no LPI), GITS_CBASER/CREADR/CWRITER/BASERs, ``RESTORE_TABLES`` (LPIs created,
    pending bits consumed), GITS_CTLR; then VFIO re-establishes forwarding for ``forward_after``
    = (device_ids, event_ids), pushing ``pending_latch`` into the VPTs; then the vCPUs run.

    Parameters
    ----------
    gic : str, optional
        The destination host's GIC (default: the source's).
    run : bool
        Start the destination's vCPUs at the end.

    Raises
    ------
    VMError, ItsTableError, GuestMemoryFault
        From the step that failed; the source stays paused.
    """
    src.pause()
    its_rep = src.save_its_tables()
    pend_rep = src.save_pending_tables(during=during)
    regs = src.get_registers()
    dst = VM(src.n_vcpus, gic=gic or src.gic, mem=copy_memory(src.mem), kernel=src.its.kernel,
             vpt_bytes=src.gicv4.vpt_bytes if src.gicv4 is not None else VPT_BYTES)
    dst.init()
    dst.set_registers(regs)
    fwd = dst.forward(*forward_after) if forward_after is not None else None
    if run:
        dst.run()
    return dst, MigrationReport(its_rep, pend_rep, regs, fwd)


def _ids(x, name: str) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim == 0:
        a = a.reshape(1)
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {a.shape}")
    if a.size and (a.dtype == np.bool_ or not np.issubdtype(a.dtype, np.integer)):
        raise TypeError(f"{name} must be integers, got dtype {a.dtype}")
    a = a.astype(np.int64)
    bad = np.flatnonzero((a < 0) | (a >= 1 << 32))
    if bad.size:
        raise ValueError(f"{name}[{bad[0]}] = {a[bad[0]]} is not a 32-bit ID")
    return a


def _pair_ids(device_ids, event_ids) -> tuple[np.ndarray, np.ndarray]:
    """Validate and broadcast (DeviceID, EventID) arrays (a scalar or 1-element side broadcasts)."""
    d = _ids(device_ids, "device_ids")
    e = _ids(event_ids, "event_ids")
    if d.size != e.size:
        if d.size == 1:
            d = np.repeat(d, e.size)
        elif e.size == 1:
            e = np.repeat(e, d.size)
        else:
            raise ValueError(f"device_ids has {d.size} entries but event_ids has {e.size}")
    return d, e
