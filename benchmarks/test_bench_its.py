"""The virtual ITS at ``vgic_lpi_stress`` scale: table save/restore, bulk mapping, MSI injection.

Axes follow the kernel selftest ``vgic_lpi_stress`` (vCPUs x devices x events per device): one
collection per vCPU, one ITT per device, LPIs from 8192 round-robin over the vCPUs.

* ``its-save`` / ``its-restore`` -- ``KVM_DEV_ARM_ITS_SAVE_TABLES`` / ``RESTORE_TABLES`` (ABI rev 0)
  of the whole ITS: :func:`vlpi.its.abi.save_tables_v0` / ``restore_tables_v0`` against the
  scalar, entry-by-entry walker ``tests/its_table_walker.py`` (pure Python). ``n_lpis`` counts
  ITEs (one LPI each).
* ``its-map`` -- bulk MAPTI of every event (``VirtualITS.map_events``) into a fresh VM per round.
* ``msi`` -- ``VM.signal_msi`` of every (device, event) ``iterations`` times; ``n_lpis`` counts
  MSIs, so ``lpis_per_s`` is the selftest's "Rate: N LPIs/sec".

The VM-level benchmarks skip cleanly while ``vlpi.VM`` (or the parts of its API they use) is not
available.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
from harness import run_bench

abi = pytest.importorskip("vlpi.its.abi")

STRESS = {
    # (vcpus, devices, events per device, MSI iterations)
    "ci": (4, 16, 256, 2),
    # KVM's ITS has 16 INTID bits: at most 57,344 LPIs (8192..65535) per VM
    "big": (64, 56, 1024, 16),
}
TIERS = ["ci", pytest.param("big", marks=pytest.mark.big)]

TABLE_GPA = 0x1000_0000
_64K = 1 << 16
VALID = 1 << 63


def _walker():
    tests = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    import its_table_walker

    return its_table_walker


class ItsLayout:
    """Guest-physical layout of a stress-shaped ITS: device table, collection table, ITTs, then the
    LPI configuration and pending tables."""

    def __init__(self, vcpus: int, devices: int, events: int) -> None:
        self.vcpus, self.devices, self.events = vcpus, devices, events
        self.event_bits = max(1, int(np.ceil(np.log2(events))))
        self.itt_bytes = max(256, events * 8)
        dt_pages = -(-devices * 8 // _64K)
        ct_pages = -(-vcpus * 8 // _64K)
        self.dt = TABLE_GPA
        self.ct = self.dt + dt_pages * _64K
        self.cmdq = self.ct + ct_pages * _64K  # 64 KiB command queue
        self.itt0 = self.cmdq + _64K
        itt_end = self.itt0 + devices * self.itt_bytes
        self.id_bits = max(14, int(np.ceil(np.log2(8192 + devices * events))))
        self.prop = -(-itt_end // _64K) * _64K
        prop_bytes = -(-(1 << self.id_bits) // _64K) * _64K
        self.pend = self.prop + prop_bytes
        self.pend_stride = max(_64K, (1 << self.id_bits) // 8)
        self.end = self.pend + vcpus * self.pend_stride
        self.baser0 = abi_baser(0x1907_0000_0000_0000, self.dt, dt_pages)
        self.baser1 = abi_baser(0x1C07_0000_0000_0000, self.ct, ct_pages)

    @property
    def n_ites(self) -> int:
        return self.devices * self.events

    def itt(self, d: int) -> int:
        return self.itt0 + d * self.itt_bytes

    def mapping(self):
        """(device_ids, event_ids, intids, icids) of every event, LPIs round-robin over vCPUs."""
        dev = np.repeat(np.arange(self.devices, dtype=np.int64), self.events)
        ev = np.tile(np.arange(self.events, dtype=np.int64), self.devices)
        intid = 8192 + np.arange(self.n_ites, dtype=np.int64)
        icid = (intid - 8192) % self.vcpus
        return dev, ev, intid, icid

    def its_devices(self):
        dev, ev, intid, icid = self.mapping()
        out = []
        for d in range(self.devices):
            s = slice(d * self.events, (d + 1) * self.events)
            out.append(
                abi.ItsDevice(
                    device_id=d,
                    itt_addr=self.itt(d),
                    eventid_bits=self.event_bits,
                    event_id=ev[s].astype(np.uint32),
                    pintid=intid[s].astype(np.uint32),
                    icid=icid[s].astype(np.uint16),
                    hw=np.zeros(self.events, bool),
                )
            )
        return out

    def collections(self):
        return [(v, v) for v in range(self.vcpus)]


def abi_baser(attrs: int, addr: int, pages: int) -> int:
    """A valid flat GITS_BASER: attributes, 64 KiB pages, ``pages`` pages at ``addr``."""
    return VALID | attrs | (2 << 8) | addr | (pages - 1)


_LAYOUTS: dict = {}


def _its_state(tier: str):
    """(layout, mem, devices, collections), tables saved once so restore has something to read."""
    if tier not in _LAYOUTS:
        from vlpi import GuestMemory

        lay = ItsLayout(*STRESS[tier][:3])
        mem = GuestMemory()
        mem.add_slot(TABLE_GPA, lay.end - TABLE_GPA)
        devs, colls = lay.its_devices(), lay.collections()
        abi.save_tables_v0(mem, lay.baser0, lay.baser1, devs, colls, has_gicv4_1=False)
        _LAYOUTS[tier] = (lay, mem, devs, colls)
    return _LAYOUTS[tier]


@pytest.mark.parametrize("tier", TIERS)
@pytest.mark.parametrize("impl", ["engine", "python"])
def test_its_save_tables(benchmark, impl, tier):
    lay, mem, devs, colls = _its_state(tier)
    if impl == "engine":

        def fn():
            return abi.save_tables_v0(mem, lay.baser0, lay.baser1, devs, colls, has_gicv4_1=False)
    else:
        w = _walker()

        def fn():
            log, err = w.save(mem, lay.baser0, lay.baser1, devs, colls, False)
            assert err is None
            return log

    rounds = 1 if (impl == "python" and tier == "big") else None
    out = run_bench(
        benchmark,
        fn,
        scenario=f"lpi-stress {lay.vcpus}x{lay.devices}x{lay.events}",
        op="its-save",
        tier=tier,
        impl=impl,
        n_lpis=lay.n_ites,
        rounds=rounds,
    )
    if impl == "engine":
        assert out.ites_written == lay.n_ites and out.dtes_written == lay.devices
    else:
        assert sum(1 for k in out if k[0] == "ite") == lay.n_ites


@pytest.mark.parametrize("tier", TIERS)
@pytest.mark.parametrize("impl", ["engine", "python"])
def test_its_restore_tables(benchmark, impl, tier):
    lay, mem, _, _ = _its_state(tier)
    if impl == "engine":

        def fn():
            return abi.restore_tables_v0(mem, lay.baser0, lay.baser1, n_vcpus=lay.vcpus)
    else:
        w = _walker()

        def fn():
            return w.restore(mem, lay.baser0, lay.baser1, lay.vcpus)

    rounds = 1 if (impl == "python" and tier == "big") else None
    out = run_bench(
        benchmark,
        fn,
        scenario=f"lpi-stress {lay.vcpus}x{lay.devices}x{lay.events}",
        op="its-restore",
        tier=tier,
        impl=impl,
        n_lpis=lay.n_ites,
        rounds=rounds,
    )
    if impl == "engine":
        colls, devs = out
        assert len(colls) == lay.vcpus and sum(len(d.event_id) for d in devs) == lay.n_ites


# --------------------------------------------------------------------------- VM level
def _build_vm(lay: ItsLayout, *, mapped: bool):
    """A GICv3 VM set up as vgic_lpi_stress's guest does."""
    from vlpi.its import queue as Q
    from vlpi.vm import VM

    vm = VM(lay.vcpus, gic="v3")
    vm.mem.add_slot(TABLE_GPA, lay.end - TABLE_GPA)
    vm.write_propbaser(lay.prop | (lay.id_bits - 1))
    for v in range(lay.vcpus):
        vm.write_pendbaser(v, lay.pend + v * lay.pend_stride)
        vm.enable_lpis(v)
    its = vm.its
    its.write_baser(0, lay.baser0)
    its.write_baser(1, lay.baser1)
    Q.write_cbaser(its, VALID | lay.cmdq | 15)  # 16 x 4 KiB pages
    Q.write_ctlr(its, 1)
    vm.init()
    for v in range(lay.vcpus):
        its.mapc(v, v)
    for d in range(lay.devices):
        its.mapd(d, lay.itt(d), lay.event_bits - 1)
    if mapped:
        its.map_events(*lay.mapping())
    return vm


