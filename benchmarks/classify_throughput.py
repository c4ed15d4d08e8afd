#!/usr/bin/env python
"""End-to-end classification throughput: points/s and peak RSS of ``sparseconv.lidar.classify_file`` on
generated airborne LAZ files of about 1M and 5M points (issue 5, "Targets": >= 200,000 points/s end to end,
read + voxelize + network + write, and peak RSS under 2 GB whatever the file size).

Input files are built once and cached under ``benchmarks/results/throughput/`` (reused while their
parameters match): a grid of ``sparseconv.data.airborne.generate_tile`` tiles (100-200 m sides, one seed
each, origins laid edge to edge so the tiles form one contiguous area, density --density pulses/m2) streamed
tile by tile into one LAZ through laspy's writer, so generation never holds more than one tile.

Each measurement runs in a fresh child process: imports torch and sparseconv, loads the model
(``sparseconv/models/pretrained/lidar_unet.pt`` when it exists, else a randomly initialised model of the
default training config, saved once as a checkpoint next to the inputs; ``--model PATH`` overrides), then
calls ``classify_file(src, dst, model, config, overwrite=True, progress=False)`` and reports its wall time,
the per-phase seconds it returns (read, classify, write), its own CPU seconds and the process's peak RSS
(VmHWM: the whole process, imports and model included). The command line (``python -m sparseconv.cli
classify IN -o OUT --overwrite --quiet``) is timed once per size as well: wall time of the whole command
(interpreter start and imports included) and its peak RSS (wait4). Repeats alternate between sizes; figures
are medians, peak RSS the largest seen. Targets: PASS/MISS per size (median points/s, largest peak RSS).

The machine is shared: every run records ``other_load`` (cores other processes kept busy meanwhile, from
/proc/stat minus the child's own CPU time) and the 1-minute load average at its start. Throughput measured
under load is pessimistic; "cores used" (child CPU s / wall s) shows how much of the 2 cores the child got.
With more torch threads than free cores, OpenMP's spin-waiting slows every parallel op several-fold;
``--env OMP_WAIT_POLICY=PASSIVE`` (or ``--threads 1``) shows the difference.

Writes ``classify_throughput[_quick].{csv,md,png}`` under benchmarks/results/ atomically; ``--profile`` also
writes ``classify_throughput_profile.txt`` (cProfile of classify_file on the smallest file, its own child).

    .venv/bin/python benchmarks/classify_throughput.py --quick      # 1M once (+ CLI): < 2 min once cached
    .venv/bin/python benchmarks/classify_throughput.py              # 1M x3, 5M x2, CLI once each
    .venv/bin/python benchmarks/classify_throughput.py --profile    # ... plus the cProfile breakdown
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
import time
from pathlib import Path
from statistics import median

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))
from bench_conv import _status_mib as status_mib  # noqa: E402
from bench_conv import children_cpu_s, cpu_busy_s, foreign_load, machine_facts  # noqa: E402
from compare_peers import write_atomic  # noqa: E402

TARGET_PPS = 200_000
TARGET_RSS_MIB = 2048.0
CACHE = HERE / "results" / "throughput"
RETURNS_PER_PULSE = 1.13  # returns per pulse of generate_tile (1.0-1.4 by scene; ~9 per m2 at density 8)
FILE_FORMAT = 1  # bump when the way files are built changes (invalidates the cache)
CSV_FIELDS = ["size_label", "points", "mode", "repeat", "status", "wall_s", "read_s", "classify_s", "write_s",
              "points_per_s", "peak_rss_mib", "rss_before_mib", "cpu_s", "cores_used", "other_load_cores",
              "loadavg_1m", "threads", "model"]


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

    if args.threads:
        torch.set_num_threads(args.threads)
    import sparseconv.lidar as L

    model, config, _ = L.load_checkpoint(args.model)
    rss_before = status_mib("VmRSS")
    t_import = time.perf_counter() - t_start
    prof = None
    if args.profile_out:
        import cProfile

        prof = cProfile.Profile()
    c0, t0 = time.process_time(), time.perf_counter()
    if prof:
        prof.enable()
    r = L.classify_file(args.src, args.dst, model, config, overwrite=True, progress=False)
    if prof:
        prof.disable()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    import laspy

    with laspy.open(args.dst) as f:
        written = int(f.header.point_count)
    out = {"points": r["points"], "written": written, "wall_s": wall, "cpu_s": cpu, "seconds": r["seconds"],
           "classes": {str(k): v for k, v in r["classes"].items()}, "peak_rss_mib": status_mib("VmHWM"),
           "rss_before_mib": rss_before, "import_s": t_import, "threads": torch.get_num_threads()}
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
    ("import torch._dynamo (first custom_op call)", "torch/_dynamo/__init__.py", "<module>"),
    ("read pass: laspy read + LAZ decompress", "sparseconv/io/las.py", "read_chunks"),
    ("read pass: record_arrays (laspy -> numpy)", "sparseconv/lidar/source.py", "record_arrays"),
    ("read pass: window_members (block spill)", "sparseconv/lidar/windows.py", "window_members"),
    ("read pass: _Spill.append (records to disk)", "sparseconv/lidar/classify.py", "append"),
    ("classify: _Spill.load", "sparseconv/lidar/classify.py", "load"),
    ("classify: height_above_ground (per block)", "sparseconv/lidar/features.py", "height_above_ground"),
    ("classify: make_batch (voxelize + features)", "sparseconv/lidar/windows.py", "make_batch"),
    ("  make_batch: voxelize", "sparseconv/voxelize.py", "voxelize"),
    ("  make_batch: point_features", "sparseconv/lidar/features.py", "point_features"),
    ("classify: _predict (network + softmax)", "sparseconv/lidar/classify.py", "_predict"),
    ("  PointSegNet.forward", "sparseconv/lidar/model.py", "forward"),
    ("  SparseUNet.forward", "sparseconv/models/unet.py", "forward"),
    ("write pass: write_classified", "sparseconv/io/las.py", "write_classified"),
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


def child_env(args) -> dict:
    env = dict(os.environ)
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    for kv in args.env or []:
        k, _, v = kv.partition("=")
        env[k] = v
    return env


def _measure(cmd, timeout, env):
    """Runs cmd; (rc, stdout, stderr, wall s, child CPU s, other processes' load in cores, loadavg)."""
    b0, c0, la = cpu_busy_s(), children_cpu_s(), loadavg()
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
        err += f"\ntimed out after {timeout:.0f} s (--child-timeout)"
    wall = time.perf_counter() - t0
    ccpu = children_cpu_s() - c0
    other = max(0.0, ((cpu_busy_s() - b0) - ccpu) / wall)
    return p.returncode, out, err, wall, ccpu, other, la


def run_api(args, src: str, model: str, profile_out: str | None = None) -> dict:
    with tempfile.TemporaryDirectory(dir=CACHE, prefix=".run-") as tmp:
        res = Path(tmp) / "result.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--src", src,
               "--dst", str(Path(tmp) / "out.laz"), "--model", model, "--result", str(res)]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        if profile_out:
            cmd += ["--profile-out", profile_out]
        rc, out, err, wall, ccpu, other, la = _measure(cmd, args.child_timeout, child_env(args))
        if rc != 0 or not res.exists():
            return {"status": f"failed (exit {rc}): {(err.strip().splitlines() or ['?'])[-1]}", "stderr": err,
                    "other_load_cores": other, "loadavg_1m": la}
        r = json.loads(res.read_text())
    r.update(status="ok" if r["written"] == r["points"] else f"wrote {r['written']} of {r['points']} points",
             other_load_cores=other, loadavg_1m=la, points_per_s=r["points"] / r["wall_s"],
             cores_used=r["cpu_s"] / r["wall_s"], process_wall_s=wall)
    return r


