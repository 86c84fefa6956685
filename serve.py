"""The seed's quick start: ``python serve.py --model glm-4-9b-chat --quantize int4``.

A thin shim over ``autoglm serve``; every flag of that command works here.
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "src"))

from autoglm.cli.main import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["serve", *sys.argv[1:]]))
