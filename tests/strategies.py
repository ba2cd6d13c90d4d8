"""Generators of nasty pending-table scenarios: seeded numpy (:func:`gen_scenario`) and hypothesis
(:func:`scenarios`).

Everything the kernel's loops are sensitive to is a knob:

* LPIs packed into few bytes (INTIDs drawn from narrow clusters; up to 8 LPIs per byte),
* LPIs without target (``target_vcpu == -1``),
* aliasing tables (several vCPUs with one PENDBASER),
* bases exactly 64 KiB apart with out-of-range INTIDs (up to 2**24) landing in another vCPU's
  table (the last writer in walk order wins),
* junk in the non-address PENDBASER bits (63:52 and 15:0), PENDBASER 0 (unprogrammed: table at
  GPA 0), tables at the very top of the 52-bit space,
* tables below/above/straddling the end of RAM, two adjacent slots under one table, a read-only
  slot over part of a table, tables with no RAM at all,
* hw LPIs with a VPT (uint8 ``[n_vcpus, vpt_bytes]``),
* random creation order (rows shuffled), random initial dirty log.

Scenarios stay small (<= a few hundred LPIs, <= 8 vCPUs, slots of a few KiB) so thousands run in
seconds. Slots are sized to the bytes the walks touch, so a deep copy is cheap.
"""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st
from oracle import Scenario, SlotSpec

__all__ = [
    "gen_large_scenario", "gen_scenario", "hand_scenario", "scenarios", "junk_pendbaser", "slot", "touched_gpas",
]

GPA_LIMIT = 1 << 52
SZ_64K = 1 << 16
ADDR_MASK = ((1 << 52) - 1) & ~(SZ_64K - 1)
LPI_MIN = 8192
LPI_LIMIT = 1 << 24
#: INTID stride that moves an LPI's byte exactly 64 KiB further (into the next table)
NEXT_TABLE = SZ_64K * 8


def slot(gpa: int, size: int, *, readonly: bool = False, nonzero: dict | None = None) -> SlotSpec:
    """A SlotSpec of ``size`` zero bytes with ``nonzero = {offset: value}`` set."""
    data = np.zeros(size, dtype=np.uint8)
    for k, v in (nonzero or {}).items():
        data[k] = v
    return SlotSpec(gpa, data, readonly)


def junk_pendbaser(rng: np.random.Generator, base: int) -> int:
    """``base`` (bits 51:16) with random junk in bits 63:52 and 15:0 (PTZ, cacheability...)."""
    hi = int(rng.integers(0, 1 << 12)) << 52
    lo = int(rng.integers(0, 1 << 16))
    return (base & ADDR_MASK) | hi | lo


