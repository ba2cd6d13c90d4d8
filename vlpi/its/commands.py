"""ITS commands: opcodes, architected error codes, and the 32-byte command encoding.

A command is one 32-byte slot of four little-endian 64-bit doublewords DW0..DW3
(GICv3 architecture, IHI0069). :class:`ItsCommand` is the decoded form that the virtual ITS
executes (:meth:`vlpi.its.VirtualITS.execute`); :func:`encode` / :func:`decode` convert between
it and the bytes a guest writes into its command queue, and :func:`encode_many` builds many
slots of one opcode at once (no Python loop per command).

Field widths follow what KVM reads: DeviceID, EventID and pINTID are full 32-bit fields
(range-checked by the handlers), ICID 16 bits, ITT_addr = DW2[51:8] in place, RDbase =
DW2[47:16] (a vCPU id, GITS_TYPER.PTA = 0), MAPD Size = DW1[4:0] = EventID bits - 1.

Error codes (``E_ITS_*``) have the shape 0x01 CC RR (CLEAR uses 0x05). KVM drops them in the
command path; vlpi raises them as :class:`ItsCommandError` from the Python calls and records
them in the queue's error log.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from vlpi._typing import U64Array

__all__ = [
    "ItsCommand",
    "ItsCommandError",
    "encode",
    "decode",
    "encode_many",
    "decode_many",
    "OPCODES",
    "OPCODE_NAMES",
    "ERROR_NAMES",
    "GITS_CMD_MOVI",
    "GITS_CMD_INT",
    "GITS_CMD_CLEAR",
    "GITS_CMD_SYNC",
    "GITS_CMD_MAPD",
    "GITS_CMD_MAPC",
    "GITS_CMD_MAPTI",
    "GITS_CMD_MAPI",
    "GITS_CMD_INV",
    "GITS_CMD_INVALL",
    "GITS_CMD_MOVALL",
    "GITS_CMD_DISCARD",
    "E_ITS_MOVI_UNMAPPED_INTERRUPT",
    "E_ITS_MOVI_UNMAPPED_COLLECTION",
    "E_ITS_INT_UNMAPPED_INTERRUPT",
    "E_ITS_CLEAR_UNMAPPED_INTERRUPT",
    "E_ITS_MAPD_DEVICE_OOR",
    "E_ITS_MAPD_ITTSIZE_OOR",
    "E_ITS_MAPC_PROCNUM_OOR",
    "E_ITS_MAPC_COLLECTION_OOR",
    "E_ITS_MAPTI_UNMAPPED_DEVICE",
    "E_ITS_MAPTI_ID_OOR",
    "E_ITS_MAPTI_PHYSICALID_OOR",
    "E_ITS_INV_UNMAPPED_INTERRUPT",
    "E_ITS_INVALL_UNMAPPED_COLLECTION",
    "E_ITS_MOVALL_PROCNUM_OOR",
    "E_ITS_DISCARD_UNMAPPED_INTERRUPT",
]

GITS_CMD_MOVI = 0x01
GITS_CMD_INT = 0x03
GITS_CMD_CLEAR = 0x04
GITS_CMD_SYNC = 0x05
GITS_CMD_MAPD = 0x08
GITS_CMD_MAPC = 0x09
GITS_CMD_MAPTI = 0x0A
GITS_CMD_MAPI = 0x0B
GITS_CMD_INV = 0x0C
GITS_CMD_INVALL = 0x0D
GITS_CMD_MOVALL = 0x0E
GITS_CMD_DISCARD = 0x0F

OPCODES = {
    "MOVI": GITS_CMD_MOVI,
    "INT": GITS_CMD_INT,
    "CLEAR": GITS_CMD_CLEAR,
    "SYNC": GITS_CMD_SYNC,
    "MAPD": GITS_CMD_MAPD,
    "MAPC": GITS_CMD_MAPC,
    "MAPTI": GITS_CMD_MAPTI,
    "MAPI": GITS_CMD_MAPI,
    "INV": GITS_CMD_INV,
    "INVALL": GITS_CMD_INVALL,
    "MOVALL": GITS_CMD_MOVALL,
    "DISCARD": GITS_CMD_DISCARD,
}
OPCODE_NAMES = {v: k for k, v in OPCODES.items()}

E_ITS_MOVI_UNMAPPED_INTERRUPT = 0x010107
E_ITS_MOVI_UNMAPPED_COLLECTION = 0x010109
E_ITS_INT_UNMAPPED_INTERRUPT = 0x010307
E_ITS_CLEAR_UNMAPPED_INTERRUPT = 0x010507
E_ITS_MAPD_DEVICE_OOR = 0x010801
E_ITS_MAPD_ITTSIZE_OOR = 0x010802
E_ITS_MAPC_PROCNUM_OOR = 0x010902
E_ITS_MAPC_COLLECTION_OOR = 0x010903
E_ITS_MAPTI_UNMAPPED_DEVICE = 0x010A04
E_ITS_MAPTI_ID_OOR = 0x010A05
E_ITS_MAPTI_PHYSICALID_OOR = 0x010A06
E_ITS_INV_UNMAPPED_INTERRUPT = 0x010C07
E_ITS_INVALL_UNMAPPED_COLLECTION = 0x010D09
E_ITS_MOVALL_PROCNUM_OOR = 0x010E01
E_ITS_DISCARD_UNMAPPED_INTERRUPT = 0x010F07

ERROR_NAMES = {
    v: k for k, v in globals().items() if k.startswith("E_ITS_") and isinstance(v, int)
}


class ItsCommandError(Exception):
    """An ITS command failed with an architected error code.

    KVM's command queue drops these codes (the guest never sees them); the Python calls of
    :class:`vlpi.its.VirtualITS` raise them, and nothing was changed by the failed command.

    Attributes
    ----------
    code : int
        The ``E_ITS_*`` value.
    name : str
        Its symbolic name.
    command : str
        The command that failed (``"MAPTI"``, ...).
    index : int or None
        For bulk forms: the first offending element.
    """

    def __init__(self, code: int, command: str, detail: str = "", index: int | None = None) -> None:
        self.code = int(code)
        self.name = ERROR_NAMES.get(self.code, f"{self.code:#08x}")
        self.command = command
        self.index = index
        where = f" at index {index}" if index is not None else ""
        msg = f"{command}{where}: {self.name} ({self.code:#08x})"
        if detail:
            msg += f": {detail}"
        super().__init__(msg)


@dataclass(frozen=True)
class ItsCommand:
    """A decoded ITS command (only the fields KVM reads).

    ``rdbase``/``rdbase2`` are vCPU ids (GITS_TYPER.PTA = 0); ``size`` is MAPD's Size field
    (EventID bits - 1); ``valid`` is the V bit of MAPD/MAPC; ``pintid`` is MAPTI's pINTID.
    """

    opcode: int
    device_id: int = 0
    event_id: int = 0
    pintid: int = 0
    icid: int = 0
    itt_addr: int = 0
    size: int = 0
    valid: bool = True
    rdbase: int = 0
    rdbase2: int = 0

    @property
    def name(self) -> str:
        return OPCODE_NAMES.get(self.opcode, f"opcode {self.opcode:#04x}")

    # convenient builders, in the vocabulary of the spec
    @classmethod
    def mapd(cls, device_id: int, itt_addr: int, size: int, valid: bool = True) -> ItsCommand:
        return cls(GITS_CMD_MAPD, device_id=device_id, itt_addr=itt_addr, size=size, valid=valid)

    @classmethod
    def mapc(cls, icid: int, rdbase: int, valid: bool = True) -> ItsCommand:
        return cls(GITS_CMD_MAPC, icid=icid, rdbase=rdbase, valid=valid)

    @classmethod
    def mapti(cls, device_id: int, event_id: int, pintid: int, icid: int) -> ItsCommand:
        return cls(GITS_CMD_MAPTI, device_id=device_id, event_id=event_id, pintid=pintid, icid=icid)

    @classmethod
    def mapi(cls, device_id: int, event_id: int, icid: int) -> ItsCommand:
        return cls(GITS_CMD_MAPI, device_id=device_id, event_id=event_id, icid=icid)

    @classmethod
    def movi(cls, device_id: int, event_id: int, icid: int) -> ItsCommand:
        return cls(GITS_CMD_MOVI, device_id=device_id, event_id=event_id, icid=icid)

    @classmethod
    def movall(cls, rdbase: int, rdbase2: int) -> ItsCommand:
        return cls(GITS_CMD_MOVALL, rdbase=rdbase, rdbase2=rdbase2)

    @classmethod
    def discard(cls, device_id: int, event_id: int) -> ItsCommand:
        return cls(GITS_CMD_DISCARD, device_id=device_id, event_id=event_id)

    @classmethod
    def int_(cls, device_id: int, event_id: int) -> ItsCommand:
        return cls(GITS_CMD_INT, device_id=device_id, event_id=event_id)

    @classmethod
    def clear(cls, device_id: int, event_id: int) -> ItsCommand:
        return cls(GITS_CMD_CLEAR, device_id=device_id, event_id=event_id)

    @classmethod
    def inv(cls, device_id: int, event_id: int) -> ItsCommand:
        return cls(GITS_CMD_INV, device_id=device_id, event_id=event_id)

    @classmethod
    def invall(cls, icid: int) -> ItsCommand:
        return cls(GITS_CMD_INVALL, icid=icid)

    @classmethod
    def sync(cls, rdbase: int = 0) -> ItsCommand:
        return cls(GITS_CMD_SYNC, rdbase=rdbase)


_M32 = (1 << 32) - 1
_ITT_MASK = ((1 << 52) - 1) & ~0xFF  # DW2[51:8]
_RD_MASK = ((1 << 48) - 1) & ~0xFFFF  # DW2[47:16] as KVM reads RDbase
_RD_ENC_MASK = ((1 << 52) - 1) & ~0xFFFF  # [51:16] as Linux encodes it


def _dws(cmd: ItsCommand) -> tuple[int, int, int, int]:
    op = cmd.opcode & 0xFF
    dw = [op, 0, 0, 0]
    if op in (GITS_CMD_MOVI, GITS_CMD_INT, GITS_CMD_CLEAR, GITS_CMD_MAPTI, GITS_CMD_MAPI, GITS_CMD_INV,
              GITS_CMD_DISCARD, GITS_CMD_MAPD):
        dw[0] |= (cmd.device_id & _M32) << 32
    if op in (GITS_CMD_MOVI, GITS_CMD_INT, GITS_CMD_CLEAR, GITS_CMD_MAPTI, GITS_CMD_MAPI, GITS_CMD_INV,
              GITS_CMD_DISCARD):
        dw[1] |= cmd.event_id & _M32
    if op == GITS_CMD_MAPTI:
        dw[1] |= (cmd.pintid & _M32) << 32
    if op in (GITS_CMD_MOVI, GITS_CMD_MAPTI, GITS_CMD_MAPI, GITS_CMD_INVALL, GITS_CMD_MAPC):
        dw[2] |= cmd.icid & 0xFFFF
    if op == GITS_CMD_MAPD:
        dw[1] |= cmd.size & 0x1F
        dw[2] |= (cmd.itt_addr & _ITT_MASK) | (int(bool(cmd.valid)) << 63)
    if op == GITS_CMD_MAPC:
        dw[2] |= ((cmd.rdbase << 16) & _RD_ENC_MASK) | (int(bool(cmd.valid)) << 63)
    if op == GITS_CMD_SYNC:
        dw[2] |= (cmd.rdbase << 16) & _RD_ENC_MASK
    if op == GITS_CMD_MOVALL:
        dw[2] |= (cmd.rdbase << 16) & _RD_ENC_MASK
        dw[3] |= (cmd.rdbase2 << 16) & _RD_ENC_MASK
    return dw[0], dw[1], dw[2], dw[3]


def encode(cmd: ItsCommand) -> np.ndarray:
    """The 32-byte little-endian slot for ``cmd`` (uint8 array of length 32)."""
    return np.array(_dws(cmd), dtype="<u8").view(np.uint8)


def decode(slot: npt.ArrayLike) -> ItsCommand:
    """Decode one 32-byte slot the way KVM's command handlers read it.

    Opcodes KVM has no handler for decode to an :class:`ItsCommand` with only ``opcode`` set
    (executed as a no-op).
    """
    b = np.ascontiguousarray(slot, dtype=np.uint8).reshape(-1)
    if b.size != 32:
        raise ValueError(f"decode: an ITS command slot is 32 bytes, got {b.size}")
    d0, d1, d2, d3 = (int(x) for x in b.view("<u8"))
    op = d0 & 0xFF
    if op not in OPCODE_NAMES:
        return ItsCommand(op)
    return ItsCommand(
        opcode=op,
        device_id=d0 >> 32,
        event_id=d1 & _M32,
        pintid=d1 >> 32,
        icid=d2 & 0xFFFF,
        itt_addr=d2 & _ITT_MASK,
        size=d1 & 0x1F,
        valid=bool(d2 >> 63),
        rdbase=(d2 & _RD_MASK) >> 16,
        rdbase2=(d3 & _RD_MASK) >> 16,
    )


def encode_many(opcode: int | str, n: int | None = None, **fields: npt.ArrayLike) -> np.ndarray:
    """Encode ``n`` commands of one opcode at once: a ``[n, 32]`` uint8 array.

    Fields are array-likes (or scalars, broadcast) named as in :class:`ItsCommand`. Vectorised
    (no Python loop per command), for filling a command queue with millions of MAPTIs.

    Examples
    --------
    >>> slots = encode_many("MAPTI", device_id=2, event_id=[0, 1], pintid=[8192, 8193], icid=0)
    >>> decode(slots[1]).pintid
    8193
    """
    op = OPCODES[opcode] if isinstance(opcode, str) else int(opcode)
    unknown = set(fields) - {f for f in ItsCommand.__dataclass_fields__ if f != "opcode"}
    if unknown:
        raise TypeError(f"encode_many: unknown field(s) {sorted(unknown)}")
    arrs = {k: np.asarray(v).astype(np.uint64) for k, v in fields.items()}
    if n is None:
        n = int(np.broadcast_shapes(*(a.shape for a in arrs.values()))[0]) if arrs else 1
    z = np.zeros(n, dtype=np.uint64)

    def f(name: str, default: int = 0) -> U64Array:
        a = arrs.get(name)
        return z + np.uint64(default) if a is None else np.broadcast_to(a, (n,)).astype(np.uint64)

    u = np.uint64
    m32 = u(_M32)
    dw = np.zeros((n, 4), dtype="<u8")
    dw[:, 0] = u(op)
    if op in (GITS_CMD_MOVI, GITS_CMD_INT, GITS_CMD_CLEAR, GITS_CMD_MAPTI, GITS_CMD_MAPI, GITS_CMD_INV,
              GITS_CMD_DISCARD, GITS_CMD_MAPD):
        dw[:, 0] |= (f("device_id") & m32) << u(32)
    if op in (GITS_CMD_MOVI, GITS_CMD_INT, GITS_CMD_CLEAR, GITS_CMD_MAPTI, GITS_CMD_MAPI, GITS_CMD_INV,
              GITS_CMD_DISCARD):
        dw[:, 1] |= f("event_id") & m32
    if op == GITS_CMD_MAPTI:
        dw[:, 1] |= (f("pintid") & m32) << u(32)
    if op in (GITS_CMD_MOVI, GITS_CMD_MAPTI, GITS_CMD_MAPI, GITS_CMD_INVALL, GITS_CMD_MAPC):
        dw[:, 2] |= f("icid") & u(0xFFFF)
    if op == GITS_CMD_MAPD:
        dw[:, 1] |= f("size") & u(0x1F)
        dw[:, 2] |= (f("itt_addr") & u(_ITT_MASK)) | ((f("valid", 1) & u(1)) << u(63))
    if op == GITS_CMD_MAPC:
        dw[:, 2] |= ((f("rdbase") << u(16)) & u(_RD_ENC_MASK)) | ((f("valid", 1) & u(1)) << u(63))
    if op == GITS_CMD_SYNC:
        dw[:, 2] |= (f("rdbase") << u(16)) & u(_RD_ENC_MASK)
    if op == GITS_CMD_MOVALL:
        dw[:, 2] |= (f("rdbase") << u(16)) & u(_RD_ENC_MASK)
        dw[:, 3] |= (f("rdbase2") << u(16)) & u(_RD_ENC_MASK)
    return dw.view(np.uint8).reshape(n, 32)


def decode_many(slots: np.ndarray) -> dict[str, np.ndarray]:
    """Decode a ``[n, 32]`` uint8 array into field arrays (``opcode``, ``device_id``, ...),
    vectorised. Fields are decoded for every slot whatever its opcode; use ``opcode`` to select."""
    s = np.ascontiguousarray(slots, dtype=np.uint8)
    if s.ndim != 2 or s.shape[1] != 32:
        raise ValueError(f"decode_many: slots must have shape [n, 32], got {s.shape}")
    dw = s.view("<u8").reshape(-1, 4)
    u = np.uint64
    return {
        "opcode": (dw[:, 0] & u(0xFF)).astype(np.uint8),
        "device_id": (dw[:, 0] >> u(32)).astype(np.uint32),
        "event_id": (dw[:, 1] & u(_M32)).astype(np.uint32),
        "pintid": (dw[:, 1] >> u(32)).astype(np.uint32),
        "icid": (dw[:, 2] & u(0xFFFF)).astype(np.uint16),
        "itt_addr": dw[:, 2] & u(_ITT_MASK),
        "size": (dw[:, 1] & u(0x1F)).astype(np.uint8),
        "valid": (dw[:, 2] >> u(63)).astype(bool),
        "rdbase": ((dw[:, 2] & u(_RD_MASK)) >> u(16)).astype(np.uint32),
        "rdbase2": ((dw[:, 3] & u(_RD_MASK)) >> u(16)).astype(np.uint32),
    }
