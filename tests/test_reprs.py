"""Reports read the way they print: every ``name=`` in a repr is an attribute of that name, an array
never prints like a count, lost-interrupt records print as a table with reasons by name, and
``describe()`` returns a string (printing is the caller's) everywhere."""

from __future__ import annotations

import dataclasses
import re
import sys
from pathlib import Path

import numpy as np
import pytest

import vlpi
from vlpi import migration as M
from vlpi import snapshot as S
from vlpi.its.abi import ItsDevice
from vlpi.qemu import read_gic
from vlpi.scenarios import build_model_vm
from vlpi.vgic import LOST_DTYPE, LOST_PRINT_ROWS, LostInterruptLog, LostReason, LostRecord, LostRecords, LostSource

ROOT = Path(__file__).resolve().parents[1]
STREAM = ROOT / "tests" / "data" / "qemu" / "stream.bin.gz"


def top_level_fields(text: str) -> list[tuple[str, str]]:
    """The ``name=value`` pairs at the top level of ``Type(...)`` (nested reprs are values)."""
    start = text.index("(")
    assert text.endswith(")"), text
    body = text[start + 1 : -1]
    pairs, depth, cur = [], 0, ""
    for c in body + ",":
        if c == "," and depth == 0:
            pairs.append(cur.strip())
            cur = ""
            continue
        depth += c in "([{<"
        depth -= c in ")]}>"
        cur += c
    out = []
    for p in pairs:
        m = re.match(r"([A-Za-z_]\w*)=(.*)$", p, flags=re.S)
        if m:
            out.append((m.group(1), m.group(2)))
    return out


def check_repr(obj) -> list[str]:
    """Problems with ``repr(obj)``: a ``name=`` that is no attribute, an array printed as a number
    or in full, a count printed as an array summary."""
    text = repr(obj)
    problems = []
    for name, shown in top_level_fields(text):
        if not hasattr(obj, name):
            problems.append(f"{type(obj).__name__}: {name}= is not an attribute")
            continue
        value = getattr(obj, name)
        if isinstance(value, np.ndarray):
            if not (shown.startswith("<") and shown.endswith(">")):
                problems.append(f"{type(obj).__name__}.{name} is an array but prints as {shown!r}")
            elif str(value.size) not in shown:
                problems.append(f"{type(obj).__name__}.{name}: its size {value.size} is not in {shown!r}")
        elif re.fullmatch(r"-?\d+", shown) and not isinstance(value, (int, np.integer)):
            problems.append(f"{type(obj).__name__}.{name} prints as a count but is a {type(value).__name__}")
        elif re.match(r"<(\w+ array|LostRecords)\b", shown) and not isinstance(value, np.ndarray):
            problems.append(f"{type(obj).__name__}.{name} prints as an array but is a {type(value).__name__}")
    return problems


# ----------------------------------------------------------------------------- the checker itself
@dataclasses.dataclass
class _Old:
    """The report shape this test exists to prevent."""

    guest_reads: int
    dirty_pages: np.ndarray

    def __repr__(self) -> str:
        return f"_Old(reads={self.guest_reads}, dirty_pages={len(self.dirty_pages)})"


def test_the_checker_fails_on_the_old_report_shape():
    problems = check_repr(_Old(2, np.arange(3)))
    assert "_Old: reads= is not an attribute" in problems
    assert "_Old.dirty_pages is an array but prints as '3'" in problems


def test_the_checker_reads_nested_reprs_as_values():
    assert top_level_fields("A(x=B(y=1, z=2), w=<int64 array, 3 pages>, v=[1, 2])") == [
        ("x", "B(y=1, z=2)"), ("w", "<int64 array, 3 pages>"), ("v", "[1, 2]")]


# ----------------------------------------------------------------------------- objects to print
def _vm_with_a_loss():
    vm = vlpi.VM(2, gic="v4.1")
    vm.mem.add_slot(0x4000_0000, 8 << 20)
    vm.write_propbaser(0x4000_0000 | 13)
    vm.mem.write(0x4000_0000, np.full(64, 0xA3, np.uint8))
    for v in range(2):
        vm.write_pendbaser(v, 0x4010_0000 + v * 0x10000)
        vm.enable_lpis(v)
    vm.its.write_baser(0, (1 << 63) | 0x4020_0000)
    vm.its.write_baser(1, (1 << 63) | 0x4021_0000)
    vm.its.ctlr_enabled = True
    vm.its.mapd(1, 0x4030_0000, 7)
    vm.its.mapc(0, 1)
    vm.its.map_events(1, np.arange(16), 8192 + np.arange(16), 0)
    vm.init()
    vm.forward(1, [3])
    vm.signal_msi(1, [3, 4])
    vm.pause()
    rep = vm.save_pending_tables(during=lambda v: v.signal_msi(1, [3]))
    return vm, rep


