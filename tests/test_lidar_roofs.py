"""The roof check (sparseconv.lidar.roofs): planar roofs keep their building label, rough crowns lose it."""
from collections import deque

import numpy as np
import pytest
import torch

from sparseconv.lidar.decide import decide
from sparseconv.lidar.roofs import MIN_JUDGED, ROUGH_MAX, cell_roughness, patches, rough_patches


def _gabled(rng, x0, y0, density, noise=0.02, w=10.0, d=12.0, pitch=35.0, eave=6.0):
    n = int(w * d * density)
    x, y = rng.uniform(0, w, n), rng.uniform(0, d, n)
    z = eave + np.tan(np.radians(pitch)) * (w / 2 - np.abs(x - w / 2)) + rng.normal(0, noise, n)
    return x + x0, y + y0, z


def _crown(rng, x0, y0, density, r=7.0, h=5.0, base=6.0):
    """A dense broadleaf dome seen by a single-return sensor: the first surface hit, scattered in depth."""
    n = int(np.pi * r * r * density)
    a, q = rng.uniform(0, 2 * np.pi, n), r * np.sqrt(rng.uniform(0, 1, n))
    x, y = q * np.cos(a), q * np.sin(a)
    top = base + h * np.sqrt(np.clip(1 - (q / r) ** 2, 0, 1))
    return x + x0, y + y0, top - rng.exponential(0.25, n)


def _scene(density, seed=0):
    rng = np.random.default_rng(seed)
    roof, crown = _gabled(rng, 0.0, 0.0, density), _crown(rng, 30.0, 6.0, density)
    xyz = tuple(np.concatenate([a, b]) for a, b in zip(roof, crown))
    return xyz, roof[0].size


def test_patches_match_a_breadth_first_search():
    rng = np.random.default_rng(1)
    x, y, z = rng.uniform(0, 20, 500), rng.uniform(0, 20, 500), rng.uniform(0, 4, 500)
    ids, n = patches(x, y, z)
    cells = {}
    key = zip(*(np.floor(a - a.min()).astype(int) for a in (x, y, z)))  # its grid
    for i, k in enumerate(key):
        cells.setdefault(k, []).append(i)
    ref, seen = np.full(x.size, -1), set()
    steps = [(dx, dy, dz) for dx in (-1, 0, 1) for dy in (-1, 0, 1) for dz in (-1, 0, 1)]
    for start in cells:  # the reference: 26-connected cells, one breadth-first search per component
        if start in seen:
            continue
        seen.add(start)
        queue, comp = deque([start]), int(ref.max()) + 1
        while queue:
            c = queue.popleft()
            ref[cells[c]] = comp
            for d in steps:
                nb = (c[0] + d[0], c[1] + d[1], c[2] + d[2])
                if nb in cells and nb not in seen:
                    seen.add(nb)
                    queue.append(nb)
    assert n == ref.max() + 1 and 5 < n < 400
    # same partition: the pairs (ours, reference) are one-to-one
    assert len(set(zip(ids.tolist(), ref.tolist()))) == n


def test_a_long_winding_patch_is_one():
    # a serpentine 1 m wide path of 1,239 cells: every cell must end under one root
    rows = [np.stack([np.arange(30) + 0.5, np.full(30, 2.0 * r + 0.5)], 1) for r in range(40)]
    links = [np.array([[29.5 if r % 2 == 0 else 0.5, 2.0 * r + 1.5]]) for r in range(39)]
    xy = np.concatenate(rows + links)[::-1].copy()
    ids, n = patches(xy[:, 0], xy[:, 1], np.zeros(len(xy)))
    assert n == 1 and (ids == 0).all()
    ids, n = patches(xy[:, 0], xy[:, 1], (xy[:, 1] > 40) * 3.0)  # cut in two where it steps up 3 m
    assert n == 2
    rows = np.concatenate(rows)  # without the links: 40 rows, an empty row of cells between each two
    ids, n = patches(rows[:, 0], rows[:, 1], np.zeros(len(rows)))
    assert n == 40 and (np.unique(ids[rows[:, 1].argsort()].reshape(40, 30), axis=1).shape[1] == 1)


