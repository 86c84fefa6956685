"""The ``batch:`` section of a deploy file and ``autoglm serve --batch-*`` become one BatchSettings."""
from __future__ import annotations

import pytest

from autoglm.batch import BatchSettings
from autoglm.cli.main import build_parser
from autoglm.cli.serve import settings_from_args
from autoglm.deploy.loader import parse_deploy_text
from autoglm.deploy.runner import server_settings
from autoglm.errors import ConfigError

FILE = """\
models:
  - name: demo
    source: autoglm-demo
batch:
  queue: amqp://guest:secret@127.0.0.1:5672/
  max_concurrency: 2
  max_waiting: 3
  lease_seconds: 30
"""


def test_the_deploy_file_section_reaches_the_server_settings():
    s = server_settings(parse_deploy_text(FILE)).batch
    assert (s.queue, s.max_concurrency, s.max_waiting, s.lease_seconds) == (
        "amqp://guest:secret@127.0.0.1:5672/", 2, 3, 30.0)
    assert "secret" not in repr(s)


def test_a_bad_queue_url_points_at_its_line():
    with pytest.raises(ConfigError) as exc:
        parse_deploy_text(FILE.replace("amqp://guest:secret@127.0.0.1:5672/", "kafka://127.0.0.1:9092"), "d.yaml")
    assert "d.yaml:5" in str(exc.value) and "batch.queue" in str(exc.value)


def test_serve_flags():
    args = build_parser().parse_args(["serve", "--batch-queue", "nats://127.0.0.1:4222", "--batch-max-concurrency",
                                      "3", "--batch-lease", "5", "--batch-queue-name", "q1"])
    s = settings_from_args(args)[1].batch
    assert (s.queue, s.max_concurrency, s.lease_seconds, s.queue_name) == ("nats://127.0.0.1:4222", 3, 5.0, "q1")
    default = settings_from_args(build_parser().parse_args(["serve"]))[1].batch
    assert default.queue_url(None) == "sqlite" and default.queue_url("redis://h:6379/0") == "redis://h:6379/0"


def test_bounds_are_checked():
    with pytest.raises(ConfigError, match="max_concurrency"):
        BatchSettings(max_concurrency=0)
