"""The virtual ITS that a guest programs (KVM's emulated ITS, ``vgic-its.c``).

State: devices (DeviceID -> ITT address, EventID bits), collections (ICID -> target vCPU or
not mapped, in creation order; a collection is an *object*: ``MAPC V=0`` frees it and the ITEs
that pointed to it point to none, and a later ``MAPC V=1`` of the same ICID makes a new object
that they do not rejoin), and ITEs ((DeviceID, EventID) -> pINTID, collection) kept as numpy
arrays in creation order. LPIs live in the vgic core (:class:`vlpi.vgic.Vgic`), which the ITS
drives through its API (create, retarget, inject, clear, config, free); each ITE holds a
reference on its LPI, and an LPI goes away with its last ITE.

Each command has one handler (``mapd``, ``mapc``, ``mapti``, ``mapi``, ``movi``, ``movall``,
``discard``, ``int_``, ``clear``, ``inv``, ``invall``, ``sync``) that checks what KVM checks, in
KVM's order, and raises :class:`~vlpi.its.commands.ItsCommandError` with the architected code;
a rejected command changes nothing. :meth:`VirtualITS.execute` dispatches a decoded
:class:`~vlpi.its.commands.ItsCommand`; the command queue (:mod:`vlpi.its.queue`) calls it and
drops the error, as KVM does. :meth:`VirtualITS.map_events` is the vectorised MAPTI for
millions of mappings.

``kernel="new"`` (default) models the xarray-era KVM: ``MAPD V=0`` and ``DISCARD`` write a zero
DTE/ITE into guest memory, MAPTI checks that the ITE's address is in a memslot, ``MOVALL``
moves every LPI of the VM. ``kernel="old"`` models the list-era KVM: ``MAPC`` checks RDbase
even for V=0, ``MOVALL`` moves only the LPIs targeting RDbase1, and nothing is zeroed.
"""

from __future__ import annotations

import errno as _errno
from dataclasses import dataclass
from typing import TYPE_CHECKING, overload

import numpy as np
import numpy.typing as npt

from vlpi._typing import BoolArray, I64Array, U64Array
from vlpi.errors import GuestMemoryFault
from vlpi.its import commands as C
from vlpi.its.commands import ItsCommand, ItsCommandError
from vlpi.lpi import LPI_INTID_LIMIT
from vlpi.memory import GuestMemory
from vlpi.vgic import (
    PROPBASER_ADDRESS_MASK,
    LostReason,
    LostSource,
    Vgic,
    all_distinct,
    check_flag,
    check_reg,
    first_of,
    in_ram,
)

if TYPE_CHECKING:
    from vlpi.its.abi import ItsDevice, ItsSaveReport

__all__ = [
    "VirtualITS",
    "ItsStateError",
    "COLLECTION_NOT_MAPPED",
    "GITS_BASER0_INIT",
    "GITS_BASER1_INIT",
    "GITS_TYPER",
    "GITS_IIDR",
    "event_pairs",
]

COLLECTION_NOT_MAPPED = 0xFFFF_FFFF
GITS_BASER0_INIT = 0x1907_0000_0000_0600
GITS_BASER1_INIT = 0x1C07_0000_0000_0600
GITS_TYPER = 0x0000_0000_0001_EF71
GITS_IIDR = 0x4B00_043B
VITS_MAX_DEVID = 0xFFFF
VITS_EVENTID_BITS = 16
INTERRUPT_ID_BITS_ITS = 16
LPI_OFFSET = 8192
_TABLE_PAGE = 1 << 16
_ESZ = 8
_CMD_OFFSET = 0xF_FFE0  # GITS_CWRITER / GITS_CREADR bits [19:5]


@overload
def _ite_gpa(itt: int, event_id: int) -> int: ...
@overload
def _ite_gpa(itt: np.ndarray, event_id: np.ndarray) -> np.ndarray: ...
def _ite_gpa(itt: int | np.ndarray, event_id: int | np.ndarray) -> int | np.ndarray:
    """The ITE address as vgic_its_check_event_id computes it: ``itt + (u32)(EventID * 8)`` (the
    product wraps for ITTs of more than 2^29 events, which only a restored DTE can declare)."""
    return itt + ((event_id * _ESZ) & 0xFFFF_FFFF)


_NOT_MAPPED = -1  # collection target: exists but not mapped
_FREED = -2  # collection object freed


class ItsStateError(OSError):
    """The ITS is in a state the modelled kernel cannot handle (e.g. ``SAVE_TABLES`` with an ITE
    whose collection was unmapped: ``vgic_its_save_ite`` dereferences NULL there)."""


@dataclass
class _Grow:
    """Growable struct of arrays (capacity doubling; rows are never reordered)."""

    n: int
    arrays: dict[str, np.ndarray]

    @classmethod
    def make(cls, **dtypes: npt.DTypeLike) -> _Grow:
        return cls(0, {k: np.zeros(16, dtype=dt) for k, dt in dtypes.items()})

    def reserve(self, extra: int) -> None:
        need = self.n + extra
        cap = next(iter(self.arrays.values())).shape[0]
        if need <= cap:
            return
        cap = max(need, 2 * cap)
        for k, a in self.arrays.items():
            b = np.zeros(cap, dtype=a.dtype)
            b[: self.n] = a[: self.n]
            self.arrays[k] = b

    def __getitem__(self, k: str) -> np.ndarray:
        return self.arrays[k][: self.n]

    def append(self, **cols: npt.ArrayLike) -> np.ndarray:
        m = int(np.size(next(iter(cols.values()))))
        self.reserve(m)
        for k, v in cols.items():
            self.arrays[k][self.n : self.n + m] = v
        rows = np.arange(self.n, self.n + m)
        self.n += m
        return rows

    def compact(self, keep: np.ndarray) -> None:
        m = int(np.count_nonzero(keep))
        for _k, a in self.arrays.items():
            a[:m] = a[: self.n][keep]
        self.n = m


