"""setup.py's guard for `pip install --no-build-isolation .` with a setuptools too old for pyproject.toml's PEP 639
license string: it must stop with what to do, not setuptools' schema error. (Checked by hand in a throwaway venv
with setuptools 65.5.0 and 76.1.0: pip prints exactly this message.)"""
import importlib.util
from pathlib import Path

import pytest

SETUP_PY = Path(__file__).resolve().parents[1] / "setup.py"


@pytest.fixture(scope="module")
def setup_module():
    spec = importlib.util.spec_from_file_location("sparseconv_setup", SETUP_PY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # not __main__: setup() does not run
    return module


@pytest.mark.parametrize("version", ["65.5.0", "76.1.0", "70.0.0.post1"])
def test_old_setuptools_stops_with_the_fix(setup_module, version):
    with pytest.raises(SystemExit, match=rf'setuptools {version}\..*pip install "setuptools>=77"'):
        setup_module.check_setuptools(version)


@pytest.mark.parametrize("version", ["77.0.3", "84.2.1", "100.0"])
def test_new_setuptools_passes(setup_module, version):
    assert setup_module.check_setuptools(version) is None


def test_pyproject_asks_for_the_same_minimum(setup_module):
    text = (SETUP_PY.parent / "pyproject.toml").read_text()
    assert f'"setuptools>={setup_module.MIN_SETUPTOOLS}"' in text
