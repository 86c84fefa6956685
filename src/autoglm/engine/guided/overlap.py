"""The guided masks of the next decode step, computed on a worker thread while the forward runs.

The mask a guided sequence needs at step t+1 depends only on the tokens it accepted up to step t,
so the engine calls :meth:`GuidedMasks.start` right after a step has advanced the constraints, and
:meth:`GuidedMasks.apply` when the next step's logits are there; ``apply`` waits only for what the
forward did not hide. llguidance computes its masks in Rust with the GIL released (its batched
``fill_next_token_bitmask_par``), so the worker really runs beside the forward. The builtin automaton
is pure Python (it holds the GIL) and would only slow the forward down: its masks are computed in
``apply``, as before (``GuidedBackend.overlap`` says which is which).

Correctness does not depend on timing: a mask computed ahead is used only if its constraint is
still in the state it was computed for (the constraint's ``version`` and the remaining budget are the
key). A sequence that joined the batch since (a prefill), was rolled back or advanced again, or
whose mask was not started gets its mask computed in ``apply``; a finished or cancelled sequence's
mask is simply never asked for. ``apply`` always waits for the worker first, so a constraint is never
used by two threads at once as long as the caller leaves the constraints it passed to ``start``
alone until the next ``apply`` (the engine does: it advances them only after sampling).

Applying a mask (the other half of the cost at 151,552 tokens): the worker turns llguidance's int32
bitmask into an additive float32 row (0 where allowed, -inf elsewhere) by one table lookup into a
reused buffer, and ``apply`` adds it to the logits in place (one vectorised ``add_`` per guided row,
no [B, V] copy; a boolean ``masked_fill_`` of the same row is ~50x slower on CPU). That is the same as the sampler's own mask step, which comes after the
penalties and ``logit_bias``: a penalty or a finite bias leaves ``-inf`` where it is (and ``x + 0`` is ``x``), so the sampled
tokens are the same. Rows that asked for logprobs keep the sampler's ``allowed_mask`` instead
(logprobs are those of the raw logits), as do rows whose logits are narrower than the vocabulary.

Knows nothing about the scheduler, the model or HTTP; works on constraints, numpy and torch.
"""
from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from autoglm.engine.guided.backends import GuidedConstraint, _INSTANCES

__all__ = ["GuidedMasks", "mask_biases"]

NEG_INF = float("-inf")


def _key(c: GuidedConstraint, remaining: int) -> tuple[int, int, int]:
    return id(c), c.version, remaining


def mask_biases(constraints: list[GuidedConstraint], remaining: list[int],
                out: np.ndarray | None = None) -> list[np.ndarray]:
    """Additive float32 mask rows [V] (0 where allowed, -inf elsewhere) for every constraint, grouped by
    backend, one batched call each; llguidance's rows are written into ``out`` [n, V'] when given (a
    reused buffer)."""
    rows: list[np.ndarray | None] = [None] * len(constraints)
    groups: dict[str, list[int]] = {}
    for i, c in enumerate(constraints):
        groups.setdefault(c.backend, []).append(i)
    for name, idx in groups.items():
        masks = _INSTANCES[name].mask_bias([constraints[i] for i in idx], [remaining[i] for i in idx],
                                            out if len(groups) == 1 else None)
        for i, m in zip(idx, masks):
            rows[i] = m
    return rows  # type: ignore[return-value]


def _block(rows: list[np.ndarray]) -> np.ndarray | None:
    """``rows`` as one [n, V] array without copying when they are evenly spaced rows of one buffer
    (what the worker writes), else None."""
    first = rows[0]
    owner, size, item = first.base, len(first), first.itemsize
    if owner is None or first.strides != (item,) or any(
            r.base is not owner or len(r) != size or r.strides != (item,) for r in rows):
        return None
    if len(rows) == 1:
        return first.reshape(1, size)
    stride = rows[1].ctypes.data - first.ctypes.data
    if stride < size * item or any(r.ctypes.data != first.ctypes.data + k * stride for k, r in enumerate(rows)):
        return None
    return np.lib.stride_tricks.as_strided(first, shape=(len(rows), size), strides=(stride, item))


