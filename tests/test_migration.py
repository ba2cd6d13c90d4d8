"""vlpi.migration: two-sided migration, verification, faults and rollback, traffic, host evacuation."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from vlpi import migration as M
from vlpi import snapshot as S
from vlpi.scenarios import build_model_host, build_model_vm
from vlpi.vm import VM, LostReason
from vlpi.vm import migrate as vm_migrate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def keys(p):
    return set(zip(p["vcpu"].tolist(), p["intid"].tolist(), strict=True))


def host(n_vms=2, vcpus=4, id_bits=14, gic="v4.1", seed=3, **kw):
    return build_model_host(n_vms, vcpus, id_bits, gic=gic, seed=seed, **kw)


# ----------------------------------------------------------------------------- round trips
@pytest.mark.parametrize(
    ("n_vms", "vcpus", "id_bits", "gic", "sparse"),
    [(1, 1, 14, "v4.1", None), (1, 4, 14, "v3", None), (2, 4, 14, "v4.1", None), (1, 3, 15, "v4.1", 40),
     (4, 8, 15, "v4.1", None), (3, 16, 14, "v3", 100)],
)
def test_round_trip_verifies_with_nothing_lost(n_vms, vcpus, id_bits, gic, sparse):
    vms = host(n_vms, vcpus, id_bits, gic=gic, lpis_per_vcpu=sparse)
    before = [M.pending_set(vm) for vm in vms]
    assert sum(b.size for b in before) > 0
    dst, rep = M.migrate_host(vms, through_bytes=True)
    assert rep.ok and rep.aborted is None
    assert rep.lost_in_window.size == 0
    for b, d, v in zip(before, dst, rep.verification, strict=True):
        assert v.ok and v.differences.size == 0 and v.expected == b.size == v.found
        assert keys(M.pending_set(d)) == keys(b)
        assert d.running.all()
    # the guest on the destination takes exactly what was pending, per vCPU
    for b, d in zip(before, dst, strict=True):
        for vc in range(d.n_vcpus):
            taken = set(d.acknowledge(vc).tolist())
            assert taken == set(b["intid"][b["vcpu"] == vc].tolist())
    assert rep.vpes_unmapped == (sum(vm.n_vcpus for vm in vms) if gic == "v4.1" else 0)


def test_matches_the_one_process_migrate_of_vm():
    """Differential: the new path ends in the same pending state as vlpi.vm.migrate when the
    same events are forwarded again."""
    a = build_model_vm(4, 14, gic="v4.1", seed=11)
    b = build_model_vm(4, 14, gic="v4.1", seed=11)
    it = b.its.ites()
    f = it["forwarded"]
    ref, _ = vm_migrate(b, forward_after=(it["device_id"][f], it["event_id"][f]))
    (dst,), rep = M.migrate_host([a])
    assert rep.ok
    assert np.array_equal(M.pending_set(dst), M.pending_set(ref))
    assert np.array_equal(dst.lpis.hw, ref.lpis.hw)
    assert np.array_equal(dst.mem.slots[0].data, ref.mem.slots[0].data)


def test_two_processes_through_a_snapshot_file(tmp_path):
    path = tmp_path / "src.vlpisnap"
    code = f"""
