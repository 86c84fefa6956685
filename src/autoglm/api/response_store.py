"""Stored responses for ``previous_response_id`` and ``GET /v1/responses/{id}``: an in-process LRU.

Each entry keeps the Response object, the conversation it continues (chat messages, without that
turn's ``instructions``, which OpenAI does not carry over) and the key that created it. Only that key
(or, on an open server, anyone) reads it back; another key gets the same 404 as for an id that never
existed, so ids leak nothing. The store is bounded (``capacity`` entries and about ``max_bytes`` of
JSON, the least recently used dropped first) and
lives in this server process: a restart forgets it and replicas do not share it — a conversation
that must survive either sends its history as ``input`` (or ``store: false`` and does so anyway).

Knows nothing about HTTP, engines or the gateway's state store.
"""
from __future__ import annotations

import json
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

__all__ = ["StoredResponse", "ResponseStore"]


@dataclass
class StoredResponse:
    response: dict[str, Any]
    history: list[dict[str, Any]]  # chat messages up to and including this response's reply
    owner: str | None  # the creating key's id; None on an open server
    size: int = 0  # bytes of JSON, set by the store


class ResponseStore:
    def __init__(self, capacity: int = 2048, max_bytes: int = 256 * 1024 * 1024):
        if capacity < 1 or max_bytes < 1:
            raise ValueError(f"response store bounds must be positive, got {capacity} entries, {max_bytes} bytes")
        self.capacity, self.max_bytes = capacity, max_bytes
        self._items: OrderedDict[str, StoredResponse] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def put(self, entry: StoredResponse) -> None:
        entry.size = len(json.dumps([entry.response, entry.history], ensure_ascii=False).encode("utf-8", "replace"))
        with self._lock:
            old = self._items.pop(entry.response["id"], None)
            self._bytes -= old.size if old is not None else 0
            self._items[entry.response["id"]] = entry
            self._bytes += entry.size
            while len(self._items) > self.capacity or (self._bytes > self.max_bytes and len(self._items) > 1):
                _, dropped = self._items.popitem(last=False)
                self._bytes -= dropped.size

    def get(self, response_id: str, owner: str | None) -> StoredResponse | None:
        with self._lock:
            entry = self._items.get(response_id)
            if entry is None or (entry.owner is not None and entry.owner != owner):
                return None
            self._items.move_to_end(response_id)
            return entry

    def delete(self, response_id: str, owner: str | None) -> bool:
        with self._lock:
            entry = self._items.get(response_id)
            if entry is None or (entry.owner is not None and entry.owner != owner):
                return False
            del self._items[response_id]
            self._bytes -= entry.size
            return True

    def __len__(self) -> int:
        return len(self._items)
