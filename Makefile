# make demo   install, then prepare -> train -> sample on tiny shakespeare (GPU if there is one)
# make test   install, then run the whole test suite (what CI runs)
# make quick  install, then the tests not marked slow: the inner loop while changing the code
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
INPUT ?=

.PHONY: install demo test quick

$(VENV)/.installed: requirements.txt requirements-dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -r requirements-dev.txt
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/python data/shakespeare_char/prepare.py $(if $(INPUT),--input $(INPUT))
	if $(BIN)/python -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then \
		$(BIN)/python train.py config/train_shakespeare_char.py --init_from=scratch; \
	else \
		$(BIN)/python train.py config/train_shakespeare_char_cpu.py --init_from=scratch; \
	fi
	$(BIN)/python sample.py --out_dir=out-shakespeare-char --num_samples=3 --max_new_tokens=300

test: install
	$(BIN)/python -m pytest -q

quick: install
	$(BIN)/python -m pytest -q -m "not slow"
