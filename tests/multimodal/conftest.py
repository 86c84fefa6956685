"""The tiny CLIP is built once per session, in the session's AUTOGLM_HOME."""
from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture()
def clip_home(autoglm_home: Path, monkeypatch) -> Path:
    monkeypatch.setenv("AUTOGLM_HOME", str(autoglm_home))
    return autoglm_home