def touched_gpas(pendbaser, intid, target_vcpu, scan_vcpus=()) -> np.ndarray:
    """GPAs the walks may access: each targeted LPI's byte in its target's table, plus every
    LPI's byte in the tables of ``scan_vcpus`` (the EnableLPIs scan reads them all)."""
    base = np.asarray(pendbaser, dtype=np.uint64) & np.uint64(ADDR_MASK)
    intid = np.asarray(intid, dtype=np.uint64)
    tgt = np.asarray(target_vcpu, dtype=np.int64)
    parts = [base[tgt[tgt >= 0]] + intid[tgt >= 0] // np.uint64(8)]
    for v in scan_vcpus:
        parts.append(base[v] + intid // np.uint64(8))
    return np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.uint64)


def _bases(rng: np.random.Generator, n_vcpus: int, layout: str) -> list[int]:
    """Table base per vCPU (64 KiB aligned)."""
    top = GPA_LIMIT - 4 * SZ_64K
    if layout == "adjacent":  # bases 64 KiB apart: out-of-range INTIDs hit the next table
        b0 = int(rng.integers(0, 1 << 24)) * SZ_64K
        return [b0 + v * SZ_64K for v in range(n_vcpus)]
    if layout == "aliased":  # a few distinct PENDBASERs shared by several vCPUs
        pool = [int(rng.integers(0, 1 << 20)) * SZ_64K for _ in range(int(rng.integers(1, 3)))]
        return [pool[int(rng.integers(0, len(pool)))] for _ in range(n_vcpus)]
    if layout == "unprogrammed":  # some vCPUs never programmed PENDBASER: base 0
        out = []
        for v in range(n_vcpus):
            out.append(0 if rng.random() < 0.5 else (v + 1) * 4 * SZ_64K)
        return out
    if layout == "top":  # at the very top of the 52-bit space (GPAs may pass 2**52)
        return [top - int(rng.integers(0, 64)) * SZ_64K for _ in range(n_vcpus)]
    # "spread": distinct random bases, stride 1..4 x 64 KiB
    b0 = int(rng.integers(0, 1 << 20)) * SZ_64K
    out, b = [], b0
    for _ in range(n_vcpus):
        out.append(b)
        b += int(rng.integers(1, 5)) * SZ_64K
    return out


def _intids(rng: np.random.Generator, n: int, kind: str) -> np.ndarray:
    """``n`` unique INTIDs (fewer if the clusters are too narrow)."""
    if kind == "packed":  # few bytes: INTIDs from 1-4 8-aligned blocks
        blocks = rng.integers(LPI_MIN // 8, LPI_MIN // 8 + 64, size=int(rng.integers(1, 5)))
        cand = (blocks[:, None] * 8 + np.arange(8)[None, :]).reshape(-1)
    elif kind == "oor":  # out-of-range: anywhere up to 2**24, clustered so slots stay small
        starts = rng.integers(LPI_MIN, LPI_LIMIT - 512, size=int(rng.integers(1, 5)))
        cand = (starts[:, None] + np.arange(512)[None, :]).reshape(-1)
    elif kind == "shifted":  # in-range INTIDs plus copies k*64 KiB further (land in table v+k)
        low = rng.integers(LPI_MIN, LPI_MIN + 256, size=max(n // 2, 1))
        k = rng.integers(1, 4, size=low.size)
        cand = np.concatenate([low, low + k * NEXT_TABLE])
    elif kind == "strided":  # one LPI every `stride` INTIDs: arithmetic runs
        stride = int(rng.choice([2, 3, 8, 9, 16]))
        cand = LPI_MIN + int(rng.integers(0, 4096)) + stride * np.arange(n)
    else:  # "dense": a window near the start of the table
        lo = LPI_MIN + int(rng.integers(0, 4096))
        cand = np.arange(lo, lo + max(2 * n, 16))
    cand = np.unique(cand[(cand >= LPI_MIN) & (cand < LPI_LIMIT)])
    take = min(n, cand.size)
    return rng.choice(cand, size=take, replace=False).astype(np.int64)


def _regions(gpas: np.ndarray, gap: int = 4096) -> list[tuple[int, int]]:
    """Merge sorted GPAs into inclusive [lo, hi] regions (split where they are > gap apart)."""
    out: list[tuple[int, int]] = []
    for g in (int(x) for x in gpas):
        if out and g - out[-1][1] <= gap:
            out[-1] = (out[-1][0], g)
        else:
            out.append((g, g))
    return out


def _cover(rng: np.random.Generator, lo: int, hi: int, p_fault: float, density: float) -> list[SlotSpec]:
    """Slots over the inclusive region [lo, hi]; with probability ``p_fault`` part (or all) of
    it is left unmapped or read-only."""
    pad_lo = int(rng.integers(0, 300))
    pad_hi = int(rng.integers(0, 300))
    a, b = max(lo - pad_lo, 0), min(hi + 1 + pad_hi, GPA_LIMIT)
    if a >= b:
        return []

    def mk(x: int, y: int, ro: bool = False) -> SlotSpec:
        data = (rng.random(y - x) < density).astype(np.uint8) * rng.integers(0, 256, y - x, dtype=np.uint8)
        if rng.random() < 0.5:  # more set bits: stored bits differ from the latch more often
            data |= (rng.random(y - x) < density).astype(np.uint8) * np.uint8(0xFF)
        return SlotSpec(x, data.astype(np.uint8), ro)

    if rng.random() < p_fault:
        kinds = ["end", "start", "readonly", "hole", "none"]
    else:
        kinds = ["full", "split"]
    kind = kinds[int(rng.integers(0, len(kinds)))]
    cut = int(rng.integers(lo, hi + 1)) if hi > lo else lo
    cut = min(max(cut, a + 1), b - 1) if b - a > 1 else a
    if kind == "full" or b - a < 2:
        return [mk(a, b)]
    if kind == "split":  # two adjacent slots under one table
        return [mk(a, cut), mk(cut, b)]
    if kind == "end":  # end of RAM in the middle of the table
        return [mk(a, cut)]
    if kind == "start":  # RAM starts in the middle of the table
        return [mk(cut, b)]
    if kind == "readonly":  # a read-only slot over part of the table
        ro_first = rng.random() < 0.5
        return [mk(a, cut, ro_first), mk(cut, b, not ro_first)]
    if kind == "hole":
        c2 = min(cut + int(rng.integers(1, 4)), b)
        return [mk(a, cut)] + ([mk(c2, b)] if c2 < b else [])
    return []  # "none": no RAM at all under this table


def gen_scenario(
    rng: np.random.Generator,
    *,
    max_lpis: int = 200,
    max_vcpus: int = 8,
    layout: str | None = None,
    intid_kind: str | None = None,
    clean: bool | None = None,
    p_none: float | None = None,
    p_hw: float | None = None,
    junk: bool | None = None,
    scan_vcpus: tuple | None = None,
    name: str = "",
) -> Scenario:
    """A random nasty scenario. Every ``None`` knob is drawn from ``rng``.

    Parameters
    ----------
    rng : numpy.random.Generator
    max_lpis, max_vcpus : int
        Size bounds.
    layout : {"spread", "adjacent", "aliased", "unprogrammed", "top"}
        How the vCPUs' table bases relate.
    intid_kind : {"dense", "packed", "oor", "shifted", "strided"}
        How INTIDs are drawn.
    clean : bool
        True: every touched byte is in writable RAM (no fault possible, except for GPAs past
        2**52 with ``layout="top"``).
    p_none, p_hw : float
        Probability that an LPI has no target / is hw.
    junk : bool
        Junk in PENDBASER bits 63:52 and 15:0.
    scan_vcpus : tuple of int
        vCPUs whose tables get RAM for every LPI (EnableLPIs scan); default random.
    """
    n_vcpus = int(rng.integers(1, max_vcpus + 1))
    layout = layout or ["spread", "adjacent", "aliased", "unprogrammed", "top"][int(rng.integers(0, 5))]
    intid_kind = intid_kind or ["dense", "packed", "oor", "shifted", "strided"][int(rng.integers(0, 5))]
    clean = bool(rng.random() < 0.5) if clean is None else clean
    p_none = float(rng.choice([0.0, 0.1, 0.4])) if p_none is None else p_none
    p_hw = float(rng.choice([0.0, 0.3, 0.8])) if p_hw is None else p_hw
    junk = bool(rng.random() < 0.4) if junk is None else junk

    bases = _bases(rng, n_vcpus, layout)
    pendbaser = np.array(
        [junk_pendbaser(rng, b) if junk else b for b in bases], dtype=np.uint64
    )
    n = int(rng.integers(1, max_lpis + 1))
    intid = _intids(rng, n, intid_kind)
    n = intid.size
    rng.shuffle(intid)  # random creation order
    target = rng.integers(0, n_vcpus, size=n).astype(np.int64)
    if intid_kind == "shifted" and rng.random() < 0.7:
        # copies k*64 KiB further target vCPU v-k so they collide with vCPU v's LPIs
        target = np.where(intid >= NEXT_TABLE, 0, target)
    target[rng.random(n) < p_none] = -1
    latch = rng.random(n) < rng.choice([0.1, 0.5, 0.9])
    hw = rng.random(n) < p_hw
    hw &= intid < (1 << 17)  # keep VPTs small (16 KiB per vPE)
    vpt = None
    if hw.any():
        width = int(intid[hw].max()) // 8 + 1 + int(rng.integers(0, 16))
        vpt = (rng.random((n_vcpus, width)) < 0.5).astype(np.uint8) * rng.integers(
            0, 256, (n_vcpus, width), dtype=np.uint8
        )
        vpt = vpt.astype(np.uint8)

    if scan_vcpus is None:
        scan_vcpus = tuple(v for v in range(n_vcpus) if rng.random() < 0.5)
    gpas = touched_gpas(pendbaser, intid, target, scan_vcpus)
    density = float(rng.choice([0.05, 0.3, 0.7]))
    p_fault = 0.0 if clean else float(rng.choice([0.05, 0.2, 0.6]))
    slots: list[SlotSpec] = []
    for lo, hi in _regions(gpas):
        if lo >= GPA_LIMIT:
            continue
        for s in _cover(rng, lo, min(hi, GPA_LIMIT - 1), p_fault, density):
            if slots and s.gpa < slots[-1].end:  # keep slots disjoint (pads may overlap)
                if s.end <= slots[-1].end:
                    continue
                s = SlotSpec(slots[-1].end, s.data[slots[-1].end - s.gpa :], s.readonly)
            if s.data.size:
                slots.append(s)
    if rng.random() < 0.3:  # a random initial dirty log
        for s in slots:
            npages = ((s.end - 1) >> 12) - (s.gpa >> 12) + 1
            s.dirty = rng.random(npages) < 0.3
    return Scenario(slots, pendbaser, intid, target, latch, hw, vpt,
                    name or f"{layout}/{intid_kind}/{'clean' if clean else 'faulty'}")


@st.composite
def scenarios(draw, max_lpis: int = 48, max_vcpus: int = 8) -> Scenario:
    """Hypothesis strategy: structural knobs drawn by hypothesis (so they shrink), bulk arrays
    from a drawn seed."""
    knobs = dict(
        layout=draw(st.sampled_from(["spread", "adjacent", "aliased", "unprogrammed", "top"])),
        intid_kind=draw(st.sampled_from(["dense", "packed", "oor", "shifted", "strided"])),
        clean=draw(st.booleans()),
        p_none=draw(st.sampled_from([0.0, 0.2, 0.5])),
        p_hw=draw(st.sampled_from([0.0, 0.5, 1.0])),
        junk=draw(st.booleans()),
        max_lpis=draw(st.integers(1, max_lpis)),
        max_vcpus=draw(st.integers(1, max_vcpus)),
    )
    seed = draw(st.integers(0, 2**32 - 1))
    return gen_scenario(np.random.default_rng(seed), **knobs, name=f"hyp seed={seed}")


def hand_scenario(rows, pendbaser, slots, vpt=None, name: str = "hand") -> Scenario:
    """A hand-written scenario. ``rows``: (intid, target_vcpu, pending_latch, hw) in creation
    order; ``slots``: SlotSpecs (see :func:`slot`)."""
    a = np.array(rows, dtype=np.int64).reshape(-1, 4)
    return Scenario(list(slots), np.array(pendbaser, dtype=np.uint64), a[:, 0], a[:, 1],
                    a[:, 2].astype(bool), a[:, 3].astype(bool), vpt, name)


LARGE_SHAPES = ("stress_rr", "blocked", "shuffled", "strided", "two_slots", "late_fault")


def gen_large_scenario(rng: np.random.Generator, n_lpis: int, shape: str, n_vcpus: int = 8) -> Scenario:
    """A big scenario (tens of thousands of LPIs) shaped like real tables, to exercise the
    engine's run compression, work-unit splitting, write-back queues and multi-slot paths.

    Shapes: ``stress_rr`` (vgic_lpi_stress: INTIDs round-robined over vCPUs, creation order =
    INTID order), ``blocked`` (contiguous INTID blocks per vCPU), ``shuffled`` (random creation
    order and targets), ``strided`` (INTIDs with a stride > 1, one LPI every few bytes),
    ``two_slots`` (every table split over two adjacent slots, some untargeted LPIs),
    ``late_fault`` (RAM of one table ends near its end: the fault comes late in the walk).
    """
    stride = int(rng.choice([2, 8, 9, 64])) if shape == "strided" else 1
    intid = LPI_MIN + np.arange(n_lpis, dtype=np.int64) * stride
    if shape == "blocked":
        target = (np.arange(n_lpis) * n_vcpus) // n_lpis
    else:
        target = np.arange(n_lpis) % n_vcpus
    if shape == "shuffled":
        target = rng.integers(0, n_vcpus, n_lpis)
        perm = rng.permutation(n_lpis)
        intid, target = intid[perm], target[perm]
    if shape == "two_slots":
        target = np.where(rng.random(n_lpis) < 0.05, -1, target)
    table = (int(intid.max()) // 8 + 1 + 0xFFFF) & ~0xFFFF
    base0 = 0x4000_0000
    bases = [base0 + v * table for v in range(n_vcpus)]
    pendbaser = np.array(bases, dtype=np.uint64)
    latch = rng.random(n_lpis) < 0.5
    hw = rng.random(n_lpis) < (0.3 if shape in ("stress_rr", "shuffled") else 0.0)
    vpt = None
    if hw.any():
        vpt = rng.integers(0, 256, (n_vcpus, int(intid.max()) // 8 + 1), dtype=np.uint8)
    data = (rng.random(n_vcpus * table) < 0.5).astype(np.uint8) * rng.integers(0, 256, n_vcpus * table,
                                                                              dtype=np.uint8)
    if shape == "two_slots":
        cuts = sorted({int(rng.integers(1, n_vcpus * table)) for _ in range(2 * n_vcpus)})
        edges = [0, *cuts, n_vcpus * table]
        slots = [SlotSpec(base0 + a, data[a:b].copy(), False) for a, b in zip(edges[:-1], edges[1:], strict=True)]
    elif shape == "late_fault":
        v = int(rng.integers(0, n_vcpus))
        end = v * table + 1024 + int(0.9 * (int(intid.max()) // 8 - 1024))
        slots = [SlotSpec(base0, data[:end].copy(), False)]
        if v + 1 < n_vcpus:
            slots.append(SlotSpec(base0 + (v + 1) * table, data[(v + 1) * table :].copy(), False))
    else:
        slots = [SlotSpec(base0, data, False)]
    return Scenario(slots, pendbaser, intid, target.astype(np.int64), latch, hw, vpt, f"large/{shape}/{n_lpis}")
