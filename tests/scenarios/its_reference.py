"""A slow, literal model of KVM's emulated ITS command handlers (vgic-its.c's ``vgic_its_cmd_handle_*``
and ``vgic_add_lpi``), one Python object per device, collection, ITE and LPI, used as the reference in
differential tests of :class:`vlpi.its.VirtualITS` (software LPIs only: no forwarding).

Written from a description of KVM's command handlers (their checks, in order, and the error each
returns), independently of vlpi's implementation: every command does its
checks in KVM's order and returns an ``E_ITS_*`` code, ``-errno`` or 0.
"""

from __future__ import annotations

import errno

import numpy as np

from vlpi.errors import GuestMemoryFault
from vlpi.its import commands as C

NOT_MAPPED = None


class Coll:
    def __init__(self, icid, target):
        self.icid = icid
        self.target = target  # vCPU id or None (COLLECTION_NOT_MAPPED)


class Lpi:
    def __init__(self, intid, target):
        self.intid = intid
        self.target = target
        self.pending = False
        self.priority = 0
        self.enabled = False
        self.refs = 0


class RefITS:
    def __init__(self, vm, kernel="new"):
        self.vm = vm  # only for mem, n_vcpus, pendbaser, propbaser, EnableLPIs, baser (read-only)
        self.kernel = kernel
        self.devices = {}  # id -> [itt, bits]
        self.colls = []  # creation order
        self.ites = {}  # (dev, ev) -> [intid, coll or None]; dict order = creation order
        self.lpis = {}  # intid -> Lpi; dict order = creation order

    # helpers
    def mem(self):
        return self.vm.mem

    def coll(self, icid):
        for c in self.colls:
            if c.icid == icid:
                return c
        return None

    def check_id(self, which, ident):
        baser = self.vm.its.baser[which]
        if which == 0 and ident > 0xFFFF or which == 1 and ident >= 1 << 16:
            return False, 0
        base = (baser & 0x0000_FFFF_FFFF_0000) | (((baser >> 12) & 0xF) << 48)
        size = ((baser & 0xFF) + 1) * 65536
        if which == 1 or not (baser >> 62) & 1:
            if ident >= size // 8:
                return False, 0
            return self.mem().slot_at(base + ident * 8) is not None, base + ident * 8
        idx = ident // 8192
        if idx >= size // 8:
            return False, 0
        try:
            l1 = int(self.mem().read(base + idx * 8, 8).view("<u8")[0])
        except GuestMemoryFault:
            return False, 0
        if not l1 >> 63:
            return False, 0
        addr = (l1 & 0x000F_FFFF_FFFF_0000) + (ident % 8192) * 8
        return self.mem().slot_at(addr) is not None, addr

    def read_u8(self, gpa):
        return int(self.mem().read(gpa, 1)[0])

    def add_lpi(self, intid, target):
        """vgic_add_lpi: returns errno or 0."""
        if intid in self.lpis:
            self.lpis[intid].refs += 1
            return 0
        prop = self.vm.propbaser & 0x000F_FFFF_FFFF_F000
        try:
            cfg = self.read_u8(prop + intid - 8192)
        except GuestMemoryFault:
            return errno.EFAULT
        lpi = Lpi(intid, target)
        lpi.priority, lpi.enabled = cfg & 0xFC, bool(cfg & 1)
        if target is not None:
            gpa = (int(self.vm.pendbaser[target]) & 0x000F_FFFF_FFFF_0000) + intid // 8
            try:
                val = self.read_u8(gpa)
            except GuestMemoryFault:
                return errno.EFAULT
            lpi.pending = bool(val >> (intid % 8) & 1)
            if lpi.pending:
                try:
                    self.mem().write(gpa, np.array([val & ~(1 << intid % 8)], np.uint8))
                except GuestMemoryFault:
                    return errno.EFAULT
        lpi.refs = 1
        self.lpis[intid] = lpi
        return 0

    def put_lpi(self, intid):
        lpi = self.lpis[intid]
        lpi.refs -= 1
        if lpi.refs == 0:
            del self.lpis[intid]

    def free_ite(self, key):
        intid, _ = self.ites.pop(key)
        self.put_lpi(intid)

    # commands
    def run(self, cmd):
        op = cmd.opcode
        h = {
            C.GITS_CMD_MAPD: self.mapd, C.GITS_CMD_MAPC: self.mapc, C.GITS_CMD_MAPTI: self.mapti,
            C.GITS_CMD_MAPI: self.mapti, C.GITS_CMD_MOVI: self.movi, C.GITS_CMD_MOVALL: self.movall,
            C.GITS_CMD_DISCARD: self.discard, C.GITS_CMD_INT: self.int_, C.GITS_CMD_CLEAR: self.clear,
            C.GITS_CMD_INV: self.inv, C.GITS_CMD_INVALL: self.invall,
        }.get(op)
        return 0 if h is None else h(cmd)

    def mapd(self, c):
        ok, gpa = self.check_id(0, c.device_id)
        if not ok:
            return C.E_ITS_MAPD_DEVICE_OOR
        if c.valid and c.size + 1 > 16:
            return C.E_ITS_MAPD_ITTSIZE_OOR
        if c.device_id in self.devices:
            for key in [k for k in self.ites if k[0] == c.device_id]:
                self.free_ite(key)
            del self.devices[c.device_id]
        if not c.valid:
            if self.kernel == "new":
                try:
                    self.mem().write(gpa, np.zeros(8, np.uint8))
                except GuestMemoryFault:
                    return -errno.EFAULT
            return 0
        self.devices[c.device_id] = [c.itt_addr, c.size + 1]
        return 0

    def mapc(self, c):
        rd = c.rdbase
        if self.kernel == "old" and rd >= self.vm.n_vcpus:
            return C.E_ITS_MAPC_PROCNUM_OOR
        if not c.valid:
            col = self.coll(c.icid)
            if col is not None:
                self.colls.remove(col)
                for v in self.ites.values():
                    if v[1] is col:
                        v[1] = None
            return 0
        if rd >= self.vm.n_vcpus:
            return C.E_ITS_MAPC_PROCNUM_OOR
        col = self.coll(c.icid)
        if col is None:
            if not self.check_id(1, c.icid)[0]:
                return C.E_ITS_MAPC_COLLECTION_OOR
            self.colls.append(Coll(c.icid, rd))
            return 0
        col.target = rd
        for intid, cc in self.ites.values():
            if cc is col:
                self.lpis[intid].target = rd
        return 0

    def mapti(self, c):
        dev = self.devices.get(c.device_id)
        if dev is None:
            return C.E_ITS_MAPTI_UNMAPPED_DEVICE
        if c.event_id >= 1 << dev[1]:
            return C.E_ITS_MAPTI_ID_OOR
        if self.kernel == "new" and self.mem().slot_at(dev[0] + 8 * c.event_id) is None:
            return C.E_ITS_MAPTI_ID_OOR
        intid = c.pintid if c.opcode == C.GITS_CMD_MAPTI else c.event_id
        nbits = (self.vm.propbaser & 0x1F) + 1
        if intid < 8192 or intid >= 1 << min(nbits, 16):
            return C.E_ITS_MAPTI_PHYSICALID_OOR
        if (c.device_id, c.event_id) in self.ites:
            return 0
        col = self.coll(c.icid)
        new = col is None
        if new:
            if not self.check_id(1, c.icid)[0]:
                return C.E_ITS_MAPC_COLLECTION_OOR
            col = Coll(c.icid, NOT_MAPPED)
        e = self.add_lpi(intid, col.target)
        if e:
            return -e
        if new:
            self.colls.append(col)
        self.ites[(c.device_id, c.event_id)] = [intid, col]
        return 0

    def mapped(self, col):
        return col is not None and col in self.colls and col.target is not None

    def movi(self, c):
        ite = self.ites.get((c.device_id, c.event_id))
        if ite is None:
            return C.E_ITS_MOVI_UNMAPPED_INTERRUPT
        if not self.mapped(ite[1]):
            return C.E_ITS_MOVI_UNMAPPED_COLLECTION
        col = self.coll(c.icid)
        if not self.mapped(col):
            return C.E_ITS_MOVI_UNMAPPED_COLLECTION
        ite[1] = col
        self.lpis[ite[0]].target = col.target
        return 0

    def movall(self, c):
        r1, r2 = c.rdbase, c.rdbase2
        if r1 >= self.vm.n_vcpus or r2 >= self.vm.n_vcpus:
            return C.E_ITS_MOVALL_PROCNUM_OOR
        if r1 == r2:
            return 0
        for lpi in self.lpis.values():
            if self.kernel == "new" or lpi.target == r1:
                lpi.target = r2
        return 0

    def discard(self, c):
        ite = self.ites.get((c.device_id, c.event_id))
        if ite is None or not self.mapped(ite[1]):
            return C.E_ITS_DISCARD_UNMAPPED_INTERRUPT
        self.free_ite((c.device_id, c.event_id))
        if self.kernel == "new":
            try:
                self.mem().write(self.devices[c.device_id][0] + 8 * c.event_id, np.zeros(8, np.uint8))
            except GuestMemoryFault:
                return -errno.EFAULT
        return 0

    def int_(self, c):
        ite = self.ites.get((c.device_id, c.event_id))
        if ite is None or not self.mapped(ite[1]):
            return C.E_ITS_INT_UNMAPPED_INTERRUPT
        if not self.vm.enable_lpis_state[ite[1].target]:
            return -errno.EBUSY
        self.lpis[ite[0]].pending = True
        return 0

    def clear(self, c):
        ite = self.ites.get((c.device_id, c.event_id))
        if ite is None:
            return C.E_ITS_CLEAR_UNMAPPED_INTERRUPT
        self.lpis[ite[0]].pending = False
        return 0

    def config(self, lpi):
        prop = self.vm.propbaser & 0x000F_FFFF_FFFF_F000
        return self.read_u8(prop + lpi.intid - 8192)

    def inv(self, c):
        ite = self.ites.get((c.device_id, c.event_id))
        if ite is None:
            return C.E_ITS_INV_UNMAPPED_INTERRUPT
        lpi = self.lpis[ite[0]]
        try:
            cfg = self.config(lpi)
        except GuestMemoryFault:
            return -errno.EFAULT
        lpi.priority, lpi.enabled = cfg & 0xFC, bool(cfg & 1)
        return 0

    def invall(self, c):
        col = self.coll(c.icid)
        if not self.mapped(col):
            return C.E_ITS_INVALL_UNMAPPED_COLLECTION
        for lpi in self.lpis.values():
            try:
                cfg = self.config(lpi)
            except GuestMemoryFault:
                continue
            if lpi.target == col.target:
                lpi.priority, lpi.enabled = cfg & 0xFC, bool(cfg & 1)
        return 0

    # state in the same shape as vlpi's
    def state(self):
        ites = [(d, e, v[0], v[1].icid if v[1] is not None and v[1] in self.colls else -1)
                for (d, e), v in self.ites.items()]
        lpis = [(x.intid, -1 if x.target is None else x.target, x.pending, x.priority, x.enabled, x.refs)
                for x in self.lpis.values()]
        colls = [(c.icid, 0xFFFF_FFFF if c.target is None else c.target) for c in self.colls]
        return {"devices": dict(sorted((k, tuple(v)) for k, v in self.devices.items())), "ites": ites,
                "lpis": lpis, "collections": colls}


def vlpi_state(vm):
    its = vm.its
    t = its.ites()
    ites = list(zip(t["device_id"].tolist(), t["event_id"].tolist(), t["intid"].tolist(), t["icid"].tolist(),
                    strict=True))
    L = vm.vgic
    lpis = list(zip(L["intid"].tolist(), L["target"].tolist(), L["pending"].tolist(), L["priority"].tolist(),
                    L["enabled"].tolist(), L["refs"].tolist(), strict=True))
    return {"devices": dict(sorted(its.devices.items())), "ites": ites, "lpis": lpis,
            "collections": its.collections}
