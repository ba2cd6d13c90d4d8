"""The ITS command queue in guest RAM: GITS_CBASER / GITS_CWRITER / GITS_CREADR / GITS_CTLR.

KVM's mechanics (``vgic_its_process_commands`` and the GITS_* register handlers):

* a CWRITER write keeps bits [19:5]; an offset beyond the queue is dropped; otherwise every
  slot from CREADR up to the new CWRITER (wrapping at the queue size) runs, in order, before
  the write returns; a slot never runs twice and never stalls;
* a slot whose 32 bytes cannot be read is skipped;
* the handler's result is thrown away: errors are invisible to the guest (no Stalled bit, no
  SError). vlpi keeps them in ``its.command_log`` for users;
* nothing runs while GITS_CTLR.Enabled = 0; enabling (which needs BASER0, BASER1 and CBASER
  Valid) runs what was queued;
* a CBASER write (only while disabled) resets CREADR and CWRITER to 0.

:class:`GuestCommandWriter` is the guest's side (what kvm-unit-tests' ``its_send_cmd`` does):
it writes encoded slots at CWRITER and then writes CWRITER.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from vlpi.errors import GuestMemoryFault
from vlpi.its.commands import (
    ERROR_NAMES,
    GITS_CMD_MAPI,
    GITS_CMD_MAPTI,
    OPCODE_NAMES,
    ItsCommand,
    ItsCommandError,
    decode,
    decode_many,
    encode,
    encode_many,
)
from vlpi.vgic import PENDBASER_ADDRESS_MASK, VMError, check_reg

if TYPE_CHECKING:  # the ITS runs its queue through this module (imported lazily there)
    from vlpi.its.its import VirtualITS

__all__ = [
    "CommandLog",
    "CommandRecord",
    "GuestCommandWriter",
    "write_cbaser",
    "write_cwriter",
    "write_ctlr",
    "set_creadr",
    "process_commands",
    "queue_bytes",
    "queue_gpa",
    "get_registers",
    "set_registers",
]

_OFFSET_MASK = 0xF_FFE0  # [19:5]


@dataclass(frozen=True)
class CommandRecord:
    """One command that failed (KVM drops the error; vlpi records it)."""

    offset: int  # byte offset of the slot in the queue
    opcode: int
    name: str
    code: int  # E_ITS_* value, or -errno
    message: str


class CommandLog:
    """Commands executed from the queue, and the ones that failed."""

    def __init__(self) -> None:
        self.executed = 0
        self.skipped_unreadable = 0
        self.errors: list[CommandRecord] = []

    def __len__(self) -> int:
        return len(self.errors)

    def codes(self) -> list[int]:
        return [r.code for r in self.errors]

    def clear(self) -> None:
        self.executed = 0
        self.skipped_unreadable = 0
        self.errors.clear()

    def __repr__(self) -> str:
        return f"CommandLog({self.executed} executed, {len(self.errors)} failed, {self.skipped_unreadable} unreadable)"


def queue_bytes(cbaser: int) -> int:
    """Queue size in bytes: (Size + 1) x 4 KiB."""
    return ((cbaser & 0xFF) + 1) * 4096


def queue_gpa(cbaser: int) -> int:
    """Queue base GPA: CBASER[51:12] with [15:12] cleared (64 KiB aligned in KVM)."""
    return cbaser & 0x000F_FFFF_FFFF_0000


def write_cbaser(its: VirtualITS, value: int) -> None:
    """Write GITS_CBASER (ignored while enabled): sanitise cache/shareability fields, clear
    PA[15:12], then CREADR := CWRITER := 0."""
    v = check_reg(value, "value (GITS_CBASER)")
    if its.ctlr_enabled:
        return
    inner = (v >> 59) & 7
    if inner in (0, 1):
        v = (v & ~(7 << 59)) | (3 << 59)
    if ((v >> 53) & 7) not in (0, 1):
        v &= ~(7 << 53)
    if ((v >> 10) & 3) == 2:
        v = (v & ~(3 << 10)) | (1 << 10)
    v &= ~(0xF << 12)
    its.creadr = 0
    its.cwriter = 0
    its.cbaser = v


def set_creadr(its: VirtualITS, value: int) -> None:
    """Userspace write of GITS_CREADR (KVM_DEV_ARM_VGIC_GRP_ITS_REGS): only while disabled
    (``EBUSY``) and below the queue size (``EINVAL``). Guest writes are ignored by KVM."""
    off = check_reg(value, "value (GITS_CREADR)") & _OFFSET_MASK
    if its.ctlr_enabled:
        raise VMError(errno.EBUSY, "GITS_CREADR can only be restored while the ITS is disabled")
    if off >= queue_bytes(its.cbaser):
        raise VMError(errno.EINVAL, f"GITS_CREADR offset {off:#x} beyond the {queue_bytes(its.cbaser)}-byte queue")
    its.creadr = off


def write_cwriter(its: VirtualITS, value: int) -> None:
    """Guest (and userspace) write of GITS_CWRITER: keep [19:5]; drop an offset beyond the
    queue; run slots (nothing runs while the ITS is disabled)."""
    off = check_reg(value, "value (GITS_CWRITER)") & _OFFSET_MASK
    if off >= queue_bytes(its.cbaser):
        return
    its.cwriter = off
    process_commands(its)


def write_ctlr(its: VirtualITS, value: int) -> None:
    """Guest write of GITS_CTLR: Enabled 0 -> 1 needs BASER0, BASER1 and CBASER Valid (else the
    whole write is ignored); then the queue runs."""
    en = bool(check_reg(value, "value (GITS_CTLR)", 32) & 1)
    if en and not its.ctlr_enabled:
        if not (its.baser[0] >> 63 and its.baser[1] >> 63 and its.cbaser >> 63):
            return
    its.ctlr_enabled = en
    process_commands(its)


def read_ctlr(its: VirtualITS) -> int:
    """GITS_CTLR: Enabled [0], Quiescent [31] = (CREADR == CWRITER)."""
    return int(its.ctlr_enabled) | ((its.creadr == its.cwriter) << 31)


def get_registers(its: VirtualITS) -> dict[str, Any]:
    """The ITS registers userspace saves: ``gits_ctlr``, ``gits_cbaser``, ``gits_creadr``,
    ``gits_cwriter``, ``gits_baser`` (a list) and ``gits_iidr_rev``."""
    return {
        "gits_ctlr": int(its.ctlr_enabled),
        "gits_cbaser": its.cbaser,
        "gits_creadr": its.creadr,
        "gits_cwriter": its.cwriter,
        "gits_baser": list(its.baser),
        "gits_iidr_rev": its.abi_revision,
    }


REGISTER_BITS = {"gits_ctlr": 32, "gits_cbaser": 64, "gits_creadr": 64, "gits_cwriter": 64}


def check_registers(its: VirtualITS, regs: dict[str, Any]) -> dict[str, Any]:
    """Validate the ITS part of ``regs`` as KVM_DEV_ARM_VGIC_GRP_ITS_REGS would take it,
    changing nothing: every value a non-negative integer of its register's width,
    ``gits_baser`` 2 to 8 values (BASER2..7 are ignored), ``gits_iidr_rev`` (optional) an
    existing ABI revision (EINVAL), the ITS disabled (EBUSY: CREADR cannot be restored
    otherwise) and CREADR inside the queue that CBASER describes (EINVAL). Returns the values."""
    out: dict[str, Any] = {}
    for key, bits in REGISTER_BITS.items():
        if key not in regs:
            raise ValueError(f"regs has no {key!r} (the ITS registers are {sorted(REGISTER_BITS)} and 'gits_baser')")
        out[key] = check_reg(regs[key], f"regs[{key!r}]", bits)
    bl = regs.get("gits_baser")
    if not isinstance(bl, (list, tuple)) or not 2 <= len(bl) <= 8:
        raise ValueError(f"regs['gits_baser'] must be a list of 2 to 8 GITS_BASER values, got {bl!r}")
    out["gits_baser"] = [check_reg(b, f"regs['gits_baser'][{n}]") for n, b in enumerate(bl)]
    rev = check_reg(regs.get("gits_iidr_rev", 0), "regs['gits_iidr_rev']", 4)
    if rev != 0:
        raise VMError(errno.EINVAL, f"regs['gits_iidr_rev'] = {rev}: no such ITS table ABI revision (KVM has 0)")
    if its.ctlr_enabled:
        raise VMError(errno.EBUSY, "ITS registers can only be restored while the ITS is disabled (GITS_CTLR = 0)")
    creadr = out["gits_creadr"] & _OFFSET_MASK
    if creadr >= queue_bytes(out["gits_cbaser"]):
        raise VMError(errno.EINVAL, f"regs['gits_creadr'] = {out['gits_creadr']:#x}: offset {creadr:#x} is beyond the "
                      f"{queue_bytes(out['gits_cbaser'])}-byte queue that regs['gits_cbaser'] describes")
    return out


def set_registers(
    its: VirtualITS, regs: dict[str, Any], *, restore_tables: Callable[[], object] | None = None
) -> None:
    """Userspace restore in QEMU's order: GITS_CBASER, CREADR, CWRITER (stored, or dropped if
    beyond the queue, as KVM does), BASER0/1, then ``restore_tables()`` if given
    (KVM_DEV_ARM_ITS_RESTORE_TABLES), GITS_CTLR last. Values as :func:`check_registers`."""
    r = check_registers(its, regs)
    write_cbaser(its, r["gits_cbaser"])
    set_creadr(its, r["gits_creadr"])
    write_cwriter(its, r["gits_cwriter"])
    for n, b in enumerate(r["gits_baser"][:2]):
        its.write_baser(n, b)
    if restore_tables is not None:
        restore_tables()
    write_ctlr(its, r["gits_ctlr"])


_BULK_MIN = 32  # pending slots from which runs of MAPTI/MAPI are executed with map_events


def process_commands(its: VirtualITS) -> int:
    """vgic_its_process_commands: run every slot from CREADR to CWRITER. Returns slots run.

    CREADR and CWRITER are 32-byte aligned offsets inside the queue (the registers keep
    bits [19:5] and refuse offsets beyond the queue), so this ends within one lap: each slot
    runs at most once per call.

    The kernel reads each slot just before it runs it, so a command that rewrites later slots
    (the queue overlapping a table it zeroes, or a pending table whose bits an LPI creation
    clears) changes what runs next; so does this loop. Runs of consecutive MAPTI/MAPI slots
    are executed with the vectorised :meth:`~vlpi.its.VirtualITS.map_events` (exactly the
    one-by-one semantics, tested), so a guest that queues millions of mappings is not replayed
    one Python call per slot; slots read ahead are read again after a command wrote into them.
    """
    if not its.ctlr_enabled or not its.cbaser >> 63:
        return 0
    size = queue_bytes(its.cbaser)
    base = queue_gpa(its.cbaser)
    mem = its.mem
    log = its.command_log
    # LPI creation clears pending bits: at most 8 KiB from each PENDBASER (vITS INTIDs < 2^16)
    pend = np.asarray(its.vgic.pendbaser, dtype=np.int64) & PENDBASER_ADDRESS_MASK
    maps_write_queue = bool(((pend < base + size) & (pend + 8192 > base)).any())
    n = 0
    bulk = True
    lap = size // 32
    while its.creadr != its.cwriter and n < lap:
        off = its.creadr
        end = its.cwriter if its.cwriter > off else size
        end = min(end, off + 32 * (lap - n))
        if bulk and (end - off) // 32 >= _BULK_MIN:
            try:
                slots = mem.read(base + off, end - off).reshape(-1, 32)
            except GuestMemoryFault:  # part of the range is unreadable: go slot by slot
                slots = None
                bulk = False
            if slots is not None:
                k = _run_slots(its, slots, off, base, maps_write_queue)
                n += k
                its.creadr = (off + 32 * k) % size
                continue
        try:
            slot = mem.read(base + off, 32)
        except GuestMemoryFault:
            log.skipped_unreadable += 1
            slot = None
        if slot is not None:
            _run_one(its, decode(slot), off)
        n += 1
        its.creadr = (off + 32) % size
    return n


def _run_one(its: VirtualITS, cmd: ItsCommand, off: int) -> None:
    log = its.command_log
    try:
        its.execute(cmd)
    except ItsCommandError as e:
        log.errors.append(CommandRecord(off, cmd.opcode, cmd.name, e.code, str(e)))
    except OSError as e:  # guest-memory faults, EBUSY from INT
        log.errors.append(CommandRecord(off, cmd.opcode, cmd.name, -int(e.errno or 0), str(e)))
    log.executed += 1


def _run_slots(its: VirtualITS, slots: np.ndarray, off0: int, base: int, maps_write_queue: bool) -> int:
    """Execute slots read ahead, in order, MAPTI/MAPI runs in bulk; stop after a command that
    wrote into the slots still to run (the caller reads them again). Returns slots run."""
    f = decode_many(slots)
    op = f["opcode"]
    is_map = (op == GITS_CMD_MAPTI) | (op == GITS_CMD_MAPI)
    k = op.size
    # run boundaries: positions where is_map changes
    edges = np.flatnonzero(np.diff(is_map.astype(np.int8))) + 1
    starts = np.concatenate([[0], edges])
    stops = np.concatenate([edges, [k]])
    log = its.command_log
    hi = base + off0 + 32 * k  # end of the slots read ahead
    for a, b in zip(starts.tolist(), stops.tolist(), strict=True):
        if is_map[a] and b - a > 1 and not maps_write_queue:
            pint = np.where(op[a:b] == GITS_CMD_MAPI, f["event_id"][a:b], f["pintid"][a:b])
            codes = its.map_events(f["device_id"][a:b], f["event_id"][a:b], pint, f["icid"][a:b], errors="skip")
            for i in np.flatnonzero(codes).tolist():
                o = int(op[a + i])
                name = OPCODE_NAMES[o]
                c = int(codes[i])
                msg = f"{name}: {ERROR_NAMES.get(c, f'errno {-c}')} (bulk)"
                log.errors.append(CommandRecord(off0 + 32 * (a + i), o, name, c, msg))
            log.executed += b - a
            continue
        for i in range(a, b):
            its.last_entry_write = None
            _run_one(its, decode(slots[i]), off0 + 32 * i)
            lo = base + off0 + 32 * (i + 1)  # the slots after this one
            g = its.last_entry_write
            if (is_map[i] and maps_write_queue) or (g is not None and lo - 8 < g < hi):
                return i + 1
    return k


class GuestCommandWriter:
    """The guest's command-queue driver: allocate the queue, write slots, bump CWRITER.

    Parameters
    ----------
    its : VirtualITS
    gpa : int
        Queue GPA (64 KiB aligned; must be guest RAM).
    size_pages : int
        Queue size in 4 KiB pages (1..256). kvm-unit-tests uses 16 (64 KiB).

    Examples
    --------
    ``w = GuestCommandWriter(vm.its, 0x4000_0000); w.send(ItsCommand.mapd(2, itt, 7))``
    """

    def __init__(self, its: VirtualITS, gpa: int, size_pages: int = 16) -> None:
        gpa = check_reg(gpa, "gpa", 52)
        if isinstance(size_pages, (bool, np.bool_)) or not isinstance(size_pages, (int, np.integer)):
            raise TypeError(f"size_pages must be an integer, got {type(size_pages).__name__}")
        if not 1 <= size_pages <= 256:
            raise ValueError(f"size_pages must be in [1, 256], got {size_pages}")
        if gpa & 0xFFFF:
            raise ValueError(f"gpa {gpa:#x} must be 64 KiB aligned")
        self.its = its
        write_cbaser(its, (1 << 63) | gpa | (size_pages - 1))
        self.size = queue_bytes(its.cbaser)
        self.base = queue_gpa(its.cbaser)

    @classmethod
    def attach(cls, its: VirtualITS) -> GuestCommandWriter:
        """Bind to a queue that is already programmed (e.g. restored on a migration
        destination), continuing at the current CWRITER."""
        w = cls.__new__(cls)
        w.its = its
        w.size = queue_bytes(its.cbaser)
        w.base = queue_gpa(its.cbaser)
        return w

    def send(self, *cmds: ItsCommand) -> None:
        """Write the commands after CWRITER (waiting for nothing: KVM runs them synchronously)."""
        bad = [i for i, c in enumerate(cmds) if not isinstance(c, ItsCommand)]
        if bad:
            raise TypeError(f"cmds[{bad[0]}] must be an ItsCommand, got {type(cmds[bad[0]]).__name__}")
        if cmds:
            self.send_slots(np.stack([encode(c) for c in cmds]))

    def send_slots(self, slots: np.ndarray) -> None:
        """Write pre-encoded ``[n, 32]`` slots and run them, in chunks that fit the queue."""
        a = np.asarray(slots)
        if a.dtype != np.uint8 or a.size % 32:
            raise ValueError(f"slots must be uint8 bytes, 32 per command, got dtype {a.dtype} and {a.size} bytes")
        slots = np.ascontiguousarray(a).reshape(-1, 32)
        per = self.size // 32 - 1
        mem = self.its.mem
        for i in range(0, slots.shape[0], per):
            chunk = slots[i : i + per]
            w = self.its.cwriter
            first = min(chunk.shape[0], (self.size - w) // 32)
            mem.write(self.base + w, chunk[:first].reshape(-1))
            if first < chunk.shape[0]:
                mem.write(self.base, chunk[first:].reshape(-1))
            write_cwriter(self.its, (w + 32 * chunk.shape[0]) % self.size)

    def send_many(self, opcode: int | str, n: int | None = None, **fields: npt.ArrayLike) -> None:
        """Encode (vectorised, :func:`~vlpi.its.commands.encode_many`) and send many commands of one opcode."""
        self.send_slots(encode_many(opcode, n, **fields))
