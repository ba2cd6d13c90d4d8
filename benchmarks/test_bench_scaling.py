"""How save, restore and the ITS tables scale: sweeps over one axis at a time (engine only).

Groups (``op`` and the swept axis; every point records its coordinates in ``extra_info``):

* ``save``/``restore`` ``sweep-vpes`` -- vPEs grow (VMs of 64 vCPUs, 256 random LPIs per vCPU,
  IDbits 16): LPIs grow with them.
* ``save``/``restore`` ``sweep-lpis`` -- LPIs per vCPU grow on a fixed set of vPEs (IDbits 20).
* ``save``/``restore`` ``sweep-idbits`` -- the INTID space grows (IDbits 14..24) with the LPIs fixed:
  the pending tables get larger and sparser.
* ``its-save``/``its-restore`` ``sweep-ites`` -- ``SAVE_TABLES``/``RESTORE_TABLES`` of an ITS shaped
  like the kernel selftest ``vgic_lpi_stress`` (vCPUs x devices x events), ITEs growing.
* ``copy`` ``stream`` -- ``numpy.copyto`` of a large buffer: the machine's memory bandwidth, the
  roofline the notebook ``notebooks/scaling.ipynb`` draws (``bytes_moved`` = read + write).

Save and restore rounds start from identical, freshly randomised tables (about half the bits change).
``bytes_touched`` is the least memory traffic of a call: the LPI table (``lpis.nbytes``), each
distinct pending-table byte the walk reads, each byte it changes (written back; for restore each
1-byte write, an upper bound), and each distinct VPT byte read (save); time >= bytes_touched / bandwidth.

CI tier: small points (seconds in all); ``--big``: up to 4096 vPEs and 16 M LPIs (minutes).
"""

from __future__ import annotations

import numpy as np
import pytest
from harness import run_bench

from vlpi import save_pending_tables_many, scenarios, sync_pending_status

SEED = 12345
SWEEPS = {
    # axis -> tier -> list of build_host kwargs
    "vpes": {
        "ci": [dict(vms=1, vcpus=16), dict(vms=1, vcpus=64), dict(vms=4, vcpus=64)],
        "big": [dict(vms=1, vcpus=64), dict(vms=4, vcpus=64), dict(vms=16, vcpus=64), dict(vms=64, vcpus=64)],
    },
    "lpis": {
        "ci": [dict(vms=1, vcpus=64, lpis_per_vcpu=n) for n in (64, 256, 1024, 4096)],
        "big": [dict(vms=16, vcpus=64, lpis_per_vcpu=n) for n in (64, 256, 1024, 4096, 14336)],
    },
    "idbits": {
        "ci": [dict(vms=1, vcpus=16, lpis_per_vcpu=512, id_bits=b) for b in (14, 16, 18, 20)],
        "big": [dict(vms=4, vcpus=64, lpis_per_vcpu=32, id_bits=b) for b in (14, 16, 18, 20, 22, 24)],
    },
}
_DEFAULTS = {"vpes": dict(id_bits=16, lpis_per_vcpu=256), "lpis": dict(id_bits=20), "idbits": {}}
#: (vcpus, devices, events per device); KVM's ITS has 16 INTID bits: at most 57,344 ITEs
ITS_SWEEP = {
    "ci": [(4, 8, 128), (4, 16, 256), (4, 32, 512)],
    "big": [(16, 8, 128), (16, 16, 256), (16, 32, 512), (64, 32, 1024), (64, 56, 1024)],
}
COPY_BYTES = {"ci": 32 << 20, "big": 512 << 20}


_HOSTS: dict = {}


def _host(axis: str, tier: str, k: int) -> scenarios.HostScenario:
    key = (axis, tier, k)
    if key not in _HOSTS:
        _HOSTS.clear()  # one host alive at a time (the big points are large)
        _HOSTS[key] = scenarios.build_host(**{**_DEFAULTS[axis], **SWEEPS[axis][tier][k]}, gic="v4.1", seed=0)
    return _HOSTS[key]


