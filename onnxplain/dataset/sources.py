"""Where the images of a data set come from: a folder, a list of paths, a numpy array or
an iterator, read shard by shard so that memory never holds more than one shard.

Image ``i`` of a source always lands in shard ``i // shard_size``, row ``i % shard_size``,
whatever the engine: that fixed assignment is what makes a resumed run and a Ray run
write the same files as an uninterrupted local one.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from onnxplain.core.errors import InputValidationError
from onnxplain.preprocess import Preprocess, read_image

#: File name endings read as images from a folder.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


@dataclass
class ShardItems:
    """The raw items of one shard: ``start`` is the global index of its first row."""

    shard: int
    start: int
    ids: list[str]
    items: list[Any]

    def __len__(self) -> int:
        return len(self.items)


class Source:
    """A data set's items in a fixed order. ``length`` is None for iterators."""

    length: int | None = None
    kind: str = "source"

    def describe(self) -> str:
        return self.kind

    def shards(self, shard_size: int, skip: dict[int, int]) -> Iterator[ShardItems | int]:
        """Yield each shard's items, or just its number when ``skip`` lists the shard with the
        number of rows it holds and the source agrees (a full shard, or the final one)."""
        raise NotImplementedError


class _SizedSource(Source):
    def __init__(self, length: int) -> None:
        self.length = length

    def _ids(self, start: int, stop: int) -> list[str]:
        return [str(i) for i in range(start, stop)]

    def _items(self, start: int, stop: int) -> list[Any]:
        raise NotImplementedError

    def shards(self, shard_size: int, skip: dict[int, int]) -> Iterator[ShardItems | int]:
        for shard, start in enumerate(range(0, self.length, shard_size)):
            stop = min(start + shard_size, self.length)
            if skip.get(shard) == stop - start:
                yield shard
                continue
            yield ShardItems(shard, start, self._ids(start, stop), self._items(start, stop))


class PathSource(_SizedSource):
    """Image files, in the given order; ids are the paths relative to ``root`` if given."""

    kind = "paths"

    def __init__(self, paths: list[Path], root: Path | None = None) -> None:
        if not paths:
            raise InputValidationError(
                "images: no image files given"
                if root is None
                else f"images: no image files ({', '.join(IMAGE_SUFFIXES)}) in {root}"
            )
        super().__init__(len(paths))
        self.paths = paths
        self.root = root

    def describe(self) -> str:
        return f"folder {self.root}" if self.root is not None else f"{self.length} image files"

    def _ids(self, start: int, stop: int) -> list[str]:
        if self.root is None:
            return [str(p) for p in self.paths[start:stop]]
        return [p.relative_to(self.root).as_posix() for p in self.paths[start:stop]]

    def _items(self, start: int, stop: int) -> list[Any]:
        return list(self.paths[start:stop])


class ArraySource(_SizedSource):
    """Rows of an array (N, ...): model inputs when floating point, pixels when uint8."""

    kind = "array"

    def __init__(self, array: np.ndarray) -> None:
        if array.ndim < 2 or len(array) == 0:
            raise InputValidationError(
                f"images: an array must be a non-empty batch (N, ...), got {array.shape}"
            )
        super().__init__(len(array))
        self.array = array

    def describe(self) -> str:
        return f"array {tuple(self.array.shape)} {self.array.dtype}"

    def _items(self, start: int, stop: int) -> list[Any]:
        return list(self.array[start:stop])


class IteratorSource(Source):
    """Items from an iterator, each consumed once and never all held at once."""

    kind = "iterator"

    def __init__(self, iterable: Iterable[Any]) -> None:
        self.iterator = iter(iterable)

    def shards(self, shard_size: int, skip: dict[int, int]) -> Iterator[ShardItems | int]:
        it = self.iterator
        for shard in itertools.count():
            start = shard * shard_size
            items = list(itertools.islice(it, shard_size))
            if not items:
                return
            count = len(items)
            # A short shard is done only if the iterator really ends there.
            final = False
            if count < shard_size:
                final = True
            if skip.get(shard) == count and (count == shard_size or final):
                yield shard
            else:
                yield ShardItems(shard, start, [str(i) for i in range(start, start + count)], items)
            if final:
                return


def as_source(images: Any) -> Source:
    """A folder (sorted image files, recursively), a list of paths, a numpy array or an
    iterator/generator of items (paths, Pillow images, uint8 pixel arrays or model-ready
    float arrays)."""
    if isinstance(images, Source):
        return images
    if isinstance(images, (str, os.PathLike)):
        root = Path(images)
        if not root.is_dir():
            raise InputValidationError(
                f"images: {str(root)!r} is not a folder (give a folder, a list of "
                "image paths, a numpy array or an iterator)"
            )
        paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        return PathSource(paths, root)
    if isinstance(images, np.ndarray):
        return ArraySource(images)
    if isinstance(images, (list, tuple)):
        if images and all(isinstance(p, (str, os.PathLike)) for p in images):
            return PathSource([Path(p) for p in images])
        if images and all(isinstance(p, np.ndarray) for p in images):
            return IteratorSource(images)
        raise InputValidationError("images: a list must hold image paths (or numpy arrays)")
    if hasattr(images, "__iter__") or hasattr(images, "__next__"):
        return IteratorSource(images)
    raise InputValidationError(
        "images must be a folder, a list of image paths, a numpy array or an iterator, "
        f"got {type(images).__name__}"
    )


class Loader:
    """Turns raw items into the model's input batch (picklable, so Ray workers use it too).

    Paths are read with :func:`onnxplain.read_image`; paths, Pillow images and uint8 pixel
    arrays go through ``preprocess``; floating-point arrays are taken as model inputs.
    """

    def __init__(self, preprocess: Preprocess | None) -> None:
        self.preprocess = preprocess

    def needs_preprocess(self, item: Any) -> bool:
        return not (isinstance(item, np.ndarray) and np.issubdtype(item.dtype, np.floating))

    def __call__(self, items: list[Any]) -> np.ndarray:
        raw = [read_image(i) if isinstance(i, (str, os.PathLike)) else i for i in items]
        if all(not self.needs_preprocess(i) for i in raw):
            return np.ascontiguousarray(np.stack(raw))
        if any(not self.needs_preprocess(i) for i in raw):
            raise InputValidationError(
                "images: an iterator mixes model-ready float arrays with images or paths"
            )
        if self.preprocess is None:
            raise InputValidationError(
                "images: files or pixel arrays need a preprocess spec (preprocess=onnxplain.Preprocess(...))"
            )
        return self.preprocess.apply(raw)
