"""One place that fixes how vlpi compiles kernels.

* ``jit``: serial kernels, ``nogil=True, cache=True``.
* ``pjit``: kernels with a ``prange`` over independent work units (VMs, vCPU tables);
  ``parallel=True`` as well.
* ``voidptr``/``view``: turn a raw address (``ndarray.ctypes.data`` as uint64) back into an
  array inside a kernel. This is how one kernel call reaches the arrays of many VMs (their
  guest-memory slots, LPI tables, VPTs) without copying them into one buffer: the caller keeps
  the owning ndarrays alive for the duration of the call.

The cache directory is chosen in :mod:`vlpi._config` before numba is imported.
"""

from __future__ import annotations

import numba
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from vlpi import _config  # noqa: F401  (sets NUMBA_CACHE_DIR before first compile)


def jit(fn=None, **kw):
    opts = {"nogil": True, "cache": True, "fastmath": False, "error_model": "numpy"}
    opts.update(kw)
    if fn is None:
        return lambda f: numba.njit(**opts)(f)
    return numba.njit(**opts)(fn)


def pjit(fn=None, **kw):
    kw.setdefault("parallel", True)
    return jit(fn, **kw)


@intrinsic
def voidptr(typingctx, addr):
    """uint64 address -> void* (inside a kernel)."""
    sig = types.voidptr(types.uint64)

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], cgutils.voidptr_t)

    return sig, codegen


@numba.njit(inline="always", nogil=True, cache=True)
def view_u8(addr, n):
    return numba.carray(voidptr(addr), (n,), numba.uint8)


@numba.njit(inline="always", nogil=True, cache=True)
def view_u32(addr, n):
    return numba.carray(voidptr(addr), (n,), numba.uint32)


@numba.njit(inline="always", nogil=True, cache=True)
def view_i16(addr, n):
    return numba.carray(voidptr(addr), (n,), numba.int16)


@numba.njit(inline="always", nogil=True, cache=True)
def view_i32(addr, n):
    return numba.carray(voidptr(addr), (n,), numba.int32)


@numba.njit(inline="always", nogil=True, cache=True)
def view_i64(addr, n):
    return numba.carray(voidptr(addr), (n,), numba.int64)


@numba.njit(inline="always", nogil=True, cache=True)
def view_u64(addr, n):
    return numba.carray(voidptr(addr), (n,), numba.uint64)
