"""Feedback: capture completed exchanges, take ratings on them, turn both into training data.

* :mod:`~autoglm.feedback.capture`: :class:`CaptureSettings` (off by default) and the writer
  (:class:`CaptureService`) that stores exchanges off the request path, redacted and bounded;
* :mod:`~autoglm.feedback.store`: the ``fb_exchanges`` / ``fb_feedback`` tables on the gateway's
  state store (SQLite or PostgreSQL), with their own migrations;
* :mod:`~autoglm.feedback.implicit`: regenerations and follow-ups as implicit signals;
* :mod:`~autoglm.feedback.export`: SFT / DPO / KTO JSONL for the causal-LM trainer.

``POST /v1/feedback`` and ``/admin/feedback`` are in :mod:`autoglm.api.routes_feedback`.
"""
from __future__ import annotations

from autoglm.feedback.capture import CaptureService, CaptureSettings
from autoglm.feedback.export import FORMATS, ExportOptions, export_rows, write_jsonl
from autoglm.feedback.store import Exchange, Feedback, FeedbackStore

__all__ = ["CaptureService", "CaptureSettings", "FeedbackStore", "Exchange", "Feedback", "ExportOptions",
           "export_rows", "write_jsonl", "FORMATS"]
