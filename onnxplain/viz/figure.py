"""Side-by-side figures: several methods × several images, with titles.

:func:`compare` is the one-call figure (inputs in the first column, one column per
method, one row per image); :func:`image_grid` lays out any cells. Both return a Pillow
image (``.save("grid.png")``). With ``engine="auto"`` matplotlib draws the figure when it
is installed and Pillow otherwise; both give a PNG with the same layout.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Literal

import numpy as np

from onnxplain.core.errors import InputValidationError
from onnxplain.viz import heatmap

if TYPE_CHECKING:
    from PIL import Image

    from onnxplain.preprocess import Preprocess

Engine = Literal["auto", "pillow", "matplotlib"]

_BACKGROUND = (255, 255, 255)
_INK = (30, 30, 30)


def _matplotlib_available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _engine(engine: str) -> str:
    if engine == "auto":
        return "matplotlib" if _matplotlib_available() else "pillow"
    if engine not in ("pillow", "matplotlib"):
        raise InputValidationError(f"engine must be 'auto', 'pillow' or 'matplotlib', got {engine!r}")
    if engine == "matplotlib" and not _matplotlib_available():
        raise InputValidationError("engine='matplotlib' needs matplotlib: pip install 'onnxplain[viz]'")
    return engine


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # Pillow without FreeType: the bitmap font
        return ImageFont.load_default()


def _text_size(draw, text: str, font) -> tuple[int, int]:
    if not text:
        return 0, 0
    left, top, right, bottom = draw.multiline_textbbox((0, 0), text, font=font, spacing=3)
    return right - left, bottom - top


def _pillow_grid(cells, col_titles, row_titles, cell_texts, title, cell_size, font_size) -> Image.Image:
    from PIL import Image, ImageDraw

    rows, cols = len(cells), len(cells[0])
    font, small, big = _font(font_size), _font(max(8, font_size - 2)), _font(font_size + 4)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    pad = max(4, cell_size // 24)
    left = max([_text_size(probe, t, font)[0] for t in row_titles or []] + [0])
    left = left + 2 * pad if left else pad
    top_h = max([_text_size(probe, t, font)[1] for t in col_titles or []] + [0])
    top_h = top_h + 2 * pad if top_h else pad
    title_h = _text_size(probe, title, big)[1] + 2 * pad if title else 0
    width = left + cols * (cell_size + pad)
    if title:
        width = max(width, _text_size(probe, title, big)[0] + 2 * pad)
    height = title_h + top_h + rows * (cell_size + pad)
    canvas = Image.new("RGB", (width, height), _BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    if title:
        tw, _ = _text_size(draw, title, big)
        draw.multiline_text(((width - tw) // 2, pad), title, fill=_INK, font=big, spacing=3, align="center")
    y0 = title_h + top_h
    for c, text in enumerate(col_titles or []):
        tw, th = _text_size(draw, text, font)
        x = left + c * (cell_size + pad) + (cell_size - tw) // 2
        draw.multiline_text((x, y0 - th - pad), text, fill=_INK, font=font, spacing=3, align="center")
    for r in range(rows):
        y = y0 + r * (cell_size + pad)
        if row_titles:
            tw, th = _text_size(draw, row_titles[r], font)
            draw.multiline_text((left - pad - tw, y + (cell_size - th) // 2), row_titles[r], fill=_INK,
                                font=font, spacing=3, align="right")
        for c in range(cols):
            x = left + c * (cell_size + pad)
            cell = cells[r][c]
            if cell is not None:
                canvas.paste(Image.fromarray(cell), (x, y))
            text = cell_texts[r][c] if cell_texts else None
            if text:
                tw, th = _text_size(draw, text, small)
                draw.rectangle((x, y + cell_size - th - 6, x + tw + 6, y + cell_size), fill=(0, 0, 0))
                draw.text((x + 3, y + cell_size - th - 4), text, fill=(255, 255, 255), font=small)
    return canvas


def _matplotlib_grid(cells, col_titles, row_titles, cell_texts, title, cell_size, font_size) -> Image.Image:
    from matplotlib.figure import Figure
    from PIL import Image

    rows, cols = len(cells), len(cells[0])
    dpi = 100
    fs = font_size * 72 / dpi  # points, so that text is font_size pixels as with Pillow
    line = fs * 1.35 / 72  # inches per line of text
    inch = cell_size / dpi
    gap = 0.04 * inch

    def lines(texts) -> int:
        return max([len(str(t).splitlines()) for t in texts or []] + [0])

    chars = max([len(part) for t in row_titles or [] for part in str(t).splitlines()] + [0])
    left = 0.62 * fs / 72 * chars + 0.2 if row_titles else 0.1
    top = lines(col_titles) * line + 0.12 + (lines([title]) * line * 1.3 + 0.1 if title else 0)
    width = left + cols * inch + (cols - 1) * gap + 0.1
    if title:  # room for the title's longest line
        longest = max(len(part) for part in title.splitlines())
        extra = 0.6 * fs * 1.15 / 72 * longest + 0.3 - width
        if extra > 0:
            width += extra
            left += extra / 2
    height = top + rows * inch + (rows - 1) * gap + 0.1
    fig = Figure(figsize=(width, height), dpi=dpi)
    right = width - left - cols * inch - (cols - 1) * gap
    gs = fig.add_gridspec(rows, cols, left=left / width, right=1 - right / width, top=1 - top / height,
                          bottom=0.1 / height, wspace=gap / inch, hspace=gap / inch)
    for r in range(rows):
        for c in range(cols):
            ax = fig.add_subplot(gs[r, c])
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if cells[r][c] is not None:
                ax.imshow(cells[r][c], interpolation="nearest")
            if r == 0 and col_titles:
                ax.set_title(col_titles[c], fontsize=fs)
            if c == 0 and row_titles:
                ax.set_ylabel(row_titles[r], fontsize=fs, rotation=0, ha="right", va="center", labelpad=6)
            text = cell_texts[r][c] if cell_texts else None
            if text:
                ax.text(0.02, 0.02, text, transform=ax.transAxes, fontsize=fs * 0.85, color="white",
                        va="bottom", ha="left", bbox={"facecolor": "black", "pad": 1.5, "linewidth": 0})
    if title:
        fig.suptitle(title, fontsize=fs * 1.15, y=1 - 0.1 / height, va="top")
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig.patch.set_facecolor("white")
    canvas = FigureCanvasAgg(fig)
    canvas.draw()  # straight to pixels: no PNG round trip
    return Image.fromarray(np.asarray(canvas.buffer_rgba())[..., :3].copy())


def image_grid(
    cells: Sequence[Sequence[np.ndarray | None]],
    col_titles: Sequence[str] | None = None,
    row_titles: Sequence[str] | None = None,
    cell_texts: Sequence[Sequence[str | None]] | None = None,
    title: str | None = None,
    cell_size: int = 128,
    font_size: int = 13,
    engine: Engine = "auto",
) -> Image.Image:
    """Lay out ``cells`` (rows × columns of (H, W, 3) uint8 arrays or None for blank) in
    a grid of ``cell_size`` pixels, with titles above the columns, left of the rows, and
    an optional short text in each cell's corner. Titles may have several lines."""
    rows_ok = isinstance(cells, (Sequence, np.ndarray)) and all(
        isinstance(row, Sequence) or (isinstance(row, np.ndarray) and row.ndim == 4) for row in cells)
    if not rows_ok:
        raise InputValidationError(
            "image_grid takes rows of cells, each a list of (H, W, 3) uint8 arrays (or None); for "
            "one batch of pictures (N, H, W, 3) pass [list(batch)]"
        )
    if len(cells) == 0 or len(cells[0]) == 0:
        raise InputValidationError("image_grid needs at least one row and one column of cells")
    cols = len(cells[0])
    if any(len(row) != cols for row in cells):
        raise InputValidationError("every row of cells must have the same number of columns")
    if col_titles is not None and len(col_titles) != cols:
        raise InputValidationError(f"{len(col_titles)} column titles for {cols} columns")
    if row_titles is not None and len(row_titles) != len(cells):
        raise InputValidationError(f"{len(row_titles)} row titles for {len(cells)} rows")
    if cell_size < 16:
        raise InputValidationError(f"cell_size must be at least 16 pixels, got {cell_size}")
    prepared = []
    for row in cells:
        out = []
        for cell in row:
            if cell is None:
                out.append(None)
                continue
            arr = np.asarray(cell)
            if arr.ndim != 3 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
                raise InputValidationError(
                    f"cells must be (H, W, 3) uint8 arrays, got {arr.shape} {arr.dtype}"
                )
            out.append(heatmap.resize_rgb(arr[None], (cell_size, cell_size))[0])
        prepared.append(out)
    draw = _matplotlib_grid if _engine(engine) == "matplotlib" else _pillow_grid
    return draw(prepared, col_titles, row_titles, cell_texts, title, cell_size, font_size)


