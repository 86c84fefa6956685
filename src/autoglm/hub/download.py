"""Fetch a causal LM's files from Hugging Face or ModelScope into the local store.

Each downloader takes a repo id, an endpoint and a target directory of the store, fetches only what a
causal LM needs (config, generation config, tokenizer files, chat template, ``*.safetensors`` and their
index; ``*.bin`` only when the repo has no safetensors; nothing else), and returns a small dict that the
store writes into the directory's completion marker.

* Hugging Face goes through ``huggingface_hub.snapshot_download(endpoint=..., local_dir=...)``: files that
  finished in an earlier run are kept (per-file metadata under ``.cache/huggingface``), and a connection cut
  in the middle of a file is resumed with a ``Range`` request by the client's retry loop.
* ModelScope goes over its REST API with httpx: ``GET /api/v1/models/{repo}/repo/files?Revision=&Recursive=true``
  lists the files, ``GET /api/v1/models/{repo}/repo?Revision=&FilePath=`` streams one. Partial files are kept as
  ``<name>.part`` and continued with ``Range`` across runs; sizes and sha256 from the listing are checked.

:func:`download_first` tries candidates in order and, if all fail, raises ONE :class:`DownloadError` listing
every source, endpoint and short reason, plus how to point at a local copy. Offline mode is enforced by the
caller (:mod:`autoglm.hub.resolve`); this module assumes it may use the network when called.

Progress: ``on_progress`` (or, when not given, the callback installed with :func:`progress_to` for the
calling thread's context) receives a :class:`PullProgress` a few times a second while files arrive:
bytes and files done of the total, read from the files on disk (the final files, Hugging Face's
``.incomplete`` and ModelScope's ``.part`` ones), so it holds for either client.
It knows nothing about model aliases or demo models.
"""
from __future__ import annotations

import contextlib
import contextvars
import fnmatch
import hashlib
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autoglm.errors import DownloadError
from autoglm.hub.store import ModelStore, StoredModel

__all__ = [
    "Candidate", "Attempt", "select_files", "hf_endpoint", "modelscope_endpoint", "default_revision",
    "download_huggingface", "download_modelscope", "download_first", "unreachable_error",
    "HF_DEFAULT_ENDPOINT", "MODELSCOPE_DEFAULT_ENDPOINT", "PullProgress", "progress_to",
]

HF_DEFAULT_ENDPOINT = "https://huggingface.co"
MODELSCOPE_DEFAULT_ENDPOINT = "https://www.modelscope.cn"
_DEFAULT_REVISION = {"huggingface": "main", "modelscope": "master"}
_CHUNK = 1 << 20
_MS_RETRIES = 3  # in-run retries of one ModelScope file after a dropped connection

# What from_pretrained needs for a causal LM; matched against top-level file names.
_ALWAYS = (
    "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "tokenizer.model",
    "special_tokens_map.json", "added_tokens.json", "vocab.json", "vocab.txt", "merges.txt", "*.tiktoken",
    "chat_template.jinja", "chat_template.json",
)
_SAFETENSORS = ("*.safetensors", "model.safetensors.index.json")
_PYTORCH_BIN = ("pytorch_model*.bin", "pytorch_model.bin.index.json")


@dataclass(frozen=True)
class Candidate:
    """One place to fetch a model from."""

    source: str  # huggingface | modelscope
    repo_id: str


@dataclass(frozen=True)
class Attempt:
    """What one try cost: shown in the error when every try failed."""

    source: str
    repo_id: str
    endpoint: str
    reason: str


@dataclass(frozen=True)
class PullProgress:
    """How far one download is: what :func:`download_first` reports while it fetches."""

    source: str
    repo_id: str
    files_total: int
    files_done: int
    bytes_done: int
    bytes_total: int | None  # None while a file's size is unknown
    file: str | None = None  # the file arriving now, when one is


ProgressFn = Callable[[PullProgress], None]
_PROGRESS: contextvars.ContextVar[ProgressFn | None] = contextvars.ContextVar("autoglm_pull_progress", default=None)
_WATCH_S = 0.2


@contextlib.contextmanager
def progress_to(fn: ProgressFn) -> Iterator[None]:
    """Within the block, downloads started from this context report to ``fn`` (so a caller of
    :func:`autoglm.hub.resolve.resolve_model` sees the progress without passing it through)."""
    token = _PROGRESS.set(fn)
    try:
        yield
    finally:
        _PROGRESS.reset(token)


