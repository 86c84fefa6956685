"""``python -m autoglm`` is the ``autoglm`` CLI."""
from __future__ import annotations

import sys

from autoglm.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
