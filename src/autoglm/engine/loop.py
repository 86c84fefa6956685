"""Run an :class:`~autoglm.engine.core.EngineCore` in a background thread, served to asyncio.

The HTTP event loop never runs the model: requests and aborts go into a thread-safe inbox, one
background thread drains it and calls ``core.step()`` while there is work, and each step's outputs
come back to the event loop in one ``call_soon_threadsafe`` hop, fanned out to per-request
``asyncio.Queue`` s. Closing a request's stream early (client gone) aborts it, which frees its KV
cache at the next step. Subclasses provide :meth:`_load` (model, tokenizer, limits).

The same thread loads the model and runs every step, so one thread (and its OpenMP team) does all
the tensor work: with a second thread that has ever run a parallel torch op (e.g. loading in an
executor), libgomp sees more busy threads than cores, stops spinning between parallel regions and
a 16-sequence decode step on 2 cores gets ~40% slower.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from abc import abstractmethod
from dataclasses import dataclass
from typing import Any, AsyncIterator

from autoglm.engine.base import Engine
from autoglm.engine.core import EngineCore, validate_request
from autoglm.engine.io_struct import EngineRequest, EngineStats, RequestOutput
from autoglm.errors import AutoGLMError, OverloadedError

__all__ = ["LoopEngine", "LoadedModel"]

log = logging.getLogger("autoglm.engine")


@dataclass
class LoadedModel:
    """What a backend's loader hands to the loop."""

    model: Any
    tokenizer: Any
    max_model_len: int
    eos_token_ids: list[int]
    device: Any = "cpu"
    description: str = ""
    info: dict[str, Any] | None = None  # e.g. the precision plan, for /v1/models and logs
    vision: Any = None  # an autoglm.engine.vision.VisionProcessor when the model takes images


