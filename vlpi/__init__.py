"""vlpi: arm64 KVM LPI/VLPI pending-table save and restore, modelled bit-exactly and fast.

(The narrative of how a save works is completed in this docstring as the package grows.)
"""

from vlpi import _config  # noqa: F401  (must precede any numba import)
from vlpi.errors import GuestMemoryFault
from vlpi.lpi import LPITable
from vlpi.memory import GuestMemory

__all__ = ["GuestMemory", "GuestMemoryFault", "LPITable"]
__version__ = "0.1.0"
