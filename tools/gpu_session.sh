#!/usr/bin/env bash
# One device-tool call (10 minutes at most) for a session that has a GPU (issue 6): build the CUDA extension in
# place with that machine's torch (2.11 + CUDA 13 there), run the CUDA tests, run the GPU benchmark, then check
# the kernels with compute-sanitizer while time is left. Each stage gets a time cap from what is left of the
# budget, keeps going after failures, and writes into $OUT as it goes, so a run cut short still returns what ran.
#
#   device run:  bash tools/gpu_session.sh                 (timeout_s 600)
#   locally:     OUT=/tmp/gs STAGES="build test" bash tools/gpu_session.sh
#
# Stages (STAGES, default "build errors test classify bench sanitize"):
#   build     FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16 setup.py build_ext --inplace; the whole compiler
#             output goes to build.log (also when it fails), per-object compile times from ninja's log to
#             session.log. The benchmark's scenes are generated in the background meanwhile (NumPy only).
#   errors    tools/bad_args_smoke.py: bad arguments on CPU and CUDA tensors, each case in its own process, must raise
#             ValueError / TypeError (the first run's build killed the process on every TORCH_CHECK_VALUE). When a
#             case dies: a host backtrace of it (gdb, else cuda-gdb) into backtrace.txt, then rebuilds with
#             SPARSECONV_NATIVE=0, then with clang++ if the machine has one, until a setting raises cleanly; the
#             later stages use the last build, and session.log says which setting fixed it.
#   test      tests/test_cuda.py with a per-test watchdog (GPU_TEST_TIMEOUT s, default 60: a hung kernel dumps
#             the Python stacks and ends that pytest process); when a process dies, hangs, or stops because a test
#             left the CUDA context unusable (exit 3), pytest starts again with the tests not yet run, until all
#             ran or the stage's time is up. No -x: every failure is listed. The whole CPU suite (every other
#             tests/ file) runs beside them under pytest-xdist (-n 4), on this host's AVX-512 cores.
#   classify  `sparseconv classify` of one generated tile with --device cpu and --device cuda: the classes must be
#             the same (points that differ are counted and printed).
#   bench     benchmarks/bench_cuda.py with its own time budget; it rewrites bench_cuda.json after every figure.
#             Then benchmarks/compare_peers.py --device cuda --quick (issue 15's table: subm / strided / inverse
#             and the U-Net training step against spconv) when the spconv build is carried in .peers/ (../shared/peers/README.md: copy the tar.xz into
#             .peers/, which .git/info/exclude ignores, and name .peers in the device tool's carry).
#   sanitize  compute-sanitizer memcheck, then racecheck, then initcheck on test_sanitizer_smoke (every kernel
#             variant once, tiny sizes, PyTorch's caching allocator off so out-of-bounds accesses are seen).
#
# $OUT holds at most 8 files (the device tool returns no more): session.log (this console: facts, stage times,
# summaries), build.log, tests.log (pytest -v -rA --tb=short, every attempt), junit.xml (all attempts merged,
# hung tests as errors), bench_cuda.json, bench_cuda.png, sanitizer.log, extras.tar.gz (progress file, per-attempt
# junit, CPU-test log, scene log, nvidia-smi -q, pip list, ninja log).
set -uo pipefail

START=$(date +%s)
BUDGET=${BUDGET:-560}               # seconds for the whole script (the tool kills the command at 600)
STAGES=${STAGES:-"build errors test classify bench sanitize"}
PY=${PY:-python3}
GPU_TESTS=${GPU_TESTS:-tests/test_cuda.py}
REQUIRE_CUDA_BUILD=${REQUIRE_CUDA_BUILD:-1}  # 0: run the later stages on a CPU-only build (to check this script)
OUT=${OUT:-build/gpu_session_out}
W=${W:-build/gpu_session_work}
mkdir -p "$OUT" "$W"
OUT=$(cd "$OUT" && pwd)
W=$(cd "$W" && pwd)
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 2
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1

exec > >(tee -a "$OUT/session.log") 2>&1
TEE_PID=$!

