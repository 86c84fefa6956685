"""A local model hub for the download tests: real HTTP on 127.0.0.1, in a thread.

It serves the routes the real clients call, with the headers they need:

* Hugging Face (what ``huggingface_hub`` 2.x requests): ``GET /api/models/{repo}[/revision/{rev}]`` (model info:
  ``sha``, ``siblings``), ``GET /api/models/{repo}/tree/{rev}`` (file listing), ``HEAD``/``GET
  /{repo}/resolve/{rev}/{file}`` with ``X-Repo-Commit``, ``ETag``, ``Content-Length`` and ``Range`` support;
  unknown repos answer 404 with ``X-Error-Code: RepoNotFound``.
* ModelScope: ``GET /api/v1/models/{repo}/repo/files?Revision=&Recursive=`` and
  ``GET /api/v1/models/{repo}/repo?Revision=&FilePath=`` (``Range`` supported).

``hub.cut_once.add(filename)`` makes the first full GET of that file send half the body and drop the
connection. ``hub.requests`` records every request (method, path, Range header).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

import pytest

COMMIT = "0123456789abcdef0123456789abcdef01234567"
HF_REPOS = ("zai-org/glm-4-9b-chat-hf", "acme/tiny-glm", "acme/tiny-glm-GGUF")
MS_REPOS = ("ZhipuAI/glm-4-9b-chat-hf", "acme/tiny-glm")
# Files a hub repo carries that a causal LM does not need (and must not be downloaded).
EXTRA_FILES = {
    "pytorch_model.bin": b"\0" * 4096,
    "flax_model.msgpack": b"\1" * 1024,
    "README.md": b"# tiny\n",
    "original/consolidated.pth": b"\2" * 512,
}


@dataclass
class Hub:
    files: dict[str, bytes]
    url: str = ""
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)
    cut_once: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def sha256(self, name: str) -> str:
        return hashlib.sha256(self.files[name]).hexdigest()

    def gets(self, name: str) -> list[str | None]:
        """The Range headers of every body download of ``name`` (None: whole file)."""
        with self.lock:
            return [rng for m, p, rng in self.requests if m == "GET" and _file_of(p) == name]


def _file_of(path: str) -> str | None:
    parsed = urlparse(path)
    if "/resolve/" in parsed.path:
        return unquote(parsed.path.split("/resolve/", 1)[1].split("/", 1)[1])
    q = parse_qs(parsed.query)
    return q.get("FilePath", [None])[0]


def _make_handler(hub: Hub):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # keep test output clean
            pass

        def _json(self, obj, status=200, headers=None):
            body = json.dumps(obj).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _not_found(self, code="RepoNotFound"):
            self._json({"error": "Repository not found"}, 404, {"X-Error-Code": code})

        def _file(self, name: str, extra: dict[str, str]):
            data = hub.files.get(name)
            if data is None:
                return self._json({"error": "Entry not found"}, 404,
                                  {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": COMMIT})
            total, start = len(data), 0
            rng = self.headers.get("Range")
            if rng and rng.startswith("bytes="):
                start = int(rng[6:].split("-", 1)[0] or 0)
                if start >= total:
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{total}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
            body = data[start:]
            self.send_response(206 if start else 200)
            headers = {"ETag": f'"{hashlib.sha256(data).hexdigest()}"', "Accept-Ranges": "bytes",
                       "Content-Type": "application/octet-stream", "Content-Length": str(len(body)), **extra}
            if start:
                headers["Content-Range"] = f"bytes {start}-{total - 1}/{total}"
            for k, v in headers.items():
                self.send_header(k, v)
            self.end_headers()
            if self.command == "HEAD":
                return
            with hub.lock:
                cut = not start and name in hub.cut_once
                hub.cut_once.discard(name)
            if cut:  # half the body, then drop the connection
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)
                self.close_connection = True
                return
            self.wfile.write(body)

        def _route(self):
            with hub.lock:
                hub.requests.append((self.command, self.path, self.headers.get("Range")))
            parsed = urlparse(self.path)
            path, query = unquote(parsed.path), parse_qs(parsed.query)
            if path.startswith("/api/v1/models/"):  # ModelScope
                rest = path[len("/api/v1/models/"):]
                for repo in MS_REPOS:
                    if rest == f"{repo}/repo/files":
                        files = [{"Name": n.rsplit("/", 1)[-1], "Path": n, "Type": "blob", "Size": len(d),
                                  "Sha256": hashlib.sha256(d).hexdigest(), "Revision": COMMIT}
                                 for n, d in sorted(hub.files.items())]
                        files.append({"Name": "original", "Path": "original", "Type": "tree", "Size": 0})
                        return self._json({"Code": 200, "Success": True, "Data": {"Files": files}})
                    if rest == f"{repo}/repo":
                        return self._file(query.get("FilePath", [""])[0], {})
                return self._json({"Code": 10010205001, "Message": "model not found", "Success": False}, 404)
            if path.startswith("/api/models/"):  # Hugging Face API
                rest = path[len("/api/models/"):]
                for repo in HF_REPOS:
                    if rest in (repo, f"{repo}/revision/main", f"{repo}/revision/{COMMIT}"):
                        return self._json({"id": repo, "sha": COMMIT, "private": False,
                                           "siblings": [{"rfilename": n} for n in sorted(hub.files)]})
                    if rest in (f"{repo}/tree/main", f"{repo}/tree/{COMMIT}"):
                        return self._json([{"type": "file", "oid": hashlib.sha1(d).hexdigest(), "size": len(d),
                                            "path": n} for n, d in sorted(hub.files.items())])
                return self._not_found()
            for repo in HF_REPOS:  # Hugging Face file route
                for rev in ("main", COMMIT):
                    prefix = f"/{repo}/resolve/{rev}/"
                    if path.startswith(prefix):
                        return self._file(path[len(prefix):], {"X-Repo-Commit": COMMIT})
            return self._not_found()

        do_GET = _route
        do_HEAD = _route

    return Handler


def build_tiny_model(out: Path) -> Path:
    """A random Glm4ForCausalLM (a few hundred KB) with a BPE tokenizer trained on a few words."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import Glm4Config, Glm4ForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    words = "the quick brown fox jumps over the lazy dog while models serve tokens fast".split()
    tok.train_from_iterator([" ".join(words)] * 10, trainers.BpeTrainer(
        vocab_size=128, special_tokens=["<unk>", "<|endoftext|>", "<|user|>", "<|assistant|>"]))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<|endoftext|>")
    fast.save_pretrained(out)
    torch.manual_seed(0)
    config = Glm4Config(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                        head_dim=16, intermediate_size=128, vocab_size=128, max_position_embeddings=256,
                        pad_token_id=1, eos_token_id=1, bos_token_id=None)
    Glm4ForCausalLM(config).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-glm"))


@contextlib.contextmanager
def serve_hub(files: dict[str, bytes]):
    """A :class:`Hub` serving ``files`` for every repo of :data:`HF_REPOS` / :data:`MS_REPOS`, in a thread."""
    state = Hub(files=files)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(state))
    server.daemon_threads = True
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture()
def hub(tiny_model_dir):
    files = {p.relative_to(tiny_model_dir).as_posix(): p.read_bytes()
             for p in tiny_model_dir.rglob("*") if p.is_file()}
    files.update(EXTRA_FILES)
    with serve_hub(files) as state:
        yield state


@pytest.fixture()
def dead_url() -> str:
    """An http URL on 127.0.0.1 where nothing listens (connections are refused at once)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}"
