"""GICv4 / GICv4.1 host side: vPEs, virtual pending tables (VPTs), residency, doorbells.

How KVM uses GICv4 (the story this module models)
-------------------------------------------------
A VM on a GICv4.x host gets one *vPE* per vCPU. When a passthrough device's MSI resolves,
through the guest's virtual ITS, to an LPI, VFIO asks KVM to *forward* it
(``kvm_vgic_v4_set_forwarding``): the host driver replaces the physical mapping with a
virtual one (VMAPTI: DeviceID/EventID -> vPE, vINTID = the guest's INTID), the LPI becomes
``hw``, and if its software ``pending_latch`` was set the driver sends an INT so the bit lands
in the vPE's *VPT*; ``pending_latch`` is then cleared. From then on the device's MSIs go
straight to hardware: the GIC sets the vINTID's bit in the VPT, and if the vPE is not
resident on a CPU it raises the vPE's *doorbell* (one default doorbell per vPE on v4.1, one
doorbell per VLPI on v4.0) so the host can schedule the vCPU.

While the GIC owns a VPT (the vPE is *mapped* in the ITS, VMAPP V=1, or *resident* on a
redistributor, GICR_VPENDBASER.Valid=1) the table in memory is not authoritative: the
redistributor and the ITS may hold pending state in private caches. Only after the vPE is
made non-resident (Valid=0, then polling until Dirty reads 0: the RD has written its state
back) **and** unmapped (VMAPP V=0 with Alloc=1 on the last unmap: the GIC cleans its VPT
caches) does memory hold every pending VLPI. This is why ``vgic_v3_save_pending_tables`` on
a GICv4.1 host unmaps every vPE, reads VPT bits, and maps the vPEs back (PTZ=0, so bits that
were pending survive). Any VLPI raised while a vPE is unmapped has nowhere to go: it is lost,
and so is its doorbell. Unforwarding (``kvm_vgic_v4_unset_forwarding``) DISCARDs the virtual
mapping: a pending VLPI is discarded, not transferred back to ``pending_latch``.

GICv4.0 has none of the cache-clean guarantees: the VPT is never readable (``EACCES``), and
KVM's ITS save refuses forwarded LPIs.

Model
-----
:class:`GICv4` keeps, per vPE, the VPT as it is in memory (``vpt``, uint8
``[n_vpes, vpt_bytes]``) and the GIC's live view (``_live``). Ownership passes to the GIC
(``_live := vpt``, or zeros with PTZ=1) when the vPE becomes mapped or resident, and back
(``vpt := _live``) when it is neither mapped nor resident and the Dirty handshake has
completed. VLPI operations act on ``_live`` while the GIC owns the table.
"""

from __future__ import annotations

import errno as _errno
from collections import deque

import numpy as np
import numpy.typing as npt

from vlpi._typing import BoolArray, I64Array, IntLike, U8Array

__all__ = ["GICv4", "VPT_BYTES", "DOORBELL_NONE", "GICv4Error"]

VPT_BYTES = 1 << 16  # LPI_PENDBASE_SZ: 16 vINTID bits -> 8 KiB, aligned up to 64 KiB
DOORBELL_NONE = 1023

VPENDBASER_VALID = 1 << 63
VPENDBASER_DB = 1 << 62
VPENDBASER_PENDINGLAST = 1 << 61
VPENDBASER_DIRTY = 1 << 60


def _copy(dst: np.ndarray, src: np.ndarray) -> None:
    """dst[:] = src, skipped when both are all zero: a read of untouched (calloc) pages does not
    commit them, a write would (measured, 2048 idle vPEs: first VM save 368 ms -> 39 ms)."""
    if src.view(np.uint64).any() or dst.view(np.uint64).any():
        dst[:] = src


class GICv4Error(OSError):
    """A host-side GICv4 operation that the hardware model refuses (errno EACCES/EINVAL)."""