def _u(x: object, name: str, hi: int | None = None) -> int:
    if isinstance(x, (bool, np.bool_)) or not isinstance(x, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {type(x).__name__}")
    x = int(x)
    if x < 0 or (hi is not None and x >= hi):
        raise ValueError(f"{name} = {x} out of range [0, {hi if hi is not None else 'inf'})")
    return x


class VirtualITS:
    """KVM's emulated ITS for one VM.

    Usually created by :class:`vlpi.VM` (``vm.its``). Registers: ``ctlr_enabled``,
    ``baser`` (BASER0/1), ``cbaser``/``cwriter``/``creadr`` (see :mod:`vlpi.its.queue`).

    Parameters
    ----------
    vgic : Vgic
        The vgic core of the VM: its LPIs, guest memory and vCPUs.
    kernel : {"new", "old"}
        Which KVM generation to model (see the module docstring).

    Notes
    -----
    Not thread-safe: one thread at a time per VM (KVM serialises with ``its_lock`` and
    ``cmd_lock``). The registers are checked properties; ``devices`` and ``baser`` are the ITS's
    own state, to be changed only through commands and :meth:`write_baser`.
    """

    def __init__(self, vgic: Vgic, *, kernel: str = "new") -> None:
        if not isinstance(vgic, Vgic):
            raise TypeError(f"vgic must be a vlpi.vgic.Vgic (a VM's is vm.vgic, and its ITS vm.its), "
                            f"got {type(vgic).__name__}")
        if kernel not in ("new", "old"):
            raise ValueError(f"kernel must be 'new' or 'old', got {kernel!r}")
        self.vgic = vgic
        self.kernel = kernel
        self._enabled = False
        self.baser = [GITS_BASER0_INIT, GITS_BASER1_INIT]
        self._cbaser = 0
        self._cwriter = 0
        self._creadr = 0
        self.abi_revision = 0
        self.devices: dict[int, tuple[int, int]] = {}  # DeviceID -> (itt_addr, eventid_bits)
        self._coll: dict[int, int] = {}  # ICID -> collection serial (insertion = creation order)
        self._cobj = _Grow.make(icid=np.int64, target=np.int64)  # by serial
        self._ite = _Grow.make(
            dev=np.uint32, event=np.uint32, intid=np.uint32, coll=np.int64, live=bool, fwd=bool, inst=np.int64,
            shadow=bool,
        )
        # KVM's device list may hold one DeviceID twice (RESTORE_TABLES onto an ITS that was not
        # reset never checks): ``devices`` is the first of each ID (the one find_its_device
        # returns), ``_shadows`` the later ones in list order as (instance, itt_addr, bits);
        # ITEs carry their device instance (``inst``) and ``shadow`` while it is not the first
        self._inst: dict[int, int] = {}  # DeviceID -> instance of the device in ``devices``
        self._shadows: dict[int, list[tuple[int, int, int]]] = {}
        self._n_inst = 0
        self._ite_dict: dict[int, int] | None = {}
        self._ite_sorted: tuple[np.ndarray, np.ndarray] | None = None
        self._n_dead = 0
        from vlpi.its.queue import CommandLog

        self.command_log = CommandLog()
        #: GPA of the 8-byte table entry the last MAPD V=0 or DISCARD zeroed (None: none yet):
        #: the command queue re-reads the slots it read ahead when a command wrote into them
        self.last_entry_write: int | None = None

    # ================================================================ registers (state)
    @property
    def ctlr_enabled(self) -> bool:
        """GITS_CTLR.Enabled. Assigning it sets the state only (a bool); a guest's write, which
        checks the BASERs and runs the queue, is :func:`vlpi.its.queue.write_ctlr`."""
        return self._enabled

    @ctlr_enabled.setter
    def ctlr_enabled(self, value: bool) -> None:
        self._enabled = check_flag(value, "ctlr_enabled")

    @property
    def cbaser(self) -> int:
        """GITS_CBASER as stored (a guest's write, sanitised, is :func:`vlpi.its.queue.write_cbaser`).
        Assigning it refuses a queue smaller than CREADR or CWRITER."""
        return self._cbaser

    @cbaser.setter
    def cbaser(self, value: int) -> None:
        v = check_reg(value, "cbaser")
        size = ((v & 0xFF) + 1) * 4096
        if max(self._creadr, self._cwriter) >= size:
            raise ValueError(f"cbaser = {v:#x} gives a {size}-byte command queue, but CREADR = {self._creadr:#x} "
                             f"and CWRITER = {self._cwriter:#x} must lie inside it; set them first")
        self._cbaser = v

    def _offset(self, value: int, name: str) -> int:
        off = check_reg(value, name) & _CMD_OFFSET
        size = ((self._cbaser & 0xFF) + 1) * 4096
        if off >= size:
            raise ValueError(f"{name} = {int(value):#x}: offset {off:#x} (bits [19:5]) is beyond the {size}-byte "
                             "command queue; nothing was changed")
        return off

    @property
    def cwriter(self) -> int:
        """GITS_CWRITER: bits [19:5] only, as KVM stores it. Assigning it stores the offset
        without running the queue (ValueError if beyond the queue); a guest's write is
        :func:`vlpi.its.queue.write_cwriter`."""
        return self._cwriter

    @cwriter.setter
    def cwriter(self, value: int) -> None:
        self._cwriter = self._offset(value, "cwriter")

    @property
    def creadr(self) -> int:
        """GITS_CREADR: bits [19:5] only. Assigning it stores the offset (ValueError if beyond
        the queue); userspace's checked write is :func:`vlpi.its.queue.set_creadr`."""
        return self._creadr

    @creadr.setter
    def creadr(self, value: int) -> None:
        self._creadr = self._offset(value, "creadr")

    @property
    def mem(self) -> GuestMemory:
        """The guest memory holding the tables and the command queue."""
        return self.vgic.mem

    # ================================================================ queries
    @property
    def collections(self) -> list[tuple[int, int]]:
        """(ICID, target vCPU or COLLECTION_NOT_MAPPED) in creation order."""
        t = self._cobj["target"]
        return [(icid, COLLECTION_NOT_MAPPED if t[s] < 0 else int(t[s])) for icid, s in self._coll.items()]

    @property
    def n_ites(self) -> int:
        return self._ite.n - self._n_dead

    def ites(self) -> dict[str, np.ndarray]:
        """Live ITEs in creation order: ``device_id``, ``event_id``, ``intid``, ``icid``
        (-1 where the ITE's collection was unmapped), ``collection_mapped`` and ``forwarded``
        (VFIO forwarding was set up through this event)."""
        live = self._ite["live"]
        coll = self._ite["coll"][live]
        icid = np.where(coll >= 0, self._cobj["icid"][np.maximum(coll, 0)], -1) if coll.size else coll
        tgt = self._coll_target(coll)
        return {  # boolean indexing copies: the arrays are the caller's
            "device_id": self._ite["dev"][live],
            "event_id": self._ite["event"][live],
            "intid": self._ite["intid"][live],
            "icid": icid,
            "collection_mapped": tgt >= 0,
            "forwarded": self._ite["fwd"][live],
        }

    def ite_events(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(DeviceID, EventID, pINTID) of the live ITEs in creation order: the first three
        columns of :meth:`ites`, without the collection look-ups."""
        live = self._ite["live"]
        return self._ite["dev"][live], self._ite["event"][live], self._ite["intid"][live]

    def translate(self, device_id: int, event_id: int) -> tuple[int, int] | None:
        """(pINTID, target vCPU of the ITE's collection or -1) for a mapped event, else None."""
        r = self._find_ite(_u(device_id, "device_id", 1 << 32), _u(event_id, "event_id", 1 << 32))
        if r < 0:
            return None
        return int(self._ite.arrays["intid"][r]), int(self._coll_target(self._ite.arrays["coll"][r : r + 1])[0])

    def resolve(self, device_ids: np.ndarray, event_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Vectorised vgic_its_resolve_lpi: (ITE handle, pINTID) per event; -1 and 0 where the
        event has no ITE. Handles are valid until the next ITS command."""
        r = self._lookup(device_ids, event_ids)
        intid = np.where(r >= 0, self._ite.arrays["intid"][np.maximum(r, 0)] if self._ite.n else 0, 0)
        return r, intid.astype(np.int64)

    def resolvable(self, ites: np.ndarray) -> np.ndarray:
        """Per ITE handle: would vgic_its_resolve_lpi succeed? The ITS is enabled, the ITE's
        collection is mapped to a vCPU and that vCPU has EnableLPIs = 1 (``-EBUSY`` or
        ``E_ITS_INT_UNMAPPED_INTERRUPT`` otherwise)."""
        ites = np.asarray(ites, dtype=np.int64)
        ok = ites >= 0
        if not self.ctlr_enabled or not ok.any():
            return np.zeros(ites.shape, bool)
        t = self._coll_target(self._ite.arrays["coll"][np.maximum(ites, 0)])
        ok &= (t >= 0) & (t < self.vgic.n_vcpus)
        ok[ok] &= self.vgic.lpis_enabled[t[ok]]
        return ok

    def forwarded(self, ites: np.ndarray) -> BoolArray:
        """Per ITE handle (-1: none, False): was forwarding set up through this event?"""
        ites = np.asarray(ites, dtype=np.int64)
        return (ites >= 0) & (self._ite.arrays["fwd"][np.maximum(ites, 0)] if self._ite.n else False)

    def set_forwarded(self, ites: np.ndarray) -> None:
        """Record that forwarding was set up through these events (ITE handles)."""
        self._ite.arrays["fwd"][np.asarray(ites, dtype=np.int64)] = True

    def clear_forwarded(self, intids: npt.ArrayLike) -> None:
        """Forwarding of these LPIs was torn down: no event of theirs is forwarded any more."""
        a = self._ite.arrays
        n = self._ite.n
        a["fwd"][:n][np.isin(a["intid"][:n], np.asarray(intids))] = False

    def inject(self, d: np.ndarray, e: np.ndarray, *, source: LostSource, via_its: bool) -> np.ndarray:
        """Deliver interrupts for (DeviceID, EventID) pairs (validated int64 arrays), as if one
        by one: vgic_its_trigger_msi for each, except that a device MSI (``via_its=False``) of a
        forwarded event is translated by the host's ITS and goes straight to the vPE. Returns the
        per-interrupt result of :meth:`vlpi.vgic.Vgic.inject`; every refusal is logged."""
        n = d.size
        r, intid = self.resolve(d, e)
        have = r >= 0
        refused = np.zeros(n, np.int8)
        known_dev = np.isin(d, np.fromiter(self.devices, dtype=np.int64, count=len(self.devices)))
        refused[~have] = -np.where(known_dev[~have], LostReason.NO_ITE, LostReason.NO_DEVICE)
        coll_t = self._coll_target(self._ite.arrays["coll"][np.maximum(r, 0)]) if self._ite.n else np.full(n, -1)
        if not self.ctlr_enabled:
            refused[have] = -LostReason.ITS_DISABLED
        else:
            refused[have & (coll_t < 0)] = -LostReason.UNMAPPED_COLLECTION
        fwd = np.zeros(n, bool) if via_its else self.forwarded(r)
        return self.vgic.inject(intid, np.where(have, coll_t, -1), refused, fwd, source=source, device_ids=d,
                                event_ids=e, host_int=via_its)

    def _serials(self, icids: np.ndarray) -> np.ndarray:
        """Collection serial per ICID (-1 where no such collection); one dict look-up per
        distinct ICID."""
        u, inv = np.unique(np.asarray(icids, dtype=np.int64), return_inverse=True)
        su = np.array([self._coll.get(int(i), -1) for i in u.tolist()], dtype=np.int64)
        return su[inv.reshape(-1)] if u.size else np.zeros(0, np.int64)

    def _coll_target(self, serials: np.ndarray) -> np.ndarray:
        """Target vCPU per collection serial; -1 where NULL, unmapped or freed."""
        s = np.asarray(serials, dtype=np.int64)
        if s.size == 0:
            return np.zeros(0, np.int64)
        t = self._cobj["target"][np.maximum(s, 0)] if self._cobj.n else np.full(s.shape, -1)
        return np.where(s >= 0, np.maximum(t, -1), -1)

    # ------------------------------------------------------------ ITE index
    @staticmethod
    def _key(dev: npt.ArrayLike, ev: npt.ArrayLike) -> U64Array:
        return (np.asarray(dev, dtype=np.uint64) << np.uint64(32)) | np.asarray(ev, dtype=np.uint64)

    def _dict(self) -> dict[int, int]:
        if self._ite_dict is None:
            live = np.flatnonzero(self._ite["live"] & ~self._ite["shadow"])
            keys = self._key(self._ite["dev"][live], self._ite["event"][live])
            self._ite_dict = dict(zip(keys.tolist(), live.tolist(), strict=False))
        return self._ite_dict

    def _find_ite(self, dev: int, ev: int) -> int:
        return self._dict().get((dev << 32) | ev, -1)

    def _lookup(self, dev: np.ndarray, ev: np.ndarray) -> np.ndarray:
        """Vectorised ITE row per (DeviceID, EventID), -1 where none."""
        if self._ite_sorted is None:
            live = np.flatnonzero(self._ite["live"] & ~self._ite["shadow"])
            keys = self._key(self._ite["dev"][live], self._ite["event"][live])
            o = np.argsort(keys, kind="stable")
            self._ite_sorted = (keys[o], live[o])
        keys, rows = self._ite_sorted
        q = self._key(dev, ev)
        if keys.size == 0:
            return np.full(q.shape, -1, np.int64)
        i = np.searchsorted(keys, q)
        ic = np.minimum(i, keys.size - 1)
        return np.where(keys[ic] == q, rows[ic], -1)

    def _ites_changed(self) -> None:
        self._ite_sorted = None

    def _add_ites(
        self,
        dev: npt.ArrayLike,
        ev: npt.ArrayLike,
        intid: npt.ArrayLike,
        coll: npt.ArrayLike,
        inst: npt.ArrayLike | None = None,
        shadow: npt.ArrayLike | None = None,
    ) -> np.ndarray:
        """Append ITEs of visible devices (``inst`` defaults to their device's instance) or,
        with ``shadow``, of later duplicates of a DeviceID (never found by look-ups)."""
        if inst is None:
            d = np.asarray(dev, dtype=np.int64).reshape(-1)
            u, iv = np.unique(d, return_inverse=True)
            inst = np.array([self._inst[int(x)] for x in u.tolist()], np.int64)[iv] if d.size else 0
        rows = self._ite.append(dev=dev, event=ev, intid=intid, coll=coll, live=True, fwd=False, inst=inst,
                                shadow=False if shadow is None else shadow)
        if shadow is not None and np.any(shadow):
            self._ite_dict = None
        if self._ite_dict is not None:
            if rows.size == 1:
                self._ite_dict[(int(np.asarray(dev).reshape(-1)[0]) << 32) | int(np.asarray(ev).reshape(-1)[0])] = int(
                    rows[0]
                )
            else:
                self._ite_dict = None
        self._ites_changed()
        return rows

    def _free_ites(self, rows: np.ndarray, source: LostSource) -> None:
        """its_free_ite for each row: drop the ITE and its LPI reference (the LPI goes away
        with its last reference; a forwarded one is unmapped from the GIC)."""
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size == 0:
            return
        a = self._ite.arrays
        intids = a["intid"][rows].copy()
        devs = a["dev"][rows].copy()
        evs = a["event"][rows].copy()
        a["live"][rows] = False
        self._n_dead += int(rows.size)
        if self._ite_dict is not None:
            if rows.size < 64:
                for d, e in zip(devs.tolist(), evs.tolist(), strict=False):
                    self._ite_dict.pop((d << 32) | e, None)
            else:
                self._ite_dict = None
        self._ites_changed()
        # its_free_ite: an ITE whose LPI is forwarded always unmaps the VLPI (its_unmap_vlpi),
        # whether or not another ITE still names the LPI; its pending state goes, ``hw`` clears
        unmapped, _ = self.vgic.unmap_vlpis(intids, devs, evs, source, LostReason.FREED_PENDING)
        self.clear_forwarded(intids[unmapped])
        self.vgic.put_lpis(intids, devs, evs, source)
        if self._n_dead > 1024 and self._n_dead * 2 > self._ite.n:
            self._ite.compact(self._ite["live"].copy())
            self._n_dead = 0
            self._ite_dict = None

    # ----------------------------------------------------------- table checks
    def _check_id(self, which: int, ident: int) -> tuple[bool, int]:
        """vgic_its_check_id: (ok, entry GPA)."""
        baser = self.baser[which]
        if which == 0 and ident > VITS_MAX_DEVID:
            return False, 0
        if which == 1 and ident >= 1 << 16:
            return False, 0
        base = (baser & 0x0000_FFFF_FFFF_0000) | (((baser >> 12) & 0xF) << 48)
        tbl = ((baser & 0xFF) + 1) * _TABLE_PAGE
        mem = self.mem
        if which == 1 or not (baser >> 62) & 1:
            if ident >= tbl // _ESZ:
                return False, 0
            addr = base + ident * _ESZ
            return mem.slot_at(addr) is not None, addr
        index = ident // (_TABLE_PAGE // _ESZ)
        if index >= tbl // 8:
            return False, 0
        try:
            l1 = int(mem.read(base + index * 8, 8).view("<u8")[0])
        except GuestMemoryFault:
            return False, 0
        if not l1 >> 63:
            return False, 0
        addr = (l1 & 0x000F_FFFF_FFFF_0000) + (ident % (_TABLE_PAGE // _ESZ)) * _ESZ
        return mem.slot_at(addr) is not None, addr

    def _vcpu_ok(self, vcpu: int) -> bool:
        return 0 <= vcpu < self.vgic.n_vcpus

    def _max_lpis(self) -> int:
        nbits = (int(self.vgic.propbaser) & 0x1F) + 1
        return 1 << min(nbits, INTERRUPT_ID_BITS_ITS)

    # ================================================================ commands
    def execute(self, cmd: ItsCommand) -> None:
        """Execute one decoded command (raises ItsCommandError like the Python calls).
        Opcodes without a KVM handler are no-ops."""
        if not isinstance(cmd, ItsCommand):
            raise TypeError(f"cmd must be an ItsCommand (see vlpi.its.decode), got {type(cmd).__name__}")
        op = cmd.opcode
        if op == C.GITS_CMD_MAPD:
            self.mapd(cmd.device_id, cmd.itt_addr, cmd.size, valid=cmd.valid)
        elif op == C.GITS_CMD_MAPC:
            self.mapc(cmd.icid, cmd.rdbase, valid=cmd.valid)
        elif op == C.GITS_CMD_MAPTI:
            self.mapti(cmd.device_id, cmd.event_id, cmd.pintid, cmd.icid)
        elif op == C.GITS_CMD_MAPI:
            self.mapi(cmd.device_id, cmd.event_id, cmd.icid)
        elif op == C.GITS_CMD_MOVI:
            self.movi(cmd.device_id, cmd.event_id, cmd.icid)
        elif op == C.GITS_CMD_MOVALL:
            self.movall(cmd.rdbase, cmd.rdbase2)
        elif op == C.GITS_CMD_DISCARD:
            self.discard(cmd.device_id, cmd.event_id)
        elif op == C.GITS_CMD_INT:
            self.int_(cmd.device_id, cmd.event_id)
        elif op == C.GITS_CMD_CLEAR:
            self.clear(cmd.device_id, cmd.event_id)
        elif op == C.GITS_CMD_INV:
            self.inv(cmd.device_id, cmd.event_id)
        elif op == C.GITS_CMD_INVALL:
            self.invall(cmd.icid)
        elif op == C.GITS_CMD_SYNC:
            self.sync(cmd.rdbase)

    def mapd(self, device_id: int, itt_addr: int, size: int, *, valid: bool = True) -> None:
        """MAPD: map DeviceID to an ITT of 2^(size+1) events (V=1) or unmap it (V=0).

        Remapping a mapped device drops all its ITEs first. ``itt_addr`` bits [51:8] are used.
        """
        dev = _u(device_id, "device_id", 1 << 32)
        size = _u(size, "size", 32)
        valid = check_flag(valid, "valid")
        itt = _u(itt_addr, "itt_addr") & (((1 << 52) - 1) & ~0xFF)
        ok, gpa = self._check_id(0, dev)
        if not ok:
            raise ItsCommandError(C.E_ITS_MAPD_DEVICE_OOR, "MAPD", f"DeviceID {dev} fails the device-table check")
        if valid and size + 1 > VITS_EVENTID_BITS:
            raise ItsCommandError(C.E_ITS_MAPD_ITTSIZE_OOR, "MAPD", f"Size {size} gives {size + 1} > 16 EventID bits")
        if dev in self.devices:
            self._free_device(dev, source=LostSource.MAPD)
        if not valid:
            if self.kernel == "new":
                self.last_entry_write = gpa
                self.mem.write(gpa, np.zeros(8, np.uint8))  # zero DTE (a fault is the command's error)
            return
        self._alloc_device(dev, itt, size + 1)

    def _alloc_device(self, dev: int, itt: int, bits: int) -> tuple[int, bool]:
        """vgic_its_alloc_device: a new device at the end of the list. Returns (instance,
        shadowed): shadowed when the DeviceID is there already (look-ups keep finding that one)."""
        self._n_inst += 1
        inst = self._n_inst
        if dev in self.devices:
            self._shadows.setdefault(dev, []).append((inst, itt, bits))
            return inst, True
        self.devices[dev] = (itt, bits)
        self._inst[dev] = inst
        return inst, False

    def _free_device(self, dev: int, source: LostSource) -> None:
        """vgic_its_free_device of the device find_its_device returns; a later device with the
        same ID (restored twice) then becomes the one found."""
        a = self._ite
        inst = self._inst.pop(dev)
        rows = np.flatnonzero(a["live"] & (a["inst"] == inst))
        self._free_ites(rows, source)
        del self.devices[dev]
        later = self._shadows.get(dev)
        if later:
            inst2, itt, bits = later.pop(0)
            if not later:
                del self._shadows[dev]
            self.devices[dev] = (itt, bits)
            self._inst[dev] = inst2
            a.arrays["shadow"][: a.n][a["inst"] == inst2] = False
            self._ite_dict = None
            self._ites_changed()

    def _free_device_list(self, source: LostSource) -> None:
        """vgic_its_free_device_list: every device, duplicates included."""
        while self.devices:
            self._free_device(next(iter(self.devices)), source)

    def mapc(self, icid: int, rdbase: int, *, valid: bool = True) -> None:
        """MAPC: map collection ``icid`` to vCPU ``rdbase`` (V=1) or delete it (V=0)."""
        icid = _u(icid, "icid", 1 << 16)
        rd = _u(rdbase, "rdbase")
        valid = check_flag(valid, "valid")
        if self.kernel == "old" and not self._vcpu_ok(rd):
            raise ItsCommandError(C.E_ITS_MAPC_PROCNUM_OOR, "MAPC", f"RDbase {rd} is not a vCPU")
        if not valid:
            self._free_collection(icid)
            return
        if not self._vcpu_ok(rd):
            raise ItsCommandError(C.E_ITS_MAPC_PROCNUM_OOR, "MAPC", f"RDbase {rd} is not a vCPU id")
        s = self._coll.get(icid)
        if s is None:
            if not self._check_id(1, icid)[0]:
                raise ItsCommandError(
                    C.E_ITS_MAPC_COLLECTION_OOR, "MAPC", f"ICID {icid} fails the collection-table check"
                )
            self._new_collection(icid, rd)
            return
        self._cobj.arrays["target"][s] = rd
        a = self._ite
        rows = np.flatnonzero(a["live"] & (a["coll"] == s))
        self.vgic.retarget(a["intid"][rows], rd)

    def _new_collection(self, icid: int, target: int) -> int:
        s = int(self._cobj.append(icid=icid, target=target)[0])
        self._coll[icid] = s
        return s

    def _free_collection(self, icid: int) -> None:
        s = self._coll.pop(icid, None)
        if s is None:
            return
        self._cobj.arrays["target"][s] = _FREED
        a = self._ite
        a.arrays["coll"][: a.n][a["coll"] == s] = -1

    def mapti(self, device_id: int, event_id: int, pintid: int, icid: int) -> None:
        """MAPTI: map (DeviceID, EventID) to LPI ``pintid`` in collection ``icid``.

        A new LPI reads its configuration byte and pulls its pending bit from the target's
        pending table (clearing it in RAM); an existing mapping makes this a no-op.
        """
        self._mapti("MAPTI", device_id, event_id, pintid, icid)

    def mapi(self, device_id: int, event_id: int, icid: int) -> None:
        """MAPI: MAPTI with pINTID = EventID."""
        self._mapti("MAPI", device_id, event_id, event_id, icid)

    def _mapti(self, name: str, device_id: int, event_id: int, pintid: int, icid: int) -> None:
        dev = _u(device_id, "device_id", 1 << 32)
        ev = _u(event_id, "event_id", 1 << 32)
        lpi = _u(pintid, "pintid", 1 << 32)
        icid = _u(icid, "icid", 1 << 16)
        d = self.devices.get(dev)
        if d is None:
            raise ItsCommandError(C.E_ITS_MAPTI_UNMAPPED_DEVICE, name, f"DeviceID {dev} is not mapped")
        itt, bits = d
        if ev >= 1 << bits:
            raise ItsCommandError(C.E_ITS_MAPTI_ID_OOR, name, f"EventID {ev} >= 2^{bits}")
        if self.kernel == "new" and self.mem.slot_at(_ite_gpa(itt, ev)) is None:
            raise ItsCommandError(C.E_ITS_MAPTI_ID_OOR, name, f"ITE address {_ite_gpa(itt, ev):#x} is not in a memslot")
        if lpi < LPI_OFFSET or lpi >= self._max_lpis():
            raise ItsCommandError(
                C.E_ITS_MAPTI_PHYSICALID_OOR, name, f"pINTID {lpi} outside [8192, {self._max_lpis()})"
            )
        if self._find_ite(dev, ev) >= 0:
            return
        s = self._coll.get(icid)
        new_coll = s is None
        if new_coll:
            if not self._check_id(1, icid)[0]:
                raise ItsCommandError(
                    C.E_ITS_MAPC_COLLECTION_OOR, name, f"ICID {icid} fails the collection-table check"
                )
        tgt = -1 if new_coll else int(self._coll_target(np.array([s]))[0])
        err = self.vgic.get_lpis(np.array([lpi], np.uint32), np.array([tgt], np.int64))[0]
        if err:
            raise OSError(int(err), f"{name}: vgic_add_lpi({lpi}) failed: guest memory fault")
        if s is None:  # new_coll
            s = self._new_collection(icid, _NOT_MAPPED)
        self._add_ites([dev], [ev], [lpi], [s])

    def map_events(
        self,
        device_ids: npt.ArrayLike,
        event_ids: npt.ArrayLike,
        intids: npt.ArrayLike,
        icids: npt.ArrayLike,
        *,
        errors: str = "raise",
    ) -> np.ndarray:
        """Vectorised MAPTI for many events (no Python loop per mapping).

        Parameters
        ----------
        device_ids, event_ids, intids, icids : array-like of int
            One MAPTI per element, executed as if in array order (later duplicates of a
            (DeviceID, EventID) are no-ops, LPIs are created in first-mention order).
        errors : {"raise", "skip"}
            "raise": validate everything first and raise ``ItsCommandError`` (with ``.index``,
            the first offending element) or ``GuestMemoryFault`` before changing anything.
            "skip": apply the valid elements and return the error codes (queue semantics).

        Returns
        -------
        numpy.ndarray of int64
            Per element: 0 (mapped, or already mapped), an ``E_ITS_*`` code, or ``-errno`` when
            creating the LPI faulted.
        """
        if errors not in ("raise", "skip"):
            raise ValueError(f"errors must be 'raise' or 'skip', got {errors!r}")
        arrs = []
        for name, x, hi in (("device_ids", device_ids, 1 << 32), ("event_ids", event_ids, 1 << 32),
                            ("intids", intids, 1 << 32), ("icids", icids, 1 << 16)):
            a = np.asarray(x)
            if a.ndim == 0:
                a = a.reshape(1)
            if a.size and (a.dtype == np.bool_ or not np.issubdtype(a.dtype, np.integer)):
                raise TypeError(f"map_events: {name} must be integers, got dtype {a.dtype}")
            a = a.astype(np.int64).reshape(-1)
            bad = np.flatnonzero((a < 0) | (a >= hi))
            if bad.size:
                raise ValueError(f"map_events: {name}[{bad[0]}] = {a[bad[0]]} out of range [0, {hi})")
            arrs.append(a)
        n = max(a.size for a in arrs)
        try:
            dev, ev, lpi, icid = (np.broadcast_to(a, (n,)) for a in arrs)
        except ValueError:
            raise ValueError(
                "map_events: device_ids, event_ids, intids and icids must have the same length "
                f"(got {[a.size for a in arrs]})"
            ) from None
        code = np.zeros(n, np.int64)
        # device checks
        dids = np.array(sorted(self.devices), dtype=np.int64)
        dbits = np.array([self.devices[d][1] for d in dids.tolist()], dtype=np.int64)
        ditt = np.array([self.devices[d][0] for d in dids.tolist()], dtype=np.int64)
        di = np.searchsorted(dids, dev) if dids.size else np.zeros(n, np.int64)
        dic = np.minimum(di, max(dids.size - 1, 0))
        known = (dids[dic] == dev) if dids.size else np.zeros(n, bool)
        code[~known] = C.E_ITS_MAPTI_UNMAPPED_DEVICE
        bits = np.where(known, dbits[dic] if dids.size else 0, 0)
        oor = known & (ev >= (np.int64(1) << bits))
        code[(code == 0) & oor] = C.E_ITS_MAPTI_ID_OOR
        if self.kernel == "new" and dids.size:
            ite_gpa = _ite_gpa(ditt[dic], np.asarray(ev, dtype=np.int64)).astype(np.uint64)
            vis = in_ram(self.mem, ite_gpa)
            code[(code == 0) & ~vis] = C.E_ITS_MAPTI_ID_OOR
        code[(code == 0) & ((lpi < LPI_OFFSET) | (lpi >= self._max_lpis()))] = C.E_ITS_MAPTI_PHYSICALID_OOR
        # Sequential semantics: after the device/EventID/pINTID checks, an element whose
        # (DeviceID, EventID) already has an ITE (from before, or created by an earlier element)
        # is a no-op; otherwise the ICID check, then the LPI creation. The first element of a key
        # that passes both creates the ITE ("creator"); a creator whose LPI creation faults is
        # retried by the key's next element.
        cand = code == 0
        exists = self._lookup(dev, ev) >= 0
        key = (dev << 32) | ev
        known_icids = np.array(list(self._coll), dtype=np.int64)
        new_icid = cand & ~exists & ~np.isin(icid, known_icids)
        uniq_new = np.unique(icid[new_icid])
        ok_new = np.array([self._check_id(1, int(i))[0] for i in uniq_new.tolist()], dtype=bool)
        bad_new = np.isin(icid, uniq_new[~ok_new]) & new_icid
        may_create = cand & ~exists & ~bad_new
        lpi_err = np.zeros(n, np.int64)
        if errors == "raise":
            first_pass = first_of(key, may_create)
            pos = np.flatnonzero(first_pass)
            creator_at = _creator_index(key, pos, n)
            bad = np.flatnonzero(cand & ~exists & bad_new & (np.arange(n) < creator_at))
            allbad = np.flatnonzero(~cand)
            bad = np.union1d(bad, allbad)
            if bad.size:
                i = int(bad[0])
                c = int(code[i]) if code[i] else C.E_ITS_MAPC_COLLECTION_OOR
                raise ItsCommandError(c, "MAPTI", f"device {dev[i]} event {ev[i]} pINTID {lpi[i]}", index=i)
        # which elements attempt an ITE creation, and which succeed (fixed point: an LPI creation
        # succeeds if its accesses cannot fault or an earlier successful attempt created the INTID)
        mc = np.flatnonzero(may_create)
        serial = self._serials(icid[mc])
        tgt = self._coll_target(serial)
        pre = self.vgic.rows(lpi[mc]) >= 0
        ok_static = pre | self.vgic.predict_add(lpi[mc].astype(np.uint32), tgt)[0]
        succ = ok_static.copy()
        kk, ll = key[mc], lpi[mc]
        while True:
            first_succ_key = _creator_index(kk, np.flatnonzero(first_of(kk, succ)), mc.size)
            attempt = np.arange(mc.size) <= first_succ_key
            made = np.flatnonzero(first_of(ll, attempt & ok_static))
            made_at = _creator_index(ll, made, mc.size)
            new_succ = ok_static | (attempt & (made_at < np.arange(mc.size)))
            if (new_succ == succ).all():
                break
            succ = new_succ
        att = mc[attempt]
        err = self.vgic.get_lpis(lpi[att].astype(np.uint32), tgt[attempt], atomic=(errors == "raise"))
        lpi_err[att] = -err
        good = att[err == 0]
        gi = icid[good]
        need = gi[~np.isin(gi, np.array(list(self._coll), dtype=np.int64))]
        if need.size:
            _, fi = np.unique(need, return_index=True)
            for c in need[np.sort(fi)].tolist():
                self._new_collection(int(c), _NOT_MAPPED)
        s_rows = self._serials(gi)
        self._add_ites(dev[good].astype(np.uint32), ev[good].astype(np.uint32), lpi[good].astype(np.uint32), s_rows)
        creator_at = _creator_index(key, np.sort(good), n)  # per element: its key's creator (n: none)
        before = cand & ~exists & (np.arange(n) < creator_at)
        code[before & bad_new] = C.E_ITS_MAPC_COLLECTION_OOR
        code[before & ~bad_new] = lpi_err[before & ~bad_new]
        return code

    def movi(self, device_id: int, event_id: int, icid: int) -> None:
        """MOVI: move an event to another (mapped) collection; its LPI is retargeted (a
        forwarded one is moved with VMOVI, its pending bit with it)."""
        dev, ev, icid = _u(device_id, "device_id"), _u(event_id, "event_id"), _u(icid, "icid", 1 << 16)
        r = self._find_ite(dev, ev)
        if r < 0:
            raise ItsCommandError(C.E_ITS_MOVI_UNMAPPED_INTERRUPT, "MOVI", f"no ITE for device {dev} event {ev}")
        if self._coll_target(self._ite.arrays["coll"][r : r + 1])[0] < 0:
            raise ItsCommandError(C.E_ITS_MOVI_UNMAPPED_COLLECTION, "MOVI", "the event's collection is not mapped")
        s = self._coll.get(icid)
        if s is None or self._cobj.arrays["target"][s] < 0:
            raise ItsCommandError(C.E_ITS_MOVI_UNMAPPED_COLLECTION, "MOVI", f"ICID {icid} is not mapped")
        self._ite.arrays["coll"][r] = s
        self.vgic.retarget(self._ite.arrays["intid"][r : r + 1], int(self._cobj.arrays["target"][s]))

    def movall(self, rdbase: int, rdbase2: int) -> None:
        """MOVALL: retarget LPIs from vCPU ``rdbase`` to ``rdbase2`` (new KVM: every LPI)."""
        r1, r2 = _u(rdbase, "rdbase"), _u(rdbase2, "rdbase2")
        if not (self._vcpu_ok(r1) and self._vcpu_ok(r2)):
            raise ItsCommandError(C.E_ITS_MOVALL_PROCNUM_OOR, "MOVALL", f"RDbase {r1} or {r2} is not a vCPU")
        if r1 == r2:
            return
        intid = self.vgic["intid"]
        if self.kernel == "old":
            intid = intid[self.vgic["target"] == r1]
        self.vgic.retarget(intid.copy(), r2)

    def discard(self, device_id: int, event_id: int) -> None:
        """DISCARD: free the ITE (its LPI reference, and the pending state with the last one)."""
        dev, ev = _u(device_id, "device_id"), _u(event_id, "event_id")
        r = self._find_ite(dev, ev)
        if r < 0 or self._coll_target(self._ite.arrays["coll"][r : r + 1])[0] < 0:
            raise ItsCommandError(
                C.E_ITS_DISCARD_UNMAPPED_INTERRUPT, "DISCARD", f"no ITE with a mapped collection for {dev}/{ev}"
            )
        self._free_ites(np.array([r]), LostSource.DISCARD)
        if self.kernel == "new":
            itt, _ = self.devices[dev]
            self.last_entry_write = _ite_gpa(itt, ev)
            self.mem.write(_ite_gpa(itt, ev), np.zeros(8, np.uint8))

    def int_(self, device_id: int, event_id: int) -> None:
        """INT: make the event's LPI pending (a forwarded one: set its VLPI pending).

        Raises ``ItsCommandError(E_ITS_INT_UNMAPPED_INTERRUPT)`` or, when the target vCPU has
        EnableLPIs = 0, ``OSError(EBUSY)``. Refusals are also recorded in ``vm.lost``.
        """
        dev, ev = _u(device_id, "device_id", 1 << 32), _u(event_id, "event_id", 1 << 32)
        out = self.inject(np.array([dev]), np.array([ev]), source=LostSource.INT, via_its=True)
        reason = int(out[0])
        if reason > 0:
            return
        if -reason == LostReason.LPIS_DISABLED:
            raise OSError(_errno.EBUSY, f"INT {dev}/{ev}: EnableLPIs is 0 on the target vCPU")
        if -reason == LostReason.ITS_DISABLED:
            raise OSError(_errno.EBUSY, f"INT {dev}/{ev}: the ITS is disabled")
        if -reason == LostReason.VPE_UNMAPPED:
            return  # the host INT reached an unmapped vPE: lost (logged), not a command error
        raise ItsCommandError(
            C.E_ITS_INT_UNMAPPED_INTERRUPT, "INT", f"device {dev} event {ev}: {LostReason(-reason).name}"
        )

    def clear(self, device_id: int, event_id: int) -> None:
        """CLEAR: clear the event's pending state (software latch and, if forwarded, the VLPI)."""
        dev, ev = _u(device_id, "device_id"), _u(event_id, "event_id")
        r = self._find_ite(dev, ev)
        if r < 0:
            raise ItsCommandError(C.E_ITS_CLEAR_UNMAPPED_INTERRUPT, "CLEAR", f"no ITE for device {dev} event {ev}")
        self.vgic.clear_pending(self._ite.arrays["intid"][r : r + 1])

    def inv(self, device_id: int, event_id: int) -> None:
        """INV: re-read the LPI's configuration byte (priority, enable)."""
        dev, ev = _u(device_id, "device_id"), _u(event_id, "event_id")
        r = self._find_ite(dev, ev)
        if r < 0:
            raise ItsCommandError(C.E_ITS_INV_UNMAPPED_INTERRUPT, "INV", f"no ITE for device {dev} event {ev}")
        self.vgic.update_config(self._ite.arrays["intid"][r : r + 1], None)

    def invall(self, icid: int) -> None:
        """INVALL: re-read the configuration of every LPI targeting the collection's vCPU."""
        icid = _u(icid, "icid", 1 << 16)
        s = self._coll.get(icid)
        if s is None or self._cobj.arrays["target"][s] < 0:
            raise ItsCommandError(C.E_ITS_INVALL_UNMAPPED_COLLECTION, "INVALL", f"ICID {icid} is not mapped")
        self.vgic.update_config(None, int(self._cobj.arrays["target"][s]))

    def sync(self, rdbase: int = 0) -> None:
        """SYNC: nothing (KVM executes commands synchronously)."""

    # ================================================================ registers
    def write_baser(self, n: int, value: int) -> None:
        """Write GITS_BASER<n> (n = 0 device table, 1 collection table; others ignored).
        Ignored while the ITS is enabled; a write leaving Valid = 0 frees every device (n=0)
        or every collection (n=1)."""
        value = check_reg(value, "value (GITS_BASER)")
        if isinstance(n, (bool, np.bool_)) or not isinstance(n, (int, np.integer)) or n not in (0, 1):
            raise ValueError(
                f"n = {n!r}: KVM implements GITS_BASER0 (device table) and GITS_BASER1 (collection table) only; "
                "BASER2..7 read as 0 and ignore writes"
            )
        if self.ctlr_enabled:
            return
        typ = (1 if n == 0 else 4) << 56
        v = value & ~((7 << 56) | (0x1F << 48) | (3 << 8))
        v |= typ | (7 << 48) | (2 << 8)  # Type, Entry_Size = 8 bytes, 64 KiB pages
        inner = (v >> 59) & 7
        if inner in (0, 1):
            v = (v & ~(7 << 59)) | (3 << 59)
        outer = (v >> 53) & 7
        if outer not in (0, 1):
            v &= ~(7 << 53)
        if ((v >> 10) & 3) == 2:
            v = (v & ~(3 << 10)) | (1 << 10)
        if n == 1:
            v &= ~(1 << 62)
        self.baser[n] = v
        if not v >> 63:
            if n == 0:
                self._free_device_list(LostSource.MAPD)
            else:
                for icid in list(self._coll):
                    self._free_collection(icid)

    def reset(self) -> None:
        """KVM_DEV_ARM_ITS_CTRL_RESET."""
        self.ctlr_enabled = False
        self._free_device_list(LostSource.MAPD)
        for icid in list(self._coll):
            self._free_collection(icid)
        self.baser = [b & ~(1 << 63) for b in self.baser]
        self.creadr = self.cwriter = 0
        self.cbaser = 0

    # ================================================================ table ABI
    def _save_inputs(self) -> tuple[list[ItsDevice], list[tuple[int, int]]]:
        from vlpi.its.abi import ItsDevice

        a = self._ite
        live = a["live"]
        coll = a["coll"]
        if np.any(live & (coll < 0)):
            r = int(np.flatnonzero(live & (coll < 0))[0])
            raise ItsStateError(
                _errno.EINVAL,
                f"ITE device {a['dev'][r]} event {a['event'][r]} (LPI {a['intid'][r]}) points to an unmapped "
                "collection (MAPC V=0 while in use): KVM's SAVE_TABLES dereferences NULL here; "
                "kernel behaviour undefined. Remap or discard the event first.",
            )
        hw_of = self.vgic.hw_of(a["intid"])
        rows = np.flatnonzero(live)
        rows = rows[np.argsort(a["inst"][rows], kind="stable")]
        inst_sorted = a["inst"][rows]
        # the device list sorted by DeviceID, stable (list_sort): duplicates in list order
        entries = [(d, self._inst[d], itt, bits) for d, (itt, bits) in self.devices.items()]
        entries += [(d, i, itt, bits) for d, lst in self._shadows.items() for i, itt, bits in lst]
        entries.sort(key=lambda x: (x[0], x[1]))
        devices = []
        for d, i, itt, bits in entries:
            lo, hi = np.searchsorted(inst_sorted, [i, i + 1])
            m = rows[lo:hi]
            devices.append(
                ItsDevice(
                    device_id=d, itt_addr=itt, eventid_bits=bits,
                    event_id=a["event"][m].astype(np.uint32), pintid=a["intid"][m].astype(np.uint32),
                    icid=self._cobj["icid"][coll[m]].astype(np.uint16), hw=hw_of[m],
                )
            )
        return devices, self.collections

    def save_tables(self, *, has_gicv4_1: bool) -> ItsSaveReport:
        """``KVM_DEV_ARM_ITS_SAVE_TABLES`` through :func:`vlpi.its.abi.save_tables_v0`."""
        from vlpi.its.abi import save_tables_v0

        has_gicv4_1 = check_flag(has_gicv4_1, "has_gicv4_1")
        devices, colls = self._save_inputs()
        return save_tables_v0(self.mem, self.baser[0], self.baser[1], devices, colls, has_gicv4_1=has_gicv4_1)

    def restore_tables(self) -> tuple[list[tuple[int, int]], list[ItsDevice]]:
        """``KVM_DEV_ARM_ITS_RESTORE_TABLES`` (:func:`vlpi.its.abi.restore_tables_v0`), with the
        kernel's order of effects: collections first, then devices in scan order, each ITE's LPI
        created (config read, pending bit pulled and cleared in RAM) before the next entry is
        read. So an error leaves the pending bits of the LPIs created before it consumed, and
        the first failure in walk order wins (an LPI creation fault before a later invalid
        entry is ``EFAULT``). After a collection-table error only the collection list is freed
        (devices, ITEs and LPIs already there stay, without their collection); after any other
        error every device, then every collection, is freed.

        A pINTID >= 2^24 (KVM checks only >= 8192): the kernel would read its configuration
        byte, then create the LPI. vlpi's LPIs are 24-bit INTIDs, so when that byte is guest
        RAM the restore is refused with ``ValueError`` before anything changes; when it is
        not, the creation faults (``EFAULT``) as in the kernel.
        """
        from vlpi.its.abi import ItsTableError, restore_tables_v0

        try:
            colls, devs = restore_tables_v0(
                self.mem, self.baser[0], self.baser[1], n_vcpus=self.vgic.n_vcpus,
                existing_collections=list(self._coll),
            )
            table_err = None
        except ItsTableError as e:
            if e.table == "collection":  # vgic_its_restore_collection_table: free the list, return
                for c in list(self._coll):
                    self._free_collection(c)
                raise
            table_err = e
            colls, devs = e.collections or [], e.devices or []
        n_ite = [len(d.event_id) for d in devs]
        dev = np.repeat(np.array([int(d.device_id) for d in devs], np.int64), n_ite).astype(np.uint32)
        ev = np.concatenate([d.event_id for d in devs]).astype(np.uint32) if devs else np.zeros(0, np.uint32)
        lpi = np.concatenate([d.pintid for d in devs]).astype(np.int64) if devs else np.zeros(0, np.int64)
        icid = np.concatenate([d.icid for d in devs]).astype(np.int64) if devs else np.zeros(0, np.int64)
        big = np.flatnonzero(lpi >= LPI_INTID_LIMIT)
        n_try = int(big[0]) if big.size else lpi.size
        if big.size:
            cfg = np.uint64((self.vgic.propbaser & PROPBASER_ADDRESS_MASK) + int(lpi[n_try]) - 8192)
            if in_ram(self.mem, cfg):
                raise ValueError(
                    f"RESTORE_TABLES: device {int(dev[n_try])} event {int(ev[n_try])} has pINTID "
                    f"{int(lpi[n_try])} >= 2**24. KVM would create this LPI (it checks only pINTID >= 8192; "
                    f"its configuration byte at GPA {int(cfg):#x} is guest RAM), but vlpi models LPIs with "
                    "24-bit INTIDs; nothing was restored"
                )
        for c, rd in colls:
            self._new_collection(int(c), _NOT_MAPPED if rd == COLLECTION_NOT_MAPPED else int(rd))
        inst = np.zeros(len(devs), np.int64)
        shadowed = np.zeros(len(devs), bool)
        for k, d in enumerate(devs):
            inst[k], shadowed[k] = self._alloc_device(int(d.device_id), int(d.itt_addr), int(d.eventid_bits))
        inst, shadowed = np.repeat(inst, n_ite), np.repeat(shadowed, n_ite)
        uniq = np.unique(icid)
        ser = np.array([self._coll[int(i)] for i in uniq.tolist()], dtype=np.int64)
        s = ser[np.searchsorted(uniq, icid)] if icid.size else np.zeros(0, np.int64)
        tgt = self._coll_target(s)
        err = self.vgic.get_lpis(lpi[:n_try].astype(np.uint32), tgt[:n_try], atomic=False, stop_on_error=True)
        bad = np.flatnonzero(err)
        i = int(bad[0]) if bad.size else (n_try if big.size else -1)
        if i < 0:  # every LPI created
            self._add_ites(dev, ev, lpi.astype(np.uint32), s, inst, shadowed)
            if table_err is None:
                return colls, devs
        else:
            self._add_ites(dev[:i], ev[:i], lpi[:i].astype(np.uint32), s[:i], inst[:i], shadowed[:i])
        # vgic_its_restore_device_tables frees the device list, vgic_its_restore_tables_v0 the
        # collection list; the LPIs created on the way go with their last ITE, their pending
        # bits stay consumed in RAM
        self._free_all()
        if i < 0:
            assert table_err is not None  # every LPI was created: the walk itself failed
            raise table_err
        raise ItsTableError(
            _errno.EFAULT, f"RESTORE_TABLES: vgic_add_lpi({int(lpi[i])}) for device {int(dev[i])} event "
            f"{int(ev[i])} faulted (configuration byte or pending table not in guest RAM); every device and "
            "collection was freed", where=f"ITE device {int(dev[i])} event {int(ev[i])}", table="device",
            collections=colls, devices=devs,
        )

    def _free_all(self) -> None:
        self._free_device_list(LostSource.MAPD)
        for icid in list(self._coll):
            self._free_collection(icid)

    def __repr__(self) -> str:
        return (
            f"VirtualITS({'enabled' if self.ctlr_enabled else 'disabled'}, {len(self.devices)} devices, "
            f"{len(self._coll)} collections, {self.n_ites} ITEs, kernel={self.kernel!r})"
        )


def _creator_index(key: np.ndarray, creators: np.ndarray, n: int) -> np.ndarray:
    """Per element, the index of the creator of its key (``n`` where the key has none)."""
    out = np.full(key.size, n, np.int64)
    if creators.size and all_distinct(key):  # each key's only element is its own creator
        out[creators] = creators
    elif creators.size:
        ck = key[creators]
        o = np.argsort(ck, kind="stable")
        ck, cr = ck[o], creators[o]
        i = np.minimum(np.searchsorted(ck, key), ck.size - 1)
        hit = ck[i] == key
        out[hit] = cr[i[hit]]
    return out


def _ids(x: npt.ArrayLike, name: str) -> I64Array:
    a = np.asarray(x)
    if a.ndim == 0:
        a = a.reshape(1)
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {a.shape}")
    if a.size and (a.dtype == np.bool_ or not np.issubdtype(a.dtype, np.integer)):
        raise TypeError(f"{name} must be integers, got dtype {a.dtype}")
    a = a.astype(np.int64)
    bad = np.flatnonzero((a < 0) | (a >= 1 << 32))
    if bad.size:
        raise ValueError(f"{name}[{bad[0]}] = {a[bad[0]]} is not a 32-bit ID")
    return a


def event_pairs(device_ids: npt.ArrayLike, event_ids: npt.ArrayLike) -> tuple[I64Array, I64Array]:
    """Validate and broadcast (DeviceID, EventID) arrays (a scalar or 1-element side broadcasts)."""
    d = _ids(device_ids, "device_ids")
    e = _ids(event_ids, "event_ids")
    if d.size != e.size:
        if d.size == 1:
            d = np.repeat(d, e.size)
        elif e.size == 1:
            e = np.repeat(e, d.size)
        else:
            raise ValueError(f"device_ids has {d.size} entries but event_ids has {e.size}")
    return d, e
