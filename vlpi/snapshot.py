"""Migration snapshots: everything a destination needs to restore a VM, in one checked file.

A snapshot holds, per VM, what QEMU sends after the source has stopped: the guest RAM (only the
4 KiB pages that hold data; the ITS tables and pending tables are in it, flushed by
``SAVE_TABLES`` and ``SAVE_PENDING_TABLES``), the redistributor and ITS registers, the vITS/vPE
configuration (host GIC, vPE table size, which events were forwarded to vPEs), the source's
lost-interrupt log, and the pending set the source had when it stopped (to verify the
destination against).

File format
-----------
A zip archive in numpy's ``.npz`` layout (stored, not compressed): a JSON manifest
``vlpi-snapshot.json`` first, then one ``.npy`` member per array (structured dtypes, never
objects: files are read with ``allow_pickle=False``). The manifest names the format and its
version and lists every array with its dtype, shape and SHA-256. The zip comment, the last
bytes of the file, seals it: the file size and the SHA-256 of every byte before the comment.
A file is checked whole before anything is built from it and refused with
:class:`SnapshotError`, whose ``kind`` says why: ``"truncated"``, ``"corrupt"``, ``"foreign"``
(not a vlpi snapshot) or ``"version"`` (written by a newer vlpi). Files are written to a
temporary name in the same directory and renamed into place (:func:`os.replace`), so a reader
never sees half a file.

Public API: :func:`capture` (a stopped, saved source VM -> :class:`VMImage`), :func:`restore`
(an image -> a new destination VM, in QEMU's restore order), :func:`write` / :func:`read`
(:class:`Snapshot` <-> file), :func:`is_snapshot`, :func:`summarize` / :func:`format_summary`
(``vlpi inspect``).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tempfile
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, NoReturn

import numpy as np
import numpy.typing as npt

from vlpi._repr import fields_repr
from vlpi.vgic import LOST_DTYPE, LOST_DTYPE_V1, LostRecords, with_time

if TYPE_CHECKING:
    from vlpi.memory import GuestMemory
    from vlpi.vm import VM

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "PAGE_SIZES",
    "PENDING_DTYPE",
    "Snapshot",
    "SnapshotError",
    "VMImage",
    "capture",
    "restore",
    "write",
    "read",
    "to_bytes",
    "from_bytes",
    "is_snapshot",
    "summarize",
    "format_summary",
]

FORMAT = "vlpi-snapshot"
FORMAT_VERSION = 2  # 2: lost-interrupt records carry time_s (format-1 files are still read)
MANIFEST = "vlpi-snapshot.json"
PAGE_SIZES = (4096, 16384, 65536)
_RAM_PAGE = 4096  # granule of the stored RAM pages (KVM's smallest page)
_SEAL = re.compile(rb"\nvlpi-snapshot-seal v1 size=([0-9a-f]{16}) sha256=([0-9a-f]{64})\n\Z")
_SEAL_LEN = len(b"\nvlpi-snapshot-seal v1 size=") + 16 + len(b" sha256=") + 64 + 1
_SEAL_TEMPLATE = b"\nvlpi-snapshot-seal v1 size=" + b"0" * 16 + b" sha256=" + b"0" * 64 + b"\n"
_ZIP_HEAD = b"PK\x03\x04"
_EPOCH = (1980, 1, 1, 0, 0, 0)  # fixed member times: the same snapshot gives the same bytes

#: the pending set of a VM: one row per pending interrupt (pending_latch, or the VPT bit of a
#: forwarded VLPI), with the first event that maps it (-1 if none)
PENDING_DTYPE = np.dtype([("intid", "<u4"), ("vcpu", "<i4"), ("device_id", "<i8"), ("event_id", "<i8"),
                          ("forwarded", "u1")])


class SnapshotError(ValueError):
    """A snapshot file that cannot be used; nothing was built from it.

    Attributes
    ----------
    kind : {"truncated", "corrupt", "foreign", "version", "invalid"}
        Why: cut short, bytes changed, not a vlpi snapshot, written by a newer format version,
        or a sealed file whose content is not a valid VM (e.g. made by hand).
    path : str or None
    """

    def __init__(self, kind: str, message: str, path: str | os.PathLike[str] | None = None) -> None:
        where = f"{os.fspath(path)}: " if path is not None else ""
        super().__init__(f"{where}{kind} snapshot: {message}")
        self.kind = kind
        self.path = None if path is None else os.fspath(path)


@dataclass
class VMImage:
    """One VM as the destination receives it.

    Attributes
    ----------
    meta : dict
        JSON-able: ``n_vcpus``, ``gic``, ``kernel``, ``vpt_bytes``, ``page_size``,
        ``registers`` (:meth:`vlpi.VM.get_registers`), ``name``.
    arrays : dict of str -> numpy.ndarray
        ``slot_gpa``, ``slot_size``, ``slot_readonly`` (memslots), ``page_index`` (4 KiB page
        number inside the concatenated slots), ``page_data`` (``[pages, 4096]`` uint8),
        ``forwarded`` (DeviceID, EventID pairs forwarded on the source), ``lost`` (the source's
        lost-interrupt log), ``pending`` (:data:`PENDING_DTYPE`, the source's pending set when it
        stopped), ``vcpu_lpis``, ``vcpu_forwarded`` (LPIs and forwarded LPIs per vCPU).
    """

    meta: dict[str, Any]
    arrays: dict[str, np.ndarray] = field(repr=False)

    @property
    def n_vcpus(self) -> int:
        return int(self.meta["n_vcpus"])

    @property
    def pending(self) -> np.ndarray:
        return self.arrays["pending"]

    @property
    def lost(self) -> LostRecords:
        return LostRecords(self.arrays["lost"])

    @property
    def ram_bytes(self) -> int:
        """Bytes of guest RAM carried (pages that hold data)."""
        return int(self.arrays["page_data"].size)

    def __repr__(self) -> str:
        return fields_repr(self, ("n_vcpus", "ram_bytes", "meta", "arrays"), {"meta": "keys", "arrays": "arrays"})


@dataclass
class Snapshot:
    """A host's worth of :class:`VMImage` plus JSON-able ``meta`` (who wrote it, the policy,
    the page size...)."""

    vms: list[VMImage]
    meta: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        return fields_repr(self, ("vms", "meta"), {"vms": "VMs"})


# ============================================================================ capture / restore
def _pages_with_data(mem: GuestMemory) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    gpas, sizes, ro, idx, data = [], [], [], [], []
    base = 0
    for s in mem.slots:
        gpas.append(s.gpa)
        sizes.append(s.size)
        ro.append(s.readonly)
        n = -(-s.size // _RAM_PAGE)
        full = s.size // _RAM_PAGE
        pages = np.zeros((n, _RAM_PAGE), np.uint8) if n != full else None
        view = s.data[: full * _RAM_PAGE].reshape(full, _RAM_PAGE)
        if pages is not None:
            pages[:full] = view
            pages[full, : s.size - full * _RAM_PAGE] = s.data[full * _RAM_PAGE :]
            view = pages
        used = np.flatnonzero(view.view(np.uint64).any(axis=1))  # 8 bytes at a time
        idx.append(used + base)
        data.append(view[used])
        base += n
    return (
        np.asarray(gpas, np.uint64), np.asarray(sizes, np.uint64), np.asarray(ro, bool),
        np.concatenate(idx).astype(np.int64) if idx else np.zeros(0, np.int64),
        np.concatenate(data) if data else np.zeros((0, _RAM_PAGE), np.uint8),
    )


def capture(vm: VM, *, pending: np.ndarray, name: str = "vm0", page_size: int = 4096) -> VMImage:
    """The image of a stopped source VM whose tables were saved (``SAVE_TABLES`` and
    ``SAVE_PENDING_TABLES`` done): RAM pages with data, registers, forwarded events, the lost
    log, and ``pending`` (the pending set when the VM stopped, :data:`PENDING_DTYPE`)."""
    if page_size not in PAGE_SIZES:
        raise ValueError(f"page_size must be one of {PAGE_SIZES}, got {page_size}")
    pending = np.asarray(pending)
    if pending.dtype != PENDING_DTYPE:
        raise TypeError(f"pending must have dtype PENDING_DTYPE, got {pending.dtype}")
    gpa, size, ro, idx, data = _pages_with_data(vm.mem)
    ites = vm.its.ites()
    f = ites["forwarded"]
    fwd = np.stack([ites["device_id"][f], ites["event_id"][f]], axis=1).astype(np.int64).reshape(-1, 2)
    lp = vm.lpis
    tgt = np.asarray(lp.target_vcpu, np.int64)
    on = tgt >= 0
    vcpu_lpis = np.bincount(tgt[on], minlength=vm.n_vcpus).astype(np.int64)
    vcpu_fwd = np.bincount(tgt[on & np.asarray(lp.hw, bool)], minlength=vm.n_vcpus).astype(np.int64)
    regs = vm.get_registers()
    meta = {
        "name": str(name),
        "n_vcpus": int(vm.n_vcpus),
        "gic": vm.gic,
        "kernel": vm.its.kernel,
        "vpt_bytes": int(vm.gicv4.vpt_bytes) if vm.gicv4 is not None else None,
        "vpes": int(vm.gicv4.n_vpes) if vm.gicv4 is not None else 0,
        "page_size": int(page_size),
        "registers": {k: (list(map(int, v)) if isinstance(v, list) else int(v)) for k, v in regs.items()},
        "devices": len(vm.its.devices),
        "ites": int(vm.its.n_ites),
        "lpis": int(len(lp)),
    }
    arrays = {
        "slot_gpa": gpa, "slot_size": size, "slot_readonly": ro, "page_index": idx, "page_data": data,
        "forwarded": fwd, "lost": np.asarray(vm.lost.records, LOST_DTYPE).copy(), "pending": pending.copy(),
        "vcpu_lpis": vcpu_lpis, "vcpu_forwarded": vcpu_fwd,
    }
    return VMImage(meta, arrays)


def _memory(image: VMImage) -> GuestMemory:
    from vlpi.memory import GuestMemory

    a = image.arrays
    mem = GuestMemory()
    base = 0
    idx = a["page_index"]
    for gpa, size, ro in zip(a["slot_gpa"].tolist(), a["slot_size"].tolist(), a["slot_readonly"].tolist(),
                             strict=True):
        n = -(-size // _RAM_PAGE)
        buf = np.zeros(n * _RAM_PAGE, np.uint8)
        sel = np.flatnonzero((idx >= base) & (idx < base + n))
        if sel.size:
            buf.reshape(n, _RAM_PAGE)[idx[sel] - base] = a["page_data"][sel]
        mem.add_slot(int(gpa), int(size), readonly=bool(ro), data=buf[:size] if n * _RAM_PAGE != size
                     else buf)
        base += n
    mem.clear_dirty()
    return mem


def restore(
    image: VMImage,
    *,
    gic: str | None = None,
    forward: bool | tuple[npt.ArrayLike, npt.ArrayLike] = True,
    run: bool = True,
    prepare: Callable[[VM], object] | None = None,
    timings: dict[str, Any] | None = None,
) -> VM:
    """Build the destination VM from ``image`` in QEMU's order.

    Guest RAM and vCPUs; the vgic initialised; for every vCPU GICR_PROPBASER then
    GICR_PENDBASER, then GICR_CTLR (EnableLPIs scans run, normally finding no LPI); the ITS's
    GITS_CBASER, CREADR, CWRITER, BASERs, ``RESTORE_TABLES`` (LPIs created, pending bits pulled
    and cleared) and GITS_CTLR; then VFIO forwards the events forwarded on the source (a set
    ``pending_latch`` moves into the VPT); then the vCPUs run.

    Parameters
    ----------
    gic : str, optional
        The destination host's GIC (default: the source's). Forwarding is skipped on "v3".
    forward : bool or (device_ids, event_ids)
        True: forward the events the source had forwarded; False: none; a pair: those.
    prepare : callable(vm), optional
        Called after RAM is loaded and before the registers are restored (tests use it to
        inject destination faults).
    timings : dict, optional
        Filled with seconds per step: ``ram``, ``registers`` (incl. RESTORE_TABLES),
        ``forward``; and ``forwarded`` (:meth:`vlpi.VM.forward`'s result) when forwarding ran.

    Returns
    -------
    VM
        The new VM. Raises whatever the failing step raised (the half-built VM is dropped).
    """
    from vlpi.gicv4 import VPT_BYTES
    from vlpi.vm import VM

    m = image.meta
    t = timings if timings is not None else {}
    t0 = time.perf_counter()
    mem = _memory(image)
    dst_gic = gic or m["gic"]
    dst = VM(int(m["n_vcpus"]), gic=dst_gic, mem=mem, kernel=m["kernel"],
             vpt_bytes=int(m["vpt_bytes"] or VPT_BYTES))
    dst.init()
    t["ram"] = time.perf_counter() - t0
    if prepare is not None:
        prepare(dst)
    t0 = time.perf_counter()
    dst.set_registers(m["registers"])
    t["registers"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    if isinstance(forward, tuple):
        t["forwarded"] = dst.forward(*forward)
    elif forward and dst.gicv4 is not None:
        fwd = image.arrays["forwarded"]
        t["forwarded"] = dst.forward(fwd[:, 0], fwd[:, 1])
    t["forward"] = time.perf_counter() - t0
    if run:
        dst.run()
    return dst


# ============================================================================ file format
def _sha(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).view(np.uint8).reshape(-1).data).hexdigest() if a.size else \
        hashlib.sha256(b"").hexdigest()


def _flat(snap: Snapshot) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    arrays: dict[str, np.ndarray] = {}
    vms: list[dict[str, Any]] = []
    for i, im in enumerate(snap.vms):
        for k, a in im.arrays.items():
            a = np.ascontiguousarray(a)
            if a.dtype.hasobject:
                raise TypeError(f"vm {i} array {k!r}: object arrays cannot be stored")
            arrays[f"vm{i}/{k}"] = a
        vms.append(im.meta)
    manifest = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "meta": snap.meta,
        "vms": vms,
        "arrays": {k: {"dtype": a.dtype.descr if a.dtype.names else a.dtype.str, "shape": list(a.shape),
                       "sha256": _sha(a)} for k, a in arrays.items()},
    }
    return manifest, arrays


def _zip_bytes(manifest: dict[str, Any], arrays: dict[str, np.ndarray], out: IO[bytes]) -> None:
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        zf.writestr(zipfile.ZipInfo(MANIFEST, _EPOCH), json.dumps(manifest, sort_keys=True).encode())
        for k, a in arrays.items():
            with zf.open(zipfile.ZipInfo(k + ".npy", _EPOCH), "w", force_zip64=True) as f:
                np.lib.format.write_array(f, a, allow_pickle=False)
        zf.comment = _SEAL_TEMPLATE


def _seal(f: IO[bytes]) -> None:
    """Replace the placeholder zip comment with size + SHA-256 of everything before it."""
    f.seek(0, os.SEEK_END)
    size = f.tell()
    f.seek(0)
    h = hashlib.sha256()
    left = size - _SEAL_LEN
    while left > 0:
        chunk = f.read(min(left, 1 << 22))
        h.update(chunk)
        left -= len(chunk)
    f.seek(size - _SEAL_LEN)
    f.write(b"\nvlpi-snapshot-seal v1 size=%016x sha256=%s\n" % (size, h.hexdigest().encode()))


def to_bytes(snap: Snapshot, *, _version: int = FORMAT_VERSION) -> bytes:
    """The file's bytes (what :func:`write` writes)."""
    manifest, arrays = _flat(snap)
    manifest["version"] = _version
    buf = io.BytesIO()
    _zip_bytes(manifest, arrays, buf)
    _seal(buf)
    return buf.getvalue()


def write(path: str | os.PathLike[str], snap: Snapshot | VMImage | Sequence[VMImage]) -> int:
    """Write ``snap`` atomically to ``path`` (temporary file in the same directory, fsync,
    rename). Returns the file's size in bytes."""
    if isinstance(snap, VMImage):
        snap = Snapshot([snap])
    elif not isinstance(snap, Snapshot):
        snap = Snapshot(list(snap))
    path = Path(path)
    manifest, arrays = _flat(snap)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or ".")
    try:
        with os.fdopen(fd, "w+b") as f:
            _zip_bytes(manifest, arrays, f)
            _seal(f)
            f.flush()
            os.fsync(f.fileno())
            size = f.tell()
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return size


