#!/usr/bin/env python
"""End-to-end classification throughput: points/s and peak RSS of ``sparseconv classify`` on generated airborne
LAZ files of about 1M and 5M points, at several thread counts and on CPU or GPU (issue 17, "Targets": on 2
cores >= 450,000 points/s end to end on a 5M-point LAZ and peak RSS < 1.5 GB at any file size; from 1 to 2
threads >= 1.7x; with --device cuda on a GPU host >= 1.5M points/s on a 20M-point LAZ and faster than the CPU
on every file above 1M points).

Input files are built once and cached under ``benchmarks/results/throughput/``: a grid of
``sparseconv.data.airborne.generate_tile`` tiles (100-200 m sides, one seed each, laid edge to edge, density
--density pulses/m2) streamed tile by tile into one LAZ, so generation never holds more than one tile.

A configuration is a device and a thread count (``--device cpu cuda``, ``--threads 1 2``). Each measurement runs
in a fresh child process: imports torch and sparseconv, loads the model (the shipped pretrained one; ``--model``
overrides), then calls ``classify_file(src, dst, model, config, overwrite=True, progress=False, threads=N,
device=D)`` and reports its wall time, per-phase seconds (read, classify, write), CPU seconds (its own and its
LAZ codec child processes') and the process's peak RSS (VmHWM; the codec children, numpy and laspy only, hold
about 120 MiB each beside it). The command line (``python -m sparseconv.cli classify IN -o OUT --overwrite
--quiet --threads N --device D``) is timed once per file and configuration: wall time of the whole command
(interpreter start and imports included) and peak RSS (wait4: the largest of the command and its children). ``--folder K`` adds a run of the command on
a folder of K links to the smallest file (files overlap: the next is decoded while one's network runs).
Repeats alternate between files and configurations; figures are medians, peak RSS the largest seen.

The machine may be shared: before each run the parent waits (up to --idle-wait s) for other processes to use
under 0.3 cores, and every run records ``other_load`` (cores other processes kept busy meanwhile, /proc/stat
minus the child's own CPU time) and the 1-minute load average at its start. "cores used" (CPU s / wall s)
shows how many cores the run kept busy. CUDA configurations on a machine without CUDA are not run: the report
says so and prints the command that fills them on a GPU host.

Writes ``classify_throughput[_quick].{csv,md,png}`` under benchmarks/results/ atomically; ``--profile`` also
writes ``classify_throughput_profile.txt`` (cProfile of classify_file with --threads 1, where every stage runs
on the profiled thread, on the smallest file, its own child).

    .venv/bin/python benchmarks/classify_throughput.py --quick                  # 1M once (+ CLI)
    .venv/bin/python benchmarks/classify_throughput.py --threads 1 2 --folder 4  # 1M x3, 5M x2 per thread count
    .venv/bin/python benchmarks/classify_throughput.py --device cpu cuda --threads 16 --sizes 1M 5M 20M  # GPU host
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from statistics import median

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))
from bench_conv import _status_mib as status_mib  # noqa: E402
from bench_conv import children_cpu_s, cpu_busy_s, foreign_load, machine_facts, wait_idle  # noqa: E402
from compare_peers import write_atomic  # noqa: E402

TARGET_PPS = 450_000  # on 2+ CPU threads, files of TARGET_PPS_MIN_POINTS or more
TARGET_PPS_MIN_POINTS = 4_000_000
TARGET_RSS_MIB = 1.5e9 / 2**20  # 1.5 GB (1430 MiB): any file, any configuration
TARGET_SCALING = 1.7  # points/s at 2 threads over 1 thread
TARGET_GPU_PPS = 1_500_000  # --device cuda, files of TARGET_GPU_MIN_POINTS or more
TARGET_GPU_MIN_POINTS = 15_000_000
CACHE = HERE / "results" / "throughput"
RETURNS_PER_PULSE = 1.13  # returns per pulse of generate_tile (1.0-1.4 by scene; ~9 per m2 at density 8)
FILE_FORMAT = 1  # bump when the way files are built changes (invalidates the cache)
CSV_FIELDS = ["size_label", "points", "mode", "device", "threads", "repeat", "status", "wall_s", "read_s",
              "classify_s", "write_s", "points_per_s", "peak_rss_mib", "rss_before_mib", "cpu_s",
              "cores_used", "other_load_cores", "loadavg_1m", "model"]


def label(n: int) -> str:
    if n >= 1e6:
        return f"{n / 1e6:g}M" if n % 100_000 == 0 else f"{n / 1e6:.2f}M"
    return f"{n / 1e3:g}k"


def parse_count(s: str) -> int:
    s = s.strip().lower()
    mult = {"k": 1_000, "m": 1_000_000}.get(s[-1:], 1)
    return int(float(s[:-1] if mult > 1 else s) * mult)


def loadavg() -> float | None:
    try:
        with open("/proc/loadavg") as f:
            return float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def cfg_name(device: str, threads: int) -> str:
    return f"{device}, {threads} thread{'s' if threads > 1 else ''}"


# ------------------------------------------------------------------------------------------------------------
# input files: generated tiles streamed into one LAZ (cached)
# ------------------------------------------------------------------------------------------------------------


def plan(target: int, density: float, tile_m: float = 150.0) -> tuple[int, float]:
    """(k, size_m): a k x k grid of size_m tiles (100..200 m) expected to hold about `target` points."""
    side = math.sqrt(target / (RETURNS_PER_PULSE * density))
    k = max(1, round(side / tile_m))
    while side / k > 200.0:
        k += 1
    while k > 1 and side / k < 100.0:
        k -= 1
    return k, side / k


def _tile_points(tile: dict, laspy, scales, offsets):
    """A generate_tile dict -> laspy point record (point format 6), in the writer's scales and offsets (the
    same fields and conversions as sparseconv.data.airborne.write_tile_las)."""
    import numpy as np

    h = laspy.LasHeader(point_format=6, version="1.4")
    h.scales, h.offsets = scales, offsets
    las = laspy.LasData(h)
    las.x, las.y, las.z = (np.asarray(tile[k], np.float64) for k in "xyz")
    las.intensity = np.asarray(tile["intensity"], np.uint16)
    las.return_number = np.asarray(tile["return_number"], np.uint8)
    las.number_of_returns = np.asarray(tile["number_of_returns"], np.uint8)
    las.classification = np.asarray(tile["classification"], np.uint8)
    ang = np.asarray(tile["scan_angle"], np.float64)
    las.scan_angle = np.clip(np.round(ang / 0.006), -30000, 30000).astype(np.int16)
    las.gps_time = np.asarray(tile["gps_time"], np.float64)
    for k in ("point_source_id", "scan_direction_flag", "edge_of_flight_line"):
        if k in tile:
            las[k] = np.asarray(tile[k])
    return las.points


def build_file(target: int, density: float, seed: int, tqdm) -> dict:
    """The cached LAZ of about `target` points (built when missing or built with other parameters)."""
    import laspy
    import numpy as np

    from sparseconv.data.airborne import generate_tile

    k, size = plan(target, density)
    params = {"format": FILE_FORMAT, "target": target, "density": density, "seed": seed, "grid": k,
              "size_m": round(size, 3), "origin": [650000.0, 6860000.0], "point_format": 6}
    path = CACHE / f"airborne_{label(target)}.laz"
    meta_path = path.with_suffix(".json")
    if path.exists() and meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta.get("params") == params:
            try:
                with laspy.open(path) as r:
                    n = int(r.header.point_count)
            except Exception:
                n = -1
            if n == meta.get("points"):
                meta["cached"] = True
                return meta
    CACHE.mkdir(parents=True, exist_ok=True)
    x0, y0 = params["origin"]
    header = laspy.LasHeader(point_format=6, version="1.4")
    header.scales = np.array([0.01, 0.01, 0.01])
    header.offsets = np.array([x0, y0, 0.0])
    header.generating_software = "sparseconv benchmarks/classify_throughput.py"
    header.system_identifier = "generated"
    fd, tmp = tempfile.mkstemp(dir=CACHE, prefix=f".{path.stem}.", suffix=".laz")
    os.close(fd)
    t0, n, classes = time.perf_counter(), 0, np.zeros(256, np.int64)
    cells = [(i, j) for j in range(k) for i in range(k)]
    bar = tqdm(cells, desc=f"generate {label(target)} ({k}x{k} tiles of {size:.0f} m)", unit="tile",
               file=sys.stderr)
    try:
        with laspy.open(tmp, mode="w", header=header, do_compress=True) as writer:
            for i, j in bar:
                tseed = int(np.random.SeedSequence([seed, target, i, j]).generate_state(1, np.uint32)[0])
                origin = (x0 + i * size, y0 + j * size)
                tile = generate_tile(tseed, size_m=size, density=density, origin=origin)
                writer.write_points(_tile_points(tile, laspy, header.scales, header.offsets))
                n += tile["x"].size
                classes += np.bincount(tile["classification"], minlength=256)
                del tile
                if hasattr(bar, "set_postfix_str"):
                    bar.set_postfix_str(f"{n / 1e6:.2f}M points")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    meta = {"params": params, "points": n, "seconds": round(time.perf_counter() - t0, 1),
            "bytes": path.stat().st_size, "classes": {int(c): int(v) for c, v in enumerate(classes) if v}}
    write_atomic(meta_path, lambda t: Path(t).write_text(json.dumps(meta, indent=1)))
    meta["cached"] = False
    return meta


def model_path(args) -> tuple[str, str]:
    """(checkpoint path, description): --model, else the shipped pretrained model, else a random one."""
    if args.model:
        return os.path.abspath(args.model), f"--model {args.model}"
    from sparseconv.lidar.model import PRETRAINED

    if os.path.isfile(PRETRAINED):
        return PRETRAINED, "shipped pretrained (sparseconv/models/pretrained/lidar_unet.pt)"
    path = CACHE / "random_lidar_unet.pt"
    if not path.exists():
        import torch

        from sparseconv.data.airborne import CLASSES
        from sparseconv.lidar.features import feature_names
        from sparseconv.lidar.model import FORMAT, build_model, save_checkpoint
        from sparseconv.lidar.train import DEFAULTS

        config = {**DEFAULTS, "channels": list(DEFAULTS["channels"]), "features": list(feature_names(False)),
                  "classes": sorted(CLASSES)}
        torch.manual_seed(0)
        CACHE.mkdir(parents=True, exist_ok=True)
        state = build_model(config).state_dict()
        save_checkpoint({"format": FORMAT, "config": config, "model": state}, str(path))
    return str(path), ("randomly initialised, default config (no pretrained model shipped yet; throughput "
                       "barely depends on the weights)")


# ------------------------------------------------------------------------------------------------------------
# child: one classify_file call in a fresh process
# ------------------------------------------------------------------------------------------------------------


def run_child(args) -> None:
    t_start = time.perf_counter()
    import torch

    torch.set_num_threads(args.threads)
    import sparseconv.lidar as L

    model, config, _ = L.load_checkpoint(args.model)
    rss_before = status_mib("VmRSS")
    t_import = time.perf_counter() - t_start
    prof = None
    if args.profile_out:
        import cProfile

        prof = cProfile.Profile()
    c0, k0, t0 = time.process_time(), children_cpu_s(), time.perf_counter()
    if prof:
        prof.enable()
    r = L.classify_file(args.src, args.dst, model, config, overwrite=True, progress=False, threads=args.threads,
                        device=args.device)
    if prof:
        prof.disable()
    wall = time.perf_counter() - t0
    cpu = time.process_time() - c0 + children_cpu_s() - k0  # this process and its LAZ codec children
    import laspy

    with laspy.open(args.dst) as f:
        written = int(f.header.point_count)
    out = {"points": r["points"], "written": written, "wall_s": wall, "cpu_s": cpu, "seconds": r["seconds"],
           "classes": {str(k): v for k, v in r["classes"].items()}, "peak_rss_mib": status_mib("VmHWM"),
           "rss_before_mib": rss_before, "import_s": t_import, "threads": args.threads}
    if args.device.startswith("cuda"):
        out["gpu_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    if prof:
        import pstats

        s = io.StringIO()
        st = pstats.Stats(prof, stream=s)
        st.sort_stats("tottime").print_stats(35)
        st.sort_stats("cumulative").print_stats(60)
        Path(args.profile_out).write_text(s.getvalue())
        out["breakdown"] = breakdown(st)
    Path(args.result).write_text(json.dumps(out))


# (label, file suffix, function name): cumulative seconds from the profile; nested entries are indented
BREAKDOWN = [
    ("read pass: LAZ decode into raw records (io.raw.decode)", "sparseconv/io/raw.py", "decode"),
    ("read pass: read_records (raw file -> laspy record)", "sparseconv/io/raw.py", "read_records"),
    ("read pass: record_arrays (laspy -> numpy)", "sparseconv/lidar/source.py", "record_arrays"),
    ("read pass: FileStats.add", "sparseconv/lidar/source.py", "add"),
    ("read pass: Spill.split (a chunk's records per block)", "sparseconv/lidar/spill.py", "split"),
    ("read pass: Spill.append (records to the block files)", "sparseconv/lidar/spill.py", "append"),
    ("window_members (blocks in the read pass, tiles per part)", "sparseconv/lidar/windows.py", "window_members"),
    ("classify: Spill.load", "sparseconv/lidar/spill.py", "load"),
    ("classify: height_above_ground (per part)", "sparseconv/lidar/features.py", "height_above_ground"),
    ("classify: make_batch (voxelize + features)", "sparseconv/lidar/windows.py", "make_batch"),
    ("  make_batch: voxelize", "sparseconv/voxelize.py", "voxelize"),
    ("  make_batch: point_features", "sparseconv/lidar/features.py", "point_features"),
    ("classify: _predict (network + softmax)", "sparseconv/lidar/classify.py", "_predict"),
    ("  PointSegNet.forward", "sparseconv/lidar/model.py", "forward"),
    ("  SparseUNet.forward", "sparseconv/models/unet.py", "forward"),
    ("classify: scores summed (_Part._commit, index_add_)", "sparseconv/lidar/classify.py", "_commit"),
    ("write pass: io.raw.encode", "sparseconv/io/raw.py", "encode"),
    ("  laspy write_points (LAZ compress)", "laspy/laswriter.py", "write_points"),
]


def breakdown(st) -> list[dict]:
    total = st.total_tt
    out = []
    for name, suffix, func in BREAKDOWN:
        cum, calls = 0.0, 0
        for (fname, _line, fn), (_cc, nc, _tt, ct, _callers) in st.stats.items():
            if fn == func and fname.replace("\\", "/").endswith(suffix):
                cum, calls = cum + ct, calls + nc
        out.append({"what": name, "seconds": cum, "calls": calls, "share": cum / total if total else 0.0})
    out.append({"what": "total (profiled)", "seconds": total, "calls": 1, "share": 1.0})
    return out


# ------------------------------------------------------------------------------------------------------------
# parent
# ------------------------------------------------------------------------------------------------------------


def child_env(args, threads: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    for kv in args.env or []:
        k, _, v = kv.partition("=")
        env[k] = v
    return env


def run_api(args, src: str, model: str, device: str, threads: int, profile_out: str | None = None) -> dict:
    with tempfile.TemporaryDirectory(dir=CACHE, prefix=".run-") as tmp:
        res = Path(tmp) / "result.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--src", src, "--dst",
               str(Path(tmp) / "out.laz"), "--model", model, "--result", str(res), "--threads", str(threads),
               "--device", device]
        if profile_out:
            cmd += ["--profile-out", profile_out]
        r = _wait4(cmd, child_env(args, threads), args.child_timeout)
        if r["rc"] != 0 or not res.exists():
            return {**r, "status": f"failed (exit {r['rc']}): {(r['stderr'].strip().splitlines() or ['?'])[-1]}"}
        out = json.loads(res.read_text())
    out.update(status="ok" if out["written"] == out["points"] else f"wrote {out['written']} of {out['points']} points",
               other_load_cores=r["other_load_cores"], loadavg_1m=r["loadavg_1m"],
               points_per_s=out["points"] / out["wall_s"], cores_used=out["cpu_s"] / out["wall_s"],
               process_wall_s=r["wall_s"])
    return out


def _wait4(cmd, env, timeout):
    """Runs cmd: rc, output, wall s, its CPU s and peak RSS (wait4: the largest of it and its children), other
    processes' load in cores meanwhile, loadavg at the start."""
    b0, la, t0 = cpu_busy_s(), loadavg(), time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        p = subprocess.Popen(cmd, stdout=out, stderr=err, cwd=ROOT, env=env, text=True)
        timer = threading.Timer(timeout, p.kill)
        timer.start()
        try:
            _, status, ru = os.wait4(p.pid, 0)
        finally:
            timer.cancel()
        rc = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - t0
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read() + (f"\ntimed out after {timeout:.0f} s (--child-timeout)"
                                                   if wall >= timeout else "")
    cpu = ru.ru_utime + ru.ru_stime
    other = max(0.0, ((cpu_busy_s() - b0) - cpu) / wall)
    return {"rc": rc, "stdout": stdout, "stderr": stderr, "wall_s": wall, "cpu_s": cpu,
            "peak_rss_mib": ru.ru_maxrss / 1024.0, "other_load_cores": other, "loadavg_1m": la}


