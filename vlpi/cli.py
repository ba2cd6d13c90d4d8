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
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, NoReturn, TypeVar

import numpy as np

if TYPE_CHECKING:  # imported where used: `vlpi --help` stays quick
    from vlpi.migration import KernelCosts
    from vlpi.pending import SaveReport, SyncReport

__all__ = ["main", "build_parser", "add_host_options", "check_host_options", "UsageError"]

_LPI_MIN_INTID = 8192
_T = TypeVar("_T")
_ID_BITS = (14, 24)
_GICS = ("v3", "v4.0", "v4.1")


class UsageError(Exception):
    """A bad command-line value: printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (``prog: error: message``, exit status 2), no usage dump."""

    def error(self, message: str) -> NoReturn:  # noqa: D102
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


def _order_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--order", choices=("intid", "insertion"), default="intid",
                   help="kernel walk order: intid (Linux >= 6.9) or insertion (5.13-6.8)")


def build_parser() -> argparse.ArgumentParser:
    """The ``vlpi`` command's argument parser (subcommands ``save``, ``migrate``, ``inspect``)."""
    p = _Parser(
        prog="vlpi",
        description="Model arm64 KVM LPI/VLPI pending-table save/restore for live migration, bit-exactly and fast.",
    )
    from vlpi import __version__

    p.add_argument("--version", action="version", version=f"vlpi {__version__}")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    s = sub.add_parser(
        "save",
        help="save then restore the pending tables of a host of VMs and report (default: host-4096)",
        description="Build a host of VMs (every VM maps every INTID 8192..2**id_bits-1 round-robin over its "
        "vCPUs, PENDBASERs 64 KiB apart, random pending/VPT/table bits), save all pending tables in one "
        "parallel pass (GICv4.1: VPT bits of forwarded LPIs), restore them, and report.",
    )
    add_host_options(s)
    _order_option(s)
    s.add_argument("--rounds", type=positive_int, default=5,
                   help="timed rounds, fresh random state each (default 5)")
    s.add_argument("--no-baseline", action="store_true", help="skip the compiled kernel-loop baseline")
    m = sub.add_parser(
        "migrate",
        help="live-migrate a host of VMs end to end (source, snapshot, destination) and verify it",
        description="Build a host of VMs as guests program them (same options as 'vlpi save'), migrate every VM "
        "the way QEMU drives KVM (pause, SAVE_TABLES, one SAVE_PENDING_TABLES pass, registers; destination: "
        "redistributors, ITS, RESTORE_TABLES, forwarding), verify the pending state interrupt by interrupt, "
        "and report phases, times, bytes, dirty pages and interrupts lost. Exit status 0 when verified.",
    )
    add_host_options(m)
    _order_option(m)
    m.add_argument("--traffic", type=float, default=0.0, metavar="MSI_PER_S",
                   help="MSIs per second per device while the vPEs are unmapped (default 0: devices quiesced)")
    m.add_argument("--fault", choices=("none", "its-save", "pending-save", "restore", "snapshot"), default="none",
                   help="inject a fault: read-only ITT (its-save) or pending-table page (pending-save), a "
                   "read-only page on the destination (restore), a flipped snapshot bit (snapshot)")
    m.add_argument("--fault-at", type=float, default=0.5, metavar="FRACTION",
                   help="where the fault goes, in [0, 1): which VM, LPI or bit (default 0.5)")
    m.add_argument("--policy", choices=("strict", "qemu"), default="strict",
                   help="strict: any error aborts and the source resumes; qemu: what QEMU does (default strict)")
    m.add_argument("--page-size", type=int, choices=(4, 16, 64), default=4, metavar="KIB",
                   help="host page size for the dirty log: 4, 16 or 64 KiB (default 4)")
    m.add_argument("--out", metavar="SNAPSHOT", default=None,
                   help="write the snapshot to this file; the destination reads it back from there")
    m.add_argument("--costs", default="", metavar="K=NS,...",
                   help="per-access kernel costs in ns for the window estimate: read, write, lpi, vpt_read, vmapp "
                   "(default: 100, 150, 10, 5, 2000, assumptions)")
    m.add_argument("--json", action="store_true", help="print the report as JSON")
    i = sub.add_parser(
        "inspect",
        help="summarise a vlpi snapshot or list every LPI of a QEMU migration stream",
        description="FILE is a vlpi snapshot (vlpi migrate --out, VM.save): per VM and vCPU its LPIs, pending and "
        "forwarded interrupts and tables. Otherwise FILE is read as a QEMU migration stream "
        "(migrate \"exec:cat > FILE\"; gzip accepted) and the GIC in it is printed: redistributor and ITS "
        "registers, and per vCPU every LPI the ITS maps.",
    )
    i.add_argument("path", metavar="FILE", help="a vlpi snapshot or a QEMU migration stream")
    i.add_argument("--json", action="store_true", help="print JSON instead of tables")
    i.add_argument("--layout", choices=("kvm-abi-0", "qemu"), default=None,
                   help="QEMU stream: force the ITS table layout (default: decided from the stream)")
    i.add_argument("--vcpus", type=int, default=8, help="vlpi snapshot: vCPU lines per VM (default 8)")
    return p


