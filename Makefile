# seqtool: `make demo` (set-up + the demo) and `make test` (set-up + the tests) are all a newcomer needs.
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV  := .venv
BIN   := $(VENV)/bin
STAMP := $(VENV)/.installed
BROWSER := $(VENV)/.browser

.PHONY: setup demo test test-slow lint format clean bench-train bench-quality bench-translate bench-serve bench-controls bench-corpora bench-scale docs

setup: $(STAMP) $(BROWSER)

# torch first, pinned (an unpinned torch would pull a multi-GB CUDA build); then the package with its dev, plot,
# ct2 (CTranslate2 export and engine) and serve (seqtool serve: FastAPI, uvicorn) extras.
# Re-runs only when pyproject.toml changes or the torch pin does.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[dev,plot,ct2,serve]"
	@echo "$(TORCH)" > $(STAMP)

# Debian's Chromium for the web page's browser test (tests/serve/test_page_browser.py): Playwright drives it through
# executable_path, as its own browser download cannot work offline. Installed with apt-get when run as root;
# elsewhere the browser test is skipped with a reason (CI sets SEQTOOL_REQUIRE_BROWSER=1: there it must run).
$(BROWSER): $(STAMP)
	@if command -v chromium >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing Debian's chromium for the browser test"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	else echo "note: no chromium, and apt-get needs root: the browser test will be skipped"; fi
	@touch $(BROWSER)

# a different TORCH= than last time forces a re-install
ifneq ($(wildcard $(STAMP)),)
ifneq ($(shell cat $(STAMP)),$(TORCH))
.PHONY: $(STAMP)
endif
endif

demo: setup
	bash recipes/demo.sh

# every test but those marked slow (pyproject.toml's addopts): 7 min 55 s to 8 min 53 s on 2 cores on 2026-12-05,
# before three 20-25 s tests moved to slow; 9 min 44 s on a busy host on 2026-12-06, before the target-side tag
# variant moved to slow. test-slow runs only the slow ones (DDP jobs, figures, more engine and signal variants, error
# paths that need several runs: about 8 min);
# the two together run everything; each lists its ten slowest tests (keep make test under 8 minutes)
test: setup
	$(BIN)/python -m pytest -q --durations=10

test-slow: setup
	$(BIN)/python -m pytest -q -m slow --durations=10

# training throughput beside JoeyNMT and Eole with ../shared/bench (MODE=speed: ~25 min; PEERS=1 retrains the peers)
bench-train: setup
	bash tests/benchmarks/bench_train.sh

# BLEU after 20 minutes of training, beam 5 and 1 on the test set (PEERS=1 also reruns the peers: about 70 min more)
bench-quality: setup
	MODE=quality bash tests/benchmarks/bench_train.sh

# decoding speed of a trained run (default: bench-quality's Transformer) beside Eole and CTranslate2 (PEERS=1
# re-decodes the peers' models in the same sitting): the defaults (int8), fp32, bf16 and the CTranslate2 engine
bench-translate: setup
	bash tests/benchmarks/bench_translate.sh

# seqtool serve under 1, 8, 32 and 64 concurrent clients beside offline translate (torch and CTranslate2 engines)
bench-serve: setup
	bash tests/benchmarks/bench_serve.sh

# decoding controls side by side: beam, greedy, sampling, scoring, prefix, --align, a 2-model ensemble
bench-controls: setup
	bash tests/benchmarks/bench_controls.sh

# several corpora and languages: WHAT=multilingual (en->de+fr, 80 min), weighting (wesnoth + l10n, 80 min) or
# throughput (one corpus against the same pairs as two, 4 x 5 min)
bench-corpora: setup
	bash tests/benchmarks/bench_corpora.sh

# corpora larger than RAM: cache build + 500 training steps on 1M and 5M synthetic pairs, peak RSS (about 40 min)
bench-scale: setup
	bash tests/benchmarks/bench_scale.sh

# README's config reference, regenerated from the schema
docs: setup
	$(BIN)/python -m seqtool.config_reference --write README.md

lint: setup
	$(BIN)/ruff check seqtool tests
	$(BIN)/ruff format --check seqtool tests

format: setup
	$(BIN)/ruff format seqtool tests
	$(BIN)/ruff check --fix seqtool tests

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
