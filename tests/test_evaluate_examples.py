"""Helpers of the evaluation scripts in examples/ that decide what is scored."""
import importlib.util
import os

import numpy as np
import pytest

from sparseconv.data.airborne import generate_tile, write_tile_las

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "examples", f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_single_return_copy_keeps_first_returns_marked_one_of_one(tmp_path):
    laspy = pytest.importorskip("laspy")
    pytest.importorskip("lazrs")
    ev = _load("evaluate_pretrained")
    tile = generate_tile(5, size_m=40.0, density=6.0, scene="forest")
    assert tile["number_of_returns"].max() > 1
    src, out = tmp_path / "multi.laz", tmp_path / "single.laz"
    write_tile_las(tile, src)
    assert ev.single_return_copy(os.fspath(src), os.fspath(out))
    las = laspy.read(out)
    first = tile["return_number"] == 1
    assert las.header.point_count == int(first.sum())
    assert (np.asarray(las.return_number) == 1).all() and (np.asarray(las.number_of_returns) == 1).all()
    np.testing.assert_array_equal(np.asarray(las.classification), tile["classification"][first])
    np.testing.assert_allclose(np.asarray(las.z), tile["z"][first], atol=0.006)
    # a file that is single-return already gets no copy
    again = tmp_path / "again.laz"
    assert not ev.single_return_copy(os.fspath(out), os.fspath(again))
    assert not again.exists()
