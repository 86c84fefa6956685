"""The admin REST API: pipelines, runs, studies, registered models and the loop (issue 10.6).

:func:`install_admin_api` mounts, under the OpenAPI tag ``admin``:

=======  ===================================  =====================================================
GET      /admin/pipelines                     pipelines under $AUTOGLM_HOME with their runs
GET      /admin/pipelines/{name}              one pipeline: runs, per-stage status, durations, metrics
POST     /admin/pipelines/validate            {"yaml"|"path", "base_dir"?} -> {"ok", "errors": [{line, key, message}]}
POST     /admin/pipelines/run                 {"path"|"yaml", "base_dir"?, "until"?} -> a run handle (202; 200 finished)
GET      /admin/runs/{run_id}                 stage status, metric history, learning rate, guard and LR events
POST     /admin/runs/{run_id}/resume          an interrupted or failed run started again -> a run handle (202)
GET      /admin/studies                       Optuna studies (journal files under $AUTOGLM_HOME/studies)
GET      /admin/studies/{name}                trials, best trial, parameter importances
GET      /admin/models                        registered models (MLflow): versions and aliases
GET      /admin/models/{name}                 one registered model
POST     /admin/models/{name}/promote         {"version", "alias"?} -> the alias moved (+ webhooks)
POST     /admin/models/{name}/rollback        {"alias"?} -> the alias moved back (+ webhooks)
GET      /admin/loop                          each loop's state: cycle in progress, history, decisions
=======  ===================================  =====================================================

A resume is the pipeline run again from the file the run recorded (its resolved settings, with relative
data paths starting where the run started them: the folder ``/admin/pipelines/run`` noted, else the
server's working directory); finished stages are found by their keys and a stage left half-done
continues from its checkpoints. The settings must give the same run key, else nothing starts (409
``run_changed``: the data or settings changed, run the file again). A finished run is a 409
``run_finished``, a running one a 409 ``run_running``.

Feedback (``/admin/feedback``), keys (``/admin/keys``) and deployments (``/admin/deployments``) are
mounted by their own modules. Who may call: the admin key (``AUTOGLM_ADMIN_KEY``) or a static
``--api-key``; a server with neither (an open server) answers only clients on the loopback interface
(403 for others); a server with API keys but no admin key answers 401 saying to set one. Errors are
OpenAI error objects: 404 for an unknown name, 400 naming the body field. Every route is thin: the
work is in :mod:`autoglm.training.records`, :mod:`autoglm.tuning.records`, :mod:`autoglm.registry.records`
and :mod:`autoglm.loop.state`, run in a worker thread (they read files, Optuna and MLflow).
"""
from __future__ import annotations

import asyncio
from typing import Any, Literal, Optional

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from autoglm.api.errors import APIError
from autoglm.errors import AutoGLMError, NotFoundError

__all__ = ["install_admin_api", "PipelineSource", "RunRequest", "PromoteRequest", "RollbackRequest", "resume_run",
           "RunConflict"]

_MAX_YAML = 1 << 20
_ALIAS = r"^[A-Za-z0-9_\-]{1,64}$"


class PipelineSource(BaseModel):
    """A pipeline file on the server (``path``) or its text (``yaml``; relative data paths start at
    ``base_dir``, default the server's working directory)."""

    model_config = ConfigDict(extra="forbid")
    path: Optional[str] = Field(None, max_length=4096, description="a pipeline YAML file on the server")
    yaml: Optional[str] = Field(None, max_length=_MAX_YAML, description="the pipeline file's text")
    base_dir: Optional[str] = Field(None, max_length=4096, description="where relative paths in `yaml` start")


class RunRequest(PipelineSource):
    until: Optional[Literal["preprocess", "train", "evaluate", "register"]] = None
    tracking: bool = Field(True, description="log to MLflow")


class PromoteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: int = Field(..., ge=1, description="the model version to point the alias at")
    alias: str = Field("champion", pattern=_ALIAS)


class RollbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    alias: str = Field("champion", pattern=_ALIAS)


class _Prefixed:
    """``@router.get(path)`` on ``app`` with a path prefix, tags and dependencies."""

    def __init__(self, app: FastAPI, prefix: str, **defaults: Any):
        self.app, self.prefix, self.defaults = app, prefix, defaults

    def get(self, path: str, **kw: Any) -> Any:
        return self.app.get(self.prefix + path, **self.defaults, **kw)

    def post(self, path: str, **kw: Any) -> Any:
        return self.app.post(self.prefix + path, **self.defaults, **kw)


def admin_guard(owner: Any) -> Any:
    """A FastAPI dependency: the admin key, a static key, or (on an open server) a loopback client
    (:meth:`autoglm.gateway.http.GatewayHTTP.require_operator`)."""

    async def guard(request: Request) -> None:
        await owner.require_operator(request)

    return guard