elapsed() { echo $(( $(date +%s) - START )); }
left() { echo $(( BUDGET - $(elapsed) )); }
min() { if [ "$1" -lt "$2" ]; then echo "$1"; else echo "$2"; fi; }
max() { if [ "$1" -gt "$2" ]; then echo "$1"; else echo "$2"; fi; }
want() { [[ " $STAGES " == *" $1 "* ]]; }
stage() { echo; echo "=== $1 | $(date -u +%H:%M:%S) UTC | $(elapsed) s in, $(left) s left ==="; }
TIMES=""
record() { TIMES="$TIMES$(printf '%-10s %-28s %5s s' "$1" "$2" "$3")"$'\n'; }
pack_extras() {  # everything small from the work folder, one file (the tool returns at most 8)
  cp -f build/temp.*/.ninja_log "$W/ninja_log.txt" 2>/dev/null
  tar -czf "$OUT/extras.tar.gz.tmp" -C "$W" --exclude=scenes --exclude='*.pyc' --exclude=__pycache__ . 2>/dev/null \
    && mv -f "$OUT/extras.tar.gz.tmp" "$OUT/extras.tar.gz"
}

# ------------------------------------------------------------------------------------------------------------
stage "facts"
# ------------------------------------------------------------------------------------------------------------
echo "budget ${BUDGET} s, stages: $STAGES, out: $OUT"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,compute_cap --format=csv,noheader \
  || echo "nvidia-smi failed"
nvidia-smi -q > "$W/nvidia-smi-q.txt" 2>&1
PYBIN=$($PY -c 'import os, sys; print(os.path.dirname(sys.executable))')
export PATH="$PYBIN:$PATH"
if ! command -v ninja >/dev/null 2>&1; then
  NB=$($PY -c 'import ninja; print(ninja.BIN_DIR)' 2>/dev/null) && export PATH="$NB:$PATH"
fi
if ! command -v nvcc >/dev/null 2>&1; then
  for d in "${CUDA_HOME:-/usr/local/cuda}/bin" /usr/local/cuda/bin /usr/local/cuda-13*/bin; do
    if [ -x "$d/nvcc" ]; then export PATH="$d:$PATH"; break; fi
  done
fi
echo "nvcc:  $(command -v nvcc || echo MISSING) | $(nvcc --version 2>/dev/null | grep -i release)"
echo "ninja: $(command -v ninja || echo MISSING) $(ninja --version 2>/dev/null)"
echo "compute-sanitizer: $(command -v compute-sanitizer || echo missing)"
echo "cores $(nproc), memory $(free -g 2>/dev/null | awk '/Mem:/ {print $2 " GiB"}')"
$PY - <<'EOF'
import sys
import torch
print("python", sys.version.split()[0], "| torch", torch.__version__, "| torch CUDA", torch.version.cuda,
      "| cuDNN", torch.backends.cudnn.version())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"device {p.name}, sm_{p.major}{p.minor}, {p.multi_processor_count} SMs, {p.total_memory / 2**30:.1f} GiB")
else:
    print("torch sees NO CUDA device")
EOF
$PY -m pip list > "$W/pip_list.txt" 2>&1
echo "sources: $(cat setup.py csrc/*.h csrc/*.cpp csrc/cpu/* csrc/cuda/* 2>/dev/null | sha1sum | cut -c1-12)"
sha1sum csrc/cuda/* | cut -c1-12,41-

SCENES_PID=""
if want bench; then  # the LiDAR-like scenes take ~30-60 s of one core: made while nvcc runs
  ( $PY benchmarks/bench_cuda.py --prepare-scenes --scene-cache "$W/scenes" > "$W/scenes.log" 2>&1 ) &
  SCENES_PID=$!
fi

# ------------------------------------------------------------------------------------------------------------
BUILD_OK=1
if want build; then
  stage "build"
  T=$(max 120 "$(min 420 $(( $(left) - 200 )))")
  echo "FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16}, time cap $T s"
  t0=$(date +%s)
  FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16} \
    timeout -k 10 "$T" $PY setup.py build_ext --inplace > "$OUT/build.log" 2>&1
  rc=$?
  dt=$(( $(date +%s) - t0 ))
  record build "rc=$rc" "$dt"
  echo "build: rc=$rc in $dt s ($(grep -c -i 'warning' "$OUT/build.log") warning lines, $(grep -c -E 'error' "$OUT/build.log") error lines)"
  if ls build/temp.*/.ninja_log >/dev/null 2>&1; then
    echo "compile times (s, from ninja's log):"
    awk -F'\t' 'NR > 1 {n = split($4, p, "/"); t[p[n]] = ($2 - $1) / 1000} END {for (k in t) printf "  %6.1f  %s\n", t[k], k}' \
      build/temp.*/.ninja_log | sort -rn | head -20
  fi
  if [ $rc -ne 0 ]; then
    BUILD_OK=0
    [ $rc -eq 124 ] && echo "BUILD TIMED OUT after $T s"
    echo "--- build.log: first errors ---"
    grep -n -E 'error|Error' "$OUT/build.log" | head -40
    echo "--- build.log: last 40 lines ---"
    tail -40 "$OUT/build.log"
  fi
  pack_extras
