"""What a running server serves, changed while it runs: list, launch, stop and zero-downtime swap.

:class:`Deployments` (``app.state.deployments``) owns the served models of one server process. It
works on the :class:`~autoglm.gateway.router.Router` (whose ``add_route``, ``remove_route`` and
``replace_backends`` change routing in one step) and on the app's engine map (what ``/metrics`` and
the lifespan's shutdown see):

- :meth:`Deployments.list` - one dict per served model: name, source, registry version, status
  (``ok``/``down``/``loading``/``draining``), replicas, engine, quantize, started_at, and ``backends``:
  each replica's label, requests served and outstanding, and whether it is up.
- :meth:`Deployments.launch` - a ``models:`` entry of a deploy file (checked by
  :class:`~autoglm.deploy.schema.ModelConfig`): pulled, started, health-checked, then routed.
- :meth:`Deployments.stop` - routing stops at once; the replicas finish what they serve (bounded by
  ``drain_s``) and are shut down.
- :meth:`Deployments.swap` - the new version (``models:/NAME@ALIAS``, a local directory, a model id)
  is loaded beside the old one and must answer a real short generation; only then do the route's
  backends change, in one step. The old replicas finish their outstanding requests and streams
  (bounded by ``drain_s``; past it their streams end with an error) and are shut down. A source that
  does not resolve is a :class:`SwapRefused` (409), one that does not load or answer a
  :class:`SwapFailed` (502); either way the old version keeps serving.
- :meth:`Deployments.scale` - set the number of replicas of a local route: new replicas (the same
  settings, the precision the first one runs at) are planned by the precision planner against the
  memory free now (:func:`scale_plan`; a 409 ``does_not_fit`` when they would not fit), started and
  health-checked beside the serving ones, then added to the route in one step; extra replicas are
  taken off the route at once, finish what they serve (bounded by ``drain_s``) and are shut down.
- :meth:`Deployments.on_alias_set` - the inbound webhook's redeploy: every route whose source is
  ``models:/NAME@ALIAS`` is swapped to what that alias names now.

A LoRA adapter version whose base is the model a transformers replica already has in memory is built
from that copy (:mod:`autoglm.deploy.adapter_swap`: base weights copied, adapter deltas merged), not
reloaded from disk; on vLLM the adapter is loaded into the running engine (untested without a GPU).

Knows the router, engines and the hub; not HTTP (:mod:`autoglm.api.routes_deployments` is the API).
"""
from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from autoglm.config import EngineSettings
from autoglm.deploy.schema import ModelConfig
from autoglm.errors import AutoGLMError, ConfigError, ModelNotFoundError
from autoglm.hub.adapters import MERGED_FROM_FILE

__all__ = ["Deployments", "DeploymentError", "DeploymentBusy", "SwapRefused", "SwapFailed", "DoesNotFit",
           "DEFAULT_DRAIN_S", "MAX_REPLICAS", "scale_plan"]

log = logging.getLogger("autoglm.deploy")

DEFAULT_DRAIN_S = 120.0  # the longest an old version waits for its streams before they are ended
HEALTH_TIMEOUT_S = 120.0  # a new version's first short generation (the first step warms it up)
_HEALTH_PROMPT = "Hello"
MAX_REPLICAS = 64  # a typo guard: more replicas of one model than this on one server is not a plan


class DeploymentError(AutoGLMError):
    """A deployment change that cannot be done now; ``status``/``code`` are what the API answers."""

    status, code = 409, "deployment_conflict"


class DeploymentBusy(DeploymentError):
    """Another launch, stop or swap of this model is running."""

    code = "deployment_busy"


class SwapRefused(DeploymentError):
    """The new source does not resolve to a model (nothing was loaded; the old one keeps serving)."""

    code = "swap_refused"


class DoesNotFit(DeploymentError):
    """The replicas asked for would not fit in the memory free now (nothing was loaded)."""

    code = "does_not_fit"


class SwapFailed(DeploymentError):
    """The new version did not load or did not answer its health check (the old one keeps serving)."""

    status, code = 502, "swap_failed"


