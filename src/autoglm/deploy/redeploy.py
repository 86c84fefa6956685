"""Tell running servers that an alias moved: each swaps the models it serves from ``models:/NAME@ALIAS``.

:func:`redeploy` asks a server's ``GET /admin/deployments`` which models it serves from that alias
and, for each one not already on ``version``, calls ``POST /admin/deployments/{name}/swap`` (the
server loads the new version beside the old one, checks it, switches and drains:
:mod:`autoglm.deploy.live`). :class:`RedeploySubscriber` does it on the loop's ``registry/alias-set``
event (``autoglm loop run --redeploy URL`` or ``improve.redeploy``). The other way in is a signed
webhook to the server's ``/admin/hooks/{name}`` (:mod:`autoglm.registry.hooks_in`), which ends in
the same swap. Knows HTTP and the deployment API's shapes; nothing about engines.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from autoglm.errors import AutoGLMError

__all__ = ["redeploy", "RedeploySubscriber", "RedeployError"]

log = logging.getLogger("autoglm.deploy")


class RedeployError(AutoGLMError):
    """A server refused or failed the swap (its error message is in the text)."""


def _base(url: str) -> str:
    url = url.rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


def _error(r: Any) -> str:
    try:
        return r.json()["error"]["message"]
    except Exception:  # noqa: BLE001 - not an OpenAI error object: the status says enough
        return f"HTTP {r.status_code}"


def redeploy(url: str, model: str, alias: str, version: str | int | None = None, *, admin_key: str | None = None,
             timeout: float = 600.0, client: Any = None) -> list[dict[str, Any]]:
    """Swap every model ``url`` serves from ``models:/MODEL@ALIAS``; returns each swap's result (or
    ``{"name", "skipped"}``). A server that cannot be reached or refuses is a :class:`RedeployError`."""
    import httpx

    source = f"models:/{model}@{alias}"
    headers = {"Authorization": f"Bearer {admin_key}"} if admin_key else {}
    own = client is None
    http = client or httpx.Client(timeout=timeout)
    base = _base(url)
    try:
        try:
            r = http.get(f"{base}/admin/deployments", headers=headers)
        except httpx.HTTPError as exc:
            raise RedeployError(f"cannot reach {base} to redeploy {source}: {exc}") from None
        if r.status_code != 200:
            raise RedeployError(f"{base} refused to list its deployments: {_error(r)}")
        results = []
        for entry in r.json().get("data", []):
            if entry.get("source") != source:
                continue
            if version is not None and entry.get("version") == str(version):
                results.append({"name": entry["name"], "skipped": f"already serves version {version}"})
                continue
            try:
                s = http.post(f"{base}/admin/deployments/{entry['name']}/swap", json={"source": source},
                              headers=headers)
            except httpx.HTTPError as exc:
                raise RedeployError(f"the swap of {entry['name']} on {base} failed: {exc}") from None
            if s.status_code != 200:
                raise RedeployError(f"{base} did not swap {entry['name']} to {source}: {_error(s)}")
            results.append(s.json())
        return results
    finally:
        if own:
            http.close()


class RedeploySubscriber:
    """An event-bus subscriber: on ``registry/alias-set`` redeploy on each of ``urls``; ``echo`` says how
    it went (a failure is said, not raised: the promotion itself is done)."""

    def __init__(self, urls: list[str], *, admin_key: str | None = None, echo: Callable[[str], None] = print,
                 timeout: float = 600.0):
        self.urls, self.admin_key, self.echo, self.timeout = list(urls), admin_key, echo, timeout
        self.results: list[dict[str, Any]] = []

    def __call__(self, event: Any) -> None:
        if getattr(event, "kind", None) != "registry" or getattr(event, "action", None) != "alias-set":
            return
        data = event.data or {}
        model, alias, version = data.get("name"), data.get("alias"), data.get("version")
        if not model or not alias:
            return
        for url in self.urls:
            try:
                done = redeploy(url, str(model), str(alias), version, admin_key=self.admin_key, timeout=self.timeout)
            except RedeployError as exc:
                self.echo(f"[redeploy] {exc}")
                self.results.append({"url": url, "error": str(exc)})
                continue
            swapped = [d for d in done if "switched_at" in d]
            self.results.extend({"url": url, **d} for d in done)
            if not done:  # e.g. the candidate alias: nothing served from it here
                log.info("redeploy: %s serves nothing from models:/%s@%s", _base(url), model, alias)
            for d in swapped:
                self.echo(f"[redeploy] {_base(url)}: {d['name']} v{d.get('from_version') or '-'} -> "
                          f"v{d.get('to_version') or '-'} ({d.get('mode')} load {d.get('load_s')}s, "
                          f"{'drained' if d['drained'] else 'drain timed out'})")
