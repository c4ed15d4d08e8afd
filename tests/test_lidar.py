"""LiDAR classification: features, tiling, streaming classify (nothing lost), the CLI, and a tiny training run."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
import torch

laspy = pytest.importorskip("laspy")

from sparseconv.cli import main  # noqa: E402
from sparseconv.data.airborne import generate_tile, write_tile_las  # noqa: E402
from sparseconv.io import LasError, write_classified  # noqa: E402
from sparseconv.lidar import classify_file, load_checkpoint  # noqa: E402
from sparseconv.lidar.features import height_above_ground, intensity_lut  # noqa: E402
from sparseconv.lidar.model import FORMAT, build_model, save_checkpoint  # noqa: E402
from sparseconv.lidar.windows import window_members  # noqa: E402

CODES = [1, 2, 3, 4, 5, 6, 7, 9, 14, 17]


def _digest(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _model_file(path, channels=(8, 16, 16), seed=0):
    torch.manual_seed(seed)
    config = {"features": ["hag", "intensity", "first", "last", "returns", "dz"], "classes": CODES,
              "voxel_size": 1.0, "tile_size": 24.0, "overlap": 4.0, "channels": list(channels), "hidden": 8}
    save_checkpoint({"format": FORMAT, "config": config, "model": build_model(config).state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def tile_las(tmp_path_factory):
    """A generated 60 m tile as LAS 1.4 pf 6 with an extra-bytes dimension and a CRS VLR."""
    folder = tmp_path_factory.mktemp("tile")
    tile = generate_tile(5, size_m=60.0, density=4.0)
    plain = folder / "plain.las"
    write_tile_las(tile, plain)
    las = laspy.read(plain)
    las.add_extra_dim(laspy.ExtraBytesParams(name="reflectance", type=np.float32))
    las["reflectance"] = np.linspace(-3, 3, len(las.points)).astype(np.float32)
    las.header.vlrs.append(laspy.vlrs.known.WktCoordinateSystemVlr('PROJCS["RGF93 / Lambert-93"]'))
    las.header.vlrs.append(laspy.VLR(user_id="sparseconv", record_id=7, description="test", record_data=b"keep"))
    path = folder / "tile.las"
    las.write(path)
    return path, tile


def test_height_above_ground_on_flat_ground_and_a_box():
    rng = np.random.default_rng(0)
    x, y = rng.uniform(0, 80, 40_000), rng.uniform(0, 80, 40_000)
    ground = 100 + 0.05 * x  # a gentle slope
    roof = (np.abs(x - 40) < 8) & (np.abs(y - 40) < 8)
    z = ground + np.where(roof, 6.0, 0.0)
    hag = height_above_ground(x, y, z)
    assert np.median(np.abs(hag[~roof])) < 0.2
    assert np.median(hag[roof]) == pytest.approx(6.0, abs=0.5)


def test_height_above_ground_on_a_mountain_flank():
    """A 12 m strip up a flank that climbs 250 m in 500 m, up to 39 degrees, with convex and concave stretches
    (as on a real IGN tile) and trees on it: a fixed slope allowance called up to 16 m of this terrain object."""
    rng = np.random.default_rng(3)
    n = 24_000
    x, y = rng.uniform(0, 12, n), rng.uniform(0, 500, n)
    ground = 100 + 0.5 * y + 12 * np.sin(y / 40.0) + 0.1 * x
    tree = rng.random(n) < 0.2
    z = ground + np.where(tree, rng.uniform(3, 15, n), 0.0)
    hag = height_above_ground(x, y, z)
    assert np.quantile(hag[~tree], 0.99) < 0.5  # 15.8 m with the fixed allowance
    assert np.mean(np.abs(hag[~tree]) < 0.3) > 0.93
    assert np.mean(hag[tree] > 2.0) > 0.99


def test_height_above_ground_on_a_steep_plane_is_not_biased():
    """The lowest point of a cell lies at its downhill edge; the surface must still pass through the points."""
    rng = np.random.default_rng(4)
    x, y = rng.uniform(0, 100, 10_000), rng.uniform(0, 100, 10_000)
    z = 50 + 0.7 * x - 0.3 * y
    hag = height_above_ground(x, y, z)
    assert abs(float(np.median(hag))) < 0.05
    assert np.quantile(np.abs(hag), 0.9) < 0.25


def test_intensity_ranks_are_file_relative():
    lut = intensity_lut(np.bincount([10, 10, 20, 30], minlength=65536))
    assert lut[10] < lut[20] < lut[30] and 0 < lut[10] and lut[30] < 1
    assert lut[20] == pytest.approx(0.625)


def test_window_members_against_brute_force():
    rng = np.random.default_rng(1)
    x, y = rng.uniform(0, 100, 3000), rng.uniform(0, 70, 3000)
    tile, overlap, nx, ny = 20.0, 3.0, 5, 4
    rows, ids = window_members(x, y, 0.0, 0.0, tile, overlap, nx, ny)
    got = set(zip(rows.tolist(), ids.tolist()))
    want = set()
    for p in range(x.size):
        for i in range(nx):
            for j in range(ny):
                if (i * tile - overlap <= x[p] < (i + 1) * tile + overlap) and \
                        (j * tile - overlap <= y[p] < (j + 1) * tile + overlap):
                    want.add((p, i * ny + j))
    assert got == want
    assert np.all(np.diff(ids) >= 0)


@pytest.mark.parametrize("suffix", [".las", ".laz"])
def test_classify_keeps_every_dimension_and_vlr(tile_las, tmp_path, suffix):
    src, _ = tile_las
    before = _digest(src)
    model, config, _ = load_checkpoint(_model_file(tmp_path / "m.pt"))
    out = tmp_path / f"out{suffix}"
    # Small chunks and blocks: several read chunks, several spill blocks, several batches.
    r = classify_file(str(src), str(out), model, config, progress=False, chunk_size=3000, block_points=5000,
                      batch_points=4000, tile_size=None)
    assert _digest(src) == before
    a, b = laspy.read(src), laspy.read(out)
    assert r["points"] == len(a.points) == len(b.points)
    for name in a.point_format.dimension_names:
        if name != "classification":
            assert np.array_equal(np.asarray(a[name]), np.asarray(b[name])), name
    assert set(np.unique(b.classification).tolist()) <= set(CODES)
    assert sum(r["classes"].values()) == len(a.points)
    # VLRs bit for bit, except the extra-bytes descriptor whose min/max statistics laspy refreshes on write.
    def vlrs(las):
        return [(v.user_id, v.record_id, v.record_id == 4 or bytes(v.record_data_bytes())) for v in las.header.vlrs]

    assert vlrs(a) == vlrs(b) and len(vlrs(a)) == 3
    assert list(a.point_format.extra_dimension_names) == list(b.point_format.extra_dimension_names) == ["reflectance"]
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".sparseconv-")]


def test_flat_field_and_narrow_strip(tmp_path):
    """A flat field (one voxel high) and a 2 m wide edge strip still pass the U-Net's stride-2 levels."""
    rng = np.random.default_rng(0)
    n = 20_000
    x = np.concatenate([rng.uniform(0, 200, n), rng.uniform(200, 202, 500)])
    y = rng.uniform(0, 200, x.size)
    header = laspy.LasHeader(point_format=6, version="1.4")
    header.scales, header.offsets = [0.01] * 3, [0, 0, 0]
    las = laspy.LasData(header)
    las.x, las.y, las.z = x, y, 50 + rng.normal(0, 0.02, x.size)
    las.return_number = las.number_of_returns = np.ones(x.size, np.uint8)
    src = tmp_path / "flat.las"
    las.write(src)
    model, config, _ = load_checkpoint(_model_file(tmp_path / "m5.pt", channels=(8, 8, 8, 8, 8)))
    r = classify_file(str(src), str(tmp_path / "out.las"), model, config, progress=False, tile_size=None)
    assert r["points"] == x.size