@dataclass
class _Served:
    name: str
    source: str
    engine: str | None  # backend name (transformers, llamacpp, vllm); None for a remote route
    quantize: str | None
    started_at: float
    version: str | None = None
    phase: str | None = None  # "loading" | "draining" while a change runs; else the route's health says
    replicas: int = 1
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


def _engine_kind(engine: Any) -> str:
    """``transformers`` for TransformersEngine (its backend module's name), ``vllm``, ``llamacpp``..."""
    kind = getattr(engine, "engine_kind", None)
    return kind or type(engine).__module__.rsplit(".", 1)[-1]


def registry_version(path: str | Path | None) -> str | None:
    """The registry version of a directory :func:`autoglm.registry.models.resolve_registered_model`
    wrote (``<store>/registry/NAME/v3`` -> ``"3"``), or of such an adapter merged into its base at
    start; None for anything else."""
    if not path:
        return None
    p = Path(path)
    merged_from = p / MERGED_FROM_FILE  # an adapter version merged into its base when it was served
    if merged_from.is_file():
        try:
            p = Path(json.loads(merged_from.read_text(encoding="utf-8"))["adapter"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
    for d in (p, p.parent):  # a version dir, or its model/ subfolder
        m = re.fullmatch(r"v([0-9]+)", d.name)
        if m and d.parent.parent.name == "registry" and (d / ".complete").is_file():
            return m.group(1)
    return None


def _replica(backend: Any) -> dict[str, Any]:
    """One replica of a route as the listing shows it: its label and what it has served."""
    return {"label": backend.label, "served": backend.served, "outstanding": max(0, backend.outstanding),
            "up": backend.is_up()}


def _first_error(exc: Any) -> tuple[str, str]:
    """(key path, message) of a pydantic ValidationError's first problem."""
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err.get("loc", ())) or "(entry)"
    return loc, err.get("msg", "invalid value")


class Deployments:
    """The served models of one server; see the module docstring.

    ``engines``: the app's label -> engine map (``app.state.engines``), kept in step in place.
    ``base``: engine settings a launch starts from (store dir, offline mode); default: the first
    local engine's, else :class:`~autoglm.config.EngineSettings`. ``on_switch``: called (awaited)
    after routing changed, e.g. to clear the response cache so no old answer is replayed. ``on_event``:
    called (awaited) with ``("deploy.launched" | "deploy.stopped" | "deploy.swapped", details)`` after each
    change, e.g. to send the outbound webhooks; its failure is logged, never the change's.
    """

    def __init__(self, router: Any, engines: MutableMapping[str, Any] | None = None, *,
                 base: EngineSettings | None = None, drain_s: float = DEFAULT_DRAIN_S,
                 health_timeout_s: float = HEALTH_TIMEOUT_S,
                 on_switch: Callable[[str], Awaitable[None]] | None = None,
                 on_event: Callable[[str, dict[str, Any]], Awaitable[None]] | None = None,
                 engine_factory: Callable[[EngineSettings], Any] | None = None):
        self.router = router
        self.engines = engines if engines is not None else {}
        self.drain_s, self.health_timeout_s = drain_s, health_timeout_s
        self.on_switch, self.on_event = on_switch, on_event
        self._factory = engine_factory
        self._base = base
        self._served: dict[str, _Served] = {}
        now = time.time()
        for route in router.routes:
            self._served[route.name] = self._adopt(route, now)
        hooks = getattr(router, "on_start", None)
        if hooks is not None:  # once the engines are up: the versions served (x-autoglm-model-version)
            hooks.append(self.list)

    # -- what is served ---------------------------------------------------------------------------
    def _adopt(self, route: Any, now: float) -> _Served:
        local = [b.engine for b in route.backends if b.engine is not None]
        if not local:
            return _Served(route.name, ", ".join(b.label for b in route.backends), None, None, now)
        settings = getattr(local[0], "settings", None)
        source = getattr(settings, "model", None) or route.name
        quantize = getattr(settings, "quantize", None)
        return _Served(route.name, source, _engine_kind(local[0]), quantize, now)

    def _route(self, name: str) -> Any:
        route = next((r for r in self.router.routes if r.name == name), None)
        if route is None or name not in self._served:
            served = ", ".join(r.name for r in self.router.routes)
            raise ModelNotFoundError(f"no model is served as {name!r}; served: {served}")
        return route

    def _entry(self, route: Any) -> dict[str, Any]:
        served = self._served[route.name]
        local = [b for b in route.backends if b.engine is not None]
        if local:
            info = getattr(local[0].engine, "info", None) or {}
            if served.version is None and served.source.startswith("models:/"):
                served.version = registry_version(info.get("path"))
            for b in local:
                b.version = b.version or served.version
            if info.get("precision"):  # what the planner chose for "auto"
                served.quantize = info["precision"]
        status = served.phase or route.status()
        return {"name": route.name, "source": served.source, "version": served.version, "status": status,
                "replicas": len(route.backends), "engine": served.engine if local else "remote",
                "quantize": served.quantize, "started_at": served.started_at,
                "backends": [_replica(b) for b in route.backends]}

    def list(self) -> list[dict[str, Any]]:
        """One dict per served model (see the module docstring), then the launches still loading and the
        stopped models still draining."""
        routed = [self._entry(r) for r in self.router.routes if r.name in self._served]
        names = {e["name"] for e in routed}
        loading = [{"name": s.name, "source": s.source, "version": s.version, "status": s.phase,
                    "replicas": s.replicas, "engine": s.engine, "quantize": s.quantize, "started_at": s.started_at,
                    "backends": []}
                   for s in self._served.values() if s.name not in names and s.phase in ("loading", "draining")]
        return routed + loading

    def get(self, name: str) -> dict[str, Any]:
        return self._entry(self._route(name))

    def _base_settings(self) -> EngineSettings:
        if self._base is not None:
            return self._base
        for engine in self.router.local_engines():
            settings = getattr(engine, "settings", None)
            if isinstance(settings, EngineSettings):
                return settings
        return EngineSettings()

    def _create(self, settings: EngineSettings) -> Any:
        if self._factory is not None:
            return self._factory(settings)
        from autoglm.engine.base import create_engine

        return create_engine(settings)

    # -- launch and stop --------------------------------------------------------------------------
    async def launch(self, spec: Mapping[str, Any] | ModelConfig) -> dict[str, Any]:
        """Serve one more model (a ``models:`` entry); returns its :meth:`list` entry."""
        from pydantic import ValidationError

        from autoglm.deploy.runner import engine_settings_for
        from autoglm.gateway.router import Backend, Route

        if not isinstance(spec, ModelConfig):
            if not isinstance(spec, Mapping):
                raise ConfigError("a deployment is one models: entry, a JSON object such as "
                                  '{"name": "demo2", "source": "autoglm-demo"}')
            try:
                spec = ModelConfig.model_validate(dict(spec))
            except ValidationError as exc:
                loc, msg = _first_error(exc)
                raise ConfigError(f"models entry: {loc}: {msg}", ) from None
        taken = set(self.router.names()) | set(self._served)
        for n in [spec.name, *spec.aliases]:
            if n in taken:
                raise ConfigError(f"models entry: name: {n!r} is already served; stop it first, or swap it "
                                  "(POST /admin/deployments/{name}/swap)")
        if spec.fallback is not None and spec.fallback not in self.router.names():
            raise ConfigError(f"models entry: fallback: no model is named {spec.fallback!r}; served: "
                              f"{', '.join(self.router.names())}")
        served = _Served(spec.name, spec.model_source if spec.upstream is None else ", ".join(spec.upstream.all_urls),
                         None if spec.upstream is not None else spec.engine, spec.quantize, time.time(),
                         phase="loading", replicas=len(spec.upstream.all_urls) if spec.upstream else spec.replicas)
        self._served[spec.name] = served
        try:
            if spec.upstream is not None:
                from autoglm.deploy.runner import _secret
                from autoglm.gateway.upstream import Upstream

                up = spec.upstream
                backends = [Backend(upstream=Upstream(url, api_key=_secret(up.api_key), model=up.model or spec.name,
                                                      timeout=up.timeout, connect_timeout=up.connect_timeout))
                            for url in up.all_urls]
            else:
                settings = engine_settings_for(spec, self._base_settings())
                if not spec.model_source.lower().endswith(".gguf"):
                    from autoglm.hub.resolve import resolve_model

                    await asyncio.to_thread(resolve_model, spec.model_source, settings, False)  # pull when missing
                labels = [spec.name] if spec.replicas == 1 else [f"{spec.name}#{i}" for i in range(spec.replicas)]
                engines = [self._create(settings) for _ in labels]
                await self._start_checked(engines, spec.model_source)
                backends = [Backend(engine=e, label=label) for e, label in zip(engines, labels)]
                served.engine = _engine_kind(engines[0])
            route = Route(spec.name, backends, aliases=list(spec.aliases), fallback=spec.fallback,
                          description=spec.description)
            try:
                self.router.add_route(route)
            except ValueError as exc:
                await self._shutdown([b.engine for b in backends if b.engine is not None])
                raise ConfigError(f"models entry: name: {exc}") from None
        except BaseException:
            self._served.pop(spec.name, None)
            raise
        for b in backends:
            if b.engine is not None:
                self.engines[b.label] = b.engine
        await self.router.start()  # the health check, when the new route has upstreams
        served.phase = None
        log.info("deployments: launched %s (%s)", spec.name, served.source)
        entry = self._entry(route)
        await self._event("deploy.launched", entry)
        return entry

    async def _event(self, event: str, details: dict[str, Any]) -> None:
        if self.on_event is None:
            return
        try:
            await self.on_event(event, details)
        except Exception:  # noqa: BLE001 - the change is done; a webhook that fails is the webhook's
            log.warning("deployments: the %s hook failed", event, exc_info=True)

    async def stop(self, name: str, *, drain_s: float | None = None) -> dict[str, Any]:
        """Stop routing ``name``; its replicas finish what they serve, then shut down."""
        route, served = self._route(name), self._idle(name)
        async with served.lock:
            entry = self._entry(route)
            try:
                old = self.router.remove_route(name)
            except ValueError as exc:
                raise DeploymentError(str(exc)) from None
            served.phase, served.replicas = "draining", len(old.backends)
            try:
                drained = await self._drain(old.backends, self.drain_s if drain_s is None else drain_s)
                await self._retire(old.backends, keep=[])
            finally:
                self._served.pop(name, None)
        log.info("deployments: stopped %s (%s)", name, "drained" if drained else "drain timed out")
        result = {**entry, "status": "down", "drained": drained}
        await self._event("deploy.stopped", result)
        return result

    # -- swap -------------------------------------------------------------------------------------
    def _idle(self, name: str) -> Any:
        """``name``'s serving record, or :class:`DeploymentBusy` when a swap, scale or stop holds it."""
        served = self._served[name]
        if served.lock.locked():
            raise DeploymentBusy(f"{name!r} is being changed (a swap, scale or stop is running); retry when it is done")
        return served

    async def swap(self, name: str, source: str, *, drain_s: float | None = None) -> dict[str, Any]:
        """Load ``source`` beside the old version, check it, switch, drain and shut the old one down.

        Returns ``{"name", "from", "to", "switched_at", "drained"}`` (plus ``from_version``,
        ``to_version``, ``mode`` -- ``adapter`` when built on the loaded base, else ``full`` -- and
        ``load_s``). Raises :class:`SwapRefused` / :class:`SwapFailed` with the reason, the old
        version serving on."""
        if not isinstance(source, str) or not source.strip():
            raise ConfigError("swap: source: give what to load, e.g. models:/NAME@champion, a directory or a model id")
        source = source.strip()
        _check_drain("swap", drain_s)
        route, served = self._route(name), self._idle(name)
        async with served.lock:
            old_backends = list(route.backends)
            old_engines = _local_engines(name, old_backends, "a swap replaces local engines (stop it and launch "
                                                             "the new one instead)")
            before = self._entry(route)
            served.phase = "loading"
            try:
                t0 = time.monotonic()
                new_engines, mode, path = await self._load_beside(old_engines, source)
                load_s = time.monotonic() - t0
            finally:
                served.phase = None
            from autoglm.gateway.router import Backend

            version = registry_version(path) if source.startswith("models:/") else None
            new_backends = [Backend(engine=e, label=b.label) for e, b in zip(new_engines, old_backends)]
            for b in new_backends:
                b.version = version
            # the switch: one step, no await between the router and the engine map
            self.router.replace_backends(name, new_backends)
            for b in new_backends:
                self.engines[b.label] = b.engine
            switched_at = time.time()
            served.source, served.version, served.started_at = source, version, switched_at
            served.engine = _engine_kind(new_engines[0])
            log.info("deployments: %s now serves %s%s (%s load, %.1fs); draining the old version", name, source,
                     f" v{version}" if version else "", mode, load_s)
            await self._switched(name)
            served.phase = "draining"
            try:
                drained = await self._drain(old_backends, self.drain_s if drain_s is None else drain_s)
                await self._retire(old_backends, keep=new_engines)
            finally:
                served.phase = None
            await self._switched(name)  # again: an old request may have stored its answer while draining
        result = {"name": name, "from": before["source"], "to": source, "switched_at": switched_at,
                  "drained": drained, "from_version": before["version"], "to_version": version, "mode": mode,
                  "load_s": round(load_s, 3)}
        await self._event("deploy.swapped", result)
        return result

    async def _load_beside(self, old_engines: list[Any], source: str) -> tuple[list[Any], str, str | None]:
        """New engines for ``source``, started and health-checked; (engines, mode, resolved path)."""
        from autoglm.deploy import adapter_swap

        settings = replace(getattr(old_engines[0], "settings", None) or self._base_settings(), model=source,
                           revision=None)
        try:
            local = await asyncio.to_thread(adapter_swap.locate, source, settings)
        except AutoGLMError as exc:
            raise SwapRefused(f"cannot swap to {source}: {exc}") from None
        engines: list[Any] | None = None
        mode = "full"
        if local is not None and adapter_swap.is_adapter_dir(local):
            try:
                engines, why = await asyncio.to_thread(adapter_swap.adapter_engines, old_engines, local, settings)
            except AutoGLMError as exc:
                raise SwapRefused(f"cannot swap to {source}: {exc}") from None
            if engines is not None:
                mode = "adapter"
            else:
                log.info("deployments: %s is a LoRA adapter; building it from the loaded base is not possible "
                         "(%s): loading it in full", source, why)
        if engines is None:
            try:
                resolved = await asyncio.to_thread(_resolve, str(local) if local is not None else source, settings)
            except AutoGLMError as exc:
                raise SwapRefused(f"cannot swap to {source}: {exc}") from None
            settings = replace(settings, model=str(resolved))
            engines = [self._create(settings) for _ in old_engines]
        await self._start_checked(engines, source)
        return engines, mode, str(local) if local is not None else None

    async def _start_checked(self, engines: list[Any], source: str) -> None:
        """Start each engine and make it generate a few tokens; shut them all down on any failure."""
        try:
            for engine in engines:
                try:
                    await engine.start()
                except AutoGLMError as exc:
                    raise SwapFailed(f"{source} did not load: {exc}") from None
                except Exception as exc:  # noqa: BLE001 - any loader failure is the new version's fault
                    raise SwapFailed(f"{source} did not load ({type(exc).__name__}: {exc})") from None
                await self._health_check(engine, source)
        except BaseException:
            await self._shutdown(engines)
            raise

    async def _health_check(self, engine: Any, source: str) -> None:
        from autoglm.engine.io_struct import EngineRequest, SamplingParams

        try:
            ids = list(engine.tokenizer.encode(_HEALTH_PROMPT, add_special_tokens=False))[:8] or [0]
            request = EngineRequest(f"health-{uuid.uuid4().hex[:12]}", ids,
                                    SamplingParams(max_tokens=2, temperature=0.0, ignore_eos=True))

            async def run() -> int:
                n = 0
                async for out in engine.generate(request):
                    n += len(out.token_ids)
                    if out.finished:
                        if out.finish_reason not in ("length", "stop"):
                            raise AutoGLMError(f"finished with {out.finish_reason!r}")
                        return n
                raise AutoGLMError("the stream ended without a finished output")

            produced = await asyncio.wait_for(run(), self.health_timeout_s)
        except asyncio.TimeoutError:
            raise SwapFailed(f"{source} loaded but did not answer a 2-token health check within "
                             f"{self.health_timeout_s:g}s") from None
        except Exception as exc:  # noqa: BLE001 - whatever broke, the new version is not healthy
            log.debug("health check of %s failed", source, exc_info=True)
            raise SwapFailed(f"{source} loaded but failed its health check ({type(exc).__name__}: {exc})") from None
        if produced < 1:
            raise SwapFailed(f"{source} loaded but generated nothing in its health check")

    async def _drain(self, backends: list[Any], drain_s: float) -> bool:
        """Wait until no request runs on ``backends`` (True) or ``drain_s`` passed (False)."""
        deadline = time.monotonic() + drain_s
        while any(b.outstanding > 0 for b in backends):
            if time.monotonic() >= deadline:
                left = sum(max(0, b.outstanding) for b in backends)
                log.warning("deployments: %d request(s) still on the old version after %gs; ending them", left, drain_s)
                return False
            await asyncio.sleep(0.05)
        return True

    async def _retire(self, backends: list[Any], *, keep: list[Any]) -> None:
        """Shut down the engines of retired ``backends`` (not one an engine in ``keep`` still runs on)."""
        from autoglm.deploy.adapter_swap import root_engine

        kept = {id(root_engine(e)) for e in keep}
        engines = []
        for b in backends:
            if b.engine is not None:
                if self.engines.get(b.label) is b.engine:
                    self.engines.pop(b.label, None)
                if id(root_engine(b.engine)) not in kept:
                    engines.append(b.engine)
            elif b.upstream is not None:
                try:
                    await b.upstream.close()
                except Exception:  # noqa: BLE001 - closing a client must not fail the stop
                    log.debug("closing upstream %s failed", b.label, exc_info=True)
        await self._shutdown(engines, end_streams=True)

    @staticmethod
    async def _shutdown(engines: list[Any], *, end_streams: bool = False) -> None:
        for engine in engines:
            if end_streams and getattr(engine, "_queues", None):
                # past the drain: streams still open end with an error instead of waiting forever
                fail = getattr(engine, "_fail_all", None)
                if fail is not None:
                    fail(AutoGLMError("this model version was replaced; retry the request"))
            try:
                await engine.shutdown()
            except Exception:  # noqa: BLE001 - shut the others down regardless
                log.exception("shutting down a replaced engine failed")

    async def _switched(self, name: str) -> None:
        if self.on_switch is not None:
            try:
                await self.on_switch(name)
            except Exception:  # noqa: BLE001 - the swap is done; a cache that cannot be cleared is logged
                log.warning("deployments: after switching %s the on_switch hook failed", name, exc_info=True)

    # -- scale ------------------------------------------------------------------------------------
    async def scale(self, name: str, replicas: int, *, drain_s: float | None = None) -> dict[str, Any]:
        """Serve ``name`` with ``replicas`` replicas (see the module docstring).

        Returns ``{"name", "from", "to", "added", "removed", "backends", "drained", "plan"}``; ``plan`` is
        the planner's view of one more replica (:func:`scale_plan`) when replicas were added, else None."""
        if isinstance(replicas, bool) or not isinstance(replicas, int) or not 1 <= replicas <= MAX_REPLICAS:
            raise ConfigError(f"scale: replicas: must be a whole number from 1 to {MAX_REPLICAS}; got {replicas!r}")
        _check_drain("scale", drain_s)
        route, served = self._route(name), self._idle(name)
        async with served.lock:
            current = list(route.backends)
            engines = _local_engines(name, current, "its replicas are the upstream's urls (change upstream.urls in "
                                                    "the deploy file)")
            before = len(current)
            plan: dict[str, Any] | None = None
            added: list[Any] = []
            removed: list[Any] = []
            drained = True
            from autoglm.gateway.router import Backend

            if replicas > before:
                settings = self._replica_settings(engines[0])
                plan = await asyncio.to_thread(scale_plan, engines[0], settings, replicas - before)
                first = getattr(getattr(engines[0], "settings", None), "quantize", None)
                if first and first != settings.quantize:  # e.g. "auto" chose int8 for the first replica
                    plan["reasons"].insert(0, f"the serving replica runs at {settings.quantize} (quantize: {first} "
                                              "chose it): the new replicas match it")
                if not plan["fits"]:
                    raise DoesNotFit(f"{replicas - before} more replica(s) of {name!r} would not fit: "
                                     f"{'; '.join(plan['reasons'][-2:])}")
                served.phase = "loading"
                try:
                    new_engines = [self._create(settings) for _ in range(replicas - before)]
                    await self._start_checked(new_engines, served.source)
                finally:
                    served.phase = None
                taken = {b.label for b in current} | set(self.engines)
                labels = []
                i = 0
                while len(labels) < len(new_engines):
                    label = f"{name}#{i}"
                    if label not in taken:
                        labels.append(label)
                    i += 1
                added = [Backend(engine=e, label=label) for e, label in zip(new_engines, labels)]
                for b in added:
                    b.version = served.version
                # one step: the route now has the old replicas and the new ones
                self.router.replace_backends(name, current + added)
                for b in current:  # replace_backends retires what it replaced; these keep serving
                    b.retired = False
                for b in added:
                    self.engines[b.label] = b.engine
                log.info("deployments: %s scaled %d -> %d replicas", name, before, replicas)
            elif replicas < before:
                kept, removed = current[:replicas], current[replicas:]
                self.router.replace_backends(name, kept)
                for b in kept:
                    b.retired = False
                log.info("deployments: %s scaled %d -> %d replicas; draining %s", name, before, replicas,
                         ", ".join(b.label for b in removed))
                served.phase = "draining"
                try:
                    drained = await self._drain(removed, self.drain_s if drain_s is None else drain_s)
                    await self._retire(removed, keep=[b.engine for b in kept])
                finally:
                    served.phase = None
            served.replicas = len(route.backends)
        result = {"name": name, "from": before, "to": len(route.backends), "added": [b.label for b in added],
                  "removed": [b.label for b in removed], "backends": [_replica(b) for b in route.backends],
                  "drained": drained, "plan": plan}
        if added or removed:
            await self._event("deploy.scaled", result)
        return result

    def _replica_settings(self, engine: Any) -> EngineSettings:
        """A new replica's settings: the serving one's, pinned to the precision it runs at."""
        settings = getattr(engine, "settings", None)
        if not isinstance(settings, EngineSettings):
            settings = self._base_settings()
        info = getattr(engine, "info", None) or {}
        changes: dict[str, Any] = {}
        if info.get("precision"):  # "auto" chose this for the first replica: the others match it
            changes["quantize"] = info["precision"]
        return replace(settings, **changes) if changes else settings

    # -- redeploy on promotion --------------------------------------------------------------------
    async def on_alias_set(self, model: str, alias: str, version: str) -> dict[str, Any]:
        """Swap every route served from ``models:/MODEL@ALIAS`` to the version the alias names now."""
        uri = f"models:/{model}@{alias}"
        targets = [s for s in self._served.values() if s.source == uri]
        if not targets:
            return {"redeployed": False, "reason": f"no model on this server is served from {uri}"}
        swapped, skipped = [], []
        for served in targets:
            self.get(served.name)  # refreshes the version of a route nothing asked about yet
            if served.version is not None and served.version == str(version):
                skipped.append({"name": served.name, "reason": f"already serves version {version}"})
                continue
            result = await self.swap(served.name, uri)
            swapped.append({k: result[k] for k in ("name", "from_version", "to_version", "drained", "mode")})
        return {"redeployed": bool(swapped), "swapped": swapped, "skipped": skipped}


def scale_plan(engine: Any, settings: EngineSettings, add: int, *, device: Any = None) -> dict[str, Any]:
    """The precision planner's view of ``add`` more replicas like ``engine``: one replica's plan at the
    memory free now (``device``: a :class:`~autoglm.quantization.device.DeviceInfo`, default detected),
    and whether ``add`` of them fit its budget. ``{"precision", "per_replica_bytes", "needed_bytes",
    "budget_bytes", "fits", "reasons", "table", "device"}``; ``fits`` is True with a reason saying so when
    the engine's architecture is unknown (a scripted or remote engine: nothing to plan)."""
    from autoglm.quantization.device import detect_device
    from autoglm.quantization.planner import ModelArch, plan_precision

    info = getattr(engine, "info", None) or {}
    path = Path(info["path"]) if info.get("path") else None
    config_file = path / "config.json" if path is not None else None
    if config_file is None or not config_file.is_file():
        return {"precision": info.get("precision"), "per_replica_bytes": None, "needed_bytes": None,
                "budget_bytes": None, "fits": True, "table": "", "device": None,
                "reasons": ["the engine reports no model directory with config.json: no memory plan"]}
    config = json.loads(config_file.read_text(encoding="utf-8"))
    config = config.get("text_config") or config
    dev = device if device is not None else detect_device(settings.device)
    try:
        plan = plan_precision(ModelArch.from_config(config, name=path.name), dev, requested=settings.quantize,
                              max_model_len=settings.max_model_len, max_num_seqs=settings.max_num_seqs,
                              extra_kv_tokens=settings.prefix_cache_tokens)
    except AutoGLMError as exc:  # not even one more replica fits
        return {"precision": settings.quantize, "per_replica_bytes": None, "needed_bytes": None,
                "budget_bytes": int(dev.free_bytes), "fits": False, "table": "", "device": dev.describe(),
                "reasons": [str(exc)]}
    row = plan.chosen
    per = max(row.total_bytes, row.peak_bytes)
    # replicas load one after another: one load peak, then each replica's steady footprint
    needed = per + (add - 1) * row.total_bytes
    fits = needed <= plan.budget_bytes
    gib = 1024**3
    reasons = list(plan.reasons) + [
        f"{add} more replica(s) at {plan.precision}: {needed / gib:.2f} GiB of the {plan.budget_bytes / gib:.2f} GiB "
        f"budget ({dev.describe()}): {'fits' if fits else 'does not fit'}"]
    return {"precision": plan.precision, "per_replica_bytes": row.total_bytes, "needed_bytes": needed,
            "budget_bytes": plan.budget_bytes, "fits": fits, "reasons": reasons, "table": plan.table(),
            "device": dev.describe(), "max_model_len": plan.max_model_len, "max_num_seqs": plan.max_num_seqs}


def _resolve(source: str, settings: EngineSettings) -> Path:
    from autoglm.hub.resolve import resolve_model

    if source.lower().endswith(".gguf"):
        return Path(source)
    return resolve_model(source, settings, progress=False).path


def _check_drain(op: str, drain_s: float | None) -> None:
    if drain_s is not None and not drain_s >= 0:
        raise ConfigError(f"{op}: drain_s: must be 0 or more seconds; got {drain_s!r}")


def _local_engines(name: str, backends: list[Any], why_not: str) -> list[Any]:
    """The engines behind ``backends``; :class:`DeploymentError` (``why_not``) when a remote upstream serves."""
    engines = [b.engine for b in backends if b.engine is not None]
    if len(engines) != len(backends):
        raise DeploymentError(f"{name!r} is served by a remote upstream; {why_not}")
    return engines
