"""classify on every core: the same output bytes at any thread count, results committed in order, several files
overlapped without losing one, LAZ decoded and encoded in child processes with one-line errors."""
from __future__ import annotations

import hashlib
import os
import re
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

laspy = pytest.importorskip("laspy")

from sparseconv.cli import main  # noqa: E402
from sparseconv.data.airborne import generate_tile, write_tile_las  # noqa: E402
from sparseconv.io import LasError, write_classified  # noqa: E402
from sparseconv.io.raw import Child, Children, Decoder, Encoder  # noqa: E402
from sparseconv.lidar import classify_file, classify_files, load_checkpoint  # noqa: E402
from sparseconv.lidar.model import FORMAT, build_model, save_checkpoint  # noqa: E402
from sparseconv.lidar.runner import OrderedRunner  # noqa: E402

CODES = [1, 2, 3, 4, 5, 6, 7, 9, 14, 17]
# Small chunks, blocks and batches: several of each, so that order matters everywhere.
SMALL = {"chunk_size": 2500, "block_points": 4000, "batch_points": 3000, "tile_size": None, "progress": False}


def _digest(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _codec_children():
    """This process's live children running io/raw.py (Linux /proc)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == os.getpid() and b"raw.py" in cmd:
            found.append(pid)
    return found


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    torch.manual_seed(0)
    config = {"features": ["hag", "intensity", "first", "last", "returns", "dz"], "classes": CODES,
              "voxel_size": 1.0, "tile_size": 24.0, "overlap": 4.0, "channels": [8, 16, 16], "hidden": 8}
    path = tmp_path_factory.mktemp("model") / "m.pt"
    save_checkpoint({"format": FORMAT, "config": config, "model": build_model(config).state_dict()}, path)
    return str(path)


@pytest.fixture(scope="module")
def model(model_file):
    return load_checkpoint(model_file)[:2]


@pytest.fixture(scope="module")
def tiles(tmp_path_factory):
    """Three generated tiles, LAZ, LAS and LAZ with an extra-bytes dimension and a CRS VLR."""
    folder = tmp_path_factory.mktemp("tiles")
    paths = []
    for i, suffix in enumerate((".laz", ".las", ".laz")):
        path = folder / f"tile{i}{suffix}"
        write_tile_las(generate_tile(10 + i, size_m=70.0, density=3.0), path)
        if i == 2:
            las = laspy.read(path)
            las.add_extra_dim(laspy.ExtraBytesParams(name="reflectance", type=np.float32))
            las["reflectance"] = np.linspace(-3, 3, len(las.points)).astype(np.float32)
            las.header.vlrs.append(laspy.vlrs.known.WktCoordinateSystemVlr('PROJCS["RGF93 / Lambert-93"]'))
            las.write(path)
        paths.append(path)
    return paths


@pytest.mark.parametrize("suffix", [".laz", ".las"])
def test_same_bytes_at_any_thread_count(model, tiles, tmp_path, suffix):
    """One thread (everything inline) and 2 or 3 threads (network on worker threads, LAZ in child processes)
    write byte-identical files; the input is untouched and no temporary file is left."""
    src = tiles[2]
    before = _digest(src)
    digests = set()
    for threads in (1, 2, 3):
        out = tmp_path / f"t{threads}{suffix}"
        r = classify_file(str(src), str(out), *model, threads=threads, **SMALL)
        assert r["parts"] >= 2 and r["points"] == laspy.open(out).header.point_count
        digests.add(_digest(out))
    assert len(digests) == 1 and _digest(src) == before
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".sparseconv-")]


@pytest.mark.parametrize("threads", [1, 2])
def test_overlap_points_keep_their_code(model, model_file, tiles, tmp_path, threads):
    """Points the input labels 12 (overlap) come out 12 by default, counted so; every other point gets the label
    it gets when nothing is kept (the network saw them all); keep_classes=() relabels all; codes out of
    [0, 255] are refused naming the argument."""
    las = laspy.read(tiles[0])
    codes = np.asarray(las.classification).copy()
    over = np.zeros(codes.size, bool)
    over[::7] = True
    las.classification = np.where(over, 12, codes).astype(np.uint8)
    src = tmp_path / "overlap.laz"
    las.write(src)
    plain = classify_file(str(src), str(tmp_path / "plain.laz"), *model, threads=threads, keep_classes=(), **SMALL)
    kept = classify_file(str(src), str(tmp_path / "kept.laz"), *model, threads=threads, **SMALL)
    a = np.asarray(laspy.read(tmp_path / "plain.laz").classification)
    b = np.asarray(laspy.read(tmp_path / "kept.laz").classification)
    assert (b[over] == 12).all() and (a[over] != 12).all()
    assert np.array_equal(a[~over], b[~over])
    assert kept["classes"] == {int(c): int(n) for c, n in zip(*np.unique(b, return_counts=True))}
    assert plain["classes"] == {int(c): int(n) for c, n in zip(*np.unique(a, return_counts=True))}
    for bad in ((300,), "12", (12.5,), (-1,)):
        with pytest.raises(ValueError, match=r"keep_classes: expected class codes in \[0, 255\], got "):
            classify_file(str(src), str(tmp_path / "x.laz"), *model, keep_classes=bad, **SMALL)
    assert not (tmp_path / "x.laz").exists()
    for i, (flag, n12) in enumerate(((["--keep-classes", "none"], 0), ([], int(over.sum())),
                                     (["--keep-classes", "7,12"], None))):
        out = tmp_path / f"cli{i}.laz"
        assert main(["classify", str(src), "-o", str(out), "--model", model_file, "--quiet", "--threads",
                     str(threads), *flag]) == 0
        got = np.asarray(laspy.read(out).classification)
        assert (got == 12).sum() == (n12 if n12 is not None else over.sum())


def test_labels_match_a_plain_write_classified(model, tiles, tmp_path):
    """The encoder's file (raw records + labels) has the bytes write_classified gives for the same labels and
    chunks (laspy refreshes the extra-bytes statistics per written chunk, so the chunking shows in the bytes)."""
    src, out = tiles[2], tmp_path / "a.laz"
    classify_file(str(src), str(out), *model, threads=2, **SMALL)
    labels = np.asarray(laspy.read(out).classification)
    done = [0]

    def take(points):
        done[0] += len(points)
        return labels[done[0] - len(points):done[0]]

    write_classified(str(src), str(tmp_path / "b.laz"), take, chunk_size=SMALL["chunk_size"])
    assert _digest(out) == _digest(tmp_path / "b.laz")


def test_several_files_overlapped_equal_one_by_one(model, tiles, tmp_path):
    jobs = [(str(p), str(tmp_path / f"many_{Path(p).name}")) for p in tiles]
    results = list(classify_files(jobs, *model, threads=2, **SMALL))
    assert [(s, d) for s, d, _ in results] == jobs  # in order, each once
    for src, dst, r in results:
        single = tmp_path / f"one_{Path(src).name}"
        one = classify_file(src, str(single), *model, threads=1, **SMALL)
        assert _digest(dst) == _digest(single)
        assert r["classes"] == one["classes"] and r["points"] == one["points"] == sum(r["classes"].values())


def test_a_bad_file_among_several_keeps_the_ones_before(model, tiles, tmp_path):
    """The second of three files is truncated: the first output is complete, the error names the bad file, the
    third is not written, and neither temporary files nor child processes are left."""
    bad = tmp_path / "truncated.laz"
    bad.write_bytes(Path(tiles[0]).read_bytes()[:30_000])
    out = tmp_path / "out"
    out.mkdir()
    jobs = [(str(tiles[0]), str(out / "a.laz")), (str(bad), str(out / "b.laz")), (str(tiles[2]), str(out / "c.laz"))]
    got = []
    with pytest.raises(LasError, match="truncated.laz") as e:
        for _, dst, _ in classify_files(jobs, *model, threads=2, **SMALL):
            got.append(dst)
    assert "\n" not in str(e.value)
    assert got == [str(out / "a.laz")] and sorted(os.listdir(out)) == ["a.laz"]
    assert _codec_children() == []
    assert laspy.open(out / "a.laz").header.point_count == laspy.open(tiles[0]).header.point_count


@pytest.mark.parametrize("threads", [1, 2])
def test_interrupt_while_encoding_leaves_only_complete_outputs(model, tiles, tmp_path, monkeypatch, threads):
    """Ctrl-C lands while the second file's output is being encoded (on this thread or a child's start): the
    first output is complete and the second's temporary file is removed (a CI run once found one left)."""
    import sparseconv.lidar.classify as classify_module

    real, calls = classify_module.Encoder, []

    def encoder(*args, **kwargs):
        calls.append(args[3])
        if len(calls) == 2:
            assert os.path.exists(args[3])  # the temporary output exists when the interrupt comes
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(classify_module, "Encoder", encoder)
    out = tmp_path / "out"
    out.mkdir()
    jobs = [(str(p), str(out / f"{i}.laz")) for i, p in enumerate(tiles[:3])]
    with pytest.raises(KeyboardInterrupt):
        for _ in classify_files(jobs, *model, threads=threads, **SMALL):
            pass
    assert sorted(os.listdir(out)) == ["0.laz"] and _codec_children() == []
    assert laspy.open(out / "0.laz").header.point_count == laspy.open(tiles[0]).header.point_count


