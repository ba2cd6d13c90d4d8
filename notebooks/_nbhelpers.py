"""What every vlpi notebook shares: the checkout's ``vlpi``, the size, the style, the figures.

* ``ROOT``: the repository root (the notebooks run from ``notebooks/``, under nbmake too); it goes
  first on ``sys.path`` so a notebook shows this checkout's ``vlpi``, whatever is installed.
* ``SCALE``: ``"ci"`` or ``"full"``, from the one environment variable ``VLPI_NB_SCALE``
  (default ``ci``: what the README's test command runs, each notebook well under a minute;
  ``full`` runs host-sized cases and takes minutes). ``pick(ci=..., full=...)`` chooses by it.
* The compiled-kernel cache: nothing here sets ``NUMBA_CACHE_DIR``; importing ``vlpi`` applies the
  package's rule (``$NUMBA_CACHE_DIR``, else ``~/.cache/vlpi/numba``), and subprocesses started
  with :func:`run_env` inherit the same directory, so notebooks, tests, benchmarks and the CLI
  share one cache.
* ``style()``: the shared ``notebooks/vlpi.mplstyle``. ``show(fig, name)``: displays a figure and,
  when ``VLPI_NB_FIGDIR`` is set, also writes it there as ``name.png`` (to look at figures outside
  Jupyter).
* Small picture helpers used by more than one notebook: pending-table bitmaps, page maps.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np


def _root() -> Path:
    p = Path.cwd().resolve()
    for q in (p, *p.parents):
        if (q / "pyproject.toml").exists() and (q / "vlpi").is_dir():
            return q
    return Path(__file__).resolve().parent.parent


ROOT = _root()
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import vlpi  # noqa: E402  (after the path: this checkout's package; sets the kernel cache dir)

SCALES = ("ci", "full")
SCALE = os.environ.get("VLPI_NB_SCALE", "ci").strip().lower() or "ci"
if SCALE == "big":  # the benchmarks' name for the full tier
    SCALE = "full"
if SCALE not in SCALES:
    raise ValueError(f"VLPI_NB_SCALE must be 'ci' or 'full', got {os.environ.get('VLPI_NB_SCALE')!r}")
TIER = "CI tier" if SCALE == "ci" else "full tier"


def pick(*, ci, full):
    """``ci`` at CI size, ``full`` at full size."""
    return ci if SCALE == "ci" else full


def header() -> str:
    """One line naming what the notebook runs on (printed by each notebook's first cell)."""
    return (f"vlpi {vlpi.__version__} from {Path(vlpi.__file__).parent}; scale {SCALE!r} ({TIER}, "
            f"set VLPI_NB_SCALE=ci|full); kernel cache {os.environ['NUMBA_CACHE_DIR']}")


def run_env(**extra: str) -> dict:
    """The environment for a subprocess (pytest-benchmark, the CLI): this one, whose
    ``NUMBA_CACHE_DIR`` importing vlpi has fixed, with this checkout first on PYTHONPATH."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.update(extra)
    return env


# ------------------------------------------------------------------------------ figures
def style() -> None:
    import matplotlib.pyplot as plt

    plt.style.use(ROOT / "notebooks" / "vlpi.mplstyle")


def check_figure(fig, scale: str) -> list[str]:
    """What a figure lacks: an x label on every axis that shows x tick labels, a y label where the y
    tick labels are numbers, a label on every colour bar, a title on every axis (or the figure), and
    ``scale`` (the tier, or the input's size) in some title. Empty when all is there."""
    fig.canvas.draw()
    sup = fig.get_suptitle() if hasattr(fig, "get_suptitle") else (fig._suptitle.get_text() if fig._suptitle else "")
    titles = [sup] + [t for ax in fig.get_axes() for t in (ax.get_title("left"), ax.get_title("center"))]
    problems = []
    for k, ax in enumerate(fig.get_axes()):
        if not ax.get_visible() or not ax.axison:
            continue
        if ax.get_label() == "<colorbar>":
            if not (ax.get_ylabel() or ax.get_xlabel()):
                problems.append(f"colour bar {k} has no label")
            continue
        if any(t.get_visible() and t.get_text() for t in ax.get_xticklabels()) and not ax.get_xlabel():
            problems.append(f"axis {k} has no x label")
        ylab = [t.get_text() for t in ax.get_yticklabels() if t.get_visible() and t.get_text()]
        numeric = all(c in "0123456789.−-+e×^{}$\\mathdefault " for c in "".join(ylab))
        if ylab and numeric and not ax.get_ylabel():
            problems.append(f"axis {k} has no y label")
        if not (ax.get_title("left") or ax.get_title("center") or sup):
            problems.append(f"axis {k} has no title")
    if not any(scale in t for t in titles if t):
        problems.append(f"no title states the scale {scale!r}")
    return problems


def show(fig, name: str, scale: str | None = None) -> None:
    """Check ``fig`` (:func:`check_figure`, ``scale`` defaulting to the tier: a figure without
    labelled axes or a title stating its scale raises), display it, and with ``VLPI_NB_FIGDIR`` set
    also save it there as ``name.png``."""
    import matplotlib.pyplot as plt

    problems = check_figure(fig, TIER if scale is None else scale)
    if problems:
        plt.close(fig)
        raise ValueError(f"figure {name!r}: " + "; ".join(problems))
    out = os.environ.get("VLPI_NB_FIGDIR")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        fig.savefig(Path(out) / f"{name}.png")
    plt.show()
    plt.close(fig)


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n}"


# ------------------------------------------------------------------------------ pictures
def pending_bits(mem, pendbaser, vcpus, first_intid: int = 8192, n_intids: int = 1024) -> np.ndarray:
    """Bits ``first_intid .. first_intid + n_intids - 1`` of the pending tables of ``vcpus``
    (rows) as read from guest RAM now: a bool image [vCPU, INTID]."""
    lo, hi = first_intid // 8, -(-(first_intid + n_intids) // 8)
    rows = []
    for v in vcpus:
        base = int(pendbaser[v]) & 0x000F_FFFF_FFFF_0000  # GICR_PENDBASER bits [51:16]
        raw = mem.read(base + lo, hi - lo)
        bits = np.unpackbits(raw, bitorder="little")
        off = first_intid - lo * 8
        rows.append(bits[off:off + n_intids].astype(bool))
    return np.array(rows)


def bitmap(ax, img, *, first_intid: int, vcpus, title: str, cmap="Greys", vmin=0, vmax=1) -> object:
    """Draw a [vCPU, INTID] image with INTIDs on x and one row per vCPU."""
    im = ax.imshow(np.asarray(img, float), aspect="auto", interpolation="nearest", cmap=cmap, vmin=vmin, vmax=vmax,
                   extent=(first_intid - 0.5, first_intid + img.shape[1] - 0.5, len(vcpus) - 0.5, -0.5))
    ax.set_yticks(range(len(vcpus)), [f"vCPU {v}" for v in vcpus])
    ax.set_xlabel("INTID")
    ax.set_title(title, loc="left")
    ax.grid(False)
    return im


def page_map(ax, mem, pages: dict, *, title: str, cols: int = 64) -> None:
    """Every 4 KiB page of ``mem``'s slots as a cell (row-major, ``cols`` per row, slots one after
    another); ``pages`` maps a label to 4 KiB page numbers, drawn in its own colour (later labels
    on top), with a legend."""
    import matplotlib.colors as mcolors
    from matplotlib.patches import Patch

    colors = ["#d62728", "#1f77b4", "#2ca02c", "#ff7f0e"]
    firsts, counts = [], []
    for s in mem.slots:
        firsts.append(s.gpa >> 12)
        counts.append(-(-s.size // 4096))
    total = int(sum(counts))
    cells = np.zeros(-(-total // cols) * cols, np.uint8)
    cells[total:] = 1  # past the end of RAM
    for k, pg in enumerate(pages.values()):
        pg = np.asarray(pg, np.int64)
        k0 = 0
        for f, c in zip(firsts, counts, strict=True):
            cells[k0 + pg[(pg >= f) & (pg < f + c)] - f] = 2 + k
            k0 += c
    grid = cells.reshape(-1, cols)
    cmap = mcolors.ListedColormap(["#e8eef6", "white", *colors[: len(pages)]])
    mib_per_row = cols * 4 / 1024
    ax.imshow(grid, cmap=cmap, vmin=-0.5, vmax=1.5 + len(pages), aspect="auto", interpolation="nearest",
              extent=(-0.5, cols - 0.5, grid.shape[0] * mib_per_row, 0))
    ax.set_xlabel(f"4 KiB page within a row of {cols} pages")
    ax.set_ylabel("guest RAM offset (MiB)")
    ax.set_title(title, loc="left")
    ax.grid(False)
    handles = [Patch(color=colors[k], label=f"{lab} ({len(np.asarray(pg))} pages)")
               for k, (lab, pg) in enumerate(pages.items())]
    ax.legend(handles=handles + [Patch(color="#e8eef6", label="not written")], loc="upper left",
              bbox_to_anchor=(1.01, 1.0))
