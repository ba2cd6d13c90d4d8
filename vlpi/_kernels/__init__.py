"""Private Numba kernels. Nothing here validates input: the public functions in
:mod:`vlpi.pending` (and friends) validate, normalise and then trust these kernels."""
