"""``python -m onnxplain.cli``: the same as the ``onnxplain`` command."""

import sys

from onnxplain.cli import main

if __name__ == "__main__":
    sys.exit(main())