import json, sys
from vlpi import migration as M, snapshot as S
from vlpi.scenarios import build_model_host
vms = build_model_host(2, 4, 14, gic="v4.1", seed=5)
src = M.save_host(vms)
S.write({str(path)!r}, src.snapshot)
print(json.dumps([int(im.pending.size) for im in src.snapshot.vms]))
"""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    sizes = json.loads(out.stdout.strip().splitlines()[-1])
    snap = S.read(path)
    dst, phases, ver = M.restore_destination(snap)
    assert [v.expected for v in ver] == sizes
    assert all(v.ok for v in ver)
    # the same VMs built here: the destination holds what the other process's source held
    ref = build_model_host(2, 4, 14, gic="v4.1", seed=5)
    for d, r in zip(dst, ref, strict=True):
        assert keys(M.pending_set(d)) == keys(M.pending_set(r))
    assert [p.side for p in phases] == ["destination"] * 4


def test_report_json_and_table():
    vms = host()
    _, rep = M.migrate_host(vms, page_size=16384)
    d = rep.to_dict()
    json.dumps(d)
    assert d["ok"] and d["interrupts_lost"] == 0 and d["verification"]["differences"] == 0
    assert d["page_size"] == 16384 and d["dirty_pages"] > 0
    assert {p["name"] for p in d["phases"]} >= {"SAVE_TABLES", "SAVE_PENDING_TABLES", "verify"}
    t = rep.table()
    assert "verification OK" in t and "16 KiB host pages" in t


def test_dirty_pages_at_the_host_page_size():
    counts = {}
    for ps in S.PAGE_SIZES:
        vms = host(seed=9)
        _, rep = M.migrate_host(vms, page_size=ps)
        counts[ps] = rep.dirty_pages
        per_vm_4k = sum(np.unique(np.concatenate([np.asarray(m.pending_save.engine.dirty_pages),
                                                  np.asarray(m.its_save.dirty_pages)])).size for m in rep.vms)
        # per VM coarsening equals the report (VMs do not share pages)
        assert rep.dirty_pages == sum(
            M.coarsen_pages(np.concatenate([np.asarray(m.pending_save.engine.dirty_pages),
                                            np.asarray(m.its_save.dirty_pages)]), ps).size for m in rep.vms)
        assert rep.dirty_pages <= per_vm_4k
    assert counts[4096] >= counts[16384] >= counts[65536] > 0
    with pytest.raises(ValueError, match="page_size"):
        M.coarsen_pages([1], 8192)


def test_vpe_counts_come_from_the_vms_vpes():
    vms = [build_model_vm(3, 14, gic="v4.1", seed=1), build_model_vm(5, 14, gic="v3", seed=2)]
    _, rep = M.migrate_host(vms)
    assert [m.pending_save.vpes_unmapped for m in rep.vms] == [3, 0]
    assert rep.vpes_unmapped == rep.vpes_remapped == 3


# ----------------------------------------------------------------------------- faults
def _state(vms):
    return [keys(M.pending_set(vm)) for vm in vms]


def _assert_resumed(vms, before, err):
    rep = err.report
    assert rep is not None and rep.aborted and rep.rollback_lost == 0
    assert _state(vms) == before
    for vm in vms:
        assert vm.running.all()
        if vm.gicv4 is not None:
            assert vm.gicv4.mapped.all()


@pytest.mark.parametrize("at", [0.0, 0.13, 0.37, 0.5, 0.74, 0.99])
@pytest.mark.parametrize("kind", ["pending-save", "its-save", "restore", "snapshot"])
def test_fault_aborts_and_the_source_resumes_intact(kind, at):
    vms = host(3, 4, 14, seed=17)
    before = _state(vms)
    plan = M.plan_fault(vms, kind, at)
    with pytest.raises(M.MigrationAborted) as ei:
        M.migrate_host(vms, through_bytes=True, prepare=plan.prepare, corrupt=plan.corrupt)
    _assert_resumed(vms, before, ei.value)
    want = {"pending-save": "SAVE_PENDING_TABLES", "its-save": "SAVE_TABLES", "restore": "destination",
            "snapshot": "destination"}[kind]
    assert ei.value.phase == want
    if kind == "snapshot":
        assert isinstance(ei.value.cause, S.SnapshotError) and ei.value.cause.kind == "corrupt"
    # healed, the same source migrates cleanly afterwards
    plan.undo()
    _, rep = M.migrate_host(vms)
    assert rep.ok


def test_fault_with_a_hole_in_guest_memory_is_a_read_fault():
    vm = build_model_vm(2, 14, gic="v4.1", seed=4)
    before = _state([vm])
    p = M.pending_set(vm)
    r = p[p.size // 2]
    gpa = (vm.read_pendbaser(int(r["vcpu"])) & 0x000F_FFFF_FFFF_0000) + int(r["intid"]) // 8
    undo = M.protect(vm.mem, gpa & ~0xFFF, hole=True)
    with pytest.raises(M.MigrationAborted) as ei:
        M.migrate_host([vm])
    assert ei.value.cause.write is False
    _assert_resumed([vm], before, ei.value)
    undo()
    assert M.migrate_host([vm])[1].ok


def test_qemu_policy_tolerates_efault_and_names_the_cost():
    vms = host(2, 4, 14, seed=21)
    plan = M.plan_fault(vms, "pending-save", 0.6)
    before = [M.pending_set(vm) for vm in vms]
    dst, rep = M.migrate_host(vms, policy="qemu")
    assert rep.aborted is None and not rep.ok
    (t,) = rep.tolerated
    assert t.phase == "SAVE_PENDING_TABLES" and t.errno == 14 and "not saved" in t.cost and t.vm == 1
    assert rep.verification[0].ok  # the other VM is untouched by the fault
    v = rep.verification[1]
    assert v.differences.size > 0
    assert set(v.differences["reason"].tolist()) == {M.NOT_SAVED}
    # every difference is a pending LPI at or after the fault in INTID order, with its event
    assert v.differences["missing"].all()
    assert (v.differences["device_id"] >= 0).all()
    assert keys(v.differences) <= keys(before[1])
    plan.undo()


def test_qemu_policy_goes_on_after_save_tables_fails():
    vm = build_model_vm(4, 14, gic="v4.0", seed=2)  # forwarded LPIs on GICv4.0: SAVE_TABLES says EACCES
    with pytest.raises(M.MigrationAborted, match="SAVE_TABLES"):
        M.migrate_host([vm], policy="strict")
    (dst,), rep = M.migrate_host([vm], policy="qemu")
    (t,) = rep.tolerated
    assert t.phase == "SAVE_TABLES" and t.errno == 13
    r = rep.verification[0].reasons()
    assert set(r) <= {"ITS_TABLES_NOT_SAVED", "VLPI_UNSAVED"} and sum(r.values()) == rep.verification[0].expected


def test_qemu_policy_non_efault_is_a_process_abort():
    vm = VM(2, gic="v3")
    vm.mem.add_slot(0, 1 << 20)
    with pytest.raises(M.MigrationAborted) as ei:
        M.migrate_host([vm], policy="qemu")
    assert ei.value.qemu_process_abort and ei.value.cause.errno == 6  # ENXIO: not initialised
    vm = VM(2, gic="v3")
    vm.mem.add_slot(0, 1 << 20)
    with pytest.raises(M.MigrationAborted) as ei:
        M.migrate_host([vm], policy="strict", resume_on_abort=False)
    assert not ei.value.qemu_process_abort


def test_bad_arguments_change_nothing():
    vms = host(1, 2, 14)
    before = _state(vms)
    for kw, match in (({"policy": "lenient"}, "policy"), ({"page_size": 8192}, "page_size")):
        with pytest.raises(ValueError, match=match):
            M.migrate_host(vms, **kw)
    with pytest.raises(ValueError, match="finite"):
        M.Traffic(-1.0)
    with pytest.raises(ValueError, match="KernelCosts"):
        M.KernelCosts(read_ns=float("nan"))
    with pytest.raises(ValueError, match="fault"):
        M.plan_fault(vms, "disk")
    assert _state(vms) == before and vms[0].running.all()


# ----------------------------------------------------------------------------- traffic
def test_traffic_during_the_window_is_counted_and_named():
    def run(seed):
        vms = host(2, 4, 14, seed=8)
        return M.migrate_host(vms, traffic=M.Traffic(2e6, seed=seed))

    (a_vms, a), (_, b) = run(1), run(1)
    assert a.traffic_sent > 0 and a.traffic_sent == b.traffic_sent
    # deterministic with a seed, except when each loss was recorded (host clock)
    same = [n for n in a.lost_in_window.dtype.names if n != "time_s"]
    assert np.array_equal(np.asarray(a.lost_in_window)[same], np.asarray(b.lost_in_window)[same])
    for vm_lost in (vm.lost.records for vm in a_vms):
        assert np.all(np.diff(vm_lost["time_s"]) >= 0)  # recorded in order
    lost = a.lost_in_window
    assert lost.size > 0
    reasons = set(lost["reason"].tolist())
    assert reasons <= {LostReason.VPE_UNMAPPED, LostReason.NOT_IN_SAVED_IMAGE}
    assert LostReason.VPE_UNMAPPED in reasons
    assert (lost["device_id"] >= 0).all() and (lost["event_id"] >= 0).all() and (lost["intid"] >= 8192).all()
    assert a.ok  # interrupts raised after the pause are not part of the verified set
    assert a.window_kernel_s > 0 and a.window_vlpi_s > 0
    assert a.to_dict()["interrupts_lost"] == lost.size
    (_, c) = run(2)
    assert not np.array_equal(c.lost_in_window, a.lost_in_window)


def test_quiesced_loses_nothing_and_kernel_window_follows_the_costs():
    vms = host(1, 4, 14, seed=8)
    _, a = M.migrate_host(vms)
    assert a.traffic_sent == 0 and a.lost_in_window.size == 0
    vms = host(1, 4, 14, seed=8)
    _, b = M.migrate_host(vms, costs=M.KernelCosts(read_ns=0, write_ns=0, lpi_ns=0, vpt_read_ns=0, vmapp_ns=1000))
    assert b.window_kernel_s == pytest.approx(2 * 4 * 1e-6)


# ----------------------------------------------------------------------------- command line
def _cli(argv, capsys):
    from vlpi.cli import main

    rc = main(argv)
    out = capsys.readouterr()
    return rc, out.out, out.err


SMALL = ["migrate", "--vms", "2", "--vcpus", "2", "--id-bits", "14"]


def test_cli_migrate_json_and_table(capsys, tmp_path):
    path = tmp_path / "host.snap"
    rc, out, _ = _cli(SMALL + ["--json", "--out", str(path), "--page-size", "64"], capsys)
    d = json.loads(out)
    assert rc == 0 and d["ok"] and d["verification"]["differences"] == 0 and d["interrupts_lost"] == 0
    assert d["page_size"] == 65536 and d["snapshot_bytes"] == path.stat().st_size
    assert S.is_snapshot(path) and len(S.summarize(path)["vms"]) == 2
    rc, out, _ = _cli(SMALL, capsys)
    assert rc == 0 and "verification OK" in out and "SAVE_PENDING_TABLES" in out


def test_cli_migrate_fault_and_traffic_exit_status(capsys):
    rc, out, _ = _cli(SMALL + ["--fault", "pending-save", "--json"], capsys)
    d = json.loads(out)
    assert rc == 1 and not d["ok"] and d["rollback_lost"] == 0 and "SAVE_PENDING_TABLES" in d["aborted"]
    rc, out, _ = _cli(SMALL + ["--fault", "pending-save", "--policy", "qemu"], capsys)
    assert rc == 1 and "verification FAILED" in out and "PENDING_NOT_SAVED" in out
    rc, out, _ = _cli(SMALL + ["--traffic", "3e6", "--json"], capsys)
    d = json.loads(out)
    assert rc == 0 and d["traffic_sent"] > 0 and d["interrupts_lost"] > 0 and d["lost"][0]["reason"]


def test_cli_version_and_bad_options(capsys):
    from vlpi import __version__

    with pytest.raises(SystemExit) as ei:
        _cli(["--version"], capsys)
    assert ei.value.code == 0 and __version__ in capsys.readouterr().out
    rc, _, err = _cli(SMALL + ["--fault-at", "1.5"], capsys)
    assert rc == 2 and "--fault-at" in err
    rc, _, err = _cli(SMALL + ["--costs", "read=abc"], capsys)
    assert rc == 2 and "nanoseconds" in err
    rc, _, err = _cli(SMALL + ["--costs", "disk=3"], capsys)
    assert rc == 2 and "--costs" in err


def test_cli_costs_and_inspect(capsys, tmp_path):
    rc, out, _ = _cli(SMALL + ["--costs", "read=0,write=0,lpi=0,vpt_read=0,vmapp=1000", "--json"], capsys)
    d = json.loads(out)
    assert rc == 0 and d["window_kernel_s"] == pytest.approx(2 * 2 * 2 * 1e-6)
    assert d["kernel_costs"]["source"].startswith("user-set")
    path = tmp_path / "s.snap"
    assert _cli(SMALL + ["--out", str(path)], capsys)[0] == 0
    rc, out, _ = _cli(["inspect", str(path)], capsys)
    assert rc == 0 and "vm1" in out and "PENDBASER" in out
    rc, out, _ = _cli(["inspect", str(path), "--json"], capsys)
    assert rc == 0 and len(json.loads(out)["vms"]) == 2
    other = tmp_path / "x.bin"
    other.write_bytes(b"\x00" * 100)
    for p in (other, tmp_path / "missing"):
        rc, _, err = _cli(["inspect", str(p)], capsys)
        assert rc == 2 and str(p) in err


# ----------------------------------------------------------------------------- one VM, files
def test_single_vm_migrate_is_compatible_and_verifies():
    a = build_model_vm(4, 14, gic="v4.1", seed=12)
    it = a.its.ites()
    f = it["forwarded"]
    before = M.pending_set(a)
    dst, rep = M.migrate(a, forward_after=(it["device_id"][f], it["event_id"][f]))
    assert rep.forwarded.all() and rep.verification.ok and rep.pending_save.vpes_unmapped == 4
    assert rep.registers["propbaser"] == a.propbaser and rep.its_save.ites_written == len(it["intid"])
    assert keys(M.pending_set(dst)) == keys(before)
    b = build_model_vm(4, 14, gic="v4.1", seed=12)
    dst2, rep2 = M.migrate(b)  # nothing forwarded: the VLPIs' state travels as pending_latch
    assert rep2.forwarded is None and not dst2.lpis.hw.any() and rep2.verification.ok
    assert keys(M.pending_set(dst2)) == keys(before)


def test_save_and_load_through_a_file(tmp_path):
    vms = host(2, 3, 14, seed=31)
    before = [keys(M.pending_set(vm)) for vm in vms]
    path = tmp_path / "h.snap"
    src = M.save(path, vms)
    assert [im.pending.size for im in src.snapshot.vms] == [len(b) for b in before]
    dst, _, ver = M.load(path)
    assert all(v.ok for v in ver) and [keys(M.pending_set(d)) for d in dst] == before
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(S.SnapshotError, match="truncated"):
        M.load(path)


def test_vm_save_and_load_hooks_and_names(tmp_path):
    import vlpi
    import vlpi.vm

    assert vlpi.vm.migrate is M.migrate is vlpi.migrate
    assert vlpi.vm.MigrationReport is M.MigrationReport and vlpi.vm.copy_memory is M.copy_memory
    vm = build_model_vm(3, 14, gic="v4.1", seed=40)
    vm.unforward([0], [1])  # leaves a record in the lost-interrupt log if the VLPI was pending
    vm.signal_msi([99], [0])  # no such device: NO_DEVICE, logged
    log = vm.lost.records.copy()
    before = keys(M.pending_set(vm))
    path = tmp_path / "one.snap"
    src = vm.save(path, page_size=65536)
    assert src.snapshot.vms[0].meta["page_size"] == 65536 and not vm.running.any()
    dst = VM.load(path)
    assert keys(M.pending_set(dst)) == before and dst.running.all()
    assert len(dst.lost) == 0  # the destination's log is its own; the source's travels in the snapshot
    got = S.read(path).vms[0].lost
    assert got.size == log.size and np.array_equal(got, log)
    M.save(path, host(2, 2, 14))
    with pytest.raises(ValueError, match="2 VMs"):
        VM.load(path)


@pytest.mark.parametrize(("src_gic", "dst_gic"), [("v4.1", "v3"), ("v3", "v4.1"), ("v4.1", "v4.0")])
def test_destination_on_another_gic(src_gic, dst_gic):
    vms = host(2, 3, 14, gic=src_gic, seed=50)
    before = [keys(M.pending_set(vm)) for vm in vms]
    dst, rep = M.migrate_host(vms, gic=dst_gic, through_bytes=True)
    assert rep.ok and [keys(M.pending_set(d)) for d in dst] == before
    assert all(d.gic == dst_gic for d in dst)
    assert all((d.lpis.hw.any()) == (dst_gic != "v3" and src_gic != "v3") for d in dst)
