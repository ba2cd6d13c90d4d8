"""Scalar reference for the KVM ITS table ABI revision 0 (vgic-its.c's
``vgic_its_save_tables_v0``, ``vgic_its_restore_tables_v0`` and command handlers).

A literal, entry-by-entry model of ``vgic_its_save_tables_v0`` / ``vgic_its_restore_tables_v0``:
one Python int per entry, one ``mem.read``/``mem.write`` of 8 bytes per access, the
``scan_its_table`` loop written out as in the kernel. Deliberately slow and independent of
``vlpi.its.abi`` (it shares no code with it), so that differential tests can compare the two.

Results are plain data: errors are returned as ``(errno, tag)`` tuples rather than raised.
"""

from __future__ import annotations

import errno

import numpy as np

from vlpi.errors import GuestMemoryFault

ESZ = 8
SZ_64K = 1 << 16
NOT_MAPPED = 0xFFFF_FFFF


class WalkerError(Exception):
    def __init__(self, err: int, tag: str) -> None:
        super().__init__(err, tag)
        self.err = err
        self.tag = tag


def c_int(v: int) -> int:
    """Truncate to a 32-bit two's-complement C int."""
    return ((v + (1 << 31)) % (1 << 32)) - (1 << 31)


def baser_addr(baser: int) -> int:
    """GITS_BASER_ADDR_48_to_52: [47:16] is PA[47:16], [15:12] is PA[51:48]."""
    return (baser & (((1 << 48) - 1) ^ ((1 << 16) - 1))) | (((baser >> 12) & 0xF) << 48)


def baser_nr_pages(baser: int) -> int:
    return (baser & 0xFF) + 1


def is_valid(baser: int) -> bool:
    return (baser >> 63) & 1 == 1


def is_indirect(baser: int) -> bool:
    return (baser >> 62) & 1 == 1


def visible(mem, gpa: int) -> bool:
    return mem.slot_at(gpa) is not None


def read_entry(mem, gpa: int) -> int:
    try:
        raw = mem.read(gpa, ESZ)
    except GuestMemoryFault:
        raise WalkerError(errno.EFAULT, f"read {gpa:#x}") from None
    return int.from_bytes(bytes(raw), "little")


def write_entry(mem, gpa: int, val: int, log: list, kind: str) -> None:
    try:
        mem.write(gpa, np.frombuffer(val.to_bytes(8, "little"), dtype=np.uint8))
    except GuestMemoryFault:
        raise WalkerError(errno.EFAULT, f"write {kind} {gpa:#x}") from None
    log.append((kind, gpa, val))