def run_cli(args, src: str, model: str, points: int) -> dict:
    """`python -m sparseconv.cli classify` as a user runs it: whole-command wall time and peak RSS."""
    with tempfile.TemporaryDirectory(dir=CACHE, prefix=".cli-") as tmp:
        cmd = [sys.executable, "-m", "sparseconv.cli", "classify", src, "-o", str(Path(tmp) / "out.laz"),
               "--overwrite", "--quiet"]
        if not model.endswith(os.path.join("pretrained", "lidar_unet.pt")) or args.model:
            cmd += ["--model", model]
        env = child_env(args)
        b0, la, t0 = cpu_busy_s(), loadavg(), time.perf_counter()
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT, env=env)
        _, st, ru = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t0
        out, err = (s.read().decode(errors="replace") for s in (p.stdout, p.stderr))
        p.stdout.close()
        p.stderr.close()
        p.returncode = os.waitstatus_to_exitcode(st)
        ok = p.returncode == 0 and (Path(tmp) / "out.laz").exists()
    cpu = ru.ru_utime + ru.ru_stime
    other = max(0.0, ((cpu_busy_s() - b0) - cpu) / wall)
    r = {"status": "ok" if ok else f"failed (exit {p.returncode}): {(err.strip().splitlines() or ['?'])[-1]}",
         "points": points, "wall_s": wall, "cpu_s": cpu, "cores_used": cpu / wall,
         "points_per_s": points / wall,
         "peak_rss_mib": ru.ru_maxrss / 1024.0, "other_load_cores": other, "loadavg_1m": la,
         "stdout": out.strip()}
    line = next((x for x in out.splitlines() if "points/s" in x), "")
    r["cli_line"] = line.strip()
    return r


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
    s["peak_rss_mib"] = max(r["peak_rss_mib"] for r in ok)
    s["rss_before_mib"] = max((r.get("rss_before_mib") or 0) for r in ok) or None
    s["min_pps"], s["max_pps"] = min(r["points_per_s"] for r in ok), max(r["points_per_s"] for r in ok)
    return s