def _fmt(n: int) -> str:
    return f"{n:,}"


def _median_time(fn: Callable[[], _T], setup: Callable[[], object], rounds: int) -> tuple[float, _T]:
    """Median time of ``rounds`` (>= 1) calls of ``fn``, each after ``setup()``, and the last result."""
    times = []
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

    def save() -> list[SaveReport]:
        return save_pending_tables_many(jobs, has_gicv4_1=v41, order=a.order)

    def restore() -> list[SyncReport]:
        return [sync_pending_status(vm.mem, vm.pendbaser, vm.lpis) for vm in host.vms]

    t0 = time.perf_counter()
    save()  # builds and caches the plans, loads (or compiles) the kernels
    restore()
    t_first = time.perf_counter() - t0
    t_save, reps = _median_time(save, host.randomize, a.rounds)
    t_resave, again = _median_time(save, lambda: None, a.rounds)
    t_rest, rrep = _median_time(restore, host.randomize, a.rounds)

    def tot(reports: Iterable[SaveReport | SyncReport], f: str) -> int:
        return int(sum(getattr(r, f) for r in reports))

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
        def ksave() -> list[SaveReport]:
            return [kernel_loop_save(vm.mem, vm.pendbaser, vm.lpis, vpt=vm.vpt, has_gicv4_1=v41, order=a.order)
                    for vm in host.vms]

        def krestore() -> list[SyncReport]:
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


def _kernels_cached() -> bool:
    import glob

    from vlpi._config import CACHE_DIR

    return bool(glob.glob(os.path.join(CACHE_DIR, "**", "*.nbi"), recursive=True))


def _costs(spec: str) -> KernelCosts:
    from vlpi.migration import DEFAULT_COSTS, KernelCosts

    if not spec:
        return DEFAULT_COSTS
    kw = {}
    for part in spec.split(","):
        k, sep, v = part.partition("=")
        k = k.strip().replace("-", "_")
        name = k if k.endswith("_ns") else k + "_ns"
        if not sep or name not in ("read_ns", "write_ns", "lpi_ns", "vpt_read_ns", "vmapp_ns"):
            raise ValueError(f"--costs: {part!r} is not K=NS with K one of read, write, lpi, vpt_read, vmapp")
        try:
            kw[name] = float(v)
        except ValueError:
            raise ValueError(f"--costs: {v!r} in {part!r} is not a number of nanoseconds") from None
    return KernelCosts(**kw, source="user-set (--costs); the others: assumptions")


def _cmd_inspect(a: argparse.Namespace) -> int:
    """A vlpi snapshot (recognised by its manifest or seal) or else a QEMU migration stream."""
    import json

    from vlpi import snapshot as S

    if not os.path.isfile(a.path):
        raise ValueError(f"{a.path}: no such file")
    if S.is_snapshot(a.path):
        summary = S.summarize(a.path)
        print(json.dumps(summary, indent=1) if a.json else S.format_summary(summary, max_vcpus=a.vcpus))
        return 0
    from vlpi.qemu import read_gic

    try:
        g = read_gic(a.path, layout=a.layout)
    except (OSError, ValueError) as e:  # unreadable, or neither kind of file
        raise ValueError(f"{a.path}: not a vlpi snapshot; as a QEMU migration stream: {e}") from e
    print(g.to_json() if a.json else g.describe())
    return 0