class GuidedMasks:
    """Masks of a decode step, started ahead on one worker thread. One per engine; not thread-safe
    (the engine thread calls every method)."""

    def __init__(self) -> None:
        self._pool: ThreadPoolExecutor | None = None
        self._pending: Future | None = None
        self._pending_keys: list[tuple[int, int, int]] = []
        self._in_flight: set[int] = set()  # id() of the constraints the worker is using
        self._ready: dict[tuple[int, int, int], np.ndarray] = {}
        # two reused buffers, alternating: the rows of one start stay valid while the next are written
        self._buffers: list[np.ndarray | None] = [None, None]
        self._turn = 0
        self.hits = 0  # masks taken from the worker (for tests and the benchmark)
        self.misses = 0  # masks computed on the caller's thread
        self.waited_s = 0.0  # time spent waiting for the worker

    # -- ahead ---------------------------------------------------------------------------------
    def start(self, constraints: list[GuidedConstraint], remaining: list[int]) -> None:
        """Begin computing the masks of ``constraints`` in their current state (``remaining`` tokens
        of budget each) on the worker. Masks started earlier and not used are dropped."""
        self._wait()
        self._ready = {}
        todo = [(c, r) for c, r in zip(constraints, remaining)
                if not c.done and getattr(_INSTANCES.get(c.backend), "overlap", False)]
        if not todo:
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="guided-masks")
        cons, left = [c for c, _ in todo], [r for _, r in todo]
        self._pending_keys = [_key(c, r) for c, r in todo]
        self._in_flight = {id(c) for c in cons}
        self._pending = self._pool.submit(mask_biases, cons, left, self._buffer(cons))

    def _buffer(self, cons: list[GuidedConstraint]) -> np.ndarray:
        width = 32 * ((max(c.vocab_size for c in cons) + 31) // 32)  # type: ignore[attr-defined]
        self._turn ^= 1
        buf = self._buffers[self._turn]
        if buf is None or buf.shape[0] < len(cons) or buf.shape[1] != width:
            buf = self._buffers[self._turn] = np.empty((max(len(cons), 16), width), dtype=np.float32)
        return buf

    def _wait(self) -> None:
        """Wait for the worker and keep its masks by key (none if it failed: they are computed again
        on the caller's thread, where an error reaches the one request it belongs to)."""
        fut, keys = self._pending, self._pending_keys
        self._pending, self._pending_keys, self._in_flight = None, [], set()
        if fut is None:
            return
        t0 = time.perf_counter()
        try:
            self._ready.update(zip(keys, fut.result()))
        except Exception:  # noqa: BLE001 - see above
            pass
        finally:
            self.waited_s += time.perf_counter() - t0

    # -- now -----------------------------------------------------------------------------------
    def masks(self, constraints: list[GuidedConstraint], remaining: list[int]) -> list[np.ndarray]:
        """Additive mask rows [V] for ``constraints`` now: the worker's where still valid, the rest
        computed here. Waits for the worker only when it is using one of ``constraints``."""
        if self._pending is not None and any(id(c) in self._in_flight for c in constraints):
            self._wait()
        out: list[np.ndarray | None] = [self._ready.pop(_key(c, r), None) for c, r in zip(constraints, remaining)]
        missing = [j for j, m in enumerate(out) if m is None]
        self.hits += len(out) - len(missing)
        self.misses += len(missing)
        if missing:
            rows = mask_biases([constraints[j] for j in missing], [remaining[j] for j in missing])
            for j, m in zip(missing, rows):
                out[j] = m
        return out  # type: ignore[return-value]

    def apply(self, logits: torch.Tensor, index: list[int], constraints: list[GuidedConstraint],
              remaining: list[int], rows: list[Any]) -> None:
        """Mask row ``index[j]`` of ``logits`` [B, V'] for ``constraints[j]``: in place (``-inf`` added
        where not allowed; columns past the vocabulary are left to the sampler, which masks padding), or
        through ``rows[index[j]].allowed_mask`` for a row that wants logprobs of the raw logits."""
        biases = self.masks(constraints, remaining)
        inplace: list[int] = []
        for j, (i, bias) in enumerate(zip(index, biases)):
            row = rows[i]
            if row.params.logprobs is not None or logits.shape[1] < len(bias):
                row.allowed_mask = torch.from_numpy(bias == 0)
            else:
                row.allowed_mask = None
                inplace.append(j)
        if not inplace:
            return
        with torch.inference_mode():  # logits made under inference mode may be written only inside it
            block = _block([biases[j] for j in inplace])
            if block is not None:  # one op: on loaded cores each torch op may wait for its threads
                target = torch.tensor([index[j] for j in inplace])
                logits[:, :block.shape[1]].index_add_(0, target, torch.from_numpy(block))
                return
            for j in inplace:
                logits[index[j], :len(biases[j])].add_(torch.from_numpy(biases[j]))

    def close(self) -> None:
        """Wait for the worker and stop it (a later start() makes a new one)."""
        self._wait()
        self._ready = {}
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