@pytest.mark.parametrize("threads", [1, 2])
def test_truncated_input_one_line_error_nothing_written(model, tiles, tmp_path, threads):
    bad = tmp_path / "cut.laz"
    bad.write_bytes(Path(tiles[0]).read_bytes()[:30_000])
    with pytest.raises(LasError, match=r"cut\.laz: (truncated|unreadable)") as e:
        classify_file(str(bad), str(tmp_path / "o.laz"), *model, threads=threads, **SMALL)
    assert "\n" not in str(e.value)
    assert os.listdir(tmp_path) == ["cut.laz"] and _codec_children() == []


def test_codec_child_decodes_and_encodes_like_this_process(tiles, tmp_path):
    """Decoder/Encoder in a child process (one, reused: decode, then encode) and here (lazrs on one thread and on
    every thread): the same raw records, the same output bytes; the Children pool reuses its processes."""
    src = str(tiles[2])
    n = laspy.open(src).header.point_count
    labels = tmp_path / "labels.npy"
    np.save(labels, (np.arange(n) % 7).astype(np.uint8))
    children = Children(2)
    for name, child, parallel in (("one", None, False), ("all", None, True), ("child", children.take(), False)):
        raw = tmp_path / f"{name}.raw"
        assert list(Decoder(src, str(raw), 1000, child, parallel).counts()) == list(range(1000, n, 1000)) + [n]
        assert Encoder(src, str(raw), str(labels), str(tmp_path / f"{name}.laz"), 1000, child, parallel).wait() >= 0
        if child is not None:
            children.give(child)
            assert children.take() is child and len(_codec_children()) == 1  # the same process again
            children.give(child)
    children.close()
    assert _codec_children() == []
    for name in ("all", "child"):
        assert (tmp_path / "one.raw").read_bytes() == (tmp_path / f"{name}.raw").read_bytes()
        assert _digest(tmp_path / "one.laz") == _digest(tmp_path / f"{name}.laz")
    assert np.array_equal(np.asarray(laspy.read(tmp_path / "one.laz").classification), np.arange(n) % 7)


