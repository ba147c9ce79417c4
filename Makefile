# The README's two commands: `make demo` and `make test` (ruff, import contracts, pytest). Each bootstraps uv and the venv first,
# needing only Python 3.11+ and pip. uv never downloads a Python (UV_PYTHON_DOWNLOADS=never).
PYTHON ?= python3
BOOT := .uv-bootstrap
UV := $(BOOT)/bin/uv
VENV := .venv
export UV_PYTHON_DOWNLOADS := never
export UV_PROJECT_ENVIRONMENT := $(VENV)

.PHONY: demo test lint format bench venv clean compose-check compat-check reliability cli-docs

$(UV):
	$(PYTHON) -m venv $(BOOT)
	$(BOOT)/bin/python -m pip install --quiet --disable-pip-version-check uv

$(VENV)/.synced: $(UV) pyproject.toml uv.lock
	$(UV) sync --frozen --compile-bytecode --python $(PYTHON)
	touch $@

venv: $(VENV)/.synced

demo: venv
	$(VENV)/bin/scenarios demo $(ARGS)

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

test: lint
	$(VENV)/bin/pytest -q

# Not part of `make test`: issue 13's two speed benchmarks, serving then querying (about 9 min
# on 2 cores at REPEATS=5), their JSON in runs/bench/ (ignored: copy a run worth keeping to
# results/bench/).
REPEATS ?= 5
bench: venv
	mkdir -p runs/bench
	$(VENV)/bin/python -m benchmarks.serve --repeats $(REPEATS) --json runs/bench/serve.json
	$(VENV)/bin/python -m benchmarks.attack --repeats $(REPEATS) --json runs/bench/attack.json

# Not part of `make test`: builds the image and runs docker-compose.yml end to end on the host
# network (loopback only); prints recovery=<x> seconds=<y>. Needs docker (root or the docker group).
compose-check:
	scripts/compose-check.sh

# Not part of `make test`: the test suite on the GPU machine's torch 2.11 and torchvision 0.26 (a
# second environment in .compat/, installed from the registry); ARGS go to pytest.
compat-check: $(UV)
	scripts/compat-check.sh $(ARGS)

# Fuzzing, load, many clients, faults and access (issue 12): longer than `make test`, not in it.
reliability: venv
	$(VENV)/bin/python -m reliability $(ARGS)

# docs/cli.md, every command's options from its --help (tests/test_readme.py fails when stale).
cli-docs: venv
	$(VENV)/bin/python scripts/cli_docs.py

format: venv
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(BOOT) $(VENV) .pytest_cache .ruff_cache
