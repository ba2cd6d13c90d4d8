"""The VM that migration tooling drives: a thin composition of the vgic's parts.

A :class:`VM` ties together

* guest memory (``vm.mem``, a :class:`~vlpi.memory.GuestMemory`);
* the vgic core (``vm.vgic``, :class:`~vlpi.vgic.Vgic`): the LPIs (one per INTID, created by
  MAPTI/MAPI or ITS restore, in creation order), exposed as an :class:`~vlpi.lpi.LPITable`
  (``vm.lpis``, rebuilt lazily when the mapping changes; ``pending_latch`` and ``hw`` are
  shared in place), and a structured log of every interrupt that did not become pending, or
  whose pending state was thrown away (``vm.lost``): Linux drops these silently, vlpi names them;
* the redistributors (``vm.redist``, :class:`~vlpi.redistributor.Redistributors`):
  ``GICR_PENDBASER``, ``GICR_PROPBASER``, ``GICR_CTLR.EnableLPIs`` (0 -> 1 runs the pending-table
  scan :func:`vlpi.sync_pending_table`), and the save of the pending tables;
* the virtual ITS (``vm.its``, :class:`~vlpi.its.VirtualITS`) with its command queue;
* on ``gic="v4.0"`` / ``"v4.1"`` the host's vPEs and VPTs (``vm.gicv4``,
  :class:`~vlpi.gicv4.GICv4`), and forwarding as VFIO does it (``vm.v4``,
  :class:`~vlpi.forwarding.Forwarding`).

A VM is not thread-safe: drive it from one thread at a time. Its parts are reached as
attributes for inspection; change them through the VM's verbs, the ITS's commands and
registers, or guest memory.

Operations: :meth:`VM.signal_msi` (vectorised device MSIs), :meth:`VM.forward` /
:meth:`VM.unforward`, :meth:`VM.acknowledge` (the guest takes interrupts),
:meth:`VM.save_pending_tables` (``KVM_DEV_ARM_VGIC_SAVE_PENDING_TABLES`` with the GICv4.1
unmap/remap of every vPE around the engine), :meth:`VM.save_its_tables` /
:meth:`VM.restore_its_tables`, :meth:`VM.describe`, :meth:`VM.save` / :meth:`VM.load` (a migration
snapshot file), and :func:`vlpi.migration.migrate` (the whole QEMU-ordered source stop +
destination restore).

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
>>> from vlpi.migration import migrate
>>> dst, rep = migrate(vm, forward_after=(1, [3]))
>>> rep.pending_save.vpes_unmapped, rep.pending_save.lost_in_window
(2, 0)
>>> dst.acknowledge(1).tolist()
[8195, 8196]
"""

from __future__ import annotations

import errno as _errno
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from vlpi import debug
from vlpi.errors import GuestMemoryFault
from vlpi.forwarding import Forwarding
from vlpi.gicv4 import VPT_BYTES, GICv4
from vlpi.its import queue as Q
from vlpi.its.its import VirtualITS, event_pairs
from vlpi.lpi import LPITable
from vlpi.memory import GuestMemory
from vlpi.redistributor import Redistributors, VMSaveReport, check_save_args
from vlpi.vgic import (
    LOST_DTYPE,
    LostInterruptLog,
    LostReason,
    LostSource,
    Vgic,
    VMError,
    check_flag,
    check_vcpu,
    check_vcpus,
)

if TYPE_CHECKING:
    from vlpi.its.abi import ItsDevice, ItsSaveReport
    from vlpi.migration import SourceSave