def run_cli(args, src: str, model: str, points: int, device: str, threads: int) -> dict:
    """`python -m sparseconv.cli classify` as a user runs it (src a file or a folder): whole-command wall time."""
    with tempfile.TemporaryDirectory(dir=CACHE, prefix=".cli-") as tmp:
        dst = Path(tmp) / ("out" if os.path.isdir(src) else "out.laz")
        cmd = [sys.executable, "-m", "sparseconv.cli", "classify", src, "-o", str(dst), "--overwrite", "--quiet",
               "--threads", str(threads), "--device", device]
        if not model.endswith(os.path.join("pretrained", "lidar_unet.pt")) or args.model:
            cmd += ["--model", model]
        r = _wait4(cmd, child_env(args, threads), args.child_timeout)
        ok = r["rc"] == 0 and dst.exists()
    r.update(status="ok" if ok else f"failed (exit {r['rc']}): {(r['stderr'].strip().splitlines() or ['?'])[-1]}",
             points=points, points_per_s=points / r["wall_s"], cores_used=r["cpu_s"] / r["wall_s"])
    lines = [x.strip() for x in r["stdout"].splitlines() if "points/s" in x]
    r["cli_line"] = lines[-1] if lines else ""
    return r


def folder_of_links(f: dict, k: int) -> str:
    """A folder of k symbolic links to the file f (the command's many-files path)."""
    folder = CACHE / f"folder_{k}x{f['label']}"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(k):
        link = folder / f"copy_{i:02d}.laz"
        if not link.exists():
            link.symlink_to(Path(f["path"]).resolve())
    return str(folder)


