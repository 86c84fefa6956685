"""The llama.cpp backend: GGUF models decoded by llama.cpp, several sequences per step.

Only the forward pass is llama.cpp's. Scheduling, sampling, stop strings, guided decoding and
detokenization are our own :class:`~autoglm.engine.core.EngineCore` — the same code the transformers
backend runs — driven through :class:`LlamaCppRunner`, which has the duties of
:class:`~autoglm.engine.runner.BatchRunner` (``prefill``, ``decode``, ``remove``, ``rows``,
``cache_len``) on top of llama.cpp's low-level API:

* one llama.cpp context with ``n_seq_max = max_num_seqs`` and a KV cache of ``max_model_len`` cells
  per sequence (non-unified: each sequence attends only over its own cells);
* every running sequence holds a slot, which is its llama.cpp ``seq_id``; a prefill puts the new
  prompts into one ``llama_batch`` (split at ``n_batch`` tokens), a decode step puts one token per
  running sequence into one batch, so requests join and leave the batch at every step;
* a finished or aborted sequence leaves its cells in its slot as a **prefix cache**: the slot records
  the tokens its cells hold, and a later prompt that starts with (at least ``min_reuse`` of) those
  tokens takes that slot and evaluates only the rest. A follow-up turn of a chat, or the same prompt
  sent again, skips its prefill. Slots hold ``max_model_len`` cells each whether used or not, so the
  cache costs no memory; an unmatched prompt takes an empty slot, else the least recently used one;
* running sequences are moved down into freed slots so they always hold slots ``0..B-1`` (that
  discards the cache of the slot they move into), and decode batches are fed in seq_id order
  (llama.cpp prices a batch by the span of its seq_ids and splits unordered ones).

Prompts are tokenized with a Hugging Face tokenizer (the same ids, chat template and stop-string
behaviour as the transformers backend); llama.cpp's own tokenizer is never used.

Loading: ``--model`` is a ``.gguf`` file — its tokenizer is the Hugging Face directory it was converted
from (recorded by :mod:`autoglm.quantization.gguf`) or the tokenizer files beside it, else the one the
GGUF stores (rebuilt by :mod:`autoglm.quantization.gguf_tokenizer`: a bare GGUF serves as llama-server
serves it) —, a hub repository of GGUF files named ``org/repo:TAG`` (:mod:`autoglm.hub.gguf_repo`:
only that quantization is downloaded), or any model name, converted on first use and cached in the store
(``--quantize``: fp32 → f32, fp16/bf16/auto → f16, int8 → q8_0, int4 → q4_k_m). Before the model loads,
a CPU that reports AMX has llama.cpp probed in a child process (:mod:`.llamacpp_probe`). Needs the
``llamacpp`` extra, imported lazily.
"""
from __future__ import annotations

import ctypes
import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

from autoglm.config import EngineSettings
from autoglm.engine.base import register_engine
from autoglm.engine.loop import LoadedModel, LoopEngine
from autoglm.engine.scheduler import common_prefix_len
from autoglm.errors import AutoGLMError, ConfigError, ModelNotFoundError

__all__ = ["LlamaCppEngine", "LlamaCppRunner", "load_llamacpp_model", "gguf_type_for"]

log = logging.getLogger("autoglm.engine")

# --quantize -> GGUF type
_GGUF_TYPE = {"auto": "f16", "fp16": "f16", "bf16": "f16", "fp32": "f32", "int8": "q8_0", "int4": "q4_k_m"}
_GGML_TYPE_F32 = 0
_FLASH_ATTN_DISABLED = 0


def gguf_type_for(quantize: str, source_dir: Path | None = None) -> str:
    """The GGUF type a ``--quantize`` value asks for (``none``: the checkpoint's own precision)."""
    if quantize == "none":
        dtype = ""
        if source_dir is not None and (source_dir / "config.json").is_file():
            cfg = json.loads((source_dir / "config.json").read_text(encoding="utf-8"))
            dtype = str(cfg.get("dtype") or cfg.get("torch_dtype") or "")
        return "f32" if dtype == "float32" else "f16"
    if quantize not in _GGUF_TYPE:
        raise ConfigError(f"--quantize {quantize!r} has no GGUF equivalent for the llamacpp engine; use one of "
                          f"{', '.join(sorted([*_GGUF_TYPE, 'none']))}")
    return _GGUF_TYPE[quantize]


