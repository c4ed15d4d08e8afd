#!/usr/bin/env python
"""Side by side: sparseconv against the peer libraries that are importable, on the same scenes and weights.

Every configuration is one LiDAR-like scene (``sparseconv.data.lidar_scene(N, voxel_size=0.1, seed)``,
voxelized with ``sparseconv.voxelize``) and one SubMConv3d 3x3x3 layer C -> C with bias (float32); all
libraries get the same voxels, features, weights, bias and output gradient. Measured per library:

* kernel map build (sparseconv: ``torch.ops.sparseconv.build_subm_map``; spconv: its indice-pair generation;
  Open3D: the fixed-radius neighbour search that ``SparseConv.forward`` runs),
* forward with the kernel map cached, and forward + backward (input, weight and bias gradients), map cached,
* peak RSS growth of a fresh child process (one per library per configuration per round) over its imports
  and the scene's tensors, the largest of the rounds (on CUDA also the peak of torch's allocator),
* the largest absolute difference between its output / gradients and sparseconv's (first round),
* ratios: its time (memory) divided by sparseconv's, so > 1 means slower (larger) than sparseconv.

Libraries:

* sparseconv (this repository);
* spconv 2.3.8 (CPU wheel), through ``benchmarks/peers.py``: timed as shipped; its CPU scatter-add races with
  several OpenMP threads, so its outputs for the difference come from an untimed run with a serial scatter-add
  (exact), as in ``bench_conv.py``;
* Open3D (``open3d.ml.torch.layers.SparseConv``; ``pip install open3d-cpu==0.20.0``, whose wheel is built
  against torch 2.13.0+cpu, and Debian's libusb-1.0-0 for ``import open3d``). Positions are voxel centres
  ``(coords + 0.5) * voxel_size`` in metres, its kernel is ``[k, k, k, Cin, Cout]`` indexed (z, y, x), i.e.
  sparseconv's weight with axes 0 and 2 swapped (checked by the max-abs-diff column). "Map cached" calls
  ``open3d.ml.torch.ops.continuous_conv`` with the neighbour lists of one search, as the layer does after its
  search; the outputs compared are the layer's own (search included). Its CPU kernels run on TBB, which
  ``torch.set_num_threads`` does not limit: by default every library gets all cores;
* MinkowskiEngine: measured if it were importable (it has no wheel for this torch); reported as unavailable.

A library that cannot be imported is reported with the reason, never fatal. Each configuration runs
``--rounds`` rounds, the library order reversed every round (so that a phase of load from elsewhere on the VM
does not fall on one library only); every child times ``--repeats`` runs after ``--warmup`` runs, and times
are medians over all rounds x repeats. Prints the machine facts and a markdown table; writes
``results/compare_peers[_quick].{csv,png,md}`` atomically (temporary file + os.replace).

    python benchmarks/compare_peers.py --quick      # C = 32, 50k voxels, < 2 min
    python benchmarks/compare_peers.py              # C = 16, 32, 64 x 50k / 200k / 800k voxels, < 25 min
    python benchmarks/compare_peers.py --device cuda    # on CUDA, where torch has it (else says so, exit 0)
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # bench_conv.py, peers.py

import bench_conv as bc  # machine facts, timing, RSS, scene helpers, sparseconv and spconv adapters

LIBS = ("sparseconv", "spconv", "open3d", "minkowskiengine")
LABEL = {
    "sparseconv": "sparseconv",
    "spconv": "spconv",
    "open3d": "Open3D",
    "minkowskiengine": "MinkowskiEngine",
}
PHASES = [
    ("map", "kernel map build"),
    ("fwd", "forward, map cached"),
    ("fwdbwd", "forward+backward, map cached"),
]
DIFF_KEYS = ("out", "grad_feats", "grad_weight", "grad_bias")
INSTALL_HINT = {
    "spconv": "pip install spconv==2.3.8",
    "open3d": "pip install open3d-cpu==0.20.0; apt-get install libusb-1.0-0",
    "minkowskiengine": "no wheel for torch 2.x; build from source",
}
# Import probes, run in a subprocess (a broken binary must not take the parent down). Last line: version;
# "cuda=0/1" before it says whether the build has CUDA kernels.
PROBES = {
    "open3d": "import torch, open3d, open3d.ml.torch\n"
    "print('cuda=%d' % bool(open3d._build_config['BUILD_CUDA_MODULE'])); print(open3d.__version__)",
    "minkowskiengine": "import torch, MinkowskiEngine as ME\n"
    "print('cuda=%d' % bool(getattr(ME, 'is_cuda_available', lambda: False)())); print(ME.__version__)",
}


# ------------------------------------------------------------------------------------------------------------
# Open3D adapter (child); sparseconv and spconv use bench_conv's runners
# ------------------------------------------------------------------------------------------------------------


class Open3DRunner:
    """open3d.ml.torch SparseConv with our weights, the same interface as bench_conv's runners.

    A "tensor" here is (feats, cached): cached=True runs continuous_conv on the stored neighbour lists (what
    SparseConv.forward does after its search), cached=False calls the layer (search included).
    """

    name = "open3d"

    def __init__(self, d, device="cpu"):
        import open3d
        import open3d.ml.torch as ml3d
        import torch

        self.torch, self.o3d, self.ops = torch, open3d, ml3d.ops
        self.d = d
        cin, cout = d["weight"].shape[3], d["weight"].shape[4]
        self.vs = float(d["voxel_size"])
        self.layer = ml3d.layers.SparseConv(cin, cout, [3, 3, 3], use_bias=True).to(device)
        with torch.no_grad():
            self.layer.kernel.copy_(d["weight"].permute(2, 1, 0, 3, 4))  # ours (x, y, z) -> its (z, y, x)
            self.layer.bias.copy_(d["bias"])
        # voxel centres in metres, computed in float64 then rounded once
        self.pos = ((d["coords"][:, 1:].double() + 0.5) * self.vs).float().contiguous()
        self.extents = torch.full([1, 1], self.vs * 3, dtype=torch.float32)
        self.empty = torch.empty((0,), dtype=torch.float32, device=self.pos.device)
        self.nns = self.build_map()

    def info(self):
        return {"version": self.o3d.__version__}

    def tensor(self, feats):
        return (feats, False)

    def with_cache(self, feats):
        return (feats, True)

    def build_map(self, _=None):
        """The search SparseConv.forward runs (same radius and hash-table size)."""
        L = self.layer
        return L.fixed_radius_search(
            self.pos,
            queries=self.pos - L.offset * self.vs,
            radius=L.kernel_size[0] * self.vs * 0.51,
            hash_table_size_factor=1 / 64,
        )

    def pairs(self) -> int:
        return int(self.nns.neighbors_index.shape[0])

    def forward(self, x):
        feats, cached = x
        L = self.layer
        if not cached:
            return L(feats, self.pos, self.pos, self.vs)
        out = self.ops.continuous_conv(
            filters=L.kernel,
            out_positions=self.pos,
            extents=self.extents,
            offset=L.offset,
            inp_positions=self.pos,
            inp_features=feats,
            inp_importance=self.empty,
            neighbors_index=self.nns.neighbors_index,
            neighbors_importance=self.empty,
            neighbors_row_splits=self.nns.neighbors_row_splits,
            align_corners=False,
            coordinate_mapping="identity",
            interpolation="nearest_neighbor",
            normalize=False,
            allow_tf32=False,
        )
        return out + L.bias

    def weight_grad(self):
        return self.layer.kernel.grad.permute(2, 1, 0, 3, 4)  # its (z, y, x) -> ours

    def bias_grad(self):
        return self.layer.bias.grad

    def zero_grad(self):
        self.layer.kernel.grad = None
        self.layer.bias.grad = None


RUNNERS = {"sparseconv": bc.SparseconvRunner, "spconv": bc.SpconvRunner, "open3d": Open3DRunner}


def run_child(args) -> None:
    """One library on one configuration: timings, memory, outputs (round 0) -> --result / --out-tensors."""
    import gc

    import torch

    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    cuda = dev.type == "cuda"
    if args.only == "spconv":  # import the library before the memory baseline
        import peers

        peers.load_spconv()
    elif args.only == "open3d":
        import open3d.ml.torch  # noqa: F401
    else:
        import sparseconv.nn  # noqa: F401
    d = torch.load(args.data)
    d = {k: v.to(dev) if isinstance(v, torch.Tensor) else v for k, v in d.items()}
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    gc.collect()
    if cuda:
        sync()
        torch.cuda.reset_peak_memory_stats()
        gpu_start = torch.cuda.memory_allocated()
    reset = bc.reset_peak_rss()
    rss_start = bc.rss_now_mib()
    runner = RUNNERS[args.only](d, device=dev)
    feats, grad_out = d["feats"], d["grad_out"]
    R, W = args.repeats, args.warmup

    def timed(fn, setup=None):
        """--warmup untimed calls, then --repeats timed ones, fewer where one call is long: the timed calls of
        a phase stop once they would pass --phase-cap seconds (at least one is always timed)."""

        def call(x):
            fn(x)
            sync()

        times = bc.time_it(call, 1, W, setup=setup)
        more = max(0, min(R - 1, int(args.phase_cap / max(times[0], 1e-9)) - 1))
        return times + bc.time_it(call, more, 0, setup=setup)

    res = {"lib": args.only, "threads": torch.get_num_threads(), "info": runner.info(), "times": {}}
    res["times"]["map"] = timed(runner.build_map)
    with torch.no_grad():
        res["times"]["fwd"] = timed(runner.forward, setup=lambda: runner.with_cache(feats))

    def leaf():
        runner.zero_grad()
        return feats.detach().requires_grad_(True)

    res["times"]["fwdbwd"] = timed(
        lambda x: runner.forward(x).backward(grad_out), setup=lambda: runner.with_cache(leaf())
    )
    sync()
    res["pairs"] = runner.pairs()
    res["rss_start_mib"] = rss_start
    res["rss_peak_mib"] = bc.rss_peak_mib()  # over the timed runs: outputs below are not counted
    res["rss_peak_is_reset"] = reset
    if cuda:
        res["gpu_peak_mib"] = (torch.cuda.max_memory_allocated() - gpu_start) / 2**20
    if args.only == "spconv":
        res["omp_threads"] = runner.peers.omp_threads()

    def outputs(fresh=True):
        x = leaf()
        out = runner.forward(runner.tensor(x) if fresh else runner.with_cache(x))
        out.backward(grad_out)
        sync()
        return {
            "out": out.detach().cpu(),
            "grad_feats": x.grad.cpu(),
            "grad_weight": runner.weight_grad().detach().cpu(),
            "grad_bias": runner.bias_grad().detach().cpu(),
        }

    def diff(a, b):
        return {k: float((a[k] - b[k]).abs().max()) if a[k].numel() else 0.0 for k in a}

    if args.out_tensors:
        if args.only == "spconv":  # timed as shipped; compare its exact (serial scatter-add) result
            with runner.peers.serial_scatter():
                ref = outputs()
            res["race_max_abs_diff"] = diff(outputs(), ref)
        else:
            ref = outputs()
        if args.only == "open3d":  # the timed path (cached lists) against the layer's own call, forward
            with torch.no_grad():
                cached = runner.forward(runner.with_cache(feats)).cpu()
            res["cached_vs_layer_max_abs_diff_out"] = float((cached - ref["out"]).abs().max())
        torch.save(ref, args.out_tensors)
    Path(args.result).write_text(json.dumps(res))


# ------------------------------------------------------------------------------------------------------------
# parent
# ------------------------------------------------------------------------------------------------------------


def _last_line(text: str) -> str:
    lines = [x.strip() for x in text.strip().splitlines() if x.strip()]
    return lines[-1] if lines else ""


def availability(requested, device: str) -> dict:
    """lib -> {"ok": bool, "version": str|None, "reason": str|None} (reason: why it is not measured)."""
    out = {}
    base = bc.available_libs([lib for lib in ("sparseconv", "spconv") if lib in requested])
    for lib, why in base.items():
        info = {"ok": why is None, "version": None, "reason": why}
        if why is None:
            if lib == "sparseconv":
                import sparseconv

                info["version"] = sparseconv.__version__
                if device == "cuda" and not sparseconv.build_info().get("cuda"):
                    info.update(
                        ok=False,
                        reason="this build of sparseconv has no CUDA kernels "
                        "(build_info()['cuda'] is False; rebuild with FORCE_CUDA=1 where nvcc is)",
                    )
            else:
                import peers

                info["version"] = peers.spconv_version()
                if device == "cuda":
                    try:
                        from spconv.cppconstants import CPU_ONLY_BUILD
                    except ImportError:
                        CPU_ONLY_BUILD = False
                    if CPU_ONLY_BUILD:
                        info.update(
                            ok=False,
                            reason="the installed spconv wheel is CPU-only (install a "
                            "spconv-cuXXX wheel matching torch's CUDA for GPU runs)",
                        )
        elif lib in INSTALL_HINT:
            info["reason"] = f"{why} ({INSTALL_HINT[lib]})"
        out[lib] = info
    for lib in ("open3d", "minkowskiengine"):
        if lib not in requested:
            continue
        try:
            p = subprocess.run(
                [sys.executable, "-c", PROBES[lib]], capture_output=True, text=True, timeout=180, check=False
            )
            ok, lines = p.returncode == 0, p.stdout.strip().splitlines()
            reason = None if ok else (_last_line(p.stderr) or f"import exited with {p.returncode}")
        except subprocess.TimeoutExpired:
            ok, lines, reason = False, [], "import timed out (180 s)"
        info = {"ok": ok, "version": lines[-1] if ok and lines else None, "reason": reason}
        if not ok:
            hint = INSTALL_HINT[lib]
            if "libusb" in (reason or ""):
                hint = "apt-get install libusb-1.0-0"
            info["reason"] = f"{reason} ({hint})"
        elif device == "cuda" and "cuda=1" not in lines:
            info.update(ok=False, reason=f"{LABEL[lib]} {info['version']} was built without CUDA")
        out[lib] = info
    return out


def prepare_scene(target: int, args) -> dict:
    """One LiDAR-like scene, voxelized (bench_conv.voxelize_scene: sparseconv.voxelize)."""
    from sparseconv.data import lidar_scene

    t0 = time.perf_counter()
    points, _labels = lidar_scene(target, voxel_size=args.voxel_size, seed=args.seed)
    t_scene = time.perf_counter() - t0
    t0 = time.perf_counter()
    coords, spatial_shape, how = bc.voxelize_scene(points, args.voxel_size)
    return {
        "target": target,
        "points": len(points),
        "voxels": int(coords.shape[0]),
        "spatial_shape": list(spatial_shape),
        "voxelizer": how,
        "t_scene_s": t_scene,
        "t_voxelize_s": time.perf_counter() - t0,
        "coords": coords,
    }


def write_atomic(path: Path, write) -> None:
    """write(tmp_path) into a temporary file beside `path`, then os.replace it there (never half-written)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=path.suffix)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def run_job(args, workdir: Path, cfg: dict, lib: str, rnd: int) -> None:
    """One child: `lib` on `cfg` in round `rnd`; merges its result into cfg["runs"][lib]."""
    n, c = cfg["scene"]["voxels"], cfg["C"]
    res_path = workdir / f"res_{lib}_{n}_{c}_{rnd}.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--only", lib, "--data", cfg["path"]]
    cmd += ["--result", str(res_path), "--threads", str(args.threads), "--device", args.device]
    cmd += ["--repeats", str(args.repeats), "--warmup", str(args.warmup)]
    if rnd == 0:
        cmd += ["--out-tensors", str(workdir / f"out_{lib}_{n}_{c}.pt")]
    if args.wait_idle > 0:
        bc.wait_idle(args.wait_idle)
    b0, c0, w0 = bc.cpu_busy_s(), bc.children_cpu_s(), time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=args.child_timeout)
        rc, err = p.returncode, p.stderr
    except subprocess.TimeoutExpired as e:
        tail = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
        rc, err = -1, f"{tail}\ntimed out after {args.child_timeout:.0f} s (--child-timeout)"
    wall = time.perf_counter() - w0
    # cores other processes kept busy meanwhile (this one only waits)
    other = max(0.0, ((bc.cpu_busy_s() - b0) - (bc.children_cpu_s() - c0)) / wall)
    if rnd == 0:
        cfg["durations"][lib] = wall
    runs = cfg["runs"]
    if rc != 0:
        print(
            f"[compare] {LABEL[lib]} C={c} {n} voxels round {rnd} failed (exit {rc}):\n{err[-2000:]}",
            file=sys.stderr,
        )
        runs[lib] = {"error": _last_line(err) or f"exit {rc}"}
        return
    if "error" in runs.get(lib, {}):
        return  # an earlier round failed: keep it marked failed
    if other > 0.2:
        print(
            f"[compare] warning: other processes kept {other:.2f} cores busy during {LABEL[lib]} C={c} {n} "
            f"voxels round {rnd}: its timings are unreliable (--wait-idle, or a quiet machine)",
            file=sys.stderr,
        )
    r = json.loads(res_path.read_text())
    r["other_load_cores"] = other
    if lib not in runs:
        runs[lib] = r
        return
    m = runs[lib]  # merge: all timings, the largest memory growth and other-process load
    for k, v in r["times"].items():
        m["times"][k] += v
    m["other_load_cores"] = max(m["other_load_cores"], other)
    if _growth(r) > _growth(m):
        m.update({k: r[k] for k in ("rss_start_mib", "rss_peak_mib")})
    if r.get("gpu_peak_mib", 0) > m.get("gpu_peak_mib", 0):
        m["gpu_peak_mib"] = r["gpu_peak_mib"]


