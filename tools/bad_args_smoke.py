#!/usr/bin/env python3
"""Bad arguments must raise ValueError / TypeError, never kill the process: each case in a fresh process.

On the first GPU machine every TORCH_CHECK_VALUE killed the process (SIGSEGV), on CPU and CUDA tensors alike,
where this VM raised ValueError. Running each case in its own process tells which ones die and by what signal;
tools/gpu_session.sh runs this right after the build, takes a host backtrace of a dying case, and rebuilds with
other settings to find the ones that avoid it.

Usage: python tools/bad_args_smoke.py [--device cpu|cuda|all] [--case NAME]   (exit 0: every case raised as
expected; 1: some case died or raised something else)
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import os
import signal
import subprocess
import sys
import time


def cases(dev):
    """name -> (expected exception, call); arguments are built inside the call, on `dev`."""
    import torch
    from sparseconv import ops

    i32 = dict(dtype=torch.int32, device=dev)
    op = torch.ops.sparseconv
    return {
        "invert_map_row": (ValueError, lambda: ops.invert_map(torch.tensor([[0, 5, -1]], **i32), 3)),
        "subm_duplicates": (ValueError, lambda: ops.build_subm_map(torch.zeros(5, 4, **i32), [3, 3, 3], [1, 1, 1])),
        "subm_kernel": (ValueError, lambda: op.build_subm_map(torch.zeros(1, 4, **i32), [3, 3], [1, 1, 1])),
        "strided_geometry": (ValueError, lambda: op.build_strided_map(torch.zeros(1, 4, **i32), [2, 2, 2],
                                                                      [5, 5, 5], [1, 1, 1], [0, 0, 0], [1, 1, 1])),
        "conv_cin": (ValueError, lambda: op.sparse_conv(torch.zeros(4, 3, device=dev), torch.zeros(1, 5, 2, device=dev),
                                                        None, torch.zeros(1, 4, **i32), None)),
        "conv_dtype": (TypeError, lambda: op.sparse_conv(torch.zeros(4, 3, **i32), torch.zeros(1, 3, 2, device=dev),
                                                         None, torch.zeros(1, 4, **i32), None)),
        "weight_grad_rows": (ValueError, lambda: op.sparse_conv_weight_grad(torch.zeros(4, 3, device=dev),
                                                                            torch.zeros(5, 2, device=dev),
                                                                            torch.zeros(1, 4, **i32))),
        "max_pool_nbr_t": (ValueError, lambda: op.sparse_max_pool(torch.zeros(4, 3, device=dev),
                                                                  torch.zeros(2, 1, **i32), torch.zeros(2, 5, **i32))),
        "avg_pool_nbr_t": (ValueError, lambda: op.sparse_avg_pool(torch.zeros(4, 3, device=dev),
                                                                  torch.zeros(2, 1, **i32), torch.zeros(2, 5, **i32))),
        "voxelize_size": (ValueError, lambda: op.voxelize(torch.zeros(3, 3, device=dev), [0.0, 1.0, 1.0],
                                                          [0.0, 0.0, 0.0])),
    }


def run_case(name, dev):
    """Child process: call the case, print the exception's type."""
    expected, call = cases(dev)[name]
    try:
        call()
    except Exception as e:  # noqa: BLE001 - the type is the answer
        print(f"{type(e).__name__}: {str(e).splitlines()[0][:140]}")
        return 0 if isinstance(e, expected) else 1
    print("no exception")
    return 1


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="all", choices=["cpu", "cuda", "all"])
    ap.add_argument("--jobs", type=int, default=min(8, os.cpu_count() or 1), help="cases at a time")
    ap.add_argument("--case", help="run one case in this process (what the parent does per case)")
    args = ap.parse_args()
    if args.case:
        return run_case(args.case, args.device)

    import torch

    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    devices = [d for d in devices if d == "cpu" or torch.cuda.is_available()]
    def one(job):
        dev, name = job
        t0 = time.time()
        proc = subprocess.run([sys.executable, __file__, "--device", dev, "--case", name],
                              capture_output=True, text=True, timeout=180)
        rc = proc.returncode
        if rc < 0:
            what = f"DIED by {signal.Signals(-rc).name}"
        else:
            lines = (proc.stdout.strip() or proc.stderr.strip() or "no output").splitlines()
            what = ("ok   " if rc == 0 else "WRONG ") + lines[-1]
        return rc != 0, f"{dev:4s} {name:18s} {what}  ({time.time() - t0:.1f} s)"

    jobs = [(dev, name) for dev in devices for name in cases("cpu")]
    bad = 0
    with cf.ThreadPoolExecutor(max_workers=args.jobs) as pool:  # a process each: the cases run side by side
        for failed, line in pool.map(one, jobs):
            bad += failed
            print(line, flush=True)
    print(f"bad_args_smoke: {bad} of {len(devices) * len(cases('cpu'))} cases failed on {', '.join(devices)}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
