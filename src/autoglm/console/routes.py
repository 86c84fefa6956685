"""The console's HTTP helpers: the caller's session, the planner, the deploy schema and its validator.

* ``GET /ui/api/session`` -- always 200, never a secret: whether this server needs a key, whether the
  key sent (``Authorization: Bearer``) is valid, an admin key or limited to some models, and which
  capabilities the server has (routes mounted, metrics on and readable, feedback capture on for this
  key, the ``model: "auto"`` aliases, installed extras). The pages use it instead of probing routes,
  so a page never shows a 401/404 in the browser's console for something the server simply lacks.
* ``GET /admin/plan?model=&device=&quantize=&max_model_len=&max_num_seqs=&free_gb=`` -- the precision
  planner's table (:func:`autoglm.quantization.planner.plan_precision`) as JSON; loads no weights.
* ``GET /admin/schema/deploy`` -- ``DeployConfig.model_json_schema()``: the form is generated from it.
* ``POST /admin/validate/deploy?name=FILE`` -- body: the deploy file's text. 200 with ``valid`` true and
  the plan, or false and the error exactly as ``autoglm deploy FILE --dry-run`` prints it
  (``FILE:line key: message``, split into ``line``, ``key``, ``message``). ``${VAR}`` references are
  not substituted here (the server's environment is nobody's business); ``autoglm deploy`` does that.
* ``POST /admin/pulls`` -- body ``{"name": "org/repo", "source": "auto", "revision": null}``: starts
  ``autoglm pull NAME`` in the background (:mod:`autoglm.console.pulls`); 202 with its state. A name that
  cannot be pulled is a 400 (404 for one that is no alias and no ``org/name``) before anything starts;
  one missing on every hub ends in ``state: "error"`` with the message ``autoglm pull`` prints.
  ``GET /admin/pulls`` lists the pulls and what the store holds; ``GET /admin/pulls/{id}`` is one
  pull's progress (bytes and files done of the total, ``percent``, ``state``, ``error``, ``path``).

The ``/admin/`` helpers are for operators, as every ``/admin`` route: the admin key, a static
``--api-key``, or a loopback caller while the server is open (``GatewayHTTP.require_operator``). Knows FastAPI, the gateway's key objects and the deploy loader; not engines.
"""
from __future__ import annotations

import asyncio
import importlib.util
import json
import re
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from autoglm.api.errors import APIError

__all__ = ["install_console_routes", "arch_for", "validate_deploy_text"]

GiB = 1024**3
# Routes of other parts the pages use, by capability name: (method, a path that route answers).
CAPABILITY_ROUTES = {
    "deployments": ("GET", "/admin/deployments"),
    "pulls": ("GET", "/admin/pulls"),
    "scale": ("POST", "/admin/deployments/some-model/scale"),
    "resume": ("POST", "/admin/runs/some-run/resume"),
    "keys": ("GET", "/admin/keys"),
    "usage": ("GET", "/admin/usage"),
    "feedback": ("POST", "/v1/feedback"),
    "pipelines": ("GET", "/admin/pipelines"),
    "runs": ("GET", "/admin/runs/some-run"),
    "studies": ("GET", "/admin/studies"),
    "registry": ("GET", "/admin/models"),
    "loop": ("GET", "/admin/loop"),
}
# What to install when a part of the console has nothing to show: import name -> pip extra.
EXTRAS = {"mlflow": "train", "optuna": "train", "prometheus_client": None, "redis": "gateway"}
_ENV_REF = re.compile(r"(?<!\$)\$\{")
_WHERE = re.compile(r"^(?P<file>.*?):(?P<line>\d+)(?: (?P<key>\S+))?$")


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _mounted(app: FastAPI, method: str, path: str) -> bool:
    """Whether a route of ``app`` answers ``method path`` (routers included with a prefix too)."""
    from starlette.routing import Match

    scope = {"type": "http", "method": method, "path": path, "root_path": "", "path_params": {}, "app": app}
    for route in app.routes:
        try:
            if route.matches(scope)[0] == Match.FULL:
                return True
        except Exception:  # noqa: BLE001 - a route kind that cannot say: not the one we look for
            continue
    return False


