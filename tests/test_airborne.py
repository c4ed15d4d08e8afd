"""Generated airborne LiDAR tiles (sparseconv.data.airborne): determinism, labels, returns, attributes, LAS files."""

from __future__ import annotations

import os

import numpy as np
import pytest

from sparseconv.data.airborne import CLASSES, SCENES, generate_tile, generate_tiles, write_tile_las

KEYS = ("x", "y", "z", "intensity", "return_number", "number_of_returns", "scan_angle", "gps_time", "classification")
DTYPES = dict(x=np.float64, y=np.float64, z=np.float64, intensity=np.uint16, return_number=np.uint8,
              number_of_returns=np.uint8, scan_angle=np.float32, gps_time=np.float64, classification=np.uint8)


@pytest.fixture(scope="module")
def full_tile():
    """A tile with every feature: suburban, a river (hence a bridge where the road crosses it), a power line."""
    return generate_tile(2, size_m=70.0, density=8.0, scene="suburban", water="river", power_line=True,
                         return_hag=True)


def _hist(tile):
    return {int(k): int(v) for k, v in zip(*np.unique(tile["classification"], return_counts=True))}


def _pulse_starts(tile):
    """Row indices where a new pulse begins (returns of a pulse are consecutive and share gps_time + line)."""
    t, s = tile["gps_time"], tile["point_source_id"]
    new = np.ones(t.size, bool)
    new[1:] = (t[1:] != t[:-1]) | (s[1:] != s[:-1])
    return np.flatnonzero(new)


def test_keys_dtypes_shapes(full_tile):
    n = full_tile["x"].size
    assert n > 10000
    for k in KEYS:
        assert full_tile[k].dtype == DTYPES[k], k
        assert full_tile[k].shape == (n,), k
    assert full_tile["point_source_id"].dtype == np.uint16
    # projected-looking coordinates, tile extent
    assert full_tile["x"].min() >= 600000 and full_tile["y"].min() >= 6800000
    for k in ("x", "y"):
        ext = full_tile[k].max() - full_tile[k].min()
        assert 69.0 < ext <= 70.0
    np.testing.assert_allclose(full_tile["z"], np.round(full_tile["z"], 2), atol=1e-9)


def test_deterministic():
    a = generate_tile(7, size_m=40.0, density=6.0)
    b = generate_tile(7, size_m=40.0, density=6.0)
    c = generate_tile(8, size_m=40.0, density=6.0)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert a["x"].size != c["x"].size or not np.array_equal(a["z"], c["z"])


def test_class_codes(full_tile):
    h = _hist(full_tile)
    assert set(h) <= set(CLASSES)
    # every class of the generator shows up in a tile that has all features
    assert set(h) == {1, 2, 3, 4, 5, 6, 7, 9, 14, 17}, h
    assert h[2] == max(h.values())  # ground dominates
    assert set(CLASSES) == {1, 2, 3, 4, 5, 6, 7, 9, 14, 17}


def test_scenes_and_options():
    for i, scene in enumerate(SCENES):
        t = generate_tile(100 + i, size_m=40.0, density=4.0, scene=scene, water=False, power_line=False)
        h = _hist(t)
        assert 2 in h and 7 in h
        assert not {9, 14, 17} & set(h), (scene, h)
    with pytest.raises(ValueError):
        generate_tile(0, scene="desert")
    with pytest.raises(ValueError):
        generate_tile(0, water="lake")
    with pytest.raises(ValueError):
        generate_tile(-1)
    with pytest.raises(ValueError):
        generate_tile(0, density=0.0)


def test_returns_consistent(full_tile):
    rn, nr = full_tile["return_number"].astype(int), full_tile["number_of_returns"].astype(int)
    assert rn.min() >= 1 and (rn <= nr).all() and nr.max() <= 7
    starts = _pulse_starts(full_tile)
    pulse = np.cumsum(np.isin(np.arange(rn.size), starts)) - 1
    same = pulse[1:] == pulse[:-1]
    # within a pulse: the same number of returns, increasing return numbers, going down along the ray
    assert (nr[1:][same] == nr[:-1][same]).all()
    assert (rn[1:][same] > rn[:-1][same]).all()
    assert (full_tile["z"][1:][same] < full_tile["z"][:-1][same]).all()
    # pulses through vegetation give several returns, and the last one is often the ground
    multi = nr > 1
    assert 0.03 < multi.mean() < 0.8
    last = (rn == nr) & multi
    assert (full_tile["classification"][last] == 2).mean() > 0.3
    first_veg = (rn == 1) & multi & np.isin(full_tile["classification"], (3, 4, 5))
    assert first_veg.sum() > 100
    # gps_time increases along the flight line(s); all returns of a pulse share it
    assert (np.diff(full_tile["gps_time"]) >= 0).all()
    assert full_tile["gps_time"].min() > 1e8


