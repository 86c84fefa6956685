"""``python -m autoglm_risk`` is ``autoglm-risk``."""
import sys

from autoglm_risk.cli import main

sys.exit(main())
