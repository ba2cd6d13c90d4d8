"""vlpi.gicv4: VPT ownership (mapped/resident/Dirty), VMAPP, doorbells, VMOVI, GICv4.0 limits."""

from __future__ import annotations

import errno

import numpy as np
import pytest

from vlpi.gicv4 import GICv4, GICv4Error


def bit(g, v, intid):
    return bool(g.vlpi_pending([v], [intid])[0])


def test_vpt_authoritative_only_when_unmapped_and_non_resident():
    g = GICv4(2)
    g.map_all_vpes()
    g.schedule(0)
    g.raise_vlpis([0, 1], [8200, 8201])
    assert bit(g, 0, 8200) and bit(g, 1, 8201)
    assert g.vpt[0, 8200 // 8] == 0 and g.vpt[1, 8201 // 8] == 0  # held by the GIC, not in memory
    for v in (0, 1):
        with pytest.raises(GICv4Error) as ei:
            g.read_vpt(v)
        assert ei.value.errno == errno.EACCES
    g.unmap_all_vpes()
    assert g.read_vpt(1)[8201 // 8] == 1 << (8201 % 8)  # non-resident + unmapped: cleaned
    with pytest.raises(GICv4Error):
        g.read_vpt(0)  # still resident
    g.deschedule(0, wait=False)  # Dirty set: the RD is still writing back
    assert int(g.vpendbaser[0]) >> 60 & 1
    with pytest.raises(GICv4Error):
        g.read_vpt(0)
    g.poll_dirty(0)
    assert g.read_vpt(0)[8200 // 8] == 1 << (8200 % 8)
    with pytest.raises(ValueError):
        g.read_vpt(0)[0] = 1  # read-only view


def test_remap_ptz0_keeps_bits_ptz1_discards():
    g = GICv4(1)
    g.vmapp(0, True)
    g.raise_vlpis([0], [9000])
    g.vmapp(0, False)
    g.vmapp(0, True)  # PTZ = 0: the GIC parses the VPT again
    assert bit(g, 0, 9000)
    g.vmapp(0, False)
    g.vmapp(0, True, ptz=True)  # the pre-c21bc068cdbe bug: bits ignored
    assert not bit(g, 0, 9000)


def test_vlpi_on_unmapped_vpe_is_lost_without_doorbell():
    g = GICv4(2)
    g.vmapp(0, True)
    delivered, db = g.raise_vlpis([0, 1], [8192, 8193])
    assert delivered.tolist() == [True, False]
    assert db.tolist() == [True, False]
    assert g.doorbells.tolist() == [1, 0]
    assert not bit(g, 1, 8193)


def test_doorbell_only_for_non_resident_and_new_bits():
    g = GICv4(1)
    g.map_all_vpes()
    _, db = g.raise_vlpis([0, 0, 0], [8192, 8192, 8193])  # second one: already pending
    assert db.tolist() == [True, False, True]
    g.schedule(0)
    _, db = g.raise_vlpis([0], [8194])
    assert db.tolist() == [False]
    assert g.doorbells[0] == 2


def test_vmovi_moves_pending_and_discard_reports_loss():
    g = GICv4(3)
    g.map_all_vpes()
    g.vmapti([0, 0], [8192, 8193])
    g.raise_vlpis([0], [8192])
    g.vmovi([8192, 8193], [0, 0], [2, 2])
    assert bit(g, 2, 8192) and not bit(g, 0, 8192) and not bit(g, 2, 8193)
    assert g.vlpi_count.tolist() == [0, 0, 2]
    assert g.discard_vlpis([2, 2], [8192, 8193]).tolist() == [True, False]
    assert not bit(g, 2, 8192)


def test_clear_and_acknowledge():
    g = GICv4(1)
    g.map_all_vpes()
    g.raise_vlpis([0, 0], [8192, 8195])
    g.clear_vlpis([0], [8192])
    g.acknowledge(0, [8195])
    assert not bit(g, 0, 8192) and not bit(g, 0, 8195)


def test_gicv40_vpt_unreadable_and_no_invdb():
    g = GICv4(1, version="v4.0")
    with pytest.raises(GICv4Error) as ei:
        g.read_vpt(0)
    assert ei.value.errno == errno.EACCES
    with pytest.raises(GICv4Error):
        g.invdb(0)
    GICv4(1).invdb(0)


def test_vmapti_bounds_and_bad_args():
    g = GICv4(1, vpt_bytes=8192)
    with pytest.raises(ValueError):
        g.vmapti([0], [65536])
    with pytest.raises(ValueError):
        GICv4(1, version="v5")
    with pytest.raises(ValueError):
        g.schedule(3)


def test_bulk_raise_equals_sequential():
    rng = np.random.default_rng(0)
    a, b = GICv4(4), GICv4(4)
    for g in (a, b):
        g.map_all_vpes()
        g.vmapp(3, False)
        g.schedule(1)
    vp = rng.integers(0, 4, 300)
    it = rng.integers(8192, 8300, 300)
    da, ra = a.raise_vlpis(vp, it)
    res = [b.raise_vlpis([x], [y]) for x, y in zip(vp, it, strict=True)]
    assert (da == np.array([r[0][0] for r in res])).all()
    assert (ra == np.array([r[1][0] for r in res])).all()
    assert (a._live == b._live).all() and (a.doorbells == b.doorbells).all()


def test_vmapp_alloc_and_ptz_fields():
    g = GICv4(2)
    g.map_all_vpes()
    g.unmap_all_vpes()
    g.map_all_vpes()
    log = list(g.vmapp_log)
    assert log[:2] == [(0, True, True, False), (1, True, True, False)]  # first map: Alloc=1
    assert log[2:4] == [(0, False, True, False), (1, False, True, False)]  # last unmap: Alloc=1
    assert all(ptz is False for *_, ptz in log)  # PTZ never set on remap
    v40 = GICv4(1, version="v4.0")
    v40.vmapp(0, True)
    assert list(v40.vmapp_log) == [(0, True, False, False)]  # no Alloc/PTZ on v4.0