def fmt(v, nd=1):
    if v is None:
        return "-"
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.{nd}f}"


def summarize(runs: list[dict]) -> dict:
    ok = [r for r in runs if r.get("status") == "ok"]
    if not ok:
        return {"n": 0}
    s = {"n": len(ok), "points": ok[0]["points"]}
    for k in ("wall_s", "points_per_s", "cpu_s", "cores_used", "other_load_cores"):
        s[k] = median(r[k] for r in ok)
    for k in ("read", "classify", "write"):
        if all("seconds" in r for r in ok):
            s[k + "_s"] = median(r["seconds"][k] for r in ok)
    for k in ("peak_rss_mib", "gpu_peak_mib"):
        if all(k in r for r in ok):
            s[k] = max(r[k] for r in ok)
    s["rss_before_mib"] = max((r.get("rss_before_mib") or 0) for r in ok) or None
    s["min_pps"], s["max_pps"] = min(r["points_per_s"] for r in ok), max(r["points_per_s"] for r in ok)
    return s


def pps_verdict(s: dict, device: str, threads: int) -> str:
    """PASS/MISS where a points/s target applies to this file and configuration, else n/a."""
    if not s.get("n"):
        return "n/a"
    if device == "cpu" and threads >= 2 and s["points"] >= TARGET_PPS_MIN_POINTS:
        return "PASS" if s["points_per_s"] >= TARGET_PPS else "MISS"
    if device.startswith("cuda") and s["points"] >= TARGET_GPU_MIN_POINTS:
        return "PASS" if s["points_per_s"] >= TARGET_GPU_PPS else "MISS"
    return "n/a"