def _bytes_touched(host: scenarios.HostScenario, save: bool) -> int:
    """LPI tables + distinct pending-table bytes read + (save) distinct VPT bytes read; the bytes
    written back are added by the caller from the report."""
    total = 0
    for vm in host.vms:
        lp = vm.lpis
        t = np.asarray(lp.target_vcpu, np.int64)
        i = np.asarray(lp.intid, np.int64)
        ok = t >= 0
        total += lp.nbytes + np.unique(t[ok] * vm.stride + i[ok] // 8).size
        if save and vm.vpt is not None:
            h = ok & np.asarray(lp.hw, bool)
            total += np.unique(t[h] * vm.table_bytes + i[h] // 8).size
    return int(total)


def _coords(host: scenarios.HostScenario, axis: str) -> dict:
    vm = host.vms[0]
    return dict(axis=axis, vpes=host.n_vpes, vms=len(host.vms), id_bits=int(np.log2(vm.table_bytes * 8)),
                lpis_per_vpe=host.n_lpis / host.n_vpes)


def _sweep_params() -> list:
    out = []
    for axis, tiers in SWEEPS.items():
        for tier, points in tiers.items():
            marks = [pytest.mark.big] if tier == "big" else []
            out += [pytest.param(axis, tier, k, marks=marks, id=f"{axis}-{tier}-{k}") for k in range(len(points))]
    return out


@pytest.mark.parametrize("op", ["save", "restore"])
@pytest.mark.parametrize("axis,tier,k", _sweep_params())
def test_sweep(benchmark, op, axis, tier, k):
    host = _host(axis, tier, k)
    jobs = host.jobs
    if op == "save":
        def fn():
            return save_pending_tables_many(jobs, has_gicv4_1=host.has_gicv4_1)
    else:
        def fn():
            return [sync_pending_status(m, pb, lp) for m, pb, lp, _ in jobs]

    reps = run_bench(
        benchmark, fn, scenario=f"sweep-{axis}", op=op, tier=tier, impl="engine", n_lpis=host.n_lpis,
        setup=lambda: host.randomize(SEED), rounds=None if tier == "big" else 3,
    )
    # bytes written back: the save reports them; for restore, its 1-byte writes (one per consumed bit)
    changed = sum(r.bytes_changed if op == "save" else r.guest_writes for r in reps)
    benchmark.extra_info.update(_coords(host, axis), bytes_touched=_bytes_touched(host, op == "save") + changed)
    assert changed > 0 and sum(r.guest_writes for r in reps) > host.n_lpis // 8


def _its_params() -> list:
    out = []
    for tier, points in ITS_SWEEP.items():
        marks = [pytest.mark.big] if tier == "big" else []
        out += [pytest.param(tier, k, marks=marks, id=f"{tier}-{k}") for k in range(len(points))]
    return out


@pytest.mark.parametrize("op", ["its-save", "its-restore"])
@pytest.mark.parametrize("tier,k", _its_params())
def test_its_sweep(benchmark, op, tier, k):
    import test_bench_its as tb

    from vlpi import GuestMemory
    from vlpi.its import abi

    lay = tb.ItsLayout(*ITS_SWEEP[tier][k])
    mem = GuestMemory()
    mem.add_slot(tb.TABLE_GPA, lay.end - tb.TABLE_GPA)
    devs, colls = lay.its_devices(), lay.collections()
    abi.save_tables_v0(mem, lay.baser0, lay.baser1, devs, colls, has_gicv4_1=False)
    if op == "its-save":
        def fn():
            return abi.save_tables_v0(mem, lay.baser0, lay.baser1, devs, colls, has_gicv4_1=False)
    else:
        def fn():
            return abi.restore_tables_v0(mem, lay.baser0, lay.baser1, n_vcpus=lay.vcpus)

    out = run_bench(benchmark, fn, scenario="sweep-ites", op=op, tier=tier, impl="engine", n_lpis=lay.n_ites,
                    rounds=None if tier == "big" else 3)
    benchmark.extra_info.update(axis="ites", ites=lay.n_ites, devices=lay.devices, events=lay.events,
                                vpes=lay.vcpus, bytes_touched=8 * (lay.n_ites + lay.devices + lay.vcpus))
    if op == "its-save":
        assert out.ites_written == lay.n_ites
    else:
        assert sum(len(d.event_id) for d in out[1]) == lay.n_ites


@pytest.mark.parametrize("tier", ["ci", pytest.param("big", marks=pytest.mark.big)])
def test_stream_copy(benchmark, tier):
    n = COPY_BYTES[tier]
    src = np.ones(n, np.uint8)
    dst = np.zeros(n, np.uint8)
    run_bench(benchmark, lambda: np.copyto(dst, src), scenario="stream", op="copy", tier=tier, impl="numpy",
              n_lpis=n, rounds=None if tier == "big" else 3)
    benchmark.extra_info.update(axis="bandwidth", bytes_moved=2 * n)
    assert dst[-1] == 1