@pytest.fixture(scope="module")
def objects():
    vm, vrep = _vm_with_a_loss()
    mem = vlpi.GuestMemory()
    mem.add_slot(0x8000_0000, 2 << 16)
    pend = np.array([0x8000_0000, 0x8001_0000], np.uint64)
    lp = vlpi.LPITable([8192, 8193, 8200], [0, 1, -1], [True, False, True])
    save = vlpi.save_pending_tables(mem, pend, lp)
    sync = vlpi.sync_pending_status(mem, pend, lp)
    src = build_model_vm(2, 14, gic="v4.1", seed=5)
    dst, mrep = vlpi.migrate(src)
    host_src = M.save_host([build_model_vm(2, 14, gic="v4.1", seed=6)])
    gic = read_gic(STREAM)
    plan = M.plan_fault([build_model_vm(2, 14, gic="v4.1", seed=7)], "pending-save")
    return {
        "SaveReport": save, "SyncReport": sync, "VMSaveReport": vrep, "ItsSaveReport": mrep.its_save,
        "Verification": mrep.verification, "MigrationReport": mrep, "HostMigrationReport": mrep.host,
        "Phase": mrep.host.phases[0], "KernelCosts": mrep.host.costs, "SourceSave": host_src,
        "Snapshot": host_src.snapshot, "VMImage": host_src.snapshot.vms[0], "FaultPlan": plan,
        "Traffic": M.Traffic(10.0), "LostRecord": vm.lost.records[0], "LostRecords": vm.lost.records,
        "LostInterruptLog": vm.lost, "VM": vm, "VirtualITS": vm.its, "GICv4": vm.gicv4, "LPITable": vm.lpis,
        "GuestMemory": vm.mem, "ItsDevice": ItsDevice(1, 0x4030_0000, 8, np.arange(4, dtype=np.uint32)),
        "GicState": gic, "Stream": gic.stream, "Section": gic.stream.sections[0],
        "RamBlock": next(iter(gic.stream.ram.values())), "Redistributor": gic.redistributors[0],
        "ItsRegisters": gic.its, "LPI": gic.lpis[0],
    }


NAMES = ["SaveReport", "SyncReport", "VMSaveReport", "ItsSaveReport", "Verification", "MigrationReport",
         "HostMigrationReport", "Phase", "KernelCosts", "SourceSave", "Snapshot", "VMImage", "FaultPlan", "Traffic",
         "LostRecord", "LostInterruptLog", "VM", "VirtualITS", "GICv4", "LPITable", "GuestMemory", "ItsDevice",
         "GicState", "Stream", "Section", "RamBlock", "Redistributor", "ItsRegisters", "LPI"]


@pytest.mark.parametrize("name", NAMES)
def test_every_field_a_repr_shows_is_an_attribute_and_arrays_look_like_arrays(objects, name):
    obj = objects[name]
    assert check_repr(obj) == []
    assert len(repr(obj)) < 1200, f"{name}'s repr is {len(repr(obj))} characters: summarise its containers"


def test_engine_reports_name_their_fields(objects):
    save, sync = objects["SaveReport"], objects["SyncReport"]
    shown = dict(top_level_fields(repr(save)))
    assert set(shown) == {f.name for f in dataclasses.fields(save)}
    n = save.dirty_pages.size
    assert shown["dirty_pages"] == f"<int64 array, {n} page{'s' * (n != 1)}>"
    assert shown["guest_reads"] == str(save.guest_reads) and shown["lpis_total"] == "3"
    assert float(shown["elapsed_s"]) == pytest.approx(save.elapsed_s, abs=1e-6)
    shown = dict(top_level_fields(repr(sync)))
    assert set(shown) == {f.name for f in dataclasses.fields(sync)}
    assert shown["lpi_errno"].startswith("<int32 array, 3 LPIs, 0 nonzero")


def test_a_count_and_an_array_of_the_same_name_print_differently(objects):
    host, save = objects["HostMigrationReport"], objects["MigrationReport"].its_save
    assert isinstance(host.dirty_pages, int) and isinstance(save.dirty_pages, np.ndarray)
    assert f"dirty_pages={host.dirty_pages}," in repr(host)
    assert "dirty_pages=<int64 array" in repr(save)
    one = vlpi.SaveReport(1, 0, 1, 1, 0, 1, 0, 0, np.array([5]))
    assert "dirty_pages=<int64 array, 1 page>" in repr(one)


