#!/usr/bin/env python
"""Benchmark: submanifold 3x3x3 convolution (32 -> 32 channels, float32, CPU) on generated LiDAR scenes.

For each scene (``sparseconv.data.lidar_scene`` voxelized at 0.1 m) it measures, for sparseconv and, when it
is importable, for spconv 2.3.8 (the same voxels, the same weights):

* kernel map build (sparseconv: ``torch.ops.sparseconv.build_subm_map``; spconv: its indice-pair generation),
* forward with the kernel map cached, and forward on a fresh tensor (map built inside),
* forward + backward (input, weight and bias gradients) with the map cached and with the map built,
* achieved GFLOP/s (2 * pairs * Cin * Cout per forward, 3x that per forward + backward) next to torch.mm's
  GFLOP/s on a [pairs, Cin] @ [Cin, Cout] product (the same arithmetic as the conv, without gathers or
  scatters) and on a large square product, measured in the same run,
* peak resident memory over the timed runs (each library runs in its own subprocesses, so figures do not mix),
* the largest absolute difference between the two libraries' outputs and gradients.

spconv is timed as shipped (peers.py patches only the CUDA-stream call a CPU-only torch needs). Its
multi-threaded CPU scatter-add races, so the difference is taken against a separate, untimed spconv run with a
serial scatter-add (exact), and the as-shipped run's distance from that is reported too.

Each scene runs ``--rounds`` rounds, one child process per library per round, the order alternating between
rounds (sparseconv first in even rounds, spconv first in odd ones) so that a phase of load from elsewhere on
the machine does not fall on one library only. Every child times ``--repeats`` runs after ``--warmup`` runs;
times are medians over all rounds x repeats, peak RSS the largest of the rounds, outputs and differences come
from the first round. The script prints the machine facts, a markdown table (paste it into the README) and
saves a bar chart (``--out-png``). It asserts no time.

    python benchmarks/bench_conv.py                       # 50k and 200k voxels, 2 threads
    python benchmarks/bench_conv.py --voxels 20000 --repeats 3 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))  # peers.py

LIBS = ("sparseconv", "spconv")
PHASES = [  # (key, label, flops factor: forward = 1, forward + backward = 3; 0 = no flops)
    ("map", "kernel map build", 0),
    ("fwd_cached", "forward, map cached", 1),
    ("fwd_fresh", "forward incl. map build", 1),
    ("fwdbwd_cached", "forward+backward, map cached", 3),
    ("fwdbwd_fresh", "forward+backward incl. map build", 3),
]


# ------------------------------------------------------------------------------------------------------------
# small helpers
# ------------------------------------------------------------------------------------------------------------


def maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _status_mib(field: str, pid: str = "self"):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) so a later peak excludes import transients (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def rss_now_mib() -> float:
    v = _status_mib("VmRSS")
    return v if v is not None else maxrss_mib()


def rss_peak_mib() -> float:
    """Peak RSS since the last reset_peak_rss() (VmHWM), else since the start (getrusage maxrss)."""
    v = _status_mib("VmHWM")
    return v if v is not None else maxrss_mib()


def time_it(fn, repeats: int, warmup: int, setup=None) -> list[float]:
    """Seconds of each of `repeats` calls of fn(setup()) after `warmup` calls; setup() is not timed."""
    out = []
    for i in range(warmup + repeats):
        arg = setup() if setup is not None else None
        t0 = time.perf_counter()
        fn(arg)
        dt = time.perf_counter() - t0
        if i >= warmup:
            out.append(dt)
    return out


def machine_facts() -> dict:
    cpu = platform.processor() or "unknown"
    flags = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and not flags:
                    flags = line
    except OSError:
        pass
    mem = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal"):
                    mem = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    simd = [x for x in ("avx512f", "avx2", "fma") if f" {x} " in flags or flags.endswith(f" {x}\n")]
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "simd": simd,
        "mem_gib": mem,
        "python": platform.python_version(),
        "os": platform.platform(),
    }


def cpu_busy_s() -> float:
    """Machine-wide busy CPU seconds so far (all processes, from /proc/stat), or 0.0 where unavailable."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return 0.0
    user, nice, system, _idle, _iowait, irq, softirq, steal = (v + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def children_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def foreign_load(seconds: float = 1.0) -> float:
    """Cores kept busy by other processes over `seconds` while this one sleeps."""
    b0, t0 = cpu_busy_s(), time.perf_counter()
    time.sleep(seconds)
    return max(0.0, (cpu_busy_s() - b0) / (time.perf_counter() - t0))


def wait_idle(max_wait: float, threshold: float = 0.15) -> float:
    """Wait (up to max_wait s) until other processes use under `threshold` cores; returns the last load."""
    t_end = time.perf_counter() + max_wait
    load = foreign_load(1.0)
    while load > threshold and time.perf_counter() < t_end:
        load = foreign_load(1.0)
    return load


def fmt_ms(s):
    return "n/a" if s is None else (f"{s * 1e3:.1f}" if s * 1e3 < 100 else f"{s * 1e3:.0f}")


# ------------------------------------------------------------------------------------------------------------
# scene preparation (parent)
# ------------------------------------------------------------------------------------------------------------


def voxelize_scene(points, voxel_size):
    """(coords int32 [N, 4], spatial_shape, how) — sparseconv.voxelize when available, else NumPy."""
    import numpy as np
    import torch

    try:
        import sparseconv

        st, _ = sparseconv.voxelize(torch.from_numpy(points), None, voxel_size)
        coords = st.coords.to(torch.int32).contiguous()
        return coords, tuple(int(s) for s in st.spatial_shape), "sparseconv.voxelize"
    except (ImportError, AttributeError) as e:
        q = np.floor((points - points.min(0)) / np.float32(voxel_size)).astype(np.int64)
        q = np.unique(q, axis=0)  # sorted by (x, y, z)
        coords = np.concatenate([np.zeros((len(q), 1), np.int64), q], 1).astype(np.int32)
        return torch.from_numpy(coords), tuple(int(v) for v in q.max(0) + 1), f"numpy ({type(e).__name__})"


def make_data(coords, spatial_shape, cin: int, cout: int, seed: int) -> dict:
    """The inputs every library gets for one scene: features, weights [k0, k1, k2, Cin, Cout], bias, grad_out."""
    import torch

    n = coords.shape[0]
    g = torch.Generator().manual_seed(seed)
    return {
        "coords": coords,
        "spatial_shape": spatial_shape,
        "batch_size": 1,
        "feats": torch.randn(n, cin, generator=g),
        "weight": torch.randn(3, 3, 3, cin, cout, generator=g) / (27 * cin) ** 0.5,  # [k0, k1, k2, Cin, Cout]
        "bias": torch.randn(cout, generator=g) * 0.1,
        "grad_out": torch.randn(n, cout, generator=g),
    }


def prepare(target: int, args, workdir: Path) -> dict:
    import numpy as np  # noqa: F401
    import torch

    try:
        from sparseconv.data import lidar_scene
    except ImportError:  # sparseconv not built yet: load the generator straight from its file
        import importlib.util

        spec = importlib.util.spec_from_file_location("_scenes", ROOT / "sparseconv" / "data" / "scenes.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        lidar_scene = mod.lidar_scene

    t0 = time.perf_counter()
    points, _labels = lidar_scene(target, voxel_size=args.voxel_size, seed=args.seed)
    t_scene = time.perf_counter() - t0
    t0 = time.perf_counter()
    coords, spatial_shape, how = voxelize_scene(points, args.voxel_size)
    t_vox = time.perf_counter() - t0
    n = coords.shape[0]
    cin, cout = args.channels
    data = make_data(coords, spatial_shape, cin, cout, args.seed)
    path = workdir / f"scene_{target}.pt"
    torch.save(data, path)
    return {
        "target": target,
        "points": int(len(points)),
        "voxels": int(n),
        "spatial_shape": list(spatial_shape),
        "voxelizer": how,
        "t_scene_s": t_scene,
        "t_voxelize_s": t_vox,
        "path": str(path),
    }


# ------------------------------------------------------------------------------------------------------------
# library adapters (child)
# ------------------------------------------------------------------------------------------------------------


class SparseconvRunner:
    name = "sparseconv"

    def __init__(self, d, device="cpu"):
        """d: the scene's tensors (make_data), already on `device`."""
        import torch

        import sparseconv
        import sparseconv.nn as spnn

        self.torch, self.sc = torch, sparseconv
        self.d = d
        cin, cout = d["weight"].shape[3], d["weight"].shape[4]
        self.conv = spnn.SubMConv3d(cin, cout, 3, bias=True).to(device)
        with torch.no_grad():
            self.conv.weight.copy_(d["weight"])
            self.conv.bias.copy_(d["bias"])
        self.coords = d["coords"]
        self.cached = self.tensor(d["feats"])
        self.conv(self.cached)  # builds the map and leaves it in self.cached's cache

    def info(self):
        return {
            "version": str(getattr(self.sc, "__version__", "")),
            "build_info": _jsonable(self.sc.build_info()),
        }

    def tensor(self, feats):
        return self.sc.SparseTensor(
            feats, self.coords, spatial_shape=self.d["spatial_shape"], batch_size=self.d["batch_size"]
        )

    def with_cache(self, feats):
        """A tensor on the same sites that shares the cached kernel map (replace() keeps the cache)."""
        return self.cached.replace(feats)

    def build_map(self, _=None):
        return self.torch.ops.sparseconv.build_subm_map(self.coords, [3, 3, 3], [1, 1, 1])

    def pairs(self) -> int:
        return int((self.build_map() >= 0).sum())

    def forward(self, x):
        return self.conv(x).feats

    def weight_grad(self):
        return self.conv.weight.grad  # [k0, k1, k2, Cin, Cout]

    def bias_grad(self):
        return self.conv.bias.grad

    def zero_grad(self):
        self.conv.weight.grad = None
        self.conv.bias.grad = None


class SpconvRunner:
    name = "spconv"

    def __init__(self, d, device="cpu"):
        """d: the scene's tensors (make_data), already on `device`."""
        import peers
        import torch

        self.torch, self.peers = torch, peers
        if peers.load_spconv() is None:
            raise RuntimeError(f"spconv is not importable: {peers.spconv_error()}")
        self.d = d
        self.layer = peers.SpconvSubM(d["weight"], d["bias"])
        self.conv = self.layer.conv.to(device)
        self.coords = d["coords"].to(torch.int32).contiguous()
        self.indice_dict = self.build_map()

    def info(self):
        return {"version": self.peers.spconv_version()}

    def tensor(self, feats):
        return self.layer.tensor(feats, self.coords, self.d["spatial_shape"], self.d["batch_size"])

    def with_cache(self, feats):
        return self.layer.tensor(
            feats, self.coords, self.d["spatial_shape"], self.d["batch_size"], indice_dict=self.indice_dict
        )

    def build_map(self, _=None):
        return self.layer.build_map(self.coords, self.d["spatial_shape"], self.d["batch_size"])

    def pairs(self) -> int:
        return self.layer.pair_count(self.indice_dict)

    def forward(self, x):
        return self.layer(x).features

    def weight_grad(self):
        return self.conv.weight.grad.permute(1, 2, 3, 4, 0)  # [Cout, k0, k1, k2, Cin] -> ours

    def bias_grad(self):
        return self.conv.bias.grad

    def zero_grad(self):
        self.conv.weight.grad = None
        self.conv.bias.grad = None


def _jsonable(x):
    try:
        json.dumps(x)
        return x
    except TypeError:
        if isinstance(x, dict):
            return {str(k): _jsonable(v) for k, v in x.items()}
        return str(x)


def run_child(args) -> None:
    """One library on one scene: write timings, memory and outputs to --result / --out-tensors."""
    import torch

    torch.set_num_threads(args.threads)
    if args.only == "spconv":  # import the library before the memory baseline
        import peers

        peers.load_spconv()
    else:
        import sparseconv.nn  # noqa: F401
    d = torch.load(args.data)
    import gc

    gc.collect()
    reset = reset_peak_rss()
    rss_start = rss_now_mib()  # torch + library + the scene's tensors
    runner = {"sparseconv": SparseconvRunner, "spconv": SpconvRunner}[args.only](d)
    rss_ready = rss_now_mib()
    feats, grad_out = d["feats"], d["grad_out"]
    R, W = args.repeats, args.warmup
    res = {"lib": args.only, "threads": torch.get_num_threads(), "info": runner.info(), "times": {}}

    res["times"]["map"] = time_it(runner.build_map, R, W)

    with torch.no_grad():
        res["times"]["fwd_cached"] = time_it(
            lambda x: runner.forward(x), R, W, setup=lambda: runner.with_cache(feats)
        )
        res["times"]["fwd_fresh"] = time_it(
            lambda x: runner.forward(x), R, W, setup=lambda: runner.tensor(feats)
        )

    def fwdbwd(x):
        runner.forward(x).backward(grad_out)

    def leaf():
        runner.zero_grad()
        return feats.detach().requires_grad_(True)

    res["times"]["fwdbwd_cached"] = time_it(fwdbwd, R, W, setup=lambda: runner.with_cache(leaf()))
    res["times"]["fwdbwd_fresh"] = time_it(fwdbwd, R, W, setup=lambda: runner.tensor(leaf()))

    res["pairs"] = runner.pairs()
    res["rss_start_mib"] = rss_start
    res["rss_ready_mib"] = rss_ready
    res["rss_peak_mib"] = rss_peak_mib()  # of the timed runs: later rounds compute no outputs
    res["rss_peak_is_reset"] = reset
    if args.only == "spconv":
        res["omp_threads"] = runner.peers.omp_threads()

    def outputs():
        x_feats = leaf()
        out = runner.forward(runner.tensor(x_feats))
        out.backward(grad_out)
        return {
            "out": out.detach(),
            "grad_feats": x_feats.grad,
            "grad_weight": runner.weight_grad().detach(),
            "grad_bias": runner.bias_grad().detach(),
        }

    # Outputs and gradients for the cross-library comparison (untimed; first round only). spconv was timed
    # as shipped, but its multi-threaded scatter-add races (peers.py), so compare its serial-scatter result,
    # which is exact, and record how far the as-shipped result is from it.
    if args.out_tensors:
        if args.only == "spconv":
            with runner.peers.serial_scatter():
                ref = outputs()
            shipped = outputs()
            res["race_max_abs_diff"] = {k: float((shipped[k] - ref[k]).abs().max()) for k in ref}
        else:
            ref = outputs()
        torch.save(ref, args.out_tensors)
    Path(args.result).write_text(json.dumps(res))


# ------------------------------------------------------------------------------------------------------------
# parent
# ------------------------------------------------------------------------------------------------------------


def mm_gflops(rows: int, cin: int, cout: int, threads: int, repeats: int = 5) -> float:
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(rows, cin), torch.randn(cin, cout)
    out = torch.empty(rows, cout)
    t = median(time_it(lambda _: torch.mm(a, b, out=out), repeats, 2))
    return 2.0 * rows * cin * cout / t / 1e9


def square_mm_gflops(n: int, threads: int, repeats: int = 5) -> float:
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    out = torch.empty(n, n)
    t = median(time_it(lambda _: torch.mm(a, b, out=out), repeats, 2))
    return 2.0 * n**3 / t / 1e9


def available_libs(requested) -> dict:
    """lib -> None (usable) or the reason it is not."""
    out = {}
    for lib in requested:
        if lib == "sparseconv":
            try:
                import sparseconv

                sparseconv.build_info()
                import sparseconv.nn  # noqa: F401

                out[lib] = None
            except Exception as e:  # noqa: BLE001 - report whatever stops it
                out[lib] = f"{type(e).__name__}: {e}"
        else:
            import peers

            out[lib] = None if peers.load_spconv() is not None else peers.spconv_error()
    return out


def run_parent(args) -> int:
    import torch

    try:
        from tqdm import tqdm
    except ImportError:  # progress bars are optional

        def tqdm(it=None, **kw):
            return it

    facts = machine_facts()
    facts["torch"] = torch.__version__
    facts["threads"] = args.threads
    facts["other_load_at_start"] = round(foreign_load(1.0), 2)
    libs = available_libs(args.libs)
    for lib, why in libs.items():
        if why is not None:
            print(f"[bench] {lib} skipped: {why}", file=sys.stderr)
    usable = [lib for lib in LIBS if lib in libs and libs[lib] is None]  # round 0: sparseconv first
    if not usable:
        print("[bench] no library to measure", file=sys.stderr)
        return 1
    if "sparseconv" in usable:
        import sparseconv

        facts["sparseconv"] = _jsonable(sparseconv.build_info())
    if "spconv" in usable:
        import peers

        facts["spconv"] = peers.spconv_version()

    cin, cout = args.channels
    results = {"machine": facts, "scenes": []}
    with tempfile.TemporaryDirectory(prefix="bench_conv_") as tmp:
        workdir = Path(tmp)
        scenes = []
        for target in tqdm(args.voxels, desc="scenes", file=sys.stderr):
            scenes.append(prepare(target, args, workdir))
        # Each round runs one child per library, the order alternating between rounds (a phase of load from
        # elsewhere then falls on both libraries); only round 0 saves outputs for the differences.
        jobs = [
            (s, rnd, lib) for s in scenes for rnd in range(args.rounds) for lib in usable[:: (-1) ** rnd]
        ]
        bar = tqdm(jobs, desc="runs", file=sys.stderr)
        for s, rnd, lib in bar:
            if hasattr(bar, "set_postfix_str"):
                bar.set_postfix_str(f"{lib} {s['voxels']} voxels, round {rnd}")
            res_path = workdir / f"res_{lib}_{s['target']}_{rnd}.json"
            out_path = workdir / f"out_{lib}_{s['target']}.pt"
            cmd = [sys.executable, str(Path(__file__).resolve()), "--only", lib, "--data", s["path"]]
            cmd += ["--result", str(res_path), "--threads", str(args.threads)]
            cmd += ["--repeats", str(args.repeats), "--warmup", str(args.warmup)]
            if rnd == 0:
                cmd += ["--out-tensors", str(out_path)]
            if args.wait_idle > 0:
                wait_idle(args.wait_idle)
            b0, c0, w0 = cpu_busy_s(), children_cpu_s(), time.perf_counter()
            p = subprocess.run(cmd, capture_output=True, text=True, check=False)
            # Cores other processes kept busy meanwhile (this one only waits): timings are not trustworthy
            # when that is high, since spinning OpenMP barriers wait for descheduled threads.
            other = max(0.0, ((cpu_busy_s() - b0) - (children_cpu_s() - c0)) / (time.perf_counter() - w0))
            runs = s.setdefault("runs", {})
            if p.returncode != 0:
                print(
                    f"[bench] {lib} on {s['voxels']} voxels (round {rnd}) failed (exit {p.returncode}):\n"
                    f"{p.stderr[-3000:]}",
                    file=sys.stderr,
                )
                runs[lib] = {"error": p.stderr.strip().splitlines()[-1:]}
                continue
            if "error" in runs.get(lib, {}):
                continue  # an earlier round failed: keep the library marked failed
            if other > 0.2:
                print(
                    f"[bench] warning: other processes kept {other:.2f} cores busy during the {lib} run on "
                    f"{s['voxels']} voxels (round {rnd}): its timings are unreliable (use --wait-idle, or a "
                    "quiet machine)",
                    file=sys.stderr,
                )
            r = json.loads(res_path.read_text())
            r["other_load_cores"] = other
            r["round_median_s"] = [{k: median(v) for k, v in r["times"].items()}]
            r["round_other_load_cores"] = [other]
            if rnd == 0:
                runs[lib] = r
                s.setdefault("outputs", {})[lib] = str(out_path)
                continue
            m = runs[lib]  # merge: all timings, the largest peak RSS growth and other-process load
            for k, v in r["times"].items():
                m["times"][k] += v
            m["round_median_s"] += r["round_median_s"]
            m["round_other_load_cores"].append(other)
            m["other_load_cores"] = max(m["other_load_cores"], other)
            if r["rss_peak_mib"] - r["rss_start_mib"] > m["rss_peak_mib"] - m["rss_start_mib"]:
                m.update({k: r[k] for k in ("rss_start_mib", "rss_ready_mib", "rss_peak_mib")})
        for s in scenes:
            for r in s.get("runs", {}).values():
                if "times" in r:
                    r["median_s"] = {k: median(v) for k, v in r["times"].items()}
        # Cross-library differences.
        for s in scenes:
            outs = s.pop("outputs", {})
            if len(outs) == 2:
                a, b = (torch.load(outs[lib]) for lib in LIBS)
                s["max_abs_diff"] = {k: float((a[k] - b[k]).abs().max()) for k in a}
                s["max_abs"] = {k: float(a[k].abs().max()) for k in a}
            s.pop("path", None)
        # torch.mm on the same arithmetic, same threads, same run.
        for s in tqdm(scenes, desc="torch.mm", file=sys.stderr):
            pairs = next((r["pairs"] for r in s.get("runs", {}).values() if "pairs" in r), s["voxels"] * 27)
            if args.wait_idle > 0:
                wait_idle(args.wait_idle)
            s["mm_gflops"] = mm_gflops(pairs, cin, cout, args.threads)
        if args.wait_idle > 0:
            wait_idle(args.wait_idle)
        results["square_mm"] = {"n": args.square_mm, "gflops": square_mm_gflops(args.square_mm, args.threads)}
    results["scenes"] = scenes

    report(results, args)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=1))
    if args.out_png:
        plot(results, args.out_png)
        print(f"\nchart: {args.out_png}")
    return 0


