"""Batch jobs over a real queue: the library half of OpenAI's Batch API (``/v1/batches``).

* :mod:`~autoglm.batch._base` -- the :class:`Queue` contract (publish, fetch with a lease, ack, touch,
  release) and a registry by URL scheme; :func:`open_queue` picks a backend:
  ``redis://`` Redis Streams (:mod:`~autoglm.batch.redis_streams`; consumer groups, XACK, XAUTOCLAIM),
  ``nats://`` NATS JetStream (:mod:`~autoglm.batch.nats_jetstream`), ``amqp://`` RabbitMQ
  (:mod:`~autoglm.batch.rabbitmq`), ``sqlite`` a table in the state store (:mod:`~autoglm.batch.store_queue`,
  nothing to install);
* :mod:`~autoglm.batch.records` -- files, batches, requests and results on the state store; results are
  keyed by (batch id, custom_id) and written once;
* :mod:`~autoglm.batch.jsonl` -- the input file's lines and the output/error files' lines;
* :mod:`~autoglm.batch.worker` -- :class:`BatchWorker`, which runs queued requests at a bounded share of
  capacity: result first, ack second, so a restart loses and repeats nothing;
* :class:`BatchSettings` -- the deploy file's ``batch:`` section.

Knows nothing about HTTP or engines: :mod:`autoglm.api.routes_batch` gives the worker a function that
runs one request the way the interactive routes do.
"""
from __future__ import annotations

from autoglm.batch._base import QUEUE_SCHEMES, Delivery, Queue, QueueUnavailable, open_queue, register_queue
from autoglm.batch.records import BatchRecord, BatchStore, FileRecord
from autoglm.batch.settings import BatchSettings
from autoglm.batch.worker import BatchWorker, RetryLater

__all__ = ["Queue", "Delivery", "QueueUnavailable", "open_queue", "register_queue", "QUEUE_SCHEMES",
           "BatchStore", "BatchRecord", "FileRecord", "BatchSettings", "BatchWorker", "RetryLater"]
