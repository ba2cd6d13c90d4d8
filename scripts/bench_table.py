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

Usage::

    python scripts/bench_table.py bench.json [more.json ...] [-m REGEX] > table.md
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import OrderedDict
from collections.abc import Iterable

__all__ = ["load", "machine_line", "rows_by_group", "render", "main"]

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
    """group -> rows ``{impl, median_s, n_lpis, ns_per_lpi, lpis_per_s, note}`` in file order."""
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


def render(docs: list[dict], match: str | None = None) -> str:
    """The Markdown text: a machine line per JSON, then one table per group (only groups whose
    name matches the regular expression ``match``, if given)."""
    out: list[str] = []
    for doc in docs:
        out.append(machine_line(doc))
        out.append("")
        for group, rows in rows_by_group(doc).items():
            if match and not re.search(match, group):
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
    return "\n".join(out).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("json", nargs="+", help="pytest-benchmark --benchmark-json output file(s)")
    ap.add_argument("-o", "--output", help="write here instead of stdout")
    ap.add_argument("-m", "--match", help="only groups matching this regular expression, e.g. 'big'")
    a = ap.parse_args(argv)
    text = render(load(a.json), a.match)
    if a.output:
        with open(a.output, "w", encoding="utf-8") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
