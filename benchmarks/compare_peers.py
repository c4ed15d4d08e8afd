#!/usr/bin/env python
"""sparseconv against its peers on the same scenes, weights and inputs, on CPU or CUDA: issue 15's table.

A configuration is a layer kind x scene size x C x dtype. Kinds (3x3x3, C -> C, with bias; conv_runners.py):
``subm`` SubMConv3d, ``strided`` SparseConv3d stride 2 padding 1, ``inverse`` SparseInverseConv3d undoing that
strided conv (input: its output sites). Scenes: ``sparseconv.data.lidar_scene(N, voxel_size=0.1, seed)``,
voxelized. Every library gets the same voxels, weights (converted to its layout), input features and output
gradient (generated per site, so a library that orders new sites its own way gets the same values at the same
sites). Measured per library:

* kernel map build (sparseconv: ``build_subm_map``, or ``build_strided_map`` + ``invert_map`` for strided and
  inverse; spconv: its own pair generation for the layer, with its algorithm: Native on the CPU wheel, implicit
  GEMM on CUDA; Open3D: its fixed-radius search),
* forward with the map cached, and forward + backward (input, weight and bias gradients), map cached,
* peak memory: on CUDA the peak of torch's allocator from the layer's construction to the end of the timed
  phases, over what was allocated before (the scene's coordinates); on the CPU the peak RSS growth of a fresh
  child process over its imports and the scene (the largest of the rounds),
* the difference to a float32 reference computed with sparseconv from the same (rounded) inputs: for float32
  spconv's max abs difference to sparseconv; for fp16 / bf16 each library's max abs error relative to the
  reference's largest magnitude (out / d feats / d weight),
* ratios ours / peer (< 1: sparseconv is faster or smaller) and PASS / MISS against issue 15's targets: forward
  and forward + backward <= 0.8x spconv, map build and peak memory <= 1x; subm, 1M voxels, C = 64, fp16 forward +
  backward <= 1.5 ms.

Then the whole-network row: ``unet_step.py``'s 4-level U-Net training step (spconv's layers against
``sparseconv.spconv.pytorch``; fp16 autocast on CUDA), skipped with --no-unet.

Libraries: sparseconv; spconv 2.3.8 (``benchmarks/peers.py``; on the CPU wheel its multi-threaded scatter-add
races, so its compared outputs come from an untimed run with a serial scatter-add, and the race is reported);
Open3D (``pip install open3d-cpu==0.20.0`` + Debian's libusb-1.0-0; CPU, subm, float32 only); MinkowskiEngine is
reported as unavailable (no wheel for torch 2.x). A library that cannot be imported is reported, never fatal;
without spconv sparseconv runs alone (ratios n/a).

Timing: each child process times --repeats calls per phase after --warmup calls (CUDA: CUDA events around each
call; CPU: perf_counter), over --rounds rounds with the library order reversed every round; times are medians
over all rounds x repeats. On CUDA one child per library per scene runs all its configurations (TF32 off unless
--allow-tf32, which sets torch's matmul TF32 flag and spconv's SPCONV_ALLOW_TF32 for both); on the CPU one child
per library per configuration (clean RSS). Prints the machine facts and the table; writes
``results/compare_peers[_quick]_<device>.{md,csv,png}`` atomically (temporary file + os.replace).

    python benchmarks/compare_peers.py --quick                  # CPU: 3 kinds at 50k voxels, C = 32 (+ U-Net 5k)
    python benchmarks/compare_peers.py --device cuda --quick    # subm/strided/inverse 1M C=64 fp16 + U-Net at 1M
    python benchmarks/compare_peers.py --device cuda            # issue 15's table: 3 kinds x 200k/1M x C 32/64 x
                                                                # fp16/bf16/fp32, + U-Net
    (on the GPU machine: --scene-cache DIR reuses bench_cuda.py --prepare-scenes' scenes)
Without CUDA (--device cuda) it says why and exits 0.
"""

from __future__ import annotations

import argparse
import csv
import gc
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
sys.path.insert(0, str(HERE))  # bench_conv.py, peers.py, conv_runners.py, unet_step.py

import bench_conv as bc  # machine facts, RSS, load, scene voxelization

