"""GICv4 direct injection for a VM: its vPEs and the forwarding of device MSIs as VLPIs (KVM's
``vgic-v4.c``; the host GIC itself is :class:`vlpi.gicv4.GICv4`).

* vPEs: allocated and mapped (VMAPP V=1) when the vgic is initialised, made resident on the
  CPU when their vCPU enters KVM_RUN and non-resident when it leaves (:meth:`Forwarding.init`,
  :meth:`Forwarding.load`, :meth:`Forwarding.put`);
* :meth:`Forwarding.forward` (``kvm_vgic_v4_set_forwarding``): the event's LPI becomes a VLPI
  of its target's vPE (``hw``), a set ``pending_latch`` moves into the VPT;
* :meth:`Forwarding.unforward` (``kvm_vgic_v4_unset_forwarding``): the VLPI mapping is
  DISCARDed, a pending VLPI is lost.

Events are resolved through the virtual ITS (:meth:`vlpi.its.VirtualITS.resolve`), the LPIs
changed through the vgic core (:meth:`vlpi.vgic.Vgic.map_vlpis`, ``unmap_vlpis``).
"""

from __future__ import annotations

import errno as _errno

import numpy as np
import numpy.typing as npt

from vlpi.its.its import VirtualITS, event_pairs
from vlpi.vgic import LostReason, LostSource, Vgic, VMError

__all__ = ["Forwarding"]


class Forwarding:
    """The vPEs of a VM on a GICv4.x host and the forwarding of events (``vgic.gicv4`` None: a
    GICv3 host, where forwarding is refused with ENODEV and the vPE calls do nothing)."""

    def __init__(self, vgic: Vgic, its: VirtualITS) -> None:
        self.vgic = vgic
        self.its = its

    # ================================================================ vPEs
    def init(self) -> None:
        """Allocate and map every vPE (VMAPP V=1, Alloc=1)."""
        if self.vgic.gicv4 is not None:
            self.vgic.gicv4.map_all_vpes()

    def load(self, vcpu: int) -> None:
        """The vCPU enters KVM_RUN: its vPE becomes resident."""
        if self.vgic.gicv4 is not None:
            self.vgic.gicv4.schedule(vcpu)

    def put(self, vcpu: int) -> None:
        """The vCPU leaves KVM_RUN: its vPE becomes non-resident (Dirty handshake completed)."""
        if self.vgic.gicv4 is not None:
            self.vgic.gicv4.deschedule(vcpu)

    # ================================================================ forwarding
    def _check(self) -> None:
        if self.vgic.gicv4 is None:
            raise VMError(_errno.ENODEV, "forwarding needs a GICv4.x host (gic='v4.0' or 'v4.1')")

    def forward(self, device_ids: npt.ArrayLike, event_ids: npt.ArrayLike) -> npt.NDArray[np.bool_]:
        """Set up forwarding (kvm_vgic_v4_set_forwarding) for events, vectorised.

        VMAPTI each event's LPI to its target's vPE, mark it ``hw``, and move a set
        ``pending_latch`` into the VPT (an INT), then clear the latch. Only events that
        ``vgic_its_resolve_lpi`` resolves are forwarded: the ITS enabled, an ITE whose
        collection is mapped, EnableLPIs = 1 on that vCPU, and an LPI with a target (KVM falls
        back to software injection otherwise); already forwarded ones stay as they are.

        Returns
        -------
        numpy.ndarray of bool
            True where the event is now forwarded (its MSIs go to the GIC directly). An LPI has
            one host IRQ: a second event naming an already forwarded LPI is not forwarded (its
            MSIs go through KVM, which sends a hardware INT).
        """
        self._check()
        d, e = event_pairs(device_ids, event_ids)
        ite, intid = self.its.resolve(d, e)
        ok, new = self.vgic.map_vlpis(np.where(self.its.resolvable(ite), intid, 0))
        self.its.set_forwarded(ite[new])
        return ok & self.its.forwarded(ite)

    def unforward(self, device_ids: npt.ArrayLike, event_ids: npt.ArrayLike) -> npt.NDArray[np.bool_]:
        """Tear down forwarding for events (see :meth:`vlpi.VM.unforward`). Returns, per event,
        True where a pending VLPI was discarded."""
        self._check()
        d, e = event_pairs(device_ids, event_ids)
        _, intid = self.its.resolve(d, e)
        unmapped, was = self.vgic.unmap_vlpis(intid, d, e, LostSource.FORWARDING, LostReason.UNFORWARDED_PENDING)
        self.its.clear_forwarded(intid[unmapped])
        return was