def rss_verdict(s: dict) -> str:
    if not s.get("n"):
        return "n/a"
    return "PASS" if s["peak_rss_mib"] < TARGET_RSS_MIB else "MISS"


def scaling_rows(res: dict) -> list[dict]:
    """Per file and device: points/s at each thread count over 1 thread (classify_file and the command)."""
    rows = []
    for f in res["files"]:
        for device in res["devices_run"]:
            for mode in ("api", "cli"):
                one = res["summary"].get(f"{f['label']}|{cfg_name(device, 1)}", {}).get(mode) or {}
                for t in res["threads"]:
                    s = res["summary"].get(f"{f['label']}|{cfg_name(device, t)}", {}).get(mode) or {}
                    if t == 1 or not one.get("n") or not s.get("n"):
                        continue
                    x = s["points_per_s"] / one["points_per_s"]
                    rows.append({"file": f["label"], "points": f["points"], "device": device, "mode": mode,
                                 "threads": t, "speedup": x,
                                 "verdict": ("PASS" if x >= TARGET_SCALING else "MISS") if t == 2 else "n/a"})
    return rows


def report(res: dict) -> str:
    buf = io.StringIO()

    def w(s=""):
        print(s, file=buf)

    m = res["machine"]
    w("## sparseconv classify throughput (benchmarks/classify_throughput.py)")
    w()
    w(f"- CPU: {m['cpu']}, {m['cores']} cores ({', '.join(m['simd']) or 'no AVX'}), {m['mem_gib']} GiB; "
      f"torch {m['torch']}; python {m['python']}" + (f"; GPU: {m['gpu']}" if m.get("gpu") else "; no CUDA device"))
    w(f"- other processes' CPU load at start: {m['other_load_at_start']:.2f} cores (loadavg "
      f"{m['loadavg_at_start']}); each run waited up to {res['idle_wait']:.0f} s for the machine to go idle")
    w(f"- model: {res['model_desc']}")
    if res["env"]:
        w(f"- children's environment: {' '.join(res['env'])}")
    w(f"- command: {res['command']}")
    w(f"- targets (issue 17): >= {TARGET_PPS:,} points/s on 2+ CPU threads for files of "
      f"{TARGET_PPS_MIN_POINTS / 1e6:g}M+ points; peak RSS < {TARGET_RSS_MIB:.0f} MiB at any size; >= "
      f"{TARGET_SCALING}x from 1 to 2 threads; --device cuda >= {TARGET_GPU_PPS:,} points/s on "
      f"{TARGET_GPU_MIN_POINTS / 1e6:g}M+ points and faster than the CPU above 1M points")
    w()
    w("Input files (cached; generated airborne tiles on one contiguous grid, streamed into one LAZ):")
    w()
    w("| file | points | grid | tile side | density | size | built |")
    w("|---|---|---|---|---|---|---|")
    for f in res["files"]:
        p = f["params"]
        w(f"| {Path(f['path']).name} | {f['points']:,} | {p['grid']}x{p['grid']} | {p['size_m']:.0f} m | "
          f"{p['density']:g} pulses/m2 | {f['bytes'] / 2**20:.0f} MiB | "
          f"{'cached' if f['cached'] else 'now, %.0f s' % f['seconds']} |")
    if any(r["mode"] == "api" for r in res["runs"]):
        w()
        w("classify_file in a fresh process (medians; peak RSS: the process's VmHWM, imports and model included; its "
          "LAZ decode/encode child processes, numpy and laspy only, about 120 MiB each, run beside it; cores used: "
          "CPU s of the process and its children / wall s):")
        w()
        w("| file | device, threads | runs | end to end | points/s | read | classify | write | peak RSS | "
          "cores used | other load | target pts/s | target RSS |")
        w("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for f in res["files"]:
            for cfg in res["configs_run"]:
                s = res["summary"][f"{f['label']}|{cfg_name(*cfg)}"]["api"]
                if not s.get("n"):
                    w(f"| {f['label']} | {cfg_name(*cfg)} | 0 | failed | | | | | | | | n/a | n/a |")
                    continue
                rng = f" ({fmt(s['min_pps'])}-{fmt(s['max_pps'])})" if s["n"] > 1 else ""
                gpu = f" (GPU {s['gpu_peak_mib']:.0f} MiB)" if s.get("gpu_peak_mib") else ""
                w(f"| {f['label']} ({s['points']:,}) | {cfg_name(*cfg)} | {s['n']} | {s['wall_s']:.1f} s | "
                  f"{fmt(s['points_per_s'])}{rng} | {s['read_s']:.1f} s | {s['classify_s']:.1f} s | "
                  f"{s['write_s']:.1f} s | {s['peak_rss_mib']:.0f} MiB{gpu} | {s['cores_used']:.2f} | {s['other_load_cores']:.2f} cores | {pps_verdict(s, *cfg)} | "
                  f"{rss_verdict(s)} |")
    scal = scaling_rows(res)
    if scal:
        w()
        w(f"Threads (points/s at N threads over 1 thread, medians; target >= {TARGET_SCALING}x at 2):")
        w()
        w("| file | device | run | threads | speedup | target |")
        w("|---|---|---|---|---|---|")
        for r in scal:
            what = "classify_file" if r["mode"] == "api" else "whole command"
            w(f"| {r['file']} | {r['device']} | {what} | {r['threads']} | {r['speedup']:.2f}x | {r['verdict']} |")
    busy = max((r.get("other_load_cores", 0.0) for r in res["runs"]), default=0.0)
    if busy > 0.3:
        w()
        w(f"Other processes kept up to {busy:.2f} cores busy during some runs: those runs got less than the "
          "machine, so their points/s is pessimistic (see the CSV's other_load_cores per run).")
    cli = [(f, cfg, res["summary"][f"{f['label']}|{cfg_name(*cfg)}"].get("cli")) for f in res["files"]
           for cfg in res["configs_run"]]
    cli = [(f, cfg, s) for f, cfg, s in cli if s]
    if cli or res.get("folder"):
        w()
        times = "once" if res.get("cli_repeats", 1) == 1 else f"median of {res['cli_repeats']} runs alternated"
        w(f"Command line, {times} per file and configuration (`python -m sparseconv.cli classify IN -o OUT "
          "--overwrite --quiet --threads N --device D`; wall time of the whole command, interpreter start and "
          "imports included; peak RSS the largest of the command and its children):")
        w()
        w("| input | device, threads | wall | points/s | peak RSS | cores used | other load | CLI's own line |")
        w("|---|---|---|---|---|---|---|---|")
        for f, cfg, s in cli + [(None, cfg, s) for cfg, s in res.get("folder", [])]:
            name = f["label"] if f else res["folder_desc"]
            if not s.get("n"):
                w(f"| {name} | {cfg_name(*cfg)} | failed | | | | | |")
                continue
            line = s.get("cli_line", "")
            line = line.split(": ", 1)[-1] if f else line
            w(f"| {name} | {cfg_name(*cfg)} | {s['wall_s']:.1f} s | {fmt(s['points_per_s'])} | "
              f"{s['peak_rss_mib']:.0f} MiB | {s['cores_used']:.2f} | {s['other_load_cores']:.2f} cores | {line} |")
    for note in res["not_run"]:
        w()
        w(note)
    if res["skipped"]:
        w()
        w("Skipped: " + "; ".join(res["skipped"]))
    failed = [r for r in res["runs"] if r["status"] != "ok"]
    if failed:
        w()
        w("Failed runs: " + "; ".join(f"{r['mode']} {r['size_label']} {cfg_name(r['device'], r['threads'])} run "
                                      f"{r['repeat']}: {r['status']}" for r in failed))
    if res.get("profile"):
        w()
        w(f"cProfile of classify_file with --threads 1 (every stage on the profiled thread) on "
          f"{res['profile']['file']} (its own child; profiling overhead included; full listing in "
          f"{res['profile']['path']}):")
        w()
        w("| where | cumulative s | share | calls |")
        w("|---|---|---|---|")
        for b in res["profile"]["breakdown"]:
            w(f"| {b['what']} | {b['seconds']:.2f} | {100 * b['share']:.0f}% | {b['calls']} |")
    verdicts = [pps_verdict(res["summary"][f"{f['label']}|{cfg_name(*cfg)}"]["api"], *cfg) for f in res["files"]
                for cfg in res["configs_run"]]
    verdicts += [rss_verdict(res["summary"][f"{f['label']}|{cfg_name(*cfg)}"]["api"]) for f in res["files"]
                 for cfg in res["configs_run"]]
    verdicts += [r["verdict"] for r in scal]  # classify_file and the whole command
    judged = [v for v in verdicts if v != "n/a"]
    w()
    w(f"Overall: {'PASS' if judged and all(v == 'PASS' for v in judged) else 'MISS'} "
      f"({sum(v == 'PASS' for v in judged)} of {len(judged)} judged targets met); {res['runtime_s']:.0f} s in all.")
    return buf.getvalue()


def to_csv(res: dict) -> str:
    buf = io.StringIO()
    wr = csv.DictWriter(buf, fieldnames=CSV_FIELDS)
    wr.writeheader()
    for r in res["runs"]:
        sec = r.get("seconds", {})
        wr.writerow({
            "size_label": r["size_label"], "points": r.get("points", ""), "mode": r["mode"], "device": r["device"],
            "threads": r["threads"], "repeat": r["repeat"], "status": r["status"],
            **{k: (f"{r[k]:.4g}" if isinstance(r.get(k), float) else r.get(k, "")) for k in
               ("wall_s", "points_per_s", "peak_rss_mib", "rss_before_mib", "cpu_s", "cores_used",
                "other_load_cores", "loadavg_1m")},
            **{f"{k}_s": f"{sec[k]:.4g}" if k in sec else "" for k in ("read", "classify", "write")},
            "model": res["model_kind"],
        })
    return buf.getvalue()


def plot(res: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files, cfgs = res["files"], res["configs_run"]
    summ = {(f["label"], cfg): res["summary"][f"{f['label']}|{cfg_name(*cfg)}"] for f in files for cfg in cfgs}
    xs = range(len(files))
    labels = [f"{f['label']}\n{f['points'] / 1e6:.2f}M pts" for f in files]
    wd = 0.8 / max(len(cfgs), 1)
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.4))
    ax = axes[0]
    top = TARGET_PPS / 1e3
    for c, cfg in enumerate(cfgs):
        off = [x - 0.4 + wd * (c + 0.5) for x in xs]
        api = [(summ[(f["label"], cfg)]["api"].get("points_per_s") or 0) / 1e3 for f in files]
        cli = [((summ[(f["label"], cfg)].get("cli") or {}).get("points_per_s") or 0) / 1e3 for f in files]
        bars = ax.bar(off, api, wd, label=f"{cfg_name(*cfg)}")
        ax.scatter([o for o, v in zip(off, cli) if v], [v for v in cli if v], marker="_", s=300, color="black",
                   zorder=3, label="whole command" if c == 0 else None)
        for b in bars:
            if b.get_height():
                ax.annotate(f"{b.get_height():.0f}k", (b.get_x() + b.get_width() / 2, b.get_height()),
                            ha="center", va="bottom", fontsize=7)
        top = max([top] + api + cli)
    ax.axhline(TARGET_PPS / 1e3, color="red", ls="--", lw=1, label=f"target {TARGET_PPS / 1e3:.0f}k (5M, 2 threads)")
    ax.set_ylim(0, 1.3 * top)
    ax.set_ylabel("points/s (thousands), median")
    ax.set_title("classify_file throughput (bars), whole command (dashes)")
    ax.set_xticks(list(xs), labels)
    ax.legend(fontsize=7, loc="upper left")
    ax = axes[1]
    for c, cfg in enumerate(cfgs):
        off = [x - 0.4 + wd * (c + 0.5) for x in xs]
        bottom = [0.0] * len(files)
        for key, col in (("read_s", "#1f77b4"), ("classify_s", "#ff7f0e"), ("write_s", "#2ca02c")):
            v = [(summ[(f["label"], cfg)]["api"].get(key) or 0) / (f["points"] / 1e6) for f in files]
            ax.bar(off, v, wd * 0.9, bottom=bottom, color=col, label=key[:-2] if c == 0 else None,
                   edgecolor="black", linewidth=0.3)
            bottom = [b + y for b, y in zip(bottom, v)]
        for o, b in zip(off, bottom):
            ax.annotate(f"{cfg[1]}t" if cfg[0] == "cpu" else f"{cfg[0]}", (o, b), ha="center", va="bottom",
                        fontsize=7)
    ax.set_ylabel("seconds per million points, median")
    ax.set_title("phases per configuration")
    ax.set_xticks(list(xs), labels)
    ax.legend(fontsize=7)
    ax = axes[2]
    top = TARGET_RSS_MIB
    for c, cfg in enumerate(cfgs):
        off = [x - 0.4 + wd * (c + 0.5) for x in xs]
        v = [summ[(f["label"], cfg)]["api"].get("peak_rss_mib") or 0 for f in files]
        bars = ax.bar(off, v, wd, label=cfg_name(*cfg))
        for b in bars:
            if b.get_height():
                ax.annotate(f"{b.get_height():.0f}", (b.get_x() + b.get_width() / 2, b.get_height()),
                            ha="center", va="bottom", fontsize=7)
        top = max([top] + v)
    ax.axhline(TARGET_RSS_MIB, color="red", ls="--", lw=1, label=f"target 1.5 GB ({TARGET_RSS_MIB:.0f} MiB)")
    ax.set_ylim(0, 1.3 * top)
    ax.set_ylabel("peak RSS of the process (MiB)")
    ax.set_title("peak RSS vs file size")
    ax.set_xticks(list(xs), labels)
    ax.legend(fontsize=7, loc="upper left")
    m = res["machine"]
    fig.suptitle(f"sparseconv classify, {res['model_kind']} model; {m['cpu']}, {m['cores']} cores"
                 + (f", {m['gpu']}" if m.get("gpu") else "") + f"; torch {m['torch']}; other load at start "
                 f"{m['other_load_at_start']:.2f} cores" + (f"; {' '.join(res['env'])}" if res["env"] else ""),
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)