@pytest.mark.parametrize("tier", TIERS)
def test_bulk_map_events(benchmark, tier):
    lay = ItsLayout(*STRESS[tier][:3])
    state = {}

    def setup():
        state["vm"] = _build_vm(lay, mapped=False)

    setup()  # skips here if the API is missing
    mapping = lay.mapping()
    run_bench(
        benchmark,
        lambda: state["vm"].its.map_events(*mapping),
        scenario=f"lpi-stress {lay.vcpus}x{lay.devices}x{lay.events}",
        op="its-map",
        tier=tier,
        impl="engine",
        n_lpis=lay.n_ites,
        setup=setup,
    )
    assert len(state["vm"].lpis) == lay.n_ites


#: extra MSI shapes (vcpus, devices, events, iterations): the selftest's defaults (-v1 -d1 -e16
#: -i1000) and a many-vCPU / few-events one; the tier shapes above are the third point
MSI_SHAPES = {"selftest-default": (1, 1, 16, 1000), "wide": (16, 4, 64, 8)}


@pytest.mark.parametrize(
    ("tier", "shape"),
    [("ci", None), ("ci", "selftest-default"), ("ci", "wide"), pytest.param("big", None, marks=pytest.mark.big)],
)
def test_signal_msi(benchmark, tier, shape):
    vcpus, devices, events, iters = MSI_SHAPES[shape] if shape else STRESS[tier]
    lay = ItsLayout(vcpus, devices, events)
    vm = _build_vm(lay, mapped=True)
    dev, ev, _, _ = lay.mapping()
    dev, ev = np.tile(dev, iters), np.tile(ev, iters)
    res = run_bench(
        benchmark,
        lambda: vm.signal_msi(dev, ev),
        scenario=f"lpi-stress {lay.vcpus}x{lay.devices}x{lay.events}x{iters}",
        op="msi",
        tier=tier,
        impl="engine",
        n_lpis=dev.size,
    )
    assert np.all(res == 1)  # every MSI made its LPI pending (software path on GICv3)
    assert np.asarray(vm.lpis.pending_latch).astype(bool).all()