fi
if ! $PY -c "import json, sparseconv; i = sparseconv.build_info(); print(json.dumps(i)); assert i['cuda'] or not $REQUIRE_CUDA_BUILD, 'no CUDA kernels in this build'" \
    2>&1 | tee "$W/build_info.txt"; then
  BUILD_OK=0
  echo "sparseconv does not import with CUDA kernels: the test and sanitizer stages are skipped"
fi

# ------------------------------------------------------------------------------------------------------------
if want errors && [ $BUILD_OK -eq 1 ]; then
  stage "errors"
  t0=$(date +%s)
  smoke() { timeout -k 5 150 $PY tools/bad_args_smoke.py --jobs 8 > "$W/bad_args_$1.log" 2>&1; local r=$?;
            grep -E 'DIED|WRONG|bad_args_smoke' "$W/bad_args_$1.log"; return $r; }
  if smoke default; then
    echo "bad arguments: every case raised ValueError/TypeError with the default build"
  else
    died=$(grep -m1 'DIED' "$W/bad_args_default.log" | awk '{print $1 " " $2}')
    if [ -n "$died" ]; then
      set -- $died
      GDB=$(command -v gdb || command -v cuda-gdb)
      echo "host backtrace of '$2' on $1 with ${GDB:-no debugger} -> backtrace.txt (in extras)"
      [ -n "$GDB" ] && timeout -k 5 120 "$GDB" -batch -ex run -ex bt -ex 'x/8i $pc' -ex 'info registers rsp rip' \
        --args $PY tools/bad_args_smoke.py --device "$1" --case "$2" > "$W/backtrace.txt" 2>&1
      grep -E '^#[0-9]+ |=> |^rsp|^rip|SIG' "$W/backtrace.txt" | head -40
      # Bisect the build settings (ninja recompiles only what a changed flag touches).
      for setting in "SPARSECONV_NATIVE=0" "CXX=clang++ SPARSECONV_NATIVE=0"; do
        case $setting in CXX=clang++*) command -v clang++ >/dev/null 2>&1 || continue ;; esac
        echo "rebuilding with $setting"
        env $setting FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16} \
          timeout -k 10 240 $PY setup.py build_ext --inplace > "$W/build_${setting// /_}.log" 2>&1 \
          || { echo "  build failed (log in extras)"; continue; }
        if smoke "${setting// /_}"; then
          echo "FIXED BY: $setting (the later stages use this build)"
          break
        fi
      done
    fi
  fi
  record errors "" "$(( $(date +%s) - t0 ))"
  pack_extras
fi

# ------------------------------------------------------------------------------------------------------------
# The pytest plugin: progress file (one line per event, flushed), per-test watchdog, resume after a dead run.
# Also a command line: `status PROGRESS` (exit 0: every collected test ran; 10: resume; 2: nothing ran) and
# `junit PROGRESS OUT.xml` (one junit file from the progress file: every attempt, hung tests as errors).
# ------------------------------------------------------------------------------------------------------------
cat > "$W/sc_gpu_plugin.py" <<'PLUGIN'
import faulthandler
import os
import sys
import time

import pytest

PROGRESS = os.environ.get("SC_PROGRESS", "")
TIMEOUT = float(os.environ.get("SC_TEST_TIMEOUT", "60"))
_trace = None
_started_here = set()
_collected = []


def _esc(s):
    return str(s).replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t")


