"""The GICv3 and ITS inside a QEMU migration stream, decoded into LPIs.

What the stream carries (device sections ``arm_gicv3`` and ``arm_gicv3_its``, the same names under
KVM and TCG): per vCPU GICR_CTLR, GICR_PROPBASER, GICR_PENDBASER; the ITS registers CTLR, IIDR,
CBASER, CWRITER, CREADR and the eight GITS_BASERn. Everything else lives in guest RAM: the LPI
configuration table (one byte per LPI: priority in bits [7:2], enable in bit 0), one pending table
per vCPU (one bit per INTID) and the ITS tables (device table, one ITT per device, collection table).

Who wrote the ITS tables decides their layout:

* a KVM host (``KVM_DEV_ARM_ITS_SAVE_TABLES`` at the stop): the table ABI revision 0 — 8-byte
  DTE/ITE/CTE, CTEs packed in list order, ``next`` chains (:mod:`vlpi.its.abi`). The ITS section's
  IIDR then reads ProductID 0x4b ('K'), implementer 0x43b, the ABI revision in bits [15:12];
* QEMU's own emulated ITS (TCG): DTEs indexed by DeviceID (valid bit 0, Size in bits [5:1], ITT
  address >> 8 in bits [49:6]), 12-byte ITEs indexed by EventID (valid bit 0, physical/virtual bit 1,
  INTID bits [25:2], ICID bits [47:32], vPEID bits [63:48]; a doorbell in the top 4 bytes), CTEs
  indexed by ICID (valid bit 0, target processor number in bits [16:1]). That ITS keeps its IIDR
  out of the saved state, so the field reads 0. The memory positions of these fields have not
  moved since QEMU first emulated the ITS (6.2): when QEMU reworked the ITE in early 2022 (ICID
  into the low word) it kept the ICID exactly where the older code's misplaced 4-byte write had put
  it, so that tables written by older versions still load; only the GICv4 doorbell and vPEID moved.

The choice is made from the IIDR, never guessed: any other IIDR raises :class:`GicLayoutError`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, TypeAlias

import numpy as np

from vlpi.errors import GuestMemoryFault
from vlpi.its import abi
from vlpi.memory import GuestMemory
from vlpi.qemu.stream import Stream, StreamError, StreamSource, machine_version, read_stream

if TYPE_CHECKING:
    from vlpi.vm import VM

#: the physical ITEs of the ITS tables: (DeviceID, EventID, INTID, ICID) columns
_Ites: TypeAlias = "tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]"

MIN_LPI = 8192
LAYOUT_KVM = "kvm-abi-0"
LAYOUT_QEMU = "qemu"
LAYOUTS = (LAYOUT_KVM, LAYOUT_QEMU)
KVM_IIDR_PRODUCT = 0x4B  # 'K'
ARM_IMPLEMENTER = 0x43B

# Where each machine board puts its RAM blocks in the guest physical address space (the stream
# names the blocks but not their addresses).
RAM_LAYOUTS = {"virt": {"mach-virt.ram": 0x4000_0000}}

BASER_TYPE_DEVICE = 1
BASER_TYPE_VPE = 2
BASER_TYPE_COLLECTION = 4
_PAGE_SIZES = {0: 0x1000, 1: 0x4000, 2: 0x10000}


class GicLayoutError(StreamError):
    """The stream's GIC state cannot be decoded: the ITS table layout is undecidable or unsupported,
    or the GIC device sections are missing."""


@dataclass
class Redistributor:
    """One vCPU's redistributor as saved: GICR_CTLR, GICR_PROPBASER, GICR_PENDBASER."""

    vcpu: int
    ctlr: int
    propbaser: int
    pendbaser: int

    @property
    def enable_lpis(self) -> bool:
        return bool(self.ctlr & 1)

    @property
    def pending_table(self) -> int:
        """GPA of the pending table (PENDBASER bits [51:16])."""
        return self.pendbaser & 0x000F_FFFF_FFFF_0000

    @property
    def config_table(self) -> int:
        """GPA of the LPI configuration table (PROPBASER bits [51:12])."""
        return self.propbaser & 0x000F_FFFF_FFFF_F000

    @property
    def id_bits(self) -> int:
        """INTID bits the tables cover: PROPBASER.IDbits + 1, at most 16 (KVM and QEMU's GIC both
        cap LPI INTIDs at 16 bits whatever PROPBASER asks for)."""
        return min(self.propbaser & 0x1F, 15) + 1