def check_id(mem, baser: int, ident: int, is_device: bool):
    """vgic_its_check_id: returns the entry GPA or None."""
    l1_tbl_size = baser_nr_pages(baser) * SZ_64K
    base = baser_addr(baser)
    if is_device:
        if ident > 0xFFFF:
            return None
    else:
        if ident >= 1 << 16:
            return None
    if not (is_device and is_indirect(baser)):
        if ident >= l1_tbl_size // ESZ:
            return None
        addr = base + ident * ESZ
        return addr if visible(mem, addr) else None
    index = ident // (SZ_64K // ESZ)
    if index >= l1_tbl_size // 8:
        return None
    try:
        entry = read_entry(mem, base + index * 8)
    except WalkerError:
        return None
    if not (entry >> 63) & 1:
        return None
    addr = (entry & (((1 << 52) - 1) ^ ((1 << 16) - 1))) + (ident % (SZ_64K // ESZ)) * ESZ
    return addr if visible(mem, addr) else None


# ------------------------------------------------------------------------------------ save
def save(mem, baser0: int, baser1: int, devices, collections, has_gicv4_1: bool):
    """Returns (log, error): log = [(kind, gpa, value)] of the writes issued, in order;
    error = None or (errno, tag)."""
    log: list = []
    try:
        _save(mem, baser0, baser1, devices, collections, has_gicv4_1, log)
    except WalkerError as e:
        return log, (e.err, e.tag)
    return log, None


def _save(mem, baser0, baser1, devices, collections, has_gicv4_1, log) -> None:
    if is_valid(baser0):
        devs = sorted(devices, key=lambda d: d.device_id)
        for k, dev in enumerate(devs):
            eaddr = check_id(mem, baser0, dev.device_id, True)
            if eaddr is None:
                raise WalkerError(errno.EINVAL, f"check DeviceID {dev.device_id}")
            # the ITT first
            ites = sorted(
                zip(
                    (int(x) for x in dev.event_id),
                    (int(x) for x in dev.pintid),
                    (int(x) for x in dev.icid),
                    (bool(x) for x in dev.hw),
                    strict=True,
                )
            )
            for j, (eid, pint, icid, hw) in enumerate(ites):
                gpa = dev.itt_addr + eid * ESZ
                if hw and not has_gicv4_1:
                    raise WalkerError(errno.EACCES, f"hw ITE DeviceID {dev.device_id} EventID {eid}")
                nxt = 0 if j == len(ites) - 1 else min(ites[j + 1][0] - eid, (1 << 16) - 1)
                val = (nxt << 48) | (pint << 16) | icid
                write_entry(mem, gpa, val, log, "ite")
            # then the DTE
            nxt = 0 if k == len(devs) - 1 else min(devs[k + 1].device_id - dev.device_id, (1 << 14) - 1)
            val = (1 << 63) | (nxt << 49) | ((dev.itt_addr >> 8) << 5) | (dev.eventid_bits - 1)
            write_entry(mem, eaddr, val, log, "dte")
    if is_valid(baser1):
        gpa = baser_addr(baser1)
        max_size = baser_nr_pages(baser1) * SZ_64K
        filled = 0
        for icid, rdbase in collections:
            val = (1 << 63) | (rdbase << 16) | icid
            write_entry(mem, gpa, val, log, "cte")
            gpa += ESZ
            filled += ESZ
        if filled != max_size:
            write_entry(mem, gpa, 0, log, "term")


# --------------------------------------------------------------------------------- restore
class RestoreState:
    def __init__(self, n_vcpus: int, existing=()) -> None:
        self.n_vcpus = n_vcpus
        # existing collections: ICIDs, or a dict ICID -> target (for ``add_lpi``'s target)
        self.coll: dict[int, int] = dict(existing) if isinstance(existing, dict) else {c: NOT_MAPPED for c in existing}
        self.collections: list[tuple[int, int]] = []
        # devices: [device_id, itt_addr, bits, [(eid, pintid, icid), ...]]
        self.devices: list[list] = []
        self.add_lpi = None


def restore(mem, baser0: int, baser1: int, n_vcpus: int, existing=(), add_lpi=None):
    """Returns (collections, devices, error): devices as [(id, itt, bits, [(eid, pintid, icid)])],
    error = None or (errno, tag). Structures are those restored before any error.

    ``add_lpi(pintid, target)`` (optional; target a vCPU id or None) is called where the kernel
    calls ``vgic_add_lpi``, right after the ITE is allocated; a non-zero errno it returns fails
    the restore there (the ITE stays listed, as in the abi's partial result)."""
    st = RestoreState(n_vcpus, existing)
    st.add_lpi = add_lpi
    try:
        ret = _restore_collection_table(mem, st, baser1)
        if ret == 0:
            ret = _restore_device_tables(mem, st, baser0)
        if ret < 0:
            raise WalkerError(-ret, "scan")
    except WalkerError as e:
        return st.collections, _plain(st), (e.err, e.tag)
    return st.collections, _plain(st), None


def _plain(st: RestoreState):
    return [(d[0], d[1], d[2], list(d[3])) for d in st.devices]


def scan_its_table(mem, base: int, size: int, esz: int, start_id: int, fn) -> int:
    """The kernel's scan loop; read faults return -EFAULT. ``size`` is a C int widened to
    unsigned long."""
    length = size % (1 << 64)
    ident = start_id
    gpa = base
    while True:
        try:
            entry = read_entry(mem, gpa)
        except WalkerError:
            return -errno.EFAULT
        next_offset = fn(ident & 0xFFFF_FFFF, entry)
        if next_offset <= 0:
            return next_offset
        byte_offset = next_offset * esz
        if byte_offset >= length:
            break
        ident += next_offset
        gpa += byte_offset
        length -= byte_offset
    return 1


def _restore_cte(mem, st: RestoreState, baser1: int, gpa: int) -> int:
    try:
        val = read_entry(mem, gpa)
    except WalkerError:
        return -errno.EFAULT
    if not (val >> 63) & 1:
        return 0
    target = (val >> 16) & 0xFFFF_FFFF
    icid = val & 0xFFFF
    if target != NOT_MAPPED and target >= st.n_vcpus:
        return -errno.EINVAL
    if icid in st.coll:
        return -errno.EEXIST
    if check_id(mem, baser1 & ~(1 << 62), icid, False) is None:
        return -errno.EINVAL
    st.coll[icid] = target
    st.collections.append((icid, target))
    return 1


def _restore_collection_table(mem, st: RestoreState, baser1: int) -> int:
    if not is_valid(baser1):
        return 0
    gpa = baser_addr(baser1)
    max_size = baser_nr_pages(baser1) * SZ_64K
    read = 0
    ret = 1
    while read < max_size:
        ret = _restore_cte(mem, st, baser1, gpa)
        if ret <= 0:
            break
        gpa += ESZ
        read += ESZ
    if ret > 0:
        return 0
    return ret


def _restore_device_tables(mem, st: RestoreState, baser0: int) -> int:
    if not is_valid(baser0):
        return 0
    l1_tbl_size = baser_nr_pages(baser0) * SZ_64K
    l1_gpa = baser_addr(baser0)

    def restore_ite(dev):
        def fn(event_id: int, val: int) -> int:
            icid = val & 0xFFFF
            lpi = (val >> 16) & 0xFFFF_FFFF
            if not lpi:
                return 1
            if lpi < 8192:
                return -errno.EINVAL
            offset = val >> 48
            if (event_id + offset) & 0xFFFF_FFFF >= 1 << dev[2]:  # u32 + u32
                return -errno.EINVAL
            if icid not in st.coll:
                return -errno.EINVAL
            if event_id >= 1 << dev[2] or not visible(mem, dev[1] + event_id * ESZ):
                return -errno.EINVAL
            dev[3].append((event_id, lpi, icid))
            if st.add_lpi is not None:
                target = st.coll[icid]
                err = st.add_lpi(lpi, None if target == NOT_MAPPED else target)
                if err:
                    return -err
            return offset

        return fn

    def restore_dte(ident: int, entry: int) -> int:
        valid = entry >> 63
        bits = (entry & 0x1F) + 1
        itt = ((entry >> 5) & ((1 << 44) - 1)) << 8
        if not valid:
            return 1
        offset = (entry >> 49) & ((1 << 14) - 1)
        if check_id(mem, baser0, ident, True) is None:
            return -errno.EINVAL
        dev = [ident, itt, bits, []]
        st.devices.append(dev)
        max_size = (1 << bits) * ESZ  # size_t, passed to scan_its_table's "int size"
        ret = scan_its_table(mem, itt, c_int(max_size), ESZ, 0, restore_ite(dev))
        if ret > 0:
            ret = 0
        if ret:
            return ret
        return offset

    def handle_l1(ident: int, entry: int) -> int:
        if not (entry >> 63) & 1:
            return 1
        gpa = entry & (((1 << 52) - 1) ^ ((1 << 16) - 1))
        return scan_its_table(mem, gpa, SZ_64K, ESZ, (ident * (SZ_64K // ESZ)) & 0xFFFF_FFFF, restore_dte)

    if is_indirect(baser0):
        ret = scan_its_table(mem, l1_gpa, l1_tbl_size, 8, 0, handle_l1)
    else:
        ret = scan_its_table(mem, l1_gpa, l1_tbl_size, ESZ, 0, restore_dte)
    if ret > 0:
        ret = 0
    return ret
