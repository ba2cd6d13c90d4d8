#!/usr/bin/env python3
"""Boot a tiny arm64 Linux guest under QEMU (TCG, GICv3 + ITS) and write its migration stream.

Needs ``qemu-system-aarch64`` and an unpacked arm64 kernel package plus ``busybox-static:arm64``
(``scripts/make_qemu_stream.sh`` installs and unpacks them, then calls this script).

What it does:

1. builds an initramfs (busybox, the virtio modules in dependency order, ``scripts/qemu_guest/init``);
2. boots ``qemu-system-aarch64 -M virt,gic-version=3,its=on -smp 2 -m 256`` with a virtio-net-pci
   and a virtio-blk-pci (two queues), driving the guest's serial console and the QEMU monitor;
3. records the guest's view of its interrupts (``/proc/interrupts`` and each ITS-MSI interrupt's
   effective CPU);
4. leaves some LPIs pending at the stop: it stops the VM, writes a first stream, reads it with
   vlpi to find the configuration bytes of the LPIs behind two interrupts (virtio-net's receive
   queue and the first virtio-blk request queue), clears their enable bit through QEMU's gdb stub
   (physical-memory mode), resumes the guest and makes both devices fire (a ping, a direct read
   of the disk). The redistributor records each as pending in the guest's pending table but cannot
   deliver it, so both are pending at the final stop — the "interrupt went missing" situation;
5. stops the VM and writes the final stream with ``migrate "exec:cat > FILE"``.

Outputs in ``--out DIR``: ``stream.bin``, ``interrupts.txt`` (the guest's ``/proc/interrupts``),
``guest.json`` (effective CPUs, the LPIs disabled on purpose, versions).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import select
import socket
import subprocess
import sys
import time
from pathlib import Path

DRIVERS = ["virtio_pci", "virtio_net", "virtio_blk"]  # loaded with their dependencies, in order
HERE = Path(__file__).resolve().parent


def _cpio_newc(entries: list[tuple[str, int, bytes]]) -> bytes:
    """Build a newc cpio archive from (name, mode, data) entries."""
    out = bytearray()
    ino = 1
    for name, mode, data in entries + [("TRAILER!!!", 0, b"")]:
        nm = name.encode() + b"\0"
        hdr = "070701" + "".join(f"{v:08x}" for v in (
            ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(nm), 0))
        out += hdr.encode() + nm
        out += b"\0" * (-len(out) % 4)
        out += data
        out += b"\0" * (-len(out) % 4)
        ino += 1
    return bytes(out)


def module_order(moddir: Path, wanted: list[str]) -> list[tuple[str, Path]]:
    """``wanted`` modules and everything they depend on (each .ko's ``depends=`` modinfo), in an
    order where every module comes after its dependencies (virtio_ring before virtio, ...)."""
    index = {p.name[: -len(".ko")]: p for p in moddir.rglob("*.ko")}
    out: list[tuple[str, Path]] = []
    seen: set[str] = set()

    def visit(m: str, stack: tuple[str, ...]) -> None:
        if m in seen:
            return
        if m in stack:
            raise SystemExit(f"module dependency cycle: {' -> '.join(stack + (m,))}")
        path = index.get(m.replace("-", "_")) or index.get(m)
        if path is None:
            raise SystemExit(f"module {m}.ko not found under {moddir}")
        info = path.read_bytes()
        i = info.find(b"\0depends=")
        deps = info[i + 9 : info.index(b"\0", i + 1)].decode() if i >= 0 else ""
        for d in filter(None, deps.split(",")):
            visit(d, stack + (m,))
        seen.add(m)
        out.append((m, path))

    for m in wanted:
        visit(m, ())
    return out


def build_initramfs(root: Path, out: Path) -> None:
    """Write a gzip'd initramfs with busybox, the virtio modules and the init script."""
    kver = sorted(p.name for p in (root / "lib/modules").iterdir())[-1]
    moddir = root / "lib/modules" / kver / "kernel"
    ents: list[tuple[str, int, bytes]] = [
        (d, 0o40755, b"") for d in ("bin", "dev", "proc", "sys", "tmp", "lib", "lib/modules")]
    ents.append(("bin/busybox", 0o100755, (root / "bin/busybox").read_bytes()))
    ents.append(("init", 0o100755, (HERE / "qemu_guest/init").read_bytes()))
    order = module_order(moddir, DRIVERS)
    for m, path in order:
        ents.append((f"lib/modules/{m}.ko", 0o100644, path.read_bytes()))
    ents.append(("modules.order", 0o100644, ("\n".join(m for m, _ in order) + "\n").encode()))
    out.write_bytes(gzip.compress(_cpio_newc(ents), 6))


class Guest:
    """A running QEMU with its serial console on stdio and its monitor/gdb stub on unix sockets."""

    def __init__(self, work: Path, kernel: Path, initrd: Path, log: Path, incoming: Path | None = None) -> None:
        self.work = work
        self.mon_path = work / "mon.sock"
        self.gdb_path = work / "gdb.sock"
        for p in (self.mon_path, self.gdb_path):
            p.unlink(missing_ok=True)
        disk = work / "disk.img"
        if not disk.exists():
            with open(disk, "wb") as f:
                f.write(os.urandom(1 << 20) * 4)
        cmd = [
            "qemu-system-aarch64", "-M", "virt,gic-version=3,its=on", "-cpu", "max,pauth-impdef=on",
            "-smp", "2", "-m", "256", "-nographic", "-no-reboot",
            "-kernel", str(kernel), "-initrd", str(initrd),
            "-append", "console=ttyAMA0 loglevel=4 panic=-1",
            "-netdev", "user,id=n0", "-device", "virtio-net-pci,netdev=n0",
            "-drive", f"file={disk},format=raw,if=none,id=d0,cache=unsafe",
            "-device", "virtio-blk-pci,drive=d0,num-queues=2",
            "-serial", "stdio",
            "-monitor", f"unix:{self.mon_path},server=on,wait=off",
            "-gdb", f"unix:{self.gdb_path},server=on,wait=off",
        ]
        if incoming is not None:
            cmd += ["-incoming", f"exec:cat {incoming}"]
        self.log = open(log, "wb")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT)
        self.buf = b""
        for _ in range(100):
            if self.mon_path.exists():
                break
            time.sleep(0.1)
        self.mon = socket.socket(socket.AF_UNIX)
        self.mon.connect(str(self.mon_path))
        self._mon_read()

    # -- serial console ------------------------------------------------------------------------
    def expect(self, marker: bytes, timeout: float = 120.0) -> bytes:
        """Read the console until ``marker``; return everything before it."""
        end = time.monotonic() + timeout
        while marker not in self.buf:
            left = end - time.monotonic()
            if left <= 0 or self.proc.poll() is not None:
                raise SystemExit(f"guest: no {marker!r} (console tail: {self.buf[-2000:]!r})")
            r, _, _ = select.select([self.proc.stdout], [], [], min(left, 1.0))
            if r:
                chunk = os.read(self.proc.stdout.fileno(), 65536)
                self.log.write(chunk)
                self.log.flush()
                self.buf += chunk
        before, _, self.buf = self.buf.partition(marker)
        return before

    def sh(self, command: str, timeout: float = 120.0) -> str:
        """Run a shell command in the guest; return its output."""
        self.proc.stdin.write(f"echo VLPI-''BEGIN; {command}; echo VLPI-''DONE\n".encode())
        self.proc.stdin.flush()
        self.expect(b"VLPI-BEGIN\r\n", timeout)
        out = self.expect(b"VLPI-DONE", timeout)
        return out.decode(errors="replace").replace("\r", "")

    # -- monitor ---------------------------------------------------------------------------------
    def _mon_read(self, timeout: float = 600.0) -> str:
        data = b""
        self.mon.settimeout(timeout)
        while not data.endswith(b"(qemu) "):
            chunk = self.mon.recv(65536)
            if not chunk:
                raise SystemExit("QEMU monitor closed")
            data += chunk
        return data.decode(errors="replace")

    def monitor(self, command: str) -> str:
        self.mon.sendall(command.encode() + b"\n")
        return self._mon_read()

    def migrate_to(self, path: Path) -> None:
        """Stop the VM and write its migration stream to ``path``."""
        path.unlink(missing_ok=True)
        self.monitor("stop")
        self.monitor(f'migrate "exec:cat > {path}"')
        for _ in range(600):
            info = self.monitor("info migrate")
            if "Migration status: completed" in info:
                return
            if re.search(r"Migration status: (failed|cancelled)", info):
                raise SystemExit(f"migration failed:\n{info}")
            time.sleep(0.1)
        raise SystemExit("migration did not complete")

    # -- gdb stub (physical memory writes) ----------------------------------------------------------
    def write_phys(self, writes: dict[int, bytes]) -> None:
        """Write guest-physical memory through the gdb stub (VM must be stopped)."""
        s = socket.socket(socket.AF_UNIX)
        s.connect(str(self.gdb_path))
        s.settimeout(30)

        def packet(body: str) -> str:
            csum = sum(body.encode()) & 0xFF
            s.sendall(f"${body}#{csum:02x}".encode())
            data = b""
            while True:
                data += s.recv(65536)
                m = re.search(rb"\$([^#]*)#[0-9a-f]{2}", data)
                if m:
                    s.sendall(b"+")
                    return m.group(1).decode()

        packet("qSupported")
        packet("?")
        if packet("Qqemu.PhyMemMode:1") != "OK":
            raise SystemExit("gdb stub: no physical memory mode")
        for addr, data in writes.items():
            if packet(f"M{addr:x},{len(data):x}:{data.hex()}") != "OK":
                raise SystemExit(f"gdb stub: write at {addr:#x} failed")
            if packet(f"m{addr:x},{len(data):x}") != data.hex():
                raise SystemExit(f"gdb stub: read-back at {addr:#x} differs")
        packet("Qqemu.PhyMemMode:0")
        s.sendall(b"$D#44")
        s.close()

    def close(self) -> None:
        try:
            self.monitor("quit")
        except (OSError, SystemExit):
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def check_loads(work: Path, kernel: Path, initrd: Path, stream: Path) -> str:
    """Start a second QEMU with ``-incoming`` from ``stream``; return its final migration status
    (``completed`` when QEMU accepted every section)."""
    g = Guest(work, kernel, initrd, work / "incoming.log", incoming=stream)
    try:
        for _ in range(600):
            status = g.monitor("info status")
            info = g.monitor("info migrate")
            if "inmigrate" not in status and "Migration status: completed" in info:
                return "completed"  # loaded; the VM stays paused as the source was
            time.sleep(0.1)
        return "timeout"
    except (OSError, SystemExit):
        out = g.proc.stdout.read().decode(errors="replace") if g.proc.poll() is not None else ""
        return "failed: " + out.strip()
    finally:
        g.close()


