"""QEMU's migration stream: the container, the RAM pages and the device state.

A stream (``migrate "exec:cat > FILE"``, or the state part of a savevm) is laid out as

* the header: magic ``QEVM``, version 3;
* the *configuration* section: the machine type name (e.g. ``virt-7.2``) and its subsections
  (``target-page-bits``, ``capabilities``, ``uuid``);
* sections, each opened by a type byte: ``START`` and ``FULL`` carry a header (section id, name,
  instance id, version), ``PART`` and ``END`` only the section id; each is closed by a footer
  (``0x7e`` and the section id again). The ``ram`` section is iterative (``START`` with the list of
  RAM blocks, then ``PART``/``END`` with pages, each part ending with an end-of-section flag); a
  device's state is one ``FULL`` section;
* ``EOF``, then the JSON description of every device section (field names, types, sizes).

Supported: streams written to a file or pipe (``exec:``, ``file:``, a savevm's state) without multifd,
compression or XBZRLE; their page flags are refused with an error naming the offset.

Device sections are decoded with that JSON description: field names and sizes come from it, not
from offsets written here. A section the description does not cover is skipped by its footer and
listed in :attr:`Stream.skipped`. A truncated or corrupt stream raises :class:`StreamError` (or its
subclass :class:`TruncatedStream`) naming the byte offset and the section.
"""

from __future__ import annotations

import gzip
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeAlias, cast

import numpy as np

from vlpi._kernels.qemu_ram import ram_run
from vlpi._repr import fields_repr

#: what :func:`read_stream` reads: a path, the bytes, or a binary file
StreamSource: TypeAlias = "str | Path | bytes | bytearray | memoryview | IO[bytes]"

MAGIC = 0x5145564D  # "QEVM"
VERSION = 3

# section types
EOF = 0x00
SECTION_START = 0x01
SECTION_PART = 0x02
SECTION_END = 0x03
SECTION_FULL = 0x04
SUBSECTION = 0x05
VMDESCRIPTION = 0x06
CONFIGURATION = 0x07
COMMAND = 0x08
SECTION_FOOTER = 0x7E
SECTION_NAMES = {
    SECTION_START: "START", SECTION_PART: "PART", SECTION_END: "END", SECTION_FULL: "FULL",
}

# RAM page flags (low bits of each page's 64-bit header; the high bits are the offset in the block)
RAM_ZERO = 0x02
RAM_MEM_SIZE = 0x04
RAM_PAGE = 0x08
RAM_EOS = 0x10
RAM_CONTINUE = 0x20
RAM_KNOWN = RAM_ZERO | RAM_MEM_SIZE | RAM_PAGE | RAM_EOS | RAM_CONTINUE

_INT_TYPES = {  # vmstate info names with a fixed big-endian integer encoding
    "bool": (1, False), "uint8": (1, False), "uint16": (2, False), "uint32": (4, False),
    "uint64": (8, False), "int8": (1, True), "int16": (2, True), "int32": (4, True),
    "int64": (8, True), "int32 equal": (4, True), "uint32 equal": (4, False),
    "uint8 equal": (1, False), "uint16 equal": (2, False), "int32 le": (4, True),
}


class StreamError(ValueError):
    """A migration stream that vlpi cannot read: corrupt, or of an unsupported kind.

    Attributes
    ----------
    offset : int
        Byte offset in the (uncompressed) stream where the problem was found.
    section : str or None
        The section being read (``"ram"``, ``"arm_gicv3"``, ``"header"``, …), if any.
    """

    def __init__(self, message: str, offset: int, section: str | None = None) -> None:
        where = f"at byte {offset}" + (f" in section {section!r}" if section else "")
        super().__init__(f"{message} ({where})")
        self.offset = int(offset)
        self.section = section


class TruncatedStream(StreamError):
    """The stream ends before a field it announced (an incomplete copy or a failed migration)."""


