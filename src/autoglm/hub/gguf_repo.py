"""A hub repository of GGUF files, named the way llama-server (``-hf``) and Ollama name one:
``org/repo:TAG`` (also ``hf.co/org/repo:TAG``), where ``TAG`` is a quantization (``Q4_K_M``, ``Q8_0``,
``F16``, ...) that picks one file — or one split set, ``...-00001-of-00003.gguf`` — out of the many
such a repository holds. Without a tag (``org/repo`` of a repository that has GGUF files and no
safetensors) the first of :data:`DEFAULT_TAGS` the repository has is taken, Q4_K_M first as
llama-server does.

:func:`fetch_gguf` downloads only the chosen files (progress on stderr) into the model store,
``<store>/models/huggingface/<org>--<repo>:<TAG>/<revision>/``, marks the directory complete when every
file is there (an interrupted download is resumed by the same command, never served half-written) and
returns the path of the file llama.cpp loads (the first split). Offline, a complete copy is served and a
missing one is one clear error. Knows nothing about engines: the llama.cpp loader calls it.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, NamedTuple

from autoglm.errors import DownloadError, ModelNotFoundError

__all__ = ["DEFAULT_TAGS", "GGUFRef", "parse_gguf_ref", "select_gguf", "fetch_gguf", "quant_tags"]

_REF = re.compile(r"^(?:(?:https?://)?(?:hf\.co|huggingface\.co)/)?([A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)"
                  r"(?::([A-Za-z0-9][\w.-]*))?$")
_SPLIT = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$", re.IGNORECASE)
# What a repository's file names call their quantization (llama.cpp's type names, any case)
_TAG_IN_NAME = re.compile(r"(?<![A-Za-z0-9])((?:I?Q\d(?:_[A-Z0-9]+)*)|BF16|F16|F32)(?![A-Za-z0-9])", re.IGNORECASE)
DEFAULT_TAGS = ("Q4_K_M", "Q4_0", "Q5_K_M", "Q8_0", "Q6_K", "F16", "BF16", "F32")


class GGUFRef(NamedTuple):
    """A GGUF repo reference; ``tag`` is None when the name gave none."""

    repo_id: str
    tag: str | None


def parse_gguf_ref(name: str) -> GGUFRef | None:
    """``org/repo:TAG`` or ``hf.co/org/repo[:TAG]`` -> its parts; None for anything else (a plain
    ``org/repo`` is a GGUF repository only when its files say so: see :func:`fetch_gguf`)."""
    m = _REF.match((name or "").strip())
    if m is None:
        return None
    explicit_host = name.strip().split("/", 1)[0].lower() in ("hf.co", "huggingface.co", "https:", "http:")
    if m.group(2) is None and not explicit_host:
        return None
    return GGUFRef(m.group(1), m.group(2))


def _is_model_gguf(name: str) -> bool:
    base = name.rsplit("/", 1)[-1].lower()
    return base.endswith(".gguf") and not base.startswith(("mmproj", "imatrix"))


def quant_tags(names: list[str]) -> list[str]:
    """The quantization tags a repository's GGUF file names carry, upper-case, sorted."""
    seen: list[str] = []
    for n in names:
        if _is_model_gguf(n):
            for t in _TAG_IN_NAME.findall(n.rsplit("/", 1)[-1]):
                if t.upper() not in seen:
                    seen.append(t.upper())
    return sorted(seen)


def select_gguf(names: list[str], tag: str | None, repo_id: str = "the repository") -> list[str]:
    """The files to fetch for ``tag`` (all splits of one set, in order; the first is what llama.cpp loads).
    ``tag`` None: the first of :data:`DEFAULT_TAGS` present. A tag no file carries, or one that several
    different files carry, is a :class:`ModelNotFoundError` listing what the repository has."""
    ggufs = sorted(n for n in names if _is_model_gguf(n))
    if not ggufs:
        raise ModelNotFoundError(f"{repo_id} has no GGUF model files")
    have = quant_tags(ggufs)
    if tag is None:
        tag = next((t for t in DEFAULT_TAGS if t in have), None) or (have[0] if have else None)
        if tag is None:
            if len(ggufs) == 1:
                return ggufs
            raise ModelNotFoundError(f"{repo_id} has several GGUF files and no quantization tags in their names; "
                                     f"name one: {', '.join(ggufs[:6])}")
    want = tag.upper()
    matching = [n for n in ggufs if want in (t.upper() for t in _TAG_IN_NAME.findall(n.rsplit("/", 1)[-1]))]
    if not matching:
        raise ModelNotFoundError(f"{repo_id} has no GGUF file tagged {tag}; it has: {', '.join(have) or 'untagged files'}")
    sets: dict[str, list[str]] = {}
    for n in matching:
        m = _SPLIT.search(n)
        sets.setdefault(n[:m.start()] if m else n, []).append(n)
    if len(sets) > 1:
        raise ModelNotFoundError(f"{repo_id} has several files tagged {tag} ({', '.join(sorted(sets)[:4])}); "
                                 "download the one you want and serve its path")
    (files,) = sets.values()
    files.sort()
    m = _SPLIT.search(files[0])
    if m is not None and len(files) != int(m.group(2)):
        raise ModelNotFoundError(f"{repo_id}: {files[0]} is split in {int(m.group(2))} parts but the repository "
                                 f"lists {len(files)}")
    return files


def fetch_gguf(ref: GGUFRef, settings: Any, progress: bool = True) -> Path:
    """Download the GGUF file(s) ``ref`` names into the store (once) and return the path llama.cpp loads."""
    from autoglm.hub.download import _short, default_revision, hf_endpoint
    from autoglm.hub.store import ModelStore

    store = ModelStore(settings.store_dir)
    revision = getattr(settings, "revision", None) or default_revision("huggingface")
    key = f"{ref.repo_id}:{(ref.tag or 'default').upper()}"
    target = store.path_for("huggingface", key, revision)
    if store.is_complete(target):
        marker = store.read_marker(target) or {}
        first = target / (marker.get("files") or [""])[0]
        if first.is_file():
            return first
    if getattr(settings, "offline", False):
        raise ModelNotFoundError(f"{ref.repo_id}{':' + ref.tag if ref.tag else ''} is not in the store "
                                 f"({store.models_dir}) and autoglm is offline (AUTOGLM_OFFLINE / HF_HUB_OFFLINE)")
    try:
        from huggingface_hub import HfApi, hf_hub_download
    except ImportError as exc:  # a core dependency, but say what to do if it is gone
        raise DownloadError("huggingface_hub is not installed; run `pip install autoglm` again") from exc
    endpoint = hf_endpoint(settings)
    try:
        info = HfApi(endpoint=endpoint).model_info(ref.repo_id, revision=revision)
    except Exception as exc:  # noqa: BLE001 - every failure is one line
        raise DownloadError(f"cannot list {ref.repo_id} at {endpoint}: {_short(exc)}") from None
    files = select_gguf([s.rfilename for s in (info.siblings or [])], ref.tag, ref.repo_id)
    target.mkdir(parents=True, exist_ok=True)
    for name in files:
        try:
            hf_hub_download(ref.repo_id, name, revision=info.sha or revision, local_dir=target, endpoint=endpoint)
        except Exception as exc:  # noqa: BLE001
            raise DownloadError(f"download of {name} from {ref.repo_id} failed: {_short(exc)} "
                                "(run the same command to resume)") from None
    store.mark_complete(target, source="huggingface", repo_id=key, tag=ref.tag, revision=revision,  # listed as org/repo:TAG
                        endpoint=endpoint, commit=info.sha, files=files)
    return target / files[0]