def test_child_failure_is_one_line_naming_the_file(tmp_path):
    missing = str(tmp_path / "gone.laz")
    np.save(tmp_path / "l.npy", np.zeros(10, np.uint8))
    child = Child(2)
    child.start("encode", missing, str(tmp_path / "x.raw"), str(tmp_path / "l.npy"), str(tmp_path / "o.laz"), 10)
    with pytest.raises(LasError, match="gone.laz") as e:
        child.wait()
    assert "\n" not in str(e.value) and "Traceback" not in str(e.value)
    child.close()


def test_ordered_runner_commits_in_submission_order():
    """Computes finish out of order (later ones are faster); commits still run in submission order; a failed
    compute passes its turn and its future raises."""
    for workers in (0, 1, 3):
        runner, order = OrderedRunner(workers, 1), []
        try:
            futures = []
            for i in range(8):
                def compute(i=i, workers=workers):
                    time.sleep(0.02 * (8 - i) if workers else 0)
                    if i == 5:
                        raise ValueError("five")
                    return i
                futures.append(runner.submit(compute, order.append))
            for i, f in enumerate(futures):
                if i == 5:
                    with pytest.raises(ValueError, match="five"):
                        f.result()
                else:
                    f.result()
        finally:
            runner.close()
        assert order == [0, 1, 2, 3, 4, 6, 7], (workers, order)


