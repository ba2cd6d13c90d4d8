"""Reprs that read the way the objects are used: every field under its attribute name, arrays and
containers summarised so that a count and an array never look alike (``dirty_pages=12`` is an
integer, ``dirty_pages=<int64 array, 12 pages>`` an array)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

__all__ = ["short", "fields_repr", "count"]


def count(n: int, unit: str) -> str:
    """``"1 page"``, ``"12 pages"``: ``unit`` is given in the plural."""
    return f"{n} {unit[:-1] if n == 1 and unit.endswith('s') else unit}"


def short(value: object, unit: str | None = None) -> str:
    """``repr(value)`` for scalars; ``<dtype array, N unit>`` for arrays (``<LostRecords, N
    records>`` for an array subclass, ``<structured array, N rows>`` for a structured one) and
    ``<list, N unit>`` / ``<dict, N unit>`` for containers of more than a few items."""
    if isinstance(value, np.ndarray):
        n = value.size
        if type(value) is not np.ndarray:
            return f"<{type(value).__name__}, {count(n, unit or 'rows')}>"
        if value.dtype.names is not None:
            return f"<structured array, {count(n, unit or 'rows')}>"
        shape = "" if value.ndim <= 1 else f" of shape {value.shape}"
        return f"<{value.dtype} array{shape}, {count(n, unit or 'elements')}>"
    if isinstance(value, Mapping):
        return f"<dict, {count(len(value), unit or 'keys')}>"
    if isinstance(value, (list, tuple)) and (unit is not None or len(value) > 4):
        return f"<{type(value).__name__}, {count(len(value), unit or 'items')}>"
    if isinstance(value, (bytes, bytearray)) and len(value) > 32:
        return f"<{type(value).__name__}, {count(len(value), 'bytes')}>"
    return repr(value)


def fields_repr(obj: object, names: tuple[str, ...] | list[str], units: Mapping[str, str] | None = None) -> str:
    """``Type(name=value, ...)`` over the attributes ``names`` of ``obj``, each value through
    :func:`short` (``units`` names what an array or container counts, per attribute)."""
    units = units or {}
    body = ", ".join(f"{n}={short(getattr(obj, n), units.get(n))}" for n in names)
    return f"{type(obj).__name__}({body})"