class LoopEngine(Engine):
    def __init__(self, model_name: str, *, max_num_seqs: int = 16, max_queue: int = 256,
                 request_timeout: float | None = None, prefill_chunk: int = 0, prefix_cache_tokens: int = 0):
        self.model_name = model_name
        self.prefill_chunk = prefill_chunk
        self.prefix_cache_tokens = prefix_cache_tokens
        self.max_num_seqs = max_num_seqs
        self.max_queue = max_queue
        self.request_timeout = request_timeout
        self.core: EngineCore | None = None
        self.info: dict[str, Any] = {}
        self._inbox: list[tuple[str, Any]] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = False
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queues: dict[str, asyncio.Queue[RequestOutput | BaseException]] = {}
        self._pending = 0  # requests in the inbox not yet seen by the core
        self.error: BaseException | None = None

    @abstractmethod
    def _load(self) -> LoadedModel:
        """Load the model (runs in the engine thread, before its loop)."""

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        """Load the model in the engine thread and start its loop; raises what loading raised."""
        if self._thread is not None:
            return
        self._stop = False
        self._loop = asyncio.get_running_loop()
        started: asyncio.Future[None] = self._loop.create_future()
        self._thread = threading.Thread(
            target=self._thread_main, args=(started,), name=f"autoglm-engine-{self.model_name}", daemon=True
        )
        self._thread.start()
        try:
            await started
        except BaseException:  # load failed, or start() was cancelled: the thread exits after loading
            self._stop = True
            self._wake.set()
            self._thread = None
            raise

    def _thread_main(self, started: asyncio.Future[None]) -> None:
        loop = self._loop
        assert loop is not None

        def settle(exc: BaseException | None) -> None:
            if started.done():  # start() was cancelled meanwhile
                return
            if exc is None:
                started.set_result(None)
            else:
                started.set_exception(exc)

        def report(exc: BaseException | None) -> bool:
            try:
                loop.call_soon_threadsafe(settle, exc)
                return True
            except RuntimeError:  # the event loop is gone: nobody waits for this engine any more
                return False

        try:
            self._setup(self._load())
        except BaseException as exc:  # handed to start(), which re-raises it in the event loop
            report(exc)
            return
        if report(None):
            self._run()

    def start_with(self, loaded: LoadedModel) -> None:
        """Start the loop on an already loaded model (tests and embedding use this)."""
        self._setup(loaded)
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name=f"autoglm-engine-{self.model_name}", daemon=True)
        self._thread.start()

    def _setup(self, loaded: LoadedModel) -> None:
        self.tokenizer = loaded.tokenizer
        self.max_model_len = loaded.max_model_len
        self.eos_token_ids = list(loaded.eos_token_ids)
        self.description = loaded.description
        self.info = dict(loaded.info or {})
        self.vision = loaded.vision
        self.core = EngineCore(
            self._make_runner(loaded),
            loaded.tokenizer,
            max_model_len=loaded.max_model_len,
            max_num_seqs=self.max_num_seqs,
            max_queue=self.max_queue,
            prefill_chunk=self.prefill_chunk,
            eos_token_ids=loaded.eos_token_ids,
            guided_backend=getattr(getattr(self, "settings", None), "guided_backend", "auto"),
            guided_pick_first=getattr(getattr(self, "settings", None), "guided_pick_first", True),
        )

    def _make_runner(self, loaded: LoadedModel) -> Any:
        """The batch runner for ``loaded`` (a transformers model by default; backends override)."""
        from autoglm.engine.runner import BatchRunner, PrefixCache

        prefix = PrefixCache(self.prefix_cache_tokens) if self.prefix_cache_tokens > 0 else None
        return BatchRunner(loaded.model, loaded.device, prefix_cache=prefix)

    async def shutdown(self) -> None:
        self._stop = True
        self._wake.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 10)
            self._thread = None

    @property
    def ready(self) -> bool:
        return self.core is not None and self._thread is not None and self._thread.is_alive() and self.error is None

    # -- requests ----------------------------------------------------------------------------
    def generate(self, request: EngineRequest) -> AsyncIterator[RequestOutput]:
        core = self.core
        if core is None or self._loop is None:
            raise AutoGLMError("the engine is not started")
        validate_request(request, core.max_model_len, core.vocab_size)
        if self._queued_beyond_slots(core) >= self.max_queue:
            raise OverloadedError(
                f"the server is busy: {self.max_queue} requests are already waiting; retry shortly", retry_after=1.0
            )
        if request.deadline is None and self.request_timeout:
            request.deadline = time.monotonic() + self.request_timeout
        queue: asyncio.Queue[RequestOutput | BaseException] = asyncio.Queue()
        self._queues[request.request_id] = queue
        self._submit("add", request)
        return self._stream(request.request_id, queue)

    def _queued_beyond_slots(self, core: EngineCore) -> int:
        """Requests that will really wait: those in the inbox or the scheduler's queue minus the free
        batch slots the next step admits them into (a request about to run is not waiting)."""
        sched = core.scheduler
        free = max(0, sched.max_num_seqs - len(sched.running))
        return max(0, len(sched.waiting) + self._pending - free)

    async def _stream(self, request_id: str, queue: asyncio.Queue) -> AsyncIterator[RequestOutput]:
        finished = False
        try:
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    finished = True
                    raise item
                finished = item.finished
                yield item
                if finished:
                    return
        finally:
            self._queues.pop(request_id, None)
            if not finished:
                self._submit("abort", request_id)

    async def abort(self, request_id: str) -> None:
        self._submit("abort", request_id)

    def stats(self) -> EngineStats:
        if self.core is None:
            return EngineStats()
        s = self.core.stats()
        s.num_waiting += self._pending
        return s

    # -- the background thread ---------------------------------------------------------------
    def _submit(self, kind: str, payload: Any) -> None:
        with self._lock:
            self._inbox.append((kind, payload))
            if kind == "add":
                self._pending += 1
        self._wake.set()

    def _drain(self) -> None:
        with self._lock:
            items, self._inbox = self._inbox, []
            self._pending = 0
        assert self.core is not None
        aborted: list[RequestOutput] = []
        for kind, payload in items:
            if kind == "add":
                try:
                    self.core.add_request(payload)
                except BaseException as exc:  # validated already; anything here is a bug or bad constraint
                    self._deliver_error(payload.request_id, exc)
            else:
                out = self.core.abort(payload)
                if out is not None:
                    aborted.append(out)
        if aborted:
            self._emit(aborted)

    def _run(self) -> None:
        assert self.core is not None
        while not self._stop:
            self._drain()
            if not self.core.has_work():
                self._wake.wait(0.5)
                self._wake.clear()
                continue
            try:
                self.core.step(self._emit)
            except BaseException as exc:  # a model failure must not hang the clients
                log.exception("engine step failed")
                self.error = exc
                self._fail_all(exc)
                return

    def _emit(self, outputs: list[RequestOutput]) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._dispatch, outputs)

    def _dispatch(self, outputs: list[RequestOutput]) -> None:
        for out in outputs:
            queue = self._queues.get(out.request_id)
            if queue is not None:
                queue.put_nowait(out)

    def _deliver_error(self, request_id: str, exc: BaseException) -> None:
        def put() -> None:
            queue = self._queues.get(request_id)
            if queue is not None:
                queue.put_nowait(exc)

        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(put)

    def _fail_all(self, exc: BaseException) -> None:
        for request_id in list(self._queues):
            self._deliver_error(request_id, AutoGLMError(f"the engine failed: {exc}"))
