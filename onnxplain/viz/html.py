"""A self-contained HTML report: overlays per method with a switch between methods,
the settings and the scores. Images are inlined as base64 PNG; no network, no files
beside it."""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from onnxplain.core.errors import InputValidationError
from onnxplain.viz import heatmap
from onnxplain.viz.figure import overlays

if TYPE_CHECKING:
    from onnxplain.preprocess import Preprocess


def png_data_uri(image: np.ndarray) -> str:
    """An (H, W, 3) uint8 array as a ``data:image/png;base64,...`` URI."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.1em; margin-top: 1.5em; }
table { border-collapse: collapse; margin: .5em 0; }
td, th { border: 1px solid #ccc; padding: .25em .6em; text-align: left; font-size: .9em; }
.switch button { margin: 0 .3em .3em 0; padding: .35em .8em; border: 1px solid #888;
  background: #f4f4f4; border-radius: 4px; cursor: pointer; }
.switch button.active { background: #2b6cb0; color: #fff; border-color: #2b6cb0; }
.method { display: none; } .method.active { display: block; }
.row { display: flex; flex-wrap: wrap; gap: .6em; }
figure { margin: 0; text-align: center; font-size: .85em; }
figure img { display: block; image-rendering: auto; }
"""

_SCRIPT = """
const buttons = document.querySelectorAll('.switch button');
function show(name) {
  document.querySelectorAll('.method').forEach(d => d.classList.toggle('active', d.dataset.method === name));
  buttons.forEach(b => b.classList.toggle('active', b.dataset.method === name));
}
buttons.forEach(b => b.addEventListener('click', () => show(b.dataset.method)));
document.addEventListener('keydown', e => {
  const names = Array.from(buttons).map(b => b.dataset.method);
  const current = names.indexOf(document.querySelector('.switch button.active').dataset.method);
  if (e.key === 'ArrowRight') show(names[(current + 1) % names.length]);
  if (e.key === 'ArrowLeft') show(names[(current + names.length - 1) % names.length]);
});
"""


def _table(rows: Sequence[Sequence[Any]], header: Sequence[str] | None = None) -> str:
    out = ["<table>"]
    if header:
        out.append("<tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in header) + "</tr>")
    for row in rows:
        out.append("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def _value(v: Any) -> str:
    return v if isinstance(v, str) else json.dumps(v, default=str)


def html_report(
    images: np.ndarray,
    attributions: Mapping[str, np.ndarray],
    *,
    title: str = "onnxplain report",
    settings: Mapping[str, Any] | None = None,
    scores: Mapping[str, Sequence[float]] | None = None,
    score_name: str = "score",
    captions: Sequence[str] | None = None,
    masks: np.ndarray | None = None,
    layout: heatmap.Layout = "NCHW",
    preprocess: Preprocess | None = None,
    sign: heatmap.Sign | Mapping[str, heatmap.Sign] = "absolute",
    outlier_perc: float = 2.0,
    smooth: float = 0.0,
    cmap: str | None = None,
    alpha: float = 0.5,
    subtract_min: bool | Mapping[str, bool] = False,
    size: int = 192,
    path: str | Path | None = None,
) -> str:
    """The report as an HTML string (also written to ``path`` when given).

    One section per method, switched with buttons (or the arrow keys): the overlays of
    every image with its caption and score. Above them the inputs (with ``masks``
    outlined), the ``settings`` and a table of mean ``scores``.
    """
    if not attributions:
        raise InputValidationError("html_report needs at least one attribution")
    pictures, panels = overlays(images, attributions, layout=layout, preprocess=preprocess, sign=sign,
                                outlier_perc=outlier_perc, smooth=smooth, cmap=cmap, alpha=alpha,
                                subtract_min=subtract_min, size=size)
    n = len(pictures)
    if captions is not None and len(captions) != n:
        raise InputValidationError(f"{len(captions)} captions for {n} images")
    captions = list(captions) if captions is not None else [f"image {i}" for i in range(n)]
    if masks is not None:
        pictures = np.stack([heatmap.draw_outline(p, m, width=max(1, size // 64))
                             for p, m in zip(pictures, np.asarray(masks, dtype=bool))])

    def figures(arrays: np.ndarray, name: str | None) -> str:
        items = []
        for i, arr in enumerate(arrays):
            text = html.escape(captions[i])
            if name is not None and scores and name in scores:
                text += f"<br>{html.escape(score_name)} {scores[name][i]:.3f}"
            items.append(f'<figure><img src="{png_data_uri(arr)}" width="{size}" height="{size}" '
                         f'alt="{html.escape(name or "input")} {i}"><figcaption>{text}</figcaption></figure>')
        return '<div class="row">' + "".join(items) + "</div>"

    names = list(panels)
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    if settings:
        parts += ["<h2>Settings</h2>", _table([(k, _value(v)) for k, v in settings.items()])]
    if scores:
        rows = [(name, f"{np.mean(scores[name]):.3f}") for name in names if name in scores]
        parts += [f"<h2>Scores ({html.escape(score_name)}, mean over images)</h2>",
                  _table(rows, ["method", score_name])]
    parts += ["<h2>Inputs</h2>", figures(pictures, None), "<h2>Explanations</h2>", '<div class="switch">']
    for i, name in enumerate(names):
        active = ' class="active"' if i == 0 else ""
        parts.append(f'<button data-method="{html.escape(name)}"{active}>{html.escape(name)}</button>')
    parts.append("</div>")
    for i, name in enumerate(names):
        active = " active" if i == 0 else ""
        parts.append(f'<div class="method{active}" data-method="{html.escape(name)}">'
                     f"<h3>{html.escape(name)}</h3>{figures(panels[name], name)}</div>")
    parts += [f"<script>{_SCRIPT}</script>", "</body></html>"]
    text = "\n".join(parts)
    if path is not None:
        Path(path).write_text(text, encoding="utf-8")
    return text


__all__ = ["html_report", "png_data_uri"]