@dataclass
class ItsRegisters:
    """The ITS registers as saved."""

    ctlr: int
    iidr: int
    cbaser: int
    cwriter: int
    creadr: int
    baser: tuple[int, ...]


@dataclass
class LPI:
    """One LPI the ITS maps: where it comes from, where it goes, and its state in guest RAM.

    ``vcpu`` is None when the collection is not mapped; ``enabled``/``priority`` come from the
    configuration table (None when the INTID lies beyond it or the table outside guest RAM);
    ``pending`` is the bit in the target vCPU's pending table (None without a target);
    ``pending_on`` lists every vCPU whose pending table has the bit set.
    """

    device_id: int
    event_id: int
    intid: int
    icid: int
    vcpu: int | None
    enabled: bool | None
    priority: int | None
    pending: bool | None
    pending_on: list[int] = field(default_factory=list)


@dataclass
class DeviceEntry:
    """One valid device table entry: the device's ITT and its EventID width."""

    device_id: int
    itt_addr: int
    eventid_bits: int
    itt_bytes: int


@dataclass
class TableInfo:
    """One ITS table as programmed in a GITS_BASERn."""

    index: int
    type: int
    valid: bool
    indirect: bool
    base: int
    page_size: int
    entry_size: int
    pages: int


def decode_baser(index: int, value: int) -> TableInfo:
    """Split a GITS_BASERn value into its fields (architected: the same for KVM and TCG)."""
    psz = _PAGE_SIZES.get((value >> 8) & 3, 0x10000)
    if psz == 0x10000:
        base = ((value >> 16) & 0xFFFF_FFFF) << 16 | ((value >> 12) & 0xF) << 48
    else:
        base = ((value >> 12) & 0xF_FFFF_FFFF) << 12
    return TableInfo(
        index, (value >> 56) & 7, bool(value >> 63), bool((value >> 62) & 1), base, psz,
        ((value >> 48) & 0x1F) + 1, (value & 0xFF) + 1,
    )