def _seal_state(data: bytes) -> str:
    """"ok", "damaged" (a seal with a byte or two changed) or "absent"."""
    tail = data[-_SEAL_LEN:]
    if len(tail) == _SEAL_LEN and _SEAL.match(tail):
        return "ok"
    if len(tail) != _SEAL_LEN:
        return "absent"
    hexd = set(b"0123456789abcdef")
    off = 0
    for i, (a, b) in enumerate(zip(tail, _SEAL_TEMPLATE, strict=True)):
        fixed = b != ord("0") or i in (0, _SEAL_LEN - 1)
        if (fixed and a != b) or (not fixed and a not in hexd):
            off += 1
    return "damaged" if off <= 2 else "absent"


def _check(data: bytes, path: str | os.PathLike[str] | None) -> None:
    if not data:
        raise SnapshotError("truncated", "the file is empty", path)
    state = _seal_state(data)
    if state == "absent":
        head = data[: len(_ZIP_HEAD)]
        ours = FORMAT.encode() in data[:256] or MANIFEST.encode() in data[:256]
        if (head and _ZIP_HEAD.startswith(head) and (len(data) < 30 + len(MANIFEST) or ours)) or ours:
            raise SnapshotError("truncated", f"the file ends after {len(data)} bytes, before its seal", path)
        raise SnapshotError("foreign", "not a vlpi snapshot (no vlpi-snapshot seal or manifest)", path)
    if state == "damaged":
        raise SnapshotError("corrupt", "the seal at the end of the file is damaged", path)
    m = _SEAL.match(data[-_SEAL_LEN:])
    assert m is not None  # the seal state "ok" is this match
    size = int(m.group(1), 16)
    if size != len(data):
        # a cut file loses its seal: an intact seal with another size was changed
        raise SnapshotError("corrupt", f"the seal says {size} bytes, the file has {len(data)}", path)
    if hashlib.sha256(data[:-_SEAL_LEN]).hexdigest().encode() != m.group(2):
        raise SnapshotError("corrupt", "SHA-256 of the content does not match the seal (bytes were changed)", path)


