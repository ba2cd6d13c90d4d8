"""The redistributors of a VM: GICR_PROPBASER, GICR_PENDBASER, GICR_CTLR.EnableLPIs, and the
VM-level save of the pending tables (KVM's ``vgic-mmio-v3.c`` and ``vgic-v3.c``).

* ``GICR_PENDBASER`` per vCPU: PTZ stored but read as 0, RES0 bits cleared, ignored while
  EnableLPIs = 1;
* ``GICR_PROPBASER``, one per VM (IDbits; the LPI configuration table in guest RAM: priority
  and enable per LPI), ignored while the redistributor written through has EnableLPIs = 1;
* ``GICR_CTLR.EnableLPIs``: 0 -> 1 runs the pending-table scan :func:`vlpi.sync_pending_table`;
* ``KVM_DEV_ARM_VGIC_SAVE_PENDING_TABLES``: on GICv4.1 every vPE is unmapped around the engine
  (:func:`vlpi.save_pending_tables`) and mapped back on every exit path.

The register values live in the vgic core (:class:`vlpi.vgic.Vgic`: ``propbaser``,
``pendbaser``, ``lpis_enabled``, as KVM keeps them in ``vgic_dist``/``vgic_cpu``); this module is
the only one that writes them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vlpi import pending as engine
from vlpi._repr import fields_repr
from vlpi.errors import GuestMemoryFault
from vlpi.pending import ORDERS, SaveReport
from vlpi.vgic import PENDBASER_PTZ, LostReason, LostSource, Vgic, check_flag, check_reg, check_vcpu

__all__ = ["Redistributors", "VMSaveReport", "PENDBASER_RES0_MASK", "PROPBASER_RES0_MASK"]

PENDBASER_RES0_MASK = (1 << 63) | (7 << 59) | (0xF << 52) | (0xF << 12) | 0x7F
PROPBASER_RES0_MASK = (0x1F << 59) | (0xF << 52) | (3 << 5)


@dataclass(frozen=True)
class VMSaveReport:
    """What :meth:`VM.save_pending_tables <vlpi.VM.save_pending_tables>` did.

    Attributes
    ----------
    engine : SaveReport
        The engine's report (reads, writes, dirty pages, ...).
    vpes_unmapped, vpes_remapped : int
        vPEs actually unmapped before the walk and mapped back after it (GICv4.1).
    lost_in_window : int
        How many interrupts were lost (or missed by the image) while the vPEs were unmapped.
    lost : LostRecords
        Those records (:class:`~vlpi.vgic.LostRecords`, a table of :data:`~vlpi.vgic.LOST_DTYPE`).
    """

    engine: SaveReport | None
    vpes_unmapped: int
    vpes_remapped: int
    lost_in_window: int
    lost: np.ndarray = field(repr=False)

    def __repr__(self) -> str:
        return fields_repr(self, ("engine", "vpes_unmapped", "vpes_remapped", "lost_in_window", "lost"),
                           {"lost": "records"})


def check_save_args(order: object, atomic: object, during: object, during_at: object) -> None:
    """Refuse bad SAVE_PENDING_TABLES arguments before any vPE is unmapped."""
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    check_flag(atomic, "atomic")
    if during is not None and not callable(during):
        raise TypeError(f"during must be a callable or None, got {type(during).__name__}")
    if during_at not in ("after_walk", "before_walk"):
        raise ValueError(f"during_at must be 'after_walk' or 'before_walk', got {during_at!r}")


class Redistributors:
    """The LPI side of every redistributor of a VM, on the vgic core ``vgic``."""

    def __init__(self, vgic: Vgic) -> None:
        self.vgic = vgic
        self.last_scan_error: GuestMemoryFault | None = None

    def _vcpu(self, vcpu: object) -> int:
        return check_vcpu(vcpu, self.vgic.n_vcpus)

    # ================================================================ registers
    def write_pendbaser(self, vcpu: int, value: int) -> None:
        """Guest/userspace write of GICR_PENDBASER (ignored while EnableLPIs = 1; RES0 bits
        63, 61:59, 55:52, 15:12, 6:0 cleared; PTZ stored)."""
        v = self._vcpu(vcpu)
        value = check_reg(value, "value (GICR_PENDBASER)")
        if self.vgic.lpis_enabled[v]:
            return
        self.vgic.pendbaser[v] = np.uint64(value & ~PENDBASER_RES0_MASK)

    def read_pendbaser(self, vcpu: int) -> int:
        """GICR_PENDBASER as read back (PTZ reads as 0)."""
        return int(self.vgic.pendbaser[self._vcpu(vcpu)]) & ~PENDBASER_PTZ

    def write_propbaser(self, value: int, vcpu: int = 0) -> None:
        """Write GICR_PROPBASER through ``vcpu``'s redistributor (one value per VM; ignored while
        that redistributor has EnableLPIs = 1; RES0 bits cleared)."""
        value = check_reg(value, "value (GICR_PROPBASER)")
        v = self._vcpu(vcpu)
        if self.vgic.lpis_enabled[v]:
            return
        self.vgic.propbaser = value & ~PROPBASER_RES0_MASK

    def read_propbaser(self) -> int:
        return self.vgic.propbaser

    def write_ctlr(self, vcpu: int, value: int) -> None:
        """Write GICR_CTLR: bit 0 is EnableLPIs (see :meth:`enable_lpis`)."""
        self.enable_lpis(vcpu, bool(check_reg(value, "value (GICR_CTLR)", 32) & 1))

    def read_ctlr(self, vcpu: int) -> int:
        return int(self.vgic.lpis_enabled[self._vcpu(vcpu)])

    def enable_lpis(self, vcpu: int, enable: bool = True) -> None:
        """Set GICR_CTLR.EnableLPIs. On 0 -> 1 with the stored PTZ = 0 the vCPU's pending table
        is scanned (:func:`vlpi.sync_pending_table`, kernel-exact): bits become
        ``pending_latch`` of LPIs targeting this vCPU (an assignment: a set latch whose bit is
        0 is cleared, and named in the lost log as SCAN_CLEARED), RAM is not cleared. A scan
        fault is ignored, as by KVM (kept in ``last_scan_error``)."""
        g = self.vgic
        v = self._vcpu(vcpu)
        enable = check_flag(enable, "enable")
        was = bool(g.lpis_enabled[v])
        g.lpis_enabled[v] = bool(enable)
        if enable and not was and not (int(g.pendbaser[v]) & PENDBASER_PTZ) and g.n == 0:
            self.last_scan_error = None  # no LPI to scan for (QEMU's restore enables LPIs before RESTORE_TABLES)
        elif enable and not was and not (int(g.pendbaser[v]) & PENDBASER_PTZ):
            before = g["pending"].copy()
            try:
                engine.sync_pending_table(g.mem, g.pendbaser, g.lpitable(), v, atomic=False)
                self.last_scan_error = None
            except GuestMemoryFault as e:
                self.last_scan_error = e
            wiped = before & ~g["pending"]
            if wiped.any():  # e.g. latches restored by RESTORE_TABLES, whose RAM bits were consumed
                g.lost.record(LostSource.ENABLE_LPIS, LostReason.SCAN_CLEARED, -1, -1, g["intid"][wiped],
                              g["target"][wiped])

    def get_registers(self) -> dict[str, Any]:
        """``propbaser``, ``pendbaser`` (a list, PTZ reading 0) and ``ctlr`` (a list)."""
        n = self.vgic.n_vcpus
        return {
            "propbaser": self.vgic.propbaser,
            "pendbaser": [self.read_pendbaser(v) for v in range(n)],
            "ctlr": [self.read_ctlr(v) for v in range(n)],
        }

    def check_registers(self, regs: dict[str, Any]) -> dict[str, Any]:
        """Validate the redistributor part of ``regs``, changing nothing: ``propbaser`` a 64-bit
        value, ``pendbaser`` (64-bit) and ``ctlr`` (32-bit) one value per vCPU. Returns them."""
        if not isinstance(regs, dict):
            raise TypeError(f"regs must be a dict (as get_registers returns), got {type(regs).__name__}")
        n = self.vgic.n_vcpus
        for key in ("propbaser", "pendbaser", "ctlr"):
            if key not in regs:
                raise ValueError(f"regs has no {key!r} (the redistributor registers are propbaser, pendbaser, ctlr)")
        out: dict[str, Any] = {"propbaser": check_reg(regs["propbaser"], "regs['propbaser']")}
        for key, bits in (("pendbaser", 64), ("ctlr", 32)):
            lst = regs[key]
            if not isinstance(lst, (list, tuple, np.ndarray)) or np.ndim(lst) != 1:
                raise TypeError(f"regs[{key!r}] must be a list with one value per vCPU, got {type(lst).__name__}")
            if len(lst) != n:
                raise ValueError(f"regs[{key!r}] has {len(lst)} values but this VM has {n} vCPUs (one each)")
            out[key] = [check_reg(x, f"regs[{key!r}][{v}]", bits) for v, x in enumerate(lst)]
        return out

    def set_registers(self, regs: dict[str, Any]) -> None:
        """Userspace restore in QEMU's order: PROPBASER (through every redistributor),
        PENDBASERs, then GICR_CTLR (EnableLPIs scans run here). Values as :meth:`check_registers`."""
        r = self.check_registers(regs)
        n = self.vgic.n_vcpus
        for v in range(n):
            self.write_propbaser(r["propbaser"], v)
        for v in range(n):
            self.write_pendbaser(v, r["pendbaser"][v])
        for v in range(n):
            self.write_ctlr(v, r["ctlr"][v])

    # ================================================================ save
    def save_pending_tables(
        self,
        *,
        order: str = "intid",
        atomic: bool = True,
        during: Callable[[], object] | None = None,
        during_at: str = "after_walk",
    ) -> VMSaveReport:
        """KVM_DEV_ARM_VGIC_SAVE_PENDING_TABLES on a stopped VM (the caller checks that).

        On GICv4.1 every vPE is unmapped (its VPT becomes authoritative), the engine
        (:func:`vlpi.save_pending_tables`) merges ``pending_latch`` and VPT bits into the
        guest's tables, and the vPEs are mapped back (PTZ=0) on every exit path: success,
        guest-memory fault, or an exception in ``during``. On GICv4.0 the VLPIs' state cannot
        be read: pending VLPIs are saved as not pending, and named in the report
        (VLPI_UNSAVED). ``lost_in_window`` counts every record this call added. ``during``
        (no argument here) and ``during_at`` are as in :meth:`vlpi.VM.save_pending_tables`."""
        check_save_args(order, atomic, during, during_at)
        g = self.vgic
        gicv4 = g.gicv4
        v41 = gicv4 is not None and gicv4.has_gicv4_1
        mark = len(g.lost)
        unmapped = gicv4.unmap_all_vpes() if gicv4 is not None and v41 else 0
        remapped = 0
        rep = None
        try:
            if during is not None and during_at == "before_walk":
                during()
            rep = engine.save_pending_tables(
                g.mem, g.pendbaser, g.lpitable(), vpt=gicv4.vpt if gicv4 is not None and v41 else None,
                has_gicv4_1=v41, order=order, atomic=atomic,
            )
        finally:
            try:
                if during is not None and during_at == "after_walk" and rep is not None:
                    before = g["pending"].copy()
                    intids = g["intid"].copy()
                    during()
                    now_rows = g.rows(intids)
                    alive = now_rows >= 0
                    newly = np.zeros(intids.size, bool)
                    newly[alive] = g["pending"][now_rows[alive]] & ~before[alive]
                    if newly.any():
                        g.lost.record(LostSource.SAVE, LostReason.NOT_IN_SAVED_IMAGE, -1, -1, intids[newly],
                                      g["target"][now_rows[newly]])
            finally:
                if gicv4 is not None and v41:
                    remapped = gicv4.map_all_vpes()
        if gicv4 is not None and not v41 and rep is not None:
            h = np.flatnonzero(g["hw"] & ~g["pending"] & (g["target"] >= 0))
            if h.size:
                p = gicv4.vlpi_pending(g["target"][h], g["intid"][h])
                if p.any():
                    g.lost.record(LostSource.SAVE, LostReason.VLPI_UNSAVED, -1, -1, g["intid"][h[p]],
                                  g["target"][h[p]])
        lost = g.lost.records[mark:].copy()
        return VMSaveReport(rep, unmapped, remapped, int(lost.size), lost)