class _DiskWatcher:
    """Reports the bytes of ``sizes``' files under ``target`` every ``_WATCH_S`` seconds, in a thread."""

    def __init__(self, source: str, repo_id: str, target: Path, sizes: dict[str, int | None], fn: ProgressFn):
        self.source, self.repo_id, self.target, self.sizes, self.fn = source, repo_id, target, sizes, fn
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="autoglm-pull-progress", daemon=True)

    def snapshot(self, finished: bool = False) -> PullProgress:
        cache = self.target / ".cache" / "huggingface" / "download"
        # huggingface_hub names its partial files by a hash of the file's name: they count, unnamed
        done_bytes = sum(_size(p) for p in cache.rglob("*.incomplete")) if cache.is_dir() else 0
        done_files, current = 0, None
        for name, expected in self.sizes.items():
            final = self.target / name
            have = _size(final) if final.is_file() else 0
            if final.is_file() and (expected is None or have == expected):
                done_files += 1
                done_bytes += have
                continue
            part = _size(final.with_name(final.name + ".part"))  # ModelScope's
            if part:
                current = name
            done_bytes += part
        total = None if any(v is None for v in self.sizes.values()) else sum(self.sizes.values())  # type: ignore[arg-type]
        if finished:
            done_files, current = len(self.sizes), None
            done_bytes = total if total is not None else done_bytes
        return PullProgress(self.source, self.repo_id, len(self.sizes), done_files, done_bytes, total, current)

    def _run(self) -> None:
        while not self._stop.wait(_WATCH_S):
            self._report(self.snapshot())

    def _report(self, progress: PullProgress) -> None:
        try:
            self.fn(progress)
        except Exception:  # noqa: BLE001 - a broken progress display must not break the download
            pass

    def __enter__(self) -> "_DiskWatcher":
        self._report(self.snapshot())
        self._thread.start()
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        if exc_type is None:
            self._report(self.snapshot(finished=True))


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _watch(fn: ProgressFn | None, source: str, repo_id: str, target: Path,
           sizes: dict[str, int | None]) -> contextlib.AbstractContextManager[Any]:
    return _DiskWatcher(source, repo_id, target, sizes, fn) if fn is not None else contextlib.nullcontext()


def select_files(names: list[str]) -> list[str]:
    """The subset of a repo's file names worth downloading for a causal LM, sorted."""
    top = [n for n in names if "/" not in n]

    def matching(patterns: tuple[str, ...]) -> list[str]:
        return [n for n in top if any(fnmatch.fnmatchcase(n, p) for p in patterns)]

    weights = matching(_SAFETENSORS)
    if not any(n.endswith(".safetensors") for n in weights):
        weights = matching(_PYTORCH_BIN)
    return sorted(set(matching(_ALWAYS)) | set(weights))


def hf_endpoint(settings: Any) -> str:
    """``settings.hf_endpoint`` if the settings carry one, else ``$HF_ENDPOINT``, else huggingface.co."""
    value = getattr(settings, "hf_endpoint", None) or os.environ.get("HF_ENDPOINT") or HF_DEFAULT_ENDPOINT
    return value.rstrip("/")


def modelscope_endpoint(settings: Any) -> str:
    """``settings.modelscope_endpoint``, else ``$MODELSCOPE_ENDPOINT``, else www.modelscope.cn."""
    value = (getattr(settings, "modelscope_endpoint", None) or os.environ.get("MODELSCOPE_ENDPOINT")
             or MODELSCOPE_DEFAULT_ENDPOINT)
    return value.rstrip("/")


def default_revision(source: str) -> str:
    return _DEFAULT_REVISION.get(source, "main")


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or "no details"
    if len(text) > 200:
        text = text[:197] + "..."
    return f"{type(exc).__name__}: {text}"


def _has_weights(files: list[str]) -> bool:
    return any(f.endswith((".safetensors", ".bin")) for f in files)


# --- Hugging Face ------------------------------------------------------------------------------------------


