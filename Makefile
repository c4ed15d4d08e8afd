# Two commands on a fresh machine: `make demo` and `make test` (both set up .venv and build the extension).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
TORCH  ?= torch==2.13.0
export MAX_JOBS ?= 2

SOURCES := setup.py pyproject.toml $(wildcard csrc/*.cpp csrc/*.h csrc/cpu/*.cpp csrc/cpu/*.h csrc/cuda/*.cu csrc/cuda/*.cuh csrc/cuda/*.cpp)

.PHONY: demo test bench build clean

# A torch that is already importable (system site packages) is used as is; otherwise the pinned CPU build.
$(VENV)/.deps: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv --system-site-packages $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install $(TORCH)
	$(PIP) install numpy pytest ninja pybind11 "setuptools>=77" wheel tqdm matplotlib "laspy>=2.4" lazrs
	touch $@

$(VENV)/.built: $(VENV)/.deps $(SOURCES)
	$(PIP) install --no-build-isolation --no-deps -e .
	touch $@

build: $(VENV)/.built

# The main job: classify real LAS files (../shared/data/las when present) and a generated tile with the shipped
# pretrained model, evaluate, write classified LAZ + PNGs under demo/.
demo: build
	$(PY) examples/minimal.py
	$(PY) examples/demo.py

# The CUDA sources are compile-checked for sm_90 first (nvcc, no GPU needed; skipped with a message without
# nvcc), then the test suite runs (its CUDA tests skip without a GPU).
test: build
	$(PY) tools/check_cuda_compile.py
	$(PY) -m pytest -q

# spconv is an optional peer: a failed install does not fail the target (the benchmark then skips it).
bench: build
	-$(PIP) install -q spconv==2.3.8
	$(PY) benchmarks/bench_conv.py

clean:
	rm -rf build *.egg-info sparseconv/_C*.so $(VENV)/.built