def _dtype(spec: str | list[Any]) -> np.dtype[Any]:
    if isinstance(spec, str):
        return np.dtype(spec)
    return np.dtype([tuple(x) for x in spec])


def from_bytes(data: bytes, path: str | os.PathLike[str] | None = None) -> Snapshot:
    """Parse and check a snapshot (see :func:`read`)."""
    _check(data, path)
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
        names = zf.namelist()
        if not names or names[0] != MANIFEST:
            raise SnapshotError("foreign", f"the first member is {names[:1]}, not {MANIFEST}", path)
        manifest = json.loads(zf.read(MANIFEST))
    except SnapshotError:
        raise
    except (zipfile.BadZipFile, ValueError, KeyError, OSError, EOFError) as e:
        raise SnapshotError("corrupt", f"unreadable zip or manifest ({e})", path) from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise SnapshotError("foreign", "the manifest does not name the vlpi-snapshot format", path)
    ver = manifest.get("version")
    if not isinstance(ver, int) or isinstance(ver, bool) or ver < 1:
        raise SnapshotError("corrupt", f"format version {ver!r} is not a positive integer", path)
    if ver > FORMAT_VERSION:
        raise SnapshotError("version", f"format version {ver} is newer than this vlpi reads ({FORMAT_VERSION}); "
                            "upgrade vlpi", path)
    specs = manifest.get("arrays")
    vms = manifest.get("vms")
    if not isinstance(specs, dict) or not isinstance(vms, list):
        raise SnapshotError("invalid", "manifest lacks 'arrays' or 'vms'", path)
    want = {k + ".npy" for k in specs} | {MANIFEST}
    if set(names) != want or len(names) != len(want):
        raise SnapshotError("invalid", f"members {sorted(set(names) ^ want)[:4]} differ from the manifest", path)
    arrays: dict[str, np.ndarray] = {}
    try:
        for k, spec in specs.items():
            with zf.open(k + ".npy") as f:
                a = np.lib.format.read_array(f, allow_pickle=False)
            if a.dtype != _dtype(spec["dtype"]) or list(a.shape) != list(spec["shape"]):
                raise SnapshotError("invalid", f"array {k}: dtype/shape differ from the manifest", path)
            if _sha(a) != spec["sha256"]:
                raise SnapshotError("corrupt", f"array {k}: SHA-256 does not match the manifest", path)
            arrays[k] = a
    except SnapshotError:
        raise
    except (ValueError, KeyError, TypeError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise SnapshotError("corrupt", f"unreadable array ({e})", path) from None
    if ver == 1:  # records written before they were timed: time_s unknown (NaN)
        for k, a in arrays.items():
            if k.endswith("/lost") and a.dtype == LOST_DTYPE_V1:
                arrays[k] = with_time(a)
    images: list[VMImage] = []
    for i, meta in enumerate(vms):
        pre = f"vm{i}/"
        im = VMImage(meta, {k[len(pre):]: a for k, a in arrays.items() if k.startswith(pre)})
        _validate_image(im, i, path)
        images.append(im)
    return Snapshot(images, manifest.get("meta") or {})


_IMAGE_ARRAYS = {"slot_gpa": "<u8", "slot_size": "<u8", "slot_readonly": "|b1", "page_index": "<i8",
                 "page_data": "|u1", "forwarded": "<i8", "vcpu_lpis": "<i8", "vcpu_forwarded": "<i8"}


def _validate_image(im: VMImage, i: int, path: str | os.PathLike[str] | None) -> None:
    try:
        _check_image(im, i, path)
    except SnapshotError:
        raise
    except (TypeError, ValueError, KeyError, AttributeError, IndexError) as e:
        raise SnapshotError("invalid", f"vm {i}: malformed content ({type(e).__name__}: {e})", path) from None


def _u64(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and 0 <= x < 1 << 64


def _check_image(im: VMImage, i: int, path: str | os.PathLike[str] | None) -> None:
    from vlpi.vgic import LostReason, LostSource

    def bad(msg: str) -> NoReturn:
        raise SnapshotError("invalid", f"vm {i}: {msg}", path)

    m, a = im.meta, im.arrays
    if not isinstance(m, dict):
        bad("meta is not an object")
    for k in ("n_vcpus", "gic", "kernel", "page_size", "registers"):
        if k not in m:
            bad(f"meta lacks {k!r}")
    for k, dt in _IMAGE_ARRAYS.items():
        if k not in a:
            bad(f"array {k!r} missing")
        if a[k].dtype.str != dt:
            bad(f"array {k!r} has dtype {a[k].dtype.str}, expected {dt}")
    if a.get("lost") is None or a["lost"].dtype != LOST_DTYPE:
        bad("array 'lost' missing or of the wrong dtype")
    if a.get("pending") is None or a["pending"].dtype != PENDING_DTYPE:
        bad("array 'pending' missing or of the wrong dtype")
    n = a["slot_gpa"].shape
    if a["slot_size"].shape != n or a["slot_readonly"].shape != n or len(n) != 1:
        bad("memslot arrays differ in shape")
    npages = int(sum(-(-int(s) // _RAM_PAGE) for s in a["slot_size"].tolist()))
    pi = a["page_index"]
    if a["page_data"].ndim != 2 or a["page_data"].shape[1] != _RAM_PAGE or a["page_data"].shape[0] != pi.size:
        bad("page_data is not [pages, 4096] matching page_index")
    if pi.size and (pi.min() < 0 or pi.max() >= npages or np.any(np.diff(pi) <= 0)):
        bad("page_index is not sorted unique page numbers inside the memslots")
    if a["forwarded"].ndim != 2 or a["forwarded"].shape[1] != 2:
        bad("forwarded is not [n, 2]")
    if m["gic"] not in ("v3", "v4.0", "v4.1") or m["kernel"] not in ("new", "old"):
        bad(f"gic {m['gic']!r} / kernel {m['kernel']!r} unknown")
    vb = m.get("vpt_bytes")
    if vb is not None and (not isinstance(vb, int) or vb < 1024 or vb % 8 or vb > 1 << 24):
        bad(f"vpt_bytes {vb!r} invalid")
    if m["page_size"] not in PAGE_SIZES:
        bad(f"page_size {m['page_size']!r} not in {PAGE_SIZES}")
    nv = m["n_vcpus"]
    if not isinstance(nv, int) or not 1 <= nv <= 4096:
        bad(f"n_vcpus {nv!r} out of range")
    if a["vcpu_lpis"].shape != (nv,) or a["vcpu_forwarded"].shape != (nv,):
        bad("per-vCPU arrays do not have n_vcpus entries")
    regs = m["registers"]
    for k in ("propbaser", "pendbaser", "ctlr", "gits_ctlr", "gits_cbaser", "gits_creadr", "gits_cwriter",
              "gits_baser"):
        if k not in regs:
            bad(f"registers lack {k!r}")
    if not isinstance(regs, dict):
        bad("registers is not an object")
    for k, v in regs.items():
        if not (_u64(v) or (isinstance(v, list) and all(_u64(x) for x in v))):
            bad(f"register {k!r} is not a 64-bit value (or a list of them)")
    if len(regs["pendbaser"]) != nv or len(regs["ctlr"]) != nv or len(regs["gits_baser"]) < 2:
        bad("per-vCPU registers do not have n_vcpus entries (or GITS_BASER0/1 are missing)")
    gpa, size = a["slot_gpa"].astype(object), a["slot_size"].astype(object)
    end = [g + z for g, z in zip(gpa.tolist(), size.tolist(), strict=True)]
    if any(z <= 0 for z in size.tolist()) or any(e > 1 << 52 for e in end):
        bad("a memslot is empty or beyond the 52-bit guest physical address space")
    if any(end[k] > gpa[k + 1] for k in range(len(end) - 1)):
        bad("memslots are not sorted and disjoint")
    f = a["forwarded"]
    if f.size and (f.min() < 0 or f.max() >= 1 << 32):
        bad("a forwarded DeviceID/EventID is not a 32-bit ID")
    lost = a["lost"]
    if not np.isin(lost["reason"], [r.value for r in LostReason]).all() or \
            not np.isin(lost["source"], [r.value for r in LostSource]).all():
        bad("the lost-interrupt log has unknown reasons or sources")
    p = a["pending"]
    if p.size and (p["vcpu"].min() < -1 or p["vcpu"].max() >= nv or p["intid"].min() < 8192):
        bad("the pending set names a vCPU or INTID that cannot exist")


def read(path: str | os.PathLike[str]) -> Snapshot:
    """Read and check a snapshot file: size and SHA-256 against the seal, the manifest's format
    and version, every array's dtype, shape and SHA-256, and the shape of each VM's content.

    Raises
    ------
    SnapshotError
        ``kind`` = "truncated", "corrupt", "foreign", "version" or "invalid"; nothing is built.
    FileNotFoundError
    """
    data = Path(path).read_bytes()
    return from_bytes(data, path)


def is_snapshot(path: str | os.PathLike[str]) -> bool:
    """True if ``path`` looks like a vlpi snapshot (a zip whose first member is the manifest,
    or a file ending in a vlpi seal); cheap, does not check the content."""
    try:
        with open(path, "rb") as f:
            head = f.read(256)
            f.seek(0, os.SEEK_END)
            n = f.tell()
            f.seek(max(0, n - _SEAL_LEN))
            tail = f.read()
    except OSError:
        return False
    return (head.startswith(_ZIP_HEAD) and MANIFEST.encode() in head) or _seal_state(tail) != "absent"


# ============================================================================ inspect
def summarize(path_or_snap: str | os.PathLike[str] | Snapshot) -> dict[str, Any]:
    """Per VM and vCPU: LPIs, pending, forwarded, and the tables (registers) of a snapshot."""
    snap = path_or_snap if isinstance(path_or_snap, Snapshot) else read(path_or_snap)
    out: dict[str, Any] = {"format": FORMAT, "version": FORMAT_VERSION, "meta": snap.meta, "vms": []}
    for im in snap.vms:
        m, a = im.meta, im.arrays
        nv = im.n_vcpus
        p = a["pending"]
        pend = np.bincount(p["vcpu"][p["vcpu"] >= 0], minlength=nv)
        pfwd = np.bincount(p["vcpu"][(p["vcpu"] >= 0) & (p["forwarded"] != 0)], minlength=nv)
        regs = m["registers"]
        out["vms"].append({
            "name": m.get("name"), "n_vcpus": nv, "gic": m["gic"], "page_size": m["page_size"],
            "lpis": int(a["vcpu_lpis"].sum()), "forwarded": int(a["vcpu_forwarded"].sum()),
            "pending": int(p.size), "pending_forwarded": int((p["forwarded"] != 0).sum()),
            "devices": m.get("devices"), "ites": m.get("ites"), "ram_pages": int(a["page_index"].size),
            "lost_records": int(a["lost"].size),
            "tables": {"propbaser": regs["propbaser"], "gits_baser": regs["gits_baser"],
                       "gits_cbaser": regs["gits_cbaser"]},
            "vcpus": [{"vcpu": v, "lpis": int(a["vcpu_lpis"][v]), "pending": int(pend[v]),
                       "forwarded": int(a["vcpu_forwarded"][v]), "pending_forwarded": int(pfwd[v]),
                       "pendbaser": int(regs["pendbaser"][v]), "enable_lpis": bool(regs["ctlr"][v] & 1)}
                      for v in range(nv)],
        })
    return out


def format_summary(summary: dict[str, Any], *, max_vcpus: int = 8) -> str:
    """:func:`summarize`'s result as text (``max_vcpus`` vCPU lines per VM)."""
    lines = [f"vlpi snapshot (format {summary['format']} v{summary['version']}), {len(summary['vms'])} VM(s)"]
    for vm in summary["vms"]:
        t = vm["tables"]
        lines.append(
            f"{vm['name']}: {vm['n_vcpus']} vCPUs, GIC{vm['gic']}, {vm['lpis']:,} LPIs "
            f"({vm['forwarded']:,} forwarded), "
            f"{vm['pending']:,} pending ({vm['pending_forwarded']:,} as VLPIs), {vm['devices']} devices, "
            f"{vm['ites']:,} ITEs, {vm['ram_pages']:,} RAM pages, {vm['lost_records']} lost records"
        )
        lines.append(f"  tables: PROPBASER {t['propbaser']:#x}, GITS_BASER0 {t['gits_baser'][0]:#x}, "
                     f"GITS_BASER1 {t['gits_baser'][1]:#x}, GITS_CBASER {t['gits_cbaser']:#x}")
        lines.append(f"  {'vCPU':>5} {'LPIs':>8} {'pending':>8} {'fwd':>8} {'fwd pend':>8}  PENDBASER")
        for c in vm["vcpus"][:max_vcpus]:
            off = "" if c["enable_lpis"] else " (LPIs off)"
            lines.append(f"  {c['vcpu']:>5} {c['lpis']:>8,} {c['pending']:>8,} {c['forwarded']:>8,} "
                         f"{c['pending_forwarded']:>8,}  {c['pendbaser']:#x}{off}")
        if len(vm["vcpus"]) > max_vcpus:
            lines.append(f"  ... {len(vm['vcpus']) - max_vcpus} more vCPUs")
    return "\n".join(lines)
