"""The LPIs of one VM as a struct of arrays.

One row per LPI (KVM: one ``struct vgic_irq`` per INTID per VM). Row order is the LPIs'
*creation order* (KVM before 6.9 kept LPIs on a list in that order, and ``order="insertion"``
walks it); the engine walks INTID order by default, as Linux >= 6.9 does with its xarray.

Resident state is compact: ``intid`` uint32, ``target_vcpu`` in the narrowest signed type that
holds the largest target (int8 up to 126 vCPUs, then int16, then int32), ``pending_latch`` and
``hw`` one byte each: 7 bytes per LPI for VMs of up to 126 vCPUs, 8 up to 32766.

``intid`` and ``target_vcpu`` are immutable: they are backed by ``bytes`` objects, so their
``writeable`` flag cannot be turned back on. The engine caches derived orderings keyed on them
(and on the PENDBASERs it is called with); targets change only through
:meth:`LPITable.set_targets`, which replaces the array and invalidates those caches.
``pending_latch`` and ``hw`` are ordinary writable arrays; restore updates ``pending_latch`` in
place. Any nonzero flag byte means True, everywhere (numpy's own reading of a ``bool`` byte).
"""

from __future__ import annotations

import threading
from collections.abc import Hashable
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from vlpi._typing import BoolArray, U8Array, U32Array

__all__ = ["LPITable", "LPI_MIN_INTID", "LPI_INTID_LIMIT"]

LPI_MIN_INTID = 8192
LPI_INTID_LIMIT = 1 << 24
_TARGET_MAX = np.iinfo(np.int32).max

_ScalarT = TypeVar("_ScalarT", bound=np.generic)


def _target_dtype(max_target: int) -> np.dtype[np.signedinteger[Any]]:
    """Narrowest signed integer type for targets up to ``max_target`` (and -1)."""
    for dt in (np.int8, np.int16):
        if max_target < np.iinfo(dt).max:
            return np.dtype(dt)
    return np.dtype(np.int32)


def _frozen(a: npt.NDArray[_ScalarT]) -> npt.NDArray[_ScalarT]:
    """An immutable copy of ``a``: backed by ``bytes``, so ``flags.writeable`` cannot be set again."""
    return np.frombuffer(np.ascontiguousarray(a).tobytes(), dtype=a.dtype)


def _int_array(x: npt.ArrayLike, name: str) -> npt.NDArray[np.integer[Any]]:
    if isinstance(x, (str, bytes)):
        raise TypeError(f"{name} must be an integer array, got {type(x).__name__}")
    a = np.asarray(x)
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {a.shape}")
    if a.size == 0:
        return np.zeros(0, dtype=np.int64)
    if a.dtype == np.bool_ or not np.issubdtype(a.dtype, np.integer):
        raise TypeError(f"{name} must be an integer array, got dtype {a.dtype}")
    return a


def _flag_array(x: npt.ArrayLike | None, name: str, n: int) -> BoolArray | U8Array:
    """bool/uint8 flags; a contiguous writeable bool or 0/1 uint8 array is used in place.

    Bool arrays whose bytes are not 0/1 are copied with their truth values (nonzero = True)."""
    if x is None:
        return np.zeros(n, dtype=bool)
    if isinstance(x, (str, bytes)):
        raise TypeError(f"{name} must be bool or 0/1 integers, got {type(x).__name__}")
    a = np.asarray(x)
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {a.shape}")
    if a.shape[0] != n:
        raise ValueError(f"{name} has {a.shape[0]} entries but intid has {n}")
    if a.dtype == np.bool_:
        raw = a.view(np.uint8) if a.flags.c_contiguous else a.astype(np.uint8)
        if n and raw.max() > 1:  # a bool byte that is not 0/1 (e.g. np.frombuffer): normalise
            a = a != 0
    elif np.issubdtype(a.dtype, np.integer):
        bad = np.flatnonzero((a != 0) & (a != 1))
        if bad.size:
            raise ValueError(f"{name}[{bad[0]}] = {a[bad[0]]}: flags must be 0 or 1")
        if a.dtype != np.uint8:
            a = a.astype(bool)
    else:
        raise TypeError(f"{name} must be bool or 0/1 integers, got dtype {a.dtype}")
    if not (a.flags.c_contiguous and a.flags.writeable):
        a = np.ascontiguousarray(a).copy()
    return a