def compare_outputs(cfg: dict, libs, workdir: Path) -> None:
    """Max abs differences of each library's round-0 outputs to sparseconv's; then the output files go."""
    import torch

    n, c = cfg["scene"]["voxels"], cfg["C"]
    files = {lib: workdir / f"out_{lib}_{n}_{c}.pt" for lib in libs}
    files = {lib: f for lib, f in files.items() if f.exists()}
    if "sparseconv" in files:
        ref = torch.load(files["sparseconv"])
        cfg["max_abs"] = {k: float(v.abs().max()) if v.numel() else 0.0 for k, v in ref.items()}
        for lib, f in files.items():
            if lib != "sparseconv":
                o = torch.load(f)
                cfg.setdefault("diffs", {})[lib] = {
                    k: float((o[k] - ref[k]).abs().max()) if ref[k].numel() else 0.0 for k in DIFF_KEYS
                }
    for f in files.values():
        f.unlink()


def run_parent(args) -> int:
    import torch

    try:
        from tqdm import tqdm
    except ImportError:

        def tqdm(it=None, **kw):
            return it

    t_start = time.perf_counter()
    if args.device == "cuda" and not torch.cuda.is_available():
        why = "torch is a CPU-only build" if torch.version.cuda is None else "no CUDA device is visible"
        print(f"CUDA is unavailable ({why}; torch {torch.__version__}): nothing to compare on cuda.")
        return 0
    facts = bc.machine_facts()
    facts.update(torch=torch.__version__, threads=args.threads, device=args.device)
    if args.device == "cuda":
        facts["gpu"] = torch.cuda.get_device_name(0)
        facts["cuda"] = torch.version.cuda
    facts["other_load_at_start"] = round(bc.foreign_load(1.0), 2)
    avail = availability(args.libs, args.device)
    for lib, a in avail.items():
        if not a["ok"]:
            print(f"[compare] {LABEL[lib]} unavailable: {a['reason']}", file=sys.stderr)
    usable = [lib for lib in LIBS if avail.get(lib, {}).get("ok")]  # round 0 order: sparseconv first
    if not usable:
        if args.device == "cuda":  # expected while no library here has CUDA kernels: say so, not a failure
            print(
                "Nothing can run on CUDA: "
                + "; ".join(f"{LABEL[k]}: {a['reason']}" for k, a in avail.items())
            )
            return 0
        print("[compare] no library to measure", file=sys.stderr)
        return 1

    configs = []  # dicts: C, scene facts, runs {lib: merged result}, diffs {lib: {...}}
    with tempfile.TemporaryDirectory(prefix="compare_peers_") as tmp:
        workdir = Path(tmp)
        for target in tqdm(args.voxels, desc="scenes", file=sys.stderr):
            sc = prepare_scene(target, args)
            coords = sc.pop("coords")
            for c in args.channels:
                d = bc.make_data(coords, tuple(sc["spatial_shape"]), c, c, args.seed)
                d["voxel_size"] = args.voxel_size
                path = workdir / f"data_{target}_{c}.pt"
                torch.save(d, path)
                configs.append({"C": c, "scene": dict(sc), "path": str(path), "runs": {}, "durations": {}})
        configs.sort(key=lambda x: (x["C"], x["scene"]["voxels"]))

        total = args.rounds * len(configs) * len(usable)
        bar = tqdm(total=total, desc="runs", file=sys.stderr)
        skipped, last = 0, {}
        for rnd in range(args.rounds):
            for cfg in configs:
                for lib in usable[:: (-1) ** rnd]:
                    if hasattr(bar, "update"):
                        bar.set_postfix_str(
                            f"{lib} C={cfg['C']} {cfg['scene']['voxels']} voxels, round {rnd}"
                        )
                        bar.update(1)
                    # a run starts only if its expected duration still fits in --budget: its own round-0
                    # duration, or in round 0 the library's last one scaled by voxels x C
                    work = cfg["scene"]["voxels"] * cfg["C"]
                    if rnd:
                        est = cfg["durations"].get(lib, 0.0)
                    else:
                        d0, w0 = last.get(lib, (0.0, 1))
                        est = min(d0 * work / w0, args.child_timeout)
                    if time.perf_counter() - t_start + est > args.budget:
                        skipped += 1
                        continue
                    run_job(args, workdir, cfg, lib, rnd)
                    if rnd == 0 and lib in cfg["durations"]:
                        last[lib] = (cfg["durations"][lib], work)
                if rnd == 0:
                    compare_outputs(cfg, usable, workdir)
        if hasattr(bar, "close"):
            bar.close()
        for cfg in configs:
            for r in cfg["runs"].values():
                if "times" in r:
                    r["median_s"] = {k: median(v) for k, v in r["times"].items()}
                    r["n_times"] = "/".join(str(len(r["times"][k])) for k, _ in PHASES)
            cfg.pop("path", None)

    results = {
        "machine": facts,
        "libs": avail,
        "configs": configs,
        "skipped_jobs": skipped,
        "args": args,
        "runtime_s": time.perf_counter() - t_start,
    }
    text = report(results, args)
    print(text)
    stem = HERE / "results" / ("compare_peers_quick" if args.quick else "compare_peers")
    if args.out_dir:
        stem = Path(args.out_dir) / stem.name
    write_atomic(stem.with_suffix(".md"), lambda t: Path(t).write_text(text))
    write_atomic(stem.with_suffix(".csv"), lambda t: Path(t).write_text(to_csv(results, args)))
    write_atomic(stem.with_suffix(".png"), lambda t: plot(results, t))
    print(f"\nwritten: {stem}.md, {stem}.csv, {stem}.png ({time.perf_counter() - t_start:.0f} s in all)")
    return 0