LIBS = ("sparseconv", "spconv", "open3d", "minkowskiengine")
LABEL = {"sparseconv": "sparseconv", "spconv": "spconv", "open3d": "Open3D", "minkowskiengine": "MinkowskiEngine"}
KINDS = ("subm", "strided", "inverse")
DTYPES = ("fp16", "bf16", "fp32")
PHASES = [("map", "map build"), ("fwd", "forward"), ("fwdbwd", "forward + backward")]
MEASURES = PHASES + [("mem", "peak memory")]
TARGET = {"map": 1.0, "fwd": 0.8, "fwdbwd": 0.8, "mem": 1.0}  # ours / spconv at most (issue 15)
FLAGSHIP = {"kind": "subm", "voxels": 1_000_000, "C": 64, "dtype": "fp16", "fwdbwd_ms": 1.5}
UNET_TARGET = 0.8
DIFF_KEYS = ("out", "grad_feats", "grad_weight", "grad_bias")
INSTALL_HINT = {
    "spconv": "pip install spconv==2.3.8 (CPU) or spconv-cu126 (CUDA)",
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


def torch_dtype(name):
    import torch

    return {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[name]


def supports(lib: str, cfg: dict, device: str) -> bool:
    """Open3D is compared on SubMConv3d in float32 on the CPU only."""
    return lib != "open3d" or (cfg["kind"] == "subm" and cfg["dtype"] == "fp32" and device == "cpu")


def set_tf32(allow: bool) -> dict:
    """TF32 for float32 products, for both libraries: torch's matmul flag and spconv's own switch."""
    import torch

    torch.set_float32_matmul_precision("high" if allow else "highest")
    out = {"torch.get_float32_matmul_precision()": torch.get_float32_matmul_precision()}
    try:  # the flag sparseconv's kernels read (newer torch may warn that it is the legacy spelling)
        torch.backends.cuda.matmul.allow_tf32 = allow
        torch.backends.cudnn.allow_tf32 = allow
        out["torch.backends.cuda.matmul.allow_tf32"] = torch.backends.cuda.matmul.allow_tf32
    except (RuntimeError, AttributeError) as e:
        out["torch.backends.cuda.matmul.allow_tf32"] = f"not settable: {e}"
    try:
        import spconv.constants as spc

        spc.SPCONV_ALLOW_TF32 = allow  # read at call time by spconv.pytorch.ops
        out["spconv SPCONV_ALLOW_TF32"] = allow
    except ImportError:
        pass
    return out


# ------------------------------------------------------------------------------------------------------------
# child: one library, one or more configurations of one scene
# ------------------------------------------------------------------------------------------------------------


def make_inputs(cfg: dict, n_in: int, n_out: int, seed: int):
    """Weight [3, 3, 3, C, C], bias, features [n_in, C] and output gradient [n_out, C] in canonical (site-sorted)
    order, float32 rounded to the configuration's dtype (so the float32 reference sees the very same values)."""
    import torch

    c, dt = cfg["C"], torch_dtype(cfg["dtype"])
    g = torch.Generator().manual_seed(seed * 1000 + c * 10 + KINDS.index(cfg["kind"]))
    weight = torch.randn(3, 3, 3, c, c, generator=g) / (27 * c) ** 0.5
    bias = torch.randn(c, generator=g) * 0.1
    feats = torch.randn(n_in, c, generator=g)
    grad_out = torch.randn(n_out, c, generator=g)
    return [t.to(dt).float() for t in (weight, bias, feats, grad_out)]


def timed(fn, setup, repeats: int, warmup: int, cuda: bool, cap: float) -> list:
    """Seconds of `repeats` calls fn(setup()) after `warmup` ones (setup untimed); CUDA events around each call
    on CUDA. Stops early once the timed calls pass `cap` seconds (at least one is timed)."""
    import torch

    for _ in range(warmup):
        fn(setup())
    if cuda:
        torch.cuda.synchronize()
    out, t_start = [], time.perf_counter()
    for _ in range(repeats):
        arg = setup()
        if cuda:
            e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            e0.record()
            fn(arg)
            e1.record()
            e1.synchronize()
            out.append(e0.elapsed_time(e1) / 1e3)
        else:
            t0 = time.perf_counter()
            fn(arg)
            out.append(time.perf_counter() - t0)
        if time.perf_counter() - t_start > cap:
            break
    return out


def measure_config(lib: str, cfg: dict, scene: dict, args, dev, outputs: bool) -> dict:
    """One configuration in this child: timings, memory and (if `outputs`) the difference to the reference."""
    import conv_runners as cr
    import torch

    cuda = dev.type == "cuda"
    gc.collect()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        gpu_start = torch.cuda.memory_allocated()
    reset = bc.reset_peak_rss()
    rss_start = bc.rss_now_mib()
    dt = torch_dtype(cfg["dtype"])
    w32, b32, _, _ = make_inputs(cfg, 0, 0, args.seed)
    d = dict(scene, weight=w32.to(dev, dt), bias=b32.to(dev, dt))
    runner = cr.RUNNERS[lib](cfg["kind"], d, dev)
    _, _, f32, g32 = make_inputs(cfg, len(runner.in_order), len(runner.out_order), args.seed)
    feats = cr.to_native(f32, runner.in_order.cpu()).to(dev, dt)
    grad_out = cr.to_native(g32, runner.out_order.cpu()).to(dev, dt)
    res = {"lib": lib, **cfg, "info": runner.info(), "in_sites": runner.in_sites, "out_sites": runner.out_sites}

    def leaf():
        runner.zero_grad()
        return runner.with_cache(feats.detach().requires_grad_(True))

    def fwdbwd(x):
        runner.forward(x).backward(grad_out)

    T = {"repeats": args.repeats, "warmup": args.warmup, "cuda": cuda, "cap": args.phase_cap}
    res["times"] = {"map": timed(runner.build_map, lambda: None, **T)}
    with torch.no_grad():
        res["times"]["fwd"] = timed(runner.forward, lambda: runner.with_cache(feats), **T)
    res["times"]["fwdbwd"] = timed(fwdbwd, leaf, **T)
    if cuda:
        torch.cuda.synchronize()
        res["gpu_peak_mib"] = (torch.cuda.max_memory_allocated() - gpu_start) / 2**20
    res.update(rss_start_mib=rss_start, rss_peak_mib=bc.rss_peak_mib(), rss_peak_is_reset=reset)
    res["pairs"] = runner.pairs()
    if lib == "spconv" and not cuda:
        res["omp_threads"] = runner.peers.omp_threads()
    if outputs:
        res.update(output_check(lib, runner, cfg, scene, d, feats, grad_out, (w32, b32, f32, g32), dev))
    return res


def run_outputs(runner, feats, grad_out):
    """Output, input / weight / bias gradients of one forward + backward, canonical row order, float32, CPU."""
    import torch

    x = feats.detach().requires_grad_(True)
    runner.zero_grad()
    out = runner.forward(runner.with_cache(x))
    out.backward(grad_out)
    if x.is_cuda:
        torch.cuda.synchronize()
    io_, oo = runner.in_order.to(x.device), runner.out_order.to(x.device)
    return {"out": out.detach()[oo].float().cpu(), "grad_feats": x.grad[io_].float().cpu(),
            "grad_weight": runner.weight_grad().detach().float().cpu(), "grad_bias": runner.bias_grad().float().cpu()}


def output_check(lib, runner, cfg, scene, d, feats, grad_out, inputs32, dev) -> dict:
    """Errors against the float32 reference (sparseconv on the same device, same rounded inputs)."""
    import contextlib

    import conv_runners as cr

    res = {}
    spconv_cpu = lib == "spconv" and dev.type == "cpu"
    serial = runner.peers.serial_scatter() if spconv_cpu else contextlib.nullcontext()
    with serial:  # spconv's CPU scatter-add races: compare its exact (serial) result
        mine = run_outputs(runner, feats, grad_out)
    if spconv_cpu:
        res["race_max_abs_diff"] = diff(run_outputs(runner, feats, grad_out), mine)
    if lib == "sparseconv" and cfg["dtype"] == "fp32":
        ref = mine
    else:
        try:
            w32, b32, f32, g32 = inputs32
            ref_runner = cr.SparseconvRunner(cfg["kind"], dict(scene, weight=w32.to(dev), bias=b32.to(dev)), dev)
            ref = run_outputs(ref_runner, cr.to_native(f32, ref_runner.in_order.cpu()).to(dev),
                              cr.to_native(g32, ref_runner.out_order.cpu()).to(dev))
            del ref_runner
        except Exception as e:  # noqa: BLE001 - sparseconv missing or failing: no reference
            return {"ref_error": f"{type(e).__name__}: {e}"[:300]}
    res["err_abs"] = diff(mine, ref)
    res["ref_max"] = {k: float(v.abs().max()) if v.numel() else 0.0 for k, v in ref.items()}
    if lib == "open3d":  # the timed path (cached neighbour lists) against the layer's own call
        import torch

        with torch.no_grad():
            lay = runner.layer_output(feats).cpu()
        res["cached_vs_layer_max_abs_diff_out"] = float((lay[runner.out_order] - mine["out"]).abs().max())
    return res


def diff(a: dict, b: dict) -> dict:
    return {k: float((a[k] - b[k]).abs().max()) if a[k].numel() and a[k].shape == b[k].shape
            else (0.0 if a[k].shape == b[k].shape else float("inf")) for k in a}


def run_child(args) -> None:
    """--only LIB --job FILE: measure the job's configurations; the results list is rewritten after each one."""
    import torch

    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    if args.only == "spconv":  # import the library before the memory baseline
        import peers

        peers.load_spconv()
    elif args.only == "open3d":
        import open3d.ml.torch  # noqa: F401
    else:
        import sparseconv.nn  # noqa: F401
    if dev.type == "cuda":
        set_tf32(args.allow_tf32)
    job = json.loads(Path(args.job).read_text())
    s = torch.load(job["scene"])
    scene = {"coords": s["coords"].to(dev), "spatial_shape": list(s["spatial_shape"]), "batch_size": 1,
             "voxel_size": s["voxel_size"]}
    results = []
    for cfg in job["configs"]:
        try:
            r = measure_config(args.only, cfg, scene, args, dev, job["outputs"])
        except Exception as e:  # noqa: BLE001 - one configuration failing must not lose the others
            r = {"lib": args.only, **cfg, "error": f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[-1]}"}
            print(f"[compare child] {args.only} {cfg}: {type(e).__name__}: {e}", file=sys.stderr)
            if dev.type == "cuda":
                try:
                    torch.ones(1, device=dev).add_(1)
                    torch.cuda.synchronize()
                except Exception:  # the context is gone: the rest cannot run
                    results.append(r)
                    Path(args.result).write_text(json.dumps(results))
                    raise
        results.append(r)
        Path(args.result).write_text(json.dumps(results))


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
                    info.update(ok=False, reason="this build of sparseconv has no CUDA kernels "
                                "(build_info()['cuda'] is False; rebuild with FORCE_CUDA=1 where nvcc is)")
            else:
                import peers

                info["version"] = peers.spconv_version()
                if device == "cuda":
                    try:
                        from spconv.cppconstants import CPU_ONLY_BUILD
                    except ImportError:
                        CPU_ONLY_BUILD = False
                    if CPU_ONLY_BUILD:
                        info.update(ok=False, reason="the installed spconv wheel is CPU-only (install a "
                                    "spconv-cuXXX wheel matching torch's CUDA for GPU runs)")
        elif lib in INSTALL_HINT:
            info["reason"] = f"{why} ({INSTALL_HINT[lib]})"
        out[lib] = info
    for lib in ("open3d", "minkowskiengine"):
        if lib not in requested or (lib == "open3d" and device != "cpu"):
            continue
        try:
            p = subprocess.run([sys.executable, "-c", PROBES[lib]], capture_output=True, text=True, timeout=180,
                               check=False)
            ok, lines = p.returncode == 0, p.stdout.strip().splitlines()
            reason = None if ok else (_last_line(p.stderr) or f"import exited with {p.returncode}")
        except subprocess.TimeoutExpired:
            ok, lines, reason = False, [], "import timed out (180 s)"
        info = {"ok": ok, "version": lines[-1] if ok and lines else None, "reason": reason}
        if not ok:
            hint = "apt-get install libusb-1.0-0" if "libusb" in (reason or "") else INSTALL_HINT[lib]
            info["reason"] = f"{reason} ({hint})"
        elif device == "cuda" and "cuda=1" not in lines:
            info.update(ok=False, reason=f"{LABEL[lib]} {info['version']} was built without CUDA")
        out[lib] = info
    return out


def prepare_scene(target: int, args) -> dict:
    """One LiDAR-like scene, voxelized: from --scene-cache (bench_cuda's .npz files, which gpu_session.sh makes
    while it builds) when given, else sparseconv.voxelize on a fresh lidar_scene."""
    import torch

    t0 = time.perf_counter()
    if args.scene_cache:
        import bench_cuda

        coords, shape, points, how, _ = bench_cuda.load_scene(target, args.seed, args.scene_cache)
        coords, n_points, how = torch.from_numpy(coords), len(points), f"bench_cuda.load_scene ({how})"
    else:
        from sparseconv.data import lidar_scene

        points, _labels = lidar_scene(target, voxel_size=args.voxel_size, seed=args.seed)
        coords, shape, how = bc.voxelize_scene(points, args.voxel_size)
        n_points = len(points)
    return {"target": target, "points": n_points, "voxels": int(coords.shape[0]), "spatial_shape": list(shape),
            "voxelizer": how, "t_scene_s": time.perf_counter() - t0, "coords": coords.to(torch.int32)}


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


def cfg_id(c: dict) -> tuple:
    return (c["kind"], c["target"], c["C"], c["dtype"])


def run_job(args, workdir: Path, scene_path: str, cfgs: list, lib: str, rnd: int, runs: dict) -> float:
    """One child: `lib` on configurations `cfgs` of one scene in round `rnd`; merges into runs[cfg_id][lib].
    Returns its wall time."""
    job = workdir / f"job_{lib}_{rnd}_{abs(hash(tuple(cfg_id(c) for c in cfgs)))}.json"
    res_path = job.with_suffix(".res.json")
    job.write_text(json.dumps({"scene": scene_path, "outputs": rnd == 0,
                               "configs": [{k: c[k] for k in ("kind", "C", "dtype")} for c in cfgs]}))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--only", lib, "--job", str(job), "--result",
           str(res_path), "--threads", str(args.threads), "--device", args.device, "--repeats", str(args.repeats),
           "--warmup", str(args.warmup), "--phase-cap", str(args.phase_cap), "--seed", str(args.seed)]
    if args.allow_tf32:
        cmd.append("--allow-tf32")
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
    other = max(0.0, ((bc.cpu_busy_s() - b0) - (bc.children_cpu_s() - c0)) / wall)  # cores others kept busy
    done = json.loads(res_path.read_text()) if res_path.exists() else []
    what = f"{LABEL[lib]} round {rnd}, " + ", ".join(f"{c['kind']} {c['target']} C={c['C']} {c['dtype']}"
                                                       for c in cfgs[:4]) + (" ..." if len(cfgs) > 4 else "")
    if rc != 0:
        print(f"[compare] {what} failed (exit {rc}):\n{err[-2000:]}", file=sys.stderr)
    if other > 0.2 and args.device == "cpu":
        print(f"[compare] warning: other processes kept {other:.2f} cores busy during {what}: its timings are "
              "unreliable (--wait-idle, or a quiet machine)", file=sys.stderr)
    for i, c in enumerate(cfgs):
        slot = runs.setdefault(cfg_id(c), {})
        r = done[i] if i < len(done) else {"error": _last_line(err) or f"exit {rc}"}
        if "error" in r or "error" in slot.get(lib, {}):
            slot[lib] = {"error": r.get("error") or slot[lib]["error"]}
            continue
        r["other_load_cores"] = other
        if lib not in slot:
            slot[lib] = r
            continue
        m = slot[lib]  # merge rounds: all timings, the largest memory and other-process load
        for k, v in r["times"].items():
            m["times"][k] += v
        m["other_load_cores"] = max(m["other_load_cores"], other)
        if _growth(r) > _growth(m):
            m.update({k: r[k] for k in ("rss_start_mib", "rss_peak_mib")})
        if r.get("gpu_peak_mib", 0) > m.get("gpu_peak_mib", 0):
            m["gpu_peak_mib"] = r["gpu_peak_mib"]
    return wall


def run_parent(args) -> int:
    import torch

    t_start = time.perf_counter()
    if args.device == "cuda" and not torch.cuda.is_available():
        why = "torch is a CPU-only build" if torch.version.cuda is None else "no CUDA device is visible"
        print(f"CUDA is unavailable ({why}; torch {torch.__version__}): nothing to compare on cuda.")
        return 0
    facts = bc.machine_facts()
    facts.update(torch=torch.__version__, threads=args.threads, device=args.device)
    if args.device == "cuda":
        facts.update(gpu=torch.cuda.get_device_name(0), cuda=torch.version.cuda)
        facts["tf32"] = set_tf32(args.allow_tf32)  # what the children set (printed from the parent's view)
    facts["other_load_at_start"] = round(bc.foreign_load(1.0), 2)
    avail = availability(args.libs, args.device)
    for lib, a in avail.items():
        if not a["ok"]:
            print(f"[compare] {LABEL[lib]} unavailable: {a['reason']}", file=sys.stderr)
    usable = [lib for lib in LIBS if avail.get(lib, {}).get("ok")]  # round 0 order: sparseconv first
    if "sparseconv" not in usable:
        msg = "; ".join(f"{LABEL[k]}: {a['reason']}" for k, a in avail.items() if not a["ok"])
        if args.device == "cuda":  # expected while sparseconv here has no CUDA kernels: say so, not a failure
            print(f"Nothing to compare on CUDA: {msg}")
            return 0
        print(f"[compare] sparseconv is not usable: {msg}", file=sys.stderr)
        return 1

    configs, runs, skipped = [], {}, 0
    with tempfile.TemporaryDirectory(prefix="compare_peers_") as tmp:
        workdir = Path(tmp)
        scenes, unet_scene = [], None
        for target in args.voxels:
            sc = prepare_scene(target, args)
            coords = sc.pop("coords")
            if args.unet and target == args.unet_voxels:
                unet_scene = (coords, sc["spatial_shape"])
            sc["path"] = str(workdir / f"scene_{target}.pt")
            torch.save({"coords": coords, "spatial_shape": sc["spatial_shape"], "voxel_size": args.voxel_size},
                       sc["path"])
            scenes.append(sc)
            print(f"[compare] scene {target:,}: {sc['voxels']:,} voxels, grid {sc['spatial_shape']} "
                  f"({sc['voxelizer']}, {sc['t_scene_s']:.1f} s)", file=sys.stderr, flush=True)
            for kind in args.kinds:
                for c in args.channels:
                    for dt in args.dtypes:
                        configs.append({"kind": kind, "target": target, "C": c, "dtype": dt, "scene": sc})
        # jobs: on CUDA one per scene and library (the allocator's peak is exact per configuration), on the CPU
        # one per configuration and library (a fresh process for each RSS figure)
        groups = []
        for sc in scenes:
            mine = [c for c in configs if c["scene"] is sc]
            groups += [mine] if args.device == "cuda" else [[c] for c in mine]
        last = {}  # lib -> (seconds, work) of its last job: the estimate for the next
        for rnd in range(args.rounds):
            for cfgs in groups:
                for lib in usable[:: (-1) ** rnd]:
                    todo = [c for c in cfgs if supports(lib, c, args.device)]
                    if not todo:
                        continue
                    work = sum(c["scene"]["voxels"] * c["C"] for c in todo)
                    s0, w0 = last.get(lib, (0.0, 1))
                    est = min(s0 * work / w0, args.child_timeout)
                    if time.perf_counter() - t_start + est > args.budget:
                        skipped += 1
                        continue
                    print(f"[compare] round {rnd}: {LABEL[lib]}, {len(todo)} configuration(s) at "
                          f"{todo[0]['scene']['voxels']:,} voxels ({time.perf_counter() - t_start:.0f} s)",
                          file=sys.stderr, flush=True)
                    wall = run_job(args, workdir, todo[0]["scene"]["path"], todo, lib, rnd, runs)
                    last[lib] = (wall, work)
        unet = None
        if args.unet:
            unet = run_unet(args, unet_scene, t_start, usable)
    for c in configs:
        c["runs"] = runs.get(cfg_id(c), {})
        c["scene"] = {k: v for k, v in c["scene"].items() if k != "path"}
        for r in c["runs"].values():
            if "times" in r:
                r["median_s"] = {k: median(v) for k, v in r["times"].items()}
                r["n_times"] = "/".join(str(len(r["times"][k])) for k, _ in PHASES)
    results = {"machine": facts, "libs": avail, "configs": configs, "unet": unet, "skipped_jobs": skipped,
               "args": args, "runtime_s": time.perf_counter() - t_start}
    text = report(results, args)
    print(text)
    name = f"compare_peers{'_quick' if args.quick else ''}_{args.device}"
    stem = Path(args.out_dir) / name if args.out_dir else HERE / "results" / name
    write_atomic(stem.with_suffix(".md"), lambda t: Path(t).write_text(text))
    write_atomic(stem.with_suffix(".csv"), lambda t: Path(t).write_text(to_csv(results, args)))
    write_atomic(stem.with_suffix(".png"), lambda t: plot(results, t))
    print(f"\nwritten: {stem}.md, {stem}.csv, {stem}.png ({time.perf_counter() - t_start:.0f} s in all)")
    return 0


def run_unet(args, scene, t_start, usable):
    """unet_step.py's training step, both libraries (its own fresh processes): {"rows", "args"} or None."""
    import unet_step

    left = args.budget - (time.perf_counter() - t_start)
    if left < 30:
        print(f"[compare] U-Net step skipped: {left:.0f} s of --budget left", file=sys.stderr)
        return {"skipped": f"{left:.0f} s of --budget left"}
    ua = argparse.Namespace(device=args.device, voxels=args.unet_voxels, dtype=args.unet_dtype, cin=4, classes=8,
                            repeats=args.unet_repeats, warmup=args.unet_warmup, seed=args.seed,
                            timeout=args.child_timeout, libs=usable)
    print(f"[compare] U-Net step at {args.unet_voxels:,} voxels, {args.unet_dtype} "
          f"({time.perf_counter() - t_start:.0f} s)", file=sys.stderr, flush=True)
    if scene is None and args.scene_cache:
        sc = prepare_scene(args.unet_voxels, args)
        scene = (sc["coords"], sc["spatial_shape"])
    coords, shape = scene if scene is not None else (None, None)
    rows, _ = unet_step.measure(ua, log=lambda s: print(f"[unet_step] {s}", file=sys.stderr), coords=coords,
                                shape=shape)
    return {"rows": rows, "voxels": args.unet_voxels, "dtype": args.unet_dtype, "repeats": args.unet_repeats,
            "warmup": args.unet_warmup}


# ------------------------------------------------------------------------------------------------------------
# output
# ------------------------------------------------------------------------------------------------------------


def _growth(r: dict):
    return r["rss_peak_mib"] - r["rss_start_mib"] if "rss_peak_mib" in r else None


def _mem(r: dict, device: str):
    return r.get("gpu_peak_mib") if device == "cuda" else _growth(r)


def value(r: dict, key: str, device: str):
    """ms for a phase, MiB for "mem"; None when not measured."""
    if "median_s" not in r:
        return None
    return _mem(r, device) if key == "mem" else r["median_s"][key] * 1e3


def ratio(cfg: dict, lib: str, key: str, device: str):
    """ours / lib (< 1: sparseconv faster or smaller)."""
    a, b = value(cfg["runs"].get("sparseconv", {}), key, device), value(cfg["runs"].get(lib, {}), key, device)
    return a / b if a is not None and b else None


def verdicts(cfg: dict, device: str) -> dict:
    """measure -> True / False against issue 15's targets (ours / spconv), plus "flagship" on its row."""
    out = {k: (q <= TARGET[k]) for k in TARGET for q in [ratio(cfg, "spconv", k, device)] if q is not None}
    f = FLAGSHIP
    if (cfg["kind"], cfg["C"], cfg["dtype"]) == (f["kind"], f["C"], f["dtype"]) and device == "cuda" \
            and cfg["scene"]["voxels"] >= 0.9 * f["voxels"]:
        t = value(cfg["runs"].get("sparseconv", {}), "fwdbwd", device)
        if t is not None:
            out["flagship"] = t <= f["fwdbwd_ms"]
    return out


def _num(x):
    if x is None:
        return "n/a"
    return f"{x:.3g}" if x < 100 else f"{x:.0f}"


def _err(d: dict, keys=("out", "grad_feats", "grad_weight")) -> str:
    return "/".join(f"{d[k]:.0e}" for k in keys)


def diff_cell(cfg: dict) -> str:
    """float32: spconv's max abs difference to sparseconv (out / d feats / d weight); fp16 / bf16: each
    library's max abs error relative to the float32 reference's largest value."""
    runs = cfg["runs"]
    if cfg["dtype"] == "fp32":
        r = runs.get("spconv", {})
        return _err(r["err_abs"]) if "err_abs" in r else "n/a"
    cells = []
    for lib in ("sparseconv", "spconv"):
        r = runs.get(lib, {})
        if "err_abs" in r:
            rel = {k: r["err_abs"][k] / max(r["ref_max"][k], 1e-30) for k in DIFF_KEYS}
            cells.append(f"{'ours' if lib == 'sparseconv' else lib} {_err(rel)}")
    return ", ".join(cells) or "n/a"


def report(results: dict, args) -> str:
    out = io.StringIO()

    def w(s=""):
        out.write(s + "\n")

    m, avail, dev = results["machine"], results["libs"], args.device
    w(f"## Sparse 3x3x3 convolutions C -> C on {'CUDA' if dev == 'cuda' else 'the CPU'}: sparseconv against "
      "its peers (issue 15)\n")
    if dev == "cuda":
        w(f"- GPU {m['gpu']}, CUDA {m['cuda']}; torch {m['torch']}; Python {m['python']}; CPU {m['cpu']}, "
          f"{m['cores']} cores")
        w("- TF32: " + ("ON (--allow-tf32)" if args.allow_tf32 else "off") + " ("
          + ", ".join(f"{k} = {v}" for k, v in m["tf32"].items()) + ")")
    else:
        w(f"- machine: {m['cpu']}, {m['cores']} cores ({', '.join(m['simd']) or 'no AVX'}), {m['mem_gib']} GiB; "
          f"torch {m['torch']}, {m['threads']} threads; Python {m['python']}")
        w(f"- other processes' CPU load at start: {m['other_load_at_start']:.2f} cores")
    for lib in LIBS:
        a = avail.get(lib)
        if a is not None:
            algo = next((r["info"].get("algo") for c in results["configs"] for r in [c["runs"].get(lib, {})]
                         if "info" in r and r["info"].get("algo")), None)
            w(f"- {LABEL[lib]}: " + (f"{a['version']}" + (f" ({algo})" if algo else "") if a["ok"]
                                     else f"unavailable: {a['reason']}"))
    timing = "CUDA events around each call" if dev == "cuda" else "perf_counter"
    w(f"- medians of {args.rounds} round(s) x {args.repeats} runs after {args.warmup} warm-up ({timing}), library "
      "order reversed every round; one process per library per "
      + ("scene" if dev == "cuda" else "configuration")
      + f"; scenes `sparseconv.data.lidar_scene(N, voxel_size={args.voxel_size}, seed={args.seed})`")
    w("- kinds: subm = SubMConv3d; strided = SparseConv3d stride 2, padding 1; inverse = SparseInverseConv3d "
      "undoing it (voxels: the scene's; the strided output has about 1/4 as many); all with bias; map cached for "
      "forward and forward + backward (input, weight and bias gradients)")
    mem_def = ("peak of torch's CUDA allocator over the layer's set-up and timed phases, inputs included"
               if dev == "cuda" else "peak RSS growth of the child over imports + scene, largest round")
    if not avail.get("spconv", {}).get("ok"):
        w(f"- cells: sparseconv's median ms (memory MiB: {mem_def}); spconv is not available: no ratios")
    else:
        w("- cells: ours / spconv in ms (memory MiB: "
          + mem_def + "), then the ratio ours / spconv and PASS / MISS against issue 15's GPU targets: forward and "
          "forward + backward <= 0.8x, map build and memory <= 1x; subm 1M C=64 fp16 forward + backward <= 1.5 ms"
          + ("" if dev == "cuda" else " (on the CPU for information only)"))
    w("- diff: fp32: spconv's max abs difference to sparseconv, out / d feats / d weight; fp16, bf16: max abs "
      "error relative to the largest value of a float32 sparseconv reference on the same rounded inputs")
    if results["skipped_jobs"]:
        w(f"- {results['skipped_jobs']} runs skipped to stay within --budget {args.budget:.0f} s")
    w()
    peer = "spconv" if avail.get("spconv", {}).get("ok") else None
    w("| kind | voxels | C | dtype | map build (ms) | forward (ms) | forward + backward (ms) | peak memory (MiB) "
      "| diff |")
    w("|---|---|---|---|---|---|---|---|---|")
    met, total = 0, 0
    for cfg in results["configs"]:
        runs = cfg["runs"]
        ours, sp = runs.get("sparseconv", {}), runs.get("spconv", {})
        ok = verdicts(cfg, dev)
        met, total = met + sum(ok.values()), total + len(ok)
        cells = []
        for key, _ in MEASURES:
            if "error" in ours:
                cells.append(f"ours failed: {ours['error'][:60]}")
                continue
            a = value(ours, key, dev)
            if peer is None:
                cells.append(_num(a))
                continue
            if "error" in sp:
                cells.append(f"{_num(a)} / failed")
                continue
            b, q = value(sp, key, dev), ratio(cfg, "spconv", key, dev)
            cell = f"{_num(a)} / {_num(b)}" + (f" = {q:.2f}x {'PASS' if ok[key] else 'MISS'}" if q else "")
            if key == "fwdbwd" and "flagship" in ok:
                cell += f"; {'PASS' if ok['flagship'] else 'MISS'} <= {FLAGSHIP['fwdbwd_ms']} ms"
            cells.append(cell)
        w(f"| {cfg['kind']} | {cfg['scene']['voxels']:,} | {cfg['C']} | {cfg['dtype']} | " + " | ".join(cells)
          + f" | {diff_cell(cfg)} |")
    w()
    if peer:
        w(f"targets met: {met} of {total}" + ("" if dev == "cuda" else " (GPU targets; CPU figures for information)"))
    others = [lib for lib in ("open3d", "minkowskiengine") if avail.get(lib, {}).get("ok")]
    for lib in others:
        w(f"\n{LABEL[lib]} (ratio ours / {LABEL[lib]}; subm, float32):\n")
        w("| voxels | C | map build (ms) | forward (ms) | forward + backward (ms) | peak memory (MiB) | diff |")
        w("|---|---|---|---|---|---|---|")
        for cfg in results["configs"]:
            r = cfg["runs"].get(lib)
            if r is None:
                continue
            if "error" in r:
                w(f"| {cfg['scene']['voxels']:,} | {cfg['C']} | failed: {r['error'][:80]} | | | | |")
                continue
            cells = [f"{_num(value(r, k, dev))} ({_num(ratio(cfg, lib, k, dev))}x)" for k, _ in MEASURES]
            w(f"| {cfg['scene']['voxels']:,} | {cfg['C']} | " + " | ".join(cells)
              + f" | {_err(r['err_abs']) if 'err_abs' in r else 'n/a'} |")
    notes = []
    for cfg in results["configs"]:
        runs, tag = cfg["runs"], f"{cfg['kind']} {cfg['scene']['voxels']:,} C={cfg['C']} {cfg['dtype']}"
        sites = {lib: (r.get("in_sites"), r.get("out_sites")) for lib, r in runs.items() if "in_sites" in r}
        if len(set(map(str, sites.values()))) > 1:
            notes.append(f"{tag}: SITE SETS DIFFER between libraries: {sites}")
        pairs = {lib: r["pairs"] for lib, r in runs.items() if "pairs" in r}
        if len(set(pairs.values())) > 1:
            notes.append(f"{tag}: PAIR COUNTS DIFFER: {pairs}")
        race = runs.get("spconv", {}).get("race_max_abs_diff")
        if race:
            notes.append(f"{tag}: spconv as shipped vs its serial scatter-add (race): {_err(race)}")
        cl = runs.get("open3d", {}).get("cached_vs_layer_max_abs_diff_out")
        if cl is not None:
            notes.append(f"{tag}: Open3D timed path vs its layer call, output {cl:.1e}")
        for lib, r in runs.items():
            if "error" in r:
                notes.append(f"{tag}: {LABEL[lib]} failed: {r['error'][:300]}")
            if "ref_error" in r:
                notes.append(f"{tag}: {LABEL[lib]}: no float32 reference ({r['ref_error']})")
    by = {cfg_id(c): c for c in results["configs"]}
    for c in results["configs"]:  # issue 15: bf16 as fast as fp16 (ours)
        h = by.get((c["kind"], c["target"], c["C"], "fp16"))
        if c["dtype"] == "bf16" and h is not None:
            a, b = (c["runs"].get("sparseconv", {}), h["runs"].get("sparseconv", {}))
            q = [value(a, k, dev) / value(b, k, dev) for k in ("fwd", "fwdbwd")
                 if value(a, k, dev) and value(b, k, dev)]
            if len(q) == 2:
                notes.append(f"{c['kind']} {c['scene']['voxels']:,} C={c['C']}: ours bf16 / fp16: forward "
                             f"{q[0]:.2f}x, forward + backward {q[1]:.2f}x (target: as fast)")
    if notes:
        w("\n" + "\n".join(f"- {n}" for n in notes))
    c0 = next((c for c in results["configs"] if "sparseconv" in c["runs"] and "n_times" in c["runs"]["sparseconv"]),
              None)
    if c0:
        busy = max((r.get("other_load_cores", 0.0) for c in results["configs"] for r in c["runs"].values()),
                   default=0.0)
        w(f"\n- timed runs per phase (map / fwd / fwd+bwd), e.g. {c0['kind']} {c0['scene']['voxels']:,}: "
          + ", ".join(f"{LABEL[lib]} {r['n_times']}" for lib, r in c0["runs"].items() if "n_times" in r)
          + ("" if dev == "cuda" else f"; most CPU used by other processes during a run {busy:.2f} cores"))
    u = results.get("unet")
    if u:
        w(f"\n### 4-level U-Net training step (benchmarks/unet_step.py; target ours <= {UNET_TARGET}x spconv)\n")
        if "skipped" in u:
            w(f"skipped: {u['skipped']}")
        else:
            w(f"{u['voxels']:,}-voxel scene, {u['dtype']}, medians of {u['repeats']} steps after {u['warmup']} "
              "warm-up, each library in its own process; forward, loss, backward, SGD step (maps built every step)\n")
            w("| library | voxels | step (ms) | peak memory (MiB) | ours / spconv | first loss |")
            w("|---|---|---|---|---|---|")
            for r in u["rows"]:
                if "step_ms" not in r:
                    w(f"| {r['lib']} | - | unavailable: {r['error'][:200]} | | | |")
                    continue
                q = r.get("ratio")
                verdict = f" {'PASS' if q <= UNET_TARGET else 'MISS'}" if q is not None and r["lib"] == "sparseconv" \
                    else ""
                w(f"| {r['lib']} | {r['voxels']:,} | {r['step_ms']:.1f} | {r['peak_mib']:.0f} | "
                  f"{q if q is not None else 'n/a'}{verdict} | {r['first_loss']:.6f} |")
    w(f"\nruntime {results['runtime_s']:.0f} s")
    return out.getvalue()


CSV_FIELDS = [
    "kind", "voxels", "C", "dtype", "library", "version", "status", "device", "tf32", "threads", "pairs",
    "timed_runs", "map_ms", "fwd_ms", "fwdbwd_ms", "peak_mem_mib", "step_ms",
    "max_abs_err_out", "max_abs_err_grad_feats", "max_abs_err_grad_weight", "max_abs_err_grad_bias",
    "ref_max_out", "ref_max_grad_feats", "ref_max_grad_weight",
    "ratio_map", "ratio_fwd", "ratio_fwdbwd", "ratio_mem", "pass_map", "pass_fwd", "pass_fwdbwd", "pass_mem",
    "pass_flagship", "other_load_cores",
]


def to_csv(results: dict, args) -> str:
    """One row per configuration and library; ratio_* = sparseconv's value / this library's; pass_* on spconv's
    rows (issue 15's targets); max_abs_err_* against the float32 sparseconv reference; U-Net rows: kind
    unet_step, step_ms."""
    buf = io.StringIO()
    wr = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    wr.writeheader()
    avail, dev = results["libs"], args.device

    def num(x, fmt="{:.6g}"):
        return "" if x is None else fmt.format(x)

    for cfg in results["configs"]:
        ok = verdicts(cfg, dev)
        for lib in LIBS:
            if lib not in avail or not supports(lib, cfg, dev):
                continue
            a, r = avail[lib], cfg["runs"].get(lib, {})
            row = {"kind": cfg["kind"], "voxels": cfg["scene"]["voxels"], "C": cfg["C"], "dtype": cfg["dtype"],
                   "library": lib, "version": a.get("version") or "", "device": dev, "tf32": int(args.allow_tf32),
                   "threads": args.threads}
            if not a["ok"]:
                row["status"] = f"unavailable: {a['reason']}"
            elif "error" in r:
                row["status"] = f"failed: {r['error']}"
            elif "median_s" not in r:
                row["status"] = "skipped (time budget)"
            else:
                row.update(status="ok", pairs=r["pairs"], timed_runs=r["n_times"],
                           other_load_cores=num(r.get("other_load_cores"), "{:.2f}"))
                for key, _ in MEASURES:
                    row[f"{key}_ms" if key != "mem" else "peak_mem_mib"] = num(value(r, key, dev))
                    if lib != "sparseconv":
                        row[f"ratio_{key}"] = num(ratio(cfg, lib, key, dev), "{:.3f}")
                for k in DIFF_KEYS:
                    row[f"max_abs_err_{k}"] = num(r.get("err_abs", {}).get(k), "{:.3e}")
                for k in DIFF_KEYS[:3]:
                    row[f"ref_max_{k}"] = num(r.get("ref_max", {}).get(k), "{:.4g}")
                if lib == "spconv":
                    row.update({f"pass_{k}": int(v) for k, v in ok.items()})
            wr.writerow(row)
    u = results.get("unet") or {}
    for r in u.get("rows", []):
        wr.writerow({"kind": "unet_step", "voxels": r.get("voxels", u["voxels"]), "dtype": u["dtype"],
                     "library": r["lib"], "device": dev, "tf32": int(args.allow_tf32),
                     "status": "ok" if "step_ms" in r else f"unavailable: {r.get('error')}",
                     "step_ms": num(r.get("step_ms")), "peak_mem_mib": num(r.get("peak_mib")),
                     "ratio_fwdbwd": num(r.get("ratio") if r["lib"] == "spconv" else None, "{:.3f}")})
    return buf.getvalue()


def plot(results: dict, path: str) -> None:
    """One panel per measure, one bar per configuration: ours / spconv (log scale, the target as a dashed line,
    green where met) with both values written beside it; without spconv, our values. The U-Net step ratio is the
    last bar of the forward + backward panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullFormatter

    args, dev, configs = results["args"], results["args"].device, results["configs"]
    has_peer = results["libs"].get("spconv", {}).get("ok", False)
    labels = [f"{c['kind']} {c['scene']['voxels'] / 1e3:,.0f}k C{c['C']} {c['dtype']}" for c in configs]
    u = results.get("unet") or {}
    urow = next((r for r in u.get("rows", []) if r["lib"] == "sparseconv" and "ratio" in r), None)
    names = labels + ([f"U-Net step {u['voxels'] / 1e3:,.0f}k {u['dtype']}"] if urow and has_peer else [])
    fig, axes = plt.subplots(1, 4, figsize=(20, max(3.0, 1.2 + 0.3 * len(names))), squeeze=False,
                             sharey=True)
    axes[0][0].invert_yaxis()  # first configuration on top (shared: once)
    for ax, (key, label) in zip(axes[0], MEASURES):
        ys, vals, cols = [], [], []
        for c in configs:
            a = value(c["runs"].get("sparseconv", {}), key, dev)
            b = value(c["runs"].get("spconv", {}), key, dev) if has_peer else None
            q = a / b if a is not None and b else None
            ys.append(q if has_peer else a)
            vals.append(f"{_num(a)} / {_num(b)}" if has_peer else _num(a))
            cols.append("#bbbbbb" if q is None else ("#2ca02c" if q <= TARGET[key] else "#d62728"))
        if len(names) > len(configs):  # the U-Net row: its step in the forward + backward panel only
            sp = next((r for r in u["rows"] if r["lib"] == "spconv" and "step_ms" in r), {})
            q = urow["ratio"] if key == "fwdbwd" else None
            ys.append(q)
            vals.append(f"{urow['step_ms']:.3g} / {sp.get('step_ms', float('nan')):.3g}" if q else "")
            cols.append("#2ca02c" if q and q <= UNET_TARGET else "#d62728")
        pos = list(range(len(ys)))
        if has_peer:  # bars grow from 1x: left of it sparseconv is faster (smaller)
            ax.barh(pos, [(y - 1.0) if y else 0 for y in ys], left=1.0, color=cols)
            ax.set_xscale("log")
            lo, hi = min([y for y in ys if y] + [0.5]), max([y for y in ys if y] + [2.0])
            ax.set_xlim(lo / 1.5, hi * 4)
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.axvline(TARGET[key], color="k", linestyle="--", linewidth=1)
            ax.axvline(1.0, color="#888888", linewidth=0.8)
            ax.set_xlabel(f"ours / spconv (target <= {TARGET[key]}x; labels: ours / spconv "
                          f"{'MiB' if key == 'mem' else 'ms'})", fontsize=8)
        else:
            ax.barh(pos, [y or 0 for y in ys], color=cols)
            ax.set_xlabel("MiB" if key == "mem" else "ms (median)", fontsize=8)
        for p, y, v in zip(pos, ys, vals):
            ax.annotate(v, (max(y or 1.0, 1.0) if has_peer else (y or 0), p), xytext=(3, 0),
                        textcoords="offset points", va="center", fontsize=7)
        ax.set_yticks(pos)
        ax.set_yticklabels(names, fontsize=7)
        ax.set_title(label, fontsize=9)
    m = results["machine"]
    where = f"{m['gpu']} (CUDA {m['cuda']})" if dev == "cuda" else f"{m['cpu']}, {m['threads']} threads"
    libs = ", ".join(f"{LABEL[k]} {a['version']}" for k, a in results["libs"].items() if a["ok"])
    fig.suptitle(f"3x3x3 sparse convolutions C -> C, medians; {where}; torch {m['torch']}; {libs}"
                 + ("; TF32 on" if args.allow_tf32 else ""), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--quick", action="store_true",
                    help="cuda: 1M voxels, C = 64, fp16; cpu: 50k voxels, C = 32, fp32 (all kinds; U-Net smaller)")
    ap.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    ap.add_argument("--voxels", type=int, nargs="+", help="scene sizes (default 200000 1000000)")
    ap.add_argument("--channels", type=int, nargs="+", help="C of the C -> C layer (default 32 64)")
    ap.add_argument("--dtypes", nargs="+", choices=DTYPES, help="default: cuda fp16 bf16 fp32; cpu fp32")
    ap.add_argument("--rounds", type=int,
                    help="rounds, library order reversed every round (cpu 2, --quick 1; cuda 1)")
    ap.add_argument("--repeats", type=int, help="timed runs per phase per round (cpu 3, --quick 5; cuda 20)")
    ap.add_argument("--warmup", type=int, help="untimed runs before the timed ones (cpu 1, cuda 3)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads (default: all cores)")
    ap.add_argument("--libs", nargs="+", choices=LIBS, default=list(LIBS), help="libraries to try")
    ap.add_argument("--allow-tf32", action="store_true", help="TF32 for float32 products in both libraries")
    ap.add_argument("--no-unet", dest="unet", action="store_false", help="skip the U-Net training step")
    ap.add_argument("--unet-voxels", type=int, help="U-Net scene (default cuda 1M; cpu 100k, --quick 5k)")
    ap.add_argument("--unet-dtype", choices=("float32", "float16", "bfloat16"),
                    help="U-Net autocast dtype (default cuda float16, cpu float32)")
    ap.add_argument("--unet-repeats", type=int, help="U-Net steps timed (default 10, cpu --quick 3)")
    ap.add_argument("--unet-warmup", type=int, help="U-Net warm-up steps (default 3, cpu --quick 1)")
    ap.add_argument("--voxel-size", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scene-cache", help="folder of bench_cuda.py's scene files (.npz), made if missing")
    ap.add_argument("--budget", type=float,
                    help="seconds; later runs are skipped past it (default: --quick 170, full 1500 cuda, 3600 cpu)")
    ap.add_argument("--phase-cap", type=float, default=15.0, metavar="SECONDS",
                    help="stop a phase's timed calls once they pass this (long calls get fewer repeats)")
    ap.add_argument("--child-timeout", type=float, default=300.0, help="seconds one child may take")
    ap.add_argument("--wait-idle", type=float, default=0.0, metavar="SECONDS",
                    help="before each run, wait up to this long for other processes to leave the CPUs idle")
    ap.add_argument("--out-dir", help="where the .md/.csv/.png go (default benchmarks/results)")
    ap.add_argument("--only", choices=LIBS, help=argparse.SUPPRESS)
    ap.add_argument("--job", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    cuda = args.device == "cuda"
    if args.voxels is None:
        args.voxels = ([1_000_000] if cuda else [50_000]) if args.quick else [200_000, 1_000_000]
    if args.channels is None:
        args.channels = ([64] if cuda else [32]) if args.quick else [32, 64]
    if args.dtypes is None:
        args.dtypes = (["fp16"] if args.quick else list(DTYPES)) if cuda else ["fp32"]
    quick_cpu = args.quick and not cuda  # one round of more runs: 6 child processes, U-Net included, ~2 min here
    for k, c, g in (("rounds", 1, 1 if quick_cpu else 2), ("repeats", 20, 5 if quick_cpu else 3), ("warmup", 3, 1)):
        if getattr(args, k) is None:
            setattr(args, k, c if cuda else g)
    if args.unet_voxels is None:
        args.unet_voxels = 1_000_000 if cuda else (5_000 if args.quick else 100_000)
    args.unet_dtype = args.unet_dtype or ("float16" if cuda else "float32")
    args.unet_repeats = args.unet_repeats or (3 if quick_cpu else 10)
    args.unet_warmup = args.unet_warmup if args.unet_warmup is not None else (1 if quick_cpu else 3)
    if args.budget is None:
        args.budget = 170.0 if args.quick else (1500.0 if cuda else 3600.0)
    if min(args.repeats, args.rounds, args.threads) < 1 or args.warmup < 0:
        ap.error("--repeats, --rounds and --threads must be >= 1, --warmup >= 0")
    if args.only:
        run_child(args)
        return 0
    return run_parent(args)


if __name__ == "__main__":
    sys.exit(main())
