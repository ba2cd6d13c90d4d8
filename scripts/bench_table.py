#!/usr/bin/env python3
"""Turn pytest-benchmark ``--benchmark-json`` output into Markdown tables for the README.

One table per benchmark group (a scenario, an operation and a size tier), one row per
implementation, sorted fastest first per LPI::

    | impl | median | ns/LPI | LPIs/s | vs kernel loop |

* ``median``: pytest-benchmark's median round time.
* ``ns/LPI``, ``LPIs/s``: from ``extra_info["n_lpis"]`` (each implementation's own LPI count,
  so an implementation run on a subset, e.g. pure Python at full size, stays comparable).
* ``vs kernel loop``: speed-up per LPI relative to the ``kernel_loop`` row of the same group
  (``kernel loop ns/LPI / this ns/LPI``; > 1 is faster). Groups without a kernel-loop row
  use ``numpy`` (else ``python``) as the reference and say so in the header.

The machine is named from the JSON's ``machine_info`` (CPU brand, logical CPUs, Python) and the
run's date and commit from ``datetime``/``commit_info``.

When a JSON holds both ``save host-4096 [tier]`` and ``roofline host-4096 [tier]`` (from
``benchmarks/test_bench_roofline.py``, same run), a summary per tier follows the tables: the
engine (``engine_many``, else ``engine``) against the kernel's loop in plain C (``c_kernel_loop``:
``C time / engine time``) and against the roofline time of the save (``engine time / roofline
time``; 1.0 would be at the roofline). The roofline time is ``read_only_bytes / read bandwidth +
written_bytes / read-modify-write bandwidth``: the bytes the save must touch, counted from the
scenario (``benchmarks/roofline.py``), at the best bandwidths the stream probes measured (fastest
round, best thread count).

Usage::

    python scripts/bench_table.py bench.json [more.json ...] [-m REGEX] [--summary] > table.md
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import OrderedDict
from collections.abc import Iterable

__all__ = ["load", "machine_line", "rows_by_group", "roofline_summaries", "render", "main"]

REFERENCE_IMPLS = ("kernel_loop", "numpy", "python")


def load(paths: Iterable[str]) -> list[dict]:
    """Read pytest-benchmark JSON files."""
    out = []
    for p in paths:
        with open(p, encoding="utf-8") as f:
            out.append(json.load(f))
    return out


def machine_line(doc: dict) -> str:
    """One line naming the machine and the run, from ``machine_info``/``commit_info``."""
    mi = doc.get("machine_info") or {}
    cpu = mi.get("cpu") or {}
    brand = cpu.get("brand_raw") or cpu.get("brand") or mi.get("processor") or "unknown CPU"
    ncpu = cpu.get("count")
    arch = cpu.get("arch_string_raw") or mi.get("machine") or ""
    parts = [brand + (f", {ncpu} logical CPUs" if ncpu else "") + (f" ({arch})" if arch else "")]
    if mi.get("node"):
        parts.append(f"host {mi['node']}")
    if mi.get("python_implementation") or mi.get("python_version"):
        parts.append(f"{mi.get('python_implementation', 'Python')} {mi.get('python_version', '')}".strip())
    ci = doc.get("commit_info") or {}
    if ci.get("id"):
        parts.append(f"commit {ci['id'][:10]}{' (dirty)' if ci.get('dirty') else ''}")
    if doc.get("datetime"):
        parts.append(doc["datetime"][:19].replace("T", " "))
    return "Machine: " + "; ".join(parts)


def _impl(b: dict) -> str:
    ei = b.get("extra_info") or {}
    if ei.get("impl"):
        return str(ei["impl"])
    params = b.get("params") or {}
    if params.get("impl"):
        return str(params["impl"])
    return b.get("name", "?")


def rows_by_group(doc: dict) -> OrderedDict[str, list[dict]]:
    """group -> rows ``{impl, median_s, n_lpis, ns_per_lpi, lpis_per_s, note, bytes_moved, min_s}`` in
    file order (``bytes_moved``: bandwidth probes only, else None; ``min_s``: fastest round)."""
    groups: OrderedDict[str, list[dict]] = OrderedDict()
    for b in doc.get("benchmarks", []):
        st = b.get("stats") or {}
        med = st.get("median")
        if med is None:
            continue
        ei = b.get("extra_info") or {}
        n = ei.get("n_lpis")
        row = {
            "impl": _impl(b),
            "median_s": float(med),
            "n_lpis": int(n) if n else None,
            "ns_per_lpi": float(med) * 1e9 / int(n) if n else None,
            "lpis_per_s": int(n) / float(med) if n and med > 0 else None,
            "note": ei.get("note") or "",
            "bytes_moved": ei.get("bytes_moved"),
            "min_s": float(st["min"]) if st.get("min") else None,
        }
        groups.setdefault(b.get("group") or b.get("name", "?"), []).append(row)
    return groups


def _fmt_time(s: float) -> str:
    if s >= 1:
        return f"{s:.2f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.2f} ms"
    return f"{s * 1e6:.1f} µs"


def _fmt_rate(r: float | None) -> str:
    if r is None:
        return "—"
    for unit, k in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if r >= k:
            return f"{r / k:.2f} {unit}"
    return f"{r:.0f}"


def _fmt_ns(x: float | None) -> str:
    if x is None:
        return "—"
    return f"{x:.3g}" if x < 100 else f"{x:,.0f}"


def _stream_bw(benches: list[dict], kind: str) -> tuple[float | None, list[int]]:
    """Best bandwidth over the rows of one probe kind (bytes/s in each row's fastest round, as
    STREAM reports it: a bound is what the machine can do), and their thread counts."""
    best, threads = None, []
    for b in benches:
        ei = b.get("extra_info") or {}
        st = b.get("stats") or {}
        t = st.get("min") or st.get("median")
        if ei.get("kind") != kind or not t or not ei.get("bytes_moved"):
            continue
        bw = float(ei["bytes_moved"]) / float(t)
        threads.append(int(ei.get("threads", 1)))
        best = bw if best is None else max(best, bw)
    return best, sorted(set(threads))


def roofline_summaries(doc: dict, scenario: str = "host-4096") -> list[dict]:
    """Per tier with a save group and a roofline group for ``scenario`` in ``doc``: a dict with
    ``tier``, ``engine`` (impl name), ``n_lpis``, ``engine_s``, ``c_s`` (None without a c_kernel_loop row),
    ``c_ratio`` (C time / engine time), ``roofline_s``, ``roofline_ratio`` (engine time /
    roofline time), ``read_bw``, ``rmw_bw``, ``copy_bw`` (bytes/s), ``threads`` and ``touch``
    (the byte counts the roofline benchmark recorded); ``packed``: the same three figures
    (``engine_s``, ``c_ratio``, ``roofline_ratio``) for ``engine_many_packed`` (packed LPI
    tables), or None without that row; ``interleaved``: per implementation of the
    ``roofline-interleaved`` group (probes and save alternated round by round), its median save
    time, median roofline time and median per-round ratio (``engine_s``, ``roofline_s``,
    ``ratio``)."""
    by_group: dict[str, list[dict]] = {}
    for b in doc.get("benchmarks", []):
        if (b.get("stats") or {}).get("median") is not None:
            by_group.setdefault(b.get("group") or "", []).append(b)
    out = []
    for group, benches in by_group.items():
        m = re.fullmatch(rf"save {re.escape(scenario)} \[(.+)\]", group)
        if not m:
            continue
        tier = m.group(1)
        roof = by_group.get(f"roofline {scenario} [{tier}]", [])
        med = {_impl(b): float(b["stats"]["median"]) for b in benches}
        engine = next((e for e in ("engine_many", "engine") if e in med), None)
        touches = [(b.get("extra_info") or {}).get("touch") for b in roof]
        touch = next((t for t in touches if t), None)
        read_bw, th_r = _stream_bw(roof, "stream_read")
        rmw_bw, th_w = _stream_bw(roof, "stream_rmw")
        copy_bw, _ = _stream_bw(roof, "stream_copy")
        if engine is None:
            continue
        e_s = med[engine]
        c_s = med.get("c_kernel_loop")
        n_lpis = next(((b.get("extra_info") or {}).get("n_lpis") for b in benches if _impl(b) == engine), None)
        roof_s = None
        if touch and read_bw and rmw_bw:
            roof_s = touch["read_only_bytes"] / read_bw + touch["written_bytes"] / rmw_bw
        inter = {}
        for b in by_group.get(f"roofline-interleaved {scenario} [{tier}]", []):
            x = b.get("extra_info") or {}
            if x.get("ratio_median") is not None:
                inter[_impl(b)] = {"engine_s": float(b["stats"]["median"]), "roofline_s": x["roofline_s_median"],
                                   "ratio": x["ratio_median"]}
        p_s = med.get("engine_many_packed")
        packed = None if p_s is None else {
            "engine_s": p_s, "c_ratio": c_s / p_s if c_s and p_s > 0 else None,
            "roofline_ratio": p_s / roof_s if roof_s else None,
        }
        out.append({
            "tier": tier, "engine": engine, "n_lpis": n_lpis, "engine_s": e_s, "c_s": c_s,
            "c_ratio": c_s / e_s if c_s and e_s > 0 else None,
            "roofline_s": roof_s, "roofline_ratio": e_s / roof_s if roof_s else None,
            "read_bw": read_bw, "rmw_bw": rmw_bw, "copy_bw": copy_bw,
            "threads": sorted(set(th_r) | set(th_w)), "touch": touch, "packed": packed, "interleaved": inter,
        })
    return out


def _render_summary(sm: dict, scenario: str) -> list[str]:
    t = sm["touch"] or {}
    n = sm["n_lpis"] or t.get("n_lpis")

    def ns(sec):
        return _fmt_ns(sec * 1e9 / n) if n and sec is not None else "—"

    def vs(r, fmt):
        return fmt.format(r) if r is not None else "—"

    out = [f"**{scenario} [{sm['tier']}]: the engine against the kernel's loop in plain C and the memory roofline "
           "(same run)**", "", "| | median | ns/LPI | C loop time / this | this / roofline time |",
           "|---|---:|---:|---:|---:|"]
    engines = [(sm["engine"], sm["engine_s"], sm["c_ratio"], sm["roofline_ratio"])]
    if sm.get("packed"):
        p = sm["packed"]
        engines.append(("engine_many_packed", p["engine_s"], p["c_ratio"], p["roofline_ratio"]))
    for name, sec, cr, rr in engines:
        out.append(f"| {name} | {_fmt_time(sec)} | {ns(sec)} | {vs(cr, '{:.2f}×')} | {vs(rr, '{:.2f}×')} |")
    if sm["c_s"] is not None:
        out.append(f"| c_kernel_loop | {_fmt_time(sm['c_s'])} | {ns(sm['c_s'])} | 1.00× | "
                   f"{vs(sm['c_s'] / sm['roofline_s'] if sm['roofline_s'] else None, '{:.2f}×')} |")
    if sm["roofline_s"] is not None:
        out.append(f"| roofline | {_fmt_time(sm['roofline_s'])} | {ns(sm['roofline_s'])} | — | 1.00× |")
        th = ", ".join(str(x) for x in sm["threads"])
        copy = f"; copy {sm['copy_bw'] / 1e9:.1f} GB/s (read + write)" if sm["copy_bw"] else ""
        out.append("")
        out.append(
            f"Roofline: the save must touch {t['bytes_touched'] / 1e6:.2f} MB "
            f"({t['bytes_touched'] / n:.1f} B/LPI): {t['pt_lines_read']:,} pending-table cache lines read, "
            f"{t['pt_lines_written']:,} of them written back, {t['vpt_lines_read']:,} VPT lines read, "
            f"{t['state_bytes']:,} bytes of per-LPI state (pending_latch and hw as bits); measured read "
            f"{sm['read_bw'] / 1e9:.1f} GB/s, in-place read-modify-write {sm['rmw_bw'] / 1e9:.1f} GB/s "
            f"(best over {th} threads){copy}."
        )
    if sm.get("interleaved"):
        out += ["", "Interleaved (each round: fresh tables, then the read and read-modify-write probes, then the save; "
                "the ratio is the median over rounds of save time / that round's roofline time):", "",
                "| | save median | roofline median | save / roofline (median of rounds) |", "|---|---:|---:|---:|"]
        for name, x in sm["interleaved"].items():
            out.append(f"| {name} | {_fmt_time(x['engine_s'])} | {_fmt_time(x['roofline_s'])} | {x['ratio']:.2f}× |")
    out.append("")
    return out


def render(docs: list[dict], match: str | None = None, summary_only: bool = False) -> str:
    """The Markdown text: a machine line per JSON, then one table per group (only groups whose
    name matches the regular expression ``match``, if given), then the host-4096 summaries
    (engine vs plain C loop vs roofline) of the tiers that have the data. ``summary_only``: the
    machine line and the summaries only."""
    out: list[str] = []
    for doc in docs:
        out.append(machine_line(doc))
        out.append("")
        for group, rows in rows_by_group(doc).items():
            if summary_only or (match and not re.search(match, group)):
                continue
            if group.startswith("roofline "):  # bandwidth probes: GB/s, not per-LPI figures
                out.extend([f"**{group}**", "", "| probe | median | GB/s (median) | GB/s (best) |",
                            "|---|---:|---:|---:|"])
                for r in rows:
                    mv = r["bytes_moved"]
                    bw = f"{mv / r['median_s'] / 1e9:.1f}" if mv else "—"
                    best = f"{mv / r['min_s'] / 1e9:.1f}" if mv and r["min_s"] else "—"
                    out.append(f"| {r['impl']} | {_fmt_time(r['median_s'])} | {bw} | {best} |")
                out.append("")
                continue

            def per_lpi(r):
                return r["ns_per_lpi"] if r["ns_per_lpi"] is not None else r["median_s"]

            ref_name = next((n for n in REFERENCE_IMPLS if any(r["impl"] == n for r in rows)), None)
            ref = next((r for r in rows if r["impl"] == ref_name), None)
            col = f"vs {ref_name.replace('_', ' ')}" if ref_name else "vs kernel loop"
            out.append(f"**{group}**")
            out.append("")
            out.append(f"| impl | median | ns/LPI | LPIs/s | {col} |")
            out.append("|---|---:|---:|---:|---:|")
            notes = []
            for r in sorted(rows, key=per_lpi):
                ratio = "—"
                if ref is not None and per_lpi(r) > 0:
                    ratio = f"{per_lpi(ref) / per_lpi(r):.2f}×"
                name = r["impl"]
                if r["note"]:
                    notes.append(f"{name}: {r['note']}")
                    name += " †"
                out.append(
                    f"| {name} | {_fmt_time(r['median_s'])} | {_fmt_ns(r['ns_per_lpi'])} | "
                    f"{_fmt_rate(r['lpis_per_s'])} | {ratio} |"
                )
            for n in notes:
                out.append(f"\n† {n}")
            out.append("")
        for sm in roofline_summaries(doc):
            if match and not re.search(match, f"save host-4096 [{sm['tier']}]"):
                continue
            if sm["c_s"] is None and sm["roofline_s"] is None:
                continue  # nothing to set the engine against
            out.extend(_render_summary(sm, "host-4096"))
    return "\n".join(out).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("json", nargs="+", help="pytest-benchmark --benchmark-json output file(s)")
    ap.add_argument("-o", "--output", help="write here instead of stdout")
    ap.add_argument("-m", "--match", help="only groups matching this regular expression, e.g. 'big'")
    ap.add_argument("--summary", action="store_true",
                    help="only the host-4096 summary: engine vs the plain C loop vs the memory roofline")
    a = ap.parse_args(argv)
    text = render(load(a.json), a.match, a.summary)
    if a.output:
        with open(a.output, "w", encoding="utf-8") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
