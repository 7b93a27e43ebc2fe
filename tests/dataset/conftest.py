"""Fixtures of the data set tests: the bundled model, streamed shapes images, one Ray session."""

from __future__ import annotations

import pytest

import onnxplain as ox


@pytest.fixture(scope="session")
def shapes_model():
    return ox.examples.shapes_model()


@pytest.fixture(scope="session")
def shapes_batch():
    return ox.examples.shapes_dataset(24, seed=31)


@pytest.fixture(scope="module")
def ray_session():
    """One local Ray (2 CPUs) for a whole test module, shut down at its end."""
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
