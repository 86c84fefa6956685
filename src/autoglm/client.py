"""``autoglm.Client``: the Python SDK of a running server's admin REST API (and a little more).

::

    import autoglm

    client = autoglm.Client("http://127.0.0.1:8000", api_key="ADMIN-KEY")
    client.pipelines.list()                                  # pipelines with their runs
    handle = client.pipelines.run("examples/pipelines/credit-tabular.yaml")   # a path on the server
    client.runs.wait(handle["id"])                           # stages, metric history, events
    client.pipelines.validate("name: x\\n")                   # {"ok": False, "errors": [{"line", "key", ...}]}
    client.studies.get("credit-search")["importances"]
    client.models.promote("credit-tabular", 2)               # @champion -> version 2 (+ webhooks)
    client.models.rollback("credit-tabular")
    client.deployments.swap("chat", "models:/chat@champion")
    client.feedback.stats(); client.keys.create("ci-bot", rpm=60); client.loop.cycles(); client.health()

Resource groups mirror the routes: ``pipelines``, ``runs``, ``studies``, ``models`` (``/admin/...`` of
:mod:`autoglm.api.routes_admin`), ``deployments`` (``/admin/deployments``), ``feedback`` (``/v1/feedback``,
``/admin/feedback[/stats|/export]``), ``keys`` (``/admin/keys``), ``loop``. Lists return the ``data`` of
``{"object": "list", "data": [...]}``; everything else the JSON object the server sent. A refusal raises
:class:`APIError` (``status``, ``code``, ``message``, ``param`` from the OpenAI error object); a server that
cannot be reached raises :class:`APIConnectionError`. Both are :class:`~autoglm.errors.AutoGLMError` s, so the
CLI prints them as one line. ``base_url`` and ``api_key`` default to ``AUTOGLM_SERVER`` and
``AUTOGLM_API_KEY`` (as the official ``openai`` client reads ``OPENAI_*``). Built on ``httpx``; knows
only HTTP and the shapes the server documents in ``/openapi.json``.
"""
from __future__ import annotations

import os
import time
from typing import Any, Optional
from urllib.parse import quote

from autoglm.errors import AutoGLMError

__all__ = ["Client", "APIError", "APIConnectionError", "DEFAULT_BASE_URL"]

DEFAULT_BASE_URL = "http://127.0.0.1:8000"


class APIError(AutoGLMError):
    """The server refused: ``status`` (HTTP), ``code``, ``message``, ``param``, ``type`` of its error object."""

    def __init__(self, status: int, message: str, *, code: Optional[str] = None, param: Optional[str] = None,
                 type: Optional[str] = None, body: Any = None):
        self.status, self.message, self.code, self.param = status, message, code, param
        self.type, self.body = type, body
        where = f" (param {param})" if param else ""
        super().__init__(f"{status} {code or 'error'}{where}: {message}")


class APIConnectionError(APIError):
    """No answer: the server is not there, or did not answer within the timeout."""

    def __init__(self, message: str):
        super().__init__(0, message, code="connection_error")


def _path(*parts: str) -> str:
    return "/" + "/".join(quote(str(p), safe="") for p in parts)


class _Resource:
    def __init__(self, client: "Client"):
        self._client = client

    def _get(self, path: str, **params: Any) -> Any:
        return self._client.request("GET", path, params={k: v for k, v in params.items() if v is not None})

    def _post(self, path: str, body: Any = None) -> Any:
        return self._client.request("POST", path, json=body)

    def _list(self, path: str, **params: Any) -> list[dict[str, Any]]:
        return self._get(path, **params)["data"]


class Pipelines(_Resource):
    """``/admin/pipelines``: list, get, validate, run (resume = run again: finished stages are kept)."""

    def list(self) -> list[dict[str, Any]]:
        return self._list("/admin/pipelines")

    def get(self, name: str) -> dict[str, Any]:
        return self._get(_path("admin", "pipelines", name))

    def validate(self, yaml: Optional[str] = None, *, path: Optional[str] = None,
                 base_dir: Optional[str] = None) -> dict[str, Any]:
        """``{"ok", "errors": [{"line", "key", "message", "text"}], "pipeline"?}`` for YAML text or a server path."""
        body = {"yaml": yaml, "path": path, "base_dir": base_dir}
        return self._post("/admin/pipelines/validate", {k: v for k, v in body.items() if v is not None})

    def run(self, path: Optional[str] = None, *, yaml: Optional[str] = None, base_dir: Optional[str] = None,
            until: Optional[str] = None, tracking: bool = True, wait: bool = False,
            timeout: Optional[float] = None) -> dict[str, Any]:
        """Start (or find finished) the run of a pipeline file on the server (``path``) or of ``yaml`` text.

        Returns the handle (``id`` is the run id; ``status`` ``started``/``running``/``finished``); with
        ``wait`` the finished run instead (see :meth:`Runs.wait`)."""
        body = {"path": path, "yaml": yaml, "base_dir": base_dir, "until": until}
        body = {k: v for k, v in body.items() if v is not None}
        if not tracking:
            body["tracking"] = False
        handle = self._post("/admin/pipelines/run", body)
        if not wait:
            return handle
        return self._client.runs.wait(handle["id"], timeout=timeout)

    resume = run