class _Batch:
    """A ``llama_batch`` whose arrays are numpy buffers we own, so a step fills them with slice
    assignments instead of one ctypes call per token. Each token belongs to exactly one sequence."""

    def __init__(self, llama_cpp: Any, capacity: int):
        import numpy as np

        self.capacity = capacity
        self.token = np.zeros(capacity, dtype=np.int32)
        self.pos = np.zeros(capacity, dtype=np.int32)
        self.n_seq_id = np.ones(capacity, dtype=np.int32)
        self.seq_id = np.zeros(capacity, dtype=np.int32)
        self.logits = np.zeros(capacity, dtype=np.int8)
        i32p = ctypes.POINTER(ctypes.c_int32)
        base = self.seq_id.ctypes.data
        # seq_id is int32** (a list of ids per token): point entry i at our seq_id[i]
        self._seq_ptrs = (i32p * capacity)(*[ctypes.cast(base + 4 * i, i32p) for i in range(capacity)])
        b = llama_cpp.llama_batch()
        b.token = self.token.ctypes.data_as(i32p)
        b.embd = ctypes.POINTER(ctypes.c_float)()
        b.pos = self.pos.ctypes.data_as(i32p)
        b.n_seq_id = self.n_seq_id.ctypes.data_as(i32p)
        b.seq_id = ctypes.cast(self._seq_ptrs, ctypes.POINTER(i32p))
        b.logits = self.logits.ctypes.data_as(ctypes.POINTER(ctypes.c_int8))
        self.struct = b

    def fill(self, tokens: Any, pos: Any, seq: Any, want: Any) -> Any:
        n = len(tokens)
        self.token[:n] = tokens
        self.pos[:n] = pos
        self.seq_id[:n] = seq
        self.logits[:n] = want
        self.struct.n_tokens = n
        return self.struct


