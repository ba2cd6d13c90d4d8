"""Command line: argument parsing and printing only; the work is done by the library.

``vlpi save`` builds a host scenario (default: host-4096), saves every VM's pending tables in one
parallel pass, restores them, and prints what the kernel would have done (reads, writes, bytes
changed, dirty pages) and how long vlpi took, next to the kernel's own algorithm compiled.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Sequence

import numpy as np

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vlpi",
        description="Model arm64 KVM LPI/VLPI pending-table save/restore for live migration, bit-exactly and fast.",
    )
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    s = sub.add_parser(
        "save",
        help="save then restore the pending tables of a host of VMs and report (default: host-4096)",
        description="Build a host of VMs (every VM maps every INTID 8192..2**id_bits-1 round-robin over its "
        "vCPUs, PENDBASERs 64 KiB apart, random pending/VPT/table bits), save all pending tables in one "
        "parallel pass (GICv4.1: VPT bits of forwarded LPIs), restore them, and report.",
    )
    s.add_argument("--vms", type=int, default=64, help="VMs on the host (default 64)")
    s.add_argument("--vcpus", type=int, default=64, help="vCPUs (= vPEs) per VM (default 64)")
    s.add_argument("--id-bits", type=int, default=16, help="LPI INTID bits, 14..24 (default 16)")
    s.add_argument("--lpis-per-vcpu", type=int, default=None,
                   help="sparse tables: this many random INTIDs per vCPU (default: every INTID, dense)")
    s.add_argument("--gic", choices=("v3", "v4.0", "v4.1"), default="v4.1", help="host GIC (default v4.1)")
    s.add_argument("--hw-fraction", type=float, default=0.5, help="fraction of LPIs forwarded on GICv4 (0.5)")
    s.add_argument("--order", choices=("intid", "insertion"), default="intid",
                   help="kernel walk order: intid (Linux >= 6.9) or insertion (5.13-6.8)")
    s.add_argument("--rounds", type=int, default=5, help="timed rounds, fresh random state each (default 5)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--no-baseline", action="store_true", help="skip the compiled kernel-loop baseline")
    s = sub.add_parser(
        "inspect",
        help="list every LPI of a QEMU migration stream (per vCPU: device, event, INTID, enable, priority, pending)",
        description="Read a QEMU migration stream (migrate \"exec:cat > FILE\"; gzip accepted) and print the GIC "
        "in it: redistributor and ITS registers, and per vCPU every LPI the ITS maps.",
    )
    s.add_argument("stream", help="the migration stream file")
    s.add_argument("--json", action="store_true", help="print JSON instead of tables")
    s.add_argument("--layout", choices=("kvm-abi-0", "qemu"), default=None,
                   help="force the ITS table layout (default: decided from the stream)")
    return p


def _fmt(n: int) -> str:
    return f"{n:,}"


def _median_time(fn, setup, rounds: int):
    times = []
    out = None
    for _ in range(rounds):
        setup()
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times)), out


def _cmd_save(a: argparse.Namespace) -> int:
    from vlpi import save_pending_tables_many, sync_pending_status
    from vlpi.pending import kernel_loop_restore, kernel_loop_save
    from vlpi.scenarios import build_host

    if a.rounds < 1:
        raise SystemExit("vlpi save: --rounds must be >= 1")
    t0 = time.perf_counter()
    host = build_host(a.vms, a.vcpus, a.id_bits, gic=a.gic, hw_fraction=a.hw_fraction,
                      lpis_per_vcpu=a.lpis_per_vcpu, seed=a.seed)
    t_build = time.perf_counter() - t0
    n = host.n_lpis
    n_hw = sum(int(np.count_nonzero(vm.lpis.hw)) for vm in host.vms)
    jobs = host.jobs
    v41 = host.has_gicv4_1

    def save():
        return save_pending_tables_many(jobs, has_gicv4_1=v41, order=a.order)

    def restore():
        return [sync_pending_status(vm.mem, vm.pendbaser, vm.lpis) for vm in host.vms]

    t0 = time.perf_counter()
    save()  # builds and caches the plans, loads (or compiles) the kernels
    restore()
    t_first = time.perf_counter() - t0
    t_save, reps = _median_time(save, host.randomize, a.rounds)
    t_resave, again = _median_time(save, lambda: None, a.rounds)
    t_rest, rrep = _median_time(restore, host.randomize, a.rounds)

    def tot(reports, f):
        return sum(getattr(r, f) for r in reports)

    print(f"vlpi save: {a.vms} VMs x {a.vcpus} vCPUs ({host.n_vpes} vPEs), IDbits {a.id_bits}, GIC{a.gic}, "
          f"order={a.order}")
    print(f"  machine        {platform.machine()}, {os.cpu_count()} CPUs, {platform.processor() or platform.system()}")
    print(f"  LPIs           {_fmt(n)} ({_fmt(n_hw)} forwarded)")
    print(f"  set-up         scenario {t_build:.2f} s; first save+restore (plans, kernel cache) {t_first:.2f} s")
    print(f"  save           {t_save * 1e3:8.2f} ms  {t_save / n * 1e9:6.2f} ns/LPI  (median of {a.rounds}, "
          "fresh random state)")
    print(f"    kernel-equivalent: {_fmt(tot(reps, 'guest_reads'))} guest reads, {_fmt(tot(reps, 'guest_writes'))} "
          f"writes, {_fmt(tot(reps, 'vpt_reads'))} VPT reads; {_fmt(tot(reps, 'bytes_changed'))} bytes changed, "
          f"{_fmt(sum(len(r.dirty_pages) for r in reps))} dirty pages, "
          f"vPEs unmapped/remapped {tot(reps, 'vpes_unmapped')}/{tot(reps, 'vpes_remapped')}")
    print(f"  re-save        {t_resave * 1e3:8.2f} ms  {t_resave / n * 1e9:6.2f} ns/LPI  "
          f"({_fmt(tot(again, 'guest_writes'))} writes: nothing left to change)")
    print(f"  restore        {t_rest * 1e3:8.2f} ms  {t_rest / n * 1e9:6.2f} ns/LPI  "
          f"({_fmt(tot(rrep, 'lpis_synced'))} LPIs synced, {_fmt(tot(rrep, 'guest_writes'))} consumed bits cleared)")
    if not a.no_baseline:
        def ksave():
            return [kernel_loop_save(vm.mem, vm.pendbaser, vm.lpis, vpt=vm.vpt, has_gicv4_1=v41, order=a.order)
                    for vm in host.vms]

        def krestore():
            return [kernel_loop_restore(vm.mem, vm.pendbaser, vm.lpis) for vm in host.vms]

        ksave()
        rounds = max(1, min(a.rounds, 3))
        tk, krep = _median_time(ksave, host.randomize, rounds)
        tkr, _ = _median_time(krestore, host.randomize, rounds)
        same = all(
            (r.guest_reads, r.vpt_reads) == (k.guest_reads, k.vpt_reads) for r, k in zip(reps, krep, strict=True)
        )
        print(f"  kernel loop    save {tk * 1e3:8.2f} ms ({tk / n * 1e9:.2f} ns/LPI, vlpi {tk / t_save:.1f}x faster); "
              f"restore {tkr * 1e3:.2f} ms (vlpi {tkr / t_rest:.1f}x faster)")
        if not same:
            print("  WARNING: kernel-loop read counts differ from vlpi's", file=sys.stderr)
            return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``vlpi`` command."""
    a = _parser().parse_args(argv)
    try:
        if a.cmd == "save":
            return _cmd_save(a)
        if a.cmd == "inspect":
            from vlpi.qemu import read_gic

            try:
                g = read_gic(a.stream, layout=a.layout)
            except OSError as e:  # unreadable file
                raise ValueError(str(e)) from e
            print(g.to_json() if a.json else g.format_table())
            return 0
    except ValueError as e:  # bad sizes etc.: say what, exit 2
        print(f"vlpi {a.cmd}: error: {e}", file=sys.stderr)
        return 2
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
