"""A vgic-debug-like dump of a VM's LPIs (KVM's ``vgic-debug.c``): one line per LPI with a
one-letter legend, then a summary. Used by :meth:`vlpi.VM.describe`."""

from __future__ import annotations

import numpy as np

from vlpi.vgic import Vgic

__all__ = ["lpi_lines"]


def lpi_lines(vgic: Vgic, max_rows: int = 64) -> list[str]:
    """Lines for up to ``max_rows`` LPIs in INTID order (INTID, vCPU, P/E/H flags, priority),
    a summary line, the per-vCPU counts and the lost-interrupt summary.

    Legend: P = pending (``pending_latch``, or the VLPI's hardware state when H),
    E = enabled, H = hw (forwarded as a VLPI); ``-`` = not set; vCPU -1 = no target.
    """
    if isinstance(max_rows, (bool, np.bool_)) or not isinstance(max_rows, (int, np.integer)) or max_rows < 0:
        raise ValueError(f"max_rows must be a non-negative integer, got {max_rows!r}")
    g = vgic
    lines = []
    pend = g.pending_now()
    intid, target, enabled, hw, prio = g["intid"], g["target"], g["enabled"], g["hw"], g["priority"]
    if g.n:
        lines.append("Legend: P=pending E=enabled H=hw(VLPI)")
        lines.append(f"{'INTID':>8} {'vCPU':>5} PEH {'prio':>4}")
        for r in np.argsort(intid, kind="stable")[:max_rows].tolist():
            flags = ("P" if pend[r] else "-") + ("E" if enabled[r] else "-") + ("H" if hw[r] else "-")
            lines.append(f"{int(intid[r]):>8} {int(target[r]):>5} {flags} {int(prio[r]):>#4x}")
        if g.n > max_rows:
            lines.append(f"... {g.n - max_rows} more LPIs")
    lines.append(
        f"LPIs: {g.n} total, {int(pend.sum())} pending, {int(enabled.sum())} enabled, "
        f"{int(hw.sum())} hw, {int(np.count_nonzero(target < 0))} without target"
    )
    if g.n:
        per = np.bincount(target[target >= 0], minlength=g.n_vcpus)
        lines.append("per vCPU: " + " ".join(f"{v}:{int(c)}" for v, c in enumerate(per[:16])) +
                     (" ..." if g.n_vcpus > 16 else ""))
    lines.append(f"lost: {len(g.lost)} {g.lost.summary()}")
    return lines
