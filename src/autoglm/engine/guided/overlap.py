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

Picking first (no mask at all, most steps of a model that writes the format). Where the row's
sampling makes it exact, a guided sequence is sampled from its unmasked logits and the pick is checked
afterwards (:meth:`GuidedConstraint.allows`: llguidance's lexer and parser on one token plus the budget
shadow, microseconds); only a refused pick costs a mask (computed on the spot; that row then goes the
masks-first way: fast mask, redraw, budget check) and a redraw. Exact means the same distribution as masking first: greedy (the unmasked argmax, when allowed, is
the masked argmax; when it is refused the redraw takes the masked argmax) and plain temperature
sampling (a draw from p kept only inside the allowed set A, else redrawn from p restricted to A, is
distributed as p restricted to A); not with ``top_k``, ``top_p`` or ``min_p``, which truncate before
the mask would, so those rows are masked first as above. After n more refused picks than accepted ones
(counted per sequence, never below 0) a sequence is masked first (ahead, overlapped) for the next
2**(n-1) steps, at most 16, before it picks first again, so a model that keeps missing (a random one, or
a stretch of forced punctuation) costs about what masking costs.

Knows nothing about the scheduler, the model or HTTP; works on constraints, numpy and torch.
"""
from __future__ import annotations

import time
import weakref
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Sequence

import numpy as np
import torch

from autoglm.engine.guided.backends import GuidedConstraint, _INSTANCES

__all__ = ["GuidedMasks", "mask_biases", "pick_first_exact"]

NEG_INF = float("-inf")
MAX_BACKOFF = 16  # steps a sequence is masked first after refused picks, at most


def pick_first_exact(params: Any) -> bool:
    """Picking first, then checking, samples exactly what masking first would for these sampling
    parameters (see the module doc): greedy, or temperature without top_k / top_p / min_p."""
    return params.greedy or (params.top_k <= 0 and params.top_p >= 1.0 and params.min_p <= 0.0)


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

    def __init__(self, pick_first: bool = True) -> None:
        self.pick_first = pick_first  # False: every guided row is masked before sampling
        # per constraint: [refusals not undone by accepted picks, steps left to be masked first];
        # absent = picks first
        self._backoff: weakref.WeakKeyDictionary[GuidedConstraint, list[int]] = weakref.WeakKeyDictionary()
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
        self.picked = 0  # rows sampled without a mask (for tests and the benchmark)
        self.refused = 0  # of those, picks refused and drawn again

    def _picks_first(self, c: GuidedConstraint, params: Any) -> bool:
        """This step, ``c`` is sampled unmasked and checked after (see the module doc)."""
        if not self.pick_first or not c.checks_picks or c.done or not pick_first_exact(params):
            return False
        state = self._backoff.get(c)
        return state is None or state[1] <= 0

    # -- ahead ---------------------------------------------------------------------------------
    def start(self, constraints: list[GuidedConstraint], remaining: list[int],
              params: Sequence[Any] | None = None) -> None:
        """Begin computing the masks of ``constraints`` in their current state (``remaining`` tokens
        of budget each) on the worker; not those that will pick first (``params``: each one's
        SamplingParams; None: all are masked). Masks started earlier and not used are dropped."""
        self._wait()
        self._ready = {}
        todo = [(c, r) for k, (c, r) in enumerate(zip(constraints, remaining))
                if not c.done and getattr(_INSTANCES.get(c.backend), "overlap", False)
                and not (params is not None and self._picks_first(c, params[k]))]
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
              remaining: list[int], rows: list[Any]) -> list[int]:
        """Mask row ``index[j]`` of ``logits`` [B, V'] for ``constraints[j]``: in place (``-inf`` added
        where not allowed; columns past the vocabulary are left to the sampler, which masks padding), or
        through ``rows[index[j]].allowed_mask`` for a row that wants logprobs of the raw logits. Rows
        that pick first are left unmasked: their ``j`` are returned, for :meth:`settle`."""
        # a constraint started on the worker was planned to be masked (and may still be in use there)
        first = [j for j, (i, c, r) in enumerate(zip(index, constraints, remaining))
                 if id(c) not in self._in_flight and _key(c, r) not in self._ready
                 and self._picks_first(c, rows[i].params)]
        for j in first:
            rows[index[j]].allowed_mask = None
        chosen = set(first)
        keep = [j for j in range(len(index)) if j not in chosen]
        if keep:
            self._mask([index[j] for j in keep], [constraints[j] for j in keep], [remaining[j] for j in keep],
                       logits, rows)
        return first

    def settle(self, logits: torch.Tensor, index: list[int], constraints: list[GuidedConstraint],
               remaining: list[int], rows: list[Any], result: Any, first: list[int]) -> list[int]:
        """After ``result = sample(logits, rows)`` (``first``: what :meth:`apply` returned): draw again,
        in ``result``, every guided pick that may not come next, and keep each sequence's backoff. A
        refused pick made first goes the way of masking first from here (its fast mask applied to its
        row, drawn again, then the budget check); a pick from a fast mask that the budget refuses
        (:meth:`GuidedConstraint.check`) is drawn again from :meth:`~GuidedConstraint.exact_mask`.
        Returns the rows (``index`` values) drawn again."""
        chosen = set(first)
        refused_first, budget = [], []
        for j, (i, c, r) in enumerate(zip(index, constraints, remaining)):
            t = result.token_ids[i]
            state = self._backoff.get(c)
            if j in chosen:
                self.picked += 1
                if c.allows(t, r):  # None (cannot tell: failed over meanwhile) counts as refused
                    if state is not None and state[0] > 1:
                        state[0] -= 1  # one accepted pick undoes one refusal: a mostly-refused
                    else:              # sequence stays mostly masked first
                        self._backoff.pop(c, None)
                    continue
                self.refused += 1
                misses = 1 if state is None else state[0] + 1
                self._backoff[c] = [misses, min(MAX_BACKOFF, 2 ** (misses - 1))]
                refused_first.append(j)
                continue
            if state is not None:
                state[1] -= 1
            if not c.check(t, r):
                budget.append(j)
        if refused_first:  # as if masked first: all their fast masks at once, one draw for them all
            self._mask([index[j] for j in refused_first], [constraints[j] for j in refused_first],
                       [remaining[j] for j in refused_first], logits, rows)
            self._draw(logits, [index[j] for j in refused_first], rows, result)
            budget += [j for j in refused_first if not constraints[j].check(result.token_ids[index[j]], remaining[j])]
        for j in budget:
            i = index[j]
            rows[i].allowed_mask = torch.from_numpy(constraints[j].exact_mask(remaining[j]))
            self._draw(logits, [i], rows, result)
        return sorted({index[j] for j in refused_first + budget})

    @staticmethod
    def _draw(logits: torch.Tensor, which: list[int], rows: list[Any], result: Any) -> None:
        from autoglm.engine.sampling import sample

        picked = sample(logits[which], [rows[i] for i in which])
        for i, t, lp in zip(which, picked.token_ids, picked.logprobs):
            result.token_ids[i], result.logprobs[i] = t, lp

    def _mask(self, index: list[int], constraints: list[GuidedConstraint], remaining: list[int],
              logits: torch.Tensor, rows: list[Any]) -> None:
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
