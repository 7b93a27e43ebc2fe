"""Colour maps as lookup tables in numpy, so heat maps need only Pillow.

Each map is 33 colours sampled evenly from matplotlib's map of the same name and
interpolated linearly to 256 entries. Names not listed here are taken from matplotlib
when it is installed.

>>> from onnxplain.viz.colormaps import lookup_table
>>> lookup_table("viridis").shape
(256, 3)
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from onnxplain.core.errors import InputValidationError

_ANCHORS: dict[str, str] = {
    "viridis": (
        "440154 470d60 48186a 482374 472d7b 453781 424086 3e4989 3b528b 375b8d 33638d 2f6b8e "
        "2c728e 297a8e 26828e 23898e 21918c 1f988b 1fa088 22a785 28ae80 32b67a 3fbc73 4ec36b "
        "5ec962 70cf57 84d44b 98d83e addc30 c2df23 d8e219 ece51b fde725"
    ),
    "inferno": (
        "000004 040312 0b0724 150b37 210c4a 2f0a5b 3d0965 4a0c6b 57106e 64156e 71196e 7d1e6d "
        "8a226a 972766 a32c61 b0315b bc3754 c73e4c d24644 db503b e45a31 eb6628 f1731d f68013 "
        "f98e09 fb9d07 fcac11 fbbc21 f9cb35 f5db4c f2ea69 f3f68a fcffa4"
    ),
    "magma": (
        "000004 030312 0a0822 130d34 1d1147 29115a 36106b 440f76 51127c 5d177f 6a1c81 762181 "
        "832681 902a81 9c2e7f aa337d b73779 c43c75 d0416f dc4869 e75263 ef5d5e f56b5c f9795d "
        "fc8961 fd9869 fea772 feb67c fec488 fed395 fde2a3 fcf0b2 fcfdbf"
    ),
    "turbo": (
        "30123b 392a73 4040a2 4456c7 466be3 4680f6 4294ff 37a8fa 28bceb 1ccdd8 18ddc2 1fe9af "
        "32f298 4ef97d 6dfe62 8bff4b a4fc3c b9f635 cdec34 dfdf37 eecf3a f8be39 fdac34 fe962b "
        "fb7e21 f46617 eb500e df3f08 d02f05 be2102 a91601 920b01 7a0403"
    ),
    "jet": (
        "000080 0000a4 0000c8 0000ed 0000ff 0020ff 0040ff 0060ff 0080ff 00a0ff 00c0ff 00e0fb "
        "16ffe1 30ffc7 49ffad 63ff94 7dff7a 97ff60 b1ff46 caff2c e4ff13 feed00 ffd000 ffb200 "
        "ff9400 ff7700 ff5900 ff3b00 ff1e00 e80000 c40000 9f0000 800000"
    ),
    "hot": (
        "0b0000 200000 350000 4a0000 5f0000 740000 890000 9e0000 b30000 c80000 dd0000 f20000 "
        "ff0800 ff1d00 ff3200 ff4700 ff5c00 ff7100 ff8600 ff9b00 ffb000 ffc500 ffda00 ffef00 "
        "ffff07 ffff26 ffff46 ffff65 ffff85 ffffa4 ffffc4 ffffe3 ffffff"
    ),
    "gray": (
        "000000 080808 101010 181818 202020 282828 303030 383838 404040 484848 505050 585858 "
        "606060 686868 707070 787878 808080 888888 909090 989898 a0a0a0 a8a8a8 b0b0b0 b8b8b8 "
        "c0c0c0 c8c8c8 d0d0d0 d8d8d8 e0e0e0 e8e8e8 f0f0f0 f8f8f8 ffffff"
    ),
    "Reds": (
        "fff5f0 fff0e8 feeae1 fee5d9 fee0d2 fdd7c6 fdcdb9 fcc4ad fcbba1 fcb095 fca689 fc9c7d "
        "fc9272 fc8767 fb7d5d fb7353 fb694a f85d42 f5523a f24633 ee3a2c e53228 dc2924 d32020 "
        "ca181d c1161b b71319 ad1117 a30f15 940b13 840711 75030f 67000d"
    ),
    "Blues": (
        "f7fbff f1f7fd eaf3fb e4eff9 deebf7 d8e7f5 d2e3f3 ccdff1 c6dbef bcd7eb b2d2e8 a8cee4 "
        "9dcae1 91c3de 84bcdb 77b5d9 6aaed6 60a7d2 56a0ce 4b98ca 4191c6 3989c1 3181bd 2979b9 "
        "2070b4 1a68ae 1460a8 0e58a2 08509b 08488e 084082 083776 08306b"
    ),
    "Greens": (
        "f7fcf5 f2faf0 eef8ea e9f7e5 e5f5e0 ddf2d8 d6efd0 ceecc8 c7e9c0 bde5b6 b4e1ad aadda4 "
        "a0d99b 95d391 8ace88 7fc97f 73c476 66bd6f 5ab769 4db163 40aa5d 39a257 319a50 2a924a "
        "228a44 19833e 117b38 087432 006c2c 006227 005723 004d1f 00441b"
    ),
    "bwr": (
        "0000ff 1010ff 2020ff 3030ff 4040ff 5050ff 6060ff 7070ff 8080ff 9090ff a0a0ff b0b0ff "
        "c0c0ff d0d0ff e0e0ff f0f0ff fffefe ffeeee ffdede ffcece ffbebe ffaeae ff9e9e ff8e8e "
        "ff7e7e ff6e6e ff5e5e ff4e4e ff3e3e ff2e2e ff1e1e ff0e0e ff0000"
    ),
    "RdBu_r": (
        "053061 0e4179 175290 1f63a8 2a71b2 3480b9 3f8ec0 529dc8 6bacd1 84bcd9 9bc9e0 aed3e6 "
        "c2ddec d4e6f1 e0ecf3 ecf2f5 f7f6f6 f9eee7 fbe5d8 fddcc9 fbccb4 f8bb9e f5aa89 ee9677 "
        "e48066 db6b55 d05548 c53e3d ba2832 ab162a 930e26 7c0722 67001f"
    ),
    "coolwarm": (
        "3b4cc0 445acc 4e68d8 5875e1 6282ea 6c8ff1 779af7 82a6fb 8db0fe 98b9ff a3c2fe aec9fc "
        "b9d0f9 c3d5f4 ccd9ed d5dbe5 dddcdc e5d8d1 ecd3c5 f1ccb8 f5c4ac f7ba9f f7b093 f6a586 "
        "f4987a f08b6e eb7d62 e46e56 dd5f4b d44e41 ca3b37 be242e b40426"
    ),
}

#: Colour maps available without matplotlib.
COLORMAPS: tuple[str, ...] = tuple(_ANCHORS)
#: Maps whose middle is neutral: for signed attributions (``sign="all"``).
DIVERGING: frozenset[str] = frozenset({"bwr", "RdBu_r", "coolwarm"})
_BY_LOWER = {name.lower(): name for name in _ANCHORS}


def _from_hex(text: str) -> np.ndarray:
    return np.array([[int(h[i:i + 2], 16) for i in (0, 2, 4)] for h in text.split()], dtype=np.float64)


@lru_cache(maxsize=64)
def lookup_table(name: str) -> np.ndarray:
    """The colour map ``name`` as a (256, 3) uint8 table (read-only).

    Our own tables first (case-insensitive), then matplotlib's, if installed.
    """
    if not isinstance(name, str):
        raise InputValidationError(f"cmap must be a colour map name, got {name!r}")
    key = _BY_LOWER.get(name.lower())
    if key is not None:
        anchors = _from_hex(_ANCHORS[key])
        pos = np.linspace(0, 1, len(anchors))
        t = np.linspace(0, 1, 256)
        table = np.stack([np.interp(t, pos, anchors[:, c]) for c in range(3)], axis=1)
    else:
        try:
            import matplotlib
        except ImportError:
            raise InputValidationError(
                f"unknown colour map {name!r}; available without matplotlib: {', '.join(COLORMAPS)}"
            ) from None
        try:
            cmap = matplotlib.colormaps[name]
        except KeyError:
            raise InputValidationError(
                f"unknown colour map {name!r}; use one of {', '.join(COLORMAPS)} or a matplotlib name"
            ) from None
        table = cmap(np.linspace(0, 1, 256))[:, :3] * 255
    out = np.clip(np.rint(table), 0, 255).astype(np.uint8)
    out.setflags(write=False)
    return out


def apply(values: np.ndarray, name: str, vmin: float = 0.0, vmax: float = 1.0) -> np.ndarray:
    """Map ``values`` (any shape) to RGB uint8 (shape + (3,)); ``vmin``/``vmax`` are the
    ends of the colour map, values beyond are clipped."""
    if not vmax > vmin:
        raise InputValidationError(f"vmax ({vmax}) must be greater than vmin ({vmin})")
    v = np.nan_to_num(np.asarray(values, dtype=np.float64), nan=vmin)
    idx = np.rint(np.clip((v - vmin) / (vmax - vmin), 0, 1) * 255).astype(np.intp)
    return lookup_table(name)[idx]


__all__ = ["COLORMAPS", "DIVERGING", "apply", "lookup_table"]
