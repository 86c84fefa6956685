"""``autoglm loop run DEPLOY.yaml --once`` reads improve: from a deploy file; mistakes are one line with file:line."""
from __future__ import annotations

import pytest

pytest.importorskip("lightgbm")

from autoglm.cli.main import main  # noqa: E402
from tests.loop.test_controller import PIPELINE, _table  # noqa: E402

DEPLOY = """\
models:
  - name: demo
    source: autoglm-demo
gateway:
  state_store: {store}
improve:
  pipeline: pipeline.yaml
  triggers:
    - type: schedule
      every: 3600
  gate:
    metric: auc
    holdout: holdout.csv
"""


def test_loop_run_once_from_a_deploy_file(tmp_path, fresh_home, capsys):
    (tmp_path / "pipeline.yaml").write_text(PIPELINE)
    (tmp_path / "train.csv").write_text(_table(400, 3))
    (tmp_path / "holdout.csv").write_text(_table(200, 4))
    deploy = tmp_path / "deploy.yaml"
    deploy.write_text(DEPLOY.format(store=tmp_path / "state.db"))
    assert main(["loop", "run", str(deploy), "--once"]) == 0
    assert "[loop loop-credit] promoted v1: no champion yet" in capsys.readouterr().out
    assert main(["loop", "run", str(deploy), "--once"]) == 0  # the schedule has not come round again
    assert "[loop loop-credit] quiet: no trigger fired" in capsys.readouterr().out


def test_a_typo_in_improve_is_file_line_key(tmp_path, fresh_home, capsys):
    deploy = tmp_path / "deploy.yaml"
    deploy.write_text(DEPLOY.format(store=tmp_path / "state.db").replace("holdout.csv\n", "holdout.csv\n    margn: 0.1\n"))
    assert main(["loop", "run", str(deploy), "--once"]) == 2
    err = capsys.readouterr().err
    assert "deploy.yaml:14 improve.gate.margn" in err and "'margin'" in err and err.count("\n") == 1


def test_no_improve_section(tmp_path, fresh_home, capsys):
    deploy = tmp_path / "deploy.yaml"
    deploy.write_text("models:\n  - name: demo\n")
    assert main(["loop", "run", str(deploy), "--once"]) == 2
    assert "has no improve: section" in capsys.readouterr().err
