"""Issue 16: shape features, sensor dropout, expanding a model's inputs, the water rule, single-return tiles."""
from __future__ import annotations

import numpy as np
import torch

from sparseconv.data.airborne import generate_tile
from sparseconv.lidar.decide import decide
from sparseconv.lidar.features import (BASE_FEATURES, SHAPE_FEATURES, _sym3_eigen, feature_names,
                                       height_above_ground, intensity_lut, point_features, shape_features)
from sparseconv.lidar.model import build_model
from sparseconv.lidar.train import _FLAT_LUT, expand_inputs, sensor_dropout
from sparseconv.lidar.windows import make_batch

RNG = np.random.default_rng(0)


def _pts(x, y, z):
    return {"x": np.asarray(x, np.float64) + 650000.0, "y": np.asarray(y, np.float64) + 6860000.0,
            "z": np.asarray(z, np.float64) + 120.0}


def test_closed_form_eigen_matches_eigh():
    a = RNG.normal(size=(500, 3, 3))
    a = a @ a.transpose(0, 2, 1)
    l1, l2, l3, nz = _sym3_eigen(a[:, 0, 0], a[:, 0, 1], a[:, 0, 2], a[:, 1, 1], a[:, 1, 2], a[:, 2, 2])
    w, v = np.linalg.eigh(a)
    np.testing.assert_allclose(np.stack([l1, l2, l3], 1), w[:, ::-1], atol=1e-9)
    np.testing.assert_allclose(nz, np.abs(v[:, 2, 0]), atol=1e-7)


def test_roof_wall_and_crown_differ():
    """A tilted roof is planar and smooth (its verticality that of its slope), a wall vertical, a crown
    (points scattered in a volume) scattered and rough: at both scales, in projected coordinates."""
    n = 4000
    x, y = RNG.uniform(0, 20, n), RNG.uniform(0, 20, n)
    roof = shape_features(_pts(x, y, 0.5 * x), SHAPE_FEATURES)
    wall = shape_features(_pts(x, np.full(n, 3.0) + RNG.normal(0, 0.01, n), y * 0.5), SHAPE_FEATURES)
    crown = shape_features(_pts(*RNG.uniform(0, 8, (3, n))), SHAPE_FEATURES)
    slope_ver = 1 - 1 / np.sqrt(1 + 0.5 ** 2)
    for s in (2, 4):
        assert np.median(roof[f"pla{s}"] + roof[f"lin{s}"]) > 0.95 and np.median(roof[f"sca{s}"]) < 1e-3
        assert abs(np.median(roof[f"ver{s}"]) - slope_ver) < 0.02
        assert np.median(roof[f"rough{s}"]) < 0.01
        assert np.median(wall[f"ver{s}"]) > 0.98
        assert np.median(crown[f"sca{s}"]) > 0.3 and np.median(crown[f"rough{s}"]) > 0.3 * s / 2
    # column top / relief: the roof rises 0.5 m per metre, so a 2 m column spans about 1 m, a 4 m one 2 m
    assert abs(np.median(roof["top2"] + roof["relief2"]) - 1.0) < 0.1
    assert abs(np.median(roof["top4"] + roof["relief4"]) - 2.0) < 0.15


def test_sparse_cells_give_zero_and_point_features_match():
    pts = _pts([0.0, 10.0, 20.0], [0.0, 0.0, 0.0], [0.0, 1.0, 2.0])
    f = shape_features(pts, SHAPE_FEATURES)
    assert all(np.all(f[k] == 0) for k in SHAPE_FEATURES if not k.startswith(("top", "relief")))
    # point_features computes them when pts does not carry them, and takes them when it does (classify)
    pts.update(intensity=np.zeros(3, np.uint16), return_number=np.ones(3, np.uint8),
               number_of_returns=np.ones(3, np.uint8))
    names = feature_names(False)
    a = point_features(pts, names, _FLAT_LUT, 255.0, 1.0, np.zeros(3, np.float32))
    carried = {**pts, **{k: v + 1 for k, v in f.items()}}
    b = point_features(carried, names, _FLAT_LUT, 255.0, 1.0, np.zeros(3, np.float32))
    j = names.index("lin2")
    assert np.all(a[:, j] == 0) and np.all(b[:, j] == 1)
    assert list(feature_names(False, shape=False)) == list(BASE_FEATURES)


