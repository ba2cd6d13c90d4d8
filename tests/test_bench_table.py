"""scripts/bench_table.py on a small synthetic pytest-benchmark JSON."""

from __future__ import annotations

import importlib.util
import json
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def bt():
    spec = importlib.util.spec_from_file_location("bench_table", os.path.join(ROOT, "scripts", "bench_table.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _bench(group, impl, median, n_lpis, note=""):
    return {
        "group": group,
        "name": f"test_x[{impl}]",
        "params": {"impl": impl},
        "stats": {"median": median, "mean": median * 1.1, "min": median * 0.9, "rounds": 5},
        "extra_info": {"impl": impl, "n_lpis": n_lpis, "note": note},
    }


def _doc():
    return {
        "machine_info": {
            "node": "testhost",
            "machine": "x86_64",
            "python_implementation": "CPython",
            "python_version": "3.11.7",
            "cpu": {"brand_raw": "Intel(R) Xeon(R) Platinum 8480+", "count": 2, "arch_string_raw": "x86_64"},
        },
        "commit_info": {"id": "0123456789abcdef", "dirty": False},
        "datetime": "2026-11-26T01:00:00.000000",
        "benchmarks": [
            _bench("save host-4096 [ci]", "kernel_loop", 0.010, 1_000_000),
            _bench("save host-4096 [ci]", "engine_many", 0.001, 1_000_000),
            # pure Python on a tenth of the LPIs: per-LPI figures must still compare
            _bench("save host-4096 [ci]", "python", 0.5, 100_000, note="first VMs only"),
            _bench("scan vm-512 [ci]", "numpy", 0.004, 2_000_000),
            _bench("scan vm-512 [ci]", "engine", 0.002, 2_000_000),
            {"group": "broken", "name": "no stats", "stats": None},
        ],
    }


def _table(text: str, group: str) -> dict[str, list[str]]:
    """impl -> cells of the table under the bold group header."""
    lines = text.splitlines()
    i = lines.index(f"**{group}**")
    rows = {}
    for line in lines[i + 4 :]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0].rstrip(" †")] = cells
    return rows


def test_machine_named_from_machine_info(bt):
    line = bt.machine_line(_doc())
    assert "Intel(R) Xeon(R) Platinum 8480+" in line
    assert "2 logical CPUs" in line
    assert "CPython 3.11.7" in line
    assert "commit 0123456789" in line


def test_ratios_per_lpi_against_kernel_loop(bt):
    text = bt.render([_doc()])
    t = _table(text, "save host-4096 [ci]")
    assert set(t) == {"kernel_loop", "engine_many", "python"}
    # ns/LPI = median / n_lpis
    assert t["kernel_loop"][2] == "10"
    assert t["engine_many"][2] == "1"
    assert t["python"][2] == "5,000"
    # speed-up = kernel-loop ns/LPI / this ns/LPI
    assert t["kernel_loop"][4] == "1.00×"
    assert t["engine_many"][4] == "10.00×"
    assert t["python"][4] == "0.00×"
    assert t["engine_many"][3] == "1.00 G"  # LPIs/s
    assert t["python"][1] == "500.00 ms"
    # rows are sorted fastest per LPI first; the note is flagged
    order = [line.split("|")[1].strip() for line in text.split("**save host-4096 [ci]**")[1].splitlines()[4:7]]
    assert order == ["engine_many", "kernel_loop", "python †"]
    assert "† python: first VMs only" in text


def test_group_without_kernel_loop_uses_numpy(bt):
    text = bt.render([_doc()])
    assert re.search(r"\| impl \| median \| ns/LPI \| LPIs/s \| vs numpy \|", text)
    t = _table(text, "scan vm-512 [ci]")
    assert t["engine"][4] == "2.00×"
    assert "**broken**" not in text


def test_cli_writes_file(bt, tmp_path):
    src = tmp_path / "bench.json"
    src.write_text(json.dumps(_doc()))
    out = tmp_path / "table.md"
    assert bt.main([str(src), "-o", str(out)]) == 0
    assert out.read_text().startswith("Machine: Intel(R) Xeon(R) Platinum 8480+")


def test_match_filters_groups(bt):
    text = bt.render([_doc()], match=r"^scan")
    assert "**scan vm-512 [ci]**" in text and "save host-4096" not in text


