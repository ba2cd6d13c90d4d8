"""vlpi.qemu against real QEMU migration streams.

The committed fixture (tests/data/qemu/) was made by scripts/make_qemu_stream.sh: a Debian arm64
cloud kernel booted under qemu-system-aarch64 (TCG, GICv3 + ITS, 2 vCPUs, virtio-net-pci and a
two-queue virtio-blk-pci), two LPIs disabled in the configuration table and then fired (so they are
pending at the stop), the guest's /proc/interrupts recorded, the stream written with
``migrate "exec:cat > FILE"``; then every RAM page the GIC does not use was sent as a zero page
(QEMU loads the result). ``VLPI_QEMU_STREAM=DIR`` adds a freshly generated stream (DIR/stream.bin,
interrupts.txt, guest.json): CI sets it so the fixture cannot drift from what QEMU writes.

What is checked against the guest's own view:
* /proc/interrupts: every ITS-MSI interrupt's hwirq is ``requester_id << 11 | msi_index``; the
  decoded LPIs are exactly those (DeviceID, EventID) pairs, each targeting the CPU in the guest's
  ``effective_affinity``;
* the ITS commands the guest's driver queued (still in guest RAM): replaying MAPD/MAPC/MAPTI/MOVI/
  DISCARD gives each event's INTID and collection, which must equal the tables' content;
* the LPIs disabled on purpose are the pending ones; every other LPI is enabled at Linux's default
  priority 0xa0.
"""

from __future__ import annotations

import functools
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

from vlpi import GuestMemory
from vlpi.cli import main as cli_main
from vlpi.its import abi
from vlpi.its.commands import OPCODES, decode
from vlpi.qemu import GicLayoutError, StreamError, TruncatedStream, read_gic, read_stream
from vlpi.qemu.gic import decode_baser
from vlpi.qemu.rewrite import write_stream
from vlpi.qemu.stream import SECTION_FULL, load_bytes

DATA = Path(__file__).parent / "data" / "qemu"
LINUX_LPI_DEFAULT_PRIO = 0xA0
KVM_IIDR = 0x4B << 24 | 0x43B


def _sources():
    out = [pytest.param(DATA, id="fixture")]
    env = os.environ.get("VLPI_QEMU_STREAM")
    if env:
        out.append(pytest.param(Path(env), id="fresh"))
    return out


def _stream_file(d: Path) -> Path:
    return d / "stream.bin.gz" if (d / "stream.bin.gz").exists() else d / "stream.bin"


@functools.lru_cache(maxsize=4)
def _gic(d: Path):
    return read_gic(_stream_file(d))


@functools.lru_cache(maxsize=2)
def _raw(d: Path) -> bytes:
    return load_bytes(_stream_file(d))


def _guest(d: Path) -> tuple[list[dict], dict]:
    """The guest's ITS-MSI interrupts from its /proc/interrupts (+ effective CPUs from guest.json)."""
    meta = json.loads((d / "guest.json").read_text())
    eff = {x["irq"]: int(x["effective_cpus"]) for x in meta["its_msi"]}
    rows = []
    for line in (d / "interrupts.txt").read_text().splitlines():
        m = re.match(r"\s*(\d+):\s+(.*?)\s+ITS-MSI\s+(\d+)\s+\S+\s+(\S+)", line)
        if m:
            irq, hwirq = int(m.group(1)), int(m.group(3))
            rows.append({"irq": irq, "device_id": hwirq >> 11 & 0xFFFF, "event_id": hwirq & 0x7FF,
                         "domain": hwirq >> 27, "name": m.group(4), "cpu": eff[irq]})
    return rows, meta


# ---------------------------------------------------------------------------------- guest's view
@pytest.mark.parametrize("src", _sources())
def test_lpis_are_the_guests_its_msi_interrupts(src):
    g = _gic(src)
    rows, _ = _guest(src)
    assert len(rows) >= 6  # virtio-net: config, input, output; virtio-blk: config, 2 request queues
    assert all(r["domain"] == 0 for r in rows)
    want = {(r["device_id"], r["event_id"]): r["cpu"] for r in rows}
    got = {(x.device_id, x.event_id): x.vcpu for x in g.lpis}
    assert got == want  # same interrupts, each on the guest's effective CPU
    # the guest's ITS driver hands out one LPI block per device: INTID - EventID is per-device
    base = {}
    for x in g.lpis:
        assert base.setdefault(x.device_id, x.intid - x.event_id) == x.intid - x.event_id
        assert x.intid >= 8192
    assert len({x.intid for x in g.lpis}) == len(g.lpis)


