"""A kvm-unit-tests-like guest driver for :class:`vlpi.VM`, and a QEMU-like migration.

The guest programs the VM the way ``lib/arm64/gic-v3-its*.c`` and ``lib/arm/gic-v3.c`` do:
one 64 KiB LPI configuration table (PROPBASER IDbits field 13: LPIs 8192..16383), one 64 KiB
pending table per vCPU (PENDBASER = PA only, PTZ 0), EnableLPIs on every redistributor, a flat
device table, a collection table, a 64 KiB command queue, and ITTs allocated per device. Every
ITS command goes through the command queue in guest RAM (encode -> CWRITER -> KVM's loop).

:func:`migrate` follows QEMU: stop the vCPUs, SAVE_TABLES, SAVE_PENDING_TABLES, copy RAM and
registers to a fresh VM, restore the redistributors (EnableLPIs scans run, finding nothing),
the ITS registers, RESTORE_TABLES, GITS_CTLR, then run.
"""

from __future__ import annotations

import numpy as np

from vlpi.its import GuestCommandWriter, ItsCommand, write_ctlr
from vlpi.vm import VM, copy_memory  # noqa: F401  (copy_memory re-exported for tests)
from vlpi.vm import migrate as _migrate

RAM = 0x4000_0000
RAM_SIZE = 8 << 20
PROP = RAM  # 64 KiB
PEND = RAM + 0x10_0000  # vCPU v at PEND + v * 64 KiB
DEVTAB = RAM + 0x20_0000
COLLTAB = RAM + 0x21_0000
CMDQ = RAM + 0x22_0000
ITT0 = RAM + 0x30_0000  # ITTs allocated from here
LPI_PROP_DEFAULT = 0xA3  # priority 0xa0 | group1 | enabled
ID_BITS_FIELD = 13  # PROPBASER.IDbits: 14-bit INTIDs


def LPI(i: int) -> int:
    return 8192 + i


class Guest:
    """The guest side of a kvm-unit-tests ITS test."""

    def __init__(self, vm: VM, *, setup: bool = True) -> None:
        self.vm = vm
        self._itt_next = ITT0
        self.itts: dict[int, int] = {}
        if setup:
            vm.mem.add_slot(RAM, RAM_SIZE)
            self.enable_defaults()
        else:  # a migrated guest: continue with the restored queue
            self.cmdq = GuestCommandWriter.attach(vm.its)

    def enable_defaults(self) -> None:
        """its_enable_defaults: LPI tables, EnableLPIs everywhere, ITS tables and queue, ITS on."""
        vm = self.vm
        for v in range(vm.n_vcpus):
            vm.write_propbaser(PROP | ID_BITS_FIELD, v)
            vm.write_pendbaser(v, PEND + v * 0x10000)
        for v in range(vm.n_vcpus):
            vm.enable_lpis(v)
        vm.its.write_baser(0, (1 << 63) | DEVTAB)  # 1 page: DeviceIDs < 8192
        vm.its.write_baser(1, (1 << 63) | COLLTAB)
        self.cmdq = GuestCommandWriter(vm.its, CMDQ, 16)
        write_ctlr(vm.its, 1)
        vm.run()

    # ------------------------------------------------------------------ helpers
    def send(self, *cmds: ItsCommand) -> None:
        self.cmdq.send(*cmds)

    def create_device(self, dev_id: int, nr_bits: int) -> int:
        """its_create_device: allocate an ITT for 2**nr_bits events (no command sent)."""
        itt = self._itt_next
        self._itt_next += ((8 << nr_bits) + 0xFFFF) & ~0xFFFF
        self.itts[dev_id] = (itt, nr_bits)
        return itt

    def mapd(self, dev_id: int, valid: bool = True) -> None:
        itt, bits = self.itts[dev_id]
        self.send(ItsCommand.mapd(dev_id, itt, bits - 1, valid))

    def set_config(self, intid: int, value: int = LPI_PROP_DEFAULT) -> None:
        self.vm.mem.write(PROP + intid - 8192, np.array([value], np.uint8))

    def get_config(self, intid: int) -> int:
        return int(self.vm.mem.read(PROP + intid - 8192, 1)[0])

    def set_pending(self, vcpu: int, intid: int, pending: bool = True) -> None:
        """gicv3_lpi_set_clr_pending: poke the bit in the vCPU's pending table."""
        gpa = PEND + vcpu * 0x10000 + intid // 8
        b = int(self.vm.mem.read(gpa, 1)[0])
        b = b | (1 << intid % 8) if pending else b & ~(1 << intid % 8)
        self.vm.mem.write(gpa, np.array([b], np.uint8))

    def pending_bit(self, vcpu: int, intid: int) -> bool:
        gpa = PEND + vcpu * 0x10000 + intid // 8
        return bool((int(self.vm.mem.read(gpa, 1)[0]) >> intid % 8) & 1)

    def take_all(self) -> dict[int, list[int]]:
        """Every CPU takes what it can (the IRQ handler); returns INTIDs taken per vCPU."""
        return {v: self.vm.acknowledge(v).tolist() for v in range(self.vm.n_vcpus)}

    # ------------------------------------------------------------------ kvm-unit-tests setup
    def its_setup1(self) -> None:
        """Devices 2 and 7 (8 EventID bits), col3 -> PE3, col2 -> PE2, dev2/20 -> 8195 on col3,
        dev7/255 -> 8196 on col2."""
        self.create_device(2, 8)
        self.create_device(7, 8)
        self.set_config(8195)
        self.set_config(8196)
        self.mapd(2)
        self.mapd(7)
        self.send(ItsCommand.mapc(3, 3), ItsCommand.mapc(2, 2), ItsCommand.invall(2), ItsCommand.invall(3))
        self.send(ItsCommand.mapti(2, 20, 8195, 3), ItsCommand.mapti(7, 255, 8196, 2))


def migrate(src: VM, *, during=None, forward_after=None) -> tuple[VM, dict]:
    """QEMU-like migration of ``src`` to a fresh VM (:func:`vlpi.vm.migrate`); returns (dst, info)."""
    dst, rep = _migrate(src, during=during, forward_after=forward_after)
    return dst, {"its": rep.its_save, "pending": rep.pending_save, "regs": rep.registers}