# ------------------------------------------------------------------------------------------------------------
# output
# ------------------------------------------------------------------------------------------------------------


def _growth(r: dict):
    return r["rss_peak_mib"] - r["rss_start_mib"] if "rss_peak_mib" in r else None


def _ratio(a, b):
    return a / b if a is not None and b else None


def _mem(r: dict, args):
    return r.get("gpu_peak_mib") if args.device == "cuda" else _growth(r)


def report(results: dict, args) -> str:
    out = io.StringIO()

    def w(s=""):
        out.write(s + "\n")

    m, avail = results["machine"], results["libs"]
    dev = "CUDA" if args.device == "cuda" else "CPU"
    w(f"## SubMConv3d 3x3x3, C -> C, float32, {dev}: sparseconv vs peers\n")
    w(
        f"- machine: {m['cpu']}, {m['cores']} cores ({', '.join(m['simd']) or 'no AVX'}), "
        f"{m['mem_gib']} GiB; "
        f"torch {m['torch']}, {m['threads']} threads; Python {m['python']}"
        + (f"; GPU {m['gpu']} (CUDA {m['cuda']})" if "gpu" in m else "")
    )
    for lib in LIBS:
        a = avail.get(lib)
        if a is None:
            continue
        w(f"- {LABEL[lib]}: " + (f"{a['version']}" if a["ok"] else f"unavailable: {a['reason']}"))
    w(f"- other processes' CPU load at start: {m['other_load_at_start']:.2f} cores")
    w(
        f"- medians of up to {args.rounds} rounds x {args.repeats} runs (each after {args.warmup} warm-up), "
        "one "
        "fresh process per library per configuration per round, library order reversed every round; scenes "
        f"`sparseconv.data.lidar_scene(N, voxel_size={args.voxel_size}, seed={args.seed})`"
    )
    w(
        "- cells: median ms (time / sparseconv's time); memory: peak "
        + (
            "GPU allocation (torch allocator)"
            if args.device == "cuda"
            else "RSS growth over imports + the scene's tensors, largest round"
        )
        + "; diff: max |lib - sparseconv| of output / d feats / d weight (spconv: its serial, exact run)"
    )
    if "spconv" in avail and avail["spconv"]["ok"] and args.device == "cpu":
        w(
            "- spconv timed as shipped (multi-threaded scatter-add, which races: see the race note under "
            "the table)"
        )
    if "open3d" in avail and avail["open3d"]["ok"]:
        w(
            "- Open3D: map build = its fixed-radius search; 'map cached' = continuous_conv on stored "
            "neighbour "
            "lists; its TBB threads are not limited by torch.set_num_threads"
        )
    if results["skipped_jobs"]:
        w(f"- {results['skipped_jobs']} runs skipped to stay within --budget {args.budget:.0f} s")
    w()
    libs = [lib for lib in LIBS if avail.get(lib, {}).get("ok")]
    head = ["C", "voxels", "measure"] + [LABEL[x] for x in libs]
    w("| " + " | ".join(head) + " |")
    w("|" + "---|" * len(head))
    for cfg in results["configs"]:
        runs = cfg["runs"]
        ref = runs.get("sparseconv", {})
        rows = []
        for key, label in PHASES:
            cells = []
            for lib in libs:
                r = runs.get(lib, {})
                if "error" in r:
                    cells.append(f"failed: {r['error'][:80]}")
                    continue
                t = r.get("median_s", {}).get(key)
                if t is None:
                    cells.append("n/a")
                    continue
                q = _ratio(t, ref.get("median_s", {}).get(key))
                cells.append(
                    f"{bc.fmt_ms(t)}" + (f" ({q:.2f}x)" if q is not None and lib != "sparseconv" else "")
                )
            rows.append([label + " [ms]"] + cells)
        cells = []
        for lib in libs:
            v = _mem(runs.get(lib, {}), args)
            q = _ratio(v, _mem(ref, args))
            cells.append(
                "n/a" if v is None else f"{v:.0f}" + (f" ({q:.2f}x)" if q and lib != "sparseconv" else "")
            )
        rows.append(["peak memory growth [MiB]"] + cells)
        diffs = cfg.get("diffs", {})
        rows.append(
            ["max abs diff vs sparseconv"]
            + [
                "(reference)"
                if lib == "sparseconv"
                else (
                    f"{diffs[lib]['out']:.1e} / {diffs[lib]['grad_feats']:.1e} / "
                    f"{diffs[lib]['grad_weight']:.1e}"
                    if lib in diffs
                    else "n/a"
                )
                for lib in libs
            ]
        )
        rows.append(
            ["kernel-map pairs"]
            + [f"{runs[lib]['pairs']:,}" if "pairs" in runs.get(lib, {}) else "n/a" for lib in libs]
        )
        for i, row in enumerate(rows):
            lead = [str(cfg["C"]), f"{cfg['scene']['voxels']:,}"] if i == 0 else ["", ""]
            w("| " + " | ".join(lead + row) + " |")
    w()
    for cfg in results["configs"]:
        s, runs = cfg["scene"], cfg["runs"]
        notes = [f"C={cfg['C']}, {s['voxels']:,} voxels: {s['points']:,} points, grid {s['spatial_shape']}"]
        if "max_abs" in cfg:
            ma = cfg["max_abs"]
            notes.append(
                f"sparseconv max |out| {ma['out']:.2f}, |d feats| {ma['grad_feats']:.2f}, "
                f"|d weight| {ma['grad_weight']:.1f}"
            )
        race = runs.get("spconv", {}).get("race_max_abs_diff")
        if race:
            notes.append(
                "spconv as shipped vs its serial run (race): "
                f"{race['out']:.1e} / {race['grad_feats']:.1e} / {race['grad_weight']:.1e}"
            )
        cl = runs.get("open3d", {}).get("cached_vs_layer_max_abs_diff_out")
        if cl is not None:
            notes.append(f"Open3D timed path vs its layer call: max abs diff of the output {cl:.1e}")
        pairs = {lib: r["pairs"] for lib, r in runs.items() if "pairs" in r}
        if len(set(pairs.values())) > 1:
            notes.append(f"PAIR COUNTS DIFFER: {pairs}")
        nt = {LABEL[lib]: r["n_times"] for lib, r in runs.items() if "n_times" in r}
        if nt:
            notes.append("timed runs (map / fwd / fwd+bwd) " + ", ".join(f"{k} {v}" for k, v in nt.items()))
        busy = max((r.get("other_load_cores", 0.0) for r in runs.values()), default=0.0)
        notes.append(f"most CPU used by other processes during a run {busy:.2f} cores")
        w("- " + "; ".join(notes))
    w(f"\nruntime {results['runtime_s']:.0f} s")
    return out.getvalue()


