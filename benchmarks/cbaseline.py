"""The kernel's pending-table loops in plain C (``c_kernel_loop``), built on demand and called via ctypes.

``benchmarks/c_kernel_loop/kernel_loop.c`` is ``vgic_v3_save_pending_tables`` (one VM) and
``vgic_v3_lpi_sync_pending_status`` (per LPI, row order) written as the plain C loops the kernel
runs: one LPI at a time, a memslot binary search per guest access, a 1-byte GPA-keyed read cache,
one 1-byte write per changed bit, each write marking its page in the slot's dirty bitmap, stop at
the first fault. It is the "plain compiled code" reference of the benchmarks: the engine's speed-up
over it is what the README reports. ``c_kernel_loop/stream.c`` holds the memory-bandwidth probes of
the roofline benchmark.

Build
-----
Both files are compiled into one shared library with::

    $CC -O2 -march=native -std=c11 -fPIC -shared   (CC defaults to ``cc``)

``-O2`` is what the kernel itself is built with; ``-march=native`` lets the compiler use this
machine's instruction set (if the compiler refuses it, the library is built without it and
:data:`CFLAGS_USED` says so). The library is cached in ``benchmarks/.cbuild`` (or
``$VLPI_CBUILD_DIR``; a per-user temporary directory if that is not writable) under a name made
from a hash of the sources, the compiler, the flags and the CPU model, so editing the C source
rebuilds it. Without a C compiler the baseline is unavailable (:func:`unavailable_reason` says why)
and the benchmarks skip it.

Calls
-----
:func:`c_kernel_loop_save` and :func:`c_kernel_loop_restore` have the signatures and results of the
other baselines (``benchmarks/baselines.py``). What the kernel keeps ready in its own structures is
prepared once per LPI table and cached outside the timing: the row order sorted by INTID (KVM's
xarray is sorted) and the targets as int32. Guest memory is reached through the public
:class:`vlpi.GuestMemory` slot list (``mem.slots``: each slot's ``data`` and ``dirty`` arrays, whose
addresses are handed to C while the arrays stay referenced). Faults are kernel-exact: earlier writes
are kept and :class:`vlpi.GuestMemoryFault` carries the partial report. Calls are serialised by a
module lock (the C side uses shared scratch buffers).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import time
import weakref

import numpy as np

from vlpi import GuestMemory, GuestMemoryFault, LPITable, SaveReport, SyncReport

__all__ = [
    "CFLAGS",
    "CFLAGS_USED",
    "SOURCES",
    "CBuildError",
    "library_path",
    "unavailable_reason",
    "c_kernel_loop_save",
    "c_kernel_loop_restore",
    "stream_sum",
    "stream_rmw",
    "stream_copy",
    "aligned_empty",
]

_HERE = os.path.dirname(os.path.abspath(__file__))
SOURCES = (
    os.path.join(_HERE, "c_kernel_loop", "kernel_loop.c"),
    os.path.join(_HERE, "c_kernel_loop", "stream.c"),
)
#: compiler flags, first choice; the fallback drops ``-march=native``
CFLAGS = ("-O2", "-march=native", "-std=c11", "-fPIC", "-shared")
_FALLBACK_CFLAGS = ("-O2", "-std=c11", "-fPIC", "-shared")
#: the flags the loaded library was built with (None until it is built)
CFLAGS_USED: tuple[str, ...] | None = None

PENDBASER_ADDRESS_MASK = np.uint64(((1 << 52) - 1) & ~((1 << 16) - 1))  # GENMASK(51, 16)
EFAULT = 14


class CBuildError(RuntimeError):
    """The C baseline could not be built or loaded (no compiler, compile error)."""


# ------------------------------------------------------------------------------ build
def _build_dir() -> str:
    d = os.environ.get("VLPI_CBUILD_DIR") or os.path.join(_HERE, ".cbuild")
    try:
        os.makedirs(d, exist_ok=True)
        if os.access(d, os.W_OK):
            return d
    except OSError:
        pass
    d = os.path.join(tempfile.gettempdir(), f"vlpi-cbuild-{os.getuid() if hasattr(os, 'getuid') else 'user'}")
    os.makedirs(d, exist_ok=True)
    return d


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith(("model name", "cpu model", "hardware")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _compiler() -> str:
    name = os.environ.get("CC", "cc")
    path = shutil.which(name)
    if path is None:
        raise CBuildError(f"no C compiler: {name!r} is not on PATH (set CC to a C compiler)")
    return path


def library_path() -> str:
    """Build the library if needed (sources changed, new compiler or CPU) and return its path."""
    global CFLAGS_USED
    cc = _compiler()
    srcs = []
    for p in SOURCES:
        with open(p, "rb") as f:
            srcs.append(f.read())
    errors = []
    for flags in (CFLAGS, _FALLBACK_CFLAGS):
        h = hashlib.sha256()
        for s in srcs:
            h.update(s)
        h.update("\0".join((cc, *flags, _cpu_model(), platform.machine())).encode())
        out = os.path.join(_build_dir(), f"c_kernel_loop-{h.hexdigest()[:16]}.so")
        if os.path.exists(out):
            CFLAGS_USED = flags
            return out
        tmp = f"{out}.{os.getpid()}.tmp"
        try:
            r = subprocess.run([cc, *flags, "-o", tmp, *SOURCES], capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.SubprocessError) as e:
            raise CBuildError(f"running the C compiler {cc} failed: {e}") from None
        if r.returncode == 0:
            os.replace(tmp, out)  # atomic: concurrent builders agree on the result
            CFLAGS_USED = flags
            for old in os.listdir(os.path.dirname(out)):  # builds of earlier sources
                if old.startswith("c_kernel_loop-") and old.endswith(".so") and old != os.path.basename(out):
                    try:
                        os.remove(os.path.join(os.path.dirname(out), old))
                    except OSError:
                        pass
            return out
        errors.append(f"{cc} {' '.join(flags)}: {r.stderr.strip()[-1500:]}")
        if os.path.exists(tmp):
            os.remove(tmp)
    raise CBuildError("compiling the C baseline failed:\n" + "\n".join(errors))


class _CSlots(ctypes.Structure):
    _fields_ = [(n, ctypes.c_int64 if n == "n" else ctypes.c_void_p) for n in
                ("n", "start", "end", "data", "readonly", "dirty", "page_seen", "byte_seen")]


class _SaveOut(ctypes.Structure):
    _fields_ = [
        ("reads", ctypes.c_int64), ("writes", ctypes.c_int64), ("vpt_reads", ctypes.c_int64),
        ("skipped", ctypes.c_int64), ("fault_row", ctypes.c_int64), ("fault_is_write", ctypes.c_int64),
        ("fault_gpa", ctypes.c_uint64), ("bytes_changed", ctypes.c_int64), ("n_pages", ctypes.c_int64),
    ]


class _RestoreOut(ctypes.Structure):
    _fields_ = [
        ("reads", ctypes.c_int64), ("writes", ctypes.c_int64), ("synced", ctypes.c_int64),
        ("fault_row", ctypes.c_int64), ("fault_is_write", ctypes.c_int64), ("fault_gpa", ctypes.c_uint64),
        ("n_pages", ctypes.c_int64),
    ]


_LIB: ctypes.CDLL | None = None
_LIB_ERROR: str | None = None
_LOCK = threading.Lock()


def _lib() -> ctypes.CDLL:
    global _LIB, _LIB_ERROR
    if _LIB is not None:
        return _LIB
    if _LIB_ERROR is not None:
        raise CBuildError(_LIB_ERROR)
    try:
        lib = ctypes.CDLL(library_path())
    except (CBuildError, OSError) as e:
        _LIB_ERROR = str(e)
        raise CBuildError(_LIB_ERROR) from None
    P, I64 = ctypes.c_void_p, ctypes.c_int64
    lib.vlpi_c_save.argtypes = [I64, P, P, P, P, P, P, P, I64, ctypes.c_int32, P, P, P, P, P, P, P]
    lib.vlpi_c_save.restype = I64
    lib.vlpi_c_restore.argtypes = [I64, P, P, P, P, P, P, P, P]
    lib.vlpi_c_restore.restype = I64
    lib.vlpi_stream_sum.argtypes = [P, I64]
    lib.vlpi_stream_sum.restype = ctypes.c_uint64
    lib.vlpi_stream_copy.argtypes = [P, P, I64]
    lib.vlpi_stream_copy.restype = None
    lib.vlpi_stream_rmw.argtypes = [P, I64]
    lib.vlpi_stream_rmw.restype = None
    _LIB = lib
    return lib


def unavailable_reason() -> str | None:
    """Why the C baseline cannot run here (no compiler, build error), or None."""
    try:
        _lib()
    except CBuildError as e:
        return f"baseline 'c_kernel_loop' unavailable: {e}"
    return None


# ------------------------------------------------------------- prepared state (cached)
class _MemTables:
    """A GuestMemory's slots as C sees them, with the scratch the C side keeps zeroed."""

    def __init__(self, mem: GuestMemory) -> None:
        self.generation = mem.generation
        slots = mem.slots
        for s in slots:
            for a, what in ((s.data, "data"), (s.dirty, "dirty log")):
                if not (isinstance(a, np.ndarray) and a.flags.c_contiguous and a.dtype.itemsize == 1):
                    raise ValueError(f"memslot at GPA {s.gpa:#x}: its {what} is not a contiguous byte array")
        self.slots = slots  # keeps data and dirty arrays alive
        self.start = np.array([s.gpa for s in slots], dtype=np.uint64)
        self.end = np.array([s.end for s in slots], dtype=np.uint64)
        self.ro = np.array([s.readonly for s in slots], dtype=np.uint8)
        self.page_seen = [np.zeros(s.dirty.size, np.uint8) for s in slots]
        self.byte_seen = [np.zeros(s.size // 8 + 1, np.uint8) for s in slots]
        self.ptrs = [np.array([a.ctypes.data for a in arrs], dtype=np.uint64) for arrs in (
            [s.data for s in slots], [s.dirty for s in slots], self.page_seen, self.byte_seen)]
        data, dirty, pseen, bseen = self.ptrs
        self.c = _CSlots(len(slots), self.start.ctypes.data, self.end.ctypes.data, data.ctypes.data,
                         self.ro.ctypes.data, dirty.ctypes.data, pseen.ctypes.data, bseen.ctypes.data)


_MEMS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_TABLES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _mem_tables(mem: GuestMemory) -> _MemTables:
    t = _MEMS.get(mem)
    if t is None or t.generation != mem.generation:
        t = _MEMS[mem] = _MemTables(mem)
    return t


def _table(lpis: LPITable):
    """(walk in INTID order as int64, targets as int32, INTIDs as uint32, the vCPUs targeted),
    cached per table version."""
    e = _TABLES.get(lpis)
    if e is None or e[0] != lpis.version:
        intid = np.ascontiguousarray(lpis.intid, dtype=np.uint32)
        target = np.ascontiguousarray(lpis.target_vcpu, dtype=np.int32)
        used = np.flatnonzero(np.bincount(target[target >= 0], minlength=1)) if len(lpis) else np.zeros(0, np.intp)
        e = (lpis.version, np.argsort(intid, kind="stable").astype(np.int64), target, intid, used)
        _TABLES[lpis] = e
    return e[1:]


def _tables_disjoint(base: np.ndarray, used: np.ndarray, lpis: LPITable) -> bool:
    """True when no two targeted vCPUs' table bytes can coincide (each gets the whole INTID range
    of the table, conservatively)."""
    if used.size < 2:
        return True
    b = np.sort(base[used])
    span = np.uint64(lpis.max_intid // 8 - lpis.min_intid // 8)
    return bool(np.all(b[1:] - b[:-1] > span))


class _Work:
    """Grow-only scratch of the C calls (write log, page list)."""

    def __init__(self) -> None:
        self.n = 0
        self.get(1)

    def get(self, n: int):
        if n > self.n:
            self.n = max(n, 2 * self.n, 1024)
            self.run_gpa = np.empty(self.n, np.uint64)
            self.run_old = np.empty(self.n, np.uint8)
            self.pages = np.empty(self.n, np.int64)
            self.page_slot = np.empty(self.n, np.int64)
        return self


_WORK = _Work()


def _flags_u8(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype.itemsize == 1 and a.flags.c_contiguous and a.dtype in (np.bool_, np.uint8):
        return a
    return np.ascontiguousarray(a != 0, dtype=np.uint8)


def _base(pendbaser, lpis: LPITable) -> np.ndarray:
    pb = np.asarray(pendbaser)
    if pb.ndim != 1:
        raise ValueError(f"pendbaser must be 1-D, got shape {pb.shape}")
    if lpis.max_target >= pb.size:
        row = int(np.flatnonzero(np.asarray(lpis.target_vcpu) >= pb.size)[0])
        raise ValueError(f"target_vcpu[{row}] = {int(lpis.target_vcpu[row])} but pendbaser has only {pb.size} vCPUs")
    return np.ascontiguousarray(pb.astype(np.uint64, copy=False) & PENDBASER_ADDRESS_MASK)


def _pages(work: _Work, n: int) -> np.ndarray:
    p = work.pages[:n]
    return np.unique(p) if n else np.zeros(0, np.int64)  # two slots meeting inside a page share it


# ---------------------------------------------------------------------------- save
def c_kernel_loop_save(
    mem: GuestMemory, pendbaser, lpis: LPITable, *, vpt=None, has_gicv4_1: bool = False, order: str = "intid"
):
    """The kernel's save loop for one VM in plain C (see the module docstring).

    Same signature and report as :func:`vlpi.save_pending_tables`; kernel-exact on faults (the
    writes before the faulting access are kept; ``GuestMemoryFault.report`` is the partial report).
    """
    t0 = time.perf_counter()
    if order not in ("intid", "insertion"):
        raise ValueError(f"order must be 'intid' or 'insertion', got {order!r}")
    lib = _lib()
    base = _base(pendbaser, lpis)
    walk, target, intid, used = _table(lpis)
    latch = _flags_u8(lpis.pending_latch)
    hw = _flags_u8(lpis.hw)
    n = len(lpis)
    use_vpt = bool(has_gicv4_1) and n > 0 and bool(hw.any())
    vptc, vb = None, 0
    if use_vpt:
        if vpt is None:
            raise ValueError(f"vpt is required: LPI row {int(np.argmax(hw))} is hw and has_gicv4_1 is set")
        vptc = np.ascontiguousarray(vpt, dtype=np.uint8)
        if vptc.ndim != 2 or vptc.shape[0] < base.size:
            raise ValueError(f"vpt must have shape (n_vcpus={base.size}, vpt_bytes), got {vptc.shape}")
        vb = vptc.shape[1]
        if lpis.max_intid // 8 >= vb:
            far = (hw != 0) & (target >= 0) & ((intid >> 3) >= vb)
            if far.any():
                row = int(np.argmax(far))
                raise ValueError(
                    f"vpt: hw LPI row {row} (INTID {int(intid[row])}) needs VPT byte {int(intid[row]) // 8} "
                    f"but vpt has {vb} bytes per vPE"
                )
    # per-vCPU last logged address: lets C skip deduplicating the write log (see kernel_loop.c)
    last_run = np.full(base.size, np.iinfo(np.uint64).max, np.uint64) if (
        order == "intid" and _tables_disjoint(base, used, lpis)) else None
    out = _SaveOut()
    with _LOCK:
        mt = _mem_tables(mem)
        w = _WORK.get(n)
        lib.vlpi_c_save(
            n, walk.ctypes.data if order == "intid" else None, intid.ctypes.data, target.ctypes.data,
            latch.ctypes.data, hw.ctypes.data, base.ctypes.data, vptc.ctypes.data if use_vpt else None, vb,
            int(use_vpt), ctypes.byref(mt.c), w.run_gpa.ctypes.data, w.run_old.ctypes.data,
            None if last_run is None else last_run.ctypes.data, w.pages.ctypes.data, w.page_slot.ctypes.data,
            ctypes.byref(out),
        )
        pages = _pages(w, out.n_pages)
    vpes = int(base.size) if has_gicv4_1 else 0
    rep = SaveReport(
        lpis_total=n, lpis_skipped=int(out.skipped), guest_reads=int(out.reads), guest_writes=int(out.writes),
        vpt_reads=int(out.vpt_reads), bytes_changed=int(out.bytes_changed), vpes_unmapped=vpes,
        vpes_remapped=vpes, dirty_pages=pages, elapsed_s=time.perf_counter() - t0,
    )
    _raise_if_faulted(out, intid, target, rep)
    return rep


def _raise_if_faulted(out, intid: np.ndarray, target: np.ndarray, rep) -> None:
    """The kernel-exact fault of a C walk that stopped (``out.fault_row >= 0``), carrying ``rep``."""
    if out.fault_row >= 0:
        row = int(out.fault_row)
        raise GuestMemoryFault(int(out.fault_gpa), write=bool(out.fault_is_write), intid=int(intid[row]),
                               vcpu=int(target[row]), report=rep, detail="plain C kernel loop")


# ------------------------------------------------------------------------- restore
def c_kernel_loop_restore(mem: GuestMemory, pendbaser, lpis: LPITable):
    """The kernel's per-LPI restore sync in plain C (row order, a read per LPI, a clearing write
    per set bit). Same signature and report as :func:`vlpi.sync_pending_status`; stops at the
    first fault (kernel-exact: ``GuestMemoryFault.report`` is the partial report)."""
    t0 = time.perf_counter()
    lib = _lib()
    base = _base(pendbaser, lpis)
    _, target, intid, _ = _table(lpis)
    pl = lpis.pending_latch
    latch = _flags_u8(pl)
    n = len(lpis)
    out = _RestoreOut()
    with _LOCK:
        mt = _mem_tables(mem)
        w = _WORK.get(n)
        lib.vlpi_c_restore(n, intid.ctypes.data, target.ctypes.data, latch.ctypes.data, base.ctypes.data,
                           ctypes.byref(mt.c), w.pages.ctypes.data, w.page_slot.ctypes.data, ctypes.byref(out))
        pages = _pages(w, out.n_pages)
    if latch is not pl:
        pl[:] = latch
    errno_ = np.zeros(n, np.int32)
    if out.fault_row >= 0:
        errno_[out.fault_row] = EFAULT
    rep = SyncReport(
        lpis_total=n, lpis_synced=int(out.synced), guest_reads=int(out.reads), guest_writes=int(out.writes),
        lpi_errno=errno_, dirty_pages=pages, elapsed_s=time.perf_counter() - t0,
    )
    _raise_if_faulted(out, intid, target, rep)
    return rep


# -------------------------------------------------------------------- stream probes
def aligned_empty(nbytes: int) -> np.ndarray:
    """A 64-byte aligned uint64 array of ``nbytes`` bytes rounded up to a multiple of 512."""
    words = -(-int(nbytes) // 512) * 64
    raw = np.empty(words * 8 + 64, np.uint8)
    off = (-raw.ctypes.data) % 64
    return raw[off : off + words * 8].view(np.uint64)


def _check_stream(a: np.ndarray, what: str) -> None:
    if not (a.dtype == np.uint64 and a.flags.c_contiguous and a.ctypes.data % 64 == 0 and a.size % 64 == 0):
        raise ValueError(f"{what} must be a 64-byte aligned contiguous uint64 array of a multiple of 64 words "
                         "(use aligned_empty)")


def _chunks(n: int, threads: int) -> list[tuple[int, int]]:
    """Split n words into ``threads`` 64-word aligned [lo, hi) ranges."""
    blocks = n // 64
    cuts = [blocks * k // threads * 64 for k in range(threads + 1)]
    return [(cuts[k], cuts[k + 1]) for k in range(threads) if cuts[k + 1] > cuts[k]]


def _parallel(fn, parts, pool) -> list:
    if pool is None or len(parts) == 1:
        return [fn(*p) for p in parts]
    return list(pool.map(lambda p: fn(*p), parts))  # ctypes drops the GIL during each C call


def stream_sum(src: np.ndarray, *, pool=None, threads: int = 1) -> int:
    """Read every word of ``src`` (from :func:`aligned_empty`) once; return their sum.

    ``threads`` > 1 splits the buffer into that many parts run on ``pool`` (a
    ``concurrent.futures`` executor), one C call each."""
    _check_stream(src, "src")
    f = _lib().vlpi_stream_sum
    base = src.ctypes.data
    return sum(_parallel(lambda lo, hi: int(f(base + 8 * lo, hi - lo)), _chunks(src.size, threads), pool))


def stream_rmw(buf: np.ndarray, *, pool=None, threads: int = 1) -> None:
    """Add 1 to every word of ``buf`` in place (each line read once and written back once)."""
    _check_stream(buf, "buf")
    f = _lib().vlpi_stream_rmw
    base = buf.ctypes.data
    _parallel(lambda lo, hi: f(base + 8 * lo, hi - lo), _chunks(buf.size, threads), pool)


def stream_copy(dst: np.ndarray, src: np.ndarray, *, pool=None, threads: int = 1) -> None:
    """``dst[:] = src`` with ordinary 64-byte loads and stores (both from :func:`aligned_empty`)."""
    _check_stream(src, "src")
    _check_stream(dst, "dst")
    if dst.size != src.size:
        raise ValueError(f"dst has {dst.size} words but src has {src.size}")
    f = _lib().vlpi_stream_copy
    d, s_ = dst.ctypes.data, src.ctypes.data
    _parallel(lambda lo, hi: f(d + 8 * lo, s_ + 8 * lo, hi - lo), _chunks(src.size, threads), pool)