def overlays(
    images: np.ndarray,
    attributions: Mapping[str, np.ndarray],
    *,
    layout: heatmap.Layout = "NCHW",
    preprocess: Preprocess | None = None,
    sign: heatmap.Sign | Mapping[str, heatmap.Sign] = "absolute",
    outlier_perc: float = 2.0,
    smooth: float = 0.0,
    cmap: str | None = None,
    alpha: float = 0.5,
    grayscale: bool = False,
    channel_reduce: heatmap.ChannelReduce = "sum",
    subtract_min: bool | Mapping[str, bool] = False,
    size: int | None = None,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The display images (N, S, S, 3) and, per method, its overlays (N, S, S, 3) uint8.

    ``images``: the model inputs; ``attributions``: name → (N, C, H, W) / (N, H, W, C) /
    (N, H, W) arrays; ``sign`` and ``subtract_min`` one for all or one per name. ``size``:
    the side S (default: the images' own height and width).
    """
    if not isinstance(attributions, Mapping):
        raise InputValidationError(
            f"attributions must map names to attributions, e.g. {{'GradCAM': maps}}, got "
            f"{type(attributions).__name__}"
        )
    pictures = heatmap.image_to_uint8(images, layout, preprocess)
    if size is not None:
        pictures = heatmap.resize_rgb(pictures, (size, size))
    out = {}
    for name, attr in attributions.items():
        s = sign.get(name, "absolute") if isinstance(sign, Mapping) else sign
        attr = np.asarray(attr)
        if len(attr) != len(pictures):
            raise InputValidationError(f"{name}: {len(attr)} attributions for {len(pictures)} images")
        shift = subtract_min.get(name, False) if isinstance(subtract_min, Mapping) else subtract_min
        maps = heatmap.attribution_map(attr, layout, s, outlier_perc, smooth, channel_reduce, shift)
        out[name] = heatmap.overlay(pictures, maps, cmap, s, alpha, grayscale)
    return pictures, out


def compare(
    images: np.ndarray,
    attributions: Mapping[str, np.ndarray],
    *,
    layout: heatmap.Layout = "NCHW",
    preprocess: Preprocess | None = None,
    sign: heatmap.Sign | Mapping[str, heatmap.Sign] = "absolute",
    outlier_perc: float = 2.0,
    smooth: float = 0.0,
    cmap: str | None = None,
    alpha: float = 0.5,
    grayscale: bool = False,
    channel_reduce: heatmap.ChannelReduce = "sum",
    subtract_min: bool | Mapping[str, bool] = False,
    row_titles: Sequence[str] | None = None,
    scores: Mapping[str, Sequence[float]] | None = None,
    score_name: str = "score",
    masks: np.ndarray | None = None,
    title: str | None = None,
    cell_size: int = 128,
    max_columns: int | None = None,
    engine: Engine = "auto",
) -> Image.Image:
    """A grid: the inputs in the first column, then one column of overlays per method.

    ``max_columns``: at most this many methods side by side; more are laid out in bands
    one under the other, each starting with the inputs again.

    ``scores``: name → one number per image, printed in each cell and averaged in the
    column title (``score_name``). ``masks`` (N, H, W) bool: outlines drawn on the inputs
    (e.g. the object a localisation score refers to). Heat-map options as in
    :func:`onnxplain.viz.heatmap.attribution_map` and :func:`~onnxplain.viz.heatmap.overlay`.
    """
    if not attributions:
        raise InputValidationError("compare needs at least one attribution")
    pictures, panels = overlays(
        images, attributions, layout=layout, preprocess=preprocess, sign=sign, outlier_perc=outlier_perc,
        smooth=smooth, cmap=cmap, alpha=alpha, grayscale=grayscale, channel_reduce=channel_reduce,
        subtract_min=subtract_min, size=cell_size,
    )
    n = len(pictures)
    if masks is not None:
        masks = np.asarray(masks, dtype=bool)
        if masks.shape[0] != n or masks.ndim != 3:
            raise InputValidationError(f"masks must be (N, H, W) with N = {n}, got {masks.shape}")
        width = max(1, cell_size // 64)
        pictures = np.stack([heatmap.draw_outline(p, m, width=width) for p, m in zip(pictures, masks)])
    if row_titles is not None and len(row_titles) != n:
        raise InputValidationError(f"{len(row_titles)} row titles for {n} images")
    if max_columns is not None and max_columns < 1:
        raise InputValidationError(f"max_columns must be at least 1, got {max_columns}")
    names = list(panels)
    step = max_columns or len(names)
    bands = []
    for start in range(0, len(names), step):
        band = names[start:start + step]
        col_titles = ["input"]
        for name in band:
            if scores and name in scores:
                col_titles.append(f"{name}\n{score_name} {np.mean(scores[name]):.2f}")
            else:
                col_titles.append(name)
        cells = [[pictures[i]] + [panels[name][i] for name in band] for i in range(n)]
        texts = None
        if scores:
            texts = [[None] + [f"{scores[name][i]:.2f}" if name in scores else None for name in band]
                     for i in range(n)]
        bands.append(image_grid(cells, col_titles, row_titles, texts, title if start == 0 else None,
                                cell_size, engine=engine))
    return bands[0] if len(bands) == 1 else _stack(bands, gap=cell_size // 6)


def _stack(images: list[Image.Image], gap: int) -> Image.Image:
    """Images one under the other, left-aligned, on white."""
    from PIL import Image

    width = max(img.width for img in images)
    height = sum(img.height for img in images) + gap * (len(images) - 1)
    canvas = Image.new("RGB", (width, height), _BACKGROUND)
    y = 0
    for img in images:
        canvas.paste(img, (0, y))
        y += img.height + gap
    return canvas


__all__ = ["compare", "image_grid", "overlays"]