def download_huggingface(repo_id: str, target: Path, *, endpoint: str, revision: str | None = None,
                         progress: bool = True, token: str | bool | None = None,
                         on_progress: ProgressFn | None = None) -> dict:
    """Fetch ``repo_id`` into ``target`` with huggingface_hub; returns marker info (commit, files)."""
    try:
        from huggingface_hub import HfApi, snapshot_download
    except ImportError as exc:  # a core dependency, but say what to do if it is gone
        raise DownloadError("huggingface_hub is not installed; run `pip install autoglm` again") from exc

    revision = revision or default_revision("huggingface")
    info = HfApi(endpoint=endpoint, token=token).model_info(repo_id, revision=revision)
    names = [s.rfilename for s in (info.siblings or [])]
    files = select_files(names)
    if not _has_weights(files):
        from autoglm.hub.gguf_repo import quant_tags

        tags = quant_tags(names)
        if tags or any(n.endswith(".gguf") for n in names):
            raise DownloadError(f"{repo_id} holds GGUF files, not a Hugging Face checkpoint: serve one with "
                                f"--model {repo_id}:TAG (tags here: {', '.join(tags) or 'none in the names'})")
        raise DownloadError(f"{repo_id} has no *.safetensors or pytorch_model*.bin weights (files: "
                            f"{', '.join(names[:8]) or 'none'})")
    target.mkdir(parents=True, exist_ok=True)
    sizes: dict[str, int | None] = dict.fromkeys(files)
    if on_progress is not None:  # the sizes, for the progress only: the listing is one more request
        try:
            for entry in HfApi(endpoint=endpoint, token=token).list_repo_tree(repo_id, revision=info.sha or revision):
                if entry.path in sizes and getattr(entry, "size", None) is not None:
                    sizes[entry.path] = int(entry.size)
        except Exception:  # noqa: BLE001 - without sizes the progress counts files and bytes, with no total
            pass
    with _watch(on_progress, "huggingface", repo_id, target, sizes):
        snapshot_download(
            repo_id, revision=info.sha or revision, local_dir=target, endpoint=endpoint, token=token,
            allow_patterns=files, max_workers=4, tqdm_class=None if progress else _silent_tqdm(),
        )
    missing = [f for f in files if not (target / f).is_file()]
    if missing:
        raise DownloadError(f"download of {repo_id} ended without {', '.join(missing)}")
    return {"commit": info.sha, "files": files}


def _silent_tqdm():
    from tqdm.auto import tqdm

    class _Silent(tqdm):
        def __init__(self, *args, **kwargs):
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

    return _Silent


# --- ModelScope --------------------------------------------------------------------------------------------


def _ms_headers() -> dict[str, str]:
    from autoglm import __version__

    # identity: byte offsets for Range must be those of the file, not of a compressed stream
    return {"User-Agent": f"autoglm/{__version__}", "Accept-Encoding": "identity"}


def modelscope_list_files(client: Any, endpoint: str, repo_id: str, revision: str) -> list[dict]:
    """The repo's files as ModelScope lists them (``Path``, ``Size``, ``Sha256``, ``Type``)."""
    r = client.get(f"{endpoint}/api/v1/models/{repo_id}/repo/files",
                   params={"Revision": revision, "Recursive": "true"})
    if r.status_code == 404:
        raise DownloadError(f"repository {repo_id} (revision {revision}) not found (HTTP 404)")
    r.raise_for_status()
    body = r.json()
    if body.get("Code") not in (None, 200) or body.get("Success") is False:
        raise DownloadError(f"listing failed: {body.get('Message') or body.get('Code')}")
    files = (body.get("Data") or {}).get("Files") or []
    return [f for f in files if f.get("Type") != "tree"]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _ms_fetch_file(client: Any, endpoint: str, repo_id: str, revision: str, entry: dict, target: Path,
                   progress: bool, retries: int) -> None:
    import httpx
    from tqdm.auto import tqdm

    name = entry["Path"]
    final = target / name
    expected = int(entry["Size"]) if entry.get("Size") is not None else None
    if final.is_file() and (expected is None or final.stat().st_size == expected):
        return  # finished in an earlier run (it was checked before it got its final name)
    part = final.with_name(final.name + ".part")
    part.parent.mkdir(parents=True, exist_ok=True)
    url = f"{endpoint}/api/v1/models/{repo_id}/repo"
    params = {"Revision": revision, "FilePath": name}
    bar = tqdm(total=expected, unit="B", unit_scale=True, desc=name[-40:], disable=not progress, leave=False)
    try:
        for attempt in range(retries + 1):
            have = part.stat().st_size if part.is_file() else 0
            if expected is not None and have > expected:
                part.unlink()
                have = 0
            bar.reset(total=expected)
            bar.update(have)
            if expected is not None and have == expected:
                break
            headers = {"Range": f"bytes={have}-"} if have else {}
            try:
                with client.stream("GET", url, params=params, headers=headers) as r:
                    if r.status_code == 416:  # asked past the end: the part is already whole
                        break
                    r.raise_for_status()
                    mode = "ab" if (have and r.status_code == 206) else "wb"
                    if mode == "wb":
                        bar.reset(total=expected)
                    with part.open(mode) as f:
                        for chunk in r.iter_bytes():  # as it arrives, so a cut keeps what came
                            f.write(chunk)
                            bar.update(len(chunk))
                break
            except httpx.TransportError as exc:
                if attempt == retries:
                    got = part.stat().st_size if part.is_file() else 0
                    raise DownloadError(f"{name}: connection lost after {got} of {expected or '?'} bytes "
                                        f"({_short(exc)}); run the same command again to resume") from exc
    finally:
        bar.close()
    size = part.stat().st_size if part.is_file() else 0
    if expected is not None and size != expected:
        raise DownloadError(f"{name}: got {size} of {expected} bytes; run the same command again to resume")
    digest = entry.get("Sha256")
    if digest and _sha256(part) != digest.lower():
        part.unlink()
        raise DownloadError(f"{name}: sha256 mismatch (the partial file was deleted); run the command again")
    os.replace(part, final)


