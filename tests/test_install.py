"""The package installs into an existing detectron2 environment: no exact pins in its
metadata, the ONNX stack and the test tools as extras, and nothing to change in the Makefile's
environment."""
import importlib.metadata
import os
import subprocess
import sys

import pytest
from packaging.requirements import Requirement

from helpers import REPO


def requirements():
    return [Requirement(r) for r in importlib.metadata.requires("retina_plugin") or []]


def test_metadata_has_no_exact_pins_and_extras_for_export_and_dev():
    found = requirements()
    assert found, "the installed metadata names its requirements"
    for requirement in found:
        assert not any(spec.operator in ("==", "===", "~=") for spec in requirement.specifier), requirement
    base = {r.name for r in found if r.marker is None}
    assert {"torch", "torchvision", "fvcore", "pycocotools", "faster-coco-eval"} <= base
    assert not {"onnx", "onnxruntime", "onnxscript", "pytest", "setuptools"} & base
    extras = {r.name: str(r.marker) for r in found if r.marker is not None}
    assert 'extra == "export"' in extras["onnxruntime"] and 'extra == "dev"' in extras["pytest"]


@pytest.mark.slow
def test_installing_into_the_makefiles_environment_changes_nothing():
    # --no-index: everything must already be satisfied here; nothing is fetched.
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--no-index", "--no-build-isolation", "-e", ".[export,dev]"],
        cwd=REPO, capture_output=True, text=True, timeout=300, env=dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1"),
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    would = [line for line in proc.stdout.splitlines() if line.startswith("Would install")]
    assert all(package.startswith("retina") for line in would for package in line.split()[2:]), would