def _cmd_migrate(a: argparse.Namespace) -> int:
    import json

    from tqdm import tqdm

    from vlpi import migration as M
    from vlpi.scenarios import build_model_host

    check_host_options(a)
    if math.isnan(a.traffic) or not 0.0 <= a.traffic < math.inf:
        raise UsageError(f"--traffic must be a number of MSIs per second >= 0, got {a.traffic}")
    if math.isnan(a.fault_at) or not 0.0 <= a.fault_at < 1.0:
        raise ValueError(f"--fault-at must be in [0, 1), got {a.fault_at}")
    quiet = a.json
    err = sys.stderr
    t0 = time.perf_counter()
    if not _kernels_cached():
        print("vlpi migrate: compiling vlpi's kernels once (about 30-90 s on 2 cores); later runs load them "
              "from the cache", file=err, flush=True)
    # a small host loads (or compiles) every kernel the run needs, the parallel ones included
    tiny = build_model_host(2, 2, 15, gic="v4.1", seed=0)
    M.migrate_host(tiny, through_bytes=True)
    t_kernels = time.perf_counter() - t0
    traffic = M.Traffic(a.traffic, seed=a.seed) if a.traffic > 0 else None
    costs = _costs(a.costs)
    t0 = time.perf_counter()
    with tqdm(total=a.vms, desc="build host", unit="VM", file=err, disable=quiet or None, leave=False) as bar:
        vms = build_model_host(a.vms, a.vcpus, a.id_bits, gic=a.gic, hw_fraction=a.hw_fraction,
                               lpis_per_vcpu=a.lpis_per_vcpu, seed=a.seed, progress=bar.update)
    t_build = time.perf_counter() - t0
    plan = M.plan_fault(vms, a.fault, a.fault_at)
    with tqdm(total=a.vms, desc="migrate", unit="VM", file=err, disable=quiet or None, leave=False) as bar:
        def progress(ev: str) -> None:
            if ev == "vm restored":
                bar.update(1)
            else:
                bar.set_description(ev)

        rep: M.HostMigrationReport | None
        try:
            _, rep = M.migrate_host(vms, policy=a.policy, traffic=traffic, page_size=a.page_size * 1024,
                                    order=a.order, snapshot_path=a.out, prepare=plan.prepare, corrupt=plan.corrupt,
                                    costs=costs, progress=progress)
        except M.MigrationAborted as e:
            rep = e.report
            if rep is None:
                raise
    head = {"vms": a.vms, "vcpus": a.vcpus, "id_bits": a.id_bits, "gic": a.gic, "fault": plan.describe(),
            "kernels_s": t_kernels, "build_s": t_build}
    if a.json:
        print(json.dumps({**head, **rep.to_dict()}, indent=1))
    else:
        print(f"vlpi migrate: {a.vms} VMs x {a.vcpus} vCPUs, IDbits {a.id_bits}, GIC{a.gic}, policy {a.policy}, "
              f"fault: {plan.describe()}")
        print(f"  set-up: kernels {t_kernels:.1f} s, host built in {t_build:.1f} s")
        print(rep.describe())
    return 0 if rep.ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``vlpi`` command."""
    a = build_parser().parse_args(argv)
    try:
        if a.cmd == "save":
            return _cmd_save(a)
        if a.cmd == "migrate":
            return _cmd_migrate(a)
        if a.cmd == "inspect":
            return _cmd_inspect(a)
    except (UsageError, ValueError) as e:  # bad sizes etc.: say what, exit 2
        print(f"vlpi {a.cmd}: error: {e}", file=sys.stderr)
        return 2
    except MemoryError:
        print(f"vlpi {a.cmd}: error: out of host memory (fewer --vms, --vcpus or --id-bits)", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # the reader went away (``vlpi inspect --json F | head``): stop quietly, as other Unix tools
        # do; point stdout at /dev/null so the interpreter's final flush does not fail again
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