def its_msi_irqs(interrupts: str) -> list[dict]:
    """The ITS-MSI lines of /proc/interrupts: Linux irq, per-CPU counts, hwirq, name."""
    lines = interrupts.strip("\n").split("\n")
    ncpu = len(lines[0].split())
    out = []
    for line in lines[1:]:
        parts = line.split()
        if "ITS-MSI" not in parts:
            continue
        i = parts.index("ITS-MSI")
        out.append({"irq": int(parts[0].rstrip(":")), "counts": [int(x) for x in parts[1:1 + ncpu]],
                    "hwirq": int(parts[i + 1]), "name": " ".join(parts[i + 3:])})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", type=Path, required=True,
                    help="unpacked arm64 kernel + busybox-static packages")
    ap.add_argument("--out", type=Path, required=True, help="output directory")
    ap.add_argument("--no-pending", action="store_true",
                    help="skip step 4 (no LPIs left pending on purpose)")
    ap.add_argument("--fixture", type=Path, default=None,
                    help="also write a small fixture here: the stream with every RAM page the GIC does "
                    "not use sent as a zero page (gzip), checked by loading it into a second QEMU")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.out
    kernel = sorted((args.root / "boot").glob("vmlinuz-*"))[-1]
    initrd = work / "initrd.gz"
    build_initramfs(args.root, initrd)
    t0 = time.monotonic()
    g = Guest(work, kernel, initrd, work / "console.log")
    try:
        boot = g.expect(b"VLPI-READY", 300)
        if b"VLPI-FAIL" in boot:
            raise SystemExit("guest could not load its modules:\n" + boot.decode(errors="replace")[-2000:])
        print(f"guest up after {time.monotonic() - t0:.1f} s", file=sys.stderr)
        g.sh("stty -echo; PS1=", 30)
        uname = g.sh("uname -r").strip()
        before = g.sh("cat /proc/interrupts")
        irqs = its_msi_irqs(before)
        if not irqs:
            raise SystemExit(f"guest shows no ITS-MSI interrupts:\n{before}")
        disabled: list[dict] = []
        if not args.no_pending:
            disabled = _disable_and_fire(g, work, irqs)
        interrupts = g.sh("cat /proc/interrupts")
        irqs = its_msi_irqs(interrupts)
        for d in irqs:
            d["effective_cpus"] = g.sh(
                f"cat /proc/irq/{d['irq']}/effective_affinity_list").strip()
        g.migrate_to(work / "stream.bin")
        qemu_version = g.monitor("info version").split("\n")[1].strip()
    finally:
        g.close()
    (work / "interrupts.txt").write_text(interrupts)
    (work / "guest.json").write_text(json.dumps({
        "kernel": uname, "qemu": qemu_version, "its_msi": irqs, "disabled_on_purpose": disabled,
    }, indent=1) + "\n")
    size = (work / "stream.bin").stat().st_size
    print(f"stream: {work / 'stream.bin'} ({size} bytes), kernel {uname}, QEMU {qemu_version}",
          file=sys.stderr)
    if args.fixture is not None:
        make_fixture(work, kernel, initrd, args.fixture)
    return 0


