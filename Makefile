# The workbook's commands. `make` sets everything up and runs every notebook; `make test` runs the tests.
# Set-up is a .venv/ at the repository root; it is redone only when pyproject.toml changes.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.workbook-installed

# torch/torchvision pinned per platform: on x86-64 these are CUDA builds that also run on a CPU-only
# machine (the CPU wheel of torch has no matching torchvision); on aarch64 the CPU builds.
# Override for another CUDA: make setup TORCH_PINS="torch==X torchvision==Y"
ifeq ($(shell uname -m),aarch64)
TORCH_PINS ?= torch==2.9.1 torchvision==0.24.1
else
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
endif

.PHONY: all setup run test lab clean-runs

all: run

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_PINS)
	$(BIN)/python -m pip install -q -e '.[test,triton,ray]' $(TORCH_PINS)
	$(BIN)/python -m ipykernel install --sys-prefix --name workbook --display-name "Python (workbook)" >/dev/null
	touch $(STAMP)

setup: $(STAMP)

## every notebook with its defaults into outputs/, then outputs/index.html
run: setup
	$(BIN)/workbook run-all

test: setup
	$(BIN)/python -m pytest

## JupyterLab on the workbook's kernel (new notebooks open on it too). Jupyter refuses to start as root unless
## told it may, and containers and cloud notebooks run as root: --allow-root is added there only.
## More server options: make lab LAB_ARGS="--no-browser --ip=0.0.0.0 --port=8888"
LAB_ARGS ?=
LAB_ROOT := $(if $(filter 0,$(shell id -u)),--allow-root)
LAB_CMD   = $(BIN)/jupyter lab --notebook-dir=notebooks --MultiKernelManager.default_kernel_name=workbook $(LAB_ROOT) $(LAB_ARGS)

lab: setup
	$(LAB_CMD)

## remove run folders (keeps outputs/reference/)
clean-runs:
	find outputs -mindepth 1 -maxdepth 1 ! -name reference ! -name README.md -exec rm -rf {} +
