"""Write a parsed migration stream back, with changed RAM or device fields.

Used to make small test fixtures from real streams (:func:`minimize`: every RAM page the GIC does
not use becomes a zero page, which QEMU still loads) and to build streams in the KVM table layout
from a TCG stream. Device sections, the configuration and the JSON description are copied byte for
byte (patched fields aside); the RAM is re-sent as one pass: the ``START`` chunk (the block list) as
it was, then every page of every block in the first ``PART``/``END`` chunk, zero pages as such.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from vlpi.qemu.stream import (
    RAM_CONTINUE,
    RAM_EOS,
    RAM_PAGE,
    RAM_ZERO,
    SECTION_END,
    SECTION_FOOTER,
    SECTION_START,
    Stream,
)

if TYPE_CHECKING:
    from vlpi.qemu.gic import GicState


def _ram_pass(stream: Stream, ram: dict[str, np.ndarray]) -> bytes:
    ps = stream.page_size
    out = bytearray()
    for name, block in stream.ram.items():
        data = ram.get(name, block.data)
        if data.dtype != np.uint8 or data.size != block.length:
            raise ValueError(f"RAM block {name!r}: need {block.length} uint8 bytes, got {data.size} {data.dtype}")
        pages = data.reshape(-1, ps)
        # ignore: numpy types any(axis=...) as "a bool or an array"; over axis 1 of a 2-D array it is an array
        nonzero: npt.NDArray[np.bool_] = pages.any(axis=1)  # type: ignore[assignment]
        idstr = bytes([len(name)]) + name.encode("ascii")
        for pg in range(len(pages)):
            flags = RAM_PAGE if nonzero[pg] else RAM_ZERO
            if pg:
                flags |= RAM_CONTINUE
            out += (pg * ps | flags).to_bytes(8, "big")
            if not pg:
                out += idstr
            out += pages[pg].tobytes() if nonzero[pg] else b"\0"
    return bytes(out)


def write_stream(
    stream: Stream,
    *,
    ram: dict[str, np.ndarray] | None = None,
    fields: dict[tuple[str, int, str], int] | None = None,
) -> bytes:
    """The bytes of ``stream`` with RAM blocks and device fields replaced.

    Parameters
    ----------
    stream : Stream
        A stream from :func:`vlpi.qemu.read_stream`.
    ram : dict of str to numpy.ndarray, optional
        New content (uint8, the block's length) per RAM block name; others keep theirs.
    fields : dict of (section name, instance id, field key) to int, optional
        New values for decoded integer fields, keyed as in ``Section.offsets``
        (e.g. ``("arm_gicv3_its", 0, "iidr")``, ``("arm_gicv3", 0, "cpu[1].gicr_ctlr")``).
    """
    ram = ram or {}
    raw = bytearray(stream.raw)
    for (name, inst, key), value in (fields or {}).items():
        sec = stream.device(name, inst)
        if sec.offsets is None or key not in sec.offsets:
            raise KeyError(f"section {name!r} has no decoded field {key!r}")
        pos, size = sec.offsets[key]
        raw[pos : pos + size] = int(value).to_bytes(size, "big", signed=int(value) < 0)
    out = bytearray(raw[: stream.sections[0].offset])
    sent = False
    for s in stream.sections:
        if s.name != "ram" or s.kind == SECTION_START:
            out += raw[s.offset : s.end]
            continue
        if sent and s.kind != SECTION_END:
            continue
        out += bytes([s.kind]) + s.section_id.to_bytes(4, "big")
        if not sent:
            out += _ram_pass(stream, ram)
            sent = True
        out += RAM_EOS.to_bytes(8, "big") + bytes([SECTION_FOOTER]) + s.section_id.to_bytes(4, "big")
    out += raw[stream.sections[-1].end :]
    return bytes(out)


def gic_ranges(gic: GicState) -> list[tuple[int, int]]:
    """Guest-physical ranges [start, end) that hold GIC state: the configuration table, every
    pending table, the command queue and the ITS tables (device table with its level-2 pages,
    ITTs, collection table)."""
    from vlpi.qemu.gic import MIN_LPI, decode_baser

    out = []
    for rd in gic.redistributors:
        out.append((rd.config_table, rd.config_table + (1 << rd.id_bits) - MIN_LPI))
        out.append((rd.pending_table, rd.pending_table + (1 << rd.id_bits) // 8))
    cb = gic.its.cbaser
    if cb >> 63:
        base = cb & 0x000F_FFFF_FFFF_F000
        out.append((base, base + ((cb & 0xFF) + 1) * 4096))
    for i, b in enumerate(gic.its.baser):
        t = decode_baser(i, b)
        if not t.valid:
            continue
        out.append((t.base, t.base + t.pages * t.page_size))
        if t.indirect:
            l1 = gic.memory.read(t.base, t.pages * t.page_size).view("<u8")
            for w in l1[(l1 >> np.uint64(63)).astype(bool)]:
                a = int(w) & 0x000F_FFFF_FFFF_0000
                out.append((a, a + t.page_size))
    for dev in gic.devices:
        out.append((dev.itt_addr, dev.itt_addr + dev.itt_bytes))
    return out


def minimize(gic: GicState) -> bytes:
    """The stream with every RAM page outside :func:`gic_ranges` zeroed (and all RAM blocks not
    mapped into guest memory zeroed): a small fixture that still carries the whole GIC."""
    ps = gic.stream.page_size
    ram = {}
    for name, block in gic.stream.ram.items():
        ram[name] = np.zeros(block.length, np.uint8)
    for slot in gic.memory.slots:
        name = next(n for n, b in gic.stream.ram.items() if b.data is slot.data or np.shares_memory(b.data, slot.data))
        keep = np.zeros(slot.size // ps, bool)
        for lo, hi in gic_ranges(gic):
            a, b = max(lo, slot.gpa), min(hi, slot.gpa + slot.size)
            if a < b:
                keep[(a - slot.gpa) // ps : (b - 1 - slot.gpa) // ps + 1] = True
        pages = ram[name].reshape(-1, ps)
        pages[keep] = slot.data.reshape(-1, ps)[keep]
    return write_stream(gic.stream, ram=ram)
