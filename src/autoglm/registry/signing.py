"""Webhook signatures, the scheme MLflow's registry webhooks use, so either side can be MLflow.

A delivery carries three headers: ``X-MLflow-Delivery-Id`` (unique per delivery, kept across its
retries), ``X-MLflow-Timestamp`` (Unix seconds when this attempt was signed) and
``X-MLflow-Signature``: ``v1,`` + base64 of HMAC-SHA256(secret, ``"{id}.{timestamp}.{body}"``) over
the exact body bytes. Knows nothing about HTTP clients, servers or storage.
"""
from __future__ import annotations

import base64
import hashlib
import hmac

__all__ = ["SIGNATURE_HEADER", "TIMESTAMP_HEADER", "DELIVERY_ID_HEADER", "SIGNATURE_VERSION", "sign",
           "signature_matches"]

SIGNATURE_HEADER = "X-MLflow-Signature"
TIMESTAMP_HEADER = "X-MLflow-Timestamp"
DELIVERY_ID_HEADER = "X-MLflow-Delivery-Id"
SIGNATURE_VERSION = "v1"


def _digest(secret: str, delivery_id: str, timestamp: str, body: bytes) -> bytes:
    signed = b".".join([delivery_id.encode("utf-8"), timestamp.encode("utf-8"), body])
    return hmac.new(secret.encode("utf-8"), signed, hashlib.sha256).digest()


def sign(secret: str, delivery_id: str, timestamp: str, body: bytes) -> str:
    """The ``X-MLflow-Signature`` value for this delivery id, timestamp and body."""
    return f"{SIGNATURE_VERSION},{base64.b64encode(_digest(secret, delivery_id, timestamp, body)).decode('ascii')}"


def signature_matches(secret: str, delivery_id: str, timestamp: str, body: bytes, header: str) -> bool:
    """True when ``header`` holds a valid signature (several, space-separated, are allowed: key rotation)."""
    expected = _digest(secret, delivery_id, timestamp, body)
    for candidate in header.split():
        version, _, value = candidate.partition(",")
        if version != SIGNATURE_VERSION:
            continue
        try:
            given = base64.b64decode(value, validate=True)
        except ValueError:
            continue
        if hmac.compare_digest(given, expected):
            return True
    return False
