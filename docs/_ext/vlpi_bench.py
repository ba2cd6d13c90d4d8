"""Sphinx extension: the benchmark results page, rendered from pytest-benchmark JSON.

The ``vlpi-bench-results`` directive turns the JSON files named by the ``vlpi_bench_json``
config value into tables with ``scripts/bench_table.py`` (the same renderer that writes
``benchmarks/RESULTS.md``), so the page and the committed results cannot disagree in format.
With no JSON it says how to produce some; the build does not fail. A file that cannot be read
or parsed is a build warning (an error under ``-W``).

Options: ``:match: REGEX`` keeps only the benchmark groups whose name matches.

:func:`bench_markdown` is the whole logic without Sphinx (the docs tests call it).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

HOW_TO_PRODUCE = """\
No benchmark results were given to this build. To produce them, from the repository root:

```
python -m pytest benchmarks --benchmark-enable --benchmark-json=benchmarks/results/bench.json
python -m sphinx -W --keep-going -b html docs docs/_build/html
```

Add `--big` to the first command for the full-size tiers (host-4096; run it on an otherwise
idle machine). Every `benchmarks/results/*.json` is rendered here; to render other files set
`VLPI_BENCH_JSON` to their paths, separated by `{sep}`.
"""


def _bench_table():
    """scripts/bench_table.py, imported by path (scripts/ is not a package)."""
    path = ROOT / "scripts" / "bench_table.py"
    spec = importlib.util.spec_from_file_location("vlpi_scripts_bench_table", path)
    mod = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(mod)
    return mod


def bench_markdown(paths: Sequence[str | Path], match: str | None = None) -> str:
    """Markdown for the results page: the tables of ``paths`` (pytest-benchmark JSON), or the
    instructions to produce them when ``paths`` is empty.

    Raises
    ------
    OSError, ValueError
        A file cannot be read or is not JSON (``json.JSONDecodeError`` is a ValueError).
    """
    import os

    if not paths:
        return HOW_TO_PRODUCE.format(sep=repr(os.pathsep))
    bt = _bench_table()
    docs = bt.load([str(p) for p in paths])
    text = bt.render(docs, match)
    if not any(bt.rows_by_group(d) for d in docs):
        text += "\n(These files hold no benchmark with timings: were they run with `--benchmark-enable`?)\n"
    return text


def setup(app):
    from docutils import nodes
    from docutils.parsers.rst import directives
    from docutils.statemachine import StringList
    from sphinx.util import logging
    from sphinx.util.docutils import SphinxDirective

    logger = logging.getLogger(__name__)

    class BenchResults(SphinxDirective):
        has_content = False
        option_spec = {"match": directives.unchanged}

        def run(self):
            paths = [Path(p) if Path(p).is_absolute() else ROOT / p for p in self.config.vlpi_bench_json]
            for p in paths:
                self.env.note_dependency(str(p))
            try:
                text = bench_markdown(paths, self.options.get("match"))
            except (OSError, ValueError) as e:
                logger.warning("vlpi-bench-results: cannot render %s: %s", [str(p) for p in paths], e,
                               location=self.get_location())
                return []
            container = nodes.container()
            self.state.nested_parse(StringList(text.splitlines(), source="benchmark JSON"), self.content_offset,
                                    container)
            return container.children

    app.add_config_value("vlpi_bench_json", [], "env")
    app.add_directive("vlpi-bench-results", BenchResults)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