def report(results: dict, args) -> None:
    m = results["machine"]
    cin, cout = args.channels
    print("## SubMConv3d 3x3x3, %d -> %d channels, float32, CPU\n" % (cin, cout))
    print(
        f"- machine: {m['cpu']}, {m['cores']} cores ({', '.join(m['simd']) or 'no AVX'}), "
        f"{m['mem_gib']} GiB; torch {m['torch']}, {m['threads']} threads; Python {m['python']}"
    )
    if "sparseconv" in m:
        print(f"- sparseconv: {json.dumps(m['sparseconv'])}")
    if "spconv" in m:
        sp = [r for s in results["scenes"] for r in [s.get("runs", {}).get("spconv", {})] if "times" in r]
        omp = sp[0].get("omp_threads") if sp else None
        print(
            f"- spconv {m['spconv']} (CPU wheel), timed as shipped with {omp or m['threads']} OpenMP "
            "threads; only its CPU-stream call is patched, which CPU-only torch needs (benchmarks/peers.py)"
        )
        print(
            "- spconv's multi-threaded CPU scatter-add races (a few rows per call get wrong sums, new ones "
            "each run), so the max-abs-diff row compares sparseconv with an extra, untimed spconv run whose "
            "scatter-add is serial (exact); the race row shows how far spconv as shipped is from that"
        )
    sq = results["square_mm"]
    print(f"- torch.mm {sq['n']}x{sq['n']} @ {sq['n']}x{sq['n']}: {sq['gflops']:.0f} GFLOP/s")
    print(
        f"- other processes' CPU load at start: {m['other_load_at_start']:.2f} cores "
        "(timings are only meaningful near 0: spinning OpenMP barriers stall when a core is taken)"
    )
    print(
        f"- medians of {args.rounds} rounds x {args.repeats} runs (each after {args.warmup} warm-up), "
        "libraries alternating (one process per library per round, the order swapped every round); scenes: "
        f"`sparseconv.data.lidar_scene(N, voxel_size={args.voxel_size}, seed={args.seed})`\n"
    )

    both = all(
        lib in s.get("runs", {}) and "median_s" in s["runs"][lib] for s in results["scenes"] for lib in LIBS
    )
    libs = [lib for lib in LIBS if any(lib in s.get("runs", {}) for s in results["scenes"])]
    head = ["scene", "measure"] + [f"{lib}" for lib in libs] + (["sparseconv / spconv"] if both else [])
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for s in results["scenes"]:
        runs = s.get("runs", {})
        scene = f"{s['voxels']:,} voxels"
        rows = []
        for key, label, fl in PHASES:
            cells, vals = [], []
            for lib in libs:
                r = runs.get(lib, {})
                t = r.get("median_s", {}).get(key)
                vals.append(t)
                cell = f"{fmt_ms(t)} ms"
                if fl and t and r.get("pairs"):
                    cell += f" ({fl * 2 * r['pairs'] * cin * cout / t / 1e9:.1f} GFLOP/s)"
                cells.append(cell if t is not None else "failed")
            ratio = (
                [f"{vals[0] / vals[1]:.2f}x" if None not in vals[:2] and vals[1] else "n/a"] if both else []
            )
            rows.append([label] + cells + ratio)
        rss = []
        for lib in libs:
            r = runs.get(lib, {})
            rss.append(
                f"{r['rss_peak_mib']:.0f} MiB (+{r['rss_peak_mib'] - r['rss_start_mib']:.0f})"
                if "rss_peak_mib" in r
                else "n/a"
            )
        ratio = []
        if both:
            a, b = (runs[lib]["rss_peak_mib"] - runs[lib]["rss_start_mib"] for lib in LIBS)
            ratio = [f"{a / b:.2f}x" if b > 0 else "n/a"]
        rows.append(["peak RSS, largest round (growth over imports + data)"] + rss + ratio)
        busy = [
            f"{runs[lib]['other_load_cores']:.2f} cores" if "other_load_cores" in runs.get(lib, {}) else "n/a"
            for lib in libs
        ]
        rows.append(["CPU used by other processes meanwhile (most in a round)"] + busy + [""] * both)
        pair_cells = [f"{runs[lib]['pairs']:,}" if "pairs" in runs.get(lib, {}) else "n/a" for lib in libs]
        rows.append(["kernel-map pairs"] + pair_cells + ([""] if both else []))
        rows.append(
            ["torch.mm [pairs,%d]@[%d,%d]" % (cin, cin, cout)]
            + [f"{s['mm_gflops']:.1f} GFLOP/s"] * len(libs)
            + ([""] if both else [])
        )
        if "max_abs_diff" in s:
            dd = s["max_abs_diff"]
            rows.append(
                ["max abs diff out / d feats / d weight"]
                + [f"{dd['out']:.1e} / {dd['grad_feats']:.1e} / {dd['grad_weight']:.1e}"] * len(libs)
                + [""]
            )
        race = runs.get("spconv", {}).get("race_max_abs_diff")
        if race:
            rows.append(
                ["spconv multi-thread race: max abs diff vs its serial result (out / d feats / d weight)"]
                + [""] * (len(libs) - 1)
                + [f"{race['out']:.1e} / {race['grad_feats']:.1e} / {race['grad_weight']:.1e}"]
                + ([""] if both else [])
            )
        for i, row in enumerate(rows):
            print("| " + " | ".join([scene if i == 0 else ""] + row) + " |")
    for s in results["scenes"]:
        note = (
            f"\n{s['voxels']:,} voxels: {s['points']:,} points, grid {s['spatial_shape']}, "
            f"scene {s['t_scene_s']:.1f} s, voxelized by {s['voxelizer']} in {s['t_voxelize_s'] * 1e3:.0f} ms"
        )
        runs = s.get("runs", {})
        if (
            len(runs) == 2
            and all("pairs" in r for r in runs.values())
            and runs["sparseconv"]["pairs"] != runs["spconv"]["pairs"]
        ):
            note += f" — PAIR COUNTS DIFFER: {runs['sparseconv']['pairs']} vs {runs['spconv']['pairs']}"
        print(note)


