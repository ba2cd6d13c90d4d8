"""vlpi: arm64 KVM LPI/VLPI pending-table save and restore, modelled bit-exactly and fast.

How KVM migrates interrupt pending state, and where each step lives in vlpi
===========================================================================

LPIs and their tables.
    A VM's message-signalled interrupts are LPIs (INTID >= 8192). Each vCPU's redistributor points
    at a *pending table* in guest RAM (``GICR_PENDBASER`` bits [51:16]): one bit per INTID, byte
    ``intid // 8``, bit ``intid % 8``, the first KiB unused. KVM keeps the live state of each LPI in
    a ``struct vgic_irq`` (``pending_latch``, ``target_vcpu``, ``hw``) and writes the tables only
    when userspace asks: at migration. In vlpi, guest RAM is a :class:`GuestMemory` (byte-granular
    memslots, faults, dirty log) and the LPIs of a VM are an :class:`LPITable` (struct of arrays).

Forwarded interrupts (GICv4.1).
    A passed-through device's MSI can be injected by the GIC directly as a VLPI. Its pending bit
    then lives in the GIC's *virtual pending table* (VPT) of the target vPE, which the CPU may read
    only while the vPE is unmapped from every ITS (``VMAPP V=0``, the last unmap cleaning the GIC's
    caches). GICv4.0 has no such guarantee: KVM refuses the ITS save with ``EACCES``.

Save (source, vCPUs and devices paused): :func:`save_pending_tables`.
    ``KVM_DEV_ARM_VGIC_SAVE_PENDING_TABLES`` unmaps every vPE (GICv4.1), walks the LPIs in INTID
    order (creation order before Linux 6.9), and for each targeted LPI reads the guest byte
    ``pendbase + intid // 8`` (a 1-byte cache keyed on the guest address), takes the wanted state
    (``pending_latch``, or the VPT bit for a forwarded LPI on GICv4.1), and writes the byte back
    if the bit differs, one 1-byte write per changed bit. It maps the vPEs back on every exit path,
    so a failed migration can resume the source; an interrupt that arrives while they are
    unmapped is lost. :func:`save_pending_tables_many` does this for every VM of a host at once.

Restore (target): :func:`sync_pending_status` and :func:`sync_pending_table`.
    Restoring the ITS tables creates each LPI and reads its bit (``vgic_v3_lpi_sync_pending_status``:
    assign ``pending_latch``, clear the consumed bit in RAM). Setting ``GICR_CTLR.EnableLPIs``
    scans a vCPU's table without clearing anything. When a device re-establishes forwarding,
    ``pending_latch`` is pushed into the VPT (an ITS ``INT``) and cleared.

How vlpi computes a save.
    The kernel's final memory does not depend on its schedule, only its access counts do, and
    those are fixed by the layout. vlpi builds, once per LPI table and PENDBASER set, a compact
    plan (LPIs sorted by guest address, as strided runs), walks guest memory in address order on
    both cores, and reports the kernel's exact reads, writes, VPT reads, changed bytes and dirty
    pages. ``atomic=True`` (default) checks first that no access of the kernel's walk would fault
    and raises before writing anything if one would; ``atomic=False`` is the kernel's partial save.
    See :mod:`vlpi.pending`.

How the VM model is layered (one file per concern, each layer using only the ones below it).
    ::

        migration.py      migrate() / migrate_host(): source stop, snapshot, destination restore,
          |               verification, faults and rollback; snapshot.py: the snapshot file
          v
        vm.py             VM: memory + core + redistributors + ITS + vPEs, the user-facing verbs
          +--> redistributor.py   Redistributors: PROPBASER/PENDBASER/CTLR registers, EnableLPIs
          |                       scan, VM-level SAVE_PENDING_TABLES        (vgic-mmio-v3.c, vgic-v3.c)
          +--> forwarding.py      Forwarding: vPE map/schedule, forward/unforward  (vgic-v4.c)
          |      |
          +--> its/               VirtualITS: devices, collections, ITEs, commands, command
          |                       queue and its registers, table ABI        (vgic-its.c)
          +--> debug.py           the one-letter-legend LPI dump            (vgic-debug.c)
                 |
                 v
        vgic.py           Vgic, the core: owns the LPIs (struct of arrays), the lost-interrupt
                          log and the LPI-facing register values; API: get_lpis/put_lpis,
                          retarget, inject, clear_pending, update_config, map_vlpis/unmap_vlpis,
                          acknowledge                                       (vgic.c)
                 |
                 v
        gicv4.py (host vPEs and VPTs), pending.py (engine), lpi.py, memory.py, errors.py

    Who owns what: ``Vgic`` every LPI's state (``intid``, ``target``, ``pending``, ``hw``,
    ``priority``, ``enabled``, references), ``vm.lost``, and the stored PROPBASER, PENDBASERs and
    EnableLPIs (written only by :mod:`vlpi.redistributor`); ``VirtualITS`` devices, collections,
    ITEs (and which event was forwarded) and the GITS_* registers; ``GICv4`` the vPEs, VPTs and
    doorbells; ``VM`` only whether the vgic is initialised, which vCPUs run, and whether
    devices are quiesced. No module uses another's underscore names.
"""

from typing import Any

from vlpi import _config  # noqa: F401  (must precede any numba import)
from vlpi.errors import GuestMemoryFault
from vlpi.lpi import LPITable
from vlpi.memory import GuestMemory
from vlpi.pending import (
    SaveReport,
    SyncReport,
    save_pending_tables,
    save_pending_tables_many,
    sync_pending_status,
    sync_pending_table,
)

# The VM/ITS/GICv4 model is imported on first use (PEP 562): an engine-only user (migration
# tooling, the benchmarks) does not pay its import time (~40 ms measured).
_LAZY = {
    "VM": "vlpi.vm",
    "VMError": "vlpi.vm",
    "VMSaveReport": "vlpi.vm",
    "MigrationReport": "vlpi.migration",
    "migrate": "vlpi.migration",
    "LostReason": "vlpi.vm",
    "LostSource": "vlpi.vm",
    "LostInterruptLog": "vlpi.vm",
    "LostRecords": "vlpi.vgic",
    "LostRecord": "vlpi.vgic",
    "GICv4": "vlpi.gicv4",
    "GICv4Error": "vlpi.gicv4",
}


# Subpackages a user reaches as ``vlpi.<name>`` after a plain ``import vlpi``, also loaded on first use.
_LAZY_MODULES = ("migration", "snapshot", "qemu", "vm", "its", "gicv4", "scenarios")


def __getattr__(name: str) -> Any:
    import importlib

    if name in _LAZY_MODULES:
        return importlib.import_module(f"vlpi.{name}")
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'vlpi' has no attribute {name!r}")
    value = getattr(importlib.import_module(mod), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY) | set(_LAZY_MODULES))


__all__ = [
    "VM",
    "VMError",
    "VMSaveReport",
    "MigrationReport",
    "migrate",
    "LostReason",
    "LostSource",
    "LostInterruptLog",
    "LostRecords",
    "LostRecord",
    "GICv4",
    "GICv4Error",
    "GuestMemory",
    "GuestMemoryFault",
    "LPITable",
    "SaveReport",
    "SyncReport",
    "save_pending_tables",
    "save_pending_tables_many",
    "sync_pending_status",
    "sync_pending_table",
]
__version__ = "0.1.0"