class Runs(_Resource):
    """``/admin/runs/{id}``: a pipeline run with its stage status, metric history and events."""

    def get(self, run_id: str) -> dict[str, Any]:
        return self._get(_path("admin", "runs", run_id))

    def wait(self, run_id: str, *, timeout: Optional[float] = None, poll_s: float = 0.5) -> dict[str, Any]:
        """Poll until the run is no longer ``running`` (its record appears a moment after the start)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                run = self.get(run_id)
                if run["status"] != "running":
                    return run
            except APIError as exc:
                if exc.status != 404:  # 404: the process has not written its record yet
                    raise
            if deadline is not None and time.monotonic() > deadline:
                raise APIError(408, f"run {run_id} still not finished after {timeout:.0f}s", code="timeout")
            time.sleep(poll_s)


class Studies(_Resource):
    """``/admin/studies``: Optuna studies with trials, the best trial and parameter importances."""

    def list(self) -> list[dict[str, Any]]:
        return self._list("/admin/studies")

    def get(self, name: str) -> dict[str, Any]:
        return self._get(_path("admin", "studies", name))


class Models(_Resource):
    """``/admin/models``: registered models (MLflow), their versions and aliases; promote and roll back."""

    def list(self) -> list[dict[str, Any]]:
        return self._list("/admin/models")

    def get(self, name: str) -> dict[str, Any]:
        return self._get(_path("admin", "models", name))

    def promote(self, name: str, version: int | str, alias: str = "champion") -> dict[str, Any]:
        version = int(version) if isinstance(version, str) and version.isdigit() else version
        return self._post(_path("admin", "models", name, "promote"), {"version": version, "alias": alias})

    def rollback(self, name: str, alias: str = "champion") -> dict[str, Any]:
        return self._post(_path("admin", "models", name, "rollback"), {"alias": alias})


class Deployments(_Resource):
    """``/admin/deployments``: what this server serves; launch, stop and swap (zero-downtime) models."""

    def list(self) -> list[dict[str, Any]]:
        return self._list("/admin/deployments")

    def get(self, name: str) -> dict[str, Any]:
        return self._get(_path("admin", "deployments", name))

    def launch(self, spec: dict[str, Any]) -> dict[str, Any]:
        """``spec`` is one ``models:`` entry of a deploy file (``{"name", "source", ...}``)."""
        return self._post("/admin/deployments", spec)

    def stop(self, name: str) -> dict[str, Any]:
        return self._client.request("DELETE", _path("admin", "deployments", name))

    def swap(self, name: str, source: str, drain_s: Optional[float] = None) -> dict[str, Any]:
        body: dict[str, Any] = {"source": source}
        if drain_s is not None:
            body["drain_s"] = drain_s
        return self._post(_path("admin", "deployments", name, "swap"), body)


class Feedback(_Resource):
    """``POST /v1/feedback`` (rate a response this key received) and ``/admin/feedback[/stats|/export]``."""

    def create(self, id: str, *, rating: Optional[float] = None, thumbs: Optional[str] = None,
               choice_index: int = 0, correction: Optional[str] = None, preferred_over: Optional[dict[str, Any]] = None,
               comment: Optional[str] = None, tags: Optional[list[str]] = None) -> dict[str, Any]:
        body = {"id": id, "choice_index": choice_index, "rating": rating, "thumbs": thumbs, "correction": correction,
                "preferred_over": preferred_over, "comment": comment, "tags": tags}
        return self._post("/v1/feedback", {k: v for k, v in body.items() if v is not None})

    def list(self, *, since: Optional[str] = None, key: Optional[str] = None, source: Optional[str] = None,
             limit: Optional[int] = None) -> list[dict[str, Any]]:
        return self._list("/admin/feedback", since=since, key=key, source=source, limit=limit)

    def stats(self, *, since: Optional[str] = None) -> dict[str, Any]:
        return self._get("/admin/feedback/stats", since=since)

    def export(self, format: str = "sft", *, since: Optional[str] = None, lr: Optional[float] = None,
               half_life_days: Optional[float] = None, implicit_weight: Optional[float] = None,
               min_support: Optional[int] = None) -> list[dict[str, Any]]:
        """The SFT / DPO / KTO rows ``autoglm feedback export`` would write (one dict per JSONL line)."""
        return self._list("/admin/feedback/export", format=format, since=since, lr=lr, half_life_days=half_life_days,
                          implicit_weight=implicit_weight, min_support=min_support)


class Keys(_Resource):
    """``/admin/keys``: API keys of the gateway (the plaintext key is in ``create``'s answer only)."""

    def create(self, name: str, *, models: Optional[list[str]] = None, rpm: Optional[int] = None,
               tpm: Optional[int] = None, expires_at: Optional[float] = None) -> dict[str, Any]:
        body = {"name": name, "models": models, "rpm": rpm, "tpm": tpm, "expires_at": expires_at}
        return self._post("/admin/keys", {k: v for k, v in body.items() if v is not None})

    def list(self) -> list[dict[str, Any]]:
        return self._list("/admin/keys")

    def revoke(self, name: str) -> dict[str, Any]:
        return self._client.request("DELETE", _path("admin", "keys", name))


class Loop(_Resource):
    """``/admin/loop``: each improvement loop's state; :meth:`cycles` flattens their cycles."""

    def list(self) -> list[dict[str, Any]]:
        return self._list("/admin/loop")

    def cycles(self) -> list[dict[str, Any]]:
        """Every recorded cycle (trigger, phase, candidate, decision), oldest first, with its ``loop`` name;
        a cycle in progress comes last with ``in_progress: True``."""
        out = []
        for state in self.list():
            out += [{"loop": state.get("name"), **c, "in_progress": False} for c in state.get("history") or []]
            if state.get("cycle"):
                out.append({"loop": state.get("name"), **state["cycle"], "in_progress": True})
        return out


class Client:
    """A connection to one autoglm server; use as a context manager or call :meth:`close`."""

    def __init__(self, base_url: Optional[str] = None, api_key: Optional[str] = None, timeout: float = 60.0, *,
                 http_client: Any = None):
        import httpx

        base = (base_url or os.environ.get("AUTOGLM_SERVER") or DEFAULT_BASE_URL).rstrip("/")
        if base.endswith("/v1"):  # the URL given to the openai client works here too
            base = base[:-3]
        self.base_url = base
        self.api_key = api_key if api_key is not None else (os.environ.get("AUTOGLM_API_KEY") or None)
        headers = {"authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        self._http = http_client or httpx.Client(base_url=base, timeout=timeout, headers=headers)
        self._own = http_client is None
        self.pipelines, self.runs, self.studies = Pipelines(self), Runs(self), Studies(self)
        self.models, self.deployments, self.feedback = Models(self), Deployments(self), Feedback(self)
        self.keys, self.loop = Keys(self), Loop(self)

    def request(self, method: str, path: str, *, json: Any = None, params: Optional[dict[str, Any]] = None) -> Any:
        """One call; the decoded JSON answer, or :class:`APIError`."""
        import httpx

        try:
            response = self._http.request(method, path, json=json, params=params)
        except httpx.TimeoutException:
            raise APIConnectionError(f"{self.base_url} did not answer {method} {path} in time") from None
        except httpx.HTTPError as exc:
            raise APIConnectionError(f"cannot reach {self.base_url} ({type(exc).__name__}: {exc}); is `autoglm "
                                     "serve` running there? (set --server / AUTOGLM_SERVER)") from None
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.status_code >= 400:
            err = body.get("error") if isinstance(body, dict) and isinstance(body.get("error"), dict) else {}
            message = err.get("message") or (response.text[:300] if body is None else str(body)[:300])
            raise APIError(response.status_code, message, code=err.get("code"), param=err.get("param"),
                           type=err.get("type"), body=body)
        return body

    def health(self) -> dict[str, Any]:
        """``GET /health`` (200 or 503: both are answers, returned as they are)."""
        import httpx

        try:
            response = self._http.get("/health")
            return response.json()
        except httpx.HTTPError as exc:
            raise APIConnectionError(f"cannot reach {self.base_url} ({type(exc).__name__})") from None
        except ValueError:
            raise APIError(response.status_code, response.text[:300]) from None

    def close(self) -> None:
        if self._own:
            self._http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"autoglm.Client({self.base_url!r})"
