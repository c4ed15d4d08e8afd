"""`import sparseconv` reaches every public subpackage as an attribute, and pays for none of them (nor for
laspy, matplotlib or Open3D) until one is used. Each check runs in a fresh interpreter: this process has long
imported everything."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("laspy", "lazrs", "matplotlib", "open3d")
SUBPACKAGES = ("data", "distributed", "io", "lidar", "metrics", "models", "spconv")


def _run(code):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_import_is_light():
    loaded = _run(
        "import json, sys, sparseconv\n"
        f"print(json.dumps([m for m in sys.modules if m.split('.')[0] in {HEAVY!r} "
        f"or m in {tuple('sparseconv.' + s for s in SUBPACKAGES)!r}]))"
    )
    assert loaded == []


@pytest.mark.parametrize("attr", ["models.VoxelClassifier", "data.lidar_scene", "io.las_info",
                                  "lidar.PointSegNet", "metrics", "distributed.init", "spconv.SubMConv3d",
                                  "spconv.pytorch.SparseConvTensor"])
def test_subpackage_reachable_as_attribute(attr):
    assert _run(
        "import json, sparseconv\n"
        f"obj = sparseconv\nfor part in {attr!r}.split('.'):\n    obj = getattr(obj, part)\n"
        "print(json.dumps(obj is not None))"
    )


def test_unknown_attribute_still_raises():
    import sparseconv

    with pytest.raises(AttributeError, match="no attribute 'not_a_module'"):
        _ = sparseconv.not_a_module
    assert set(SUBPACKAGES) <= set(dir(sparseconv))


def test_spconv_front_door_never_imports_spconv():
    assert _run(
        "import json, sys\nimport sparseconv.spconv.pytorch as spconv\nspconv.SubMConv3d(4, 16, 3)\n"
        "print(json.dumps([m for m in sys.modules if m.split('.')[0] in ('spconv', 'cumm')]))"
    ) == []
