"""A LoRA version built on the base a replica already holds in memory, instead of a reload from disk.

:func:`locate` turns a swap's source into a local directory when it is one (``models:/NAME@ALIAS`` is
downloaded once by :func:`~autoglm.registry.models.resolve_registered_model`; a model id is None:
the hub resolves it). For an adapter directory (``adapter_config.json``, no ``config.json``) whose
base is the model the running replicas loaded, :func:`adapter_engines` returns new engines that copy
the loaded model and add the adapter's deltas ``W += B @ A * alpha / r`` to the weights they touch
(through the fused ``qkv_proj`` when the Q/K/V projections were fused at load): no weights are read
from disk but the adapter's few megabytes, and the copy shares every weight the adapter does not touch
with the old replica (only the touched layers are new memory). A replica that already serves an adapter over the same
base has that adapter's deltas taken out first, so each promoted LoRA version swaps in this way. When that is not possible it says why (a quantized base,
another base, DoRA or per-module ranks, a non-transformers engine) and the caller loads in full.

On vLLM the adapter is added to the running engine (``add_lora``) and requests carry it
(:mod:`autoglm.deploy.vllm_adapter`); that path needs an engine started with LoRA enabled and is
untested without a GPU. Knows engines' loaded models and peft's file layout; not routing or HTTP.
"""
from __future__ import annotations

import copy
import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from autoglm.config import EngineSettings
from autoglm.errors import ModelNotFoundError
from autoglm.hub.adapters import MERGED_FROM_FILE, is_adapter_dir

__all__ = ["locate", "is_adapter_dir", "adapter_engines", "adapter_engine", "plan_merge", "apply_merge",
           "root_engine", "Merge"]

log = logging.getLogger("autoglm.deploy")

_PREFIX = "base_model.model."


def locate(source: str, settings: EngineSettings) -> Path | None:
    """The local directory ``source`` names (a registry version is downloaded once), or None for a
    model id the hub resolves. A path that does not exist is a ModelNotFoundError."""
    from autoglm.hub.resolve import _looks_like_path

    if source.startswith("models:/"):
        from autoglm.config import tracking_uri
        from autoglm.registry.models import resolve_registered_model

        d = resolve_registered_model(source, tracking_uri(settings.store_dir), settings.store_dir)
        if not (d / "config.json").is_file() and not is_adapter_dir(d) and (d / "model").is_dir():
            d = d / "model"
        return d
    p = Path(source).expanduser()
    if p.is_dir():
        return p.resolve()
    if _looks_like_path(source):
        raise ModelNotFoundError(f"local model directory {source!r} does not exist; check the path")
    return None


def root_engine(engine: Any) -> Any:
    """The engine that owns the weights ``engine`` runs on (itself, but for a vLLM adapter view)."""
    return getattr(engine, "root_engine", None) or engine


@dataclass
class Merge:
    """One adapter delta: ``module`` (a dotted path) ``.weight[rows] += B @ A * scale``."""

    module: str
    rows: tuple[int, int] | None  # a slice of a fused qkv_proj's rows; None: the whole weight
    a: Any  # [r, in]
    b: Any  # [out, r]
    scale: float
    undo: bool = False  # taking an earlier adapter's delta out (scale negated)


def _adapter_config(adapter: Path) -> dict[str, Any]:
    try:
        return json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelNotFoundError(f"{adapter}/adapter_config.json cannot be read: {exc}") from None


def _fused_rows(attn: Any, proj: str) -> tuple[int, int] | None:
    d, hq, hkv = attn.head_dim, attn.num_heads, attn.num_kv_heads
    q, kv = hq * d, hkv * d
    return {"q_proj": (0, q), "k_proj": (q, q + kv), "v_proj": (q + kv, q + 2 * kv)}.get(proj)