def test_vegetation_heights(full_tile):
    c, hag, z = full_tile["classification"], full_tile["height_above_ground"], full_tile["z"]
    # a suburban tile has no crop fields: low vegetation starts 0.1 m above the terrain
    assert (hag[c == 3] >= 0.1 - 1e-4).all() and (hag[c == 3] < 0.5 + 1e-4).all()
    assert (hag[c == 4] >= 0.5 - 1e-4).all() and (hag[c == 4] < 2.0 + 1e-4).all()
    assert (hag[c == 5] >= 2.0 - 1e-4).all()
    assert np.percentile(np.abs(hag[c == 2]), 99) < 0.2
    assert np.percentile(hag[c == 6], 50) > 2.0
    # independently of the generator's terrain: against the mean ground height in 2 m cells
    x, y = full_tile["x"] - full_tile["x"].min(), full_tile["y"] - full_tile["y"].min()
    cell = (np.floor(x / 2).astype(int) * 1000 + np.floor(y / 2).astype(int))
    g = c == 2
    keys, inv = np.unique(cell[g], return_inverse=True)
    gz = np.bincount(inv, weights=z[g]) / np.bincount(inv)
    for cls, lo, hi in ((3, -0.3, 0.9), (4, 0.2, 2.5), (5, 1.5, np.inf)):
        m = c == cls
        pos = np.searchsorted(keys, cell[m])
        ok = (pos < keys.size) & (keys[np.minimum(pos, keys.size - 1)] == cell[m])
        dz = z[m][ok] - gz[pos[ok]]
        assert ok.sum() > 10, cls
        assert ((dz > lo) & (dz < hi)).mean() > 0.9, (cls, np.percentile(dz, [5, 50, 95]))


def test_crop_returns_are_not_ground():
    """Stubble and young crops (3DEP farmland: 3-27 cm above the ground, unclassified there): returns off the
    plants are low vegetation even within 0.1 m of the soil. Within the pulse's resolution the plants' echo and
    the soil's merge into one return: a few cm up, somewhat darker than bare soil, not a dark layer apart."""
    tile = generate_tile(2, size_m=100.0, density=6.0, scene="rural", return_hag=True)
    c, hag, it = tile["classification"], tile["height_above_ground"], tile["intensity"]
    crop = (c == 3) & (hag < 0.3)
    assert (crop & (hag < 0.1)).sum() > 500
    assert 0.5 < np.median(it[crop]) / np.median(it[c == 2]) < 0.95
    assert np.median(hag[crop]) < 0.08  # the echoes merged, near the soil (the plants' tops reach up to 0.3 m)
    assert np.percentile(np.abs(hag[c == 2]), 99) < 0.2  # and the ground is still only the soil


class _Always:
    """A Generator whose random() is 0: every optional feature drawn from it is present."""

    def __init__(self, seed):
        self._g = np.random.default_rng(seed)

    def random(self, size=None):
        return 0.0 if size is None else np.zeros(size)

    def __getattr__(self, name):
        return getattr(self._g, name)


def test_dormers_rise_from_both_slopes_and_stay_under_the_ridge():
    import math

    from sparseconv.data import airborne as A

    sc = A._Scene(np.random.default_rng(0), 100.0, "rural", False, False, _Always(1))
    sc.top[:] = -np.inf
    cx, cy, L, W, yaw, eave, tp = 50.0, 50.0, 14.0, 9.0, 0.4, 100.0, math.tan(math.radians(40))
    sl, u, v, m = sc._rect_window(sc.og, cx, cy, L, W, yaw)
    main = eave + tp * (W / 2 - np.abs(v)) + 0.0 * u
    sc._paint(sl, m, main, 0)
    sc._dormers(cx, cy, L, W, yaw, eave, tp, "gable", 0)
    top = sc.top[sl]
    above = m & (top > main + 0.3)
    assert above[v > 0].sum() > 20 and above[v < 0].sum() > 20  # _Always: dormers on both slopes
    assert (top[m] >= main[m] - 1e-3).all()  # painted as a maximum: the roof is never cut
    assert (top[m] > main[m] + 1e-3).mean() < 0.4  # dormers, not a second roof
    assert top[m].max() <= eave + tp * W / 2 + 1e-6  # below the ridge
    assert not np.isfinite(top[~m]).any()  # and within the footprint


def test_attributes(full_tile):
    c, it = full_tile["classification"], full_tile["intensity"].astype(float)
    assert np.abs(full_tile["scan_angle"]).max() <= 20.0
    assert full_tile["scan_angle"].max() - full_tile["scan_angle"].min() > 0.5
    med = {k: np.median(it[c == k]) for k in (2, 5, 6, 9)}
    assert med[9] < 0.5 * med[2] and med[9] < 0.5 * med[6]  # water is dark
    assert med[5] < med[2]  # vegetation returns share the pulse
    # water gives few returns: fewer per m^2 than the ground
    assert (c == 9).sum() < 0.5 * (c == 2).sum()
    # noise: far below or above the surface
    hag = full_tile["height_above_ground"][c == 7]
    assert (np.abs(hag) > 1.0).all()


