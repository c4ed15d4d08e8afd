#!/usr/bin/env python
"""Peak memory and time of one sparse 3x3x3 layer against a dense Conv3d, by grid resolution and density.

One layer, 16 -> 16 channels, float32, batch 1, on the CPU (sparseconv has no CUDA kernels yet):

  subm    sparseconv.nn.SubMConv3d(16, 16, 3)                   output sites = input sites
  sparse  sparseconv.nn.SparseConv3d(16, 16, 3, 1, padding=1)   output = input sites dilated by the kernel
  dense   torch.nn.Conv3d(16, 16, 3, padding=1)                 on the densified input [1, 16, R, R, R]

on round(density * R^3) active sites of two kinds: `uniform` (random cells) and `surface` (voxelized random
sphere shells and planes, one voxel thick: what LiDAR gives).

Memory is measured, not modelled. Every point runs in a fresh process, forked from a forkserver that has only
imported torch and sparseconv (a point starts in ~0.2 s instead of a 2 s interpreter start). It builds its
inputs, runs the layer once untimed (one-time costs: oneDNN primitives, code pages), then reads the peak RSS
(VmHWM, reset through /proc/self/clear_refs) over one forward (no_grad) and over one forward + backward.
Reported peak = the layer's inputs (features + coordinates, or the dense tensor; for forward + backward also
the output gradient) + the peak RSS growth during the call. Time: median of --repeats calls; sparse calls get
a new SparseTensor each, so the kernel-map build is included, as for a new input.

Not run, and marked in the table: dense points whose estimated need (5 dense tensors for forward + backward,
as measured at 64^3..256^3) exceeds --mem-fraction of MemAvailable ("OOM": we do not provoke the OOM killer on
a shared machine), and sparse points with more than --max-sites input or output sites ("skip": it bounds the
run time). Dense cost ignores the density (it multiplies the zeros too), so above 64^3 dense is measured at
one density per resolution and reused for the others (`dense_from` in the CSV).

Crossover: per input kind, resolution and sparse layer, the density at which the dense layer becomes as cheap
(peak memory, time), interpolated in log-log between the measured densities around it.

Prints the machine facts and markdown tables, writes memory_vs_density.csv and .png under --out-dir
(with a _quick suffix for --quick, so that a smoke test leaves the full results alone).

    .venv/bin/python benchmarks/memory_vs_density.py --quick   # 32/64/512^3 x 0.1/1/10 %: ~1 min
    .venv/bin/python benchmarks/memory_vs_density.py           # 32..2048^3 x 0.1..30 %: ~15 min (2 cores)
"""

from __future__ import annotations

import argparse
import csv
import itertools
import math
import multiprocessing as mp
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_conv import cpu_busy_s, machine_facts, reset_peak_rss, rss_now_mib, rss_peak_mib  # noqa: E402

METHODS = ("subm", "sparse", "dense")
LABELS = {"subm": "SubMConv3d", "sparse": "SparseConv3d", "dense": "dense Conv3d"}
KINDS = ("uniform", "surface")
FULL_RES, FULL_DENS = (32, 64, 128, 256, 512, 1024, 2048), (0.001, 0.003, 0.01, 0.03, 0.1, 0.3)
QUICK_RES, QUICK_DENS = (32, 64, 512), (0.001, 0.01, 0.1)
DENSE_TENSORS = 5.2  # dense forward + backward need, in C x R^3 float32 tensors: 5.0 measured, + margin
DENSE_ALL_DENSITIES_UP_TO = 64  # dense measured at every density up to this R (showing it ignores density)
MIB, GIB = 2.0**20, 2.0**30
# glibc's mmap threshold otherwise grows when big blocks are freed, and a later call then reuses heap pages
# that are already resident: their use would not show in the peak RSS. Set before the forkserver starts.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "262144", "MALLOC_TRIM_THRESHOLD_": "262144"}
CSV_FIELDS = (
    "kind resolution density sites_in method status note sites_out input_mib grad_out_mib mem_fwd_mib "
    "mem_fwdbwd_mib t_fwd_ms t_fwdbwd_ms repeats dense_from need_gib other_load_cores"
).split()


def pct(d):
    return f"{100 * d:.2g}%" if d < 0.01 else f"{100 * d:.3g}%"


