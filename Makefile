# Two commands: `make run` (set up, run the pipeline on the embedded sample) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
OUT ?= output
SOURCE ?= data/sample
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export RAY_USAGE_STATS_ENABLED := 0

.PHONY: setup bench-setup run test test-fast lint image clean

$(BIN)/stockpipe: pyproject.toml constraints.txt
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[cpu,dev]'
	touch $@

setup: $(BIN)/stockpipe

# What the benchmarks (bench/) need besides: Polars for a reference, aiohttp; wrk comes from Debian.
bench-setup: setup
	$(BIN)/pip install -q -c constraints.txt -e '.[cpu,dev,bench]'

run: setup
	$(BIN)/stockpipe run --source $(SOURCE) --out $(OUT)

# pytest exits 5 when it collects nothing: say so instead of failing on a selection with no tests.
pytest = $(BIN)/pytest $(1) $(PYTEST_ARGS) || { rc=$$?; [ $$rc -eq 5 ] && echo 'pytest: no tests collected'; exit $$rc; }

# Everything: unit tests and integration tests (real Ray, Prefect, BentoML, S3 on loopback).
test: setup
	$(BIN)/ruff check .
	$(call pytest)

# Unit tests alone (tests/unit: no Ray, no Prefect server, no HTTP), in well under two minutes.
test-fast: setup
	$(BIN)/ruff check .
	$(call pytest,-m "not integration")

# An OCI image of the Bento for $(OUT)'s model, with buildah (needs root, buildah and debootstrap).
image: setup
	$(BIN)/stockpipe containerize --out $(OUT)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(OUT) .pytest_cache .ruff_cache