def plot(results: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scenes = results["scenes"]
    libs = [
        lib for lib in LIBS if any(lib in s.get("runs", {}) and "median_s" in s["runs"][lib] for s in scenes)
    ]
    colors = {"sparseconv": "#1f77b4", "spconv": "#ff7f0e"}
    fig, axes = plt.subplots(
        1,
        len(scenes) + 1,
        figsize=(5.2 * len(scenes) + 3.2, 4.6),
        gridspec_kw={"width_ratios": [3] * len(scenes) + [1.3]},
    )
    width = 0.8 / max(1, len(libs))
    labels = ["map\nbuild", "fwd\n(cached)", "fwd\n(+map)", "fwd+bwd\n(cached)", "fwd+bwd\n(+map)"]
    for ax, s in zip(axes, scenes):
        for j, lib in enumerate(libs):
            med = s.get("runs", {}).get(lib, {}).get("median_s")
            if not med:
                continue
            ys = [med[k] * 1e3 for k, _, _ in PHASES]
            xs = [i + (j - (len(libs) - 1) / 2) * width for i in range(len(PHASES))]
            bars = ax.bar(xs, ys, width, label=lib, color=colors[lib])
            for b, y in zip(bars, ys):
                ax.annotate(
                    f"{y:.0f}" if y >= 10 else f"{y:.1f}",
                    (b.get_x() + b.get_width() / 2, y),
                    ha="center",
                    va="bottom",
                    fontsize=7,
                )
        ax.set_xticks(range(len(PHASES)))
        ax.set_xticklabels(labels, fontsize=8)
        ax.set_ylabel("ms (median)")
        ax.set_title(f"{s['voxels']:,} voxels")
        ax.legend(fontsize=8)
    ax = axes[-1]
    for j, lib in enumerate(libs):
        ys = [
            s.get("runs", {}).get(lib, {}).get("rss_peak_mib", 0)
            - s.get("runs", {}).get(lib, {}).get("rss_start_mib", 0)
            for s in scenes
        ]
        xs = [i + (j - (len(libs) - 1) / 2) * width for i in range(len(scenes))]
        ax.bar(xs, ys, width, label=lib, color=colors[lib])
    ax.set_xticks(range(len(scenes)))
    ax.set_xticklabels([f"{s['voxels'] // 1000}k" for s in scenes])
    ax.set_ylabel("MiB")
    ax.set_title("peak RSS growth")
    ax.legend(fontsize=8)
    m = results["machine"]
    fig.suptitle(
        f"SubMConv3d 3x3x3 32->32 fp32 — {m['cpu']}, {m['threads']} threads, torch {m['torch']}", fontsize=10
    )
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--voxels", type=int, nargs="+", default=[50000, 200000], help="scene sizes (active voxels)"
    )
    ap.add_argument("--repeats", type=int, default=5, help="timed runs per measure per round")
    ap.add_argument(
        "--rounds", type=int, default=3, help="rounds per scene, libraries alternating (median over all runs)"
    )
    ap.add_argument("--warmup", type=int, default=1, help="untimed runs before the timed ones")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads for every library")
    ap.add_argument("--channels", type=int, nargs=2, default=[32, 32], metavar=("CIN", "COUT"))
    ap.add_argument("--voxel-size", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--libs", nargs="+", choices=LIBS, default=list(LIBS), help="libraries to measure if importable"
    )
    ap.add_argument(
        "--wait-idle",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="before each run, wait up to this long for other processes to leave the CPUs idle",
    )
    ap.add_argument("--square-mm", type=int, default=2048, help="size of the square torch.mm reference")
    ap.add_argument(
        "--out-png", default=str(HERE / "results" / "bench_conv.png"), help="bar chart ('' for none)"
    )
    ap.add_argument(
        "--json", default=str(HERE / "results" / "bench_conv.json"), help="raw results ('' for none)"
    )
    # internal: one library on one scene, in a subprocess
    ap.add_argument("--only", choices=LIBS, help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    ap.add_argument("--out-tensors", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if min(args.repeats, args.rounds, args.threads) < 1 or args.warmup < 0:
        ap.error("--repeats, --rounds and --threads must be >= 1, --warmup >= 0")
    if args.only:
        run_child(args)
        return 0
    return run_parent(args)


if __name__ == "__main__":
    sys.exit(main())