def test_roughness_of_a_plane_is_its_noise_and_sparse_cells_have_none():
    rng = np.random.default_rng(2)
    n = 4000
    x, y = rng.uniform(0, 20, n), rng.uniform(0, 20, n)
    z = 0.3 * x + 0.1 * y + rng.normal(0, 0.02, n)
    r = cell_roughness(x, y, z)
    assert np.isfinite(r).mean() > 0.95
    assert 0.01 < np.median(r[np.isfinite(r)]) < 0.025
    few = cell_roughness(np.array([0.1, 0.5, 0.9]), np.array([0.2, 0.4, 0.6]), np.array([0.0, 0.1, 0.3]))
    assert np.isinf(few).all()


def test_a_crown_is_rough_and_a_gabled_roof_with_its_ridge_is_not():
    (x, y, z), n_roof = _scene(density=10.0)
    bad = rough_patches(x, y, z)
    assert not bad[:n_roof].any()
    assert bad[n_roof:].all()
    r = cell_roughness(x, y, z)
    assert np.median(r[:n_roof][np.isfinite(r[:n_roof])]) < ROUGH_MAX / 2
    assert np.median(r[n_roof:][np.isfinite(r[n_roof:])]) > ROUGH_MAX


def test_a_roof_joined_by_a_larger_crown_keeps_its_smooth_part():
    rng = np.random.default_rng(3)
    roof = _gabled(rng, 0.0, 0.0, 10.0)
    crown = _crown(rng, 15.0, 6.0, 10.0, r=9.0, h=6.0, base=5.0)
    under = (roof[0] - 15.0) ** 2 + (roof[1] - 6.0) ** 2 < 81.0  # hidden under the crown from above
    roof = tuple(a[~under] for a in roof)
    x, y, z = (np.concatenate([a, b]) for a, b in zip(roof, crown))
    n_roof = roof[0].size
    ids, _ = patches(x, y, z)
    assert np.bincount(ids).max() > 0.9 * x.size  # one patch: the crown reaches down to the eave
    bad = rough_patches(x, y, z)
    assert bad[n_roof:].mean() > 0.9
    assert bad[:n_roof].mean() < 0.1


def test_the_median_decides_a_mixed_patch():
    # a smaller crown joined to a flat roof: most of the patch is planar, so none of it is relabelled (a
    # rougher statistic than the median, e.g. a high percentile, would take the roof with the crown)
    rng = np.random.default_rng(4)
    n = 2400
    roof = (rng.uniform(0, 20, n), rng.uniform(0, 15, n), 6.0 + rng.normal(0, 0.02, n))
    crown = _crown(rng, 25.5, 7.5, 10.0, r=7.0, h=4.0, base=5.5)
    x, y, z = (np.concatenate([a, b]) for a, b in zip(roof, crown))
    assert np.bincount(patches(x, y, z)[0]).max() == x.size
    assert 0.35 < crown[0].size / x.size < 0.45  # its 75th percentile lies in the crown
    assert not rough_patches(x, y, z).any()


def test_a_noisy_roof_is_still_a_roof_and_a_small_crown_is_not():
    rng = np.random.default_rng(5)
    x, y, z = _gabled(rng, 0.0, 0.0, 10.0, noise=0.08)  # 8 cm of ranging noise: a median of about 0.055 m
    assert not rough_patches(x, y, z).any()
    x, y, z = _crown(rng, 0.0, 0.0, 10.0, r=2.5, h=2.0)  # about 200 points
    assert rough_patches(x, y, z).all()


def test_a_patch_with_too_few_judged_points_keeps_its_label():
    rng = np.random.default_rng(6)
    n = MIN_JUDGED - 1
    x, y, z = rng.uniform(0.2, 1.8, n), rng.uniform(0.2, 1.8, n), rng.uniform(6.0, 7.5, n)  # one rough cell
    assert np.isfinite(cell_roughness(x, y, z)).all() and np.median(cell_roughness(x, y, z)) > ROUGH_MAX
    assert not rough_patches(x, y, z).any()
    more = rng.uniform(0.2, 1.8, (2, 3))
    x, y, z = np.concatenate([x, more[0]]), np.concatenate([y, more[1]]), np.concatenate([z, rng.uniform(6, 7.5, 3)])
    assert rough_patches(x, y, z).all()  # MIN_JUDGED + 2 judged points: judged, and rough