# ----------------------------------------------------------------------------- lost-interrupt records
def test_a_lost_record_prints_with_its_field_names_and_reason_by_name(objects):
    rec = objects["LostRecord"]
    assert isinstance(rec, LostRecord)
    assert repr(rec) == ("LostRecord(seq=0, source=MSI, reason=VPE_UNMAPPED, device_id=1, event_id=3, "
                         f"intid=8195, vcpu=1, time_s={rec.time_s:.6f})")
    assert rec["reason"] == LostReason.VPE_UNMAPPED and rec.intid == 8195 and rec.vcpu == 1


def test_records_are_timed_in_the_order_they_happened():
    """``time_s``: seconds after the log was created, on the monotonic clock, when recorded."""
    import time

    log = LostInterruptLog()
    t0 = time.monotonic()
    log.record(LostSource.MSI, LostReason.VPE_UNMAPPED, 1, 2, 8192, 0)
    time.sleep(0.02)
    log.record(LostSource.DISCARD, LostReason.FREED_PENDING, 1, [3, 4], [8193, 8194], 1)
    t = log.records["time_s"]
    assert t.dtype == np.float64 and t.shape == (3,)
    assert 0 <= t[0] <= time.monotonic() - t0 + 0.01  # the log was created just before t0
    assert t[1] == t[2] and t[1] - t[0] >= 0.02  # one batch, one time; later than the first
    assert f"time_s={t[0]:.6f}" in repr(log.records[0])
    assert str(log.records).splitlines()[1].split()[-1] == f"{t[0]:.6f}"


def test_format_1_snapshots_read_with_unknown_record_times():
    """Records written before they were timed (snapshot format 1) read back with time_s NaN."""
    from vlpi.vgic import LOST_DTYPE_V1, with_time

    old = np.zeros(2, LOST_DTYPE_V1)
    old["intid"] = [8192, 8193]
    new = with_time(old)
    assert new.dtype == LOST_DTYPE and np.isnan(new["time_s"]).all()
    assert new["intid"].tolist() == [8192, 8193]
    assert "time_s=nan" in repr(LostRecords(new)[0])
    with pytest.raises(TypeError, match="LOST_DTYPE"):
        with_time(np.zeros(1, np.int64))


def test_lost_records_print_as_a_table(objects):
    recs = objects["LostRecords"]
    assert isinstance(recs, LostRecords) and recs.dtype == LOST_DTYPE
    lines = str(recs).splitlines()
    assert lines[0].split() == list(LOST_DTYPE.names)
    assert lines[1].split()[:-1] == ["0", "MSI", "VPE_UNMAPPED", "1", "3", "8195", "1"]
    assert lines[1].split()[-1] == f"{recs[0].time_s:.6f}"
    assert repr(recs).splitlines()[0] == "LostRecords(1 record)"
    assert str(LostRecords()) == "(no records)"