CSV_FIELDS = [
    "channels",
    "voxels",
    "points",
    "library",
    "version",
    "status",
    "device",
    "threads",
    "pairs",
    "timed_runs",
    "map_ms",
    "fwd_cached_ms",
    "fwdbwd_cached_ms",
    "peak_mem_growth_mib",
    "max_abs_diff_out",
    "max_abs_diff_grad_feats",
    "max_abs_diff_grad_weight",
    "max_abs_diff_grad_bias",
    "ratio_map",
    "ratio_fwd_cached",
    "ratio_fwdbwd_cached",
    "ratio_peak_mem",
    "other_load_cores",
]


def to_csv(results: dict, args) -> str:
    buf = io.StringIO()
    wr = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    wr.writeheader()
    avail = results["libs"]

    def num(x, fmt="{:.6g}"):
        return "" if x is None else fmt.format(x)

    for cfg in results["configs"]:
        runs, ref = cfg["runs"], cfg["runs"].get("sparseconv", {})
        for lib in LIBS:
            if lib not in avail:
                continue
            a, r = avail[lib], runs.get(lib, {})
            row = {
                "channels": cfg["C"],
                "voxels": cfg["scene"]["voxels"],
                "points": cfg["scene"]["points"],
                "library": lib,
                "version": a.get("version") or "",
                "device": args.device,
                "threads": args.threads,
            }
            if not a["ok"]:
                row["status"] = f"unavailable: {a['reason']}"
            elif "error" in r:
                row["status"] = f"failed: {r['error']}"
            elif "median_s" not in r:
                row["status"] = "skipped (time budget)"
            else:
                row["status"] = "ok"
                med, rmed = r["median_s"], ref.get("median_s", {})
                row.update(
                    pairs=r["pairs"],
                    timed_runs=r["n_times"],
                    map_ms=num(med["map"] * 1e3),
                    fwd_cached_ms=num(med["fwd"] * 1e3),
                    fwdbwd_cached_ms=num(med["fwdbwd"] * 1e3),
                    peak_mem_growth_mib=num(_mem(r, args), "{:.1f}"),
                    ratio_map=num(_ratio(med["map"], rmed.get("map")), "{:.3f}"),
                    ratio_fwd_cached=num(_ratio(med["fwd"], rmed.get("fwd")), "{:.3f}"),
                    ratio_fwdbwd_cached=num(_ratio(med["fwdbwd"], rmed.get("fwdbwd")), "{:.3f}"),
                    ratio_peak_mem=num(_ratio(_mem(r, args), _mem(ref, args)), "{:.3f}"),
                    other_load_cores=num(r.get("other_load_cores"), "{:.2f}"),
                )
                dd = cfg.get("diffs", {}).get(lib) or (
                    {k: 0.0 for k in DIFF_KEYS} if lib == "sparseconv" else {}
                )
                for k in DIFF_KEYS:
                    row[f"max_abs_diff_{k}"] = num(dd.get(k), "{:.3e}")
            wr.writerow(row)
    return buf.getvalue()


