"""The `vlpi` command (the README's main job) and the scenario builders behind it."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import numpy as np
import pytest

import vlpi
from vlpi.cli import main
from vlpi.scenarios import build_host, build_vm

SMALL = ["save", "--vms", "3", "--vcpus", "4", "--id-bits", "14", "--rounds", "1"]


def _num(text: str, label: str) -> int:
    m = re.search(rf"([\d,]+) {label}", text)
    assert m, f"no '{label}' in output:\n{text}"
    return int(m.group(1).replace(",", ""))


def test_save_prints_the_kernel_equivalent_report(capsys):
    assert main(SMALL) == 0
    out = capsys.readouterr().out
    assert "3 VMs x 4 vCPUs (12 vPEs), IDbits 14, GICv4.1, order=intid" in out
    n = 3 * ((1 << 14) - 8192)
    assert f"LPIs           {n:,}" in out
    # every LPI is targeted and lies in its own byte: one guest read per LPI (kernel's GPA cache)
    assert _num(out, "guest reads") == n
    forwarded = int(re.search(r"\(([\d,]+) forwarded\)", out).group(1).replace(",", ""))
    assert 0 < forwarded < n
    assert _num(out, "VPT reads") == forwarded  # on GICv4.1 every targeted hw LPI reads its VPT bit
    assert "0 writes: nothing left to change" in out
    assert re.search(r"kernel loop +save .*vlpi [\d.]+x faster", out)


def test_save_counts_match_the_library(capsys):
    """The CLI reports what save_pending_tables_many reports for the same scenario."""
    assert main([*SMALL, "--gic", "v3", "--no-baseline"]) == 0
    out = capsys.readouterr().out
    host = build_host(3, 4, 14, gic="v3", seed=0)
    reps = vlpi.save_pending_tables_many(host.jobs, has_gicv4_1=False)
    assert _num(out, "guest reads") == sum(r.guest_reads for r in reps)
    assert "0 VPT reads" in out and "vPEs unmapped/remapped 0/0" in out
    assert "kernel loop" not in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["save", "--id-bits", "30"], "argument --id-bits: must be in 14..24, got '30'"),
        (["save", "--vms", "0"], "argument --vms: must be an integer >= 1, got '0'"),
        (["save", "--vcpus", "0"], "argument --vcpus: must be an integer >= 1, got '0'"),
    ],
)
def test_bad_sizes_exit_2_with_a_message(args, message, capsys):
    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err == f"vlpi save: error: {message}\n"


def test_unknown_choice_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as e:
        main(["save", "--gic", "v5"])
    assert e.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_console_script_module_runs():
    r = subprocess.run([sys.executable, "-m", "vlpi", "save", *SMALL[1:], "--no-baseline"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "restore" in r.stdout


def test_host_4096_shape_at_small_scale():
    """build_host's layout: INTID i -> vCPU (i - 8192) mod vcpus, PENDBASERs 64 KiB apart, junk attributes."""
    h = build_host(2, 8, 14, seed=1)
    assert h.n_lpis == 2 * ((1 << 14) - 8192) and h.n_vpes == 16 and h.has_gicv4_1
    for vm in h.vms:
        lp = vm.lpis
        assert np.array_equal(lp.target_vcpu, (lp.intid.astype(np.int64) - 8192) % 8)
        bases = vm.pendbaser & np.uint64(vlpi.pending.PENDBASER_ADDRESS_MASK)
        assert np.all(np.diff(bases.astype(np.int64)) == 1 << 16)
        assert np.all(vm.pendbaser != bases)  # attribute bits present, must be ignored
        assert not np.any(lp.pending_latch & lp.hw)  # forwarded LPIs keep their state in the VPT
        assert 0.3 < lp.hw.mean() < 0.7


def test_sparse_vm_and_randomize():
    vm = build_vm(4, 20, lpis_per_vcpu=100, seed=2)
    assert len(vm.lpis) == 400 and np.bincount(vm.lpis.target_vcpu).tolist() == [100] * 4
    assert vm.lpis.max_intid < 1 << 20 and vm.table_bytes == (1 << 20) // 8
    before = vm.tables().copy()
    vm.randomize(np.random.default_rng(3))
    assert not np.array_equal(before, vm.tables())
    assert np.all(vm.tables()[:, :1024] == before[:, :1024])  # the first KiB is never touched


def test_scenario_argument_errors():
    with pytest.raises(ValueError, match="gic must be one of"):
        build_vm(2, 14, gic="v2")
    with pytest.raises(ValueError, match="do not fit"):
        build_vm(2, 14, lpis_per_vcpu=5000)


def test_a_reader_that_goes_away_is_not_an_error_trace():
    """``vlpi inspect --json STREAM | head``: when stdout's reader has gone, vlpi stops quietly
    (exit status 1, nothing on stderr) instead of printing a BrokenPipeError traceback."""
    stream = os.path.join(os.path.dirname(__file__), "data", "qemu", "stream.bin.gz")
    r, w = os.pipe()
    os.close(r)  # no reader at all: the first write fails with EPIPE
    try:
        p = subprocess.run([sys.executable, "-m", "vlpi", "inspect", "--json", stream], stdout=w,
                           stderr=subprocess.PIPE, text=True, timeout=300)
    finally:
        os.close(w)
    assert p.returncode == 1, p.stderr
    assert "Traceback" not in p.stderr and "BrokenPipe" not in p.stderr, p.stderr
