"""io.atomic: an output appears whole or not at all, and no temporary file outlives the write."""
import os

import pytest

from sparseconv.io.atomic import PREFIX, atomic_output


def _listing(folder):
    return sorted(os.listdir(folder))


def test_written_whole_then_renamed(tmp_path):
    dst = tmp_path / "out.pt"
    with atomic_output(str(dst)) as tmp:
        assert os.path.basename(tmp).startswith(PREFIX) and tmp.endswith(".pt")
        assert os.path.dirname(tmp) == str(tmp_path)  # beside dst: the rename stays on one filesystem
        assert os.path.exists(tmp) and not dst.exists()  # created when the block starts, dst only at its end
        with open(tmp, "wb") as f:
            f.write(b"new")
    assert dst.read_bytes() == b"new" and _listing(tmp_path) == ["out.pt"]


@pytest.mark.parametrize("error", [ValueError, KeyboardInterrupt, SystemExit])
def test_failure_keeps_the_old_file_and_leaves_no_temporary(tmp_path, error):
    dst = tmp_path / "out.laz"
    dst.write_bytes(b"old")
    with pytest.raises(error):
        with atomic_output(str(dst), suffix=".laz") as tmp:
            with open(tmp, "wb") as f:
                f.write(b"half")
            raise error()
    assert dst.read_bytes() == b"old" and _listing(tmp_path) == ["out.laz"]


def test_names_never_collide(tmp_path):
    dst = str(tmp_path / "a.las")
    with atomic_output(dst) as t1, atomic_output(dst) as t2:
        assert t1 != t2 and os.path.exists(t1) and os.path.exists(t2)
