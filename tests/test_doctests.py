"""The examples in vlpi's docstrings run and print what they say."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = ["vlpi.memory", "vlpi.vm", "vlpi.lpi", "vlpi.pending", "vlpi.its", "vlpi.gicv4", "vlpi.its.abi"]
WITH_EXAMPLES = {"vlpi.memory", "vlpi.vm"}  # must not silently lose their examples


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    mod = importlib.import_module(name)
    res = doctest.testmod(mod, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert res.failed == 0, f"{res.failed} of {res.attempted} docstring examples in {name} failed"
    if name in WITH_EXAMPLES:
        assert res.attempted > 0