def test_failure_mid_write_leaves_nothing(tile_las, tmp_path):
    src, _ = tile_las
    before = _digest(src)
    out = tmp_path / "out.laz"
    calls = [0]

    def classify(points):
        calls[0] += 1
        if calls[0] == 3:
            raise RuntimeError("disk full")
        return np.full(len(points), 2)

    with pytest.raises(RuntimeError):
        write_classified(str(src), str(out), classify, chunk_size=2000)
    assert calls[0] == 3 and not out.exists() and os.listdir(tmp_path) == []
    assert _digest(src) == before


def test_cli_classify_bad_inputs(tile_las, tmp_path, capsys):
    src, _ = tile_las
    model = str(_model_file(tmp_path / "m.pt"))
    truncated = tmp_path / "truncated.las"
    truncated.write_bytes(Path(src).read_bytes()[:20_000])
    garbage = tmp_path / "garbage.laz"
    garbage.write_bytes(b"definitely not LAS" * 50)
    empty = tmp_path / "empty.las"
    laspy.LasData(laspy.LasHeader(point_format=6, version="1.4")).write(empty)
    text = tmp_path / "points.txt"
    text.write_text("1 2 3\n")
    for bad in (truncated, garbage, empty, text, tmp_path / "missing.laz"):
        out = tmp_path / "out.laz"
        assert main(["classify", str(bad), "-o", str(out), "--model", model, "--quiet"]) == 1
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and str(bad) in err and "Traceback" not in err, err
        assert not out.exists()
    assert main(["classify", str(src), "-o", str(tmp_path / "x.laz"), "--model", str(text)]) == 1
    assert "model" in capsys.readouterr().err