def _write(*fields):
    if not PROGRESS:
        return
    with open(PROGRESS, "a") as f:
        f.write("\t".join(_esc(x) for x in fields) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _read(path):
    rows = []
    if path and os.path.exists(path):
        with open(path) as f:
            for line in f:
                rows.append(line.rstrip("\n").split("\t"))
    return rows


def pytest_collection_modifyitems(session, config, items):
    done = {r[2] for r in _read(PROGRESS) if r[0] == "START" and len(r) > 2}
    if not done:
        return
    keep = [it for it in items if it.nodeid not in done]
    drop = [it for it in items if it.nodeid in done]
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def pytest_collection_finish(session):
    _collected[:] = [it.nodeid for it in session.items]
    _write("SESSION_START", f"{time.time():.3f}", len(session.items))


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item, nextitem):
    """Arms the watchdog: a test with no result after TIMEOUT s gets every thread's Python stack written to
    hung_tracebacks.txt and its process ended (a kernel that never returns blocks in C, where no Python-level
    timeout can interrupt it). The progress file's START without END names the test."""
    global _trace
    _started_here.add(item.nodeid)
    _write("START", f"{time.time():.3f}", item.nodeid)
    if _trace is None and PROGRESS:
        _trace = open(os.path.join(os.path.dirname(PROGRESS), "hung_tracebacks.txt"), "a")
    if _trace is not None:
        faulthandler.dump_traceback_later(TIMEOUT, exit=True, file=_trace)
    return None


def pytest_runtest_logfinish(nodeid, location):
    faulthandler.cancel_dump_traceback_later()
    _write("END", f"{time.time():.3f}", nodeid)


def pytest_runtest_logreport(report):
    if report.when == "call" or report.outcome != "passed":
        msg = ""
        if report.outcome != "passed":
            msg = report.longreprtext[-3000:] if report.longreprtext else ""
            if report.outcome == "skipped" and isinstance(report.longrepr, tuple):
                msg = report.longrepr[2]
        _write("RESULT", report.outcome, report.when, f"{report.duration:.3f}", report.nodeid, msg)


def pytest_sessionfinish(session, exitstatus):
    faulthandler.cancel_dump_traceback_later()
    remaining = sum(1 for n in _collected if n not in _started_here)
    _write("SESSION_END", int(exitstatus), remaining)


def _unesc(s):
    out, i = [], 0
    while i < len(s):
        if s[i] == "\\" and i + 1 < len(s):
            out.append({"n": "\n", "t": "\t", "\\": "\\"}.get(s[i + 1], s[i + 1]))
            i += 2
        else:
            out.append(s[i])
            i += 1
    return "".join(out)


def _tests(rows):
    """nodeid -> {"outcome", "when", "time", "msg"} over every attempt, in order."""
    tests, start = {}, {}
    for r in rows:
        if r[0] == "START":
            start[r[2]] = float(r[1])
            tests.setdefault(r[2], {"outcome": "hung", "when": "", "time": 0.0, "msg": ""})
        elif r[0] == "END":
            t = tests.setdefault(r[2], {"outcome": "passed", "when": "", "time": 0.0, "msg": ""})
            t["time"] = float(r[1]) - start.get(r[2], float(r[1]))
            if t["outcome"] == "hung":
                t["outcome"] = "passed"
        elif r[0] == "RESULT":
            outcome, when, nodeid = r[1], r[2], r[4]
            msg = _unesc(r[5]) if len(r) > 5 else ""
            t = tests.setdefault(nodeid, {"outcome": "hung", "when": "", "time": 0.0, "msg": ""})
            if outcome == "failed":
                t.update(outcome="failed" if when == "call" else "error", when=when, msg=t["msg"] + msg)
            elif outcome == "skipped" and t["outcome"] not in ("failed", "error"):
                t.update(outcome="skipped", when=when, msg=msg)
            elif outcome == "passed" and when == "call" and t["outcome"] == "hung":
                t.update(outcome="passed", when=when)
    for t in tests.values():
        if t["outcome"] == "hung":
            t["msg"] = ("no result: the test hung past the per-test timeout (stacks in hung_tracebacks.txt), or its "
                        "process died or was stopped (CUDA context unusable, stage time over)")
    return tests