def run_parent(args) -> int:
    import torch

    try:
        from tqdm import tqdm
    except ImportError:
        def tqdm(it=None, **kw):
            return it

    t_start = time.perf_counter()
    facts = machine_facts()
    try:
        with open("/proc/loadavg") as f:
            la = f.read().strip()
    except OSError:
        la = "?"
    has_cuda = torch.cuda.is_available()
    facts.update(torch=torch.__version__, loadavg_at_start=la,
                 gpu=torch.cuda.get_device_name(0) if has_cuda else None)
    facts["other_load_at_start"] = round(foreign_load(1.0), 2)
    threads = args.threads or [torch.get_num_threads()]
    configs = [(d, t) for d in args.device for t in threads]
    not_run = []
    if not has_cuda and any(d.startswith("cuda") for d in args.device):
        configs = [c for c in configs if not c[0].startswith("cuda")]
        gpu_cmd = ("python benchmarks/classify_throughput.py --device cpu cuda --threads "
                   f"{' '.join(map(str, threads))} --sizes 1M 5M 20M --no-cli")
        not_run.append(f"--device cuda: not run, torch sees no CUDA device on this machine. On a GPU host: `{gpu_cmd}` "
                       f"(target: >= {TARGET_GPU_PPS:,} points/s on the 20M file, faster than --device cpu above "
                       "1M points).")
    print(f"[throughput] {facts['cpu']}, {facts['cores']} cores, torch {facts['torch']}; configurations: "
          f"{', '.join(cfg_name(*c) for c in configs) or 'none'}; other load {facts['other_load_at_start']:.2f} "
          f"cores (loadavg {facts['loadavg_at_start']})", file=sys.stderr)
    for note in not_run:
        print(f"[throughput] {note}", file=sys.stderr)
    files = []
    for n in args.sizes:
        meta = build_file(n, args.density, args.seed, tqdm)
        meta.update(path=str(CACHE / f"airborne_{label(n)}.laz"), label=label(n), target=n)
        files.append(meta)
        print(f"[throughput] {Path(meta['path']).name}: {meta['points']:,} points "
              f"({'cached' if meta['cached'] else 'built in %.0f s' % meta['seconds']})", file=sys.stderr)
    model, desc = model_path(args)
    kind = "given" if args.model else "pretrained" if "pretrained" in desc else "random-init"
    print(f"[throughput] model: {desc}", file=sys.stderr)

    reps = {f["label"]: args.repeats or (3 if f["target"] <= 2_000_000 else 2) for f in files}
    if args.quick:
        reps = {lab: 1 for lab in reps}
    jobs = [] if args.no_api else [(f, "api", cfg, r) for r in range(max(reps.values(), default=0)) for f in files
                                   for cfg in configs if r < reps[f["label"]]]
    if not args.no_cli:
        jobs += [(f, "cli", cfg, r) for r in range(args.cli_repeats) for f in files for cfg in configs]
    folder = folder_of_links(files[0], args.folder) if args.folder else None
    if folder:
        jobs += [(files[0], "dir", cfg, 0) for cfg in configs]
    runs, skipped = [], []
    bar = tqdm(jobs, desc="runs", file=sys.stderr)
    est = {}  # seconds per point seen so far, for --budget
    for f, mode, (device, nt), rep in bar:
        what = f"{mode} {f['label']} {cfg_name(device, nt)} #{rep}"
        if hasattr(bar, "set_postfix_str"):
            bar.set_postfix_str(what)
        points = f["points"] * (args.folder if mode == "dir" else 1)
        guess = est.get(mode, est.get("api", 0.0)) * points
        if time.perf_counter() - t_start + guess > args.budget:
            skipped.append(f"{what} (expected {guess:.0f} s, past --budget {args.budget:.0f} s)")
            continue
        idle = wait_idle(args.idle_wait, 0.3)
        if mode == "api":
            r = run_api(args, f["path"], model, device, nt)
        else:
            r = run_cli(args, folder if mode == "dir" else f["path"], model, points, device, nt)
        r.update(size_label=f["label"], mode=mode, device=device, threads=nt, repeat=rep, idle_before=idle)
        if r["status"] != "ok":
            print(f"[throughput] {what}: {r['status']}\n{r.get('stderr', '')[-2000:]}", file=sys.stderr)
        else:
            est[mode] = max(est.get(mode, 0.0), r["wall_s"] / points)
            print(f"[throughput] {what}: {r['wall_s']:.1f} s, {r['points_per_s']:,.0f} points/s, peak RSS "
                  f"{r['peak_rss_mib']:.0f} MiB, cores used {r['cores_used']:.2f}, other load "
                  f"{r['other_load_cores']:.2f} cores", file=sys.stderr)
        runs.append(r)
    summary = {}
    for f in files:
        for cfg in configs:
            mine = [r for r in runs if r["size_label"] == f["label"] and (r["device"], r["threads"]) == cfg]
            key = f"{f['label']}|{cfg_name(*cfg)}"
            summary[key] = {"api": summarize([r for r in mine if r["mode"] == "api"])}
            cli_runs = [r for r in mine if r["mode"] == "cli"]
            if cli_runs:
                summary[key]["cli"] = {**summarize(cli_runs), "cli_line": cli_runs[0].get("cli_line", "")}
    folder_rows = []
    for cfg in configs:
        dir_runs = [r for r in runs if r["mode"] == "dir" and (r["device"], r["threads"]) == cfg]
        if dir_runs:
            folder_rows.append((cfg, {**summarize(dir_runs), "cli_line": dir_runs[0].get("cli_line", "")}))
    out_dir = Path(args.out_dir) if args.out_dir else HERE / "results"
    stem = out_dir / ("classify_throughput_quick" if args.quick else "classify_throughput")
    profile = None
    if args.profile:
        f = files[0]
        ppath = out_dir / "classify_throughput_profile.txt"
        print(f"[throughput] cProfile of classify_file on {f['label']} (1 thread) ...", file=sys.stderr)
        out_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=".classify_throughput_profile.", suffix=".txt")
        os.close(fd)
        wait_idle(args.idle_wait, 0.3)
        r = run_api(args, f["path"], model, "cpu", 1, profile_out=tmp)
        if r["status"] == "ok":
            os.chmod(tmp, 0o644)
            os.replace(tmp, ppath)
            profile = {"file": f"{f['label']} ({f['points']:,} points)", "path": str(ppath.relative_to(ROOT))
                       if ppath.is_relative_to(ROOT) else str(ppath), "breakdown": r["breakdown"],
                       "wall_s": r["wall_s"], "other_load_cores": r["other_load_cores"]}
        else:
            os.remove(tmp)
            skipped.append(f"profile: {r['status']}")
    res = {"machine": facts, "files": files, "runs": runs, "summary": summary, "skipped": skipped,
           "not_run": not_run, "model_desc": desc, "model_kind": kind, "profile": profile, "env": args.env or [],
           "configs_run": configs, "devices_run": sorted({d for d, _ in configs}), "threads": threads,
           "folder": folder_rows, "idle_wait": args.idle_wait, "cli_repeats": args.cli_repeats,
           "folder_desc": f"folder of {args.folder} x {files[0]['label']} ({args.folder * files[0]['points']:,} "
                          "points)" if args.folder else "",
           "command": " ".join(["python", "benchmarks/classify_throughput.py"] + sys.argv[1:]),
           "runtime_s": time.perf_counter() - t_start}
    text = report(res)
    print(text)
    write_atomic(stem.with_suffix(".md"), lambda t: Path(t).write_text(text))
    write_atomic(stem.with_suffix(".csv"), lambda t: Path(t).write_text(to_csv(res)))
    if any(s["api"].get("n") for s in summary.values()):
        write_atomic(stem.with_suffix(".png"), lambda t: plot(res, t))
    print(f"written: {stem}.md, {stem}.csv, {stem}.png ({time.perf_counter() - t_start:.0f} s in all)")
    return 0 if all(r["status"] == "ok" for r in runs) else 1


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="the 1M file once (+ CLI once)")
    ap.add_argument("--sizes", nargs="+", type=parse_count, help="target points per file (default 1M 5M; "
                                                                  "--quick: 1M)")
    ap.add_argument("--repeats", type=int,
                    help="classify_file runs per file and configuration (default 3 up to 2M points, 2 above)")
    ap.add_argument("--threads", nargs="+", type=int,
                    help="thread counts, one configuration each (default: torch's thread count)")
    ap.add_argument("--device", nargs="+", default=["cpu"], help="devices, one configuration each: cpu cuda "
                                                                 "(cuda without a CUDA device: reported, not run)")
    ap.add_argument("--folder", type=int, metavar="K", help="also run the command on a folder of K links to the "
                                                            "smallest file (many files)")
    ap.add_argument("--model",
                    help="checkpoint (default: shipped pretrained, else random-init default config)")
    ap.add_argument("--no-cli", action="store_true", help="skip the command-line runs")
    ap.add_argument("--cli-repeats", type=int, default=1,
                    help="command-line runs per file and configuration, alternated (default 1; medians reported)")
    ap.add_argument("--no-api", action="store_true", help="skip the classify_file runs (the command line only)")
    ap.add_argument("--profile", action="store_true", help="cProfile classify_file (1 thread) on the smallest file")
    ap.add_argument("--env", action="append", metavar="KEY=VALUE",
                    help="environment variable for the children (repeatable), e.g. OMP_WAIT_POLICY=PASSIVE")
    ap.add_argument("--density", type=float, default=8.0, help="pulses per m2 of the generated tiles")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--budget", type=float, help="seconds; later runs are skipped past it (default 300 with "
                                                 "--quick, 3600 otherwise)")
    ap.add_argument("--idle-wait", type=float, default=60.0,
                    help="seconds to wait before each run for other processes to use under 0.3 cores")
    ap.add_argument("--child-timeout", type=float, default=900.0, help="seconds one child may take")
    ap.add_argument("--out-dir", help="where the .csv/.md/.png go (default benchmarks/results)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--src", help=argparse.SUPPRESS)
    ap.add_argument("--dst", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    ap.add_argument("--profile-out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        args.threads, args.device = args.threads[0], args.device[0]
        run_child(args)
        return 0
    if args.sizes is None:
        args.sizes = [1_000_000] if args.quick else [1_000_000, 5_000_000]
    args.sizes = sorted(set(args.sizes))
    if args.budget is None:
        args.budget = 300.0 if args.quick else 3600.0
    if (args.repeats is not None and args.repeats < 1) or args.cli_repeats < 1 or min(args.sizes) < 10_000:
        ap.error("--repeats and --cli-repeats must be >= 1 and --sizes >= 10k points")
    if args.threads and min(args.threads) < 1:
        ap.error("--threads must be >= 1")
    if args.folder is not None and args.folder < 2:
        ap.error("--folder must be >= 2")
    return run_parent(args)


if __name__ == "__main__":
    sys.exit(main())