class LlamaCppRunner:
    """A llama.cpp model and context holding the running batch's KV cache.

    ``rows[i]`` is the key of batch row ``i`` (the engine core passes its sequences). Methods return
    next-token logits as float32 torch tensors in row order. Not thread-safe: one engine thread calls it.
    """

    def __init__(self, gguf_path: str | Path, *, max_model_len: int, max_num_seqs: int,
                 n_threads: int | None = None, n_batch: int = 2048, gpu_layers: int = 0,
                 kv_f32: bool = False, min_reuse: int = 16):
        from autoglm.quantization.gguf import _quiet_llama_logs, require_llama_cpp

        self.lc = lc = require_llama_cpp()
        _quiet_llama_logs(lc)
        lc.llama_backend_init()
        self.path = Path(gguf_path)
        self.max_model_len = max_model_len
        self.max_num_seqs = max_num_seqs
        mparams = lc.llama_model_default_params()
        mparams.n_gpu_layers = gpu_layers
        self.model = lc.llama_model_load_from_file(str(self.path).encode(), mparams)
        if not self.model:
            raise ModelNotFoundError(f"llama.cpp could not load {self.path}; is it a GGUF file of a supported "
                                     "architecture? (AUTOGLM_LLAMA_LOG=1 shows llama.cpp's log)")
        self.n_ctx_train = int(lc.llama_model_n_ctx_train(self.model))
        self.n_vocab = int(lc.llama_vocab_n_tokens(lc.llama_model_get_vocab(self.model)))
        threads = n_threads or os.cpu_count() or 1
        cparams = lc.llama_context_default_params()
        cparams.n_ctx = max_model_len * max_num_seqs
        cparams.n_seq_max = max_num_seqs
        cparams.kv_unified = False  # independent sequences: each attends over its own cells only
        cparams.n_batch = n_batch
        cparams.n_ubatch = min(512, n_batch)
        cparams.n_threads = threads
        cparams.n_threads_batch = threads
        cparams.no_perf = True
        if kv_f32:
            # f32 weights: keep the whole forward in f32 so greedy tokens match the f32 reference. The
            # CPU flash-attention kernel works in f16 (logits off by ~1e-3), so it is off here.
            cparams.type_k = _GGML_TYPE_F32
            cparams.type_v = _GGML_TYPE_F32
            cparams.flash_attn_type = _FLASH_ATTN_DISABLED
        self.ctx = lc.llama_init_from_model(self.model, cparams)
        if not self.ctx:
            lc.llama_model_free(self.model)
            raise AutoGLMError(f"llama.cpp could not create a context of {cparams.n_ctx} tokens for {self.path}; "
                               "lower --max-model-len or --max-num-seqs")
        self.mem = lc.llama_get_memory(self.ctx)
        self.n_batch = int(lc.llama_n_batch(self.ctx))  # llama.cpp caps it at n_ctx
        self._batch = _Batch(lc, max(n_batch, max_num_seqs))
        import numpy as np

        self._want = np.ones(max_num_seqs, dtype=np.int8)  # a decode step wants every row's logits
        self._logits_addr: int | None = None
        self._logits_views: dict[int, Any] = {}  # rows -> tensor view of llama.cpp's output buffer
        self.rows: list[Any] = []
        self._slot: dict[Any, int] = {}  # key -> llama.cpp seq_id
        self._pos: dict[Any, int] = {}  # key -> next position
        self._free = list(range(max_num_seqs - 1, -1, -1))  # pop() hands out 0 first
        self._tokens: dict[Any, list[int]] = {}  # key -> the tokens its cells hold (prompt + fed tokens)
        self._cached: dict[int, list[int]] = {}  # free slot -> the tokens its cells still hold
        self._last_used: dict[int, int] = {}  # free slot -> when its cache was last written (a tick)
        self._tick = 0
        self.min_reuse = min_reuse
        self.reused_tokens = 0  # prompt tokens served from the prefix cache, since start
        self.prefix_hits = 0
        self._lock = threading.Lock()  # close() vs a step still running

    # -- queries ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.rows)

    @property
    def cache_len(self) -> int:
        return max(self._pos.values(), default=0)

    def cached_tokens(self) -> int:
        return sum(self._pos.values())

    def slot_of(self, key: Any) -> int | None:
        return self._slot.get(key)

    def seq_pos_max(self, slot: int) -> int:
        """llama.cpp's own view of a slot: the last position it holds, -1 when empty."""
        return int(self.lc.llama_memory_seq_pos_max(self.mem, slot))

    def prefix_stats(self) -> tuple[int, int]:
        """(prompts that started from a cached prefix, prompt tokens they skipped), since start."""
        return self.prefix_hits, self.reused_tokens

    def cached_prefix(self, slot: int) -> list[int]:
        """The tokens a free slot's cells hold for reuse (empty when none)."""
        return list(self._cached.get(slot, ()))

    # -- slots and the prefix cache ----------------------------------------------------------
    def _take_slot(self, prompt: list[int]) -> tuple[int, int]:
        """A free slot for ``prompt`` and how many of its leading tokens the slot's cells already
        hold (the cells after those are dropped here)."""
        best, best_n = None, 0
        for slot in self._free:
            cached = self._cached.get(slot)
            if cached:
                n = common_prefix_len(cached, prompt)
                if n > best_n:
                    best, best_n = slot, n
        if best is not None and best_n >= min(self.min_reuse, len(prompt)):
            reuse = min(best_n, len(prompt) - 1)  # evaluate at least one token: its logits start decoding
            slot = best
        else:
            empty = [s for s in self._free if s not in self._cached]
            if empty:
                slot = min(empty)
            else:  # every free slot caches something: give up the least recently used
                slot = min(self._free, key=lambda s: (self._last_used.get(s, 0), s))
            reuse = 0
        self._free.remove(slot)
        self._cached.pop(slot, None)
        self._last_used.pop(slot, None)
        self.lc.llama_memory_seq_rm(self.mem, slot, reuse if reuse else -1, -1)
        return slot, reuse

    def _release(self, slot: int, tokens: list[int] | None) -> None:
        """Give ``slot`` back; its cells stay as a prefix cache of ``tokens`` (None: clear them)."""
        if tokens:
            self._tick += 1
            self._cached[slot] = tokens
            self._last_used[slot] = self._tick
        else:
            self.lc.llama_memory_seq_rm(self.mem, slot, -1, -1)
        self._free.append(slot)

    # -- steps -------------------------------------------------------------------------------
    def prefill(self, keys: list[Any], prompts: list[list[int]]) -> Any:
        """Run ``prompts`` into free slots and add them to the batch; logits ``[b, V]``."""
        import numpy as np

        if len(keys) > len(self._free):
            raise AutoGLMError(f"{len(keys)} new sequences but only {len(self._free)} free llama.cpp slots")
        taken = [self._take_slot(p) for p in prompts]
        slots = [slot for slot, _ in taken]
        # the batch goes in seq_id order (see decode); logits come back in that order
        order = sorted(range(len(prompts)), key=lambda i: slots[i])
        reuse = np.array([taken[i][1] for i in order], dtype=np.int64)
        lens = np.array([len(prompts[i]) for i in order], dtype=np.int64)
        todo = lens - reuse  # tokens to evaluate per prompt (>= 1)
        tokens = np.concatenate([np.asarray(prompts[i][r:], dtype=np.int32) for i, r in zip(order, reuse)])
        pos = np.concatenate([np.arange(r, n, dtype=np.int32) for r, n in zip(reuse, lens)])
        seq = np.repeat(np.asarray([slots[i] for i in order], dtype=np.int32), todo)
        want = np.zeros(len(tokens), dtype=np.int8)
        want[np.cumsum(todo) - 1] = 1  # logits for each prompt's last token only
        parts = []
        try:
            for start in range(0, len(tokens), self.n_batch):
                end = min(start + self.n_batch, len(tokens))
                self._decode(tokens[start:end], pos[start:end], seq[start:end], want[start:end])
                n_out = int(want[start:end].sum())
                if n_out:
                    parts.append(self._logits(n_out))
        except BaseException:
            for s in slots:
                self._release(s, None)
            raise
        self.reused_tokens += int(reuse.sum())
        self.prefix_hits += int((reuse > 0).sum())
        for key, slot, prompt in zip(keys, slots, prompts):
            self.rows.append(key)
            self._slot[key] = slot
            self._pos[key] = len(prompt)
            self._tokens[key] = list(prompt)
        import torch

        logits = parts[0] if len(parts) == 1 else torch.cat(parts)  # [b, V] in seq_id order
        if order == sorted(order):
            return logits
        out = torch.empty_like(logits)
        out[torch.tensor(order)] = logits
        return out

    def decode(self, tokens: list[int]) -> Any:
        """Feed one token per row (in row order); logits ``[B, V]``."""
        import numpy as np

        import torch

        n = len(self.rows)
        pos = np.fromiter((self._pos[k] for k in self.rows), dtype=np.int32, count=n)
        seq = np.fromiter((self._slot[k] for k in self.rows), dtype=np.int32, count=n)
        toks = np.asarray(tokens, dtype=np.int32)
        # llama.cpp splits a batch whose seq_ids are out of order into several ubatches (3x slower
        # at 16 sequences): feed it sorted by seq_id and put the logits back in row order. Rows are
        # usually in order already (one row; slots handed out and compacted in row order).
        order = None if n == 1 or bool((seq[1:] > seq[:-1]).all()) else np.argsort(seq, kind="stable")
        if order is None:
            self._decode(toks, pos, seq, self._want[:n])
        else:
            self._decode(toks[order], pos[order], seq[order], self._want[:n])
        for k, t in zip(self.rows, tokens):
            self._pos[k] += 1
            self._tokens[k].append(int(t))
        logits = self._logits(n)  # [B, V] in seq_id order
        if order is None:
            return logits
        out = torch.empty_like(logits)
        out[torch.from_numpy(order)] = logits
        return out

    def remove(self, keys: list[Any]) -> None:
        """Drop rows (finished or aborted sequences); their cells stay as prefix caches of their
        slots. Unknown keys are ignored."""
        gone = [k for k in keys if k in self._slot]
        if not gone:
            return
        for k in gone:
            slot = self._slot.pop(k)
            self._pos.pop(k)
            self._release(slot, self._tokens.pop(k, None))
        dropped = set(gone)
        self.rows = [k for k in self.rows if k not in dropped]
        self._compact()

    def _compact(self) -> None:
        """Keep the running sequences in slots ``0..B-1``.

        With a non-unified cache a batch costs as much as the span of its seq_ids (sequences 0, 2, 4
        ... 14 decode at the price of 16), so when a sequence leaves a hole below a running one, the
        highest running sequence moves down into it: the hole's cached cells are dropped,
        ``llama_memory_seq_cp`` across streams copies the mover's cells (once, at the next decode),
        then its old slot is cleared.
        """
        by_slot = {slot: key for key, slot in self._slot.items()}
        n = len(by_slot)
        holes = sorted(s for s in self._free if s < n)
        movers = sorted((s for s in by_slot if s >= n), reverse=True)
        for hole, src in zip(holes, movers):
            key = by_slot[src]
            self._free.remove(hole)
            self._cached.pop(hole, None)
            self._last_used.pop(hole, None)
            self.lc.llama_memory_seq_rm(self.mem, hole, -1, -1)
            self.lc.llama_memory_seq_cp(self.mem, src, hole, -1, -1)
            self.lc.llama_memory_seq_rm(self.mem, src, -1, -1)
            self._slot[key] = hole
            self._free.append(src)

    def close(self) -> None:
        with self._lock:
            if getattr(self, "ctx", None):
                self.lc.llama_free(self.ctx)
                self.ctx = None
            if getattr(self, "model", None):
                self.lc.llama_model_free(self.model)
                self.model = None

    # -- internals ---------------------------------------------------------------------------
    def _decode(self, tokens: Any, pos: Any, seq: Any, want: Any) -> None:
        with self._lock:
            if not self.ctx:
                raise AutoGLMError("the llama.cpp context is closed")
            rc = self.lc.llama_decode(self.ctx, self._batch.fill(tokens, pos, seq, want))
        if rc != 0:
            raise AutoGLMError(f"llama_decode failed with code {rc} on a batch of {len(tokens)} tokens "
                               "(1 means the KV cache is full: raise --max-model-len)")

    def _logits(self, n_out: int) -> Any:
        """A copy of the last decode's ``n_out`` rows of logits ``[n_out, V]`` (float32, batch order).

        The views onto llama.cpp's output buffer are kept per row count while the buffer stays
        where it is (building one through ctypes costs more than the copy at one row)."""
        import numpy as np
        import torch

        ptr = self.lc.llama_get_logits(self.ctx)  # the outputs of the last decode, in batch order
        addr = ctypes.cast(ptr, ctypes.c_void_p).value
        if addr != self._logits_addr:  # llama.cpp (re)allocated its outputs: the old views are stale
            self._logits_addr, self._logits_views = addr, {}
        view = self._logits_views.get(n_out)
        if view is None:
            view = torch.from_numpy(np.ctypeslib.as_array(ptr, shape=(n_out, self.n_vocab)))
            self._logits_views[n_out] = view
        return view.clone()