def test_cli_classify_does_not_overwrite(tile_las, tmp_path, capsys):
    src, _ = tile_las
    model = str(_model_file(tmp_path / "m.pt"))
    out = tmp_path / "out.laz"
    out.write_bytes(b"precious")
    assert main(["classify", str(src), "-o", str(out), "--model", model, "--quiet"]) == 1
    assert "exists" in capsys.readouterr().err and out.read_bytes() == b"precious"
    assert main(["classify", str(src), "-o", str(out), "--model", model, "--quiet", "--overwrite", "--png"]) == 0
    printed = capsys.readouterr().out
    assert "points/s" in printed and laspy.read(out).header.point_count > 0
    assert (tmp_path / "out.png").stat().st_size > 0


def test_train_classify_evaluate_beats_majority(tmp_path, capsys):
    """A tiny run on generated tiles: the held-out tile's accuracy beats predicting the majority class by at
    least 10 points (ground, vegetation and buildings are separable from height above ground and returns)."""
    data = tmp_path / "data"
    assert main(["generate", str(data), "--tiles", "5", "--size", "60", "--density", "4", "--seed", "3",
                 "--scene", "suburban", "--quiet"]) == 0
    held_out = tmp_path / "held_out.laz"
    write_tile_las(generate_tile(99, size_m=60.0, density=4.0, scene="suburban"), held_out)
    model = tmp_path / "model.pt"
    assert main(["train", str(data), "-o", str(model), "--epochs", "6", "--channels", "8,16,32",
                 "--tile-size", "32", "--overlap", "4", "--val-fraction", "0.2", "--lr", "5e-3", "--quiet"]) == 0
    assert (tmp_path / "model_curves.png").stat().st_size > 0
    ckpt = torch.load(model, weights_only=True)
    assert ckpt["epoch"] == 6 and len(ckpt["history"]) == 6
    out = tmp_path / "pred.laz"
    assert main(["classify", str(held_out), "-o", str(out), "--model", str(model), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(out), "--reference", str(held_out)]) == 0
    printed = capsys.readouterr().out
    acc = float(printed.split("overall accuracy:")[1].split()[0])
    ref = np.asarray(laspy.read(held_out).classification)
    majority = np.bincount(ref).max() / ref.size
    assert acc >= majority + 0.10, (acc, majority)


def test_train_resume_and_init(tmp_path, capsys):
    data = tmp_path / "data"
    assert main(["generate", str(data), "--tiles", "2", "--size", "40", "--density", "3", "--quiet"]) == 0
    model = tmp_path / "m.pt"
    common = ["--channels", "8,16", "--tile-size", "24", "--overlap", "4", "--quiet"]
    assert main(["train", str(data), "-o", str(model), "--epochs", "1", *common]) == 0
    assert main(["train", str(data), "-o", str(model), "--epochs", "1", *common]) == 1  # exists
    assert "--resume" in capsys.readouterr().err
    assert main(["train", str(data), "-o", str(model), "--epochs", "2", "--resume", *common]) == 0
    assert torch.load(model, weights_only=True)["epoch"] == 2
    tuned = tmp_path / "tuned.pt"
    assert main(["train", str(data), "-o", str(tuned), "--epochs", "1", "--init", str(model),
                 "--classes", "2,6", "--quiet"]) == 0
    _, config, _ = load_checkpoint(str(tuned))
    assert config["classes"] == [2, 6] and config["channels"] == [8, 16]


def test_write_classified_refuses_input_as_output(tile_las):
    src, _ = tile_las
    with pytest.raises(LasError, match="input"):
        write_classified(str(src), str(src), lambda p: np.zeros(len(p), int), overwrite=True)