def test_a_long_table_elides_its_middle():
    log = LostInterruptLog()
    n = LOST_PRINT_ROWS + 15
    log.record(LostSource.SAVE, LostReason.NOT_IN_SAVED_IMAGE, -1, -1, 8192 + np.arange(n), 0)
    lines = str(log.records).splitlines()
    assert len(lines) == 1 + LOST_PRINT_ROWS + 1 + 1
    assert lines[-1] == f"({n} records)" and "..." in lines[1 + LOST_PRINT_ROWS // 2]
    assert lines[1].split()[5] == "8192" and lines[-2].split()[5] == str(8192 + n - 1)
    assert "NOT_IN_SAVED_IMAGE" in lines[1] and "SAVE" in lines[1].split()


def test_lost_records_stay_numpy_for_existing_callers(objects):
    vm = objects["VM"]
    recs = vm.lost.records
    col = recs["reason"]
    assert type(col) is np.ndarray and col.tolist() == [LostReason.VPE_UNMAPPED]
    assert type(recs == recs) is np.ndarray  # ufunc results are plain arrays
    sel = vm.lost.select(reason=LostReason.VPE_UNMAPPED)
    assert isinstance(sel, LostRecords) and sel.size == 1
    assert isinstance(recs[:1], LostRecords) and isinstance(recs[recs["vcpu"] == 1], LostRecords)
    assert not recs.flags.writeable  # still a read-only view of the log
    plain = np.asarray(recs, LOST_DTYPE)
    assert type(plain) is np.ndarray and plain.dtype == LOST_DTYPE and plain.tolist() == recs.tolist()
    assert np.concatenate([recs, recs]).dtype == LOST_DTYPE
    with pytest.raises(TypeError, match="LOST_DTYPE"):
        LostRecords(np.zeros(2, np.int64))


def test_migration_reports_hold_lost_records(objects):
    vrep, host = objects["VMSaveReport"], objects["HostMigrationReport"]
    assert isinstance(vrep.lost, LostRecords) and vrep.lost_in_window == vrep.lost.size == 1
    assert isinstance(host.lost_in_window, LostRecords)
    src = objects["SourceSave"]
    assert all(isinstance(w, LostRecords) for w in src.window_lost)
    assert isinstance(src.snapshot.vms[0].lost, LostRecords)


def test_lost_records_to_dataframe(objects):
    pd = pytest.importorskip("pandas")
    df = objects["VM"].lost.to_dataframe()
    assert isinstance(df, pd.DataFrame)
    assert list(df.columns) == list(LOST_DTYPE.names)
    assert df["reason"].tolist() == ["VPE_UNMAPPED"] and df["source"].tolist() == ["MSI"]
    assert df["intid"].tolist() == [8195] and df["device_id"].tolist() == [1]
    assert set(df["reason"].cat.categories) == {r.name for r in LostReason}
    assert LostRecords().to_dataframe().empty


def test_to_dataframe_without_pandas_says_so(objects, monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)  # import pandas now raises ImportError
    with pytest.raises(ImportError, match="needs pandas, which vlpi does not install"):
        objects["VM"].lost.to_dataframe()


# ----------------------------------------------------------------------------- one verb per thing
DESCRIBED = ["VM", "Verification", "MigrationReport", "HostMigrationReport", "GicState", "FaultPlan"]


@pytest.mark.parametrize("name", DESCRIBED)
def test_describe_returns_a_string_and_prints_nothing(objects, name, capsys):
    text = objects[name].describe()
    assert isinstance(text, str) and text
    assert capsys.readouterr().out == ""


def test_earlier_names_give_the_same_text(objects):
    host, gic, plan = objects["HostMigrationReport"], objects["GicState"], objects["FaultPlan"]
    assert host.table() == host.describe()
    assert gic.format_table() == gic.describe()
    assert plan.describe() == plan.description and "read-only" in plan.description
    assert objects["MigrationReport"].describe() == host.describe()


def test_snapshot_of_lost_records_round_trips(objects, tmp_path):
    vm = objects["VM"]
    im = S.capture(vm, pending=M.pending_set(vm))
    path = tmp_path / "one.vlpi"
    S.write(path, S.Snapshot([im]))
    back = S.read(path).vms[0].lost
    assert isinstance(back, LostRecords) and back.tolist() == vm.lost.records.tolist()


# ----------------------------------------------------------------------------- tuples only where documented
PUBLIC_MODULES = ["vlpi", "vlpi.migration", "vlpi.snapshot", "vlpi.qemu", "vlpi.its", "vlpi.its.abi"]


def _public_callables():
    import importlib
    import inspect

    for modname in PUBLIC_MODULES:
        mod = importlib.import_module(modname)
        for name in mod.__all__:
            obj = getattr(mod, name)
            if inspect.isfunction(obj):
                yield f"{modname}.{name}", obj
            elif inspect.isclass(obj):
                for k, v in vars(obj).items():
                    if inspect.isfunction(v) and not k.startswith("_"):
                        yield f"{modname}.{name}.{k}", v


def says_it_returns_a_tuple(doc: str) -> bool:
    """The docstring names the parts: ``(a, b)`` with at least two names, or the word tuple."""
    return "tuple" in doc or bool(re.search(r"\([^(),]{1,60}(, [^(),]{1,60})+\)", doc))


def test_a_tuple_is_returned_only_where_the_docstring_says_so():
    import inspect

    undocumented = []
    for name, fn in _public_callables():
        ann = inspect.signature(fn).return_annotation
        if str(ann).replace("typing.", "").startswith(("tuple", "Tuple")):
            if not says_it_returns_a_tuple(inspect.getdoc(fn) or ""):
                undocumented.append(name)
    assert not undocumented, f"these return tuples their docstrings do not describe: {undocumented}"


def test_the_tuple_check_can_fail():
    assert not says_it_returns_a_tuple("Migrate every VM of a host.")
    assert says_it_returns_a_tuple("Returns ``(dst, MigrationReport)``.")
    assert says_it_returns_a_tuple("(DeviceID, EventID, pINTID) of the live ITEs")
