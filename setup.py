from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent


def read_requirements():
    # requirements.txt is the one place where pins live.
    lines = (HERE / "requirements.txt").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


setup(
    name="retina_plugin",
    version="0.1.0",
    description="RetinaNet and the focal-loss family as a detectron2 plugin",
    long_description=(HERE / "README.md").read_text(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["retina_plugin", "retina_plugin.*"]),
    python_requires=">=3.10",
    # detectron2 must be installed separately (see README): it is not on PyPI under its name.
    install_requires=read_requirements(),
)
