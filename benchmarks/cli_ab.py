#!/usr/bin/env python
"""The whole `sparseconv classify` command of two source trees (e.g. before and after a change), alternated run by
run in one session: `python -m sparseconv.cli classify IN -o OUT --overwrite --quiet --threads N` with each tree
as the working directory and on PYTHONPATH (classify_throughput.py's run_cli, its idle wait and CPU accounting),
over the cached benchmark files (classify_throughput.py builds them: --sizes). Prints every run and the medians.

    .venv/bin/python benchmarks/cli_ab.py ../before . --sizes 5M --threads 1 2 --repeats 5
"""
import argparse
import os
import sys
from pathlib import Path
from statistics import median

sys.path.insert(0, str(Path(__file__).resolve().parent))
import classify_throughput as ct  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("trees", nargs="+", help="source trees (each with its built extension), alternated")
    ap.add_argument("--sizes", nargs="+", type=ct.parse_count, default=[5_000_000])
    ap.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--idle-wait", type=float, default=120.0,
                    help="seconds to wait before each run for other processes to use under 0.3 cores")
    ap.add_argument("--max-other-load", type=float, default=0.1,
                    help="a run during which other processes kept more cores busy is run again (up to --tries)")
    ap.add_argument("--tries", type=int, default=4)
    ap.add_argument("--model", help="checkpoint (default: the shipped pretrained model)")
    args = ap.parse_args(argv)
    args.env, args.child_timeout, args.density, args.seed = None, 900.0, 8.0, 0
    model, _ = ct.model_path(args)
    files = []
    for n in args.sizes:
        meta = ct.build_file(n, args.density, args.seed, None)
        files.append((ct.label(n), meta["points"], str(ct.CACHE / f"airborne_{ct.label(n)}.laz")))
    runs = {}
    for rep in range(args.repeats):
        for lab, points, path in files:
            for nt in args.threads:
                for tree in args.trees:
                    root = Path(tree).resolve()
                    ct.ROOT = root  # run_cli's working directory: `python -m sparseconv.cli` takes this tree's
                    os.environ["PYTHONPATH"] = str(root)
                    for attempt in range(args.tries):
                        idle = ct.wait_idle(args.idle_wait, 0.3)
                        r = ct.run_cli(args, path, model, points, "cpu", nt)
                        if r["other_load_cores"] <= args.max_other_load:
                            break
                        print(f"  (other load {r['other_load_cores']:.2f} cores during a {r['wall_s']:.1f} s run: "
                              "again)", flush=True)
                    key = (lab, nt, tree)
                    runs.setdefault(key, []).append(r)
                    print(f"{lab} ({points:,}) {nt} thread(s) {tree} #{rep}: {r['status']} {r['wall_s']:.2f} s, "
                          f"cores used {r['cores_used']:.2f}, other load {r['other_load_cores']:.2f} "
                          f"(idle before {idle:.2f}), loadavg {r['loadavg_1m']}, peak RSS {r['peak_rss_mib']:.0f} "
                          f"MiB | {r['cli_line']}", flush=True)
    print("\nmedians (whole command):")
    for lab, points, _ in files:
        for tree in args.trees:
            walls = {nt: median(r["wall_s"] for r in runs[(lab, nt, tree)]) for nt in args.threads}
            other = max(r["other_load_cores"] for nt in args.threads for r in runs[(lab, nt, tree)])
            line = ", ".join(f"{nt} thread(s) {w:.2f} s ({points / w:,.0f} points/s)" for nt, w in walls.items())
            if 1 in walls and 2 in walls:
                line += f"; 1 -> 2 threads {walls[1] / walls[2]:.2f}x"
            print(f"{lab} ({points:,}) {tree}: {line}; other load at most {other:.2f} cores")
    return 0


if __name__ == "__main__":
    sys.exit(main())
