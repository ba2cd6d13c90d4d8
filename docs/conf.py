"""Sphinx configuration for vlpi's documentation.

Why Sphinx (not MkDocs): vlpi's docstrings are numpy-style and its CLI is an argparse parser;
Sphinx renders both from the code itself (numpydoc, autodoc/autosummary, sphinx-argparse) and
fails the build on any warning (``-W``), while pages stay in Markdown (myst-parser).

Build (what CI runs)::

    python -m sphinx -W --keep-going -b html docs docs/_build/html
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))  # document this checkout's vlpi, not an installed one
sys.path.insert(0, str(DOCS / "_ext"))
# compiled kernels are never run by a docs build, but importing vlpi may touch the cache dir
os.environ.setdefault("NUMBA_CACHE_DIR", str(ROOT / ".numba_cache"))

project = "vlpi"
author = "the vlpi developers"
copyright = "the vlpi developers"  # noqa: A001

import vlpi  # noqa: E402

release = version = vlpi.__version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "numpydoc",
    "sphinxarg.ext",
    "vlpi_bench",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]
templates_path = ["_templates"]

# Markdown pages: heading anchors so pages can link to sections (kernel-behaviour.md#save)
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

# API reference
autosummary_generate = True
autosummary_imported_members = False
autodoc_default_options = {"members": True, "undoc-members": True, "show-inheritance": False}
autodoc_typehints = "none"  # numpydoc's Parameters sections carry the types
autodoc_member_order = "bysource"
numpydoc_show_class_members = False  # autosummary pages list members themselves
numpydoc_class_members_toctree = False
numpydoc_validation_checks: set[str] = set()

html_theme = "alabaster"
html_static_path: list[str] = []
html_title = f"vlpi {release}"

# Benchmark results page: pytest-benchmark JSON files to render (see benchmarks.md). Default:
# every *.json in benchmarks/results/, or the files named in $VLPI_BENCH_JSON (os.pathsep-separated).
vlpi_bench_json = [p for p in os.environ.get("VLPI_BENCH_JSON", "").split(os.pathsep) if p] or sorted(
    str(p) for p in (ROOT / "benchmarks" / "results").glob("*.json")
)


def _drop_type_docstrings(app, what, name, obj, options, lines):
    """Module-level data (a numpy dtype, a dict, a dict of fields) has no docstring of its own:
    autodoc would show its *type's* docstring (numpy.dtype's, dict's). Show none instead."""
    if what in ("data", "attribute") and lines and getattr(obj, "__doc__", None) == getattr(type(obj), "__doc__", 0):
        lines[:] = []


def setup(app):
    app.connect("autodoc-process-docstring", _drop_type_docstrings)
