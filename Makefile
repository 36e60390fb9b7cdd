# make demo: the main job end to end on the embedded default.  make test: every check.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The package is installed in setuptools' strict editable mode: a tree of links under build/ that
# maps splitvault.* onto domain/, adapters/ and app/ (mypy and import-linter read it as plain files).
# Edits show at once; a module added or removed needs the tree rebuilt, so the stamp also depends
# on the list of source files.
SOURCES := $(VENV)/.sources

.PHONY: venv test lint typecheck contracts pytest demo bench clean FORCE

venv: $(STAMP)

$(SOURCES): FORCE
	@mkdir -p $(VENV)
	@find app adapters domain -name '*.py' -o -name py.typed | LC_ALL=C sort > $@.new
	@cmp -s $@.new $@ && rm $@.new || mv $@.new $@

$(STAMP): pyproject.toml $(SOURCES)
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip setuptools wheel
	rm -rf build/__editable__.*
	$(BIN)/python -m pip install -q --no-build-isolation -e '.[dev]' --config-settings editable_mode=strict
	@# Bytecode, as a wheel install has it: with PYTHONDONTWRITEBYTECODE set, every process
	@# would otherwise compile our modules from source (0.2 CPU-s a command here).
	$(BIN)/python -m compileall -q build/__editable__.*
	touch $(STAMP)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: venv
	$(BIN)/mypy

contracts: venv
	$(BIN)/lint-imports

pytest: venv
	$(BIN)/pytest $(PYTEST_ARGS)

test: lint typecheck contracts pytest

demo: venv
	$(BIN)/splitvault demo

bench: venv
	$(BIN)/splitvault bench --hold-freed-memory

clean:
	rm -rf $(VENV) build .mypy_cache .pytest_cache .ruff_cache .hypothesis