def _roofline_doc():
    touch = {"n_lpis": 1_000_000, "pt_lines_read": 1000, "pt_lines_written": 600, "vpt_lines_read": 500,
             "state_bytes": 250_000, "state_bytes_bytewise": 2_000_000, "read_only_bytes": 0,
             "written_bytes": 38_400, "bytes_touched": 0}
    touch["read_only_bytes"] = 64 * (1000 - 600) + 64 * 500 + 250_000
    touch["bytes_touched"] = touch["read_only_bytes"] + touch["written_bytes"]

    def probe(kind, threads, fastest, moved):
        b = _bench("roofline host-4096 [big]", f"{kind} x{threads}", fastest / 0.9, None)  # min = 0.9 median
        b["extra_info"].update(kind=kind, threads=threads, bytes_moved=moved, touch=touch)
        return b

    doc = _doc()
    doc["benchmarks"] = [
        _bench("save host-4096 [big]", "engine_many", 0.004, 1_000_000),
        _bench("save host-4096 [big]", "engine_many_packed", 0.003, 1_000_000),
        _bench("save host-4096 [big]", "engine", 0.006, 1_000_000),
        _bench("save host-4096 [big]", "c_kernel_loop", 0.024, 1_000_000),
        probe("stream_read", 1, 0.010, 200e6),  # 20 GB/s
        probe("stream_read", 2, 0.005, 200e6),  # 40 GB/s: the best one counts
        probe("stream_rmw", 2, 0.010, 200e6),  # 20 GB/s
        probe("stream_copy", 2, 0.010, 400e6),
    ]
    return doc, touch


def test_roofline_summary_ratios(bt):
    doc, touch = _roofline_doc()
    (sm,) = bt.roofline_summaries(doc)
    assert sm["tier"] == "big" and sm["engine"] == "engine_many"
    assert sm["c_ratio"] == pytest.approx(6.0)
    roof = touch["read_only_bytes"] / 40e9 + touch["written_bytes"] / 20e9
    assert sm["roofline_s"] == pytest.approx(roof)
    assert sm["roofline_ratio"] == pytest.approx(0.004 / roof)
    assert sm["packed"]["engine_s"] == 0.003 and sm["packed"]["c_ratio"] == pytest.approx(8.0)
    assert sm["packed"]["roofline_ratio"] == pytest.approx(0.003 / roof)
    text = bt.render([doc], summary_only=True)
    assert f"| engine_many | 4.00 ms | 4 | 6.00× | {0.004 / roof:.2f}× |" in text
    assert f"| engine_many_packed | 3.00 ms | 3 | 8.00× | {0.003 / roof:.2f}× |" in text
    assert f"| c_kernel_loop | 24.00 ms | 24 | 1.00× | {0.024 / roof:.2f}× |" in text
    assert "**save host-4096 [big]**" not in text  # summary only: no per-group tables
    full = bt.render([doc])
    assert "**save host-4096 [big]**" in full
    assert "| stream_read x2 | 5.56 ms | 36.0 | 40.0 |" in full  # probes as bandwidths (median, best)


def test_roofline_summary_interleaved_rows(bt):
    doc, _ = _roofline_doc()
    for impl, t, ratio in (("engine_many", 0.004, 2.5), ("engine_many_packed", 0.003, 1.9)):
        b = _bench("roofline-interleaved host-4096 [big]", impl, t, 1_000_000)
        b["extra_info"].update(ratio_median=ratio, roofline_s_median=0.0015)
        doc["benchmarks"].append(b)
    (sm,) = bt.roofline_summaries(doc)
    assert sm["interleaved"]["engine_many_packed"] == {"engine_s": 0.003, "roofline_s": 0.0015, "ratio": 1.9}
    text = bt.render([doc], summary_only=True)
    assert "| engine_many_packed | 3.00 ms | 1.50 ms | 1.90× |" in text
    assert "| engine_many | 4.00 ms | 1.50 ms | 2.50× |" in text


def test_no_summary_without_a_host_save_group(bt):
    assert bt.roofline_summaries(_doc())[0]["roofline_s"] is None  # save group, no roofline group
    assert "roofline" not in bt.render([_doc()])  # nor a C row: no summary printed
    doc = _doc()
    doc["benchmarks"] = [b for b in doc["benchmarks"] if not str(b.get("group", "")).startswith("save")]
    assert bt.roofline_summaries(doc) == []
