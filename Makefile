# Two commands on a fresh machine: `make demo` and `make test`. Each sets up .venv first.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed

.PHONY: setup demo test test-vm test-vm-broken lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: setup
	$(VENV)/bin/continuon-trainer demo

# The pytest suite, with the real-systemd VM suite (tests/vm: image build, one qemu boot) beside
# it where qemu has KVM; under software emulation only it is left out, saying why (CI time: see
# tests/vm/alongside.sh). CONTINUON_VMTEST=1 runs it anyway, CONTINUON_VMTEST=0 never.
test: setup
	$(PY) -m ruff check .
	tests/vm/alongside.sh $(PY) $(PY) -m pytest

# The VM suite alone, in the foreground.
test-vm: setup
	@if [ "$${CONTINUON_VMTEST:-1}" = 0 ]; then echo "VM suite left out: CONTINUON_VMTEST=0"; \
	else CONTINUON_VMTEST=1 $(PY) -m pytest tests/vm; fi

# Each deliberately broken unit must make its named check fail (one short boot each).
test-vm-broken: setup
	for unit in simple mdwe no-rwpaths; do \
	  CONTINUON_VMTEST=1 CONTINUON_VMTEST_UNIT=$$unit $(PY) -m pytest tests/vm || exit 1; done

lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

bench: setup
	$(PY) bench/run_all.py

clean:
	rm -rf $(VENV) demo-root bench/out
