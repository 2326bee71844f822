# Two entry points, both idempotent: a second run skips what is already installed.
#   make quickstart   install, then train and COCO-evaluate a small RetinaNet on the CPU
#   make test         install, then run the test suite
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# detectron2 is not on PyPI under its own name: this wheel is upstream's main branch (2024),
# built for CPython 3.10. Its Python code runs on 3.11; its compiled _C is not needed.
DETECTRON2_WHEEL := sal-detectron2==0.7.2
# Re-install when the pins change, not otherwise.
STAMP := $(VENV)/.installed

.PHONY: install quickstart test test-all clean-venv

install: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	rm -rf $(VENV)/d2wheel
	$(PY) -m pip install --quiet --no-deps --only-binary=:all: --python-version 3.10 \
		--implementation cp --target $(VENV)/d2wheel $(DETECTRON2_WHEEL)
	# Only the package: the wheel also carries a top-level tools/ that must not shadow ours.
	site=$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') && \
		rm -rf $$site/detectron2 && cp -r $(VENV)/d2wheel/detectron2 $$site/
	rm -rf $(VENV)/d2wheel
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	$(PY) -c "import retina_plugin, detectron2; print('installed detectron2', detectron2.__version__)"
	touch $@

quickstart: $(STAMP)
	$(PY) train_net.py --config-file configs/quickstart.yaml

# The default suite: fast tests, CPU only.
test: $(STAMP)
	$(PY) -m pytest -q tests

clean-venv:
	rm -rf $(VENV)
