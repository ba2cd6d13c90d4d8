"""One place that fixes how vlpi compiles kernels.

* ``jit``: serial kernels, ``nogil=True, cache=True``.
* ``pjit``: kernels with a ``prange`` over independent work units (VMs, vCPU tables);
  ``parallel=True`` as well.
* ``voidptr``/``view``: turn a raw address (``ndarray.ctypes.data`` as uint64) back into an
  array inside a kernel. This is how one kernel call reaches the arrays of many VMs (their
  guest-memory slots, LPI tables, VPTs) without copying them into one buffer: the caller keeps
  the owning ndarrays alive for the duration of the call.

The cache directory is chosen in :mod:`vlpi._config` before numba is imported.

Raw-address check (debug mode)
------------------------------
Numba's bounds checking (``NUMBA_BOUNDSCHECK=1``) sees indexing into a view, not how the view
was made: a wrong raw address (a stale slot pointer, a computed address off its table) is
invisible to it. With ``VLPI_RAW_CHECK=1`` every ``view_*`` first asks :func:`_check_range`
whether its whole byte range lies in memory the engine registered for the running call (with
:func:`guard`: the slot arrays, LPI arrays, plans, outputs the call validated). An access outside
them prints what was accessed and ends the process (exit status 86) before the access happens.
The registered extents are scanned natively; only a miss calls into Python. CI runs the engine
tests in this mode.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar, overload

import numba
import numpy as np
import numpy.typing as npt
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

if TYPE_CHECKING:
    from numba.core.dispatcher import Dispatcher
    from numba.core.typing.templates import Signature

from vlpi import _config  # sets NUMBA_CACHE_DIR before first compile
from vlpi._typing import IntLike

_F = TypeVar("_F", bound=Callable[..., Any])

RAW_CHECK = _config.RAW_CHECK
RAW_CHECK_EXIT = 86
_extents: dict[tuple[int, int], int] = {}  # (lo, hi) -> how many active guards registered it
_extents_lock = threading.Lock()


def _check_range(addr: int, nbytes: int) -> int:
    """Called by the kernels (debug mode): 1 when [addr, addr + nbytes) lies in one registered
    extent; otherwise report and end the process before the access is made."""
    if nbytes == 0:
        return 1
    with _extents_lock:
        for lo, hi in _extents:
            if lo <= addr and addr + nbytes <= hi:
                return 1
        n = len(_extents)
    sys.stderr.write(
        f"vlpi raw-access check: a kernel accessed [{addr:#x}, {addr + nbytes:#x}) ({nbytes} bytes), "
        f"outside the {n} extents validated for the running call\n"
    )
    sys.stderr.flush()
    os._exit(RAW_CHECK_EXIT)


@contextlib.contextmanager
def guard(arrays: Iterable[npt.ArrayLike | None]) -> Iterator[None]:
    """Debug mode: register the arrays a kernel call may reach through raw addresses, for the
    duration of the ``with`` block. Callers skip it unless ``RAW_CHECK``."""
    ext: list[tuple[int, int]] = []
    for a in arrays:
        if a is None:
            continue
        a = np.asarray(a)
        if a.nbytes:
            lo: int = a.__array_interface__["data"][0]
            ext.append((lo, lo + a.nbytes))
    with _extents_lock:
        for e in ext:
            _extents[e] = _extents.get(e, 0) + 1
        _publish()
    try:
        yield
    finally:
        with _extents_lock:
            for e in ext:
                c = _extents[e] - 1
                if c:
                    _extents[e] = c
                else:
                    del _extents[e]
            _publish()


_MAX_EXTENTS = 4096
# The kernels' copy of the registered extents: [count, 0, lo0, hi0, lo1, hi1, ...]. A kernel scans
# it natively and calls _check_range (authoritative, under the lock) only on a miss.
_TABLE = np.zeros(2 + 2 * _MAX_EXTENTS, np.uint64)


def _publish() -> None:
    """Copy the registered extents into _TABLE (caller holds the lock)."""
    ext = list(_extents)[:_MAX_EXTENTS]
    _TABLE[0] = 0
    if ext:
        _TABLE[2 : 2 + 2 * len(ext)] = np.array(ext, np.uint64).reshape(-1)
    _TABLE[0] = len(ext)


if RAW_CHECK:
    from llvmlite import binding as _llvm

    _CHECK_CB = ctypes.CFUNCTYPE(ctypes.c_int64, ctypes.c_uint64, ctypes.c_uint64)(_check_range)
    _llvm.add_symbol("vlpi_raw_check", ctypes.cast(_CHECK_CB, ctypes.c_void_p).value)
    _raw_check = types.ExternalFunction("vlpi_raw_check", types.int64(types.uint64, types.uint64))
    _llvm.add_symbol("vlpi_raw_extents", _TABLE.ctypes.data)

    @intrinsic
    def _table_addr(typingctx: object) -> tuple[Signature, Callable[..., Any]]:
        """Address of _TABLE, resolved by symbol name when the kernel is linked (so cached
        kernels find this process's table)."""
        sig = types.uint64()

        def codegen(context: object, builder: Any, signature: Signature, args: Any) -> Any:
            gv = builder.module.globals.get("vlpi_raw_extents")
            if gv is None:
                gv = ir.GlobalVariable(builder.module, ir.IntType(64), name="vlpi_raw_extents")
                gv.linkage = "external"
            return builder.ptrtoint(gv, ir.IntType(64))

        return sig, codegen

    @numba.njit(inline="always", nogil=True, cache=True)
    def _checked(addr: IntLike, nbytes: IntLike) -> None:
        if nbytes == 0:
            return
        # ignore: numba's stubs type intrinsics (and carray's dtype) for Python callers, not for kernels
        t = numba.carray(voidptr(_table_addr()), (2 + 2 * _MAX_EXTENTS,), numba.uint64)  # type: ignore[attr-defined,call-arg,call-overload]
        end = addr + nbytes
        for k in range(t[0]):
            if t[2 + 2 * k] <= addr and end <= t[3 + 2 * k]:
                return
        _raw_check(addr, nbytes)

else:

    @numba.njit(inline="always", nogil=True, cache=True)
    def _checked(addr: IntLike, nbytes: IntLike) -> None:
        pass


@overload
def jit(fn: _F, **kw: Any) -> Dispatcher[_F]: ...
@overload
def jit(fn: None = None, **kw: Any) -> Callable[[_F], Dispatcher[_F]]: ...
def jit(fn: _F | None = None, **kw: Any) -> Dispatcher[_F] | Callable[[_F], Dispatcher[_F]]:
    opts: dict[str, Any] = {"nogil": True, "cache": True, "fastmath": False, "error_model": "numpy"}
    opts.update(kw)
    if fn is None:
        return lambda f: numba.njit(**opts)(f)
    compiled: Dispatcher[_F] = numba.njit(**opts)(fn)
    return compiled


@overload
def pjit(fn: _F, **kw: Any) -> Dispatcher[_F]: ...
@overload
def pjit(fn: None = None, **kw: Any) -> Callable[[_F], Dispatcher[_F]]: ...
def pjit(fn: _F | None = None, **kw: Any) -> Dispatcher[_F] | Callable[[_F], Dispatcher[_F]]:
    kw.setdefault("parallel", True)
    return jit(fn, **kw)


@intrinsic
def voidptr(typingctx: object, addr: object) -> tuple[Signature, Callable[..., Any]]:
    """uint64 address -> void* (inside a kernel)."""
    sig = types.voidptr(types.uint64)

    def codegen(context: object, builder: Any, signature: Signature, args: Any) -> Any:
        return builder.inttoptr(args[0], cgutils.voidptr_t)

    return sig, codegen


# The views below run only inside kernels. Their `type: ignore`s: numba's stubs type an intrinsic
# (voidptr) as called from Python and carray's dtype as a numpy dtype, not as numba compiles them.
@numba.njit(inline="always", nogil=True, cache=True)
def view_u8(addr: IntLike, n: IntLike) -> npt.NDArray[np.uint8]:
    _checked(addr, np.uint64(n) * np.uint64(1))
    return numba.carray(voidptr(addr), (n,), numba.uint8)  # type: ignore[attr-defined,call-arg,call-overload,no-any-return]


@numba.njit(inline="always", nogil=True, cache=True)
def view_u32(addr: IntLike, n: IntLike) -> npt.NDArray[np.uint32]:
    _checked(addr, np.uint64(n) * np.uint64(4))
    return numba.carray(voidptr(addr), (n,), numba.uint32)  # type: ignore[attr-defined,call-arg,call-overload,no-any-return]


@numba.njit(inline="always", nogil=True, cache=True)
def view_i16(addr: IntLike, n: IntLike) -> npt.NDArray[np.int16]:
    _checked(addr, np.uint64(n) * np.uint64(2))
    return numba.carray(voidptr(addr), (n,), numba.int16)  # type: ignore[attr-defined,call-arg,call-overload,no-any-return]


@numba.njit(inline="always", nogil=True, cache=True)
def view_i32(addr: IntLike, n: IntLike) -> npt.NDArray[np.int32]:
    _checked(addr, np.uint64(n) * np.uint64(4))
    return numba.carray(voidptr(addr), (n,), numba.int32)  # type: ignore[attr-defined,call-arg,call-overload,no-any-return]


@numba.njit(inline="always", nogil=True, cache=True)
def view_i64(addr: IntLike, n: IntLike) -> npt.NDArray[np.int64]:
    _checked(addr, np.uint64(n) * np.uint64(8))
    return numba.carray(voidptr(addr), (n,), numba.int64)  # type: ignore[attr-defined,call-arg,call-overload,no-any-return]


@numba.njit(inline="always", nogil=True, cache=True)
def view_u64(addr: IntLike, n: IntLike) -> npt.NDArray[np.uint64]:
    _checked(addr, np.uint64(n) * np.uint64(8))
    return numba.carray(voidptr(addr), (n,), numba.uint64)  # type: ignore[attr-defined,call-arg,call-overload,no-any-return]


@intrinsic
def popcount64(typingctx: object, x: object) -> tuple[Signature, Callable[..., Any]]:
    """Number of set bits of a uint64 (LLVM ``ctpop``: one instruction with POPCNT)."""
    sig = types.uint64(types.uint64)

    def codegen(context: object, builder: Any, signature: Signature, args: Any) -> Any:
        return builder.ctpop(args[0])

    return sig, codegen


@numba.njit(inline="always", nogil=True, cache=True)
def nonzero_bytes64(x: np.uint64) -> np.uint64:
    """Number of nonzero bytes of a uint64."""
    x |= x >> np.uint64(4)
    x |= x >> np.uint64(2)
    x |= x >> np.uint64(1)
    return popcount64(x & np.uint64(0x0101010101010101))  # type: ignore[call-arg]  # an intrinsic: typed as numba calls it


def _prefetch_codegen(rw: int) -> Callable[..., Any]:
    def codegen(context: Any, builder: Any, signature: Signature, args: Any) -> Any:
        ptr = builder.inttoptr(args[0], ir.PointerType(ir.IntType(8)))
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [ptr.type, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")  # type: ignore[no-untyped-call]  # cgutils is untyped
        # (address, rw, locality 3 = keep in all cache levels, data cache)
        builder.call(fn, [ptr, ir.Constant(i32, rw), ir.Constant(i32, 3), ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return codegen


@intrinsic
def prefetch_w(typingctx: object, addr: object) -> tuple[Signature, Callable[..., Any]]:
    """Hint that the cache line at ``addr`` will be read and written soon (``prefetchw``). A hint
    only: it never faults and never changes memory, so any address is allowed."""
    return types.void(types.uint64), _prefetch_codegen(1)


@intrinsic
def prefetch_r(typingctx: object, addr: object) -> tuple[Signature, Callable[..., Any]]:
    """Hint that the cache line at ``addr`` will be read soon (``prefetcht0``); never faults."""
    return types.void(types.uint64), _prefetch_codegen(0)