def fmt(v):
    if v is None:
        return "-"
    return "<0.1" if v < 0.1 else f"{v:.2f}" if v < 10 else f"{v:.1f}" if v < 100 else f"{v:.0f}"


def count(n):
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k" if n >= 1e4 else str(n)


def mem_available():
    with open("/proc/meminfo") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))


# ------------------------------------------------------------------------------------------------------------
# inputs: sorted int64 cell keys (x * R + y) * R + z, made with NumPy (loops over surfaces and chunks only)
# ------------------------------------------------------------------------------------------------------------


def unique(a):
    """Sorted distinct values: sort + compare, several times faster than np.unique's hash table (NumPy 2.x) on
    millions of int64 keys."""
    a = np.sort(a, axis=None)
    return a[np.concatenate(([True], a[1:] != a[:-1]))]


def keys_to_coords(keys, R):
    return np.stack([keys // (R * R), keys // R % R, keys % R], 1).astype(np.int32)


def uniform_sites(R, n, rng):
    """n distinct random cells: draw, dedupe, top up (rng.choice(R^3) would allocate the whole grid)."""
    keys = np.empty(0, np.int64)
    while keys.size < n:
        keys = unique(np.concatenate([keys, rng.integers(0, R**3, int(1.1 * (n - keys.size)) + 16)]))
    return np.sort(rng.choice(keys, n, replace=False)) if keys.size > n else keys


def _surface(R, rng, sphere, per_area=3.0, chunk=1 << 22):
    """Keys of the cells a random sphere shell or plane crosses, from per_area random points per unit area (a
    few cells stay empty, as in a scan)."""
    if sphere:
        c, r = rng.uniform(0.15 * R, 0.85 * R, 3), max(1.5, rng.uniform(0.08, 0.45) * R)
        m = int(4 * math.pi * r * r * per_area) + 64
    else:
        c, half = rng.uniform(0.3 * R, 0.7 * R, 3), 0.75 * R  # a 1.5 R square around c, clipped to the grid
        axes = np.linalg.qr(rng.standard_normal((3, 2)))[0].T.astype(np.float32)  # orthonormal, in the plane
        m = int((2 * half) ** 2 * per_area) + 64
    out = []
    for start in range(0, m, chunk):  # points in chunks of 4M, to bound the temporary memory
        k = min(chunk, m - start)
        if sphere:
            d = rng.standard_normal((k, 3)).astype(np.float32)
            p = c.astype(np.float32) + np.float32(r) * d / np.linalg.norm(d, axis=1, keepdims=True)
        else:
            p = c.astype(np.float32) + rng.uniform(-half, half, (k, 2)).astype(np.float32) @ axes
        q = np.floor(p).astype(np.int64)
        q = q[((q >= 0) & (q < R)).all(1)]
        out.append(unique((q[:, 0] * R + q[:, 1]) * R + q[:, 2]))
    return unique(np.concatenate(out))


def surface_sites(R, n, rng):
    """n cells on random sphere shells and planes (alternating): the union of surfaces 0, 1, 2, ... up to the
    one that reaches n cells, of which only the new cells of lowest key (a slab of it) are kept, so the count
    is exact and the sites stay on surfaces."""
    parts, total, want = [], 0, n
    while True:
        # Surfaces of total area A overlap like random sets: their union holds ~R^3 (1 - exp(-A / R^3)) cells.
        while total < 1.1 * -(R**3) * math.log(max(1e-9, 1 - want / R**3)):
            parts.append(_surface(R, rng, sphere=len(parts) % 2 == 0))
            total += parts[-1].size
        keys, first = np.unique(np.concatenate(parts), return_index=True)
        if keys.size >= n:
            break
        want += 1.5 * (n - keys.size)
    owner = np.repeat(np.arange(len(parts)), [p.size for p in parts])[first]  # first surface with the cell
    return np.sort(keys[np.lexsort((keys, owner))[:n]])


OFFSETS = np.stack(np.meshgrid(*[np.arange(-1, 2)] * 3, indexing="ij"), -1).reshape(-1, 3)


def dilated_count(keys, R, rng, samples=4000):
    """SparseConv3d(3, stride 1, padding 1)'s output sites (cells with an active site in their 3x3x3 window),
    to skip points over --max-sites without building them. Exact for small inputs; else from a sample of
    sites, each candidate cell weighted by 1 / (active sites in its window), so every output cell counts once
    in expectation. -> (count, exact)"""
    n = keys.size
    exact = 27 * n <= 3_000_000
    idx = np.arange(n) if exact else rng.choice(n, samples, replace=False)
    cand = keys_to_coords(keys[idx], R).astype(np.int64)[:, None] + OFFSETS  # [m, 27, 3]
    inside = ((cand >= 0) & (cand < R)).all(-1)
    if exact:
        c = cand[inside]
        return int(unique((c[:, 0] * R + c[:, 1]) * R + c[:, 2]).size), True
    win = cand[:, :, None] + OFFSETS  # [m, 27, 27, 3]: each candidate's window
    wk = (win[..., 0] * R + win[..., 1]) * R + win[..., 2]
    hit = (keys[np.searchsorted(keys, wk).clip(max=n - 1)] == wk) & ((win >= 0) & (win < R)).all(-1)
    return round(n / samples * float((inside / np.maximum(hit.sum(-1), 1)).sum())), False


# ------------------------------------------------------------------------------------------------------------
# one point, in a fresh process
# ------------------------------------------------------------------------------------------------------------


def measure(method, R, coords_path, C, threads, repeats, slow_s, seed):
    import gc

    import torch

    import sparseconv
    import sparseconv.nn as spnn

    gc.freeze()  # the server's objects: a collection would copy their pages (copy-on-write) into our RSS
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    c3 = torch.from_numpy(np.load(coords_path))
    feats = torch.randn(c3.shape[0], C)
    if method == "dense":
        layer = torch.nn.Conv3d(C, C, 3, padding=1)
        x = torch.zeros(1, C, R, R, R)
        x[0, :, c3[:, 0].long(), c3[:, 1].long(), c3[:, 2].long()] = feats.t()
        del feats
        input_bytes = x.nbytes
    else:
        layer = spnn.SubMConv3d(C, C, 3) if method == "subm" else spnn.SparseConv3d(C, C, 3, 1, 1)
        coords = torch.nn.functional.pad(c3, (1, 0))  # batch index 0
        x = feats
        input_bytes = feats.nbytes + coords.nbytes
    del c3

    def call(grad_out=None):
        xin = x.detach().requires_grad_(grad_out is not None)
        if method == "dense":
            y = layer(xin)
        else:  # a new tensor each call: its kernel map is built inside the call, as for a new input
            y = layer(sparseconv.SparseTensor(xin, coords, (R, R, R), 1)).feats
        if grad_out is not None:
            y.backward(grad_out)
            layer.zero_grad(set_to_none=True)  # the next call allocates its gradients again
        return y.shape

    def measured(grad_out=None):
        """(peak RSS growth MiB, seconds) of one call; no_grad when there is no output gradient."""
        gc.collect()
        reset_peak_rss()
        base = rss_now_mib()
        t0 = time.perf_counter()
        with torch.set_grad_enabled(grad_out is not None):
            call(grad_out)
        return rss_peak_mib() - base, time.perf_counter() - t0

    t0 = time.perf_counter()
    with torch.no_grad():
        out_shape = call()  # warm-up
    grad_out = torch.randn(out_shape)
    if time.perf_counter() - t0 < 0.1:  # backward's one-time costs are negligible next to a slower call
        call(grad_out)
    grow_fwd, t_fwd = measured()
    grow_fb, t_fb = measured(grad_out)
    reps = 1 if t_fb > slow_s else repeats
    t_fwd = [t_fwd] + [measured()[1] for _ in range(reps - 1)]
    t_fb = [t_fb] + [measured(grad_out)[1] for _ in range(reps - 1)]
    return {
        "status": "ok",
        "sites_out": int(math.prod(out_shape[2:]) if method == "dense" else out_shape[0]),
        "input_mib": input_bytes / MIB,
        "grad_out_mib": grad_out.nbytes / MIB,
        "mem_fwd_mib": input_bytes / MIB + grow_fwd,
        "mem_fwdbwd_mib": (input_bytes + grad_out.nbytes) / MIB + grow_fb,
        "t_fwd_ms": median(t_fwd) * 1e3,
        "t_fwdbwd_ms": median(t_fb) * 1e3,
        "repeats": reps,
    }


def _child(conn, fn, kwargs):
    try:
        res = fn(**kwargs)
    except BaseException as e:  # noqa: BLE001 - reported in the table, not hidden
        res = {"status": "failed", "note": f"{type(e).__name__}: {e}"[:300]}
    ru = resource.getrusage(resource.RUSAGE_SELF)
    res["cpu_s"] = ru.ru_utime + ru.ru_stime
    conn.send(res)


def make_context(preload=()):
    os.environ.update({k: os.environ.get(k, v) for k, v in MALLOC_ENV.items()})
    ctx = mp.get_context("forkserver")
    # Imported on first use otherwise, ~1.5 s in every process: torch._dynamo by the first SparseConv3d call
    # (invert_map is a torch.library.custom_op), symbolic_shapes by the first backward with a given gradient.
    mods = ["numpy", "torch", "torch._dynamo", "torch.fx.experimental.symbolic_shapes", "sparseconv"]
    ctx.set_forkserver_preload(mods + ["sparseconv.nn", *preload])
    return ctx


def run_in_child(ctx, fn, kwargs, timeout_s):
    """fn(**kwargs) -> dict in a fresh process, plus wall_s and other_load_cores: the cores that other
    processes kept busy meanwhile (machine-wide busy CPU time less the child's own, over the wall time)."""
    recv, send = ctx.Pipe(duplex=False)
    p = ctx.Process(target=_child, args=(send, fn, kwargs))
    busy0, t0 = cpu_busy_s(), time.perf_counter()
    p.start()
    send.close()
    try:
        timed_out = {"status": "failed", "note": f"timeout ({timeout_s:.0f} s)"}
        res = recv.recv() if recv.poll(timeout_s) else timed_out
    except EOFError:  # died without a word: the OOM killer's -9, typically
        res = None
    if p.is_alive():
        p.kill()
    p.join()
    if res is None:
        res = {"status": "failed", "note": f"process died (exit code {p.exitcode}; -9: killed, e.g. OOM)"}
    wall = time.perf_counter() - t0
    res["wall_s"] = wall
    res["other_load_cores"] = max(0.0, (cpu_busy_s() - busy0 - res.pop("cpu_s", 0.0)) / wall)
    return res


# ------------------------------------------------------------------------------------------------------------
# the run
# ------------------------------------------------------------------------------------------------------------


def skip_reason(method, R, n, keys, args, rng):
    """Why a point is not run: (status, note, extra fields), or None. keys is None above the site cap."""
    C, limit = args.channels, args.mem_fraction * mem_available()
    need = DENSE_TENSORS * C * R**3 * 4
    if method == "dense" and need > limit:
        note = f"OOM: needs ~{need / GIB:.0f} GiB, {limit / GIB:.0f} GiB allowed"
        return "oom", note, {"need_gib": need / GIB}
    if keys is None:
        return "skipped", f"skip: {count(n)} sites > {count(args.max_sites)}", {}
    if method == "sparse":
        n_out, exact = dilated_count(keys, R, rng)
        if n_out > args.max_sites:
            note = f"skip: {'' if exact else '~'}{count(n_out)} out sites > {count(args.max_sites)}"
            return "skipped", note, {"sites_out": n_out}
        # Inputs, outputs, gradients, the [27, N_out] map and its transpose, and the map build's hash table,
        # sized for min(27 N_in, R^3) keys (12 bytes x next power of two of twice that), however few come out.
        table = 12 * 2 ** math.ceil(math.log2(2 * min(27 * n, R**3)))
        need = n * (8 * C + 16 + 108) + n_out * (8 * C + 216 + 16) + table
        if need > limit:
            return "oom", f"OOM: needs ~{need / GIB:.1f} GiB", {"need_gib": need / GIB}
    return None


def run(args):
    import torch

    import sparseconv

    facts = machine_facts()
    facts.update(
        torch=torch.__version__,
        threads=args.threads,
        device="cpu",
        mem_available_gib=round(mem_available() / GIB, 1),
        build=sparseconv.build_info(),
    )
    ctx = make_context()
    rows, dense_done = [], {}  # dense_done: R -> the measured dense row, reused at other densities
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mem_density_") as tmp:
        coords_path = str(Path(tmp) / "coords.npy")
        for kind, R, d in itertools.product(args.kinds, args.resolutions, args.densities):
            n = round(d * R**3)
            rng = np.random.default_rng([args.seed, KINDS.index(kind), R, round(d * 1e6)])
            keys = None  # above the site cap, not even made: slow, and no method runs
            if n <= args.max_sites:
                keys = (uniform_sites if kind == "uniform" else surface_sites)(R, n, rng)
                np.save(coords_path, keys_to_coords(keys, R))
            for method in args.methods:
                row = dict(kind=kind, resolution=R, density=d, sites_in=n, method=method)
                skip = skip_reason(method, R, n, keys, args, rng)
                reuse = dense_done.get(R) if method == "dense" and R > DENSE_ALL_DENSITIES_UP_TO else None
                if skip:
                    row.update(skip[2], status=skip[0], note=skip[1])
                elif reuse:
                    row.update({k: reuse[k] for k in CSV_FIELDS if k not in row and k in reuse})
                    row.update(note="reused", dense_from=f"{reuse['kind']} {pct(reuse['density'])}")
                else:
                    spec = dict(method=method, R=R, coords_path=coords_path, C=args.channels, seed=args.seed,
                                threads=args.threads, repeats=args.repeats, slow_s=args.slow_s)
                    row.update(run_in_child(ctx, measure, spec, args.timeout))
                    if method == "dense" and row["status"] == "ok":
                        dense_done.setdefault(R, row)
                    msg = f"{kind} {R}^3 {pct(d)} {LABELS[method]}: {row['status']} ({row['wall_s']:.1f} s)"
                    print("  " + msg, file=sys.stderr, flush=True)
                rows.append(row)
    elapsed = time.perf_counter() - t_start
    xo = crossovers(rows, args)
    report(facts, rows, xo, args, elapsed)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / ("memory_vs_density_quick" if args.quick else "memory_vs_density")
    with open(f"{stem}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        w.writerows({k: f"{v:.4g}" if isinstance(v, float) else v for k, v in r.items()} for r in rows)
    plot(facts, rows, args, f"{stem}.png")
    print(f"\nwrote {stem}.csv and {stem}.png ({elapsed:.0f} s)")


# ------------------------------------------------------------------------------------------------------------
# crossover, tables, plot
# ------------------------------------------------------------------------------------------------------------

MEASURES = ("mem_fwd_mib", "mem_fwdbwd_mib", "t_fwd_ms", "t_fwdbwd_ms")


def _find(rows, kind, R, d, method):
    key = (kind, R, d, method)
    return next((r for r in rows if (r["kind"], r["resolution"], r["density"], r["method"]) == key), None)


def crossover(points):
    """points: [(density, sparse, dense)] by rising density. The density where sparse / dense reaches 1,
    interpolated in log-log between the two measured densities around it."""
    prev = None
    for d, s, v in points:
        lr = math.log(max(s, 1e-3) / max(v, 1e-3))  # 1 KiB / 1 us floor: below the resolution of either
        if lr >= 0:
            if prev is None:
                return f"<= {pct(d)}"
            d0, lr0 = prev
            return f"~{pct(math.exp(math.log(d0) + lr0 / (lr0 - lr) * math.log(d / d0)))}"
        prev = (d, lr)
    return f"> {pct(points[-1][0])}" if points else "-"


def crossovers(rows, args):
    """{(kind, R, sparse method): {measure: text}}, or "OOM" where dense is out of memory at every density."""
    out = {}
    for kind in args.kinds:
        for R in args.resolutions:
            dense = [_find(rows, kind, R, d, "dense") for d in args.densities]
            for method in ("subm", "sparse"):
                if method not in args.methods or "dense" not in args.methods:
                    continue
                if all(v["status"] == "oom" for v in dense):
                    out[kind, R, method] = "OOM"
                    continue
                pairs = [
                    (d, s, v)
                    for d, v in zip(args.densities, dense)
                    if (s := _find(rows, kind, R, d, method))["status"] == "ok" and v["status"] == "ok"
                ]
                out[kind, R, method] = {
                    k: crossover([(d, s[k], v[k]) for d, s, v in pairs]) for k in MEASURES
                }
    return out


def _cell(r, a, b):
    if r is None:
        return ""
    if r["status"] != "ok":
        return r["note"]
    return f"{fmt(r[a])} / {fmt(r[b])}" + (" *" if r.get("dense_from") else "")


def report(facts, rows, xo, args, elapsed):
    f = facts
    b = f["build"]
    C = args.channels
    print(f"## One 3x3x3 layer, {C} -> {C} channels, float32, batch 1: sparse vs dense\n")
    print(
        f"- machine: {f['cpu']}, {f['cores']} cores ({'/'.join(f['simd'])}), {f['mem_gib']} GiB RAM "
        f"({f['mem_available_gib']} GiB available at start); device: cpu; torch {f['torch']}, {args.threads} "
        f"threads; sparseconv {b.get('version')} ({b.get('simd')}, OpenMP {b.get('openmp_threads')})"
    )
    print(
        "- cells: forward / forward+backward. Peak MiB: inputs + peak RSS growth during the call, measured "
        f"in a fresh process per point. Time: median of {args.repeats} calls (1 when a call takes > "
        f"{args.slow_s:g} s); sparse: kernel-map build included"
    )
    print(
        f"- OOM: dense need estimated > {args.mem_fraction:.0%} of available memory, not run; skip: > "
        f"{count(args.max_sites)} sparse sites; *: dense measured at one density per resolution "
        f"(CSV column dense_from), reused\n"
    )
    methods = [m for m in METHODS if m in args.methods]
    for kind in args.kinds:
        print(f"### {kind} sites\n")
        head = (
            ["res", "density", "sites in", "SparseConv3d out"]
            + [f"{LABELS[m]} peak MiB" for m in methods]
            + [f"{LABELS[m]} ms" for m in methods]
        )
        print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
        not_run = []
        for R in args.resolutions:
            for d in args.densities:
                rr = {m: _find(rows, kind, R, d, m) for m in methods}
                if all(r["status"] in ("skipped", "oom") for r in rr.values()):
                    not_run.append(f"{R}^3 {pct(d)}")
                    continue
                sp = rr.get("sparse") or {}
                nout = "" if not sp.get("sites_out") else count(sp["sites_out"])
                cells = [f"{R}^3", pct(d), count(round(d * R**3)), nout]
                cells += [_cell(rr[m], "mem_fwd_mib", "mem_fwdbwd_mib") for m in methods]
                cells += [
                    "" if rr[m]["status"] != "ok" else _cell(rr[m], "t_fwd_ms", "t_fwdbwd_ms")
                    for m in methods
                ]
                print("| " + " | ".join(cells) + " |")
        if not_run:
            print(f"\nNot run (sparse > {count(args.max_sites)} sites, dense OOM): {', '.join(not_run)}")
        print()
    if xo:
        print("### Crossover: density from which the dense Conv3d is as cheap as the sparse layer\n")
        print(
            "Cells: peak memory fwd / fwd+bwd, time fwd / fwd+bwd. '> d': sparse cheaper at every density "
            "measured, up to d; '<= d': dense as cheap already at d; OOM: dense never fits, sparse only\n"
        )
        sp = [m for m in ("subm", "sparse") if m in args.methods]
        head = ["input", "res"] + [f"{LABELS[m]} {w}" for m in sp for w in ("memory", "time")]
        print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
        for kind in args.kinds:
            for R in args.resolutions:
                cells = [kind, f"{R}^3"]
                for m in sp:
                    e = xo[kind, R, m]
                    cells += (
                        ["OOM", ""]
                        if e == "OOM"
                        else [
                            f"{e['mem_fwd_mib']} / {e['mem_fwdbwd_mib']}",
                            f"{e['t_fwd_ms']} / {e['t_fwdbwd_ms']}",
                        ]
                    )
                print("| " + " | ".join(cells) + " |")
        print()
    busy = [r for r in rows if r.get("other_load_cores", 0) > 0.3 and r.get("wall_s", 0) > 1]
    if busy:
        print(
            f"Note: other processes kept > 0.3 cores busy during {len(busy)} of "
            f"{sum(r.get('wall_s', 0) > 1 for r in rows)} points of > 1 s (up to "
            f"{max(r['other_load_cores'] for r in busy):.1f} of {f['cores']} cores; other_load_cores in the "
            "CSV): their times are inflated, memory is not affected."
        )
    print(f"elapsed: {elapsed:.0f} s")


def plot(facts, rows, args, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter

    colors = dict(zip(args.resolutions, plt.get_cmap("tab10").colors))
    style = {"subm": ("-", "o"), "sparse": ("--", "s"), "dense": (":", "x")}
    panels = [
        ("mem_fwd_mib", "peak memory, forward (MiB)"),
        ("mem_fwdbwd_mib", "peak memory, fwd + bwd (MiB)"),
        ("t_fwdbwd_ms", "time, fwd + bwd (ms)"),
    ]
    fig, axes = plt.subplots(len(args.kinds), len(panels), figsize=(15, 4.6 * len(args.kinds)), squeeze=False)
    for ax_row, kind in zip(axes, args.kinds):
        for ax, (key, label) in zip(ax_row, panels):
            for R in args.resolutions:
                for m in args.methods:
                    pts = [
                        (100 * r["density"], r[key])
                        for r in rows
                        if (r["kind"], r["resolution"], r["method"]) == (kind, R, m)
                        and r["status"] == "ok"
                        and r[key] > 0
                    ]
                    if pts:
                        ax.plot(*zip(*pts), ls=style[m][0], marker=style[m][1], color=colors[R], ms=5, lw=1.6)
            ax.set(
                xscale="log",
                yscale="log",
                xlabel="density (% of the R^3 cells active)",
                ylabel=label,
                title=f"{kind} sites",
            )
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}%"))
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.grid(True, which="both", alpha=0.25)
            if key.startswith("mem"):
                ax.set_ylim(bottom=0.1)  # smaller growth is below what RSS resolves (pages, reused heap)
    oom = {r["resolution"]: r["need_gib"] for r in rows if r["method"] == "dense" and r["status"] == "oom"}
    handles = [Line2D([], [], color=colors[R], lw=3, label=f"{R}^3") for R in args.resolutions]
    for h, R in zip(handles, args.resolutions):
        h.set_label(h.get_label() + (f" (dense: OOM, ~{oom[R]:.0f} GiB)" if R in oom else ""))
    handles += [Line2D([], [], color="k", ls=style[m][0], marker=style[m][1], label=LABELS[m])
                for m in args.methods]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 5), fontsize=9)
    fig.suptitle(
        f"One 3x3x3 conv, {args.channels}->{args.channels} ch, fp32, batch 1: peak memory includes the "
        f"inputs. {facts['cpu']}, {args.threads} threads, torch {facts['torch']}",
        fontsize=11,
    )
    fig.tight_layout(rect=(0, 0.09 if len(handles) > 5 else 0.05, 1, 0.97))
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--quick",
        action="store_true",
        help=f"resolutions {QUICK_RES}, densities {QUICK_DENS}, site cap 2M (about 1 min on 2 cores)",
    )
    ap.add_argument("--resolutions", type=int, nargs="+", help=f"grid sizes R; default {FULL_RES}")
    ap.add_argument("--densities", type=float, nargs="+", help=f"active fractions; default {FULL_DENS}")
    ap.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    ap.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    ap.add_argument("--channels", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, help="timed calls per measure (default 3)")
    ap.add_argument("--slow-s", type=float, default=1.0, help="calls slower than this are timed once")
    ap.add_argument(
        "--max-sites",
        type=int,
        help="skip sparse points with more input or output sites (default 10M, --quick 2M)",
    )
    ap.add_argument(
        "--mem-fraction",
        type=float,
        default=0.6,
        help="skip points whose estimated need exceeds this fraction of MemAvailable",
    )
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds before a point is killed")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out-dir", default=str(HERE / "results"))
    args = ap.parse_args(argv)
    args.resolutions = sorted(args.resolutions or (QUICK_RES if args.quick else FULL_RES))
    args.densities = sorted(args.densities or (QUICK_DENS if args.quick else FULL_DENS))
    args.repeats = args.repeats or 3
    args.max_sites = args.max_sites or (2_000_000 if args.quick else 10_000_000)
    if not all(0 < d <= 1 for d in args.densities):
        ap.error("--densities must be in (0, 1]")
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