@register_engine("llamacpp")
class LlamaCppEngine(LoopEngine):
    def __init__(self, settings: EngineSettings):
        super().__init__(settings.name, max_num_seqs=settings.max_num_seqs, max_queue=settings.max_queue,
                         request_timeout=settings.request_timeout)
        self.settings = settings

    def _load(self) -> LoadedModel:
        return load_llamacpp_model(self.settings)

    def _make_runner(self, loaded: LoadedModel) -> Any:
        return loaded.model  # the loader already built the LlamaCppRunner

    async def shutdown(self) -> None:
        await super().shutdown()
        if self.core is not None:
            self.core.runner.close()


def _tokenizer_dir(gguf_path: Path) -> Path | None:
    """The Hugging Face directory whose tokenizer matches ``gguf_path``; None: use the GGUF's own."""
    side = gguf_path.with_name(gguf_path.name + ".json")
    if side.is_file():
        try:
            source = Path(json.loads(side.read_text(encoding="utf-8"))["source"])
            if (source / "tokenizer_config.json").is_file() or (source / "tokenizer.json").is_file():
                return source
        except (OSError, ValueError, KeyError):
            pass
    if (gguf_path.parent / "tokenizer.json").is_file() and (gguf_path.parent / "config.json").is_file():
        return gguf_path.parent
    return None


