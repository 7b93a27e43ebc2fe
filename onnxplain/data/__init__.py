"""Data that ships with onnxplain: the shapes generator and the example model trained on it.

``shapes`` generates the data set (numpy only); ``shapes_cnn.onnx`` is a small CNN trained
on it by ``scripts/train_example_model.py``, and ``shapes_cnn.json`` records how (classes,
seeds, preprocessing, accuracy). Load them with :func:`onnxplain.examples.shapes_model`
and :func:`onnxplain.examples.shapes_dataset`.
"""

from importlib import resources
from pathlib import Path

from onnxplain.data import shapes


def path(name: str) -> Path:
    """The file ``name`` shipped in ``onnxplain/data``."""
    return Path(str(resources.files(__name__).joinpath(name)))


__all__ = ["path", "shapes"]
