"""Type aliases for vlpi's annotations (the arrays and scalars the kernels and their callers pass).

A kernel argument that is "an integer" may arrive as a Python ``int`` or as a numpy integer (a value
read from an array, or an ``np.int64(...)`` that keeps numba from compiling a literal variant), so
scalar parameters are typed :data:`IntLike` / :data:`BoolLike` rather than ``int`` / ``bool``.
"""

from __future__ import annotations

from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt

IntLike: TypeAlias = int | np.integer[Any]
BoolLike: TypeAlias = bool | np.bool_

BoolArray: TypeAlias = npt.NDArray[np.bool_]
U8Array: TypeAlias = npt.NDArray[np.uint8]
U16Array: TypeAlias = npt.NDArray[np.uint16]
U32Array: TypeAlias = npt.NDArray[np.uint32]
U64Array: TypeAlias = npt.NDArray[np.uint64]
I16Array: TypeAlias = npt.NDArray[np.int16]
I32Array: TypeAlias = npt.NDArray[np.int32]
I64Array: TypeAlias = npt.NDArray[np.int64]
