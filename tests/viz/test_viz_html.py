"""The HTML report: self-contained, one switchable section per method."""

import base64
import io
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from onnxplain import viz
from onnxplain.data import shapes

CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    batch = shapes.generate(2, seed=31)
    attributions = {"noise": np.random.default_rng(0).standard_normal(batch.images.shape),
                    "mask": batch.masks.astype(float)}
    path = tmp_path_factory.mktemp("html") / "report.html"
    text = viz.html_report(batch.images, attributions, title="Report <test>", settings={"seed": 0},
                           scores={"mask": [1.0, 1.0]}, score_name="on object", captions=["circle", "star"],
                           masks=batch.masks, size=96, path=path)
    return text, path


def test_report_is_self_contained_with_inline_png_images(report):
    text, path = report
    assert path.read_text(encoding="utf-8") == text
    assert not re.search(r"""(src|href)=["']?(https?:|//|file:)""", text)
    uris = re.findall(r'src="data:image/png;base64,([^"]+)"', text)
    assert len(uris) == 2 + 2 * 2  # inputs + two methods × two images
    with Image.open(io.BytesIO(base64.b64decode(uris[0]))) as img:
        assert img.size == (96, 96)


def test_report_has_a_switch_settings_scores_and_escaped_text(report):
    text, _ = report
    assert text.count('<button data-method="') == 2 and 'class="method active" data-method="noise"' in text
    assert "Report &lt;test&gt;" in text and "<test>" not in text
    assert "on object 1.000" in text and "seed" in text


@pytest.mark.skipif(not CHROMIUM.exists() or shutil.which(str(CHROMIUM)) is None,
                    reason="headless Chromium is not installed at /usr/bin/chromium")
def test_report_loads_in_headless_chromium(report):
    _, path = report
    out = subprocess.run([str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom",
                          path.as_uri()], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    assert out.stdout.count("<figure>") == 6 and 'data-method="mask"' in out.stdout
