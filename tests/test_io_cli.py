"""LAS/LAZ streaming I/O and the command line: nothing lost, nothing overwritten, one-line errors."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest

laspy = pytest.importorskip("laspy")

from sparseconv.cli import main  # noqa: E402
from sparseconv.data import lidar_scene  # noqa: E402
from sparseconv.io import LasError, class_histogram, las_info, write_classified  # noqa: E402
from sparseconv.metrics import confusion_matrix, scores  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "las"


def _digest(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture
def scene_las(tmp_path):
    """A generated labelled scene as LAS 1.4, point format 6, with an extra dimension."""
    points, labels = lidar_scene(3000, voxel_size=0.2, seed=3)
    header = laspy.LasHeader(point_format=6, version="1.4")
    header.add_extra_dim(laspy.ExtraBytesParams(name="range", type=np.float32))
    header.scales = [0.001] * 3
    header.offsets = points.min(0)
    las = laspy.LasData(header)
    las.x, las.y, las.z = points[:, 0], points[:, 1], points[:, 2]
    las.classification = labels.astype(np.uint8)
    las.intensity = np.arange(len(points), dtype=np.uint16)
    las["range"] = np.hypot(points[:, 0], points[:, 1]).astype(np.float32)
    path = tmp_path / "scene.las"
    las.write(path)
    return path, labels


@pytest.mark.parametrize("suffix", [".las", ".laz"])
def test_write_classified_keeps_everything_else(scene_las, tmp_path, suffix):
    src, labels = scene_las
    before = _digest(src)
    out = tmp_path / f"out{suffix}"
    codes = (np.asarray(labels) % 7).astype(np.int64)
    offset = [0]

    def classify(points):
        c = codes[offset[0]:offset[0] + len(points)]
        offset[0] += len(points)
        return c

    hist = write_classified(str(src), str(out), classify, chunk_size=777)  # several chunks
    assert _digest(src) == before, "the input must not change"
    a, b = laspy.read(src), laspy.read(out)
    assert len(a.points) == len(b.points)
    for name in a.point_format.dimension_names:
        same = np.array_equal(np.asarray(a[name]), np.asarray(b[name]))
        assert same == (name != "classification") or np.array_equal(codes, labels), name
    assert np.array_equal(np.asarray(b.classification), codes)
    assert hist == {int(c): int(n) for c, n in zip(*np.unique(codes, return_counts=True))}
    assert b.header.version == a.header.version and b.header.point_format.id == 6
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".sparseconv-")], "temporary file left behind"


def test_existing_output_is_kept_and_errors_are_clear(scene_las, tmp_path):
    src, _ = scene_las
    out = tmp_path / "out.las"
    out.write_bytes(b"precious")
    with pytest.raises(LasError, match="exists"):
        write_classified(str(src), str(out), lambda p: np.zeros(len(p), int))
    assert out.read_bytes() == b"precious"
    with pytest.raises(LasError, match="input"):
        write_classified(str(src), str(src), lambda p: np.zeros(len(p), int), overwrite=True)
    with pytest.raises(LasError, match="class codes"):
        write_classified(str(src), str(out), lambda p: np.full(len(p), 300), overwrite=True)
    assert out.read_bytes() == b"precious", "a failed write must not touch the existing output"
    write_classified(str(src), str(out), lambda p: np.ones(len(p), int), overwrite=True)
    assert class_histogram(str(out)) == {1: las_info(str(src))["points"]}


def test_bad_files_give_one_line_errors(scene_las, tmp_path, capsys):
    src, _ = scene_las
    truncated = tmp_path / "truncated.las"
    truncated.write_bytes(Path(src).read_bytes()[:5000])
    garbage = tmp_path / "garbage.laz"
    garbage.write_bytes(b"not a las file at all" * 10)
    empty = tmp_path / "empty.las"
    laspy.LasData(laspy.LasHeader(point_format=3, version="1.2")).write(empty)
    for path in (truncated, garbage, empty, tmp_path / "missing.las"):
        assert main(["info", str(path)]) == 1
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and str(path) in err and "Traceback" not in err


def test_info_and_evaluate_commands(scene_las, tmp_path, capsys):
    src, labels = scene_las
    assert main(["info", str(src)]) == 0
    out = capsys.readouterr().out
    assert f"{len(labels):,} points" in out and "point format 6" in out and "range" in out
    pred = tmp_path / "pred.las"
    flip = np.asarray(labels).copy()
    flip[:100] = 1
    write_classified(str(src), str(pred), lambda p: flip[: len(p)] if len(p) == len(flip) else None)
    png = tmp_path / "confusion.png"
    assert main(["evaluate", str(pred), "--reference", str(src), "--png", str(png)]) == 0
    out = capsys.readouterr().out
    cm = confusion_matrix(labels, flip, sorted(set(labels.tolist()) | {1}))
    assert f"overall accuracy: {scores(cm)['overall_accuracy']:.4f}" in out
    assert png.stat().st_size > 0
    # --ignore leaves out reference codes; predicting an ignored code (1 here) still counts as an error.
    ref = np.asarray(labels)
    wrong = ref.copy()
    wrong[np.flatnonzero(ref != 1)[:100]] = 1
    pred2 = tmp_path / "pred2.las"
    write_classified(str(src), str(pred2), lambda p: wrong[: len(p)] if len(p) == len(wrong) else None)
    assert main(["evaluate", str(pred2), "--reference", str(src), "--ignore", "1"]) == 0
    out = capsys.readouterr().out
    scored = ref != 1
    expected = np.mean(wrong[scored] == ref[scored])
    assert expected < 1.0 and f"overall accuracy: {expected:.4f}" in out


def test_scores_against_hand_computed():
    cm = confusion_matrix([1, 1, 2, 2, 2, 5], [1, 2, 2, 2, 5, 5], [1, 2, 5])
    assert cm.tolist() == [[1, 1, 0], [0, 2, 1], [0, 0, 1]]
    s = scores(cm)
    assert s["overall_accuracy"] == pytest.approx(4 / 6)
    assert s["iou"] == pytest.approx([1 / 2, 2 / 4, 1 / 2])
    pe = (1 * 2 + 3 * 3 + 2 * 1) / 36
    assert s["kappa"] == pytest.approx((4 / 6 - pe) / (1 - pe))


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data/las not present (real files are optional)")
def test_real_files_round_trip(tmp_path):
    for name in ("append-bug.laz", "autzen_trim.laz", "simple.laz"):
        src = SHARED / name
        out = tmp_path / name
        write_classified(str(src), str(out), lambda p: np.asarray(p.classification), chunk_size=20_000)
        a, b = laspy.read(src), laspy.read(out)
        assert a.header.point_format.id == b.header.point_format.id and len(a.points) == len(b.points)
        for dim in a.point_format.dimension_names:
            assert np.array_equal(np.asarray(a[dim]), np.asarray(b[dim])), (name, dim)
        assert [type(v).__name__ for v in a.header.vlrs] == [type(v).__name__ for v in b.header.vlrs]