@pytest.mark.parametrize("density", [2.0, 8.0, 16.0])
def test_density(density):
    t = generate_tile(3, size_m=40.0, density=density, water=False)
    first = (t["return_number"] == 1).sum() / 40.0**2
    # this 40 m tile gets 0.85-0.86 x density pulses with a return at every density (10,921 at 8/m2, one first
    # return each): the scan model's spacing, not a returns' loss. The bound checks that calibration with a margin
    # for the tile's draws (0.850 at 2/m2 once clumps of trees were added)
    assert 0.8 * density < first < 1.15 * density
    assert t["x"].size / 40.0**2 < 2.5 * density


@pytest.mark.parametrize("suffix", [".las", ".laz"])
def test_write_las_roundtrip(tmp_path, full_tile, suffix):
    laspy = pytest.importorskip("laspy")
    if suffix == ".laz":
        pytest.importorskip("lazrs")
    path = tmp_path / f"tile{suffix}"
    out = write_tile_las(full_tile, path)
    assert os.fspath(out) == os.fspath(path)
    assert sorted(os.listdir(tmp_path)) == [path.name]  # no temporary left behind
    las = laspy.read(path)
    assert str(las.header.version) == "1.4" and las.header.point_format.id == 6
    np.testing.assert_allclose(las.header.scales, [0.01, 0.01, 0.01])
    n = full_tile["x"].size
    assert las.header.point_count == n
    for k in ("x", "y", "z"):
        np.testing.assert_allclose(np.asarray(las[k]), full_tile[k], atol=0.006)
    for k in ("classification", "return_number", "number_of_returns", "intensity", "point_source_id"):
        np.testing.assert_array_equal(np.asarray(las[k]), full_tile[k], err_msg=k)
    np.testing.assert_array_equal(np.asarray(las.gps_time), full_tile["gps_time"])
    np.testing.assert_allclose(np.asarray(las.scan_angle) * 0.006, full_tile["scan_angle"], atol=0.0031)
    h = np.bincount(np.asarray(las.classification), minlength=32)
    assert {k: int(h[k]) for k in np.flatnonzero(h)} == _hist(full_tile)


def test_write_las_format1(tmp_path, full_tile):
    laspy = pytest.importorskip("laspy")
    path = write_tile_las(full_tile, tmp_path / "t.las", point_format=1)
    las = laspy.read(path)
    assert str(las.header.version) == "1.2" and las.header.point_count == full_tile["x"].size
    np.testing.assert_array_equal(np.asarray(las.scan_angle_rank), np.round(full_tile["scan_angle"]).astype(int))


def test_generate_tiles(tmp_path):
    laspy = pytest.importorskip("laspy")
    pytest.importorskip("lazrs")
    paths = generate_tiles(tmp_path / "out", 2, seed=4, size_m=30.0, density=3.0, progress=False)
    assert [os.path.basename(p) for p in paths] == ["tile_0000.laz", "tile_0001.laz"]
    assert sorted(os.listdir(tmp_path / "out")) == ["tile_0000.laz", "tile_0001.laz"]
    a, b = (laspy.read(p) for p in paths)
    assert a.header.point_count > 1000 and b.header.point_count > 1000
    # tile i depends on (seed, i) only
    again = generate_tiles(tmp_path / "again", 1, seed=4, size_m=30.0, density=3.0, suffix=".las", progress=False)
    c = laspy.read(again[0])
    np.testing.assert_array_equal(np.asarray(a.X), np.asarray(c.X))


def _canopy_ground_share(tile, cell=10.0):
    """Median share of ground returns over the cell x cell columns whose returns are mostly high vegetation."""
    x, y, c = tile["x"], tile["y"], tile["classification"]
    key = np.floor((x - x.min()) / cell).astype(np.int64) * 100000 + np.floor((y - y.min()) / cell).astype(np.int64)
    _, inv = np.unique(key, return_inverse=True)
    n, ground, high = np.bincount(inv), np.bincount(inv, c == 2), np.bincount(inv, c == 5)
    canopy = high / n > 0.5
    assert canopy.sum() >= 5
    return float(np.median(ground[canopy] / n[canopy]))


def test_closed_stands_hide_the_ground_from_a_single_return_sensor():
    # Real closed forests under a single-return sensor give no ground return in most 10 m columns; open stands
    # a third of their returns. Seed 0 draws a closed stand (0.24 before closed stands existed), seed 3 an open one.
    closed, open_ = (_canopy_ground_share(generate_tile(s, 60.0, 4.0, scene="forest", single_return=True))
                     for s in (0, 3))
    assert closed < 0.08 and open_ > 0.25
