"""Run a transformers causal LM over a batch whose members come and go at every step.

The running batch shares one KV cache laid out left-padded: row ``i`` holds sequence ``rows[i]``
right-aligned in ``[B, H_kv, L, D]`` buffers, with a ``[B, L]`` attention mask marking real
positions and explicit ``position_ids`` per row, so every sequence sees exactly the keys and
positions it would see alone. New sequences are prefilled (batched, left-padded) in a fresh cache
and merged in; finished ones are dropped and all-padding columns on the left are trimmed. A long
prompt can instead be prefilled a chunk at a time (:meth:`BatchRunner.prefill_chunk`) in a cache of
its own, between decode steps of the batch, and merged in with its last chunk.

With a :class:`PrefixCache`, a sequence that leaves keeps a copy of its cells (prompt and the tokens
it fed back), and a new prompt that starts with at least ``min_reuse`` of those tokens begins from
that copy and runs only the rest: a chat's next turn skips re-reading its history.

The buffers are pre-allocated with spare capacity (:class:`SlabLayer`) so a decode step writes one
column in place instead of re-concatenating the whole cache. Knows torch and transformers' cache
API; knows nothing about sampling, requests or HTTP.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
from transformers.cache_utils import Cache, DynamicLayer

from autoglm.engine.attention import use_fast_attention
from autoglm.engine.scheduler import common_prefix_len

__all__ = ["SlabLayer", "BatchRunner", "PrefixCache"]


class SlabLayer(DynamicLayer):
    """One layer's K/V in ``[B, H, capacity, D]`` buffers; the first ``length`` columns are in use."""

    def __init__(self, keys: torch.Tensor | None = None, values: torch.Tensor | None = None, length: int = 0):
        super().__init__()
        self.kbuf = keys
        self.vbuf = values
        self.length = length
        if keys is not None:
            self.is_initialized = True
            self.device = keys.device
            self._sync()

    def _sync(self) -> None:
        self.keys = self.kbuf[:, :, : self.length]
        self.values = self.vbuf[:, :, : self.length]

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        b, h, _, d = key_states.shape
        self.kbuf = key_states.new_empty((b, h, 0, d))
        self.vbuf = value_states.new_empty((b, h, 0, value_states.shape[-1]))
        self.length = 0
        self.device = key_states.device
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        q = key_states.shape[-2]
        need = self.length + q
        if need > self.kbuf.shape[2]:
            self._grow(max(need, int(self.kbuf.shape[2] * 1.5) + 16))
        self.kbuf[:, :, self.length : need] = key_states
        self.vbuf[:, :, self.length : need] = value_states
        self.length = need
        self._sync()
        return self.keys, self.values

    def _grow(self, capacity: int) -> None:
        b, h, _, d = self.kbuf.shape
        k = self.kbuf.new_empty((b, h, capacity, d))
        v = self.vbuf.new_empty((b, h, capacity, self.vbuf.shape[-1]))
        k[:, :, : self.length] = self.kbuf[:, :, : self.length]
        v[:, :, : self.length] = self.vbuf[:, :, : self.length]
        self.kbuf, self.vbuf = k, v

    def get_seq_length(self) -> int:
        return self.length if self.is_initialized else 0

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.get_seq_length() + query_length, 0


class PrefixCache:
    """Copies of finished sequences' KV cells, keyed by the tokens they hold; least recently used
    entries go first once ``capacity`` tokens are held. Tensors are per layer ``(k, v)`` of shape
    ``[H_kv, n, D]``."""

    def __init__(self, capacity: int, min_reuse: int = 32):
        self.capacity = capacity
        self.min_reuse = min_reuse
        self._entries: OrderedDict[int, tuple[list[int], list[tuple[torch.Tensor, torch.Tensor]]]] = OrderedDict()
        self._next = 0
        self.held = 0  # tokens held
        self.hits = 0
        self.reused_tokens = 0

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, tokens: list[int], layers: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        n = len(tokens)
        if n < self.min_reuse or n > self.capacity:
            return
        for key, (held, _) in list(self._entries.items()):  # a longer copy replaces its own prefixes
            if len(held) <= n and tokens[: len(held)] == held:
                self._drop(key)
        while self._entries and self.held + n > self.capacity:
            self._drop(next(iter(self._entries)))
        self._entries[self._next] = (list(tokens), layers)
        self._next += 1
        self.held += n

    def match(self, prompt: list[int]) -> tuple[int, list[tuple[torch.Tensor, torch.Tensor]]] | None:
        """The longest usable cached prefix of ``prompt`` (at most ``len(prompt) - 1`` tokens, so
        at least one token runs and yields logits) and its cells; None below ``min_reuse``. A
        match counts as a hit and makes its entry the most recently used."""
        best, best_n = None, 0
        for key, (held, _) in self._entries.items():
            n = common_prefix_len(held, prompt)
            if n > best_n:
                best, best_n = key, n
        best_n = min(best_n, len(prompt) - 1)
        if best is None or best_n < self.min_reuse:
            return None
        self._entries.move_to_end(best)
        self.hits += 1
        self.reused_tokens += best_n
        return best_n, self._entries[best][1]

    def _drop(self, key: int) -> None:
        tokens, _ = self._entries.pop(key)
        self.held -= len(tokens)