@dataclass
class RamBlock:
    """One RAM block of the stream (``mach-virt.ram``, a flash, a ROM).

    ``data`` is the block's final content (pages never sent stay zero). ``sent`` marks the pages that
    the stream carried, ``zero`` those sent as zero pages (per target page; the last copy counts).
    """

    name: str
    length: int
    data: np.ndarray
    sent: np.ndarray
    zero: np.ndarray

    def __repr__(self) -> str:
        return fields_repr(self, ("name", "length", "data", "sent", "zero"),
                           {"data": "bytes", "sent": "pages", "zero": "pages"})


@dataclass
class Section:
    """One section of the stream as found: where it lies and, for a device, its decoded fields."""

    kind: int  # SECTION_START/PART/END/FULL
    section_id: int
    name: str
    instance_id: int
    version: int
    offset: int  # of the type byte
    data_start: int
    data_end: int  # of the data, footer excluded
    end: int  # first byte after the footer
    fields: dict[str, Any] | None = None  # decoded device state (FULL sections with a description)
    offsets: dict[str, tuple[int, int]] | None = None  # (stream offset, size) of each decoded field ("a.b[1]")

    def __repr__(self) -> str:
        return fields_repr(self, ("kind", "section_id", "name", "instance_id", "version", "offset", "data_start",
                                  "data_end", "end", "fields", "offsets"), {"fields": "fields", "offsets": "fields"})


@dataclass
class Stream:
    """A parsed migration stream.

    Attributes
    ----------
    machine : str
        Machine type from the configuration section (``virt-7.2``).
    page_size : int
        Target page size (from the configuration's ``target-page-bits``, checked against the JSON
        description).
    ram : dict of str to RamBlock
        RAM blocks by name.
    sections : list of Section
        Every section in stream order (RAM parts included).
    description : dict or None
        The JSON description QEMU appends after EOF.
    skipped : list of str
        Sections skipped because nothing describes their content.
    size : int
        Stream size in bytes.
    """

    machine: str
    page_size: int
    ram: dict[str, RamBlock]
    sections: list[Section]
    description: dict[str, Any] | None
    skipped: list[str]
    size: int
    capabilities: list[str] = field(default_factory=list)
    raw: bytes = field(default=b"", repr=False)

    def __repr__(self) -> str:
        return fields_repr(self, ("machine", "page_size", "ram", "sections", "description", "skipped", "size",
                                  "capabilities"),
                           {"ram": "blocks", "sections": "sections", "description": "keys", "skipped": "sections"})

    def device(self, name: str, instance_id: int = 0) -> Section:
        """The FULL section of device ``name`` (its decoded fields in ``.fields``)."""
        for s in self.sections:
            if s.kind == SECTION_FULL and s.name == name and s.instance_id == instance_id:
                return s
        raise KeyError(f"stream has no device section {name!r} (instance {instance_id})")

    def devices(self) -> list[Section]:
        """All FULL (device state) sections in stream order."""
        return [s for s in self.sections if s.kind == SECTION_FULL]