def test_ordered_runner_threads_and_restore():
    """Workers run with their own torch thread count; the caller's is restored by close()."""
    saved = torch.get_num_threads()
    runner = OrderedRunner(2, 1)
    seen = []
    try:
        fut = runner.submit(lambda: (torch.get_num_threads(), threading.current_thread().name), seen.append)
        fut.result()
    finally:
        runner.close()
    assert seen[0][0] == 1 and seen[0][1].startswith("sparseconv-batch")
    assert torch.get_num_threads() == saved


def test_cli_folder_on_threads(model_file, tiles, tmp_path, capsys, monkeypatch):
    """The command on a folder, one thread and two: the same bytes per file, a line per file and one for all;
    --threads 0 and --batch-points 0 are one-line errors."""
    monkeypatch.setenv("RAYON_NUM_THREADS", "2")  # --threads would set it for this (test) process otherwise
    folder = tmp_path / "in"
    folder.mkdir()
    for p in tiles:
        os.symlink(p, folder / Path(p).name)
    for threads in ("1", "2"):
        assert main(["classify", str(folder), "-o", str(tmp_path / f"out{threads}"), "--model", model_file,
                     "--quiet", "--threads", threads, "--tile-size", "24"]) == 0
        printed = capsys.readouterr().out
        assert printed.count(" -> ") == 3 and "3 files, " in printed
    for p in tiles:
        assert _digest(tmp_path / "out1" / Path(p).name) == _digest(tmp_path / "out2" / Path(p).name)
    for bad in (["--threads", "0"], ["--batch-points", "0"]):
        assert main(["classify", str(tiles[0]), "-o", str(tmp_path / "x.laz"), "--model", model_file, *bad]) == 1
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and bad[0] in err


ROOT = Path(__file__).resolve().parents[1]
RAW_PY = str(ROOT / "sparseconv" / "io" / "raw.py")