def _replay_commands(g) -> dict:
    """The guest driver's ITS commands, replayed: (DeviceID, EventID) -> (INTID, ICID, vCPU)."""
    cb = g.its.cbaser
    base, size = cb & 0x000F_FFFF_FFFF_F000, ((cb & 0xFF) + 1) * 4096
    assert g.its.creadr == g.its.cwriter < size  # queue drained, and it never wrapped
    slots = g.memory.read(base, g.its.cwriter).reshape(-1, 32)
    devices, ites, colls = set(), {}, {}
    for slot in slots:
        c = decode(slot)
        if c.opcode == OPCODES["MAPD"]:
            if c.valid:
                devices.add(c.device_id)
            else:
                devices.discard(c.device_id)
                ites = {k: v for k, v in ites.items() if k[0] != c.device_id}
        elif c.opcode == OPCODES["MAPC"]:
            colls[c.icid] = c.rdbase if c.valid else None
        elif c.opcode in (OPCODES["MAPTI"], OPCODES["MAPI"]):
            assert c.device_id in devices
            pintid = c.pintid if c.opcode == OPCODES["MAPTI"] else c.event_id
            ites[(c.device_id, c.event_id)] = [pintid, c.icid]
        elif c.opcode == OPCODES["MOVI"]:
            ites[(c.device_id, c.event_id)][1] = c.icid
        elif c.opcode == OPCODES["DISCARD"]:
            ites.pop((c.device_id, c.event_id), None)
    return {k: (i, icid, colls.get(icid)) for k, (i, icid) in ites.items()}


@pytest.mark.parametrize("src", _sources())
def test_intids_match_the_guests_its_commands(src):
    g = _gic(src)
    want = _replay_commands(g)
    got = {(x.device_id, x.event_id): (x.intid, x.icid, x.vcpu) for x in g.lpis}
    assert got == want


@pytest.mark.parametrize("src", _sources())
def test_enable_priority_pending(src):
    g = _gic(src)
    _, meta = _guest(src)
    off = {(d["device_id"], d["event_id"]) for d in meta["disabled_on_purpose"]}
    assert len(off) == 2
    for x in g.lpis:
        key = (x.device_id, x.event_id)
        assert x.priority == LINUX_LPI_DEFAULT_PRIO
        assert x.enabled is (key not in off), key
        assert x.pending is (key in off), key  # fired while disabled: left pending in the table
        assert x.pending_on == ([x.vcpu] if key in off else [])
    assert g.unmapped_pending == {v: [] for v in range(g.n_vcpus)}


@pytest.mark.parametrize("src", _sources())
def test_registers(src):
    g = _gic(src)
    assert g.layout == "qemu" and g.machine.startswith("virt-") and g.n_vcpus == 2
    assert all(rd.enable_lpis for rd in g.redistributors)
    assert len({rd.propbaser for rd in g.redistributors}) == 1
    assert len({rd.pending_table for rd in g.redistributors}) == 2
    assert g.its.ctlr & 1 and g.its.iidr == 0 and g.its.cbaser >> 63
    types = {decode_baser(i, b).type for i, b in enumerate(g.its.baser) if b >> 63}
    assert types == {1, 4}  # device and collection tables
    assert not g.stream.skipped
    assert g.stream.ram["mach-virt.ram"].length == 256 << 20


