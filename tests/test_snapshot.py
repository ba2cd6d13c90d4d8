"""vlpi.snapshot: the file format (seal, manifest, digests), refusal of bad files, restore, inspect."""

from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile

import numpy as np
import pytest

from vlpi import migration as M
from vlpi import snapshot as S
from vlpi.scenarios import build_model_host


@pytest.fixture(scope="module")
def saved():
    vms = build_model_host(2, 3, 14, gic="v4.1", seed=7)
    src = M.save_host(vms)
    return src.snapshot, S.to_bytes(src.snapshot)


def same(a: S.Snapshot, b: S.Snapshot) -> bool:
    if len(a.vms) != len(b.vms) or a.meta != b.meta:
        return False
    for x, y in zip(a.vms, b.vms, strict=True):
        if json.loads(json.dumps(x.meta)) != y.meta or set(x.arrays) != set(y.arrays):
            return False
        if not all(np.array_equal(x.arrays[k], y.arrays[k]) and x.arrays[k].dtype == y.arrays[k].dtype
                   for k in x.arrays):
            return False
    return True


def reseal(data: bytes) -> bytes:
    """Re-seal edited bytes the way the writer does (size + SHA-256 of what precedes the seal)."""
    n = len(b"\nvlpi-snapshot-seal v1 size=") + 16 + len(b" sha256=") + 64 + 1
    body = data[:-n]
    return body + b"\nvlpi-snapshot-seal v1 size=%016x sha256=%s\n" % (
        len(data), hashlib.sha256(body).hexdigest().encode())


def rezip(data: bytes, edit) -> bytes:
    """Rebuild the archive with ``edit(name, bytes) -> bytes`` applied to each member, sealed."""
    zin = zipfile.ZipFile(io.BytesIO(data))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as z:
        for n in zin.namelist():
            z.writestr(n, edit(n, zin.read(n)))
        z.comment = zin.comment
    return reseal(out.getvalue())


# ----------------------------------------------------------------------------- round trip
def test_write_read_round_trip_is_exact(saved, tmp_path):
    snap, data = saved
    path = tmp_path / "a.snap"
    size = S.write(path, snap)
    assert size == path.stat().st_size == len(data)
    assert path.read_bytes() == data  # deterministic bytes apart from nothing
    back = S.read(path)
    assert same(snap, back)
    assert os.listdir(tmp_path) == ["a.snap"]  # no temporary left behind
    # it is an npz: numpy reads the arrays without pickle
    with np.load(path, allow_pickle=False) as z:
        assert np.array_equal(z["vm0/page_data"], snap.vms[0].arrays["page_data"])
    assert S.is_snapshot(path)


def test_only_pages_with_data_are_stored(saved):
    snap, _ = saved
    im = snap.vms[0]
    slot_bytes = int(im.arrays["slot_size"].sum())
    assert 0 < im.ram_bytes < slot_bytes
    assert im.arrays["page_data"].any(axis=1).all()


def test_restore_from_file_verifies(saved, tmp_path):
    snap, data = saved
    back = S.from_bytes(data)
    dst, _, ver = M.restore_destination(back)
    assert all(v.ok for v in ver) and sum(v.expected for v in ver) > 0


def test_write_is_atomic_on_failure(saved, tmp_path):
    snap, _ = saved
    path = tmp_path / "b.snap"
    S.write(path, snap)
    good = path.read_bytes()
    bad = S.Snapshot([S.VMImage(dict(snap.vms[0].meta), {"x": np.array([object()], dtype=object)})])
    with pytest.raises(TypeError, match="object"):
        S.write(path, bad)
    assert path.read_bytes() == good and os.listdir(tmp_path) == ["b.snap"]


# ----------------------------------------------------------------------------- refusals
def _refused(data: bytes, kind: str):
    with pytest.raises(S.SnapshotError) as ei:
        S.from_bytes(data)
    assert ei.value.kind == kind, (kind, str(ei.value))
    assert kind in str(ei.value)