def load_bytes(source: StreamSource) -> bytes:
    """The stream's bytes from a path, ``bytes`` or a binary file; gzip is undone transparently."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    elif isinstance(source, (str, Path)):
        data = Path(source).read_bytes()
    elif hasattr(source, "read"):
        data = source.read()
    else:
        raise TypeError(f"stream source must be a path, bytes or a binary file, got {type(source).__name__}")
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as e:
            raise TruncatedStream(f"gzip-compressed stream cannot be decompressed: {e}", 0, "gzip") from e
    return data


class _Reader:
    """Cursor over the stream bytes; every read checks the length and names the section."""

    def __init__(self, data: bytes) -> None:
        self.d = data
        self.mv = memoryview(data)
        self.arr = np.frombuffer(data, np.uint8)
        self.footers: bool | None = None  # does this stream close sections with footers?
        self.pos = 0
        self.section = "header"

    def need(self, n: int, what: str) -> None:
        if self.pos + n > len(self.d):
            raise TruncatedStream(
                f"stream truncated: {what} needs {n} bytes, {len(self.d) - self.pos} left", self.pos, self.section
            )

    def u8(self, what: str) -> int:
        self.need(1, what)
        v = self.d[self.pos]
        self.pos += 1
        return v

    def be(self, n: int, what: str) -> int:
        self.need(n, what)
        v = int.from_bytes(self.mv[self.pos : self.pos + n], "big")
        self.pos += n
        return v

    def take(self, n: int, what: str) -> bytes:
        self.need(n, what)
        v = self.d[self.pos : self.pos + n]
        self.pos += n
        return v

    def idstr(self, what: str) -> str:
        n = self.u8(f"{what} length")
        raw = self.take(n, what)
        try:
            return raw.decode("ascii")
        except UnicodeDecodeError:
            raise StreamError(f"{what} is not ASCII: {raw!r}", self.pos - n, self.section) from None

    def fail(self, message: str, at: int | None = None) -> StreamError:
        return StreamError(message, self.pos if at is None else at, self.section)


def _find_description(data: bytes) -> tuple[dict[str, Any] | None, int | None]:
    """Locate the JSON description after EOF: ``0x06``, a 32-bit length, then that many JSON bytes
    running to the end of the stream. Returns (description, offset of the 0x06 byte)."""
    end = len(data)
    lo = max(0, end - (64 << 20))
    pos = data.rfind(b"{", lo)
    while pos >= 5 and pos >= lo:  # try each '{' from the end: the right one has its length before it
        p = pos - 5
        if data[p] == VMDESCRIPTION and int.from_bytes(data[p + 1 : p + 5], "big") == end - pos:
            try:
                desc = json.loads(data[pos:].decode())
            except (UnicodeDecodeError, ValueError):
                return None, None
            return (desc, p) if isinstance(desc, dict) else (None, None)
        pos = data.rfind(b"{", lo, pos)
    return None, None


def read_stream(source: StreamSource, *, page_size: int | None = None) -> Stream:
    """Parse a QEMU migration stream.

    Parameters
    ----------
    source : path, bytes or binary file
        The stream (gzip-compressed is accepted).
    page_size : int, optional
        Target page size when the stream's configuration does not state it (default 4096).

    Returns
    -------
    Stream

    Raises
    ------
    StreamError
        Bad magic or version, unknown section type, a footer that does not match, an unknown RAM
        page flag or block, a device section that does not match its description. The message
        names the byte offset and the section.
    TruncatedStream
        The stream ends early (a :class:`StreamError`).
    """
    if page_size is not None:
        if isinstance(page_size, bool) or not isinstance(page_size, int):
            raise TypeError(f"page_size must be an int, got {type(page_size).__name__}")
        if not 1024 <= page_size <= 65536 or page_size & (page_size - 1):
            raise ValueError(f"page_size must be a power of two in [1024, 65536], got {page_size}")
    data = load_bytes(source)
    r = _Reader(data)
    if r.be(4, "magic") != MAGIC:
        raise StreamError("not a QEMU migration stream (magic is not 'QEVM')", 0, "header")
    version = r.be(4, "version")
    if version != VERSION:
        raise StreamError(f"unsupported stream version {version} (vlpi reads version {VERSION})", 4, "header")
    desc, desc_at = _find_description(data)
    by_name: dict[tuple[str, int], dict[str, Any]] = {}
    if desc is not None:
        try:
            for d in desc["devices"]:
                by_name[(str(d["name"]), int(d.get("instance_id", 0)))] = d
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise StreamError(
                f"JSON device description has no usable device list ({e!r})", cast(int, desc_at), "description"
            ) from None
    machine: str = ""
    bits: int | None = None
    caps: list[str] = []
    ram: dict[str, RamBlock] = {}
    sections: list[Section] = []
    skipped: list[str] = []
    ids: dict[int, tuple[str, int, int]] = {}
    psize = page_size
    last_block: list[RamBlock | None] = [None]
    while True:
        at = r.pos
        r.section = f"header of the section after {sections[-1].name!r}" if sections else "configuration"
        kind = r.u8("section type")
        if kind in SECTION_NAMES:
            r.section = f"{SECTION_NAMES[kind]} section header at byte {at}"
        if kind == CONFIGURATION:
            r.section = "configuration"
            machine, bits, caps = _configuration(r)
            if bits is not None:
                if page_size is not None and page_size != 1 << bits:
                    raise r.fail(f"page_size={page_size} but the stream says target-page-bits={bits}")
                psize = 1 << bits
            continue
        if kind == EOF:
            break
        if kind in (SECTION_START, SECTION_FULL):
            sid = r.be(4, "section id")
            r.section = f"section {sid}"
            name = r.idstr("section name")
            r.section = name
            inst = r.be(4, "instance id")
            ver = r.be(4, "version id")
            ids[sid] = (name, inst, ver)
        elif kind in (SECTION_PART, SECTION_END):
            sid = r.be(4, "section id")
            if sid not in ids:
                raise StreamError(f"{SECTION_NAMES[kind]} for section id {sid} that was never started", at, None)
            name, inst, ver = ids[sid]
            r.section = name
        elif kind == COMMAND:
            raise StreamError("postcopy/command sections are not supported", at, None)
        else:
            raise StreamError(f"unknown section type {kind:#04x}", at, None)
        sec = Section(kind, sid, name, inst, ver, at, r.pos, r.pos, r.pos)
        if name == "ram":
            if psize is None:
                psize = 4096
            _ram(r, ram, psize, caps, last_block)
        elif kind == SECTION_FULL and (name, inst) in by_name:
            sec.fields, sec.offsets = {}, {}
            try:
                _vmsd(r, by_name[(name, inst)], sec.fields, sec.offsets, "")
            except StreamError:
                raise
            except (KeyError, TypeError, ValueError, AttributeError, RecursionError) as e:
                raise r.fail(f"device description of {name!r} not understood: {e!r}") from e
        else:
            _skip_to_footer(r, sid)
            skipped.append(f"{name} ({SECTION_NAMES[kind]}, id {sid})")
        sec.data_end = r.pos
        _footer(r, sid)
        sec.end = r.pos
        sections.append(sec)
    r.section = "description"
    if desc is None:
        if r.pos >= len(data):
            raise TruncatedStream("stream ends after EOF without the JSON device description", r.pos, "description")
        raise StreamError("no valid JSON device description after EOF", r.pos, "description")
    if desc_at != r.pos:
        raise StreamError(f"JSON device description found at {desc_at}, expected right after EOF", r.pos, "description")
    if psize is not None and desc.get("page_size", psize) != psize:
        raise StreamError(
            f"RAM was read with {psize}-byte pages but the description says {desc['page_size']}", r.pos, "description"
        )
    return Stream(machine, psize or 4096, ram, sections, desc, skipped, len(data), caps, data)


def _configuration(r: _Reader) -> tuple[str, int | None, list[str]]:
    n = r.be(4, "machine name length")
    if n > 256:
        raise r.fail(f"machine name length {n} is implausible")
    machine = r.take(n, "machine name").decode("ascii", "replace")
    bits, caps = None, []
    while r.pos < len(r.d) and r.d[r.pos] == SUBSECTION:
        r.pos += 1
        sub = r.idstr("subsection name")
        r.be(4, "subsection version")
        if sub == "configuration/target-page-bits":
            bits = r.be(4, "target-page-bits")
            if not 10 <= bits <= 16:
                raise r.fail(f"target-page-bits {bits} is implausible")
        elif sub == "configuration/capabilities":
            for _ in range(r.be(4, "capability count")):
                caps.append(r.idstr("capability"))
        elif sub == "configuration/uuid":
            r.take(16, "uuid")
        else:
            raise r.fail(f"unknown configuration subsection {sub!r}")
    return machine, bits, caps


def _footer(r: _Reader, sid: int) -> None:
    """The section footer (``0x7e`` + section id). Streams of machine types older than QEMU 2.6
    have none; whether this stream has them is settled by its first section."""
    has = r.pos < len(r.d) and r.d[r.pos] == SECTION_FOOTER
    if r.footers is None and r.pos < len(r.d):
        r.footers = has
    if r.footers and not has:
        if r.pos >= len(r.d):
            raise TruncatedStream("stream truncated before the section footer", r.pos, r.section)
        raise StreamError(
            f"section data does not end where expected (byte {r.d[r.pos]:#04x} where the footer belongs)",
            r.pos, r.section,
        )
    if has:
        at = r.pos
        r.pos += 1
        got = r.be(4, "footer section id")
        if got != sid:
            raise StreamError(f"section footer names section id {got}, expected {sid}", at, r.section)
    elif r.pos >= len(r.d):
        raise TruncatedStream("stream truncated after a section", r.pos, r.section)


def _skip_to_footer(r: _Reader, sid: int) -> None:
    """Skip a section whose content nothing describes: up to its footer (0x7e + id) followed by a
    plausible next section type."""
    pat = bytes([SECTION_FOOTER]) + sid.to_bytes(4, "big")
    pos = r.pos
    while True:
        f = r.d.find(pat, pos)
        if f < 0:
            raise TruncatedStream("no footer found for a section vlpi cannot decode", r.pos, r.section)
        nxt = f + 5
        if nxt < len(r.d) and r.d[nxt] in (EOF, SECTION_START, SECTION_PART, SECTION_END, SECTION_FULL):
            r.pos = f
            return
        pos = f + 1


def _ram(r: _Reader, ram: dict[str, RamBlock], psize: int, caps: list[str], last: list[RamBlock | None]) -> None:
    """One START/PART/END chunk of the ``ram`` section, up to its end-of-section flag.

    ``last`` holds the block named most recently: a page flagged CONTINUE may follow it in a
    later chunk (QEMU's loader keeps it across chunks)."""
    d, mv = r.d, r.mv
    n = len(d)
    mask = psize - 1
    block: RamBlock | None = last[0]
    pos = r.pos
    while True:
        if block is not None:  # the common records (pages continuing this block) in one call
            pos = int(ram_run(r.arr, pos, psize, block.data, block.sent, block.zero))
        if pos + 8 > n:
            r.pos = pos
            raise TruncatedStream("stream truncated in a RAM page header", pos, "ram")
        hdr = int.from_bytes(mv[pos : pos + 8], "big")
        at = pos
        pos += 8
        flags = hdr & mask
        addr = hdr - flags
        if flags & ~RAM_KNOWN:
            raise StreamError(f"RAM page header {hdr:#x} has unsupported flags {flags & ~RAM_KNOWN:#x}", at, "ram")
        if flags & RAM_MEM_SIZE:
            r.pos = pos
            _ram_blocks(r, ram, addr, psize, caps)
            pos = r.pos
            continue
        if flags & RAM_EOS:
            r.pos = pos
            last[0] = block
            return
        if not flags & RAM_CONTINUE:
            if pos >= n:
                raise TruncatedStream("stream truncated in a RAM block name", pos, "ram")
            ln = d[pos]
            if pos + 1 + ln > n:
                raise TruncatedStream("stream truncated in a RAM block name", pos, "ram")
            name = d[pos + 1 : pos + 1 + ln].decode("ascii", "replace")
            pos += 1 + ln
            block = ram.get(name)
            if block is None:
                raise StreamError(f"page for unknown RAM block {name!r}", at, "ram")
        elif block is None:
            raise StreamError("RAM page continues a block but no block was named before", at, "ram")
        if addr + psize > block.length:
            raise StreamError(
                f"page at offset {addr:#x} lies outside RAM block {block.name!r} ({block.length:#x} bytes)", at, "ram"
            )
        pg = addr // psize
        if flags & RAM_ZERO:
            if pos >= n:
                raise TruncatedStream("stream truncated in a zero page", pos, "ram")
            if d[pos] != 0:
                raise StreamError(f"zero page with fill byte {d[pos]:#x} (QEMU sends only 0)", pos, "ram")
            pos += 1
            if block.sent[pg] and not block.zero[pg]:
                block.data[addr : addr + psize] = 0
            block.zero[pg] = True
        elif flags & RAM_PAGE:
            if pos + psize > n:
                raise TruncatedStream(f"stream truncated in the page at {block.name}+{addr:#x}", pos, "ram")
            block.data[addr : addr + psize] = mv[pos : pos + psize]
            block.zero[pg] = False
            pos += psize
        else:
            raise StreamError(f"RAM page header {hdr:#x} is neither a zero page nor a page", at, "ram")
        block.sent[pg] = True


def _ram_blocks(r: _Reader, ram: dict[str, RamBlock], total: int, psize: int, caps: list[str]) -> None:
    left = total
    while left > 0:
        at = r.pos
        name = r.idstr("RAM block name")
        length = r.be(8, f"length of RAM block {name!r}")
        if length > left or length % psize:
            raise StreamError(f"RAM block {name!r} length {length:#x} does not fit the announced total", at, "ram")
        if "x-ignore-shared" in caps:
            r.be(8, "RAM block address")
        if name in ram:
            raise StreamError(f"RAM block {name!r} listed twice", at, "ram")
        try:
            data = np.zeros(length, np.uint8)  # calloc: only the pages written are committed
        except MemoryError:
            raise StreamError(f"RAM block {name!r} of {length:#x} bytes cannot be held here", at, "ram") from None
        ram[name] = RamBlock(name, length, data, np.zeros(length // psize, bool), np.zeros(length // psize, bool))
        left -= length


def _vmsd(r: _Reader, desc: dict[str, Any], out: dict[str, Any], offs: dict[str, tuple[int, int]], prefix: str) -> None:
    """Decode one vmstate description (fields, then the subsections that were sent)."""
    for f in desc.get("fields", []):
        _field(r, f, out, offs, prefix)
    for sub in desc.get("subsections", []):
        at = r.pos
        if r.u8("subsection marker") != SUBSECTION:
            raise StreamError(f"expected subsection {sub['vmsd_name']!r}", at, r.section)
        name = r.idstr("subsection name")
        if name != sub["vmsd_name"]:
            raise StreamError(f"subsection {name!r} where the description has {sub['vmsd_name']!r}", at, r.section)
        r.be(4, "subsection version")
        short = name.split("/")[-1]
        child: dict[str, Any] = {}
        out[short] = child
        _vmsd(r, sub, child, offs, f"{prefix}{short}.")


def _field(r: _Reader, f: dict[str, Any], out: dict[str, Any], offs: dict[str, tuple[int, int]], prefix: str) -> None:
    name, typ = f["name"], f.get("type", "")
    count = int(f.get("array_len", 1))
    if typ == "struct":
        idx = f.get("index")
        elems = []
        for i in range(count):
            key = name if idx is None else f"{name}[{idx}]"
            if "array_len" in f:
                key += f"[{i}]"
            child: dict[str, Any] = {}
            _vmsd(r, f["struct"], child, offs, f"{prefix}{key}.")
            elems.append(child)
        if idx is not None:
            out.setdefault(name, []).extend(elems)
        else:
            out[name] = elems if "array_len" in f else elems[0]
        return
    size = int(f["size"])
    if size < 0 or count < 0:
        raise ValueError(f"field {name!r}: negative size {size} or array_len {count}")
    if typ in _INT_TYPES and _INT_TYPES[typ][0] == size:
        signed = _INT_TYPES[typ][1]
        vals = []
        for i in range(count):
            key = f"{prefix}{name}" + (f"[{i}]" if "array_len" in f else "")
            offs[key] = (r.pos, size)
            raw = r.take(size, f"field {prefix}{name}")
            vals.append(int.from_bytes(raw, "big", signed=signed))
        out[name] = vals if "array_len" in f else vals[0]
    else:
        offs[f"{prefix}{name}"] = (r.pos, size * count)
        out[name] = r.take(size * count, f"field {prefix}{name}")


_MACHINE_RE = re.compile(r"^(?P<board>[a-z0-9-]+?)(?:-(?P<major>\d+)\.(?P<minor>\d+))?$")


def machine_version(machine: str) -> tuple[str, tuple[int, int] | None]:
    """Split a machine type name (``virt-7.2``) into board and version (``("virt", (7, 2))``)."""
    m = _MACHINE_RE.match(machine)
    if not m:
        return machine, None
    if m.group("major") is None:
        return m.group("board"), None
    return m.group("board"), (int(m.group("major")), int(m.group("minor")))