def make_fixture(work: Path, kernel: Path, initrd: Path, dest: Path) -> None:
    """Minimise ``work/stream.bin`` into ``dest`` and check that QEMU still loads it."""
    sys.path.insert(0, str(HERE.parent))
    from vlpi.qemu import read_gic
    from vlpi.qemu.rewrite import minimize

    small = work / "fixture.bin"
    small.write_bytes(minimize(read_gic(work / "stream.bin")))
    status = check_loads(work, kernel, initrd, small)
    if status != "completed":
        raise SystemExit(f"QEMU does not load the minimised stream: {status}")
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "stream.bin.gz").write_bytes(gzip.compress(small.read_bytes(), 9, mtime=0))
    for name in ("interrupts.txt", "guest.json"):
        (dest / name).write_bytes((work / name).read_bytes())
    print(f"fixture: {dest} ({(dest / 'stream.bin.gz').stat().st_size} bytes gzip, QEMU loads it)",
          file=sys.stderr)


def _disable_and_fire(g: Guest, work: Path, irqs: list[dict]) -> list[dict]:
    """Step 4: clear the enable bit of two LPIs in guest RAM, then make their devices fire."""
    sys.path.insert(0, str(HERE.parent))
    from vlpi.qemu import read_gic  # the repository's own reader

    picks = [d for d in irqs if re.search(r"input\.0$", d["name"])][:1]
    picks += [d for d in irqs if re.search(r"req\.0$", d["name"])][:1]
    if len(picks) != 2:
        raise SystemExit(f"guest lacks a virtio-net input.0 or virtio-blk req.0 interrupt: {irqs}")
    first = work / "before.bin"
    g.migrate_to(first)
    gic = read_gic(first)
    writes: dict[int, bytes] = {}
    disabled = []
    for d in picks:
        dev, ev = d["hwirq"] >> 11 & 0xFFFF, d["hwirq"] & 0x7FF
        lpi = gic.lpi_for(dev, ev)
        addr = gic.config_address(lpi.intid)
        old = int(gic.memory.read(addr, 1)[0])
        writes[addr] = bytes([old & 0xFE])
        disabled.append({"irq": d["irq"], "name": d["name"], "device_id": dev, "event_id": ev,
                         "intid": lpi.intid})
    g.write_phys(writes)
    g.monitor("cont")
    first.unlink()
    # virtio-net receive: a ping of QEMU's user-mode gateway; virtio-blk queue 0: a direct read
    # pinned to CPU 0 (its completion never arrives, so dd stays blocked: run it in background).
    g.sh("ping -c 3 -W 1 10.0.2.2 >/dev/null 2>&1", 60)
    g.sh("(taskset 1 dd if=/dev/vda of=/dev/null bs=4096 count=1 iflag=direct 2>/dev/null &)", 60)
    g.sh("sleep 2", 60)
    return disabled


if __name__ == "__main__":
    raise SystemExit(main())