async def _call(fn: Any, *args: Any, param: str | None = None, **kwargs: Any) -> Any:
    """``fn`` in a thread; a :class:`NotFoundError` is a 404, any other user error a 400 naming ``param``."""
    try:
        return await asyncio.to_thread(fn, *args, **kwargs)
    except NotFoundError as exc:
        raise APIError(str(exc), 404, code="not_found", param=exc.param) from None
    except AutoGLMError as exc:
        raise APIError(str(exc), 400, code="invalid_value", param=getattr(exc, "param", None) or param) from None


def _source(body: PipelineSource) -> dict[str, Any]:
    if (body.path is None) == (body.yaml is None):
        raise APIError("give exactly one of 'path' (a pipeline file on the server) or 'yaml' (its text)", 400,
                       code="invalid_value", param="yaml" if body.path is None else "path")
    if body.base_dir is not None and body.yaml is None:
        raise APIError("'base_dir' goes with 'yaml' (a file's relative paths start at its own folder)", 400,
                       code="invalid_value", param="base_dir")
    return {"path": body.path, "text": body.yaml, "base_dir": body.base_dir}


def _listed(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {"object": "list", "data": rows}


class RunConflict(AutoGLMError):
    """A resume that cannot start now (``code``: run_finished, run_running, run_changed): a 409."""

    def __init__(self, message: str, code: str):
        super().__init__(message)
        self.code = code


def _sources_dir(home: Any) -> Any:
    return home / "admin" / "runs"


def _remember_source(home: Any, handle: dict[str, Any], base_dir: str | None, until: str | None,
                     tracking: bool) -> None:
    """Where a run started through the API came from, so that it can be resumed from the same folder."""
    import json
    import os

    folder = _sources_dir(home)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        note = {"file": handle.get("file"), "base_dir": base_dir, "until": until, "tracking": tracking}
        tmp = folder / f".{handle['run_key']}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(note), encoding="utf-8")
        os.replace(tmp, folder / f"{handle['run_key']}.json")
    except OSError:  # the run goes on; only a resume from another folder would need this note
        pass


def resume_run(run_id: str, home: Any, launcher: Any) -> dict[str, Any]:
    """Start an interrupted or failed run again (see the module docstring); a run handle."""
    import json
    import os
    from pathlib import Path

    import yaml

    from autoglm.training import records as pipelines
    from autoglm.training.loader import parse_pipeline_text
    from autoglm.training.pipeline import STAGES, plan_run

    run = pipelines.get_run(run_id, home)
    key = run["run_key"]
    stages = run.get("stages") or {}
    if run["status"] == "finished" and all(v.get("status") == "finished" for v in stages.values()):
        raise RunConflict(f"run {key} finished: there is nothing to resume (its stages are all done)",
                            code="run_finished")
    if run["status"] == "running":
        raise RunConflict(f"run {key} is running (pid {run.get('pid')}): wait for it, or stop it first",
                            code="run_running")
    if not run.get("config"):
        raise RunConflict(f"run {key} recorded no pipeline settings; run its pipeline file again with "
                            "`autoglm pipeline run FILE`", code="run_changed")
    note: dict[str, Any] = {}
    try:
        note = json.loads((_sources_dir(home) / f"{key}.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        pass
    text = yaml.safe_dump(run["config"], sort_keys=False, allow_unicode=True)
    base = note.get("base_dir") or (str(Path(note["file"]).parent) if note.get("file") else os.getcwd())
    recorded = [s for s in STAGES if s in stages]
    config = parse_pipeline_text(text, f"run {key}", base_dir=base)
    full = pipelines.describe_pipeline(config)["stages"]
    until = note.get("until") or (recorded[-1] if recorded and recorded != full else None)
    tracking = bool(note["tracking"]) if "tracking" in note else run.get("mlflow_run_id") is not None
    try:
        again = plan_run(config, home, until=until).run_key
    except Exception as exc:  # noqa: BLE001 - a data file gone, a trainer missing: the run cannot start the same
        raise RunConflict(f"run {key} cannot be resumed from here: {exc}", code="run_changed") from None
    if again != key:
        raise RunConflict(f"run {key} cannot be resumed from here: its settings and data now give run {again} "
                            "(a data file changed, or its relative paths start in another folder); run the "
                            "pipeline file again with `autoglm pipeline run FILE`", code="run_changed")
    handle = launcher.start(text=text, base_dir=base, until=until, tracking=tracking)
    if handle["status"] == "running":  # its process is still there (exiting, or started by another caller)
        raise RunConflict(f"run {key} is running (pid {handle.get('pid')}): wait for it, or stop it first",
                          code="run_running")
    return {**handle, "resumed": True}


def install_admin_api(app: FastAPI, owner: Any, server: Any) -> None:
    """Mount the admin REST routes on ``app`` (see the module docstring); ``owner`` is the app's GatewayHTTP."""
    from autoglm.config import default_store_dir
    from autoglm.loop.state import list_states
    from autoglm.registry import records as models
    from autoglm.training import records as pipelines
    from autoglm.training.records import PipelineLauncher
    from autoglm.tuning import records as studies

    home = default_store_dir()
    launcher = PipelineLauncher(home)
    app.state.pipeline_launcher = launcher
    # routes go on the app itself (not an included APIRouter: FastAPI keeps those behind a wrapper that
    # app.routes walkers - the 405 Allow header, the console's route list - do not look into)
    router = _Prefixed(app, "/admin", tags=["admin"], dependencies=[Depends(admin_guard(owner))])

    @router.get("/pipelines", summary="Pipelines under $AUTOGLM_HOME/pipelines with their runs")
    async def list_pipelines() -> dict[str, Any]:
        return _listed(await _call(pipelines.list_pipelines, home))

    @router.post("/pipelines/validate", summary="Check a pipeline file without running it")
    async def validate_pipeline(body: PipelineSource) -> dict[str, Any]:
        src = _source(body)
        return await _call(pipelines.validate_pipeline, param="yaml" if body.yaml is not None else "path", **src)

    @router.post("/pipelines/run", status_code=202, summary="Run (or resume, or find finished) a pipeline "
                 "in the background")
    async def run_pipeline(body: RunRequest) -> JSONResponse:
        src = _source(body)
        handle = await _call(launcher.start, until=body.until, tracking=body.tracking,
                             param="yaml" if body.yaml is not None else "path", **src)
        if handle.get("started"):  # for a resume: where its relative paths start
            import os

            base = body.base_dir if body.yaml is not None else None
            await asyncio.to_thread(_remember_source, home, handle, base or (None if body.path else os.getcwd()),
                                    body.until, body.tracking)
        return JSONResponse(handle, status_code=200 if handle["status"] == "finished" else 202)

    @router.get("/pipelines/{name}", summary="One pipeline: its runs, per-stage status, durations, metrics")
    async def get_pipeline(name: str) -> dict[str, Any]:
        return await _call(pipelines.get_pipeline, name, home)

    @router.get("/runs/{run_id}", summary="A pipeline run: stages, metric history, learning rate, events")
    async def get_run(run_id: str) -> dict[str, Any]:
        return await _call(pipelines.get_run, run_id, home)

    @router.post("/runs/{run_id}/resume", status_code=202, summary="Start an interrupted or failed run again: "
                 "finished stages are kept, a half-done one continues from its checkpoints")
    async def resume(run_id: str) -> JSONResponse:
        try:
            handle = await asyncio.to_thread(resume_run, run_id, home, launcher)
        except RunConflict as exc:
            raise APIError(str(exc), 409, code=exc.code, param="run_id") from None
        except NotFoundError as exc:
            raise APIError(str(exc), 404, code="not_found", param=exc.param) from None
        except AutoGLMError as exc:
            raise APIError(str(exc), 400, code="invalid_value", param="run_id") from None
        return JSONResponse(handle, status_code=202)

    @router.get("/studies", summary="Hyper-parameter studies (Optuna)")
    async def list_studies() -> dict[str, Any]:
        return _listed(await _call(studies.list_studies, home))

    @router.get("/studies/{name}", summary="A study: trials, the best trial, parameter importances")
    async def get_study(name: str) -> dict[str, Any]:
        return await _call(studies.get_study, name, home)

    @router.get("/models", summary="Registered models (MLflow): versions and aliases")
    async def list_models() -> dict[str, Any]:
        return _listed(await _call(models.list_models))

    @router.get("/models/{name}", summary="One registered model")
    async def get_model(name: str) -> dict[str, Any]:
        return await _call(models.get_model, name)

    @router.post("/models/{name}/promote", summary="Point an alias (champion) at a version; fires the webhooks")
    async def promote_model(name: str, body: PromoteRequest) -> dict[str, Any]:
        await _call(models.get_model, name)  # 404 for an unknown model, before anything moves
        return await _call(models.promote_model, name, body.version, alias=body.alias, param="version")

    @router.post("/models/{name}/rollback", summary="Point an alias back at the version it named before")
    async def rollback_model(name: str, body: Optional[RollbackRequest] = None) -> dict[str, Any]:
        await _call(models.get_model, name)
        return await _call(models.rollback_model, name, alias=(body or RollbackRequest()).alias, param="alias")

    @router.get("/loop", summary="The improvement loop: cycles, decisions, promotions")
    async def loop_state() -> dict[str, Any]:
        return _listed(await _call(list_states, home))