def test_sensor_dropout_single_return_and_no_intensity():
    tile = generate_tile(2, size_m=40.0, density=6.0, scene="forest")
    pts = {k: tile[k] for k in ("x", "y", "z", "intensity", "return_number", "number_of_returns")}
    target = tile["classification"].astype(np.int64)
    lut = intensity_lut(np.bincount(tile["intensity"], minlength=65536))
    always = dict(single_return=1.0, first_only=1.0, no_intensity=1.0, intensity_gamma=0.0, no_rgb=1.0)
    out, t, lut2 = sensor_dropout(pts, target, lut, np.random.default_rng(0), always)
    first = tile["return_number"] == 1
    assert out["x"].size == t.size == int(first.sum()) < pts["x"].size
    assert np.all(out["return_number"] == 1) and np.all(out["number_of_returns"] == 1)
    assert np.all(lut2 == 0.5)
    never = dict(single_return=0.0, first_only=0.0, no_intensity=0.0, intensity_gamma=0.0, no_rgb=0.0)
    out, t, lut3 = sensor_dropout(pts, target, lut, np.random.default_rng(0), never)
    assert out is pts and lut3 is lut


def test_single_return_tile_is_the_first_returns_of_the_same_scene():
    multi = generate_tile(4, size_m=50.0, density=5.0, scene="forest")
    single = generate_tile(4, size_m=50.0, density=5.0, scene="forest", single_return=True)
    first = multi["return_number"] == 1
    assert np.all(single["return_number"] == 1) and np.all(single["number_of_returns"] == 1)
    np.testing.assert_array_equal(single["x"], multi["x"][first])
    np.testing.assert_array_equal(single["classification"], multi["classification"][first])


def test_expanded_model_computes_what_the_old_one_did():
    old_names, new_names = list(BASE_FEATURES), list(feature_names(False))
    cfg = {"features": old_names, "classes": [2, 5, 6], "channels": [8, 16], "hidden": 8}
    torch.manual_seed(0)
    old = build_model(cfg)
    with torch.no_grad():
        old.norm.mean.uniform_(-1, 1)
        for p in old.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    new = build_model({**cfg, "features": new_names})
    fresh = new.state_dict()
    fresh["norm.mean"].fill_(5.0)
    new.load_state_dict(expand_inputs(fresh, old.state_dict(), old_names, new_names))
    old.eval(), new.eval()
    tile = generate_tile(1, size_m=40.0, density=4.0)
    lut = intensity_lut(np.bincount(tile["intensity"], minlength=65536))
    w = [(tile, height_above_ground(tile["x"], tile["y"], tile["z"]), lut, 255.0)]
    with torch.no_grad():
        a = old(*make_batch(w, old_names, 1.0))
        b = new(*make_batch(w, new_names, 1.0))
    torch.testing.assert_close(a, b)
    assert new.norm.mean[new_names.index("lin2")] == 5.0


def test_uncertain_water_is_left_unclassified():
    codes = [1, 2, 9]
    score = torch.tensor([[0.1, 0.2, 0.7], [0.0, 0.1, 1.8], [0.3, 0.6, 0.1], [0.2, 0.1, 0.7]])
    # rows 2 and 4 are sums over two windows: probabilities are the mean
    assert decide(score, codes).tolist() == [1, 9, 2, 1]
    assert decide(score, codes, water_min_prob=0.6).tolist() == [9, 9, 2, 9]
    assert decide(score[:, 1:], [2, 9]).tolist() == [9, 9, 2, 9]  # no unclassified output: nothing to fall back to


def test_models_without_shape_features_pay_nothing():
    assert shape_features(_pts([0.0, 1.0], [0.0, 1.0], [0.0, 1.0]), list(BASE_FEATURES)) == {}


def test_cli_generate_single_return(tmp_path):
    import laspy

    from sparseconv.cli import main

    assert main(["generate", str(tmp_path), "--tiles", "1", "--size", "30", "--density", "3", "--single-return",
                 "--scene", "forest", "--quiet"]) == 0
    las = laspy.read(next(tmp_path.glob("*.laz")))
    assert len(las.points) > 100
    assert np.all(np.asarray(las.return_number) == 1) and np.all(np.asarray(las.number_of_returns) == 1)