class GicState:
    """The GIC of one migration stream: registers, guest RAM and every LPI decoded.

    Build it with :func:`read_gic`.

    Attributes
    ----------
    stream : Stream
    machine : str
    layout : str
        ``"kvm-abi-0"`` or ``"qemu"`` (which writer's ITS table layout the RAM holds).
    redistributors : list of Redistributor
    its : ItsRegisters
    memory : GuestMemory
        Guest RAM (the stream's RAM blocks at their guest physical addresses).
    lpis : list of LPI
        Every physical LPI mapped by the ITS, sorted by (vCPU, INTID).
    collections : dict of int to int or None
        ICID -> target vCPU (None: not mapped).
    unmapped_pending : dict of int to list of int
        Per vCPU: INTIDs pending in its table that no ITE targeting it maps.
    devices : list of DeviceEntry
        Valid device table entries (DeviceID, ITT address, EventID bits).
    virtual_ites : int
        ITEs of the emulated ITS that map a vLPI (GICv4; not listed in ``lpis``).
    """

    def __init__(self, stream: Stream, *, layout: str | None = None, ram_base: dict[str, int] | None = None):
        self.stream = stream
        self._ram_base = ram_base
        self.machine = stream.machine
        try:
            gic = stream.device("arm_gicv3")
            its = stream.device("arm_gicv3_its")
        except KeyError as e:
            raise GicLayoutError(f"no GICv3 ITS state in the stream: {e.args[0]}", 0, None) from None
        try:
            self.redistributors = [
                Redistributor(v, int(c["gicr_ctlr"]), int(c["gicr_propbaser"]), int(c["gicr_pendbaser"]))
                for v, c in enumerate((gic.fields or {})["cpu"])
            ]
        except (KeyError, TypeError, ValueError) as e:
            raise GicLayoutError(f"GIC section lacks a redistributor field ({e!r})", gic.offset, gic.name) from None
        try:
            f = its.fields or {}
            self.its = ItsRegisters(
                int(f["ctlr"]), int(f["iidr"]), int(f["cbaser"]), int(f["cwriter"]), int(f["creadr"]),
                tuple(int(b) for b in f["baser"]),
            )
            if len(self.its.baser) != 8:
                raise ValueError(f"{len(self.its.baser)} GITS_BASER registers")
        except (KeyError, TypeError, ValueError) as e:
            raise GicLayoutError(f"ITS section lacks a register field ({e!r})", its.offset, its.name) from None
        if not self.redistributors:
            raise GicLayoutError("GIC section has no redistributor", gic.offset, gic.name)
        self.layout = self._decide_layout(layout, its.offset)
        self.memory = _guest_memory(stream, ram_base)
        self.virtual_ites = 0
        self.devices: list[DeviceEntry] = []
        if self.layout == LAYOUT_KVM:
            dev, ev, intid, icid, self.collections = self._kvm_tables()
        else:
            try:
                dev, ev, intid, icid, self.collections = self._qemu_tables()
            except GuestMemoryFault as e:
                raise GicLayoutError(
                    f"ITS tables in QEMU's layout point outside guest RAM ({self._where}): {e}", its.offset,
                    "arm_gicv3_its",
                ) from e
        self.lpis = self._lpis(dev, ev, intid, icid)

    @property
    def n_vcpus(self) -> int:
        return len(self.redistributors)

    def __repr__(self) -> str:
        return (
            f"GicState(machine={self.machine!r}, layout={self.layout!r}, n_vcpus={self.n_vcpus}, "
            f"lpis=<list, {len(self.lpis)} LPIs>, devices=<list, {len(self.devices)} devices>, "
            f"collections=<dict, {len(self.collections)} collections>, virtual_ites={self.virtual_ites})"
        )

    # ------------------------------------------------------------------ layout
    def _decide_layout(self, layout: str | None, at: int) -> str:
        iidr = self.its.iidr
        if layout is not None:
            if layout not in LAYOUTS:
                raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
            return layout
        if (iidr >> 24) == KVM_IIDR_PRODUCT and (iidr & 0xFFF) == ARM_IMPLEMENTER:
            rev = (iidr >> 12) & 0xF
            if rev not in abi.ABI_REVISIONS:
                raise GicLayoutError(
                    f"ITS IIDR {iidr:#x}: KVM table ABI revision {rev} is not supported", at, "arm_gicv3_its"
                )
            return LAYOUT_KVM
        if iidr == 0:
            return LAYOUT_QEMU
        raise GicLayoutError(
            f"ITS IIDR {iidr:#x} is neither KVM's (ProductID 0x4b) nor QEMU's emulated ITS (0): "
            "cannot tell which layout the ITS tables use (pass layout= to choose)", at, "arm_gicv3_its",
        )

    # ------------------------------------------------------------------ ITS tables
    def _kvm_tables(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[int, int | None]]:
        try:
            colls, devices = abi.restore_tables_v0(
                self.memory, self.its.baser[0], self.its.baser[1], n_vcpus=self.n_vcpus
            )
        except abi.ItsTableError as e:
            raise GicLayoutError(f"KVM ITS tables (ABI rev 0) do not restore: {e}", 0, "ram") from e
        collections = {int(i): (None if r == abi.COLLECTION_NOT_MAPPED else int(r)) for i, r in colls}
        self.devices = [
            DeviceEntry(d.device_id, d.itt_addr, d.eventid_bits, (1 << d.eventid_bits) * abi.ESZ) for d in devices
        ]
        parts = [
            (np.full(len(d.event_id), d.device_id, np.uint32), d.event_id, d.pintid, d.icid) for d in devices
        ]
        return (*_concat(parts), collections)

    def _table(self, kind: int) -> TableInfo | None:
        for i, b in enumerate(self.its.baser):
            t = decode_baser(i, b)
            if t.valid and t.type == kind:
                return t
        return None

    def _entries(self, t: TableInfo, id_limit: int) -> tuple[np.ndarray, np.ndarray]:
        """(ids, 64-bit little-endian words) of every entry slot of a flat or two-level table."""
        mem = self.memory
        per_page = t.page_size // t.entry_size
        if not t.indirect:
            n = min(t.pages * t.page_size // t.entry_size, id_limit)
            chunks = [(0, t.base, n)]
        else:
            l1 = mem.read(t.base, t.pages * t.page_size).view("<u8")
            chunks = [
                (int(i) * per_page, int(l1[i]) & ((1 << 51) - 1), per_page)
                for i in np.flatnonzero(l1 >> np.uint64(63))
                if int(i) * per_page < id_limit
            ]
        ids, words = [], []
        for first, base, n in chunks:
            raw = mem.read(base, n * t.entry_size).reshape(n, t.entry_size)
            words.append(raw[:, :8].copy().view("<u8").reshape(n))
            ids.append(np.arange(first, first + n, dtype=np.int64))
        if not ids:
            return np.zeros(0, np.int64), np.zeros(0, np.uint64)
        return np.concatenate(ids), np.concatenate(words)

    def _qemu_tables(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[int, int | None]]:
        dt = self._table(BASER_TYPE_DEVICE)
        ct = self._table(BASER_TYPE_COLLECTION)
        collections: dict[int, int | None] = {}
        self._where = "collection table"
        if ct is not None:
            icids, w = self._entries(ct, 1 << 16)
            ok = (w & np.uint64(1)).astype(bool)
            for i, x in zip(icids[ok], w[ok], strict=True):
                rd = int(x >> np.uint64(1)) & 0xFFFF
                collections[int(i)] = rd if rd < self.n_vcpus else None
        parts: list[_Ites] = []
        self._where = "device table"
        if dt is not None:
            devids, w = self._entries(dt, 1 << 16)
            ok = (w & np.uint64(1)).astype(bool)
            for d, x in zip(devids[ok], w[ok], strict=True):
                x = int(x)
                size, itt = (x >> 1) & 0x1F, ((x >> 6) & ((1 << 44) - 1)) << 8
                n = 1 << (size + 1)
                self._where = f"ITT of DeviceID {int(d):#x} at GPA {itt:#x}, {n} events"
                if n * 12 > sum(sl.size for sl in self.memory.slots):
                    raise GuestMemoryFault(itt, detail=f"a {n * 12}-byte ITT is larger than guest RAM")
                self.devices.append(DeviceEntry(int(d), itt, size + 1, n * 12))
                raw = self.memory.read(itt, n * 12).reshape(n, 12)
                lo = raw[:, :8].copy().view("<u8").reshape(n)
                valid = (lo & np.uint64(1)).astype(bool)
                phys = ((lo >> np.uint64(1)) & np.uint64(1)).astype(bool)
                self.virtual_ites += int((valid & ~phys).sum())
                sel = np.flatnonzero(valid & phys)
                parts.append((
                    np.full(len(sel), d, np.uint32),
                    sel.astype(np.uint32),
                    ((lo[sel] >> np.uint64(2)) & np.uint64(0xFF_FFFF)).astype(np.uint32),
                    ((lo[sel] >> np.uint64(32)) & np.uint64(0xFFFF)).astype(np.uint16),
                ))
        return (*_concat(parts), collections)

    # ------------------------------------------------------------------ LPI state
    def config_address(self, intid: int, vcpu: int = 0) -> int:
        """GPA of the configuration byte of ``intid`` (as ``vcpu``'s redistributor sees it)."""
        rd = self.redistributors[vcpu]
        if not MIN_LPI <= intid < 1 << rd.id_bits:
            raise ValueError(f"INTID {intid} lies outside the configuration table (IDbits {rd.id_bits})")
        return rd.config_table + intid - MIN_LPI

    def _pending_bits(self, vcpu: int) -> np.ndarray:
        return _pending_bits_of(self.memory, self.redistributors[vcpu])

    def _lpis(self, dev: np.ndarray, ev: np.ndarray, intid: np.ndarray, icid: np.ndarray) -> list[LPI]:
        pend = [self._pending_bits(v) for v in range(self.n_vcpus)]
        out = []
        mapped: list[set[int]] = [set() for _ in range(self.n_vcpus)]
        for d, e, i, c in zip(dev.tolist(), ev.tolist(), intid.tolist(), icid.tolist(), strict=True):
            v = self.collections.get(c)
            enabled = prio = None
            rd = self.redistributors[v if v is not None else 0]
            if MIN_LPI <= i < 1 << rd.id_bits:
                try:
                    b = int(self.memory.read(rd.config_table + i - MIN_LPI, 1)[0])
                    enabled, prio = bool(b & 1), b & 0xFC
                except GuestMemoryFault:  # PROPBASER points outside guest RAM: state unknown
                    pass
            on = [u for u in range(self.n_vcpus) if i < len(pend[u]) and pend[u][i]]
            pending = None if v is None else (v in on)
            if v is not None:
                mapped[v].add(i)
            out.append(LPI(d, e, i, c, v, enabled, prio, pending, on))
        out.sort(key=lambda x: (x.vcpu if x.vcpu is not None else 1 << 30, x.intid, x.device_id, x.event_id))
        self.unmapped_pending = {
            v: [int(i) for i in np.flatnonzero(pend[v]) if int(i) not in mapped[v]] for v in range(self.n_vcpus)
        }
        return out

    def lpi_for(self, device_id: int, event_id: int) -> LPI:
        """The LPI that (DeviceID, EventID) translates to."""
        for x in self.lpis:
            if x.device_id == device_id and x.event_id == event_id:
                return x
        raise KeyError(f"the ITS maps no LPI for DeviceID {device_id:#x} EventID {event_id}")

    # ------------------------------------------------------------------ replay (KVM streams)
    def registers(self) -> dict[str, Any]:
        """The register set in :meth:`vlpi.VM.set_registers` form (what QEMU restores on the
        destination)."""
        return {
            "propbaser": self.redistributors[0].propbaser,
            "pendbaser": [r.pendbaser for r in self.redistributors],
            "ctlr": [r.ctlr for r in self.redistributors],
            "gits_ctlr": self.its.ctlr,
            "gits_cbaser": self.its.cbaser,
            "gits_creadr": self.its.creadr,
            "gits_cwriter": self.its.cwriter,
            "gits_baser": list(self.its.baser),
            "gits_iidr_rev": (self.its.iidr >> 12) & 0xF,
        }

    def to_vm(self) -> VM:
        """A :class:`vlpi.VM` that has replayed the destination's restore of this stream.

        Only for KVM-layout streams: QEMU's order (PROPBASER, PENDBASERs, GICR_CTLR, the ITS
        registers, ``RESTORE_TABLES``, GITS_CTLR) on a copy of guest RAM, so the returned VM's LPIs
        hold the pending state the destination kernel consumed from the tables.
        """
        if self.layout != LAYOUT_KVM:
            raise GicLayoutError(
                f"only a KVM-layout stream can be restored into a KVM model (this one is {self.layout!r})",
                0, "arm_gicv3_its",
            )
        from vlpi.vm import VM

        vm = VM(self.n_vcpus, gic="v3", mem=_guest_memory(self.stream, self._ram_base, copy=True))
        vm.set_registers(self.registers())
        return vm

    def restore_summary(self) -> dict[str, Any]:
        """What the destination's restore of a KVM-layout stream does (replayed with :meth:`to_vm`):
        LPIs it creates, which of them come up pending, how many pending-table bits it consumes
        (clears in guest RAM), and the interrupts the model logs as lost."""
        vm = self.to_vm()
        lp = vm.lpis
        pending = sorted(int(i) for i in np.asarray(lp.intid)[np.asarray(lp.pending_latch, bool)])
        consumed = 0
        for v, rd in enumerate(self.redistributors):
            before, after = self._pending_bits(v), _pending_bits_of(vm.mem, rd)
            consumed += int((before & ~after).sum())
        return {"lpis_created": len(lp), "pending_after_restore": pending, "pending_bits_consumed": consumed,
                "lost": vm.lost.summary()}

    # ------------------------------------------------------------------ views
    def summary(self) -> dict[str, Any]:
        """A JSON-ready description: machine, layout, registers, LPIs, unmapped pending bits."""
        return {
            "machine": self.machine,
            "layout": self.layout,
            "redistributors": [
                {**asdict(r), "enable_lpis": r.enable_lpis, "config_table": r.config_table,
                 "pending_table": r.pending_table, "id_bits": r.id_bits}
                for r in self.redistributors
            ],
            "its": {**asdict(self.its), "baser": list(self.its.baser)},
            "collections": {str(k): v for k, v in sorted(self.collections.items())},
            "lpis": [asdict(x) for x in self.lpis],
            "unmapped_pending": {str(k): v for k, v in self.unmapped_pending.items()},
            "virtual_ites": self.virtual_ites,
            "skipped_sections": list(self.stream.skipped),
            "destination_restore": self.restore_summary() if self.layout == LAYOUT_KVM else None,
        }

    def to_json(self) -> str:
        return json.dumps(self.summary(), indent=1)

    def describe(self) -> str:
        """Human-readable: registers, then one table of LPIs per vCPU (what ``vlpi inspect``
        prints; a string: print it)."""
        lines = [f"machine {self.machine}, ITS table layout {self.layout}, {self.n_vcpus} vCPUs, "
                 f"{len(self.lpis)} LPIs, {sum(1 for x in self.lpis if x.pending)} pending"]
        i = self.its
        lines.append(f"ITS: CTLR={i.ctlr:#x} IIDR={i.iidr:#x} CBASER={i.cbaser:#x} CREADR={i.creadr:#x} "
                     f"CWRITER={i.cwriter:#x}")
        lines.append("     BASER=" + " ".join(f"{b:#x}" for b in i.baser))
        groups: dict[int | None, list[LPI]] = {}
        for x in self.lpis:
            groups.setdefault(x.vcpu, []).append(x)
        for rd in self.redistributors:
            lines.append("")
            lines.append(f"vCPU {rd.vcpu}: GICR_CTLR={rd.ctlr:#x} (EnableLPIs={int(rd.enable_lpis)}) "
                         f"PROPBASER={rd.propbaser:#x} PENDBASER={rd.pendbaser:#x}")
            lines += _lpi_rows(groups.get(rd.vcpu, []))
            extra = self.unmapped_pending.get(rd.vcpu, [])
            if extra:
                lines.append(f"  pending but mapped by no ITE targeting this vCPU: {extra}")
        if None in groups:
            lines.append("")
            lines.append("unmapped collection (no target vCPU):")
            lines += _lpi_rows(groups[None])
        if self.layout == LAYOUT_KVM:
            r = self.restore_summary()
            lines.append("")
            lines.append(f"destination restore (KVM, replayed): {r['lpis_created']} LPIs created, "
                         f"{len(r['pending_after_restore'])} pending {r['pending_after_restore']}, "
                         f"{r['pending_bits_consumed']} pending-table bits consumed, lost: {r['lost'] or 'none'}")
        if self.stream.skipped:
            lines.append("")
            lines.append("skipped sections: " + ", ".join(self.stream.skipped))
        return "\n".join(lines)

    def format_table(self) -> str:
        """The same string as :meth:`describe` (the earlier name, kept for existing callers)."""
        return self.describe()


def _pending_bits_of(mem: GuestMemory, rd: Redistributor) -> np.ndarray:
    """One bool per INTID: the bits of ``rd``'s pending table (none below 8192; all clear when the
    table lies outside guest RAM)."""
    try:
        raw = mem.read(rd.pending_table, (1 << rd.id_bits) // 8)
    except GuestMemoryFault:
        return np.zeros(1 << rd.id_bits, bool)
    bits = np.unpackbits(raw, bitorder="little").astype(bool)
    bits[:MIN_LPI] = False
    return bits


def _lpi_rows(lpis: list[LPI]) -> list[str]:
    rows = [f"  {'DeviceID':>8} {'EventID':>7} {'INTID':>6} {'ICID':>4} {'enabled':>7} {'prio':>5} {'pending':>7}"]
    for x in lpis:
        en = "-" if x.enabled is None else ("yes" if x.enabled else "no")
        pr = "-" if x.priority is None else f"{x.priority:#04x}"
        pe = "-" if x.pending is None else ("yes" if x.pending else "no")
        rows.append(f"  {x.device_id:#8x} {x.event_id:7d} {x.intid:6d} {x.icid:4d} {en:>7} {pr:>5} {pe:>7}")
    if not lpis:
        rows.append("  (no LPI)")
    return rows


def _concat(parts: list[_Ites]) -> _Ites:
    if not parts:
        return (np.zeros(0, np.uint32), np.zeros(0, np.uint32), np.zeros(0, np.uint32), np.zeros(0, np.uint16))
    dev, ev, intid, icid = (np.concatenate([p[k] for p in parts]) for k in range(4))
    return dev, ev, intid, icid


def _guest_memory(stream: Stream, ram_base: dict[str, int] | None, copy: bool = False) -> GuestMemory:
    board, _ = machine_version(stream.machine)
    layout = ram_base if ram_base is not None else RAM_LAYOUTS.get(board)
    if layout is None:
        raise GicLayoutError(
            f"machine type {stream.machine!r}: vlpi does not know where its RAM blocks lie (pass ram_base=)",
            0, "configuration",
        )
    mem = GuestMemory()
    for name, gpa in layout.items():
        block = stream.ram.get(name)
        if block is None:
            raise GicLayoutError(f"the stream has no RAM block {name!r}", 0, "ram")
        mem.add_slot(gpa, data=block.data.copy() if copy else block.data)
    return mem


def read_gic(
    source: StreamSource | Stream, *, layout: str | None = None, ram_base: dict[str, int] | None = None
) -> GicState:
    """Read a migration stream (path, bytes or a parsed :class:`Stream`) and decode its GIC.

    Parameters
    ----------
    source : path, bytes, binary file or Stream
    layout : {"kvm-abi-0", "qemu"}, optional
        Force the ITS table layout instead of deciding it from the stream.
    ram_base : dict of str to int, optional
        RAM block name -> guest physical address, for machine types vlpi does not know.

    Raises
    ------
    StreamError
        The stream cannot be parsed (see :func:`read_stream`).
    GicLayoutError
        No GIC/ITS state, an undecidable or unsupported ITS table layout, unknown RAM placement.
    """
    stream = source if isinstance(source, Stream) else read_stream(source)
    return GicState(stream, layout=layout, ram_base=ram_base)
