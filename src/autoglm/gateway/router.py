"""Which backend serves a request: model names and aliases -> replicas, with retries and fallback.

A :class:`Route` is one served model: its name, aliases, an optional fallback model and one or more
:class:`Backend` replicas, each either a local engine or a remote :class:`~autoglm.gateway.upstream.Upstream`.
:meth:`Router.dispatch` picks the healthy replica with the fewest outstanding requests (ties: the one
that served least) - or, with ``policy="prefix_affinity"``, the replica that last served the longest
start of the same prompt, within a load bound (:mod:`autoglm.gateway.affinity`; the caller passes the
prompt text as ``prefix``) - calls it, and on a connection error retries another replica (or the same one)
after an exponential backoff (``backoff * 2**attempt``); a 4xx is never retried. A replica that fails
``unhealthy_after`` times in a row is marked down and skipped until the background health check
(every ``health_check_interval`` s) sees it answer again. When every replica is down, or the model is
saturated (429), the route's fallback model is tried; when nothing is left the caller gets a clean
503 :class:`~autoglm.gateway.facade.GatewayError` (or the 429 itself when saturation was the cause).

Outstanding counts last until :meth:`Dispatched.release` (for a stream: when the stream ends).

What is served can change while the server runs (:mod:`autoglm.deploy.live`): :meth:`Router.add_route`,
:meth:`Router.remove_route` and :meth:`Router.replace_backends` each change the routing in one step
with no ``await`` in between, so a request sees either the old routing or the new one, never a mix.
A replaced or removed replica is *retired*: no new request picks it (a retry waiting on it picks
another), while the requests it already serves finish there and release it; its ``outstanding``
count reaching 0 is how the caller knows it is drained.
Knows nothing about FastAPI or OpenAI request shapes: the caller passes what to do with an engine
and with an upstream.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from autoglm.errors import ModelNotFoundError, OverloadedError
from autoglm.gateway.upstream import Upstream, UpstreamConnectionError, UpstreamOverloaded

__all__ = ["Backend", "Route", "Router", "Dispatched"]

log = logging.getLogger(__name__)
T = TypeVar("T")


class Backend:
    """One replica: a local engine or a remote upstream, with its live counters."""

    def __init__(self, *, engine: Any = None, upstream: Upstream | None = None, label: str | None = None):
        if (engine is None) == (upstream is None):
            raise ValueError("a backend is either a local engine or an upstream")
        self.engine, self.upstream = engine, upstream
        self.label = label or (upstream.base_url if upstream is not None else getattr(engine, "model_name", "local"))
        self.healthy = True
        self.retired = False  # replaced or removed: finishes what it serves, takes nothing new
        self.version: str | None = None  # a registry version, when known (the x-autoglm-model-version header)
        self.outstanding = 0  # requests started and not yet released
        self.served = 0  # requests ever started here (tie-breaker: spreads equal loads)
        self.failures = 0  # consecutive connection failures

    @property
    def kind(self) -> str:
        return "remote" if self.upstream is not None else "local"

    def is_up(self) -> bool:
        if self.retired:
            return False
        if self.engine is not None:
            try:
                self.engine.stats()
            except Exception:  # noqa: BLE001 - an engine that cannot report is not serving
                return False
        return self.healthy

    async def check(self) -> bool:
        """Probe now; a remote replica that answers is back in rotation."""
        if self.upstream is None:
            return self.is_up()
        ok = await self.upstream.check()
        if ok and not self.healthy:
            log.info("upstream %s is back", self.label)
        elif not ok and self.healthy:
            log.warning("upstream %s is down (health check failed)", self.label)
        self.healthy = ok
        if ok:
            self.failures = 0
        return ok

    def describe(self) -> dict[str, Any]:
        return {"backend": self.label, "kind": self.kind, "healthy": self.is_up(), "outstanding": self.outstanding}


@dataclass
class Route:
    """One served model name."""

    name: str
    backends: list[Backend]
    aliases: list[str] = field(default_factory=list)
    fallback: str | None = None
    description: str = ""
    max_model_len: int | None = None

    @property
    def is_remote(self) -> bool:
        return all(b.kind == "remote" for b in self.backends)

    def status(self) -> str:
        return "ok" if any(b.is_up() for b in self.backends) else "down"


@dataclass
class Dispatched(Generic[T]):
    """A call's result, the route and replica that produced it, and the release of its slot."""

    result: T
    route: Route
    backend: Backend
    _released: bool = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self.backend.outstanding -= 1


