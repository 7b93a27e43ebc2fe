"""Import order for the framework adapters' tests.

TensorFlow and torch's triton load clashing native libraries: importing triton after
tensorflow segfaults (the torch backend imports it through torchvision). Once a test module
here imports tensorflow, every later test would crash; importing triton first avoids it.
"""

import importlib.util

if importlib.util.find_spec("tensorflow") is not None and importlib.util.find_spec("triton") is not None:
    import triton  # noqa: F401