def test_too_sparse_to_judge_keeps_the_label():
    (x, y, z), _ = _scene(density=0.4)
    assert np.isinf(cell_roughness(x, y, z)).mean() > 0.9
    assert not rough_patches(x, y, z).any()
    assert rough_patches(x[:0], y[:0], z[:0]).size == 0


@pytest.mark.parametrize("veg_best", [3, 5])
def test_decide_gives_a_rough_building_patch_its_best_vegetation_class(veg_best):
    (x, y, z), n_roof = _scene(density=10.0)
    codes = [1, 2, 3, 4, 5, 6, 9]
    score = torch.zeros(x.size, len(codes))
    score[:, codes.index(6)] = 0.6
    score[:, codes.index(veg_best)] = 0.3
    score[:, codes.index(4)] = 0.1
    out = decide(score, codes, xyz=(x, y, z))
    assert (out[:n_roof] == 6).all()
    assert (out[n_roof:] == veg_best).all()
    assert (decide(score, codes) == 6).all()  # without coordinates: the network's labels
    assert (decide(score[:, [0, 1, 5]], [1, 2, 6], xyz=(x, y, z)) == 6).all()  # no vegetation class to give


def test_classify_checks_roofs_unless_asked_not_to(tmp_path):
    """End to end, with a model that calls every point building (vegetation second): the crown comes out
    vegetation, the roof building; --no-roof-check / roof_check=False give the network's labels."""
    pytest.importorskip("laspy")
    import laspy

    from sparseconv.cli import main
    from sparseconv.data.airborne import write_tile_las
    from sparseconv.lidar import classify_file
    from sparseconv.lidar.model import FORMAT, build_model, save_checkpoint

    (x, y, z), n_roof = _scene(density=10.0)
    n = x.size
    one = np.ones(n, np.uint8)
    src = tmp_path / "scene.laz"
    tile = {"x": x, "y": y, "z": z, "intensity": np.full(n, 500), "return_number": one, "number_of_returns": one,
            "classification": one, "scan_angle": np.zeros(n), "gps_time": np.zeros(n)}
    write_tile_las(tile, src)
    codes = [1, 2, 3, 4, 5, 6, 7, 9]
    config = {"features": ["hag", "intensity", "first", "last", "returns", "dz"], "classes": codes,
              "voxel_size": 1.0, "tile_size": 24.0, "overlap": 4.0, "channels": [8, 16], "hidden": 8}
    model = build_model(config)
    with torch.no_grad():
        last = model.head[2]
        last.weight.zero_()
        last.bias.copy_(torch.tensor([0.0, 0.0, 1.0, 0.0, 2.0, 3.0, 0.0, 0.0]))
    path = tmp_path / "m.pt"
    save_checkpoint({"format": FORMAT, "config": config, "model": model.state_dict()}, path)
    opts = {"progress": False, "tile_size": None, "threads": 1}
    classify_file(str(src), str(tmp_path / "on.laz"), model.eval(), config, **opts)
    classify_file(str(src), str(tmp_path / "off.laz"), model, config, roof_check=False, **opts)
    on = np.asarray(laspy.read(tmp_path / "on.laz").classification)
    off = np.asarray(laspy.read(tmp_path / "off.laz").classification)
    assert (off == 6).all()
    assert (on[:n_roof] == 6).all() and (on[n_roof:] == 5).all()
    for flag, want in (([], on), (["--no-roof-check"], off)):
        out = tmp_path / f"cli{len(flag)}.laz"
        assert main(["classify", str(src), "-o", str(out), "--model", str(path), "--quiet", *flag]) == 0
        assert np.array_equal(np.asarray(laspy.read(out).classification), want)


def test_the_calibration_benchmark_runs(tmp_path):
    """benchmarks/roof_check.py --quick: its four tables and the PNG (it reproduces the README's figures)."""
    pytest.importorskip("laspy")
    pytest.importorskip("matplotlib")
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "roof_check.py"
    done = subprocess.run([sys.executable, str(script), "--quick", "--out", str(tmp_path)], capture_output=True,
                          text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    md = (tmp_path / "roof_check.md").read_text()
    for title in ("## Sweep", "## Stress", "## Added noise", "## Held-out stress"):
        assert title in md
    assert "| 0.08 |" in md and "| none |" in md and "| 20 |" in md
    assert (tmp_path / "roof_check.png").stat().st_size > 1000