def plan_merge(model: Any, adapter: Path) -> tuple[list[Merge] | None, str]:
    """The deltas of ``adapter`` mapped onto ``model``'s modules, or (None, why not)."""
    from safetensors.torch import load_file
    from torch import nn

    meta = _adapter_config(adapter)
    if str(meta.get("peft_type", "LORA")).upper() != "LORA":
        return None, f"the adapter is {meta.get('peft_type')}, not LoRA"
    if meta.get("use_dora") or meta.get("rank_pattern") or meta.get("alpha_pattern") or meta.get("modules_to_save"):
        return None, "the adapter uses DoRA, per-module ranks or saved modules"
    file = adapter / "adapter_model.safetensors"
    if not file.is_file():
        return None, "the adapter has no adapter_model.safetensors"
    tensors = load_file(str(file))
    r, alpha = int(meta.get("r", 8)), float(meta.get("lora_alpha", 8))
    scale = alpha / (r ** 0.5) if meta.get("use_rslora") else alpha / r
    modules = dict(model.named_modules())
    merges: list[Merge] = []
    for key in sorted(tensors):
        if not key.endswith(".lora_A.weight"):
            if not key.endswith(".lora_B.weight"):
                return None, f"the adapter holds {key!r}, which is not a LoRA A/B matrix"
            continue
        path = key[: -len(".lora_A.weight")]
        path = path[len(_PREFIX):] if path.startswith(_PREFIX) else path
        b = tensors.get(key.replace(".lora_A.weight", ".lora_B.weight"))
        if b is None:
            return None, f"{key} has no lora_B"
        a = tensors[key]
        target, rows = modules.get(path), None
        if target is None:  # fused at load: q/k/v_proj are rows of the attention's qkv_proj
            parent, _, proj = path.rpartition(".")
            attn = modules.get(parent)
            fused = getattr(attn, "qkv_proj", None)
            rows = _fused_rows(attn, proj) if fused is not None else None
            if rows is None:
                return None, f"the loaded model has no module {path!r} the adapter changes"
            target, path = fused, f"{parent}.qkv_proj"
        if type(target) is not nn.Linear:
            return None, f"{path} is a {type(target).__name__} (the loaded base is quantized), not a plain Linear"
        out = (rows[1] - rows[0]) if rows else target.weight.shape[0]
        if tuple(b.shape) != (out, a.shape[0]) or a.shape[1] != target.weight.shape[1]:
            return None, f"the adapter's {path} matrices do not fit the loaded model's shapes (another base?)"
        merges.append(Merge(path, rows, a, b, scale))
    if not merges:
        return None, "the adapter holds no LoRA matrices"
    return merges, ""


def apply_merge(model: Any, merges: list[Merge]) -> None:
    """Add each delta to its weight in place (``model`` is a copy nobody serves yet)."""
    import torch

    modules = dict(model.named_modules())
    with torch.no_grad():
        for m in merges:
            w = modules[m.module].weight
            delta = (m.b.to(torch.float32) @ m.a.to(torch.float32)) * m.scale  # [out, in]
            if m.rows is None:
                w.add_(delta.to(device=w.device, dtype=w.dtype))
            else:
                w[m.rows[0]:m.rows[1]].add_(delta.to(device=w.device, dtype=w.dtype))


def copy_sharing_untouched(model: Any, touched: set[str]) -> Any:
    """A copy of ``model`` whose modules named in ``touched`` have weights of their own and every other
    parameter and buffer is the very tensor ``model`` has (serving never writes weights, so the two
    can share them): the copy costs the adapter's layers, not the whole model's memory."""
    memo: dict[int, Any] = {}
    for name, module in model.named_modules():
        if name not in touched:
            for p in module.parameters(recurse=False):
                memo[id(p)] = p
        for b in module.buffers(recurse=False):
            memo[id(b)] = b
    return copy.deepcopy(model, memo)


def _same_dir(a: str | Path | None, b: str | Path | None) -> bool:
    if not a or not b:
        return False
    try:
        return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()
    except OSError:
        return False


