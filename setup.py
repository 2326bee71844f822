from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent

# What the plugin imports, with the lowest versions it works with: it installs into an existing
# detectron2 environment without replacing its torch. The exact pins of the environment the
# Makefile builds (and CI tests) live in requirements.txt.
INSTALL_REQUIRES = [
    "torch>=2.1",  # torch.compile for the fused loss, torch.export
    "torchvision>=0.16",
    "numpy>=1.21",
    "fvcore>=0.1.5",
    "pycocotools>=2.0.2",
    "faster-coco-eval>=1.8",  # TEST.COCO_EVAL_ENGINE's default
    "PyYAML>=5.1",
    "tqdm>=4.29",
    "tabulate",
    "matplotlib>=3.3",
    "Pillow>=7.1",
    "opencv-python-headless>=4",  # the demo's video input
]
EXTRAS_REQUIRE = {
    # tools/export_model.py --format onnx: torch.onnx's exporter and onnxruntime to check it.
    "export": ["onnx>=1.17", "onnxscript>=0.5", "onnxruntime>=1.20"],
    # tools/run_ablations.py --executor slurm.
    "slurm": ["submitit>=1.5"],
    "dev": ["pytest>=7"],
}

setup(
    name="retina_plugin",
    version="0.1.0",
    description="RetinaNet and the focal-loss family as a detectron2 plugin",
    long_description=(HERE / "README.md").read_text(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["retina_plugin", "retina_plugin.*"]),
    python_requires=">=3.10",
    # detectron2 must be installed separately (see README): it is not on PyPI under its name.
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
)
