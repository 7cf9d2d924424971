# Set-up and entry points. `make demo` and `make test` each create the virtual
# environment on first use, so a fresh clone needs only one of them.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch and torchvision are pinned to the builds that sit on this project's
# machines' local disk; an unpinned `torch` can pull a multi-GB CUDA build.
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1

.PHONY: install demo test bench clean

$(BIN)/pgs-dali: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH_PINS)
	$(BIN)/pip install --quiet -e '.[dev]' $(TORCH_PINS)
	touch $@

install: $(BIN)/pgs-dali

demo: install
	$(BIN)/pgs-dali demo

test: install
	$(BIN)/python -m pytest

bench: install
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) build *.egg-info
