"""Turn whatever the user typed after ``--model`` into a directory ``from_pretrained`` can load.

Order, first hit wins:

0. ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``: a version in the MLflow model registry
   (``MLFLOW_TRACKING_URI``, default the SQLite store under ``$AUTOGLM_HOME``), downloaded once;
1. an existing local directory (``./my-model``, ``C:\\models\\glm``): used as is, never copied; a LoRA
   adapter directory is merged into its base once (:mod:`autoglm.hub.adapters`);
2. a demo model (``autoglm-demo``...): built locally by :mod:`autoglm.hub.demo` on first use;
3. an alias or ``org/name`` repo id already complete in the store;
4. a download, Hugging Face first then ModelScope (``settings.source`` pins one), unless offline;
5. otherwise one :class:`DownloadError` saying what was tried and how to point at a local copy.

A name that is neither a directory, an alias nor an ``org/name`` id is a :class:`ModelNotFoundError` that
lists the aliases. This module knows nothing about loading weights or about HTTP details.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from autoglm.config import EngineSettings
from autoglm.errors import ConfigError, ModelNotFoundError
from autoglm.hub.download import Candidate, default_revision, download_first, unreachable_error
from autoglm.hub.registry import ModelSpec, list_models, resolve_name
from autoglm.hub.store import ModelStore

__all__ = ["ResolvedModel", "resolve_model", "candidates_for", "SOURCE_CHOICES"]

SOURCE_CHOICES = ("auto", "huggingface", "modelscope", "local")
# org/name as both hubs allow them: letters, digits, '-', '_', '.'; no '..', no leading/trailing separators.
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*/[A-Za-z0-9][A-Za-z0-9_.\-]*$")


@dataclass(frozen=True)
class ResolvedModel:
    """Where a model's files are, and what we know about it."""

    path: Path  # a directory with config.json, tokenizer files and weights
    spec: ModelSpec | None
    source: str  # local | demo | huggingface | modelscope
    name: str  # what the user asked for

    def _replace_name(self, name: str) -> "ResolvedModel":
        return ResolvedModel(self.path, self.spec, self.source, name)


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "~", "/", "\\")) or "\\" in name or (len(name) > 1 and name[1] == ":")


def _alias_help() -> str:
    return ", ".join(s.name for s in list_models())


def _repo_id_for(name: str, spec: ModelSpec | None) -> str | None:
    if spec is not None:
        return spec.hf_repo or spec.modelscope_repo
    return name if _REPO_ID.match(name) and ".." not in name else None


def candidates_for(name: str, spec: ModelSpec | None, source: str = "auto") -> list[Candidate]:
    """The (source, repo id) pairs to try for ``name``, in order, honouring a pinned ``source``."""
    if source not in SOURCE_CHOICES:
        raise ConfigError(f"unknown source {source!r}; use one of {', '.join(SOURCE_CHOICES)}")
    if spec is not None:
        pairs = [("huggingface", spec.hf_repo), ("modelscope", spec.modelscope_repo)]
    else:
        pairs = [("huggingface", name), ("modelscope", name)]
    return [Candidate(s, repo) for s, repo in pairs if repo and source in ("auto", s)]


def resolve_model(name: str, settings: EngineSettings, progress: bool = True) -> ResolvedModel:
    """Find or fetch ``name`` (see the module docstring for the order)."""
    raw = (name or "").strip()
    if not raw:
        raise ModelNotFoundError(f"no model name given; use an alias ({_alias_help()}), an org/name repo id "
                                 "or a local directory")
    if raw.startswith("models:/"):
        from autoglm.config import tracking_uri
        from autoglm.registry.models import resolve_registered_model

        path = resolve_registered_model(raw, tracking_uri(settings.store_dir), settings.store_dir)
        return resolve_model(str(path), settings, progress)._replace_name(raw)
    local = Path(raw).expanduser()
    if local.is_dir() and (local / "adapter_config.json").is_file() and not (local / "config.json").is_file():
        from autoglm.hub.adapters import merged_adapter

        merged = merged_adapter(local.resolve(), settings.store_dir,
                                lambda base: resolve_model(base, settings, progress).path)
        return ResolvedModel(path=merged, spec=None, source="local", name=raw)
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise ModelNotFoundError(f"{str(local)!r} is a directory but has no config.json; point --model at "
                                     "the folder that holds config.json, the tokenizer files and the weights")
        return ResolvedModel(path=local.resolve(), spec=None, source="local", name=raw)
    if _looks_like_path(raw) or settings.source == "local":
        raise ModelNotFoundError(f"local model directory {raw!r} does not exist; check the path, or use an alias "
                                 f"({_alias_help()})")

    spec = resolve_name(raw)
    if spec is not None and spec.is_demo:
        from autoglm.hub.demo import ensure_demo_model  # lazy: builds with torch only when asked for

        return ResolvedModel(path=Path(ensure_demo_model(spec.name, settings.store_dir)), spec=spec,
                             source="demo", name=raw)

    repo_id = _repo_id_for(raw, spec)
    if repo_id is None and spec is None:
        from autoglm.hub.gguf_repo import parse_gguf_ref

        if parse_gguf_ref(raw) is not None:
            raise ModelNotFoundError(f"{raw!r} names a hub repository of GGUF files (org/repo:TAG): the llama.cpp "
                                     "engine serves it (--engine llamacpp or auto)")
    if repo_id is None:
        raise ModelNotFoundError(
            f"unknown model {raw!r}: not a local directory, not a known alias and not an org/name repo id. "
            f"Known aliases: {_alias_help()}. Run `autoglm models` to see them and what is downloaded."
        )

    store = ModelStore(settings.store_dir)
    candidates = candidates_for(raw, spec, settings.source)
    for cand in candidates:
        rev = settings.revision or default_revision(cand.source)
        path = store.path_for(cand.source, cand.repo_id, rev)
        if store.is_complete(path):
            return ResolvedModel(path=path, spec=spec, source=cand.source, name=raw)
    if settings.offline:
        # Offline, accept any complete revision of the repo rather than failing on the default branch name.
        hit = None
        if settings.revision is None:
            hit = next((h for c in candidates if (h := store.find(c.repo_id, None, (c.source,)))), None)
        if hit is not None:
            return ResolvedModel(path=hit.path, spec=spec, source=hit.source, name=raw)
        raise unreachable_error(raw, [], store, offline=True)

    stored = download_first(raw, candidates, store, settings, revision=settings.revision, progress=progress)
    return ResolvedModel(path=stored.path, spec=spec, source=stored.source, name=raw)