class Router:
    def __init__(self, routes: list[Route], *, retries: int = 2, backoff: float = 0.1,
                 health_check_interval: float = 5.0, unhealthy_after: int = 2,
                 policy: str = "least_outstanding", affinity: Any = None):
        if not routes:
            raise ValueError("a router needs at least one route")
        from autoglm.gateway.affinity import POLICIES, AffinitySettings

        if policy not in POLICIES:
            raise ValueError(f"routing policy {policy!r} is not one of {', '.join(POLICIES)}")
        self.policy = policy
        self.affinity_settings = affinity or AffinitySettings()
        self._affinity: dict[str, Any] = {}  # route name -> PrefixAffinity (routes with several replicas)
        self.routes = list(routes)
        self.retries, self.backoff = retries, backoff
        self.health_check_interval, self.unhealthy_after = health_check_interval, unhealthy_after
        # model "auto": an autoglm.recommend.Recommender set by the assembly (build_recommender); the app
        # resolves its aliases to a concrete model before dispatch (autoglm.recommend.http.resolve_auto)
        self.recommender: Any = None
        self._by_name: dict[str, Route] = self._names_of(self.routes)
        self._task: asyncio.Task[None] | None = None
        self.on_start: list[Callable[[], None]] = []  # e.g. autoglm.deploy.live reading the versions served

    @staticmethod
    def _names_of(routes: list[Route]) -> dict[str, Route]:
        by_name: dict[str, Route] = {}
        for route in routes:
            for name in [route.name, *route.aliases]:
                if name in by_name:
                    raise ValueError(f"model name {name!r} is used twice")
                by_name[name] = route
        return by_name

    # -- changing what is served (no await inside: each is one atomic step for the event loop) -------
    def add_route(self, route: Route) -> None:
        """Serve ``route`` too; ValueError when one of its names is taken (nothing changes then)."""
        routes = [*self.routes, route]
        by_name = self._names_of(routes)  # raises before anything changes
        self.routes, self._by_name = routes, by_name

    def remove_route(self, name: str) -> Route:
        """Stop routing ``name`` (a served name); its replicas are retired and returned with the route.
        Unknown -> ModelNotFoundError; the last route -> ValueError (a router serves something)."""
        route = self._by_name.get(name)
        if route is None or route.name != name:
            raise ModelNotFoundError(f"no model is served as {name!r}; served: {', '.join(r.name for r in self.routes)}")
        if len(self.routes) == 1:
            raise ValueError(f"{name!r} is the only model served; launch another before stopping it")
        routes = [r for r in self.routes if r is not route]
        self.routes, self._by_name = routes, self._names_of(routes)
        for backend in route.backends:
            backend.retired = True
        return route

    def replace_backends(self, name: str, backends: list[Backend]) -> list[Backend]:
        """Point the route ``name`` at ``backends`` in one step; the old replicas are retired and returned
        (they finish what they serve). Unknown -> ModelNotFoundError."""
        if not backends:
            raise ValueError("a route needs at least one backend")
        route = self._by_name.get(name)
        if route is None or route.name != name:
            raise ModelNotFoundError(f"no model is served as {name!r}; served: {', '.join(r.name for r in self.routes)}")
        old, route.backends = route.backends, list(backends)
        for backend in old:
            backend.retired = True
        return old

    @classmethod
    def from_engines(cls, engines: Mapping[str, Any], **kwargs: Any) -> Router:
        """One single-replica local route per engine (what ``autoglm serve --model`` needs)."""
        return cls([Route(name, [Backend(engine=e, label=name)]) for name, e in engines.items()], **kwargs)

    # -- names -----------------------------------------------------------------------------------
    def names(self) -> list[str]:
        """Every name a client may send: served names, then aliases."""
        return [r.name for r in self.routes] + [a for r in self.routes for a in r.aliases]

    def resolve(self, model: str | None) -> Route:
        """The route for a name or alias (``None``: the first model); unknown -> ModelNotFoundError (404)."""
        if model is None:
            return self.routes[0]
        route = self._by_name.get(model)
        if route is None:
            raise ModelNotFoundError(f"The model '{model}' does not exist. Available models: "
                                     f"{', '.join(self.names())}.")
        return route

    def local_engines(self) -> list[Any]:
        return [b.engine for r in self.routes for b in r.backends if b.engine is not None]

    def upstreams(self) -> list[Upstream]:
        return [b.upstream for r in self.routes for b in r.backends if b.upstream is not None]

    # -- picking and calling ---------------------------------------------------------------------
    def pick(self, route: Route, avoid: set[int] = frozenset(),  # type: ignore[assignment]
             prefix: str | Callable[[], str | None] | None = None) -> Backend | None:
        """The replica for a request (``prefix``: its prompt text, or a callable giving it - called only when a
        route with several replicas needs it - for prefix affinity), preferring
        healthy ones not in ``avoid``: the fewest outstanding requests, or the affine one within its bound."""
        up = [b for b in route.backends if b.is_up()]
        if not up:
            return None
        fresh = [b for b in up if id(b) not in avoid] or up
        if self.policy != "prefix_affinity" or len(route.backends) < 2:
            return min(fresh, key=lambda b: (b.outstanding, b.served))
        policy = self._affinity.get(route.name)
        if policy is None:
            from autoglm.gateway.affinity import PrefixAffinity

            policy = self._affinity[route.name] = PrefixAffinity(self.affinity_settings)
        return policy.choose(fresh, policy.hashes(prefix() if callable(prefix) else prefix))

    def affinity_stats(self) -> dict[str, dict[str, int]]:
        """Per route with prefix affinity: choices that followed a prefix, spilled for load, or were cold."""
        return {name: p.stats() for name, p in self._affinity.items()}

    async def dispatch(self, model: str | None, *, local: Callable[[Any, Route], Awaitable[T]],
                       remote: Callable[[Upstream, Route], Awaitable[T]],
                       prefix: str | Callable[[], str | None] | None = None) -> Dispatched[T]:
        """Serve ``model``: ``local(engine, route)`` or ``remote(upstream, route)`` on a replica, then the
        fallback. ``route`` is the one actually serving (the fallback's, after a fallback)."""
        route = self.resolve(model)
        seen: set[str] = set()
        overloaded: BaseException | None = None
        while route is not None and route.name not in seen:
            seen.add(route.name)
            try:
                return await self._try_route(route, local, remote, prefix)
            except (OverloadedError, UpstreamOverloaded) as exc:
                overloaded = overloaded or exc
                why = "saturated"
            except _RouteDown:
                why = "down"
            nxt = self._by_name.get(route.fallback) if route.fallback else None
            if nxt is not None:
                log.info("model %s is %s; falling back to %s", route.name, why, nxt.name)
            route = nxt
        if overloaded is not None:
            raise overloaded
        first = self.resolve(model)
        raise _unavailable(first, sorted(seen))

    async def _try_route(self, route: Route, local: Callable[[Any, Route], Awaitable[T]],
                         remote: Callable[[Upstream, Route], Awaitable[T]],
                       prefix: str | Callable[[], str | None] | None = None) -> Dispatched[T]:
        tried: set[int] = set()
        for attempt in range(self.retries + 1):
            backend = self.pick(route, tried, prefix if not attempt else None)  # a retry: least loaded
            if backend is None:
                break
            if attempt:
                await asyncio.sleep(self.backoff * 2 ** (attempt - 1))
                if not backend.is_up():  # went down while we waited
                    continue
            tried.add(id(backend))
            backend.outstanding += 1
            backend.served += 1
            try:
                if backend.engine is not None:
                    result = await local(backend.engine, route)
                else:
                    result = await remote(backend.upstream, route)
            except UpstreamConnectionError as exc:
                backend.outstanding -= 1
                backend.failures += 1
                if backend.failures >= self.unhealthy_after and backend.healthy:
                    backend.healthy = False
                    log.warning("upstream %s marked down after %d failures: %s", backend.label, backend.failures, exc)
                else:
                    log.info("upstream %s failed (%s); retrying", backend.label, exc)
                continue
            except BaseException:
                backend.outstanding -= 1
                raise
            backend.failures = 0
            return Dispatched(result, route, backend)
        raise _RouteDown(route.name)

    # -- health ----------------------------------------------------------------------------------
    async def check_all(self) -> None:
        """Probe every remote replica once (concurrently)."""
        remote = [b for r in self.routes for b in r.backends if b.upstream is not None]
        if remote:
            await asyncio.gather(*(b.check() for b in remote))

    async def start(self) -> None:
        """Run the ``on_start`` hooks (the engines are up by now: the app's lifespan starts them first),
        then start the background health check (only when there are remote replicas). Idempotent."""
        for hook in self.on_start:
            try:
                hook()
            except Exception:  # noqa: BLE001 - a hook must not keep the server from starting
                log.exception("router start hook failed")
        if self._task is None and self.upstreams():
            self._task = asyncio.create_task(self._health_loop(), name="autoglm-router-health")

    async def _health_loop(self) -> None:
        while True:
            try:
                await self.check_all()
            except Exception:  # noqa: BLE001 - the loop must outlive one bad probe
                log.exception("health check failed")
            await asyncio.sleep(self.health_check_interval)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for upstream in self.upstreams():
            await upstream.close()

    def health(self) -> dict[str, Any]:
        """Per-model status for ``/health``: ``{"models": {name: {...}}, "status": ok|degraded|unavailable}``."""
        models = {r.name: {"status": r.status(), "kind": "remote" if r.is_remote else "local",
                           "fallback": r.fallback, "backends": [b.describe() for b in r.backends]}
                  for r in self.routes}
        up = sum(m["status"] == "ok" for m in models.values())
        status = "ok" if up == len(models) else ("degraded" if up else "unavailable")
        return {"status": status, "models": models}

    def model_cards(self) -> list[dict[str, Any]]:
        """``/v1/models`` entries: every model, then every alias (``root`` names its target)."""
        cards = [{"id": r.name, "root": r.name, "description": r.description or _engine_description(r),
                  "max_model_len": r.max_model_len or _engine_max_len(r)} for r in self.routes]
        for r in self.routes:
            for alias in r.aliases:
                cards.append({"id": alias, "root": r.name, "description": f"alias of {r.name}",
                              "max_model_len": r.max_model_len or _engine_max_len(r)})
        return cards


class _RouteDown(Exception):
    """Every replica of a route is down or failed (internal: turned into fallback or a 503)."""


def _engine_description(route: Route) -> str:
    engines = [b.engine for b in route.backends if b.engine is not None]
    if engines:
        return getattr(engines[0], "description", "") or ""
    return "remote: " + ", ".join(b.label for b in route.backends)


def _engine_max_len(route: Route) -> int | None:
    engines = [b.engine for b in route.backends if b.engine is not None]
    return getattr(engines[0], "max_model_len", None) if engines else None


def _unavailable(route: Route, tried: list[str]) -> Exception:
    from autoglm.gateway.facade import GatewayError

    via = f" (tried {', '.join(tried)})" if len(tried) > 1 else ""
    return GatewayError(
        503, "model_unavailable",
        f"model {route.name!r} is unavailable: every backend is down or failing{via}; retry shortly, "
        "or see GET /health",
        type="service_unavailable", headers={"retry-after": "5"},
    )
