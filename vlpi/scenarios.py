"""Scenario builders shared by the CLI, the tests, the benchmarks and the notebooks.

``build_host()`` with its defaults is **host-4096**: 64 VMs × 64 vCPUs (4096 vPEs), LPI IDbits 16,
every VM maps every INTID 8192..65535 round-robin over its vCPUs (INTID i → vCPU (i − 8192) mod
64), PENDBASERs 64 KiB apart, half the LPIs forwarded (hw) on GICv4.1, random pending_latch, VPT
and initial table bits so that about half the bits change: 3,670,016 LPIs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from vlpi.lpi import LPI_MIN_INTID, LPITable
from vlpi.memory import GuestMemory

if TYPE_CHECKING:
    from vlpi.vm import VM

#: one VM's arguments to the engine: (mem, pendbaser, lpis, vpt)
Job = tuple[GuestMemory, np.ndarray, LPITable, "np.ndarray | None"]

__all__ = [
    "VMScenario", "HostScenario", "build_vm", "build_host", "build_model_vm", "build_model_host", "GICS", "TABLE_GPA",
    "PENDBASER_ATTRS",
]

GICS = ("v3", "v4.0", "v4.1")
TABLE_GPA = 0x8000_0000  # where the pending tables of each scenario VM live
# GICR_PENDBASER attribute bits as a guest would program them (inner RaWb, inner shareable):
# not part of the address, so the engine must ignore them.
PENDBASER_ATTRS = (1 << 10) | (7 << 7)
_64K = 1 << 16


@dataclass
class VMScenario:
    """One VM: its memory, registers, LPIs and VPTs (the engine's ``(mem, pendbaser, lpis, vpt)``)."""

    mem: GuestMemory
    pendbaser: np.ndarray
    lpis: LPITable
    vpt: np.ndarray | None
    table_bytes: int  # bytes of one vCPU's pending table (2**id_bits / 8)
    stride: int  # distance between consecutive vCPUs' tables

    @property
    def job(self) -> Job:
        return (self.mem, self.pendbaser, self.lpis, self.vpt)

    def tables(self) -> np.ndarray:
        """View [n_vcpus, table_bytes] of the pending tables in guest RAM."""
        data = self.mem.slots[0].data
        nv = self.pendbaser.shape[0]
        return np.lib.stride_tricks.as_strided(data, (nv, self.table_bytes), (self.stride, 1), writeable=True)

    def randomize(self, rng: np.random.Generator, hw_clears_latch: bool = True) -> None:
        """Re-draw pending_latch, VPT bits and the LPI part of every pending table, in place."""
        lp = self.lpis
        latch = rng.random(len(lp)) < 0.5
        if hw_clears_latch:
            latch &= ~lp.hw.astype(bool)
        lp.set_flags(slice(None), pending_latch=latch)  # in place, in a byte table or a packed one
        if self.vpt is not None:
            self.vpt[:] = rng.integers(0, 256, self.vpt.shape, dtype=np.uint8)
        t = self.tables()
        t[:, LPI_MIN_INTID // 8 :] = rng.integers(0, 256, (t.shape[0], t.shape[1] - LPI_MIN_INTID // 8), dtype=np.uint8)
        self.mem.clear_dirty()


@dataclass
class HostScenario:
    """Many VMs of one host (host evacuation)."""

    vms: list[VMScenario]
    gic: str
    seed: int
    _rng: np.random.Generator | None = field(repr=False, default=None)

    @property
    def has_gicv4_1(self) -> bool:
        return self.gic == "v4.1"

    @property
    def jobs(self) -> list[Job]:
        return [vm.job for vm in self.vms]

    @property
    def n_lpis(self) -> int:
        return sum(len(vm.lpis) for vm in self.vms)

    @property
    def n_vpes(self) -> int:
        return sum(vm.pendbaser.shape[0] for vm in self.vms)

    def randomize(self, seed: int | None = None) -> None:
        """Re-draw pending state, VPTs and table bytes of every VM (fresh rounds for benchmarks)."""
        rng = self._rng if seed is None else np.random.default_rng(seed)
        if rng is None:
            raise ValueError("randomize: this HostScenario was built without a generator; pass seed=")
        for vm in self.vms:
            vm.randomize(rng)


def build_vm(
    vcpus: int = 64,
    id_bits: int = 16,
    *,
    lpis_per_vcpu: int | None = None,
    gic: str = "v4.1",
    hw_fraction: float = 0.5,
    seed: int | np.random.Generator = 0,
    packed: bool = False,
) -> VMScenario:
    """One VM with ``vcpus`` pending tables.

    Parameters
    ----------
    vcpus : int
        vCPUs (and vPEs).
    id_bits : int
        LPI INTID bits (GICR_PROPBASER.IDbits + 1), 14..24: INTIDs are < 2**id_bits.
    lpis_per_vcpu : int, optional
        None: every INTID 8192..2**id_bits-1 is an LPI, round-robin over the vCPUs (dense).
        Otherwise that many random distinct INTIDs per vCPU (sparse), in random creation order.
    gic : {"v3", "v4.0", "v4.1"}
        GICv3 has no hw LPIs; GICv4.x forwards ``hw_fraction`` of them.
    hw_fraction : float
        Fraction of LPIs forwarded (hw) on GICv4.x.
    seed : int or numpy.random.Generator
    packed : bool
        Build a packed LPITable (flags held as bits).
    """
    if gic not in GICS:
        raise ValueError(f"gic must be one of {GICS}, got {gic!r}")
    if not 14 <= id_bits <= 24:
        raise ValueError(f"id_bits must be in 14..24, got {id_bits}")
    if vcpus < 1:
        raise ValueError(f"vcpus must be >= 1, got {vcpus}")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    limit = 1 << id_bits
    if lpis_per_vcpu is None:
        intid = np.arange(LPI_MIN_INTID, limit, dtype=np.uint32)
        target = ((intid - LPI_MIN_INTID) % vcpus).astype(np.int32)
    else:
        total = lpis_per_vcpu * vcpus
        if total > limit - LPI_MIN_INTID:
            raise ValueError(f"{total} LPIs do not fit in {id_bits} INTID bits")
        intid = (rng.choice(limit - LPI_MIN_INTID, size=total, replace=False) + LPI_MIN_INTID).astype(np.uint32)
        target = np.repeat(np.arange(vcpus, dtype=np.int32), lpis_per_vcpu)
        perm = rng.permutation(total)
        intid, target = intid[perm], target[perm]
    table_bytes = limit // 8
    stride = max(_64K, -(-table_bytes // _64K) * _64K)
    mem = GuestMemory()
    mem.add_slot(TABLE_GPA, stride * vcpus)
    pendbaser = (TABLE_GPA + np.arange(vcpus, dtype=np.uint64) * np.uint64(stride)) | np.uint64(PENDBASER_ATTRS)
    hw = (rng.random(intid.size) < hw_fraction) if gic != "v3" else np.zeros(intid.size, bool)
    lpis = LPITable(intid, target, np.zeros(intid.size, bool), hw, packed=packed)
    vpt = np.zeros((vcpus, table_bytes), np.uint8) if gic != "v3" else None
    vm = VMScenario(mem, pendbaser.astype(np.uint64), lpis, vpt, table_bytes, stride)
    vm.randomize(rng)
    return vm


def build_host(
    vms: int = 64,
    vcpus: int = 64,
    id_bits: int = 16,
    *,
    gic: str = "v4.1",
    hw_fraction: float = 0.5,
    lpis_per_vcpu: int | None = None,
    seed: int = 0,
    packed: bool = False,
) -> HostScenario:
    """``vms`` VMs built by :func:`build_vm` (defaults: host-4096), with packed LPI tables if
    ``packed``."""
    if vms < 1:
        raise ValueError(f"vms must be >= 1, got {vms}")
    rng = np.random.default_rng(seed)
    lst = [
        build_vm(vcpus, id_bits, lpis_per_vcpu=lpis_per_vcpu, gic=gic, hw_fraction=hw_fraction, seed=rng,
                 packed=packed)
        for _ in range(vms)
    ]
    return HostScenario(lst, gic, seed, rng)


# ------------------------------------------------------------------------------- VM model
#: guest layout of :func:`build_model_vm` (one memslot at TABLE_GPA): LPI configuration table,
#: pending tables (64 KiB apart, or the table size rounded up to 64 KiB), a flat device table,
#: a collection table, a 64 KiB command queue, then one ITT per device
_CMDQ_PAGES = 16  # GITS_CBASER.Size + 1 (4 KiB pages)


def build_model_vm(
    vcpus: int = 64,
    id_bits: int = 16,
    *,
    lpis_per_vcpu: int | None = None,
    gic: str = "v4.1",
    hw_fraction: float = 0.5,
    pending_fraction: float = 0.5,
    event_bits: int = 12,
    seed: int | np.random.Generator = 0,
) -> VM:
    """A :class:`vlpi.VM` programmed the way a guest does, with the LPIs of :func:`build_vm`.

    The guest enables LPIs on every redistributor, maps one collection per vCPU (ICID = vCPU),
    one device per ``2**event_bits`` LPIs (DeviceIDs 0, 1, ...), and every LPI through MAPTI to
    the collection of its target vCPU; all LPIs are enabled (priority 0xa0). On GICv4.x a
    ``hw_fraction`` of the events is forwarded (VFIO). Then devices raise MSIs for a
    ``pending_fraction`` of the events (software LPIs become pending, forwarded ones set their
    VPT bit), and the vCPUs are left running.

    Returns
    -------
    VM
    """
    from vlpi.its import queue as Q
    from vlpi.vm import VM

    if gic not in GICS:
        raise ValueError(f"gic must be one of {GICS}, got {gic!r}")
    if not 14 <= id_bits <= 24:
        raise ValueError(f"id_bits must be in 14..24, got {id_bits}")
    if not isinstance(vcpus, (int, np.integer)) or not 1 <= vcpus <= 4096:
        raise ValueError(f"vcpus must be in 1..4096, got {vcpus}")
    if not 1 <= event_bits <= 16:
        raise ValueError(f"event_bits must be in 1..16, got {event_bits}")
    for name, f in (("hw_fraction", hw_fraction), ("pending_fraction", pending_fraction)):
        if not 0.0 <= f <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {f}")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    limit = 1 << id_bits
    if lpis_per_vcpu is None:
        intid = np.arange(LPI_MIN_INTID, limit, dtype=np.int64)
        target = (intid - LPI_MIN_INTID) % vcpus
    else:
        total = lpis_per_vcpu * vcpus
        if total > limit - LPI_MIN_INTID:
            raise ValueError(f"{total} LPIs do not fit in {id_bits} INTID bits")
        intid = rng.choice(limit - LPI_MIN_INTID, size=total, replace=False).astype(np.int64) + LPI_MIN_INTID
        target = np.repeat(np.arange(vcpus, dtype=np.int64), lpis_per_vcpu)
        perm = rng.permutation(total)
        intid, target = intid[perm], target[perm]
    n = intid.size
    per_dev = 1 << event_bits
    n_dev = max(1, -(-n // per_dev))
    if n_dev > 8192:
        raise ValueError(f"{n_dev} devices do not fit in the one-page device table (event_bits too small)")
    table_bytes = limit // 8
    stride = max(_64K, -(-table_bytes // _64K) * _64K)
    prop_bytes = -(-(limit - LPI_MIN_INTID) // _64K) * _64K
    prop = TABLE_GPA
    pend = prop + prop_bytes
    devtab = pend + stride * vcpus
    colltab = devtab + _64K
    cmdq = colltab + _64K
    itt0 = cmdq + _64K
    itt_bytes = max(256, 8 << event_bits)
    end = itt0 + n_dev * itt_bytes
    vm = VM(vcpus, gic=gic)
    vm.mem.add_slot(TABLE_GPA, -(-(end - TABLE_GPA) // _64K) * _64K)
    vm.mem.write(prop, np.full(limit - LPI_MIN_INTID, 0xA3, np.uint8))
    vm.write_propbaser(prop | PENDBASER_ATTRS | (id_bits - 1))
    for v in range(vcpus):
        vm.write_pendbaser(v, (pend + v * stride) | PENDBASER_ATTRS)
    for v in range(vcpus):
        vm.enable_lpis(v)
    its = vm.its
    its.write_baser(0, (1 << 63) | devtab)
    its.write_baser(1, (1 << 63) | colltab)
    Q.write_cbaser(its, (1 << 63) | cmdq | (_CMDQ_PAGES - 1))
    Q.write_ctlr(its, 1)
    vm.run()
    for v in range(vcpus):
        its.mapc(v, v)
    dev = np.arange(n) // per_dev
    ev = np.arange(n) % per_dev
    for d in range(n_dev):
        its.mapd(d, itt0 + d * itt_bytes, event_bits - 1)
    its.map_events(dev, ev, intid, target)
    if gic != "v3" and hw_fraction > 0:
        fwd = np.flatnonzero(rng.random(n) < hw_fraction)
        vm.forward(dev[fwd], ev[fwd])
    hit = np.flatnonzero(rng.random(n) < pending_fraction)
    vm.signal_msi(dev[hit], ev[hit])
    return vm


def build_model_host(
    vms: int = 64,
    vcpus: int = 64,
    id_bits: int = 16,
    *,
    gic: str = "v4.1",
    hw_fraction: float = 0.5,
    lpis_per_vcpu: int | None = None,
    seed: int = 0,
    progress: Callable[[int], object] | None = None,
) -> list[VM]:
    """``vms`` VMs built by :func:`build_model_vm` (defaults: host-4096 as VMs; ``progress``, if
    given, is called with 1 after each VM)."""
    if vms < 1:
        raise ValueError(f"vms must be >= 1, got {vms}")
    rng = np.random.default_rng(seed)
    out: list[VM] = []
    for _ in range(vms):
        out.append(build_model_vm(vcpus, id_bits, lpis_per_vcpu=lpis_per_vcpu, gic=gic, hw_fraction=hw_fraction,
                                  seed=rng))
        if progress is not None:
            progress(1)
    return out
