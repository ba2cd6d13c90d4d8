"""The notebooks as files: committed without outputs, sized by VLPI_NB_SCALE only, through the shared
helpers; and the figure check the helpers apply to every plot. (The notebooks themselves run under
nbmake: ``notebooks`` is in ``testpaths``.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NB_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NB_DIR.glob("*.ipynb"))


def test_there_are_notebooks():
    names = {p.stem for p in NOTEBOOKS}
    assert {"quickstart", "unmapped_window", "scaling", "qemu_stream"} <= names, names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_outputs_stripped(path):
    nb = json.loads(path.read_text())
    for k, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "code":
            continue
        assert cell.get("outputs") == [], f"{path.name} cell {k} has outputs"
        assert cell.get("execution_count") is None, f"{path.name} cell {k} has an execution count"
        assert not cell.get("metadata"), f"{path.name} cell {k} has metadata {cell['metadata']}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_nbstripout_finds_nothing_to_strip(path):
    pytest.importorskip("nbstripout")
    p = subprocess.run([sys.executable, "-m", "nbstripout", "--dry-run", str(path)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert "Dry run: would have stripped" not in p.stdout, p.stdout


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_shared_helpers_scale_cache_style(path):
    code = "\n".join("".join(c["source"]) for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code")
    assert "import _nbhelpers as H" in code and "H.style()" in code
    assert "NUMBA_CACHE_DIR" not in code  # the cache directory is the package's rule, never a notebook's
    assert "VLPI_NB_SCALE" not in code.replace("set VLPI_NB_SCALE", "")  # sized through H.pick / H.SCALE only
    assert "plt.show()" not in code  # every figure goes through H.show, which checks it
    assert code.count("plt.subplots(") == code.count("H.show(")


def _helpers():
    sys.path.insert(0, str(NB_DIR))
    try:
        import _nbhelpers
    finally:
        sys.path.remove(str(NB_DIR))
    return _nbhelpers


def test_figure_check_names_what_is_missing():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    H = _helpers()
    fig, ax = plt.subplots()
    ax.plot([1, 2], [3, 4])
    got = H.check_figure(fig, "CI tier")
    assert "axis 0 has no x label" in got and "axis 0 has no y label" in got and "axis 0 has no title" in got
    assert "no title states the scale 'CI tier'" in got
    ax.set_xlabel("vPEs")
    ax.set_ylabel("time (ms)")
    ax.set_title("save (CI tier)")
    assert H.check_figure(fig, "CI tier") == []
    with pytest.raises(ValueError, match="no title states the scale 'full tier'"):
        H.show(fig, "x", scale="full tier")
    plt.close("all")


def test_scale_variable():
    code = ("import sys; sys.path.insert(0, 'notebooks'); import _nbhelpers as H; "
            "print(H.SCALE, H.TIER, H.pick(ci=1, full=2))")
    env = dict(os.environ)
    for value, want in (("", "ci CI tier 1"), ("full", "full full tier 2"), ("big", "full full tier 2")):
        p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**env, "VLPI_NB_SCALE": value},
                           capture_output=True, text=True)
        assert p.stdout.strip() == want, p.stderr
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**env, "VLPI_NB_SCALE": "huge"},
                       capture_output=True, text=True)
    assert p.returncode != 0 and "VLPI_NB_SCALE must be 'ci' or 'full', got 'huge'" in p.stderr