class GICv4:
    """The GICv4.x host side for one VM: one vPE per vCPU.

    Parameters
    ----------
    n_vpes : int
        Number of vPEs (= vCPUs).
    version : {"v4.1", "v4.0"}
    vpt_bytes : int
        Bytes per VPT (default 64 KiB, as Linux allocates). VMAPTI refuses vINTIDs beyond it.

    Attributes
    ----------
    vpt : numpy.ndarray
        uint8 ``[n_vpes, vpt_bytes]``: the VPTs as they are in host memory. Authoritative for
        vPE ``v`` only when :meth:`authoritative` says so.
    mapped, resident : numpy.ndarray of bool
        VMAPP V and GICR_VPENDBASER.Valid per vPE.
    vpendbaser : numpy.ndarray of uint64
        The v4.1 VPENDBASER per vPE (Valid, DB, PendingLast, Dirty, vPEID).
    doorbells : numpy.ndarray of int64
        Doorbells raised per vPE (default doorbell on v4.1, per-VLPI doorbells on v4.0).
    vlpi_count : numpy.ndarray of int64
        VLPIs mapped (VMAPTI) per vPE.
    counts : dict
        Commands issued to the physical ITS: VMAPP, VMAPTI, VMOVI, VMOVP, VSYNC, VINVALL,
        INVDB, INT, CLEAR, DISCARD.
    """

    def __init__(self, n_vpes: int, *, version: str = "v4.1", vpt_bytes: int = VPT_BYTES) -> None:
        if version not in ("v4.1", "v4.0"):
            raise ValueError(f"version must be 'v4.1' or 'v4.0', got {version!r}")
        for name, x in (("n_vpes", n_vpes), ("vpt_bytes", vpt_bytes)):
            if isinstance(x, (bool, np.bool_)) or not isinstance(x, (int, np.integer)):
                raise TypeError(f"{name} must be an integer, got {x!r} ({type(x).__name__})")
        if n_vpes < 1:
            raise ValueError(f"n_vpes must be >= 1, got {n_vpes}")
        if vpt_bytes < 1024 or vpt_bytes % 8:
            raise ValueError(f"vpt_bytes must be a multiple of 8 and >= 1024, got {vpt_bytes}")
        self.version = version
        self.n_vpes = int(n_vpes)
        self.vpt_bytes = int(vpt_bytes)
        self.vpt = np.zeros((n_vpes, vpt_bytes), dtype=np.uint8)  # calloc: lazily committed
        self._live = np.zeros((n_vpes, vpt_bytes), dtype=np.uint8)
        self.mapped = np.zeros(n_vpes, dtype=bool)
        self.resident = np.zeros(n_vpes, dtype=bool)
        self.vmapp_count = np.zeros(n_vpes, dtype=np.int32)
        self.vpendbaser = np.arange(n_vpes, dtype=np.uint64) & np.uint64(0xFFFF)
        self.doorbells = np.zeros(n_vpes, dtype=np.int64)
        self.vlpi_count = np.zeros(n_vpes, dtype=np.int64)
        #: the last VMAPPs issued: (vPE, V, Alloc, PTZ), at most 65536 kept
        self.vmapp_log: deque[tuple[int, bool, bool, bool]] = deque(maxlen=1 << 16)
        self.counts = dict.fromkeys(
            ("VMAPP", "VMAPTI", "VMOVI", "VMOVP", "VSYNC", "VINVALL", "INVDB", "INT", "CLEAR", "DISCARD"), 0
        )

    @property
    def has_gicv4_1(self) -> bool:
        return self.version == "v4.1"

    # ------------------------------------------------------------ ownership
    def _owned(self, v: int) -> bool:
        return bool(self.mapped[v] or self.resident[v] or (int(self.vpendbaser[v]) & VPENDBASER_DIRTY))

    def _take(self, v: int, ptz: bool) -> None:
        """The GIC takes ownership of VPT ``v`` (parses it unless PTZ)."""
        if ptz:
            self._live[v] = 0
        else:
            _copy(self._live[v], self.vpt[v])

    def _release(self, v: int) -> None:
        """The GIC hands VPT ``v`` back: memory now holds every pending VLPI."""
        _copy(self.vpt[v], self._live[v])

    def authoritative(self, vpe: int) -> bool:
        """True when VPT ``vpe`` in memory is the complete VLPI pending state (GICv4.1 only:
        the vPE is non-resident with the Dirty handshake complete, and unmapped)."""
        return self.has_gicv4_1 and not self._owned(int(vpe))

    def read_vpt(self, vpe: int) -> U8Array:
        """A read-only view of VPT ``vpe`` as the host may read it.

        Raises
        ------
        GICv4Error
            EACCES on GICv4.0 (no guarantee the VPT holds the state) or while the GIC owns the
            table (mapped, resident, or Dirty not yet clear).
        """
        v = self._vpe(vpe)
        if not self.has_gicv4_1:
            raise GICv4Error(_errno.EACCES, "GICv4.0: the VPT is not guaranteed to hold the VLPI state")
        if self._owned(v):
            raise GICv4Error(
                _errno.EACCES,
                f"vPE {v}: the VPT is owned by the GIC (mapped={bool(self.mapped[v])}, "
                f"resident={bool(self.resident[v])}); unmap it and make it non-resident first",
            )
        out: U8Array = self.vpt[v]
        out = out.view()
        out.flags.writeable = False
        return out

    def _vpe(self, vpe: IntLike) -> int:
        v = int(vpe)
        if not 0 <= v < self.n_vpes:
            raise ValueError(f"vPE {v} out of range [0, {self.n_vpes})")
        return v

    # ------------------------------------------------------------ VMAPP
    def vmapp(self, vpe: int, valid: bool, *, ptz: bool = False) -> None:
        """VMAPP: map (V=1) or unmap (V=0) a vPE in the ITS.

        Alloc is derived as Linux does (1 on the first map and on the last unmap); on v4.1 the
        last unmap cleans the GIC's caches, so an unmapped, non-resident vPE's VPT in memory is
        authoritative. ``ptz=True`` on a map tells the GIC the VPT is all zero: whatever pending
        bits it held are ignored (Linux never sets PTZ since ``c21bc068cdbe``).
        """
        v = self._vpe(vpe)
        self.counts["VMAPP"] += 1
        v41 = self.has_gicv4_1
        if valid:
            if self.mapped[v]:
                return
            was_owned = self._owned(v)
            self.mapped[v] = True
            self.vmapp_log.append((v, True, v41 and self.vmapp_count[v] == 0, bool(ptz and v41)))
            self.vmapp_count[v] += 1
            if not was_owned:
                self._take(v, ptz and v41)
        else:
            if not self.mapped[v]:
                return
            self.mapped[v] = False
            self.vmapp_count[v] = max(0, int(self.vmapp_count[v]) - 1)
            self.vmapp_log.append((v, False, v41 and self.vmapp_count[v] == 0, False))
            if not self._owned(v):
                self._release(v)

    def unmap_all_vpes(self) -> int:
        """VMAPP V=0 (+VSYNC) for every mapped vPE; returns how many were unmapped."""
        n = 0
        for v in np.flatnonzero(self.mapped):
            self.vmapp(int(v), False)
            self.counts["VSYNC"] += 1
            n += 1
        return n

    def map_all_vpes(self) -> int:
        """VMAPP V=1 PTZ=0 and VINVALL for every unmapped vPE; returns how many were mapped."""
        n = 0
        for v in np.flatnonzero(~self.mapped):
            self.vmapp(int(v), True, ptz=False)
            self.counts["VINVALL"] += 1
            n += 1
        return n

    # ------------------------------------------------------- residency
    def schedule(self, vpe: int) -> None:
        """Make the vPE resident (VPENDBASER.Valid=1); the RD parses the VPT (Dirty polled to 0)."""
        v = self._vpe(vpe)
        if self.resident[v]:
            return
        was_owned = self._owned(v)
        self.resident[v] = True
        if not was_owned:
            self._take(v, False)
        self.vpendbaser[v] = np.uint64(VPENDBASER_VALID | (v & 0xFFFF))

    def deschedule(self, vpe: int, *, wait: bool = True, doorbell: bool = True) -> None:
        """Make the vPE non-resident (Valid=0, DB=``doorbell``). The RD writes its pending
        state back to the VPT and sets Dirty until done; ``wait=True`` polls until Dirty=0,
        ``wait=False`` leaves Dirty set (call :meth:`poll_dirty`)."""
        v = self._vpe(vpe)
        if not self.resident[v]:
            return
        self.resident[v] = False
        val = (v & 0xFFFF) | VPENDBASER_DIRTY | (VPENDBASER_DB if doorbell else 0)
        self.vpendbaser[v] = np.uint64(val)
        if wait:
            self.poll_dirty(v)

    def poll_dirty(self, vpe: int) -> bool:
        """Complete the Dirty handshake of a descheduled vPE; returns True once Dirty reads 0."""
        v = self._vpe(vpe)
        if int(self.vpendbaser[v]) & VPENDBASER_DIRTY:
            self.vpendbaser[v] = np.uint64(int(self.vpendbaser[v]) & ~VPENDBASER_DIRTY)
            if not self._owned(v):
                self._release(v)
        return True

    # ------------------------------------------------------- VLPIs (bulk)
    def _check_vintids(self, intids: np.ndarray, what: str) -> None:
        bad = np.flatnonzero((intids >> 3) >= self.vpt_bytes)
        if bad.size:
            raise ValueError(
                f"{what}: vINTID intids[{bad[0]}] = {intids[bad[0]]} lies beyond the "
                f"{self.vpt_bytes}-byte VPT"
            )

    def vmapti(self, vpes: npt.ArrayLike, intids: npt.ArrayLike) -> None:
        """VMAPTI: map VLPIs (vINTID = ``intids``) to ``vpes``. v4.1: no per-VLPI doorbell."""
        vp = np.asarray(vpes, dtype=np.int64).reshape(-1)
        it = np.asarray(intids, dtype=np.int64).reshape(-1)
        self._check_vintids(it, "VMAPTI")
        if vp.size and 0 <= int(vp.min()) and int(vp.max()) < self.n_vpes:  # a count, not np.add.at
            self.vlpi_count += np.bincount(vp, minlength=self.n_vpes)
        else:
            np.add.at(self.vlpi_count, vp, 1)
        self.counts["VMAPTI"] += int(vp.size)

    def vlpi_pending(self, vpes: npt.ArrayLike, intids: npt.ArrayLike) -> BoolArray:
        """The hardware's view of each VLPI's pending bit (the live state, whoever owns it)."""
        vp, it = self._pair(vpes, intids)
        byte: U8Array = np.where(self._owned_mask(vp), self._live[vp, it >> 3], self.vpt[vp, it >> 3])
        return ((byte >> (it & 7).astype(np.uint8)) & 1).astype(bool)

    def _owned_mask(self, vp: I64Array) -> BoolArray:
        dirty: BoolArray = (self.vpendbaser[vp] & np.uint64(VPENDBASER_DIRTY)) != 0
        return self.mapped[vp] | self.resident[vp] | dirty

    def _pair(self, vpes: npt.ArrayLike, intids: npt.ArrayLike) -> tuple[I64Array, I64Array]:
        vp = np.asarray(vpes, dtype=np.int64).reshape(-1)
        it = np.asarray(intids, dtype=np.int64).reshape(-1)
        if vp.shape != it.shape:
            raise ValueError(f"vpes has {vp.size} entries but intids has {it.size}")
        return vp, it

    def raise_vlpis(
        self, vpes: npt.ArrayLike, intids: npt.ArrayLike, *, source: str = "INT"
    ) -> tuple[BoolArray, BoolArray]:
        """A device MSI (or an INT on the host DeviceID/EventID) for forwarded LPIs.

        Returns ``(delivered, doorbell)`` bool arrays: delivered is False where the vPE is not
        mapped in the ITS (the VLPI is lost: the GIC does not own the VPT); doorbell is True
        where a doorbell was raised (mapped, non-resident vPE and the bit went 0 -> 1).
        """
        vp, it = self._pair(vpes, intids)
        if source == "INT":
            self.counts["INT"] += int(vp.size)
        ok = self.mapped[vp]
        if vp.size == 0:
            return ok, ok.copy()
        v2, i2 = vp[ok], it[ok]
        was = ((self._live[v2, i2 >> 3] >> (i2 & 7).astype(np.uint8)) & 1).astype(bool)
        # sequential semantics for duplicates: only the first MSI of a (vpe, intid) can see 0
        key = v2 * (1 << 24) + i2
        first = np.zeros(key.size, dtype=bool)
        if key.size:
            _, idx = np.unique(key, return_index=True)
            first[idx] = True
        np.bitwise_or.at(self._live, (v2, i2 >> 3), (np.uint8(1) << (i2 & 7).astype(np.uint8)))
        db = np.zeros(vp.size, dtype=bool)
        rings = (~was) & first & ~self.resident[v2]
        db[np.flatnonzero(ok)[rings]] = True
        np.add.at(self.doorbells, v2[rings], 1)
        return ok, db

    def clear_vlpis(self, vpes: npt.ArrayLike, intids: npt.ArrayLike) -> BoolArray:
        """CLEAR on forwarded LPIs. Returns where the clear reached the GIC (vPE mapped)."""
        vp, it = self._pair(vpes, intids)
        self.counts["CLEAR"] += int(vp.size)
        ok = self.mapped[vp] | self.resident[vp]
        v2, i2 = vp[ok], it[ok]
        np.bitwise_and.at(self._live, (v2, i2 >> 3), ~(np.uint8(1) << (i2 & 7).astype(np.uint8)))
        return ok

    def discard_vlpis(self, vpes: npt.ArrayLike, intids: npt.ArrayLike) -> BoolArray:
        """DISCARD of VLPI mappings (unforwarding, or the guest freeing a forwarded ITE): the
        pending state is discarded. Returns which of them were pending (now lost)."""
        vp, it = self._pair(vpes, intids)
        self.counts["DISCARD"] += int(vp.size)
        was = self.vlpi_pending(vp, it)
        own = self._owned_mask(vp)
        mask = ~(np.uint8(1) << (it & 7).astype(np.uint8))
        np.bitwise_and.at(self._live, (vp[own], it[own] >> 3), mask[own])
        np.bitwise_and.at(self.vpt, (vp[~own], it[~own] >> 3), mask[~own])
        np.add.at(self.vlpi_count, vp, -1)
        return was

    def vmovi(self, intids: npt.ArrayLike, from_vpes: npt.ArrayLike, to_vpes: npt.ArrayLike) -> None:
        """VMOVI: move VLPIs to another vPE; a pending bit moves with it."""
        it = np.asarray(intids, dtype=np.int64).reshape(-1)
        fv = np.asarray(from_vpes, dtype=np.int64).reshape(-1)
        tv = np.asarray(to_vpes, dtype=np.int64).reshape(-1)
        self.counts["VMOVI"] += int(it.size)
        pend = self.vlpi_pending(fv, it)
        self.discard_vlpis(fv, it)
        self.counts["DISCARD"] -= int(it.size)
        self.vmapti(tv, it)
        self.counts["VMAPTI"] -= int(it.size)
        if pend.any():
            v2, i2 = tv[pend], it[pend]
            own = self._owned_mask(v2)
            bit = np.uint8(1) << (i2 & 7).astype(np.uint8)
            np.bitwise_or.at(self._live, (v2[own], i2[own] >> 3), bit[own])
            np.bitwise_or.at(self.vpt, (v2[~own], i2[~own] >> 3), bit[~own])

    def acknowledge(self, vpe: int, intids: npt.ArrayLike) -> None:
        """The resident vCPU took these VLPIs: their bits clear in the live state."""
        v = self._vpe(vpe)
        it = np.asarray(intids, dtype=np.int64).reshape(-1)
        np.bitwise_and.at(self._live, (np.full(it.size, v), it >> 3), ~(np.uint8(1) << (it & 7).astype(np.uint8)))

    def vmovp(self, vpe: int) -> None:
        self._vpe(vpe)
        self.counts["VMOVP"] += 1

    def vsync(self, vpe: int) -> None:
        self._vpe(vpe)
        self.counts["VSYNC"] += 1

    def vinvall(self, vpe: int) -> None:
        self._vpe(vpe)
        self.counts["VINVALL"] += 1

    def invdb(self, vpe: int) -> None:
        """INVDB (v4.1): invalidate the cached doorbell configuration of a vPE."""
        self._vpe(vpe)
        if not self.has_gicv4_1:
            raise GICv4Error(_errno.EINVAL, "INVDB is a GICv4.1 command")
        self.counts["INVDB"] += 1

    def __repr__(self) -> str:
        return (
            f"GICv4({self.version}, {self.n_vpes} vPEs, {int(self.mapped.sum())} mapped, "
            f"{int(self.resident.sum())} resident, {int(self.vlpi_count.sum())} VLPIs, "
            f"{int(self.doorbells.sum())} doorbells)"
        )
