"""Command line: argument parsing and printing only; the work is done by the library.

``vlpi save`` builds a host scenario (default: host-4096), saves every VM's pending tables in one
parallel pass, restores them, and prints what the kernel would have done (reads, writes, bytes
changed, dirty pages) and how long vlpi took, next to the kernel's own algorithm compiled.

Bad options are refused before any work with a one-line ``vlpi CMD: error: ...`` message and exit
status 2. The host options and their checks (:func:`add_host_options`, :func:`check_host_options`)
are shared by every command that builds a host.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time
from collections.abc import Sequence

import numpy as np

__all__ = ["main", "add_host_options", "check_host_options", "UsageError"]

_LPI_MIN_INTID = 8192
_ID_BITS = (14, 24)
_GICS = ("v3", "v4.0", "v4.1")


class UsageError(Exception):
    """A bad command-line value: printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (``prog: error: message``, exit status 2), no usage dump."""

    def error(self, message: str):  # noqa: D102
        self.exit(2, f"{self.prog}: error: {message}\n")


# ----------------------------------------------------------------- reusable option types
def positive_int(text: str) -> int:
    """argparse ``type=``: an integer >= 1."""
    v = _int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return v


def nonnegative_int(text: str) -> int:
    """argparse ``type=``: an integer >= 0."""
    v = _int(text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}")
    return v


def id_bits(text: str) -> int:
    """argparse ``type=``: LPI INTID bits, 14..24."""
    v = _int(text)
    if not _ID_BITS[0] <= v <= _ID_BITS[1]:
        raise argparse.ArgumentTypeError(f"must be in {_ID_BITS[0]}..{_ID_BITS[1]}, got {text!r}")
    return v


def fraction(text: str) -> float:
    """argparse ``type=``: a real number in [0, 1] (NaN refused)."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1], got {text!r}") from None
    if math.isnan(v) or not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1], got {text!r}")
    return v


def _int(text: str) -> int:
    try:
        return int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None


def add_host_options(p: argparse.ArgumentParser) -> None:
    """The options that describe a host of VMs (``--vms --vcpus --id-bits --lpis-per-vcpu --gic
    --hw-fraction --seed``); check the parsed result with :func:`check_host_options`."""
    p.add_argument("--vms", type=positive_int, default=64, help="VMs on the host (default 64)")
    p.add_argument("--vcpus", type=positive_int, default=64, help="vCPUs (= vPEs) per VM (default 64)")
    p.add_argument("--id-bits", type=id_bits, default=16, help="LPI INTID bits, 14..24 (default 16)")
    p.add_argument("--lpis-per-vcpu", type=positive_int, default=None,
                   help="sparse tables: this many random INTIDs per vCPU (default: every INTID, dense)")
    p.add_argument("--gic", choices=_GICS, default="v4.1", help="host GIC (default v4.1)")
    p.add_argument("--hw-fraction", type=fraction, default=0.5,
                   help="fraction of LPIs forwarded on GICv4, in [0, 1] (default 0.5)")
    p.add_argument("--seed", type=nonnegative_int, default=0, help="random seed, >= 0 (default 0)")


def host_bytes(vms: int, vcpus: int, id_bits: int, lpis_per_vcpu: int | None, gic: str) -> int:
    """Estimated peak host memory of building and saving such a host: pending tables (64 KiB
    apart), VPTs, the LPI tables and the engine's plans."""
    table = (1 << id_bits) // 8
    stride = max(1 << 16, -(-table // (1 << 16)) * (1 << 16))
    n_vm = ((1 << id_bits) - _LPI_MIN_INTID) if lpis_per_vcpu is None else lpis_per_vcpu * vcpus
    per_vm = vcpus * stride + (vcpus * table if gic != "v3" else 0) + 16 * n_vm
    return vms * per_vm + 64 * n_vm  # + one VM's transient plan-building arrays


def available_bytes() -> int | None:
    """Host memory available for new allocations (Linux ``MemAvailable``, else free pages), or
    None when unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_host_options(a: argparse.Namespace) -> None:
    """Cross-option checks of :func:`add_host_options`' values; raises :class:`UsageError`."""
    space = (1 << a.id_bits) - _LPI_MIN_INTID
    if a.lpis_per_vcpu is not None and a.lpis_per_vcpu * a.vcpus > space:
        raise UsageError(
            f"--lpis-per-vcpu {a.lpis_per_vcpu} x --vcpus {a.vcpus} = {a.lpis_per_vcpu * a.vcpus} LPIs do not fit "
            f"in the {space} INTIDs of --id-bits {a.id_bits} (at most {space // a.vcpus} per vCPU)"
        )
    need = host_bytes(a.vms, a.vcpus, a.id_bits, a.lpis_per_vcpu, a.gic)
    have = available_bytes()
    if have is not None and need > have:
        raise UsageError(
            f"this host needs about {need / 2**30:.1f} GiB of memory but {have / 2**30:.1f} GiB is available "
            "(fewer --vms, --vcpus or --id-bits)"
        )


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
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
    add_host_options(s)
    s.add_argument("--order", choices=("intid", "insertion"), default="intid",
                   help="kernel walk order: intid (Linux >= 6.9) or insertion (5.13-6.8)")
    s.add_argument("--rounds", type=positive_int, default=5,
                   help="timed rounds, fresh random state each (default 5)")
    s.add_argument("--no-baseline", action="store_true", help="skip the compiled kernel-loop baseline")
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

    check_host_options(a)
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
    except (UsageError, ValueError) as e:  # bad sizes etc.: say what, exit 2
        print(f"vlpi {a.cmd}: error: {e}", file=sys.stderr)
        return 2
    except MemoryError:
        print(f"vlpi {a.cmd}: error: out of host memory (fewer --vms, --vcpus or --id-bits)", file=sys.stderr)
        return 2
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