def plot(results: dict, path: str) -> None:
    """Lines (log-log: time per phase and memory vs voxels, one column per C) when there are several scene
    sizes; grouped bars (one panel per C) when there is one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullFormatter

    args, configs = results["args"], results["configs"]
    chans = sorted({c["C"] for c in configs})
    libs = [lib for lib in LIBS if results["libs"].get(lib, {}).get("ok")]
    colors = {"sparseconv": "#1f77b4", "spconv": "#ff7f0e", "open3d": "#2ca02c", "minkowskiengine": "#d62728"}
    measures = [(k, f"{label} [ms]") for k, label in PHASES] + [("mem", "peak memory growth [MiB]")]

    def value(r, key):
        if "median_s" not in r:
            return None
        return _mem(r, args) if key == "mem" else r["median_s"][key] * 1e3

    def fmt(y):
        return f"{y:.0f}" if y >= 10 else f"{y:.1f}"

    single = all(len([x for x in configs if x["C"] == c]) == 1 for c in chans)
    if single:  # one scene size: bars, one panel per C (phases) plus one for memory
        fig, axes = plt.subplots(
            1,
            2 * len(chans),
            figsize=(7.5 * len(chans), 4.4),
            squeeze=False,
            gridspec_kw={"width_ratios": [3, 1.2] * len(chans)},
        )
        width = 0.8 / max(1, len(libs))
        for j, c in enumerate(chans):
            (cfg,) = [x for x in configs if x["C"] == c]
            for ax, keys in ((axes[0][2 * j], measures[:-1]), (axes[0][2 * j + 1], measures[-1:])):
                for li, lib in enumerate(libs):
                    r = cfg["runs"].get(lib, {})
                    ys = [value(r, k) for k, _ in keys]
                    xs = [i + (li - (len(libs) - 1) / 2) * width for i in range(len(keys))]
                    pts = [(x, y) for x, y in zip(xs, ys) if y is not None]
                    if not pts:
                        continue
                    bars = ax.bar(
                        [x for x, _ in pts], [y for _, y in pts], width, color=colors[lib], label=LABEL[lib]
                    )
                    for bb, (_, y) in zip(bars, pts):
                        ax.annotate(
                            fmt(y), (bb.get_x() + bb.get_width() / 2, y), ha="center", va="bottom", fontsize=7
                        )
                ax.set_xticks(range(len(keys)))
                ax.set_xticklabels(
                    [lab.rsplit(" [", 1)[0].replace(", ", ",\n") for _, lab in keys], fontsize=8
                )
                ax.set_ylabel("MiB" if keys[0][0] == "mem" else "ms (median)")
            axes[0][2 * j].set_title(f"C = {c} -> {c}, {cfg['scene']['voxels']:,} voxels")
            axes[0][2 * j + 1].set_title("peak memory growth", fontsize=9)
            axes[0][2 * j].legend(fontsize=8)
    else:  # time per phase and memory vs voxels, one column per C
        fig, axes = plt.subplots(
            len(measures), len(chans), figsize=(4.4 * len(chans) + 0.6, 2.9 * len(measures)), squeeze=False
        )
        for j, c in enumerate(chans):
            cfgs = sorted((x for x in configs if x["C"] == c), key=lambda x: x["scene"]["voxels"])
            for i, (key, label) in enumerate(measures):
                ax = axes[i][j]
                for lib in libs:
                    pts = [(cfg["scene"]["voxels"], value(cfg["runs"].get(lib, {}), key)) for cfg in cfgs]
                    pts = [(x, max(y, 1e-3)) for x, y in pts if y is not None]
                    if not pts:
                        continue
                    ax.plot(
                        [x for x, _ in pts], [y for _, y in pts], "o-", color=colors[lib], label=LABEL[lib]
                    )
                    x, y = pts[-1]
                    ax.annotate(
                        fmt(y),
                        (x, y),
                        textcoords="offset points",
                        xytext=(4, 2),
                        fontsize=7,
                        color=colors[lib],
                    )
                ax.set_xscale("log")
                ax.set_yscale("log")
                ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
                ax.yaxis.set_minor_formatter(NullFormatter())
                ax.set_xticks([cfg["scene"]["voxels"] for cfg in cfgs])
                ax.set_xticklabels([f"{cfg['scene']['voxels'] / 1000:.0f}k" for cfg in cfgs])
                ax.xaxis.set_minor_formatter(NullFormatter())
                ax.grid(True, which="both", alpha=0.3)
                if i == 0:
                    ax.set_title(f"C = {c} -> {c}")
                if i == len(measures) - 1:
                    ax.set_xlabel("active voxels")
                if j == 0:
                    ax.set_ylabel(label, fontsize=8)
                if i == 0 and j == 0:
                    ax.legend(fontsize=8)
    m = results["machine"]
    dev = f"{m['gpu']} (CUDA)" if m["device"] == "cuda" else f"{m['cpu']}, {m['threads']} threads"
    fig.suptitle(
        f"SubMConv3d 3x3x3 fp32, medians; {dev}\ntorch {m['torch']}; "
        + ", ".join(f"{LABEL[lib]} {results['libs'][lib]['version']}" for lib in libs),
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="C = 32 and 50k voxels only (< 2 min)")
    ap.add_argument("--voxels", type=int, nargs="+", help="scene sizes (default 50000 200000 800000)")
    ap.add_argument("--channels", type=int, nargs="+", help="C of the C -> C layer (default 16 32 64)")
    ap.add_argument("--rounds", type=int, default=2, help="rounds per configuration, library order reversed")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per phase per round")
    ap.add_argument("--warmup", type=int, default=1, help="untimed runs before the timed ones")
    ap.add_argument(
        "--threads", type=int, default=os.cpu_count() or 1, help="torch threads (default: all cores)"
    )
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--libs", nargs="+", choices=LIBS, default=list(LIBS), help="libraries to try")
    ap.add_argument("--voxel-size", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--budget",
        type=float,
        help="seconds; later runs are skipped past it "
        "(default 100 with --quick, 1200 otherwise; with --child-timeout 240 a full run stays under 24 min)",
    )
    ap.add_argument(
        "--phase-cap",
        type=float,
        default=15.0,
        metavar="SECONDS",
        help="stop a phase's timed calls once they would pass this (long calls get fewer repeats)",
    )
    ap.add_argument("--child-timeout", type=float, default=240.0, help="seconds one child may take")
    ap.add_argument(
        "--wait-idle",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="before each run, wait up to this long for other processes to leave the CPUs idle",
    )
    ap.add_argument("--out-dir", help="where the .csv/.png/.md go (default benchmarks/results)")
    ap.add_argument("--only", choices=LIBS, help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    ap.add_argument("--out-tensors", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.only:
        run_child(args)
        return 0
    if args.voxels is None:
        args.voxels = [50000] if args.quick else [50000, 200000, 800000]
    if args.channels is None:
        args.channels = [32] if args.quick else [16, 32, 64]
    if args.budget is None:
        args.budget = 100.0 if args.quick else 1200.0
    if min(args.repeats, args.rounds, args.threads) < 1 or args.warmup < 0:
        ap.error("--repeats, --rounds and --threads must be >= 1, --warmup >= 0")
    return run_parent(args)


if __name__ == "__main__":
    sys.exit(main())
