"""Explaining whole data sets: streamed on one machine, on Ray across many, and SpRAy.

- :func:`explain_dataset` runs one method over a folder, a list of paths, an array or an
  iterator, batch by batch, into resumable shards with an index
  (:mod:`onnxplain.dataset.store` describes the files); ``engine="ray"`` runs the same
  batches on Ray Data actors.
- :func:`read_dataset` opens a finished output folder.
- :func:`spray` clusters the maps (Spectral Relevance Analysis, Lapuschkin et al. 2019)
  to find groups of images the model decides on for the same reason.
"""

from onnxplain.dataset.engine import RunStats, explain_dataset
from onnxplain.dataset.spray import SprayResult, spray
from onnxplain.dataset.store import DatasetResult, read_dataset

__all__ = ["DatasetResult", "RunStats", "SprayResult", "explain_dataset", "read_dataset", "spray"]