def load_llamacpp_model(settings: EngineSettings) -> LoadedModel:
    """Find, fetch or convert the GGUF, load it into llama.cpp, load its tokenizer: the source model's
    Hugging Face tokenizer where it is known (converted by us, or its files beside the GGUF), else the
    tokenizer and chat template stored in the GGUF itself (a bare GGUF, or a hub repo of GGUF files
    named ``org/repo:TAG``)."""
    from autoglm.hub.gguf_repo import fetch_gguf, parse_gguf_ref
    from autoglm.quantization.gguf import ensure_gguf, require_llama_cpp

    lc = require_llama_cpp()  # before any conversion work
    raw = Path(settings.model).expanduser()
    spec = None
    gpu_layers = 0
    if settings.device in ("auto", "cuda", "mps") and lc.llama_supports_gpu_offload():
        gpu_layers = 10**6  # all of them
    ref = parse_gguf_ref(settings.model)
    if settings.model.endswith(".gguf") or ref is not None:
        if ref is not None:
            gguf_path = fetch_gguf(ref, settings).resolve()
        elif not raw.is_file():
            raise ModelNotFoundError(f"GGUF file {settings.model!r} does not exist")
        else:
            gguf_path = raw.resolve()
        source = _tokenizer_dir(gguf_path)
        gguf_type = "file"
        file_type = _file_type(gguf_path)
        _check_cpu(settings, gpu_layers, file_type or "q8_0")  # a type the probe cannot write probes as q8_0
    else:
        from autoglm.hub.resolve import resolve_model

        resolved = resolve_model(settings.model, settings)
        spec = resolved.spec
        gguf_type = gguf_type_for(settings.quantize, resolved.path)
        _check_cpu(settings, gpu_layers, gguf_type)  # before a large model is converted for nothing
        converted = ensure_gguf(settings.model, settings, gguf_type)
        gguf_path, source = converted.path, converted.source
        file_type = None
        log.info("llamacpp: %s (%s, %.1f MiB%s)", gguf_path, gguf_type, converted.size / 2**20,
                 ", cached" if converted.cached else "")

    tokenizer, limit, eos_ids = _tokenizer_and_limits(gguf_path, source)
    max_model_len = settings.max_model_len or min(limit, 4096)
    if max_model_len > limit:
        raise ConfigError(f"max_model_len {max_model_len} exceeds the model's limit of {limit} tokens")
    weights_f32 = gguf_type == "f32" or (gguf_type == "file" and file_type == "f32")
    runner = LlamaCppRunner(gguf_path, max_model_len=max_model_len, max_num_seqs=settings.max_num_seqs,
                            n_threads=settings.num_threads, gpu_layers=gpu_layers, kv_f32=weights_f32)
    description = getattr(spec, "description", "") or "" if spec is not None else ""
    return LoadedModel(
        model=runner,
        tokenizer=tokenizer,
        max_model_len=max_model_len,
        eos_token_ids=eos_ids,
        device="cpu" if not gpu_layers else "gpu",
        description=description,
        info={"path": str(gguf_path), "gguf_type": gguf_type,
              "source": str(source) if source is not None else "gguf metadata",
              "engine": "llamacpp", "gpu_layers": gpu_layers},
    )