__all__ = [
    "VM",
    "VMError",
    "LostReason",
    "LostSource",
    "LostInterruptLog",
    "VMSaveReport",
    "LOST_DTYPE",
]


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
        self.running = np.zeros(self.n_vcpus, dtype=bool)
        self.initialized = False
        self.devices_quiesced = False
        self.gicv4 = None if gic == "v3" else GICv4(self.n_vcpus, version=gic, vpt_bytes=vpt_bytes)
        self.vgic = Vgic(self.mem, self.n_vcpus, self.gicv4)
        self.redist = Redistributors(self.vgic)
        self.its = VirtualITS(self.vgic, kernel=kernel)
        self.v4 = Forwarding(self.vgic, self.its)

    # ================================================================= state
    @property
    def has_gicv4_1(self) -> bool:
        return self.gic == "v4.1"

    @property
    def pendbaser(self) -> np.ndarray:
        """Raw stored GICR_PENDBASER per vCPU (as the engine takes it; PTZ included)."""
        return self.vgic.pendbaser

    @property
    def propbaser(self) -> int:
        """GICR_PROPBASER (one per VM)."""
        return self.vgic.propbaser

    @property
    def enable_lpis_state(self) -> np.ndarray:
        """GICR_CTLR.EnableLPIs per vCPU."""
        return self.vgic.lpis_enabled

    @property
    def lost(self) -> LostInterruptLog:
        """Interrupts that did not become pending, or whose pending state was thrown away."""
        return self.vgic.lost

    @property
    def last_scan_error(self) -> GuestMemoryFault | None:
        """The fault of the last EnableLPIs scan (ignored, as by KVM), or None."""
        return self.redist.last_scan_error

    @property
    def lpis(self) -> LPITable:
        """The vgic's LPIs as an LPITable (rows in creation order; ``pending_latch``/``hw``
        shared in place). Rebuilt lazily after the mapping changes."""
        return self.vgic.lpitable()

    @property
    def priority(self) -> np.ndarray:
        """Priority (config byte & 0xFC) per LPI row."""
        return self.vgic["priority"]

    @property
    def enabled(self) -> np.ndarray:
        """Enable bit (config byte bit 0) per LPI row."""
        return self.vgic["enabled"]

    # ================================================================= vCPUs
    def init(self) -> None:
        """KVM_DEV_ARM_VGIC_CTRL_INIT: the vgic becomes initialised; on GICv4.x the vPEs are
        allocated and mapped (VMAPP V=1, Alloc=1)."""
        if not self.initialized:
            self.initialized = True
            self.v4.init()

    def run(self, vcpus: npt.ArrayLike | None = None) -> None:
        """Enter KVM_RUN on ``vcpus`` (default all), initialising the vgic; vPEs become resident."""
        self.init()
        for v in check_vcpus(vcpus, self.n_vcpus).tolist():
            self.running[v] = True
            self.v4.load(v)

    def pause(self, vcpus: npt.ArrayLike | None = None) -> None:
        """Leave KVM_RUN: vPEs become non-resident (Valid=0, Dirty handshake completed)."""
        for v in check_vcpus(vcpus, self.n_vcpus).tolist():
            self.running[v] = False
            self.v4.put(v)

    def quiesce_devices(self, quiesced: bool = True) -> None:
        """Record that devices are stopped (VFIO migration protocol) or running again."""
        self.devices_quiesced = check_flag(quiesced, "quiesced")

    # ================================================================= redistributors
    def write_pendbaser(self, vcpu: int, value: int) -> None:
        """GICR_PENDBASER write (ignored while EnableLPIs = 1; RES0 bits cleared; PTZ stored)."""
        self.redist.write_pendbaser(vcpu, value)

    def read_pendbaser(self, vcpu: int) -> int:
        """GICR_PENDBASER as read back (PTZ reads as 0)."""
        return self.redist.read_pendbaser(vcpu)

    def write_propbaser(self, value: int, vcpu: int = 0) -> None:
        """GICR_PROPBASER write through ``vcpu``'s redistributor."""
        self.redist.write_propbaser(value, vcpu)

    def read_propbaser(self) -> int:
        return self.redist.read_propbaser()

    def write_ctlr(self, vcpu: int, value: int) -> None:
        """GICR_CTLR write: bit 0 is EnableLPIs (see :meth:`enable_lpis`)."""
        self.redist.write_ctlr(vcpu, value)

    def read_ctlr(self, vcpu: int) -> int:
        return self.redist.read_ctlr(vcpu)

    def enable_lpis(self, vcpu: int, enable: bool = True) -> None:
        """Set GICR_CTLR.EnableLPIs; 0 -> 1 scans the vCPU's pending table (``vm.redist``)."""
        self.redist.enable_lpis(vcpu, enable)

    # ================================================================= interrupts
    def signal_msi(self, device_ids: npt.ArrayLike, event_ids: npt.ArrayLike) -> np.ndarray:
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
        d, e = event_pairs(device_ids, event_ids)
        return self.its.inject(d, e, source=LostSource.MSI, via_its=False)

    def forward(self, device_ids: npt.ArrayLike, event_ids: npt.ArrayLike) -> np.ndarray:
        """Set up forwarding (kvm_vgic_v4_set_forwarding) for events, vectorised
        (:meth:`vlpi.forwarding.Forwarding.forward`): each event's LPI becomes a VLPI, a set
        ``pending_latch`` moves into the VPT. Returns, per event, True where it is now
        forwarded (its MSIs go to the GIC directly). ENODEV on a GICv3 host."""
        return self.v4.forward(device_ids, event_ids)

    def unforward(self, device_ids: npt.ArrayLike, event_ids: npt.ArrayLike) -> np.ndarray:
        """Tear down forwarding (kvm_vgic_v4_unset_forwarding): a pending VLPI is **lost** (as in
        Linux; logged UNFORWARDED_PENDING). Returns, per event, True where one was discarded."""
        return self.v4.unforward(device_ids, event_ids)

    def acknowledge(self, vcpu: int) -> np.ndarray:
        """The guest on ``vcpu`` takes every deliverable interrupt (pending, enabled, targeting
        ``vcpu``, EnableLPIs = 1, vCPU running), highest priority first then lowest INTID; their
        pending state clears. Returns the INTIDs taken, in that order."""
        v = check_vcpu(vcpu, self.n_vcpus)
        if not self.running[v]:
            return np.zeros(0, np.uint32)
        return self.vgic.acknowledge(v)

    # ================================================================= save / restore
    def _check_paused(self, what: str, *, initialized: bool = False) -> None:
        if initialized and not self.initialized:
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
        """KVM_DEV_ARM_VGIC_SAVE_PENDING_TABLES (:meth:`vlpi.redistributor.Redistributors.save_pending_tables`:
        on GICv4.1 the vPEs are unmapped around the engine's walk and mapped back on every exit
        path). ENXIO if not initialised, EBUSY if a vCPU runs (or, with ``require_quiesced``,
        while devices can still send MSIs).

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

        Raises
        ------
        VMError
            ENXIO / EBUSY, before anything is touched.
        GuestMemoryFault
            From the engine (vPEs were remapped).
        """
        self._check_paused("SAVE_PENDING_TABLES", initialized=True)
        check_save_args(order, atomic, during, during_at)
        if check_flag(require_quiesced, "require_quiesced") and not self.devices_quiesced:
            raise VMError(_errno.EBUSY, "SAVE_PENDING_TABLES: devices can still send MSIs (require_quiesced=True)")
        return self.redist.save_pending_tables(
            order=order, atomic=atomic, during=None if during is None else (lambda: during(self)), during_at=during_at
        )

    def save_its_tables(self) -> ItsSaveReport:
        """KVM_DEV_ARM_ITS_SAVE_TABLES (ABI rev 0, :func:`vlpi.its.abi.save_tables_v0`).
        EBUSY while a vCPU runs; EACCES on a non-4.1 host with a forwarded ITE."""
        self._check_paused("SAVE_TABLES")
        return self.its.save_tables(has_gicv4_1=self.has_gicv4_1)

    def restore_its_tables(self) -> tuple[list[tuple[int, int]], list[ItsDevice]]:
        """KVM_DEV_ARM_ITS_RESTORE_TABLES: collections, devices and ITEs from the tables; LPIs
        created in scan order, each pulling (and clearing) its pending bit through
        :func:`vlpi.sync_pending_status`. Returns ``(collections, devices)``."""
        self._check_paused("RESTORE_TABLES")
        return self.its.restore_tables()

    # ================================================================= registers (migration)
    def get_registers(self) -> dict[str, Any]:
        """Register state as userspace reads it: the redistributors' (PENDBASER with PTZ reading
        0) then the ITS's (:func:`vlpi.its.queue.get_registers`)."""
        return {**self.redist.get_registers(), **Q.get_registers(self.its)}

    def set_registers(self, regs: dict[str, Any], *, restore_its_tables: bool = True) -> None:
        """Restore registers in QEMU's order: PROPBASER, PENDBASERs, GICR_CTLR (EnableLPIs
        scans run here, normally finding no LPI), then GITS_CBASER, CREADR, CWRITER, BASERs,
        RESTORE_TABLES (optional) and GITS_CTLR last. All is checked first: EBUSY while a vCPU
        runs or the ITS is enabled, EINVAL where KVM refuses, TypeError/ValueError naming the entry."""
        self._check_paused("set_registers")
        check_flag(restore_its_tables, "restore_its_tables")
        self.redist.check_registers(regs)
        Q.check_registers(self.its, regs)
        self.redist.set_registers(regs)
        Q.set_registers(self.its, regs, restore_tables=self.restore_its_tables if restore_its_tables else None)

    # ================================================================= snapshot files
    def save(self, path: str | os.PathLike[str], **kw: Any) -> SourceSave:
        """Write a migration snapshot of this VM to ``path``: the source side of a migration
        (pause, ``SAVE_TABLES``, ``SAVE_PENDING_TABLES``, registers, image), the file written
        atomically (:func:`vlpi.migration.save`; keywords such as ``policy`` and ``page_size``
        go there). The VM stays paused. Returns the source's report."""
        from vlpi import migration

        return migration.save(path, [self], **kw)

    @classmethod
    def load(cls, path: str | os.PathLike[str], **kw: Any) -> VM:
        """The VM restored from a one-VM snapshot file, in QEMU's order (:func:`vlpi.migration.load`,
        which also returns the verification against the source's pending state; a bad file is
        refused with :class:`vlpi.snapshot.SnapshotError` before anything is built)."""
        from vlpi import migration

        vms, _, _ = migration.load(path, **kw)
        if len(vms) != 1:
            raise ValueError(f"{path}: the snapshot holds {len(vms)} VMs; use vlpi.migration.load")
        return vms[0]

    # ================================================================= debug view
    def describe(self, max_rows: int = 64) -> str:
        """A vgic-debug-like dump: one line per LPI (INTID, vCPU, P/E/H flags, priority) for
        up to ``max_rows`` LPIs, then a summary (legend: :func:`vlpi.debug.lpi_lines`)."""
        lines = [
            f"VM: {self.n_vcpus} vCPUs, gic={self.gic}, initialized={self.initialized}, "
            f"running={int(self.running.sum())}, EnableLPIs={int(self.enable_lpis_state.sum())}/{self.n_vcpus}",
            f"{self.its!r}",
        ]
        if self.gicv4 is not None:
            lines.append(repr(self.gicv4))
        return "\n".join(lines + debug.lpi_lines(self.vgic, max_rows))

    def __repr__(self) -> str:
        g = self.vgic
        return (
            f"VM({self.n_vcpus} vCPUs, gic={self.gic!r}, {g.n} LPIs, {int(g['pending'].sum())} pending_latch, "
            f"{int(g['hw'].sum())} hw, {len(self.its.devices)} devices, {len(self.lost)} lost)"
        )


# migrate, MigrationReport and copy_memory live in vlpi.migration (the layer above the VM); they
# stay importable from here
_MIGRATION_NAMES = ("migrate", "MigrationReport", "copy_memory")


def __getattr__(name: str) -> Any:
    if name in _MIGRATION_NAMES:
        from vlpi import migration

        return getattr(migration, name)
    raise AttributeError(f"module 'vlpi.vm' has no attribute {name!r}")