def verdict(s: dict) -> str:
    if not s.get("n"):
        return "n/a"
    a = "PASS" if s["points_per_s"] >= TARGET_PPS else "MISS"
    b = "PASS" if s["peak_rss_mib"] < TARGET_RSS_MIB else "MISS"
    return f"{a} / {b}"


def report(res: dict) -> str:
    buf = io.StringIO()

    def w(s=""):
        print(s, file=buf)

    m = res["machine"]
    w("## classify_file throughput (benchmarks/classify_throughput.py)")
    w()
    w(f"- CPU: {m['cpu']}, {m['cores']} cores ({', '.join(m['simd']) or 'no AVX'}), {m['mem_gib']} GiB; "
      f"torch {m['torch']}, {m['threads']} torch threads in the children; python {m['python']}")
    w(f"- other processes' CPU load at start: {m['other_load_at_start']:.2f} cores "
      f"(loadavg {m['loadavg_at_start']}); busy machine => pessimistic throughput")
    w(f"- model: {res['model_desc']}")
    if res["env"]:
        w(f"- children's environment: {' '.join(res['env'])}")
    w(f"- command: {res['command']}")
    w(f"- targets (issue 5): >= {TARGET_PPS:,} points/s end to end, peak RSS < {TARGET_RSS_MIB:.0f} MiB "
      "at any file size")
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
    w()
    w("classify_file in a fresh process (medians; peak RSS = largest VmHWM of the process, imports and model "
      "included):")
    w()
    w("| file | runs | end to end | points/s | read | classify | write | peak RSS | RSS before | "
      "cores used | points per CPU-s | other load | target (pts/s / RSS) |")
    w("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for f in res["files"]:
        s = res["summary"][f["label"]]["api"]
        if not s.get("n"):
            w(f"| {f['label']} | 0 | failed | | | | | | | | | | n/a |")
            continue
        rng = f" ({fmt(s['min_pps'])}-{fmt(s['max_pps'])})" if s["n"] > 1 else ""
        w(f"| {f['label']} ({s['points']:,}) | {s['n']} | {s['wall_s']:.1f} s | "
          f"{fmt(s['points_per_s'])}{rng} | "
          f"{s['read_s']:.1f} s | {s['classify_s']:.1f} s | {s['write_s']:.1f} s | "
          f"{s['peak_rss_mib']:.0f} MiB | {fmt(s['rss_before_mib'], 0)} MiB | {s['cores_used']:.2f} | "
          f"{fmt(s['points'] / s['cpu_s'])} | {s['other_load_cores']:.2f} cores | {verdict(s)} |")
    busy = max((r.get("other_load_cores", 0.0) for r in res["runs"]), default=0.0)
    if busy > 0.3:
        w()
        w(f"Other processes kept up to {busy:.2f} cores busy during the runs: the children got only the "
          "'cores used' share of the CPU, so points/s is pessimistic. With more torch threads than free "
          "cores, OpenMP's spin-waiting makes it worse (try --env OMP_WAIT_POLICY=PASSIVE or --threads 1). "
          "'points per CPU-s' (points / the child's CPU seconds) bounds what one idle core would give; rerun "
          "on a quiet machine for the target verdict.")
    cli = [(f["label"], res["summary"][f["label"]].get("cli")) for f in res["files"]]
    cli = [(lab, s) for lab, s in cli if s]
    if cli:
        w()
        w("Command line, once per file (`python -m sparseconv.cli classify IN -o OUT --overwrite --quiet`; "
          "wall time of the whole command, interpreter start and imports included):")
        w()
        w("| file | wall | points/s | peak RSS | cores used | other load | target | CLI's own line |")
        w("|---|---|---|---|---|---|---|---|")
        for lab, s in cli:
            if not s.get("n"):
                w(f"| {lab} | failed | | | | | n/a | |")
                continue
            line = s.get("cli_line", "")
            line = line.split(": ", 1)[-1] if line else ""
            w(f"| {lab} | {s['wall_s']:.1f} s | {fmt(s['points_per_s'])} | {s['peak_rss_mib']:.0f} MiB | "
              f"{s['cores_used']:.2f} | {s['other_load_cores']:.2f} cores | {verdict(s)} | {line} |")
    api = [res["summary"][f["label"]]["api"] for f in res["files"]]
    api = [s for s in api if s.get("n")]
    if len(api) > 1:
        lo, hi = api[0], api[-1]
        w()
        w(f"Peak RSS {lo['peak_rss_mib']:.0f} MiB at {label(lo['points'])} points -> "
          f"{hi['peak_rss_mib']:.0f} MiB at {label(hi['points'])} "
          f"({hi['peak_rss_mib'] / lo['peak_rss_mib']:.2f}x for {hi['points'] / lo['points']:.1f}x the "
          "points); "
          f"throughput {hi['points_per_s'] / lo['points_per_s']:.2f}x.")
    if res["skipped"]:
        w()
        w("Skipped: " + "; ".join(res["skipped"]))
    failed = [r for r in res["runs"] if r["status"] != "ok"]
    if failed:
        w()
        w("Failed runs: " + "; ".join(f"{r['mode']} {r['size_label']} run {r['repeat']}: {r['status']}"
                                      for r in failed))
    if res.get("profile"):
        w()
        w(f"cProfile of classify_file on {res['profile']['file']} (its own child; profiling overhead "
          f"included; full listing in {res['profile']['path']}):")
        w()
        w("| where | cumulative s | share | calls |")
        w("|---|---|---|---|")
        for b in res["profile"]["breakdown"]:
            w(f"| {b['what']} | {b['seconds']:.2f} | {100 * b['share']:.0f}% | {b['calls']} |")
    overall = [verdict(s) for s in api]
    w()
    w(f"Overall: {'PASS' if api and all(v == 'PASS / PASS' for v in overall) else 'MISS'} "
      f"({', '.join('%s: %s' % (label(s['points']), v) for s, v in zip(api, overall))}); "
      f"{res['runtime_s']:.0f} s in all.")
    return buf.getvalue()


def to_csv(res: dict) -> str:
    buf = io.StringIO()
    wr = csv.DictWriter(buf, fieldnames=CSV_FIELDS)
    wr.writeheader()
    for r in res["runs"]:
        sec = r.get("seconds", {})
        wr.writerow({
            "size_label": r["size_label"], "points": r.get("points", ""), "mode": r["mode"],
            "repeat": r["repeat"], "status": r["status"],
            **{k: (f"{r[k]:.4g}" if isinstance(r.get(k), float) else r.get(k, "")) for k in
               ("wall_s", "points_per_s", "peak_rss_mib", "rss_before_mib", "cpu_s", "cores_used",
                "other_load_cores", "loadavg_1m")},
            "read_s": f"{sec['read']:.4g}" if "read" in sec else "",
            "classify_s": f"{sec['classify']:.4g}" if "classify" in sec else "",
            "write_s": f"{sec['write']:.4g}" if "write" in sec else "",
            "threads": r.get("threads", res["machine"]["threads"]), "model": res["model_kind"],
        })
    return buf.getvalue()


def plot(res: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = [f for f in res["files"] if res["summary"][f["label"]]["api"].get("n")]
    labels = [f"{f['label']}\n{f['points'] / 1e6:.2f}M pts" for f in files]
    xs = range(len(files))
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.2))
    ax = axes[0]
    api = [res["summary"][f["label"]]["api"] for f in files]
    cli = [res["summary"][f["label"]].get("cli") or {} for f in files]
    wd = 0.38
    b1 = ax.bar([x - wd / 2 for x in xs], [s["points_per_s"] / 1e3 for s in api], wd, label="classify_file")
    b2 = ax.bar([x + wd / 2 for x in xs], [(s.get("points_per_s") or 0) / 1e3 for s in cli], wd,
                label="CLI (whole command)")
    for bars in (b1, b2):
        for b in bars:
            if b.get_height():
                ax.annotate(f"{b.get_height():.0f}k", (b.get_x() + b.get_width() / 2, b.get_height()),
                            ha="center", va="bottom", fontsize=8)
    ax.axhline(TARGET_PPS / 1e3, color="red", ls="--", lw=1, label="target 200k")
    ax.set_ylim(0, 1.3 * max([TARGET_PPS / 1e3] + [b.get_height() for b in list(b1) + list(b2)]))
    ax.set_ylabel("points/s (thousands), median")
    ax.set_title("end-to-end throughput")
    ax.set_xticks(list(xs), labels)
    ax.legend(fontsize=8, loc="upper left")
    ax = axes[1]
    bottom = [0.0] * len(files)
    for key, col in (("read_s", "#1f77b4"), ("classify_s", "#ff7f0e"), ("write_s", "#2ca02c")):
        v = [s[key] / (s["points"] / 1e6) for s in api]
        ax.bar(list(xs), v, 0.6, bottom=bottom, color=col, label=key[:-2])
        bottom = [b + y for b, y in zip(bottom, v)]
    ax.axhline(1e6 / TARGET_PPS, color="red", ls="--", lw=1, label="target (5 s / M)")
    ax.set_ylabel("seconds per million points, median")
    ax.set_title("classify_file phases")
    ax.set_xticks(list(xs), labels)
    ax.legend(fontsize=8)
    ax = axes[2]
    b1 = ax.bar([x - wd / 2 for x in xs], [s["peak_rss_mib"] for s in api], wd, label="classify_file process")
    b2 = ax.bar([x + wd / 2 for x in xs], [s.get("peak_rss_mib") or 0 for s in cli], wd, label="CLI")
    for bars in (b1, b2):
        for b in bars:
            if b.get_height():
                ax.annotate(f"{b.get_height():.0f}", (b.get_x() + b.get_width() / 2, b.get_height()),
                            ha="center", va="bottom", fontsize=8)
    ax.axhline(TARGET_RSS_MIB, color="red", ls="--", lw=1, label="target 2048 MiB")
    ax.set_ylim(0, 1.3 * max([TARGET_RSS_MIB] + [b.get_height() for b in list(b1) + list(b2)]))
    ax.set_ylabel("peak RSS (MiB)")
    ax.set_title("peak RSS vs file size")
    ax.set_xticks(list(xs), labels)
    ax.legend(fontsize=8, loc="upper left")
    m = res["machine"]
    fig.suptitle(f"sparseconv classify_file, {res['model_kind']} model; {m['cpu']}, {m['threads']} threads, "
                 f"torch {m['torch']}; other load at start {m['other_load_at_start']:.2f} cores"
                 + (f"; {' '.join(res['env'])}" if res["env"] else ""), fontsize=9)
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
    facts.update(torch=torch.__version__, threads=args.threads or torch.get_num_threads(),
                 loadavg_at_start=la)
    facts["other_load_at_start"] = round(foreign_load(1.0), 2)
    print(f"[throughput] {facts['cpu']}, {facts['cores']} cores, torch {facts['torch']}, {facts['threads']} "
          f"threads; other load {facts['other_load_at_start']:.2f} cores "
          f"(loadavg {facts['loadavg_at_start']})", file=sys.stderr)
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
    jobs = [(f, "api", r) for r in range(max(reps.values())) for f in files if r < reps[f["label"]]]
    if not args.no_cli:
        jobs += [(f, "cli", 0) for f in files]
    runs, skipped = [], []
    bar = tqdm(jobs, desc="runs", file=sys.stderr)
    est = {}  # seconds per point seen so far, for --budget
    for f, mode, rep in bar:
        if hasattr(bar, "set_postfix_str"):
            bar.set_postfix_str(f"{mode} {f['label']} #{rep}")
        guess = est.get(mode, est.get("api", 0.0)) * f["points"]
        if time.perf_counter() - t_start + guess > args.budget:
            skipped.append(f"{mode} {f['label']} run {rep} (expected {guess:.0f} s, "
                           f"past --budget {args.budget:.0f} s)")
            continue
        r = run_api(args, f["path"], model) if mode == "api" else run_cli(args, f["path"], model, f["points"])
        r.update(size_label=f["label"], mode=mode, repeat=rep)
        if r["status"] != "ok":
            print(f"[throughput] {mode} {f['label']} run {rep}: {r['status']}\n{r.get('stderr', '')[-2000:]}",
                  file=sys.stderr)
        else:
            est[mode] = max(est.get(mode, 0.0), r["wall_s"] / f["points"])
            print(f"[throughput] {mode} {f['label']} run {rep}: {r['wall_s']:.1f} s, "
                  f"{r['points_per_s']:,.0f} points/s, peak RSS {r['peak_rss_mib']:.0f} MiB, "
                  f"other load {r['other_load_cores']:.2f} cores", file=sys.stderr)
        if args.other_load_warn and r.get("other_load_cores", 0) > args.other_load_warn:
            print(f"[throughput] warning: other processes kept {r['other_load_cores']:.2f} cores busy during "
                  f"{mode} {f['label']} run {rep}: its throughput is pessimistic", file=sys.stderr)
        runs.append(r)
    summary = {}
    for f in files:
        mine = [r for r in runs if r["size_label"] == f["label"]]
        summary[f["label"]] = {"api": summarize([r for r in mine if r["mode"] == "api"])}
        cli_runs = [r for r in mine if r["mode"] == "cli"]
        if cli_runs:
            summary[f["label"]]["cli"] = {**summarize(cli_runs), "cli_line": cli_runs[0].get("cli_line", "")}
    out_dir = Path(args.out_dir) if args.out_dir else HERE / "results"
    stem = out_dir / ("classify_throughput_quick" if args.quick else "classify_throughput")
    profile = None
    if args.profile:
        f = files[0]
        ppath = out_dir / "classify_throughput_profile.txt"
        print(f"[throughput] cProfile of classify_file on {f['label']} ...", file=sys.stderr)
        out_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=".classify_throughput_profile.", suffix=".txt")
        os.close(fd)
        r = run_api(args, f["path"], model, profile_out=tmp)
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
           "model_desc": desc, "model_kind": kind, "profile": profile, "env": args.env or [],
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
    ap.add_argument("--quick", action="store_true", help="the 1M file once (+ CLI once): < 2 min once cached")
    ap.add_argument("--sizes", nargs="+", type=parse_count, help="target points per file (default 1M 5M; "
                                                                  "--quick: 1M)")
    ap.add_argument("--repeats", type=int,
                    help="classify_file runs per file (default 3 up to 2M points, 2 above)")
    ap.add_argument("--model",
                    help="checkpoint (default: shipped pretrained, else random-init default config)")
    ap.add_argument("--no-cli", action="store_true", help="skip the command-line run")
    ap.add_argument("--profile", action="store_true", help="cProfile classify_file on the smallest file")
    ap.add_argument("--threads", type=int, help="torch threads in the children (default: torch's default)")
    ap.add_argument("--env", action="append", metavar="KEY=VALUE",
                    help="environment variable for the children (repeatable), e.g. OMP_WAIT_POLICY=PASSIVE")
    ap.add_argument("--density", type=float, default=8.0, help="pulses per m2 of the generated tiles")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--budget", type=float, help="seconds; later runs are skipped past it (default 110 with "
                                                 "--quick, 1800 otherwise)")
    ap.add_argument("--child-timeout", type=float, default=900.0, help="seconds one child may take")
    ap.add_argument("--other-load-warn", type=float, default=0.3, help="warn when other processes use more "
                                                                       "cores than this during a run")
    ap.add_argument("--out-dir", help="where the .csv/.md/.png go (default benchmarks/results)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--src", help=argparse.SUPPRESS)
    ap.add_argument("--dst", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    ap.add_argument("--profile-out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        run_child(args)
        return 0
    if args.sizes is None:
        args.sizes = [1_000_000] if args.quick else [1_000_000, 5_000_000]
    args.sizes = sorted(set(args.sizes))
    if args.budget is None:
        args.budget = 110.0 if args.quick else 1800.0
    if (args.repeats is not None and args.repeats < 1) or min(args.sizes) < 10_000:
        ap.error("--repeats must be >= 1 and --sizes >= 10k points")
    return run_parent(args)


if __name__ == "__main__":
    sys.exit(main())
