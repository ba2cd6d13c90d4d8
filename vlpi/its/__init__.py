"""The virtual ITS that the guest programs (KVM's emulated ITS): commands, command queue, tables.

* :mod:`vlpi.its.commands` -- opcodes, ``E_ITS_*`` error codes, :class:`ItsCommand` and the
  32-byte encoding (:func:`encode`, :func:`decode`, vectorised :func:`encode_many`);
* :mod:`vlpi.its.its` -- :class:`VirtualITS`: devices, collections, ITEs, one handler per command,
  the vectorised :meth:`VirtualITS.map_events`, GITS_BASER registers, save/restore of the tables;
* :mod:`vlpi.its.queue` -- the command queue in guest RAM (GITS_CBASER/CWRITER/CREADR/CTLR) and
  :class:`GuestCommandWriter`, the guest's side of it;
* :mod:`vlpi.its.abi` -- the table ABI revision 0 (DTE/ITE/CTE layouts, save and restore).
"""

from vlpi.its.commands import (
    ERROR_NAMES,
    OPCODES,
    ItsCommand,
    ItsCommandError,
    decode,
    decode_many,
    encode,
    encode_many,
)
from vlpi.its.its import COLLECTION_NOT_MAPPED, ItsStateError, VirtualITS
from vlpi.its.queue import CommandLog, GuestCommandWriter, process_commands, write_cbaser, write_ctlr, write_cwriter

__all__ = [
    "COLLECTION_NOT_MAPPED",
    "ERROR_NAMES",
    "OPCODES",
    "CommandLog",
    "GuestCommandWriter",
    "ItsCommand",
    "ItsCommandError",
    "ItsStateError",
    "VirtualITS",
    "decode",
    "decode_many",
    "encode",
    "encode_many",
    "process_commands",
    "write_cbaser",
    "write_ctlr",
    "write_cwriter",
]