# ------------------------------------------------------------------------------ bad streams
@pytest.mark.engine  # the RAM page kernel on bad input: re-run with NUMBA_BOUNDSCHECK=1
def test_truncated_everywhere_refused():
    raw = _raw(DATA)
    s = read_stream(raw)
    cuts = {0, 3, 4, 7, 8, 9, 20, 40, len(raw) - 1, len(raw) - 100}
    for sec in s.sections[:8] + s.sections[-24:]:
        for p in (sec.offset, sec.offset + 1, sec.data_start + 3, sec.data_end, sec.end - 1, sec.end):
            cuts.add(p)
    cuts |= set(np.linspace(0, len(raw) - 1, 25).astype(int).tolist())
    for cut in sorted(c for c in cuts if 0 <= c < len(raw)):
        with pytest.raises(StreamError) as e:
            read_stream(raw[:cut])
        assert 0 <= e.value.offset <= cut, (cut, str(e.value))
        assert f"at byte {e.value.offset}" in str(e.value)
        if cut > 8:
            assert e.value.section is not None, (cut, str(e.value))


def _patched(raw: bytes, at: int, new: bytes) -> bytes:
    return raw[:at] + new + raw[at + len(new):]


@pytest.mark.engine  # the RAM page kernel on bad input: re-run with NUMBA_BOUNDSCHECK=1
def test_corruption_refused_with_offset_and_section():
    raw = _raw(DATA)
    s = read_stream(raw)
    ram_part = next(x for x in s.sections if x.name == "ram" and x.kind != 1)
    gic = s.device("arm_gicv3")
    desc_at = s.sections[-1].end + 1
    first = ram_part.data_start  # a page record naming its block: header, name length, name, data
    fill_at = first + 8 + 1 + raw[first + 8]
    zero_page = _patched(_patched(raw, first + 7, b"\x02"), fill_at, b"\x07")
    cases = [
        (_patched(raw, 0, b"QEVX"), 0, "header"),
        (_patched(raw, 4, b"\0\0\0\x04"), 4, "header"),
        (_patched(raw, ram_part.data_start + 7, b"\x01"), ram_part.data_start, "ram"),  # unknown flag
        (zero_page, fill_at, "ram"),  # a zero page whose fill byte is not 0
        (_patched(raw, gic.end - 1, b"\x63"), gic.data_end, "arm_gicv3"),  # footer names another id
        (_patched(raw, gic.offset, b"\x55"), gic.offset, None),  # unknown section type
        (_patched(raw, desc_at + 5, b"["), desc_at, "description"),  # broken JSON
    ]
    for data, offset, section in cases:
        with pytest.raises(StreamError) as e:
            read_stream(data)
        assert (e.value.offset, e.value.section) == (offset, section), str(e.value)
    # a field size in the JSON description that does not match the bytes
    i = raw.index(b'"gicd_ctlr", "type": "uint32", "size": 4', desc_at)
    bad = _patched(raw, i + len(b'"gicd_ctlr", "type": "uint32", "size": '), b"8")
    with pytest.raises(StreamError) as e:
        read_stream(bad)
    assert e.value.section == "arm_gicv3"
    # ... or describes fewer bytes than were sent (the ITS's eight BASERs as seven)
    i = raw.index(b'"name": "baser", "array_len": 8', desc_at)
    bad = _patched(raw, i + len(b'"name": "baser", "array_len": '), b"7")
    with pytest.raises(StreamError, match="does not end where expected") as e:
        read_stream(bad)
    its = s.device("arm_gicv3_its")
    assert (e.value.section, e.value.offset) == ("arm_gicv3_its", its.data_end - 8)


def _insert_before_eof(raw: bytes, s, blob: bytes) -> bytes:
    eof = s.sections[-1].end
    return raw[:eof] + blob + raw[eof:]


@pytest.mark.engine  # the RAM page kernel on bad input: re-run with NUMBA_BOUNDSCHECK=1
def test_unknown_sections_skipped():
    raw = _raw(DATA)
    s = read_stream(raw)
    name = b"vlpi-test/unknown"

    def hdr(kind, sid):
        return bytes([kind]) + sid.to_bytes(4, "big")

    full = hdr(SECTION_FULL, 900) + bytes([len(name)]) + name + (0).to_bytes(4, "big") + (1).to_bytes(4, "big")
    full += bytes(range(256)) * 3 + b"\x7e" + (900).to_bytes(4, "big")
    it = hdr(1, 901) + bytes([len(name)]) + name + (0).to_bytes(4, "big") + (1).to_bytes(4, "big")
    it += b"\x7e\0\0\x03\x85" * 5 + b"\x7e" + (901).to_bytes(4, "big")  # look-alike footers inside
    it += hdr(3, 901) + b"payload" + b"\x7e" + (901).to_bytes(4, "big")
    data = _insert_before_eof(raw, s, full + it)
    s2 = read_stream(data)
    assert s2.skipped == ["vlpi-test/unknown (FULL, id 900)", "vlpi-test/unknown (START, id 901)",
                          "vlpi-test/unknown (END, id 901)"]
    a, b = read_gic(s2), _gic(DATA)
    assert a.lpis == b.lpis