def _new_cache(num_layers: int, layers: list[SlabLayer] | None = None) -> Cache:
    return Cache(layers=layers if layers is not None else [SlabLayer() for _ in range(num_layers)])


class BatchRunner:
    """Holds the running batch's KV cache and runs prefill and decode steps.

    ``rows[i]`` is the key (any hashable, e.g. a request id) of batch row ``i``. Methods return
    next-token logits in row order; the caller samples and feeds tokens back with :meth:`decode`.
    """

    def __init__(self, model: torch.nn.Module, device: torch.device | str = "cpu", spare: int = 64,
                 fast_attention: bool = True, prefix_cache: PrefixCache | None = None):
        self.model = model
        if fast_attention:
            use_fast_attention(model)  # decode steps without SDPA's overhead (engine/attention.py)
        self.device = torch.device(device)
        self.num_layers = model.config.get_text_config().num_hidden_layers
        self.spare = spare  # extra columns allocated on merge, so decode rarely regrows
        self.rows: list[Any] = []
        self.cache: Cache | None = None
        self.mask: torch.Tensor | None = None  # [B, L] long: 1 = real token
        self.positions: torch.Tensor | None = None  # [B] long: next position id per row
        self._pending: dict[Any, tuple[Cache, int]] = {}  # key -> (its own cache, tokens in it) while chunking
        self.prefix_cache = prefix_cache
        self._tokens: dict[Any, list[int]] = {}  # key -> tokens its cells hold (only with a prefix cache)

    # -- queries ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.rows)

    @property
    def cache_len(self) -> int:
        return 0 if self.mask is None else self.mask.shape[1]

    def prefix_stats(self) -> tuple[int, int]:
        """(prompts that started from a cached prefix, prompt tokens they skipped), since start."""
        pc = self.prefix_cache
        return (pc.hits, pc.reused_tokens) if pc is not None else (0, 0)

    def cached_tokens(self) -> int:
        """KV cells held, left padding included (what the memory actually pays for)."""
        return len(self.rows) * self.cache_len + sum(n for _, n in self._pending.values())

    # -- steps -------------------------------------------------------------------------------
    @torch.inference_mode()
    def prefill(self, keys: list[Any], prompts: list[list[int]], mm: list[Any] | None = None) -> torch.Tensor:
        """Run ``prompts`` (left-padded together), merge them into the batch; logits ``[b, V]``.

        Prompts with a cached prefix run one by one from their copy; the rest run together. ``mm``:
        per prompt its :class:`~autoglm.engine.vision.ImageInputs` or None; a prompt with images
        never uses or fills the prefix cache (its placeholder tokens do not say which image it was)."""
        mm = mm if mm is not None else [None] * len(prompts)
        if self.prefix_cache is not None and len(self.prefix_cache):
            hits = {i: hit for i, p in enumerate(prompts)
                    if mm[i] is None and (hit := self.prefix_cache.match(p)) is not None}
            if hits:
                rows: dict[int, torch.Tensor] = {}
                misses = [i for i in range(len(prompts)) if i not in hits]
                if misses:
                    got = self._prefill_batch([keys[i] for i in misses], [prompts[i] for i in misses],
                                              [mm[i] for i in misses])
                    rows.update({i: got[j] for j, i in enumerate(misses)})
                for i, hit in hits.items():
                    rows[i] = self._run_chunk(keys[i], prompts[i], 0, len(prompts[i]), hit)[0]
                return torch.stack([rows[i] for i in range(len(prompts))])
        return self._prefill_batch(keys, prompts, mm)

    def _prefill_batch(self, keys: list[Any], prompts: list[list[int]], mm: list[Any] | None = None) -> torch.Tensor:
        b = len(prompts)
        width = max(len(p) for p in prompts)
        ids = torch.zeros((b, width), dtype=torch.long)
        mask = torch.zeros((b, width), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, width - len(p) :] = torch.tensor(p, dtype=torch.long)
            mask[i, width - len(p) :] = 1
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        lengths = torch.tensor([len(p) for p in prompts], dtype=torch.long)  # next position per row
        images: dict[str, torch.Tensor] = {}
        if mm is not None and any(m is not None for m in mm):  # 3-D positions and pixels (engine/vision.py)
            from autoglm.engine.vision import prefill_inputs

            position_ids, lengths, images = prefill_inputs(self.model, ids, mask, prompts, mm)
            images = {k: v.to(self.device) for k, v in images.items()}
        cache = _new_cache(self.num_layers)
        out = self.model(
            input_ids=ids.to(self.device),
            attention_mask=mask.to(self.device),
            position_ids=position_ids.to(self.device),
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
            **images,
        )
        logits = out.logits[:, -1, :]  # [b, V]
        self._merge(keys, cache, mask.to(self.device), lengths.to(self.device))
        if self.prefix_cache is not None:
            self._tokens.update({k: list(p) for i, (k, p) in enumerate(zip(keys, prompts))
                                 if mm is None or mm[i] is None})
        return logits

    @torch.inference_mode()
    def prefill_chunk(self, key: Any, prompt: list[int], start: int, end: int) -> torch.Tensor | None:
        """Run ``prompt[start:end]`` for ``key`` (chunks in order, ``start`` = what ran before) in
        its own cache; with the last chunk (``end == len(prompt)``) merge it into the batch and
        return its logits ``[1, V]``, else None. The first chunk starts from a cached prefix when the
        prefix cache has one; chunks that fall inside it run nothing."""
        hit = None
        if start == 0 and key not in self._pending and self.prefix_cache is not None:
            hit = self.prefix_cache.match(prompt)
        return self._run_chunk(key, prompt, start, end, hit)

    def _run_chunk(self, key: Any, prompt: list[int], start: int, end: int,
                   hit: tuple[int, list[tuple[torch.Tensor, torch.Tensor]]] | None) -> torch.Tensor | None:
        """:meth:`prefill_chunk` once the prefix cache was asked: ``hit`` (from
        :meth:`PrefixCache.match`) seeds a new sequence's cache with its cells."""
        cache, done = self._pending.pop(key, (None, 0))
        if cache is None and hit is not None:
            done, layers = hit
            cache = _new_cache(self.num_layers, [
                SlabLayer(k[None, :, :done].clone(), v[None, :, :done].clone(), done) for k, v in layers])
        if start < done:  # already in the cache (from a prefix)
            start = done
        if start != done:
            raise ValueError(f"chunk starts at {start} but {done} tokens of this prompt ran so far")
        if cache is None:
            cache = _new_cache(self.num_layers)
        if start >= end:  # the whole chunk came from the prefix cache
            self._pending[key] = (cache, done)
            return None
        mask = torch.ones((1, end), dtype=torch.long, device=self.device)
        out = self.model(
            input_ids=torch.tensor([prompt[start:end]], dtype=torch.long, device=self.device),
            attention_mask=mask,
            position_ids=torch.arange(start, end, dtype=torch.long, device=self.device).view(1, -1),
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        if end < len(prompt):
            self._pending[key] = (cache, end)
            return None
        self._merge([key], cache, mask, torch.tensor([end], dtype=torch.long, device=self.device))
        if self.prefix_cache is not None:
            self._tokens[key] = list(prompt)
        return out.logits[:, -1, :]

    @torch.inference_mode()
    def decode(self, tokens: list[int]) -> torch.Tensor:
        """Feed one token per row (in row order); logits ``[B, V]``."""
        assert self.cache is not None and self.mask is not None and self.positions is not None
        b = len(self.rows)
        ids = torch.tensor(tokens, dtype=torch.long, device=self.device).view(b, 1)
        self.mask = torch.cat([self.mask, self.mask.new_ones((b, 1))], dim=1)  # [B, L+1]
        out = self.model(
            input_ids=ids,
            attention_mask=self.mask,
            position_ids=self.positions.view(b, 1),
            cache=self.cache,
            use_cache=True,
            logits_to_keep=1,
        )
        self.positions = self.positions + 1
        if self.prefix_cache is not None:
            for k, t in zip(self.rows, tokens):
                if k in self._tokens:  # rows with images keep no tokens (never cached)
                    self._tokens[k].append(int(t))
        return out.logits[:, -1, :]

    def remove(self, keys: list[Any]) -> None:
        """Drop rows (finished or aborted sequences), or half-prefilled prompts, and free their cache."""
        for k in keys:
            self._pending.pop(k, None)
        gone = set(keys)
        keep = [i for i, k in enumerate(self.rows) if k not in gone]
        if len(keep) == len(self.rows):
            return
        if self.prefix_cache is not None:
            self._keep_prefixes([i for i, k in enumerate(self.rows) if k in gone])
        if not keep:
            self.rows, self.cache, self.mask, self.positions = [], None, None, None
            return
        idx = torch.tensor(keep, dtype=torch.long, device=self.device)
        self.rows = [self.rows[i] for i in keep]
        mask = self.mask.index_select(0, idx)
        # columns that are padding for every remaining row are dead weight: trim them
        used = mask.any(dim=0).nonzero()
        start = int(used[0]) if used.numel() else mask.shape[1]
        length = mask.shape[1]
        self.mask = mask[:, start:]
        self.positions = self.positions.index_select(0, idx)
        layers = []
        for layer in self.cache.layers:
            k = layer.kbuf.index_select(0, idx)[:, :, start:]
            v = layer.vbuf.index_select(0, idx)[:, :, start:]
            layers.append(SlabLayer(k.contiguous(), v.contiguous(), length - start))
        self.cache = _new_cache(self.num_layers, layers)

    # -- internals ---------------------------------------------------------------------------
    def _keep_prefixes(self, leaving: list[int]) -> None:
        """Copy the cells of rows ``leaving`` into the prefix cache (their real columns only)."""
        assert self.prefix_cache is not None and self.mask is not None and self.cache is not None
        for i in leaving:
            tokens = self._tokens.pop(self.rows[i], None)
            if not tokens or len(tokens) < self.prefix_cache.min_reuse:
                continue
            n = int(self.mask[i].sum())
            if n != len(tokens):  # bookkeeping out of step with the cells: keep nothing rather than wrong cells
                continue
            end = self.cache_len
            layers = [(layer.kbuf[i, :, end - n : end].clone(), layer.vbuf[i, :, end - n : end].clone())
                      for layer in self.cache.layers]
            self.prefix_cache.put(tokens, layers)

    def _merge(self, keys: list[Any], cache: Cache, mask: torch.Tensor, lengths: torch.Tensor) -> None:
        if self.cache is None:
            new_len = mask.shape[1]
            layers = []
            for layer in cache.layers:
                layers.append(self._alloc_like(layer, mask.shape[0], new_len, [(layer, 0, 0)]))
            self.rows = list(keys)
            self.cache = _new_cache(self.num_layers, layers)
            self.mask = mask
            self.positions = lengths
            return
        old_len, add_len = self.cache_len, mask.shape[1]
        new_len = max(old_len, add_len)
        b_old, b_add = len(self.rows), mask.shape[0]
        layers = []
        for old, add in zip(self.cache.layers, cache.layers):
            layers.append(
                self._alloc_like(old, b_old + b_add, new_len, [(old, 0, new_len - old_len), (add, b_old, new_len - add_len)])
            )
        merged_mask = self.mask.new_zeros((b_old + b_add, new_len))
        merged_mask[:b_old, new_len - old_len :] = self.mask
        merged_mask[b_old:, new_len - add_len :] = mask
        self.rows = self.rows + list(keys)
        self.cache = _new_cache(self.num_layers, layers)
        self.mask = merged_mask
        self.positions = torch.cat([self.positions, lengths])

    def _alloc_like(self, like: SlabLayer, batch: int, length: int, parts: list[tuple[SlabLayer, int, int]]) -> SlabLayer:
        """A new layer of ``batch`` rows and ``length`` used columns; ``parts`` are copied in at
        (row offset, column offset)."""
        _, h, _, d = like.kbuf.shape
        cap = length + self.spare
        k = like.kbuf.new_zeros((batch, h, cap, d))
        v = like.vbuf.new_zeros((batch, h, cap, like.vbuf.shape[-1]))
        for src, row, col in parts:
            n, used = src.kbuf.shape[0], src.length
            k[row : row + n, :, col : col + used] = src.kbuf[:, :, :used]
            v[row : row + n, :, col : col + used] = src.vbuf[:, :, :used]
        return SlabLayer(k, v, length)
