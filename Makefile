# The README's commands. Each builds its own virtual environment from the pinned set
# in constraints.txt on first use (needs only python3 >= 3.11 and the package index).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
# Prefect and Ray state stays inside the project; no telemetry.
export PREFECT_HOME ?= $(CURDIR)/.tsmeta/prefect
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export RAY_USAGE_STATS_ENABLED := 0

.PHONY: install demo test test-slow test-all lint freeze clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

demo: install  ## the main job on the embedded defaults: generate, profile, meta-train, nightly, report
	$(BIN)/tsmeta demo

# pytest exits 5 when it collects nothing: for the default suite that is a failure
# (a suite that ran nothing must not pass); for the optional marker suites it is fine.
test: install  ## the default suite (excludes tests marked slow)
	$(BIN)/python -m pytest -m "not slow" ; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; exit 1; fi; exit $$rc

test-slow: install
	$(BIN)/python -m pytest -m slow ; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test-slow: no slow tests collected"; exit 0; fi; exit $$rc

test-all: test test-slow

lint: install
	$(BIN)/ruff check tsmeta pipelines tests benchmarks
	$(BIN)/ruff format --check tsmeta pipelines tests benchmarks

# Regenerate the pinned working set from the current environment (after a tested upgrade).
freeze: install
	{ echo "# The tested working set (make install uses it as pip constraints). Regenerate with: make freeze"; \
	  echo "# torch is pinned without the +cpu label: pip picks the local CPU wheel where one is offered."; \
	  $(BIN)/python -m pip freeze --exclude-editable | sed -E 's/^torch==([0-9.]+)\+cpu$$/torch==\1/'; } > constraints.txt.new
	mv constraints.txt.new constraints.txt

clean:
	rm -rf $(VENV) .tsmeta .pytest_cache
