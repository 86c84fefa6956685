"""Serve a LoRA adapter directory (``adapter_config.json`` beside its weights) as a model.

``autoglm serve --model ./my-adapter`` works whatever engine serves it: the adapter is merged into
its base once and the merged copy is kept in the store under ``merged/``, keyed by the adapter's
bytes, so the next start loads it directly. The base named in ``adapter_config.json``
(``base_model_name_or_path``: a directory, an alias or a repo id) is resolved like any ``--model``.
Needs peft (the ``train`` extra). Knows nothing about engines.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

from autoglm._filelock import exclusive_lock
from autoglm.errors import ConfigError, ModelNotFoundError

__all__ = ["is_adapter_dir", "merged_adapter", "MERGED_FROM_FILE"]

MERGED_FROM_FILE = "autoglm_merged_from.json"  # {"adapter": dir, "base": dir} in a merged copy

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                    "chat_template.json", "generation_config.json")


def is_adapter_dir(path: Path) -> bool:
    return (path / "adapter_config.json").is_file() and not (path / "config.json").is_file()


def _digest(adapter: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    for f in sorted(p for p in adapter.iterdir() if p.is_file()):
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def merged_adapter(adapter: Path, store_dir: Path, resolve_base: Callable[[str], Path]) -> Path:
    """The directory of ``adapter`` merged into its base (built on first use)."""
    try:
        meta: dict[str, Any] = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelNotFoundError(f"{adapter}/adapter_config.json cannot be read: {exc}") from None
    base_name = meta.get("base_model_name_or_path")
    if not base_name:
        raise ModelNotFoundError(f"{adapter}/adapter_config.json names no base model "
                                 "(base_model_name_or_path); set it to the base model's directory or alias")
    target = store_dir / "merged" / f"{adapter.name}-{_digest(adapter)}"
    if (target / "config.json").is_file():
        return target
    base = resolve_base(str(base_name))
    target.parent.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(target.parent / f".{target.name}.lock", what="merging this adapter"):
        if (target / "config.json").is_file():
            return target
        try:
            from peft import PeftModel
        except ImportError:
            raise ConfigError(f'{adapter} is a LoRA adapter; serving it needs peft: '
                              'pip install -c constraints.txt -e ".[train]"') from None
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = AutoModelForCausalLM.from_pretrained(base, dtype="auto")
        model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".merge-"))
        try:
            model.save_pretrained(tmp)
            source = adapter if (adapter / "tokenizer.json").is_file() else base
            AutoTokenizer.from_pretrained(source).save_pretrained(tmp)
            for name in _TOKENIZER_FILES:  # keep the adapter's (or base's) template and generation defaults
                for d in (base, adapter):
                    if (d / name).is_file():
                        shutil.copy2(d / name, tmp / name)
            # what was merged: a live swap to the next adapter over this base takes these deltas out (deploy.adapter_swap)
            (tmp / MERGED_FROM_FILE).write_text(json.dumps({"adapter": str(adapter), "base": str(base)}), encoding="utf-8")
            tmp.rename(target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target
