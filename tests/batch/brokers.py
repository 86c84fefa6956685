"""The brokers the batch tests run against, and a queue name of their own per test.

Redis 6379, NATS with JetStream 4222 and RabbitMQ 5672 (guest/guest) on this machine; one that does not
answer makes its tests skip with the reason. ``sqlite`` is the state-store queue (always there).
"""
from __future__ import annotations

import secrets
import socket

import pytest

BROKERS = {
    "redis": ("redis://127.0.0.1:6379/0", 6379),
    "nats": ("nats://127.0.0.1:4222", 4222),
    "amqp": ("amqp://guest:guest@127.0.0.1:5672/", 5672),
}


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def broker_url(kind: str) -> str:
    """The URL of ``kind`` (``redis``, ``nats``, ``amqp``), or skip the test saying what is missing."""
    url, port = BROKERS[kind]
    if not port_open(port):
        pytest.skip(f"{kind} is not reachable on 127.0.0.1:{port}; start it to run the {kind} queue tests")
    module = {"redis": "redis", "nats": "nats", "amqp": "aio_pika"}[kind]
    try:
        __import__(module)
    except ImportError:
        pytest.skip(f"the {module} client is not installed: pip install 'autoglm[batch]'")
    return url


def unique_name(tag: str) -> str:
    return f"autoglm-test-{tag}-{secrets.token_hex(4)}"