def download_modelscope(repo_id: str, target: Path, *, endpoint: str, revision: str | None = None,
                        progress: bool = True, retries: int = _MS_RETRIES, timeout: float = 30.0,
                        on_progress: ProgressFn | None = None) -> dict:
    """Fetch ``repo_id`` from ModelScope into ``target`` over its REST API; returns marker info."""
    import httpx

    revision = revision or default_revision("modelscope")
    with httpx.Client(headers=_ms_headers(), timeout=timeout, follow_redirects=True) as client:
        entries = modelscope_list_files(client, endpoint, repo_id, revision)
        by_name = {e["Path"]: e for e in entries}
        files = select_files(list(by_name))
        if not _has_weights(files):
            raise DownloadError(f"{repo_id} has no *.safetensors or pytorch_model*.bin weights")
        target.mkdir(parents=True, exist_ok=True)
        sizes = {n: (int(by_name[n]["Size"]) if by_name[n].get("Size") is not None else None) for n in files}
        with _watch(on_progress, "modelscope", repo_id, target, sizes):
            for name in files:
                _ms_fetch_file(client, endpoint, repo_id, revision, by_name[name], target, progress, retries)
    return {"commit": None, "files": files}


# --- Trying sources in order -------------------------------------------------------------------------------


def unreachable_error(name: str, attempts: list[Attempt], store: ModelStore, offline: bool = False) -> DownloadError:
    """The one error for 'weights missing here and not fetchable': what was tried and what to do."""
    if offline:
        tried = "offline mode is on (AUTOGLM_OFFLINE / HF_HUB_OFFLINE / --offline), so no source was contacted"
    else:
        tried = "; ".join(f"{a.source} {a.repo_id} at {a.endpoint}: {a.reason}" for a in attempts) or "no source"
    return DownloadError(
        f"model {name!r} is not in the local store ({store.root}) and could not be downloaded. Tried: {tried}. "
        f"To use a local copy: pass --model /path/to/model-dir (a folder with config.json and weights), "
        f"or set AUTOGLM_HOME to a store that has it, or run `autoglm pull {name}` on a machine with network "
        f"and copy its store ({store.root}) here."
    )


def download_first(name: str, candidates: list[Candidate], store: ModelStore, settings: Any, *,
                   revision: str | None = None, progress: bool = True,
                   ms_retries: int = _MS_RETRIES, on_progress: ProgressFn | None = None) -> StoredModel:
    """Fetch the first candidate that works into ``store``; one :class:`DownloadError` if none does.
    ``on_progress`` (default: the one :func:`progress_to` installed) sees each candidate's progress."""
    on_progress = on_progress if on_progress is not None else _PROGRESS.get()
    attempts: list[Attempt] = []
    for cand in candidates:
        rev = revision or default_revision(cand.source)
        endpoint = hf_endpoint(settings) if cand.source == "huggingface" else modelscope_endpoint(settings)
        target = store.path_for(cand.source, cand.repo_id, rev)
        if store.is_complete(target):
            return _stored(store, cand, rev, target)
        try:
            if cand.source == "huggingface":
                info = download_huggingface(cand.repo_id, target, endpoint=endpoint, revision=rev, progress=progress,
                                            on_progress=on_progress)
            elif cand.source == "modelscope":
                info = download_modelscope(cand.repo_id, target, endpoint=endpoint, revision=rev,
                                           progress=progress, retries=ms_retries, on_progress=on_progress)
            else:
                raise ValueError(f"unknown source {cand.source!r}")
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # every failure becomes one line of the final error
            attempts.append(Attempt(cand.source, cand.repo_id, endpoint, _short(exc)))
            continue
        store.mark_complete(target, source=cand.source, repo_id=cand.repo_id, revision=rev, endpoint=endpoint,
                            **info)
        return _stored(store, cand, rev, target)
    raise unreachable_error(name, attempts, store)


def _stored(store: ModelStore, cand: Candidate, revision: str, target: Path) -> StoredModel:
    marker = store.read_marker(target) or {}
    return StoredModel(source=cand.source, repo_id=cand.repo_id, revision=target.name, path=target,
                       size_bytes=sum(p.stat().st_size for p in target.rglob("*") if p.is_file()),
                       complete=True, completed_at=marker.get("completed_at"))