def test_bit_flips_anywhere_are_refused_as_corrupt(saved):
    _, data = saved
    n = len(data)
    rng = np.random.default_rng(0)
    positions = sorted(set(list(range(0, 64)) + list(range(n - 200, n)) + rng.integers(0, n, 300).tolist()))
    for p in positions:
        for bit in (0, 5) if p % 2 else (7,):
            b = bytearray(data)
            b[p] ^= 1 << bit
            _refused(bytes(b), "corrupt")


def test_truncation_at_any_length_is_refused(saved):
    _, data = saved
    n = len(data)
    rng = np.random.default_rng(1)
    lengths = sorted(set(list(range(0, 80)) + list(range(n - 300, n)) + rng.integers(0, n, 200).tolist()))
    for k in lengths:
        _refused(data[:k], "truncated")


def test_newer_or_bad_version_is_refused(saved):
    snap, _ = saved
    _refused(S.to_bytes(snap, _version=S.FORMAT_VERSION + 1), "version")
    _refused(S.to_bytes(snap, _version=0), "corrupt")


def test_format_1_files_still_read_with_untimed_records(saved):
    """A file of format 1 (lost-interrupt records without ``time_s``) reads back, the records
    timed NaN; the same records in format 2 keep their times."""
    from vlpi.vgic import LOST_DTYPE_V1, LostReason, LostSource

    snap, _ = saved
    imgs = []
    for im in snap.vms:
        arrays = dict(im.arrays)
        lost = np.zeros(3, LOST_DTYPE_V1)
        lost["intid"] = [8192, 8193, 8194]
        lost["seq"] = [0, 1, 2]
        lost["reason"], lost["source"] = LostReason.VPE_UNMAPPED, LostSource.MSI
        arrays["lost"] = lost
        imgs.append(S.VMImage(im.meta, arrays))
    back = S.from_bytes(S.to_bytes(S.Snapshot(imgs, snap.meta), _version=1))
    for im in back.vms:
        assert im.lost["intid"].tolist() == [8192, 8193, 8194]
        assert np.isnan(im.lost["time_s"]).all()
    again = S.from_bytes(S.to_bytes(back))
    assert all(np.isnan(im.lost["time_s"]).all() for im in again.vms)
    assert S.FORMAT_VERSION == 2


def test_foreign_files_are_refused(saved, tmp_path):
    _refused(b"hello world, not a snapshot at all" * 10, "foreign")
    _refused(np.random.default_rng(0).bytes(5000), "foreign")
    buf = io.BytesIO()
    np.savez(buf, a=np.arange(10))
    _refused(buf.getvalue(), "foreign")
    p = tmp_path / "x.npz"
    p.write_bytes(buf.getvalue())
    assert not S.is_snapshot(p)
    # sealed, but the manifest names another format
    _, data = saved

    def other_format(name, b):
        if name == "vlpi-snapshot.json":
            m = json.loads(b)
            m["format"] = "something-else"
            return json.dumps(m).encode()
        return b

    _refused(rezip(data, other_format), "foreign")


