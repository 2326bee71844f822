import pytest

from helpers import tiny_cfg


@pytest.fixture
def cfg():
    """A tiny FocalRetinaNet config, fresh for each test."""
    return tiny_cfg()