def test_round_trip_rewrite_is_identical_in_content():
    s = read_stream(_raw(DATA))
    s2 = read_stream(write_stream(s))
    assert [(x.name, x.fields) for x in s2.devices()] == [(x.name, x.fields) for x in s.devices()]
    for name, blk in s.ram.items():
        assert np.array_equal(s2.ram[name].data, blk.data)


# ---------------------------------------------------------------------------------- layouts
def _config_patched(raw: bytes, machine: bytes) -> bytes:
    i = raw.index(b"virt-", 8)
    n = int.from_bytes(raw[i - 4 : i], "big")
    assert len(machine) == n
    return raw[:i] + machine + raw[i + n :]


def test_undecidable_layout_is_an_error():
    s = read_stream(_raw(DATA))
    odd = write_stream(s, fields={("arm_gicv3_its", 0, "iidr"): 0x0123_443B})
    with pytest.raises(GicLayoutError, match="cannot tell which layout"):
        read_gic(odd)
    assert read_gic(odd, layout="qemu").lpis == _gic(DATA).lpis  # the caller may name the layout
    # an older machine type: QEMU's ITS tables have kept their field positions since 6.2
    old = _config_patched(_raw(DATA), b"virt-6.2")
    assert read_gic(old).lpis == _gic(DATA).lpis
    with pytest.raises(GicLayoutError, match="revision 3"):
        read_gic(write_stream(s, fields={("arm_gicv3_its", 0, "iidr"): KVM_IIDR | 3 << 12}))


def to_kvm_layout(g) -> bytes:
    """The TCG stream with its ITS tables rewritten by vlpi's KVM ABI rev 0 writer and the ITS IIDR
    of a KVM host: what the same guest state looks like in a stream from a KVM host."""
    ram = g.stream.ram["mach-virt.ram"].data.copy()
    mem = GuestMemory()
    mem.add_slot(0x4000_0000, data=ram)
    for d in g.devices:  # nothing of the other layout may remain
        mem.write(d.itt_addr, np.zeros(d.itt_bytes, np.uint8))
    for i in (0, 1):
        t = decode_baser(i, g.its.baser[i])
        if t.indirect:
            l1 = mem.read(t.base, t.pages * t.page_size).view("<u8")
            for w in l1[(l1 >> np.uint64(63)).astype(bool)]:
                mem.write(int(w) & 0x000F_FFFF_FFFF_0000, np.zeros(t.page_size, np.uint8))
        else:
            mem.write(t.base, np.zeros(t.pages * t.page_size, np.uint8))
    devices = []
    for d in g.devices:
        rows = [x for x in g.lpis if x.device_id == d.device_id]
        devices.append(abi.ItsDevice(
            d.device_id, d.itt_addr, d.eventid_bits,
            np.array([x.event_id for x in rows], np.uint32), np.array([x.intid for x in rows], np.uint32),
            np.array([x.icid for x in rows], np.uint16), np.zeros(len(rows), bool),
        ))
    colls = [(icid, abi.COLLECTION_NOT_MAPPED if v is None else v) for icid, v in sorted(g.collections.items())]
    abi.save_tables_v0(mem, g.its.baser[0], g.its.baser[1], devices, colls, has_gicv4_1=False)
    return write_stream(g.stream, ram={"mach-virt.ram": ram}, fields={("arm_gicv3_its", 0, "iidr"): KVM_IIDR})