def _digest(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def same_model(a: str | Path | None, b: str | Path | None) -> bool:
    """The same directory, or two directories with the same weights (e.g. the base and its copy in the
    registry): equal config.json, the same weight files with the same bytes. Reading the weights once
    costs less than loading them, which is what a mismatch leads to."""
    if _same_dir(a, b):
        return True
    if not a or not b:
        return False
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    try:
        if not (pa / "config.json").is_file() or (pa / "config.json").read_bytes() != (pb / "config.json").read_bytes():
            return False
        weights = sorted(p.name for p in pa.iterdir() if p.suffix in (".safetensors", ".bin"))
        if not weights or weights != sorted(p.name for p in pb.iterdir() if p.suffix in (".safetensors", ".bin")):
            return False
        if any((pa / w).stat().st_size != (pb / w).stat().st_size for w in weights):
            return False
        return all(_digest(pa / w) == _digest(pb / w) for w in weights)
    except OSError:
        return False


def adapter_engines(old_engines: list[Any], adapter: Path, settings: EngineSettings) -> tuple[list[Any] | None, str]:
    """New engines serving ``adapter`` on the base ``old_engines`` hold, or (None, why not)."""
    meta = _adapter_config(adapter)
    base = meta.get("base_model_name_or_path")
    first = old_engines[0]
    if type(first).__name__ == "VllmEngine" or getattr(first, "root_engine", None) is not None:
        from autoglm.deploy.vllm_adapter import vllm_adapter_engines

        return vllm_adapter_engines(old_engines, adapter, settings)
    from autoglm.engine.loop import LoopEngine

    if not all(isinstance(e, LoopEngine) and getattr(e, "core", None) is not None for e in old_engines):
        return None, f"the {type(first).__name__} engine has no model in memory to build on"
    info = getattr(first, "info", None) or {}
    model = first.core.runner.model
    undo: list[Merge] = []  # an earlier adapter merged into the loaded model: its deltas come out first
    merged_from = Path(str(info.get("path") or "")) / MERGED_FROM_FILE
    if info.get("adapter"):  # built here by an earlier swap
        if not hasattr(first, "applied_merges"):
            return None, "the loaded model has an adapter merged in whose deltas are not known"
        loaded = info.get("base_path")
        undo = [replace(m, scale=-m.scale, undo=True) for m in first.applied_merges]
    elif info.get("path") and merged_from.is_file():  # served from an adapter merged on disk at start
        try:
            origin = json.loads(merged_from.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None, f"{merged_from} cannot be read"
        old_adapter = Path(str(origin.get("adapter", "")))
        if not is_adapter_dir(old_adapter):
            return None, f"the adapter merged into the loaded model ({old_adapter}) is gone"
        old, why = plan_merge(model, old_adapter)
        if old is None:
            return None, why
        loaded = origin.get("base")
        undo = [replace(m, scale=-m.scale, undo=True) for m in old]
    else:
        loaded = info.get("path")
    if not same_model(base, loaded):
        if base and not Path(str(base)).expanduser().is_dir():
            try:
                from autoglm.hub.resolve import resolve_model

                base = resolve_model(str(base), settings, progress=False).path
            except Exception:  # noqa: BLE001 - an unknown base is simply not the loaded one
                return None, f"its base {meta.get('base_model_name_or_path')!r} does not resolve"
        if not same_model(base, loaded):
            return None, f"its base {meta.get('base_model_name_or_path')!r} is not the loaded model's ({loaded})"
    merges, why = plan_merge(model, adapter)
    if merges is None:
        return None, why
    return [adapter_engine(replace(settings, model=str(adapter)), e, adapter, [*undo, *merges])
            for e in old_engines], ""


_ADAPTER_CLASS: type | None = None


def adapter_engine(settings: EngineSettings, base: Any, adapter: Path, merges: list[Merge]) -> Any:
    """A transformers engine serving ``base``'s model with ``merges`` added (built when it starts)."""
    return _adapter_engine_class()(settings, base, adapter, merges)


def _adapter_engine_class() -> type:
    global _ADAPTER_CLASS
    if _ADAPTER_CLASS is not None:
        return _ADAPTER_CLASS
    from autoglm.engine.backends.transformers import TransformersEngine  # lazy: torch

    class TransformersAdapterEngine(TransformersEngine):
        """A transformers engine whose model is a copy of ``base``'s with ``merges`` added; the copy and
        the merge run in this engine's own thread (the one that then runs its steps)."""

        engine_kind = "transformers"

        def __init__(self, settings: EngineSettings, base: Any, adapter: Path, merges: list[Merge]):
            super().__init__(settings)
            self._base, self._adapter, self._merges_todo = base, adapter, merges
            self.applied_merges: list[Merge] = []  # this adapter's own deltas (a next swap takes them out)

        def _load(self) -> Any:
            from transformers import AutoTokenizer

            from autoglm.engine.loop import LoadedModel

            base = self._base
            if base.core is None:
                raise RuntimeError("the base engine stopped before its copy was made")
            model = copy_sharing_untouched(base.core.runner.model, {m.module for m in self._merges_todo})
            apply_merge(model, self._merges_todo)
            model.eval()
            tok_dir = self._adapter if (self._adapter / "tokenizer.json").is_file() else base.info.get("path")
            tokenizer = AutoTokenizer.from_pretrained(tok_dir)  # its own: a tokenizer is not shared across threads
            info = {**base.info, "path": str(self._adapter), "adapter": str(self._adapter),
                    "base_path": base.info.get("base_path") or base.info.get("path")}
            self.applied_merges = [m for m in self._merges_todo if not m.undo]
            self._base, self._merges_todo = None, []  # the copy is made: do not keep the old engine alive
            return LoadedModel(model=model, tokenizer=tokenizer, max_model_len=base.max_model_len,
                               eos_token_ids=list(base.eos_token_ids), device=base.core.runner.device,
                               description=base.description, info=info)

    _ADAPTER_CLASS = TransformersAdapterEngine
    return _ADAPTER_CLASS
