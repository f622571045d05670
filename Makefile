# Two commands: `make run` (set up, run the pipeline on the embedded sample) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
OUT ?= output
SOURCE ?= data/sample
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export RAY_USAGE_STATS_ENABLED := 0

.PHONY: setup run test lint image clean

$(BIN)/stockpipe: pyproject.toml constraints.txt
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[cpu,dev]'
	touch $@

setup: $(BIN)/stockpipe

run: setup
	$(BIN)/stockpipe run --source $(SOURCE) --out $(OUT)

test: setup
	$(BIN)/ruff check .
	# pytest exits 5 when it collects nothing: say so instead of failing on a selection with no tests.
	$(BIN)/pytest $(PYTEST_ARGS) || { rc=$$?; [ $$rc -eq 5 ] && echo 'pytest: no tests collected'; exit $$rc; }

# An OCI image of the Bento for $(OUT)'s model, with buildah (needs root, buildah and debootstrap).
image: setup
	$(BIN)/stockpipe containerize --out $(OUT)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(OUT) .pytest_cache .ruff_cache
