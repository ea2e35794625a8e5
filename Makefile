# The two commands a newcomer needs: `make demo` and `make test`. Both create or update .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv demo serve test test-browser console-screenshots check lint typecheck imports bench reliability clean

$(STAMP): pyproject.toml
	@echo "==> creating $(VENV) and installing antifraud with its test tools"
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --progress-bar off -e '.[dev,dask]'
	touch $(STAMP)

venv: $(STAMP)

demo: venv
	@echo "==> antifraud demo: sample, model, embedded Redis, service, one day replayed over HTTP"
	$(BIN)/antifraud demo

# Runs until stopped, on the embedded Redis, with a local development key file in var/. Its admin key
# (owner-only, var/dev-admin.key) signs in to the console; a checkout whose key file predates the
# console gets a second admin key for it, dev-console.
serve: venv
	@mkdir -p var
	@test -f var/dev-admin.key || ( umask 077; name=dev; test -f var/dev-keys.yaml && name=dev-console; \
		out=$$($(BIN)/antifraud keys new --name $$name --role admin --file var/dev-keys.yaml) && \
		printf '%s\n' "$$out" | tail -n 1 > var/dev-admin.key )
	@echo "console: http://127.0.0.1:$${ANTIFRAUD_PORT:-8000}/console/ (sign in with the key in var/dev-admin.key)"
	$(BIN)/antifraud serve --api-keys var/dev-keys.yaml

lint: venv
	@echo "==> ruff"
	$(BIN)/ruff check engine features training tests benchmarks

# mypy reads the folders under their installed names through links (see [tool.mypy] in pyproject.toml)
typecheck: venv
	@echo "==> mypy"
	@mkdir -p .mypy-src/antifraud
	@for pkg in engine features training; do ln -sfn ../../$$pkg .mypy-src/antifraud/$$pkg; done
	$(BIN)/mypy

# The layers of docs/architecture.md, as import-linter contracts (pyproject.toml).
imports: venv
	@echo "==> import-linter"
	$(BIN)/lint-imports

check: lint typecheck imports

test: venv lint typecheck imports
	@echo "==> pytest (real redis-server, real LightGBM)"
	$(BIN)/pytest -q --ignore=tests/reliability --ignore=tests/browser

# The console in a real browser: Playwright (the `browser` extra, from PyPI) drives Debian's Chromium
# (/usr/bin/chromium or ANTIFRAUD_CHROMIUM; `apt-get install chromium`), never a browser Playwright
# downloads. Screenshots go to reports/browser/ (not committed).
$(VENV)/.browser-installed: $(STAMP)
	$(BIN)/python -m pip install --quiet --progress-bar off -e '.[browser]'
	touch $@

test-browser: $(VENV)/.browser-installed
	@echo "==> browser tests (Playwright, $${ANTIFRAUD_CHROMIUM:-/usr/bin/chromium})"
	$(BIN)/pytest -q tests/browser

# The screenshots docs/console.md shows, from a real run of the browser tests (1280x800 viewports):
# written to docs/console/, then those the page does not show are removed; fails on a PNG over 150 KB.
console-screenshots: $(VENV)/.browser-installed
	AF_SCREENSHOTS=docs/console $(BIN)/pytest -q tests/browser
	@for png in docs/console/*.png; do \
		grep -q "(console/$$(basename $$png))" docs/console.md || rm "$$png"; done
	@ls -l docs/console/*.png
	@! find docs/console -name '*.png' -size +150k | grep . || { echo "a PNG is over 150 KB"; exit 1; }

# The long evidence: faults under load, durability, idempotency at scale, fuzzing; prints figures.
reliability: venv
	@echo "==> reliability suite (about 30 minutes at most)"
	$(BIN)/pytest -q -s tests/reliability

bench: venv
	$(BIN)/python benchmarks/bench_online_features.py
	$(BIN)/python benchmarks/bench_offline_features.py

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache .mypy-src
