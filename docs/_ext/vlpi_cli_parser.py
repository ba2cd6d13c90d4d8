"""The ``vlpi`` command's argparse parser, for sphinx-argparse (docs/reference/cli.md).

Uses ``vlpi.cli.build_parser()`` when the CLI exports one; until then it falls back to the
CLI's private parser factory (the only place the docs touch a private name; remove the
fallback once ``build_parser`` exists).
"""

from __future__ import annotations

import argparse


def parser() -> argparse.ArgumentParser:
    from vlpi import cli

    build = getattr(cli, "build_parser", None) or cli._parser
    return build()
