# Two commands do all the set-up: `make demo` (train + evaluate the CIFAR-10 default) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

# The shared read-only data folder is this environment's local mirror (no internet here).
ifeq ($(origin ALEXNET_MIRROR),undefined)
ifneq ($(wildcard ../shared/data),)
export ALEXNET_MIRROR := $(abspath ../shared/data)
endif
endif

.PHONY: demo test install clean oldest

# The pinned versions (constraints.txt: why and how to refresh it there). CONSTRAINTS= installs the newest
# that pyproject.toml allows, e.g. on a machine whose own torch the venv should use (--system-site-packages).
CONSTRAINTS ?= constraints.txt

# --system-site-packages: where a suitable torch is already installed (e.g. a GPU machine's
# torch 2.11), the venv uses it instead of downloading another one.
$(BIN)/alexnet: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv --system-site-packages $(VENV)
	$(BIN)/python -m pip install -q $(if $(CONSTRAINTS),-c $(CONSTRAINTS)) -e '.[test]'
	touch $(BIN)/alexnet

install: $(BIN)/alexnet

demo: $(BIN)/alexnet
	rm -rf runs/demo
	$(BIN)/alexnet train --recipe cifar10 --out runs/demo
	$(BIN)/alexnet eval --checkpoint runs/demo/checkpoints/last.pt
	$(BIN)/alexnet figures --checkpoint runs/demo/checkpoints/last.pt --units all
	$(BIN)/alexnet report runs/demo

# ruff (pyproject.toml's rules), then two pytest workers (pytest-xdist), one torch thread each on a 2-core
# machine (tests/conftest.py): the suite's many small ops and subprocess start-ups use both cores; tests
# marked with one xdist_group (one trained network's) run in one process.
# TEST_WORKERS=0: one process.
TEST_WORKERS ?= 2
test: $(BIN)/alexnet
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadgroup

clean:
	rm -rf $(VENV) runs build *.egg-info src/*.egg-info

# The oldest supported pair, torch 2.11 + torchvision 0.26, on the whole suite in a venv of its own
# (.venv-oldest: a download of several GB where those wheels are not on the machine); everything else as
# constraints.txt pins it (less torch's own CUDA libraries, which each torch release pins itself).
oldest:
	test -x .venv-oldest/bin/python || $(PYTHON) -m venv .venv-oldest
	grep -v -E '^(torch|torchvision|triton|nvidia-[a-z0-9-]+|cuda-[a-z-]+)==' constraints.txt > .venv-oldest/constraints.txt
	.venv-oldest/bin/python -m pip install -q -c .venv-oldest/constraints.txt 'torch==2.11.*' 'torchvision==0.26.*' \
		-e '.[test]'
	.venv-oldest/bin/python -m pytest -q -n $(TEST_WORKERS) --dist loadgroup