# -- who is calling ---------------------------------------------------------------------------------
async def _caller(request: Request) -> dict[str, Any]:
    """The caller as the pages need it; never raises for a missing or bad key."""
    from autoglm.gateway.facade import GatewayError
    from autoglm.gateway.http import STATIC_KEY_INFO

    owner = request.app.state.gateway_http
    gw = owner.gateway
    headers = request.headers
    out: dict[str, Any] = {"valid": False, "name": None, "models": None, "admin": False, "gateway_admin": False,
                           "deploy": False, "admin_api": False, "error": None}
    try:
        key = await owner.authenticate(headers)
    except GatewayError as exc:
        out["error"], out["status"] = exc.message, exc.status
        return out
    gateway_admin = gw is not None and gw.is_admin(headers)
    out.update(valid=True, gateway_admin=gateway_admin)
    if key is None:  # open: no key needed
        out.update(name=None, admin=True)
    else:
        out.update(name=key.name, models=list(key.models) if key.models is not None else None,
                   admin=gateway_admin or key is STATIC_KEY_INFO)
    # /admin/deployments, /admin/pipelines, studies, models, loop and this module's helpers all admit the
    # operators of GatewayHTTP.require_operator: the admin key, a static key, or loopback on an open server
    access = await owner.operator_access(request)
    out["deploy"] = out["admin_api"] = access is not None
    return out


async def _key_required(request: Request) -> bool:
    from autoglm.gateway.facade import GatewayError

    try:
        return await request.app.state.gateway_http.authenticate({}) is not None
    except GatewayError:
        return True


async def require_operator(request: Request) -> None:
    """The console's admin helpers: the operators every ``/admin`` route admits (a 401/403 otherwise)."""
    await request.app.state.gateway_http.require_operator(request)


