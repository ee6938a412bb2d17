# cvtpm: `make demo` runs the main job end to end, `make test` runs the tests.
# Both install what is missing first: Debian packages, a virtual environment,
# and the package itself.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: all setup setup-test test test-fast demo bench lint format clean

all: test

# What the demo and cvtpm itself need; the tests add PostgreSQL and QEMU.
setup: $(STAMP)

setup-test: setup
	./scripts/setup-host test

$(STAMP): pyproject.toml setup.py src/cvtpm/attest/_rawlist.c \
		src/cvtpm/measure/_execcache.c \
		src/cvtpm/runtime/cvtpm_hook.c src/cvtpm/runtime/hook_text.c \
		src/cvtpm/runtime/hook_text.h scripts/setup-host
	./scripts/setup-host run
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# Editable, with the C parts (cvtpm.attest._rawlist,
	# cvtpm.measure._execcache, the cvtpm-hook program) built in place.
	$(BIN)/pip install -q -e '.[dev]'
	# Byte-code ahead of time: where PYTHONDONTWRITEBYTECODE is set, every
	# cvtpm-hook run would compile its modules again (container start time).
	$(BIN)/python -m compileall -q src >/dev/null
	touch $(STAMP)

test: setup-test
	# Fresh byte-code for the QEMU guest, which reads src/ read-only and
	# would otherwise compile every changed module under emulation.
	$(BIN)/python -m compileall -q src >/dev/null
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m "not qemu and not postgres"

demo: setup
	$(BIN)/cvtpm demo

bench: setup
	$(BIN)/python -m bench

lint: setup
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

format: setup
	$(BIN)/ruff format src tests bench
	$(BIN)/ruff check --fix src tests bench

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .ruff_cache
	find src -name '*.so' -delete
	rm -f src/cvtpm/runtime/cvtpm-hook