def test_sealed_but_inconsistent_content_is_refused(saved):
    _, data = saved

    def drop_digest(name, b):
        if name == "vlpi-snapshot.json":
            m = json.loads(b)
            m["arrays"]["vm0/pending"]["sha256"] = "0" * 64
            return json.dumps(m).encode()
        return b

    _refused(rezip(data, drop_digest), "corrupt")

    def pickled(name, b):
        if name == "vm0/forwarded.npy":
            f = io.BytesIO()
            np.save(f, np.array([{"a": 1}], dtype=object), allow_pickle=True)
            return f.getvalue()
        return b

    with pytest.raises(S.SnapshotError):
        S.from_bytes(rezip(data, pickled))

    def bad_vcpus(name, b):
        if name == "vlpi-snapshot.json":
            m = json.loads(b)
            m["vms"][0]["n_vcpus"] = 5000
            return json.dumps(m).encode()
        return b

    _refused(rezip(data, bad_vcpus), "invalid")

    def meta_edit(fn):
        def edit(name, b):
            if name == "vlpi-snapshot.json":
                m = json.loads(b)
                fn(m["vms"][0])
                return json.dumps(m).encode()
            return b
        return edit

    for fn in (lambda v: v["registers"].__setitem__("pendbaser", 5),
               lambda v: v["registers"].__setitem__("propbaser", -1),
               lambda v: v["registers"].__setitem__("gits_baser", [1]),
               lambda v: v.__setitem__("registers", [1, 2]),
               lambda v: v.__setitem__("gic", "v5"),
               lambda v: v.__setitem__("vpt_bytes", 7)):
        _refused(rezip(data, meta_edit(fn)), "invalid")

    def array_edit(member, fn):
        def edit(name, b):
            if name == member:
                a = np.load(io.BytesIO(b), allow_pickle=False).copy()
                fn(a)
                f = io.BytesIO()
                np.save(f, a, allow_pickle=False)
                return f.getvalue()
            return b
        return edit

    def resealed(member, fn):
        out = rezip(data, array_edit(member, fn))
        zin = zipfile.ZipFile(io.BytesIO(out))
        m = json.loads(zin.read("vlpi-snapshot.json"))
        key = member[: -len(".npy")]
        a = np.load(io.BytesIO(zin.read(member)), allow_pickle=False)
        m["arrays"][key]["sha256"] = hashlib.sha256(np.ascontiguousarray(a).view(np.uint8).reshape(-1).data).hexdigest()
        return rezip(out, lambda n, b: json.dumps(m).encode() if n == "vlpi-snapshot.json" else b)

    def set_first(field, value):
        def fn(a):
            if a.dtype.names:
                a[field][0] = value
            else:
                a.reshape(-1)[0] = value
        return fn

    assert same(S.from_bytes(resealed("vm0/forwarded.npy", lambda a: None)), S.from_bytes(data))  # control
    for member, fn in (("vm0/forwarded.npy", set_first(None, -5)),
                       ("vm0/slot_size.npy", set_first(None, 0)),
                       ("vm0/pending.npy", set_first("vcpu", 77)),
                       ("vm0/lost.npy", set_first("reason", 200)) if snap_has_lost(data) else
                       ("vm0/pending.npy", set_first("intid", 5))):
        _refused(resealed(member, fn), "invalid")


def snap_has_lost(data: bytes) -> bool:
    return S.from_bytes(data).vms[0].lost.size > 0


def test_bad_snapshot_in_a_migration_resumes_the_source():
    vms = build_model_host(2, 3, 14, gic="v4.1", seed=7)
    before = [set(zip(p["vcpu"].tolist(), p["intid"].tolist(), strict=True)) for p in map(M.pending_set, vms)]
    with pytest.raises(M.MigrationAborted) as ei:
        M.migrate_host(vms, corrupt=lambda b: b[: len(b) // 2])
    assert ei.value.cause.kind == "truncated" and ei.value.report.rollback_lost == 0
    after = [set(zip(p["vcpu"].tolist(), p["intid"].tolist(), strict=True)) for p in map(M.pending_set, vms)]
    assert after == before and all(vm.running.all() for vm in vms)


# ----------------------------------------------------------------------------- inspect
def test_summary_counts(saved, tmp_path):
    snap, _ = saved
    path = tmp_path / "c.snap"
    S.write(path, snap)
    s = S.summarize(path)
    assert len(s["vms"]) == 2
    for vm, im in zip(s["vms"], snap.vms, strict=True):
        p = im.pending
        assert vm["pending"] == p.size == sum(c["pending"] for c in vm["vcpus"])
        assert vm["lpis"] == sum(c["lpis"] for c in vm["vcpus"]) == 8192
        assert vm["forwarded"] == sum(c["forwarded"] for c in vm["vcpus"]) > 0
        assert vm["pending_forwarded"] == int(p["forwarded"].sum())
        for c in vm["vcpus"]:
            assert c["pending"] == int((p["vcpu"] == c["vcpu"]).sum())
    text = S.format_summary(s)
    assert "vm0" in text and "PENDBASER" in text
    json.dumps(s)