class LPITable:
    """The LPIs of one VM.

    Parameters
    ----------
    intid : array-like of int
        Unique INTIDs, ``8192 <= intid < 2**24``.
    target_vcpu : array-like of int
        Target vCPU index per LPI, or -1 for none (an LPI mapped through an unmapped collection).
    pending_latch : array-like of bool, optional
        Software pending state (default all False). A writeable, C-contiguous bool or uint8
        ndarray is used in place (restore then updates *your* array).
    hw : array-like of bool, optional
        True where the LPI is forwarded to the GIC as a VLPI (default all False). Used in place
        like ``pending_latch``.

    Raises
    ------
    TypeError, ValueError
        Naming the argument and the first offending index; nothing is created.

    Notes
    -----
    What may change in place: the *contents* of ``pending_latch`` and ``hw`` (any nonzero byte
    reads as True), or the arrays themselves through their setters (same length, validated).
    What may not: ``intid`` and ``target_vcpu`` are immutable (retarget with
    :meth:`set_targets`); the length of the table is fixed. Do not resize an array you handed
    over with ``ndarray.resize(refcheck=False)`` (numpy's own unchecked escape hatch).

    Thread safety: engine calls and :meth:`set_targets` on one table hold its lock, so they run
    one at a time and never see a half-made change. Writing ``pending_latch``/``hw`` contents from
    another thread while an engine call runs is memory-safe but racy (which value wins is
    unspecified).
    """

    def __init__(
        self,
        intid: npt.ArrayLike,
        target_vcpu: npt.ArrayLike,
        pending_latch: npt.ArrayLike | None = None,
        hw: npt.ArrayLike | None = None,
    ) -> None:
        ia = _int_array(intid, "intid")
        n = ia.shape[0]
        ta = _int_array(target_vcpu, "target_vcpu")
        if ta.shape[0] != n:
            raise ValueError(f"target_vcpu has {ta.shape[0]} entries but intid has {n}")
        if n:
            bad = np.flatnonzero((ia < LPI_MIN_INTID) | (ia >= LPI_INTID_LIMIT))
            if bad.size:
                raise ValueError(
                    f"intid[{bad[0]}] = {ia[bad[0]]} is not an LPI INTID "
                    f"(need {LPI_MIN_INTID} <= intid < 2**24)"
                )
            bad = np.flatnonzero((ta < -1) | (ta > _TARGET_MAX))
            if bad.size:
                raise ValueError(
                    f"target_vcpu[{bad[0]}] = {ta[bad[0]]}: must be -1 (no target) or a vCPU index < 2**31"
                )
        intid_u32 = ia.astype(np.uint32)
        if n:
            _, first = np.unique(intid_u32, return_index=True)
            if first.size != n:
                # the first row (in array order) whose INTID appeared in an earlier row
                is_first = np.zeros(n, dtype=bool)
                is_first[first] = True
                row = int(np.argmin(is_first))
                val = int(intid_u32[row])
                prev = int(np.flatnonzero(intid_u32 == val)[0])
                raise ValueError(f"intid[{row}] = {val} duplicates intid[{prev}]: INTIDs must be unique")
        tmax = int(ta.max()) if n else -1
        tdt = _target_dtype(tmax)
        latch = _flag_array(pending_latch, "pending_latch", n)
        hwa = _flag_array(hw, "hw", n)
        # validated: nothing below can fail
        self._intid = _frozen(intid_u32)
        self._target = _frozen(ta.astype(tdt))
        self._pending_latch = latch
        self._hw = hwa
        self._lock = threading.RLock()
        self._max_target = tmax
        self._max_intid = int(self._intid.max()) if n else 0
        self._min_intid = int(self._intid.min()) if n else 0
        self._cache: dict[str | tuple[Hashable, ...], Any] = {}
        self._version = 0  # bumped whenever the targets change

    # ------------------------------------------------------- engine interface
    # Used by the engine (vlpi.pending) only; not for user code.
    @property
    def lock(self) -> threading.RLock:
        """The re-entrant lock that engine calls and ``set_targets`` hold (engine interface)."""
        return self._lock

    @property
    def plan_cache(self) -> dict[str | tuple[Hashable, ...], Any]:
        """The engine's cache of plans built from this table, cleared when the targets change
        (engine interface)."""
        return self._cache

    @property
    def version(self) -> int:
        """Bumped whenever the targets change (read-only)."""
        return self._version

    # ------------------------------------------------------------ accessors
    @property
    def intid(self) -> U32Array:
        """uint32 INTIDs (read-only view)."""
        return self._intid

    @property
    def target_vcpu(self) -> npt.NDArray[np.signedinteger[Any]]:
        """Target vCPU per LPI, -1 = none (int8/int16/int32, the narrowest that fits; read-only:
        see :meth:`set_targets`)."""
        return self._target

    @property
    def pending_latch(self) -> BoolArray | U8Array:
        """Writable bool/uint8 software pending state per LPI."""
        return self._pending_latch

    @pending_latch.setter
    def pending_latch(self, value: npt.ArrayLike) -> None:
        self._pending_latch = _flag_array(value, "pending_latch", len(self))

    @property
    def hw(self) -> BoolArray | U8Array:
        """Writable bool/uint8: forwarded to the GIC as a VLPI."""
        return self._hw

    @hw.setter
    def hw(self, value: npt.ArrayLike) -> None:
        self._hw = _flag_array(value, "hw", len(self))

    @property
    def max_target(self) -> int:
        """Largest target vCPU index (-1 if none)."""
        return self._max_target

    @property
    def max_intid(self) -> int:
        """Largest INTID (0 for an empty table)."""
        return self._max_intid

    @property
    def min_intid(self) -> int:
        """Smallest INTID (0 for an empty table)."""
        return self._min_intid

    def __len__(self) -> int:
        return int(self._intid.shape[0])

    @property
    def nbytes(self) -> int:
        """Resident bytes of the four per-LPI arrays (caches excluded)."""
        return self._intid.nbytes + self._target.nbytes + self._pending_latch.nbytes + self._hw.nbytes

    @property
    def cache_nbytes(self) -> int:
        """Bytes held by cached derived orderings (engine plans)."""
        # a plan may be cached under several keys (one per walk order): count each object once
        unique = {id(v): v for v in self._cache.values()}
        return sum(getattr(v, "nbytes", 0) for v in unique.values())

    # ------------------------------------------------------------- mutation
    def set_targets(self, index: npt.ArrayLike, vcpu: npt.ArrayLike) -> None:
        """Retarget LPIs (MOVI, MOVALL, MAPC remap). ``index``: row indices (or a bool mask);
        ``vcpu``: new target(s), -1 for none. Invalidates cached orderings."""
        n = len(self)
        idx = np.asarray(index)
        if idx.dtype == np.bool_:
            if idx.shape != (n,):
                raise ValueError(f"set_targets: mask has shape {idx.shape}, expected ({n},)")
            idx = np.flatnonzero(idx)
        idx = _int_array(np.atleast_1d(idx), "index").astype(np.int64)
        bad = np.flatnonzero((idx < 0) | (idx >= n))
        if bad.size:
            raise IndexError(f"set_targets: index[{bad[0]}] = {idx[bad[0]]} out of range for {n} LPIs")
        v = np.broadcast_to(np.asarray(vcpu), idx.shape)
        if v.size and (v.dtype == np.bool_ or not np.issubdtype(v.dtype, np.integer)):
            raise TypeError(f"set_targets: vcpu must be integers, got dtype {v.dtype}")
        bad = np.flatnonzero((v < -1) | (v > _TARGET_MAX))
        if bad.size:
            raise ValueError(f"set_targets: vcpu[{bad[0]}] = {v[bad[0]]}: must be -1 or a vCPU index < 2**31")
        vmax = int(v.max()) if v.size else -1
        t = self._target.astype(np.promote_types(self._target.dtype, _target_dtype(vmax)))
        t[idx] = v
        with self._lock:
            self._target = _frozen(t)
            self._max_target = int(t.max()) if n else -1
            self._cache.clear()
            self._version += 1

    def copy(self) -> LPITable:
        """A deep copy (fresh pending_latch/hw arrays, no caches)."""
        return LPITable(self._intid, self._target, self._pending_latch.copy(), self._hw.copy())

    def __repr__(self) -> str:
        n = len(self)
        if n == 0:
            return "LPITable(0 LPIs)"
        tgt = int(np.count_nonzero(self._target >= 0))
        return (
            f"LPITable({n} LPIs, INTID {int(self._intid.min())}..{self._max_intid}, "
            f"{tgt} targeted on vCPUs 0..{self._max_target}, "
            f"{int(np.count_nonzero(self._pending_latch))} pending_latch, "
            f"{int(np.count_nonzero(self._hw))} hw)"
        )