def _stray_codec_processes():
    """Live processes running this tree's io/raw.py (any parent): none may outlive a command."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if RAW_PY.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(pid)
        except OSError:
            continue
    return found


def _command(*args, cwd):
    """`python -m sparseconv.cli ...` in a fresh interpreter, as a user runs it (the early decode can start)."""
    import subprocess
    import sys

    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("RAYON_NUM_THREADS", None)
    return subprocess.run([sys.executable, "-m", "sparseconv.cli", *map(str, args)], check=False, cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=300)


def _early_started(argv, tmp_path):
    """In a fresh interpreter that cannot import torch, `import sparseconv` as `python -m sparseconv.cli <argv>`
    does: whether the first input's decoding started (before torch, which is never imported), and whether closing
    it ended its child and removed its folder."""
    import json
    import subprocess
    import sys

    code = ("import json, os, sys\n"
            f"sys.argv = ['-m', *{argv!r}]\n"
            f"sys.orig_argv = [sys.executable, '-m', 'sparseconv.cli', *{argv!r}]\n"
            "sys.modules['torch'] = None  # any torch import fails from here on\n"
            "try:\n    import sparseconv\nexcept ImportError:\n    pass\n"
            "early = sys.modules['sparseconv._early'].take()\n"
            "out = {'started': early is not None}\n"
            "if early is not None:\n"
            "    proc, folder = early.child.proc, early.tmp.name\n"
            "    out['raw'] = os.path.exists(os.path.join(folder, 'points.raw'))\n"
            "    early.close()\n"
            "    out['ended'] = proc.poll() is not None and not os.path.exists(folder)\n"
            "print(json.dumps(out))\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", code], check=False, cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_command_starts_its_first_decode_before_torch(model_file, tiles, tmp_path):
    """`sparseconv classify` on 2 threads starts decoding its first input before torch is imported (a process that
    cannot import torch still starts it); on one thread, for a Python-level call, with a bad argument, a missing
    input or an output that exists (no --overwrite), nothing starts."""
    src, m = str(tiles[0]), ["--model", model_file]
    assert _early_started(["classify", src, "-o", "o.laz", "--threads", "2", *m], tmp_path) == \
        {"started": True, "raw": True, "ended": True}
    (tmp_path / "exists.laz").write_bytes(b"")
    for argv in (["classify", src, "-o", "o.laz", "--threads", "1", *m],
                 ["classify", src, "-o", "o.laz", "--threads", "two"],
                 ["classify", src, "-o", "o.laz", "--threads", "2", "--help"],
                 ["classify", str(tmp_path / "gone.laz"), "-o", "o.laz", "--threads", "2"],
                 ["classify", src, "-o", "exists.laz", "--threads", "2"],
                 ["info", src]):
        assert _early_started(argv, tmp_path) == {"started": False}, argv
    assert sorted(os.listdir(tmp_path)) == ["exists.laz"] and _stray_codec_processes() == []


def test_command_early_decode_same_bytes_and_clean_errors(model_file, tiles, tmp_path):
    """The whole command on 2 threads (first file decoded beside `import torch`, the next ahead, a folder) writes
    the bytes main() writes on one thread; a truncated or corrupt first input is a one-line error naming it, with
    no output, temporary file or codec process left behind."""
    folder = tmp_path / "in"
    folder.mkdir()
    for p in tiles[:2]:
        os.symlink(p, folder / Path(p).name)
    assert main(["classify", str(folder), "-o", str(tmp_path / "ref"), "--model", model_file, "--quiet",
                 "--threads", "1", "--tile-size", "24"]) == 0
    run = _command("classify", folder, "-o", tmp_path / "out", "--model", model_file, "--quiet", "--threads", "2",
                   "--tile-size", "24", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    for p in tiles[:2]:
        assert _digest(tmp_path / "out" / Path(p).name) == _digest(tmp_path / "ref" / Path(p).name)
    run = _command("classify", tiles[0], "-o", tmp_path / "one.laz", "--model", model_file, "--quiet",
                   "--threads", "2", "--tile-size", "24", cwd=tmp_path)
    assert run.returncode == 0 and _digest(tmp_path / "one.laz") == _digest(tmp_path / "ref" / Path(tiles[0]).name)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "cut.laz").write_bytes(Path(tiles[0]).read_bytes()[:30_000])
    (bad / "junk.laz").write_bytes(b"not a LAS file at all" * 10)
    for name, why in (("cut.laz", r"(truncated|unreadable)"), ("junk.laz", "not a readable LAS/LAZ file")):
        run = _command("classify", bad / name, "-o", bad / "o.laz", "--model", model_file, "--quiet",
                       "--threads", "2", cwd=tmp_path)
        err = run.stderr.strip()
        assert run.returncode == 1 and err.count("\n") == 0, err
        assert re.search(rf"^sparseconv classify: error: .*{re.escape(name)}: {why}", err), err
        assert sorted(os.listdir(bad)) == ["cut.laz", "junk.laz"]
    assert _stray_codec_processes() == []


@pytest.mark.parametrize("sig, rc, said", [("SIGTERM", 143, "terminated (SIGTERM)"), ("SIGINT", 130, "interrupted")])
def test_killed_command_leaves_no_temporary_folder(model_file, tiles, tmp_path, sig, rc, said):
    """A batch scheduler's SIGTERM or a Ctrl-C in the middle of a folder: the command exits with 128 + the signal
    and one line; the outputs already written are complete, no `.sparseconv-*` folder or codec process is left."""
    import signal
    import subprocess
    import sys

    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    for i in range(40):
        os.symlink(tiles[0], folder / f"t{i:02d}.laz")
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-m", "sparseconv.cli", "classify", str(folder), "-o", str(out),
                             "--model", model_file, "--quiet", "--threads", "2", "--tile-size", "24"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (out.is_dir() and any(p.name.startswith("t") for p in out.iterdir())) and proc.poll() is None:
        assert time.monotonic() < deadline, "no output after 120 s"
        time.sleep(0.01)
    proc.send_signal(getattr(signal, sig))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == rc, err
    assert err.strip().splitlines()[-1] == f"sparseconv classify: {said}"
    done = sorted(out.iterdir())
    assert 0 < len(done) < 40 and all(p.suffix == ".laz" and not p.name.startswith(".") for p in done), done
    n = len(laspy.read(tiles[0]).points)
    assert all(len(laspy.read(p).points) == n for p in done)
    assert _stray_codec_processes() == []