# -- the planner ------------------------------------------------------------------------------------
def arch_for(name: str) -> tuple[Any, list[str]]:
    """The :class:`~autoglm.quantization.planner.ModelArch` of a demo model, a registry alias or a local
    directory with ``config.json``, and where the numbers came from. Loads no weights, no network."""
    from autoglm.errors import ModelNotFoundError
    from autoglm.quantization.planner import ModelArch

    path = Path(name).expanduser()
    if path.is_dir():
        try:
            config = json.loads((path / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ModelNotFoundError(f"{path} has no readable config.json ({exc})") from None
        return ModelArch.from_config(config, name=path.name), [f"architecture from {path / 'config.json'}"]
    from autoglm.hub import demo
    from autoglm.hub.registry import resolve_name

    spec = resolve_name(name)
    if demo.is_demo_model(name):  # (its config is built with transformers: a slower import)
        return ModelArch.from_config(demo.demo_config(name), name=name), [f"demo model {name} (random weights)"]
    if spec is not None and spec.hidden_size is not None:
        arch = ModelArch.from_config(spec.config_dict(), name=spec.name)
        if spec.num_parameters and not spec.is_moe:
            arch.num_parameters = int(spec.num_parameters)
        return arch, [f"architecture from the alias registry ({spec.hf_repo or spec.name})"]
    raise ModelNotFoundError(f"cannot find the architecture of {name!r} without downloading: use a demo model, "
                             "a known alias (`autoglm models`) or a local directory with config.json")


def _number(value: str | None, what: str, kind: type = int, minimum: float = 1) -> Any:
    if value in (None, ""):
        return None
    try:
        n = kind(value)
    except ValueError:
        raise APIError(f"{what} must be a number, got {value[:40]!r}", 400, param=what) from None
    if not n >= minimum or n != n or n == float("inf"):
        raise APIError(f"{what} must be at least {minimum:g}, got {value[:40]!r}", 400, param=what)
    return n


def _plan(model: str, device: str, quantize: str, max_model_len: int | None, max_num_seqs: int,
          free_gb: float | None) -> dict[str, Any]:
    from autoglm.errors import AutoGLMError, ModelNotFoundError
    from autoglm.quantization.device import DeviceInfo, detect_device
    from autoglm.quantization.planner import plan_precision

    try:
        arch, notes = arch_for(model)
        kind = device.partition(":")[0]
        if free_gb is not None and kind in ("cuda", "mps"):  # a device that need not be here
            free = int(free_gb * GiB)
            dev = DeviceInfo(kind=kind, name=f"{kind} with {free_gb:g} GiB free", total_bytes=free, free_bytes=free,
                             supports_bf16=kind == "cuda")
        else:
            dev = detect_device(device)
            if free_gb is not None:
                free = int(free_gb * GiB)
                dev = DeviceInfo(kind=dev.kind, name=f"{dev.name}; {free_gb:g} GiB free (given)", index=dev.index,
                                 total_bytes=max(dev.total_bytes, free), free_bytes=free,
                                 supports_bf16=dev.supports_bf16)
        plan = plan_precision(arch, dev, quantize, max_model_len=max_model_len, max_num_seqs=max_num_seqs)
    except ModelNotFoundError as exc:
        raise APIError(str(exc), 404, param="model", code="model_not_found") from None
    except AutoGLMError as exc:  # does not fit, unsupported precision or device
        raise APIError(str(exc), 400, code="invalid_value") from None
    out = plan.to_dict()
    out["device"] = {**out["device"], "description": dev.describe()}
    out["notes"] = notes
    out["table"] = plan.table()
    out["parameters"] = arch.num_parameters
    return out


# -- the deploy file --------------------------------------------------------------------------------
def validate_deploy_text(text: str, name: str = "autoglm-deploy.yaml") -> dict[str, Any]:
    """``{"valid": True, "plan": [...], "data": {...}}`` or ``{"valid": False, "error": {...}, "data": ...}``;
    ``data`` is the YAML as written (no defaults), for the form; None when it is not a mapping."""
    import yaml

    from autoglm.deploy.loader import parse_deploy_text
    from autoglm.deploy.runner import plan_lines
    from autoglm.errors import ConfigError

    literal = _ENV_REF.sub("$${", text)  # ${VAR} stays text: the server's environment is not shown
    data: Any = None
    try:
        data = yaml.safe_load(literal)
    except yaml.YAMLError:
        pass
    data = json.loads(json.dumps(data, default=str)) if isinstance(data, dict) else None
    try:
        config = parse_deploy_text(literal, name)
    except ConfigError as exc:
        where = exc.where or ""
        m = _WHERE.match(where)
        message = str(exc)[len(where) + 2:] if where else str(exc)
        return {"valid": False, "data": data, "error": {
            "text": str(exc), "where": where, "line": int(m["line"]) if m else None,
            "key": m["key"] if m else None, "message": message}}
    return {"valid": True, "data": data, "plan": plan_lines(config), "models": [m.name for m in config.models]}


def _engine_settings(app: FastAPI) -> Any:
    """The settings a pull starts from: the first local engine's (its store), else the defaults."""
    from autoglm.config import EngineSettings

    router = getattr(app.state, "router", None)
    for engine in (router.local_engines() if router is not None else []):
        settings = getattr(engine, "settings", None)
        if isinstance(settings, EngineSettings):
            return settings
    return EngineSettings()


def install_console_routes(app: FastAPI, server: Any) -> None:
    """Mount ``/ui/api/session`` and the ``/admin/`` helpers on ``app``."""
    from autoglm.console.pulls import PullJobs

    schema_cache: dict[str, Any] = {}
    pulls = PullJobs(lambda: _engine_settings(app))
    app.state.pulls = pulls

    @app.get("/ui/api/session", include_in_schema=False)
    async def session(request: Request) -> JSONResponse:
        owner = request.app.state.gateway_http
        gw, router = owner.gateway, request.app.state.router
        caller = await _caller(request)
        features = {name: _mounted(request.app, *route) for name, route in CAPABILITY_ROUTES.items()}
        metrics_readable = False
        if owner.metrics is not None:
            try:
                await owner.authenticate_metrics(request.headers)
                metrics_readable = True
            except Exception:  # noqa: BLE001 - a refusal: the page says which key reads /metrics
                metrics_readable = False
        capture = getattr(server, "capture", None)
        features["capture"] = bool(caller["valid"] and capture is not None and gw is not None
                                   and capture.captures(caller["name"]))
        models: list[dict[str, Any]] = []
        aliases: list[str] = []
        if caller["valid"]:
            from autoglm.hub.demo import is_demo_model

            allowed = caller["models"]
            for card in router.model_cards():
                if allowed is None or card["root"] in allowed or card["id"] in allowed:
                    models.append({"id": card["id"], "root": card["root"], "demo": is_demo_model(str(card["root"]))})
            rec = getattr(router, "recommender", None)
            aliases = sorted(rec.aliases) if rec is not None else []
        from autoglm import __version__

        body = {
            "version": __version__,
            "key_required": await _key_required(request),
            "caller": caller,
            "gateway": gw is not None,
            "admin_key_configured": bool(gw is not None and gw.settings.admin_key),
            "metrics": {"on": owner.metrics is not None, "readable": metrics_readable},
            "features": features,
            "extras": {m: _installed(m) for m in EXTRAS},
            "models": models,
            "auto_aliases": aliases,
        }
        return JSONResponse(body, headers={"cache-control": "no-store"})

    @app.get("/admin/plan")
    async def plan(request: Request, model: str = "autoglm-demo", device: str = "auto", quantize: str = "auto",
                   max_model_len: str | None = None, max_num_seqs: str | None = None,
                   free_gb: str | None = None) -> dict[str, Any]:
        await require_operator(request)
        device = device.strip().lower()
        kind, _, idx = device.partition(":")
        if kind not in ("auto", "cpu", "cuda", "mps") or (idx and (kind != "cuda" or not idx.isdigit())):
            raise APIError(f"device {device[:40]!r} is not a device: use auto, cpu, cuda, cuda:N or mps", 400,
                           param="device")
        return await asyncio.to_thread(
            _plan, model, device, quantize, _number(max_model_len, "max_model_len"),
            _number(max_num_seqs, "max_num_seqs") or 16, _number(free_gb, "free_gb", float, 0.01))

    @app.get("/admin/schema/deploy")
    async def deploy_schema(request: Request) -> dict[str, Any]:
        await require_operator(request)
        if "deploy" not in schema_cache:
            from autoglm.deploy.schema import DeployConfig

            schema_cache["deploy"] = DeployConfig.model_json_schema()
        return schema_cache["deploy"]

    @app.post("/admin/validate/deploy")
    async def validate_deploy(request: Request, name: str = "autoglm-deploy.yaml") -> dict[str, Any]:
        await require_operator(request)
        raw = await request.body()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise APIError("the body must be the deploy file's text in UTF-8", 400) from None
        if not re.fullmatch(r"[\w.@+-]{1,100}", name):
            raise APIError("name must be a file name such as autoglm-deploy.yaml", 400, param="name")
        return await asyncio.to_thread(validate_deploy_text, text, name)

    @app.get("/admin/pulls")
    async def list_pulls(request: Request) -> dict[str, Any]:
        await require_operator(request)
        return {"object": "list", "data": pulls.list(), "store": await asyncio.to_thread(pulls.store)}

    @app.get("/admin/pulls/{pull_id}")
    async def get_pull(pull_id: str, request: Request) -> dict[str, Any]:
        from autoglm.errors import ModelNotFoundError

        await require_operator(request)
        try:
            return pulls.get(pull_id)
        except ModelNotFoundError as exc:
            raise APIError(str(exc), 404, code="not_found", param="id") from None

    @app.post("/admin/pulls", status_code=202)
    async def start_pull(request: Request) -> JSONResponse:
        from autoglm.errors import ConfigError, ModelNotFoundError

        await require_operator(request)
        try:
            body = json.loads(await request.body() or b"null")
        except ValueError:
            raise APIError('the body is not JSON; send an object like {"name": "zai-org/glm-4-9b-chat-hf"}', 400,
                           code="invalid_json") from None
        if not isinstance(body, dict):
            raise APIError('the body must be a JSON object like {"name": "zai-org/glm-4-9b-chat-hf"}', 400,
                           code="invalid_request")
        unknown = sorted(set(body) - {"name", "source", "revision"})
        if unknown:
            raise APIError(f"unknown field(s) {unknown}; allowed: name, source, revision", 400,
                           code="invalid_request", param=unknown[0])
        try:
            job = await asyncio.to_thread(pulls.start, body.get("name"), body.get("source") or "auto",
                                          body.get("revision") or None)
        except ModelNotFoundError as exc:
            raise APIError(str(exc), 404, code="model_not_found", param="name") from None
        except ConfigError as exc:
            message = str(exc)
            param = message.split(":", 1)[0] if message.split(":", 1)[0] in ("name", "source", "revision") else None
            raise APIError(message, 409 if message.startswith("offline") else 400, code="invalid_value",
                           param=param) from None
        return JSONResponse(job, status_code=202)