def test_kvm_layout_stream_decodes_and_replays_the_restore():
    tcg = _gic(DATA)
    kvm = read_gic(to_kvm_layout(tcg))
    assert kvm.layout == "kvm-abi-0"
    assert kvm.lpis == tcg.lpis
    # forcing the other layout on it reads KVM's DTEs as QEMU's: an ITT address outside RAM
    with pytest.raises(GicLayoutError, match="point outside guest RAM"):
        read_gic(to_kvm_layout(tcg), layout="qemu")
    vm = kvm.to_vm()
    lp = vm.lpis
    got = {int(i): (int(t), bool(p)) for i, t, p in zip(lp.intid, lp.target_vcpu, lp.pending_latch, strict=True)}
    assert got == {x.intid: (x.vcpu, bool(x.pending)) for x in tcg.lpis}
    # the restore consumed the pending bits: the destination's pending tables no longer hold them
    for x in tcg.lpis:
        rd = kvm.redistributors[x.vcpu]
        assert not vm.mem.read(rd.pending_table + x.intid // 8, 1)[0] >> (x.intid % 8) & 1
    # ... while the stream's own RAM is unchanged
    assert sum(x.pending for x in read_gic(to_kvm_layout(tcg)).lpis) == 2
    with pytest.raises(GicLayoutError, match="only a KVM-layout"):
        tcg.to_vm()
    r = kvm.restore_summary()
    pend = sorted(x.intid for x in tcg.lpis if x.pending)
    assert r == {"lpis_created": len(tcg.lpis), "pending_after_restore": pend, "pending_bits_consumed": len(pend),
                 "lost": {}}


def test_cli_inspect_kvm_stream(capsys, tmp_path):
    f = tmp_path / "kvm.bin"
    f.write_bytes(to_kvm_layout(_gic(DATA)))
    assert cli_main(["inspect", str(f)]) == 0
    out = capsys.readouterr().out
    assert "ITS table layout kvm-abi-0" in out
    assert "destination restore (KVM, replayed): 6 LPIs created, 2 pending [8193, 8197], 2 pending-table bits" in out
    assert cli_main(["inspect", str(f), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["destination_restore"]["pending_bits_consumed"] == 2


# ---------------------------------------------------------------------------------------- CLI
def test_cli_inspect(capsys, tmp_path):
    f = _stream_file(DATA)
    assert cli_main(["inspect", str(f), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["layout"] == "qemu"
    assert {(x["device_id"], x["event_id"], x["intid"], x["vcpu"], x["enabled"], x["priority"], x["pending"])
            for x in out["lpis"]} == {(x.device_id, x.event_id, x.intid, x.vcpu, x.enabled, x.priority, x.pending)
                                      for x in _gic(DATA).lpis}
    assert cli_main(["inspect", str(f)]) == 0
    text = capsys.readouterr().out
    assert "vCPU 0:" in text and "vCPU 1:" in text and "2 pending" in text
    bad = tmp_path / "cut.bin"
    bad.write_bytes(_raw(DATA)[:100_000])
    assert cli_main(["inspect", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "truncated" in err and "in section 'ram'" in err
    assert cli_main(["inspect", str(tmp_path / "missing.bin")]) == 2


def test_truncated_is_a_streamerror_subclass():
    assert issubclass(TruncatedStream, StreamError) and issubclass(StreamError, ValueError)


@pytest.mark.engine  # the RAM page kernel on bad input: re-run with NUMBA_BOUNDSCHECK=1
def test_random_corruption_never_escapes_as_another_error():
    """Byte changes anywhere (headers, RAM records, device state, the JSON description): the stream
    is either still readable or refused with a StreamError -- never another exception."""
    raw = _raw(DATA)
    s = read_stream(raw)
    rng = np.random.default_rng(10)
    ram_end = next(x for x in s.sections if x.kind == SECTION_FULL).offset
    outcomes = {"read": 0, "refused": 0}
    for k in range(160):
        data = bytearray(raw)
        lo = 0 if k % 2 else ram_end  # half in the device state and description, half anywhere
        for _ in range(1 + k % 3):
            data[int(rng.integers(lo, len(raw)))] = int(rng.integers(0, 256))
        try:
            read_gic(bytes(data))
            outcomes["read"] += 1
        except StreamError as e:
            assert e.offset >= 0 and "at byte" in str(e)
            outcomes["refused"] += 1
    assert outcomes["refused"] > 20 and outcomes["read"] > 0, outcomes
