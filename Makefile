# Build, lint and test entry points for the ITB pump firmware; `make` alone lists them.
# The logic lives in tools/*.py; this file only wires the steps together.

PYTHON ?= python3
VENV ?= .venv
PYTEST_WORKERS ?= 2
# For deploy, flash and firmware (docs/deploy.md): the board folder, its serial port, a stock
# MicroPython image, your MicroPython source tree; ERASE=1 erases the whole flash before flash;
# DRY_RUN=1 prints the commands and runs none.
BOARD ?=
PORT ?=
FIRMWARE ?=
MPY_DIR ?=
ERASE ?=
DRY_RUN ?=
DEPLOY = $(VPY) tools/deploy.py $(if $(DRY_RUN),--dry-run)

VPY := $(VENV)/bin/python
# Written by tools/bootstrap.py only after a complete install; newer pins re-run it.
STAMP := $(VENV)/.itb-installed
LINT_DIRS := $(wildcard firmware host_tests tools boards itbtools)
# Anything that can change a test result; a trace older than these is re-run by `make trace`.
TRACE_INPUTS := pyproject.toml $(shell find firmware boards host_tests tools -type f \
	-name '*.py' 2>/dev/null)

.DEFAULT_GOAL := help
.PHONY: help venv $(VENV) lint mpy test test-long trace bench sim sim-radio deploy flash firmware clean \
	distclean

help: ## list the targets
	@awk -F ':.*## ' '/^[a-z][a-z-]*:.*## /{printf "  make %-10s %s\n", $$1, $$2}' \
		$(MAKEFILE_LIST)

$(STAMP): pyproject.toml tools/bootstrap.py
	$(PYTHON) tools/bootstrap.py --venv $(VENV)

venv: $(STAMP) ## create the venv with the pinned dev tools (done automatically)
$(VENV): venv

lint: $(STAMP) ## ruff, the firmware import rules, mypy against each board's MicroPython stubs
	$(VENV)/bin/ruff check $(LINT_DIRS)
	$(VPY) tools/check_core.py
	$(VPY) tools/typecheck.py

mpy: $(STAMP) ## compile firmware/ and boards/ with mpy-cross into build/mpy/
	$(VPY) tools/mpy_build.py

test: lint mpy ## lint, mpy, then the host tests (CI hypothesis profile)
	HYPOTHESIS_PROFILE=ci $(VPY) -m pytest -q -n $(PYTEST_WORKERS)

test-long: $(STAMP) mpy ## host tests with the long, randomised hypothesis profile
	HYPOTHESIS_PROFILE=long $(VPY) -m pytest -q -n $(PYTEST_WORKERS)

# A failing run still writes the trace (failures are results); the leading `-` lets the
# matrix print anyway. A run that could not finish removes the file instead.
build/trace.json: $(STAMP) $(TRACE_INPUTS)
	$(VPY) tools/mpy_build.py
	-HYPOTHESIS_PROFILE=ci $(VPY) -m pytest -q -n $(PYTEST_WORKERS)

trace: build/trace.json ## requirement/test matrix (re-runs the tests if results are stale)
	$(VPY) tools/trace.py

bench: $(STAMP) mpy ## bench-rig run (tools/bench.py), writes build/bench.json
	$(VPY) tools/bench.py

sim: $(STAMP) ## run the virtual pump for 30 days; report in build/sim (tools/sim.py)
	$(VPY) tools/sim.py

# The virtual pump with its radio, in real time, for a programmer in another process (Bumble
# TCP). Its keys are made once in build/sim-keys (tools/provision.py).
SIM_KEYS := build/sim-keys/ITB-SIM-0001.pump
$(SIM_KEYS): | $(STAMP)
	$(VPY) tools/provision.py --pump-id ITB-SIM-0001 --out build/sim-keys

sim-radio: $(STAMP) $(SIM_KEYS) ## the virtual pump serving BLE at tcp-server:127.0.0.1:6402
	$(VPY) tools/sim_radio.py --keys $(SIM_KEYS)

deploy: $(STAMP) ## compile and copy the firmware to a board: BOARD=esp32_devkitc PORT=/dev/ttyUSB0
	$(DEPLOY) deploy --board "$(BOARD)" --port "$(PORT)"

flash: $(STAMP) ## write a MicroPython image with esptool: BOARD=… PORT=… FIRMWARE=….bin
	$(DEPLOY) flash --board "$(BOARD)" --port "$(PORT)" --firmware "$(FIRMWARE)" \
		$(if $(ERASE),--erase)

firmware: $(STAMP) ## build an image with the firmware frozen in: BOARD=… MPY_DIR=~/micropython
	$(DEPLOY) firmware --board "$(BOARD)" --mpy-dir "$(MPY_DIR)"

clean: ## remove build output and tool caches (keeps the venv)
	rm -rf build .pytest_cache .ruff_cache .hypothesis
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean ## clean, and remove the venv too
	rm -rf $(VENV)
