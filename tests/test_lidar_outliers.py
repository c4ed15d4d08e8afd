"""Low outliers (sparseconv.lidar.outliers): found under the terrain, never the ground under a tall forest, and
labelled 7 by classify while the rest of the file is classified without them."""

import numpy as np
import pytest

laspy = pytest.importorskip("laspy")

from sparseconv.data.airborne import generate_tile, write_tile_las  # noqa: E402
from sparseconv.lidar import classify_file  # noqa: E402
from sparseconv.lidar.model import FORMAT, build_model, load_checkpoint, save_checkpoint  # noqa: E402
from sparseconv.lidar.outliers import low_outliers  # noqa: E402


def _forest_with_artefacts(seed=0):
    """Ground on a gentle slope, a 25-35 m forest whose crowns hold 85% of the returns (the cells' medians and
    quartiles are up there), and 40 isolated returns 15-60 m under the terrain."""
    rng = np.random.default_rng(seed)
    n = 300_000
    x, y = rng.uniform(0, 100, n), rng.uniform(0, 100, n)
    ground = 200 + 0.1 * x
    crown = rng.random(n) < 0.85
    z = ground + np.where(crown, rng.uniform(25, 35, n), 0.0)
    lx, ly = rng.uniform(0, 100, 40), rng.uniform(0, 100, 40)
    low_z = 200 + 0.1 * lx - rng.uniform(15, 60, 40)
    return np.r_[x, lx], np.r_[y, ly], np.r_[z, low_z], np.r_[np.zeros(n, bool), np.ones(40, bool)], crown


def test_low_outliers_are_the_returns_under_the_terrain():
    x, y, z, truth, _ = _forest_with_artefacts()
    found = low_outliers(x, y, z)
    assert np.array_equal(found, truth)


def test_no_outliers_on_flat_ground_or_in_empty_input():
    rng = np.random.default_rng(1)
    x, y = rng.uniform(0, 50, 5000), rng.uniform(0, 50, 5000)
    assert not low_outliers(x, y, 0.05 * rng.standard_normal(5000)).any()
    assert low_outliers(np.zeros(0), np.zeros(0), np.zeros(0)).size == 0


def _model(tmp_path, codes):
    config = {"features": ["hag", "intensity", "first", "last", "returns", "dz"], "classes": codes,
              "voxel_size": 1.0, "tile_size": 24.0, "overlap": 4.0, "channels": [8, 16, 16], "hidden": 8}
    path = tmp_path / f"m{len(codes)}.pt"
    save_checkpoint({"format": FORMAT, "config": config, "model": build_model(config).state_dict()}, path)
    return load_checkpoint(str(path))[:2]


def test_classify_labels_low_outliers_7_and_keeps_them_out_of_the_windows(tmp_path):
    tile = generate_tile(21, size_m=70.0, density=3.0)
    src = tmp_path / "t.laz"
    write_tile_las(tile, src)
    las = laspy.read(src)
    n = len(las.points)
    # 30 artefacts 30-50 m under ground points of the tile (copies of their records: every field valid)
    rng = np.random.default_rng(2)
    pick = rng.choice(np.flatnonzero(np.asarray(las.classification) == 2), 30, replace=False)
    both = laspy.LasData(las.header)
    both.points = las.points[np.r_[np.arange(n), pick]]
    both.z = np.r_[np.asarray(las.z), np.asarray(las.z)[pick] - rng.uniform(30, 50, 30)]
    src2 = tmp_path / "t_low.laz"
    both.write(src2)
    torch_model = _model(tmp_path, [1, 2, 3, 4, 5, 6, 7, 9, 14, 17])
    torch_model[0].head[2].bias.data[:] = 0
    torch_model[0].head[2].bias.data[1] = 50.0  # every point the network sees is called ground (2)
    classify_file(str(src), str(tmp_path / "a.laz"), *torch_model, progress=False)
    classify_file(str(src2), str(tmp_path / "b.laz"), *torch_model, progress=False)
    a = np.asarray(laspy.read(tmp_path / "a.laz").classification)
    b = np.asarray(laspy.read(tmp_path / "b.laz").classification)
    assert set(b[n:].tolist()) == {7}  # the artefacts, without a window
    assert np.array_equal(b[:n], a)  # the tile's own points as without them
    own_low = low_outliers(np.asarray(las.x), np.asarray(las.y), np.asarray(las.z))
    assert np.array_equal(a == 7, own_low) and set(a[~own_low].tolist()) == {2}  # the network saw the rest
    # a model without code 7 sees every point, as it was trained
    no7 = _model(tmp_path, [1, 2, 5, 6])
    no7[0].head[2].bias.data[:] = 0
    no7[0].head[2].bias.data[1] = 50.0
    classify_file(str(src2), str(tmp_path / "c.laz"), *no7, progress=False)
    assert set(np.asarray(laspy.read(tmp_path / "c.laz").classification).tolist()) == {2}