def test_cli_classifies_open3d_formats(tmp_path, capsys):
    o3d = pytest.importorskip("open3d", exc_type=ImportError)
    rng = np.random.default_rng(0)
    xyz = np.concatenate([np.c_[rng.uniform(0, 30, (3000, 2)), rng.normal(0, 0.05, 3000)],
                          np.c_[rng.uniform(10, 16, (500, 2)), rng.uniform(4, 5, 500)]])
    cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(xyz))
    model = str(_model_file(tmp_path / "m.pt"))
    for suffix in (".ply", ".pcd", ".xyz", ".pts"):
        src = tmp_path / f"cloud{suffix}"
        o3d.io.write_point_cloud(str(src), cloud)
        assert main(["classify", str(src), "-o", str(tmp_path / "out"), "--model", model, "--quiet"]) == 0
        out = laspy.read(tmp_path / "out" / "cloud.laz")
        assert len(out.points) == len(xyz)
        np.testing.assert_allclose(np.c_[out.x, out.y, out.z], xyz, atol=1e-3)
        (tmp_path / "out" / "cloud.laz").unlink()
    bad = tmp_path / "bad.ply"
    bad.write_text("garbage")
    assert main(["classify", str(bad), "-o", str(tmp_path / "o.laz"), "--model", model]) == 1
    assert "bad.ply" in capsys.readouterr().err


def test_topdown_raster_takes_the_highest_point_and_fills_gaps():
    from sparseconv.lidar.curves import topdown_raster

    # Two points in one pixel (the higher one's class wins whatever the order) and one far away.
    x = np.array([0.0, 0.01, 10.0])
    y = np.array([0.0, 0.01, 10.0])
    z = np.array([5.0, 1.0, 0.0])
    img, extent = topdown_raster(x, y, np.array([6, 2, 9]), z, max_pixels=100, fill=0)
    assert img[0, 0] == 6 and img[-1, -1] == 9
    assert (img >= 0).sum() == 2 and extent[0] == 0.0 and extent[2] == 0.0
    filled, _ = topdown_raster(x, y, np.array([6, 2, 9]), z, max_pixels=100, fill=2)
    assert (filled == 6).sum() == 6  # the corner pixel grown by 2 diamond steps, clipped at the border


def test_clustered_points_run_in_bounded_parts(tmp_path):
    """Two dense patches at opposite corners of a 1.5 km box: the plan from the box's mean density puts each
    patch in one oversized block, which then runs as parts of a few tiles (memory bounded by the densest
    tile, not the patch). Every point is labelled, and the labels agree with a run without parts."""
    rng = np.random.default_rng(1)
    n = 12_000
    x = np.concatenate([rng.uniform(0, 60, n), rng.uniform(1440, 1500, n)])
    y = np.concatenate([rng.uniform(0, 60, n), rng.uniform(1440, 1500, n)])
    z = 50 + 0.05 * x + rng.normal(0, 0.05, x.size) + np.where(rng.random(x.size) < 0.2, 8.0, 0.0)
    header = laspy.LasHeader(point_format=6, version="1.4")
    header.scales, header.offsets = [0.01] * 3, [0, 0, 0]
    las = laspy.LasData(header)
    las.x, las.y, las.z = x, y, z
    las.return_number = las.number_of_returns = np.ones(x.size, np.uint8)
    src = tmp_path / "clustered.las"
    las.write(src)
    model, config, _ = load_checkpoint(_model_file(tmp_path / "m.pt"))  # 24 m tiles, 4 m overlap
    whole = classify_file(str(src), str(tmp_path / "whole.las"), model, config, progress=False, tile_size=None)
    # By default one block covers the box. block_points 3,000: blocks of 528 m, one per patch (12,000 points);
    # the densest 24 m tile holds ~2,000 points, so parts of one tile each.
    parted = classify_file(str(src), str(tmp_path / "parted.las"), model, config, progress=False, tile_size=None,
                           block_points=3_000)
    assert whole["parts"] == 1 and parted["parts"] >= 2 * 9  # a 60 m patch spans 3 x 3 tiles of 24 m
    a = np.asarray(laspy.read(tmp_path / "whole.las").classification)
    b = np.asarray(laspy.read(tmp_path / "parted.las").classification)
    assert np.isin(b, CODES).all()  # every point labelled by the model (nothing left at 0)
    # Parts see the same windows; only the ground estimate's context is cut at part borders.
    assert (a == b).mean() > 0.98, (a == b).mean()  # 0.998 when written