def _status(path):
    rows = _read(path)
    tests = _tests(rows)
    counts = {}
    for t in tests.values():
        counts[t["outcome"]] = counts.get(t["outcome"], 0) + 1
    attempts = sum(1 for r in rows if r[0] == "SESSION_START")
    print(f"tests run so far: {len(tests)} in {attempts} attempt(s): " +
          ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    for nodeid, t in tests.items():
        if t["outcome"] in ("failed", "error", "hung"):
            first = next((ln.strip() for ln in reversed(t["msg"].splitlines()) if ln.strip().startswith("E ")), "")
            print(f"  {t['outcome'].upper():6s} {nodeid}  {first[:160]}")
    if attempts == 0:
        return 2
    last = max(i for i, r in enumerate(rows) if r[0] == "SESSION_START")
    ends = [r for r in rows[last:] if r[0] == "SESSION_END"]
    if not ends:
        print("last attempt: no SESSION_END (killed by the per-test watchdog, a crash or the stage's time cap)")
        return 10
    if int(ends[-1][2]) > 0:
        print(f"last attempt stopped early with exit status {ends[-1][1]}: {ends[-1][2]} tests not started")
        return 10
    return 0


def _junit(path, out):
    from xml.etree import ElementTree as ET

    tests = _tests(_read(path))
    suite = ET.Element("testsuite", name="test_cuda")
    n = {"failures": 0, "errors": 0, "skipped": 0}
    for nodeid, t in tests.items():
        file, _, name = nodeid.partition("::")
        case = ET.SubElement(suite, "testcase", classname=file.replace("/", ".").removesuffix(".py"), name=name,
                             time=f"{t['time']:.3f}")
        if t["outcome"] == "failed":
            ET.SubElement(case, "failure", message=t["msg"].strip().splitlines()[-1][:300] if t["msg"].strip()
                          else "failed").text = t["msg"]
            n["failures"] += 1
        elif t["outcome"] in ("error", "hung"):
            ET.SubElement(case, "error", message=f"{t['outcome']} in {t['when'] or 'run'}").text = t["msg"]
            n["errors"] += 1
        elif t["outcome"] == "skipped":
            ET.SubElement(case, "skipped", message=t["msg"][:300])
            n["skipped"] += 1
    suite.set("tests", str(len(tests)))
    for k, v in n.items():
        suite.set(k, str(v))
    root = ET.Element("testsuites")
    root.append(suite)
    ET.ElementTree(root).write(out, encoding="utf-8", xml_declaration=True)
    print(f"junit: {len(tests)} tests, {n['failures']} failures, {n['errors']} errors, {n['skipped']} skipped -> {out}")


if __name__ == "__main__":
    if sys.argv[1] == "status":
        sys.exit(_status(sys.argv[2]))
    if sys.argv[1] == "junit":
        _junit(sys.argv[2], sys.argv[3])
PLUGIN

# ------------------------------------------------------------------------------------------------------------
if want test && [ $BUILD_OK -eq 1 ]; then
  stage "test"
  reserve=0
  want bench && reserve=$(( reserve + 150 ))
  want sanitize && reserve=$(( reserve + 30 ))
  want classify && reserve=$(( reserve + 60 ))
  CAP=$(max 60 "$(min 300 $(( $(left) - reserve )))")
  END=$(( $(date +%s) + CAP ))
  echo "time cap $CAP s; per-test watchdog ${GPU_TEST_TIMEOUT:-60} s"
  t0=$(date +%s)
  PROG="$W/progress.txt"
  : > "$PROG"
  : > "$OUT/tests.log"
  XDIST="-n 4"
  $PY -c "import xdist" 2>/dev/null || XDIST=""
  ( OMP_NUM_THREADS=2 timeout -k 5 "$CAP" $PY -m pytest -q -p no:cacheprovider -rfE --tb=short $XDIST tests \
      --ignore=tests/test_cuda.py --junitxml="$W/junit_cpu_suite.xml" > "$W/tests_cpu_suite.log" 2>&1 ) &
  CPU_PID=$!
  attempt=0
  while :; do
    attempt=$(( attempt + 1 ))
    T=$(( END - $(date +%s) ))
    if [ $T -lt 20 ]; then echo "test stage: time is up before attempt $attempt"; break; fi
    echo "=== attempt $attempt, time cap $T s ===" >> "$OUT/tests.log"
    OMP_NUM_THREADS=${OMP_NUM_THREADS:-12} SC_PROGRESS="$PROG" SC_TEST_TIMEOUT="${GPU_TEST_TIMEOUT:-60}" \
      PYTHONPATH="$W${PYTHONPATH:+:$PYTHONPATH}" \
      timeout -k 10 "$T" $PY -m pytest $GPU_TESTS -p sc_gpu_plugin -p no:cacheprovider -v -rA --tb=short \
      --durations=20 --junitxml="$W/junit_gpu_attempt$attempt.xml" 2>&1 | tee "$W/attempt$attempt.log" >> "$OUT/tests.log"
    rc=${PIPESTATUS[0]}
    echo "attempt $attempt: pytest rc=$rc$([ $rc -eq 124 ] && echo ' (stage time cap)')$([ $rc -eq 3 ] && echo ' (CUDA context unusable)')"
    grep -E '^(=+ .*(passed|failed|error|skipped|deselected).* =+|.*(CUDA context unusable|Exit:).*)$' \
      "$W/attempt$attempt.log" | tail -2
    $PY "$W/sc_gpu_plugin.py" status "$PROG" > "$W/status.txt" 2>&1
    st=$?
    { echo; echo "=== attempt $attempt ended: pytest rc=$rc; progress so far ==="; cat "$W/status.txt"; } >> "$OUT/tests.log"
    if [ $st -ne 10 ] || [ $attempt -ge 8 ]; then break; fi
    echo "resuming with the tests not yet run"
  done
  cat "$W/status.txt"
  if [ -s "$W/hung_tracebacks.txt" ]; then
    echo "--- watchdog stacks of hung tests (innermost frames; all in extras.tar.gz hung_tracebacks.txt) ---"
    grep -A6 -E '^(Timeout|Thread|Current thread)' "$W/hung_tracebacks.txt" | head -40
    cat "$W/hung_tracebacks.txt" >> "$OUT/tests.log"
  fi
  $PY "$W/sc_gpu_plugin.py" junit "$PROG" "$OUT/junit.xml"
  record test "attempts=$attempt" "$(( $(date +%s) - t0 ))"
  wait "$CPU_PID"
  echo "whole CPU suite (beside them, ${XDIST:-no xdist}): $(tail -1 "$W/tests_cpu_suite.log")"
  grep -E '^(FAILED|ERROR)' "$W/tests_cpu_suite.log" | head -20
  pack_extras
fi

# ------------------------------------------------------------------------------------------------------------
if want classify && [ $BUILD_OK -eq 1 ]; then
  stage "classify"
  t0=$(date +%s)
  CL="$W/classify"
  mkdir -p "$CL"
  timeout -k 5 60 $PY -m sparseconv.cli generate "$CL/in" --tiles 1 --seed 3 --quiet > "$CL/log.txt" 2>&1
  TILE=$(ls "$CL"/in/*.la[sz] 2>/dev/null | head -1)
  for d in cpu cuda; do
    timeout -k 5 90 $PY -m sparseconv.cli classify "$TILE" -o "$CL/out_$d.laz" --device $d --quiet >> "$CL/log.txt" 2>&1 \
      || echo "classify --device $d failed (log in extras: classify/log.txt)"
  done
  timeout -k 5 60 $PY - "$CL/out_cpu.laz" "$CL/out_cuda.laz" <<'EOF'
import sys
import laspy
import numpy as np
a, b = (np.asarray(laspy.read(p).classification) for p in sys.argv[1:3])
diff = int(np.count_nonzero(a != b))
print(f"classify cpu vs cuda on a generated tile ({a.size} points): {diff} points differ"
      + ("" if diff == 0 else f" ({100 * diff / a.size:.3f} %): MISMATCH"))
EOF
  tail -4 "$CL/log.txt"
  record classify "" "$(( $(date +%s) - t0 ))"
fi

# ------------------------------------------------------------------------------------------------------------
if want bench; then
  stage "bench"
  if [ -n "$SCENES_PID" ] && [ $BUILD_OK -ne 1 ]; then
    kill "$SCENES_PID" 2>/dev/null
  elif [ -n "$SCENES_PID" ]; then
    WAITED=0
    while kill -0 "$SCENES_PID" 2>/dev/null && [ $WAITED -lt $(min 90 $(( $(left) - 100 ))) ]; do
      sleep 2; WAITED=$(( WAITED + 2 ))
    done
    kill -0 "$SCENES_PID" 2>/dev/null && { echo "scene generation still running: the benchmark makes its own"; kill "$SCENES_PID"; }
    tail -3 "$W/scenes.log"
  fi
  reserve=0
  want sanitize && reserve=60
  T=$(min 240 $(( $(left) - reserve )))
  if [ "$T" -lt 40 ]; then
    echo "bench: only $T s left, skipped"
  else
    t0=$(date +%s)
    EXTRA=""
    [ $BUILD_OK -eq 1 ] || EXTRA="--matmul-only"
    timeout -s TERM -k 15 "$T" $PY benchmarks/bench_cuda.py --out-dir "$OUT" --scene-cache "$W/scenes" \
      --time-budget $(( T - 25 )) $EXTRA 2>&1 | tee "$W/bench.log"
    rc=${PIPESTATUS[0]}
    record bench "rc=$rc" "$(( $(date +%s) - t0 ))"
    echo "bench: rc=$rc"
  fi
  # Issue 15's table against spconv (subm / strided / inverse at 1M voxels, C = 64, fp16, and the U-Net training
  # step), with the spconv build carried in .peers/.
  PEER=$(ls .peers/spconv-*.tar.xz 2>/dev/null | head -1)
  T=$(min 200 $(( $(left) - reserve )))
  if [ -z "$PEER" ]; then
    echo "compare_peers: no .peers/spconv-*.tar.xz in the checkout (../shared/peers/README.md), skipped"
  elif [ "$T" -lt 60 ]; then
    echo "compare_peers: only $T s left, skipped"
  else
    t0=$(date +%s)
    $PY -c "import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])" "$PEER" "$W/peers"
    PYTHONPATH="$W/peers" timeout -k 10 "$T" $PY benchmarks/compare_peers.py --device cuda --quick \
      --scene-cache "$W/scenes" --budget $(( T - 20 )) --out-dir "$W" > "$W/compare_peers.log" 2>&1
    echo "compare_peers: rc=$?"
    grep -E '^\||^targets|^U-Net|^- (GPU|TF32|spconv)' "$W/compare_peers.log"
    record compare_peers "" "$(( $(date +%s) - t0 ))"
  fi
  pack_extras
fi

# ------------------------------------------------------------------------------------------------------------
if want sanitize && [ $BUILD_OK -eq 1 ]; then
  stage "sanitize"
  : > "$OUT/sanitizer.log"
  if ! command -v compute-sanitizer >/dev/null 2>&1; then
    echo "compute-sanitizer not found" | tee -a "$OUT/sanitizer.log"
  else
    for tool in memcheck racecheck initcheck; do
      # memcheck first (out-of-bounds and misaligned accesses), then shared-memory races, then reads of
      # uninitialised memory; each gets a share of what is left, the last one all of it.
      T=$(( $(left) - 10 ))
      case $tool in memcheck) share=60 ;; racecheck) share=70 ;; *) share=100 ;; esac
      [ $T -ge 150 ] && T=$(( T * share / 100 ))
      if [ $T -lt 45 ]; then echo "sanitize: $(left) s left, $tool and later tools skipped"; break; fi
      echo "=== compute-sanitizer --tool $tool (cap $T s) ===" >> "$OUT/sanitizer.log"
      t0=$(date +%s)
      PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout -k 10 "$T" compute-sanitizer --tool "$tool" --print-limit 30 \
        --error-exitcode 99 $PY -m pytest -q -p no:cacheprovider -x tests/test_cuda.py -k test_sanitizer_smoke \
        >> "$OUT/sanitizer.log" 2>&1
      rc=$?
      record "sanitize" "$tool rc=$rc" "$(( $(date +%s) - t0 ))"
      echo "$tool: rc=$rc$([ $rc -eq 99 ] && echo ' (ERRORS FOUND)')$([ $rc -eq 124 ] && echo ' (time cap)') | $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$OUT/sanitizer.log" | tail -1)"
    done
    grep -E '^=+ +(Invalid|Uninitialized|Race|Error|.*hazard)' "$OUT/sanitizer.log" | sort | uniq -c | sort -rn | head -15
  fi
fi

# ------------------------------------------------------------------------------------------------------------
stage "done"
printf '%s' "$TIMES"
echo "files in $OUT: $(cd "$OUT" && ls | tr '\n' ' ')"
pack_extras
exec 1>&- 2>&-
wait "$TEE_PID" 2>/dev/null
exit 0
