"""Real QEMU migration streams: read the container, then the GICv3/ITS state inside it.

* :mod:`vlpi.qemu.stream` -- the stream format: sections, RAM pages, device state decoded with the
  JSON description QEMU appends (:func:`read_stream`, :class:`StreamError`);
* :mod:`vlpi.qemu.gic` -- redistributors, ITS registers, guest RAM as a :class:`vlpi.GuestMemory`,
  and every LPI with its DeviceID, EventID, target vCPU, enable, priority and pending bit, from the
  ITS tables in KVM's ABI revision 0 layout or QEMU's emulated-ITS layout (:func:`read_gic`);
* :mod:`vlpi.qemu.rewrite` -- write a stream back with changed RAM or fields (test fixtures).
"""

from vlpi.qemu.gic import LPI, GicLayoutError, GicState, ItsRegisters, Redistributor, read_gic
from vlpi.qemu.stream import RamBlock, Section, Stream, StreamError, TruncatedStream, read_stream

__all__ = [
    "LPI",
    "GicLayoutError",
    "GicState",
    "ItsRegisters",
    "RamBlock",
    "Redistributor",
    "Section",
    "Stream",
    "StreamError",
    "TruncatedStream",
    "read_gic",
    "read_stream",
]