def _tokenizer_and_limits(gguf_path: Path, source: Path | None) -> tuple[Any, int, list[int]]:
    """``(tokenizer, context limit, ids that end a generation)`` from the source directory, or from the
    GGUF's metadata when there is none (:mod:`autoglm.quantization.gguf_tokenizer`)."""
    if source is None:
        from autoglm.quantization.gguf_tokenizer import gguf_model_info, tokenizer_from_gguf

        info = gguf_model_info(gguf_path)
        tokenizer = tokenizer_from_gguf(gguf_path)
        eos = info["eos_token_ids"] or ([tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else [])
        log.info("llamacpp: %s carries its own tokenizer (%d tokens%s)", gguf_path.name, len(tokenizer),
                 ", chat template" if info["chat_template"] else ", no chat template")
        return tokenizer, int(info["context_length"]), eos
    from transformers import AutoConfig, AutoTokenizer

    from autoglm.engine.backends.transformers import eos_token_ids

    config = AutoConfig.from_pretrained(source)
    limit = int(getattr(config.get_text_config(), "max_position_embeddings", 4096) or 4096)
    tokenizer = AutoTokenizer.from_pretrained(source)
    return tokenizer, limit, eos_token_ids(source, config, tokenizer)


def _check_cpu(settings: EngineSettings, gpu_layers: int, gguf_type: str) -> None:
    """A child-process probe of llama.cpp's CPU kernels for ``gguf_type`` where they may crash the server
    (a CPU that reports AMX; :mod:`~autoglm.engine.backends.llamacpp_probe`). Every layer on the GPU: the
    CPU matmul kernels never run, nothing to probe."""
    if not gpu_layers:
        from autoglm.engine.backends.llamacpp_probe import check_llamacpp_cpu

        check_llamacpp_cpu(gguf_type, settings)


def _file_type(path: Path) -> str | None:
    """A GGUF's type by llama.cpp's name (``f32``, ``f16``, ``q8_0``, ``q4_k_m``, ...); None when it has none or
    cannot be read (llama.cpp reports an unreadable file when it loads it)."""
    try:
        from autoglm.quantization.gguf_tokenizer import gguf_model_info

        return gguf_model_info(path)["type"]
    except Exception:  # noqa: BLE001 - an unreadable header is llama.cpp's to report
        return None
