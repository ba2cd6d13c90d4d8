"""vlpi: arm64 KVM LPI/VLPI pending-table save and restore, modelled bit-exactly and fast.

(The narrative of how a save works is completed in this docstring as the package grows.)
"""

from vlpi import _config  # noqa: F401  (must precede any numba import)
from vlpi.errors import GuestMemoryFault
from vlpi.lpi import LPITable
from vlpi.memory import GuestMemory
from vlpi.pending import (
    SaveReport,
    SyncReport,
    save_pending_tables,
    save_pending_tables_many,
    sync_pending_status,
    sync_pending_table,
)

__all__ = [
    "GuestMemory",
    "GuestMemoryFault",
    "LPITable",
    "SaveReport",
    "SyncReport",
    "save_pending_tables",
    "save_pending_tables_many",
    "sync_pending_status",
    "sync_pending_table",
]
__version__ = "0.1.0"
