"""A pipeline file as a Kubeflow Pipelines (v2) package: the same stages, one KFP task each.

:func:`compile_kubeflow` validates the pipeline file and writes a KFP v2 pipeline package (YAML)
whose tasks are the file's enabled stages in order (``preprocess -> train -> evaluate ->
register``). Every task runs the component of :mod:`autoglm.training.kubeflow_component` in the
image (default :data:`DEFAULT_IMAGE`, built from ``deploy/docker/Dockerfile.cpu`` with
``--build-arg EXTRAS=train,kubeflow``), which calls :func:`run_stage`.

How a stage runs in its own pod (:func:`run_stage`): the pipeline file's text is a pipeline
parameter (``pipeline_file``, the file as one line of JSON), so the package carries the settings it
was compiled from; relative
data paths resolve against the ``base_dir`` parameter (default: the file's folder at compile time;
on a cluster, where the data is mounted). The task's output artifact ``stage_dir`` is an
``AUTOGLM_HOME`` holding exactly one finished stage directory (``pipelines/<name>/stages/<stage>-<key>/``).
The finished stages a task follows arrive as input artifacts and are linked into its home, so
``run_pipeline(config, until=stage)`` finds them done (same keys: same settings, same data bytes)
and runs only its own stage. KFP's own task cache is turned off: it cannot see the data files'
bytes, our stage keys can.

Tracking: the stages run in separate pods, so a pod-local MLflow store would be lost. The
``tracking_uri`` parameter (``--tracking-uri``, else the file's ``tracking.uri``) names a store
every pod reaches; without one the tasks run untracked, and a file with a ``register:`` stage is
refused at compile time. Each task is its own MLflow run, tagged ``autoglm.kubeflow_run`` with the
KFP job id so a job's runs group together.

Knows nothing about argparse or clusters (submitting the package is ``kfp.Client`` or the KFP UI's
business); kfp (the ``kubeflow`` extra) is imported only to compile.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autoglm.errors import ConfigError

__all__ = ["compile_kubeflow", "kubeflow_pipeline", "run_stage", "CompiledPipeline", "DEFAULT_IMAGE"]

# docker build -f deploy/docker/Dockerfile.cpu --build-arg EXTRAS=train,kubeflow -t autoglm:cpu .
DEFAULT_IMAGE = "autoglm:cpu"
RUN_TAG = "autoglm.kubeflow_run"
_EXTRA_HINT = 'compiling to Kubeflow needs the kfp SDK: pip install -c constraints.txt -e ".[kubeflow]"'


@dataclass(frozen=True)
class CompiledPipeline:
    path: Path
    name: str  # the KFP pipeline name
    stages: tuple[str, ...]
    image: str
    tracking_uri: str  # "" when untracked


def _kfp() -> Any:
    try:
        from kfp import dsl
    except ImportError:
        raise ConfigError(_EXTRA_HINT) from None
    return dsl


def _kfp_name(name: str) -> str:
    """KFP pipeline names are lowercase letters, digits and dashes."""
    out = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")
    return (out or "autoglm-pipeline")[:128]


def _stage_names(config: Any) -> tuple[str, ...]:
    from autoglm.training.stages import pipeline_stages

    return tuple(s.name for s in pipeline_stages() if s.enabled(config))


def kubeflow_pipeline(config: Any, text: str, *, base_dir: str, image: str = DEFAULT_IMAGE,
                      tracking_uri: str = "") -> Any:
    """The KFP pipeline (a ``@dsl.pipeline`` graph component) for ``config``, compiled from ``text``."""
    dsl = _kfp()
    from autoglm.training.kubeflow_component import autoglm_stage

    stages = _stage_names(config)
    components = {}
    for stage in stages:
        component = dsl.component(autoglm_stage, base_image=image)
        component.component_spec.name = f"autoglm-{stage}"  # the task is named after its stage
        components[stage] = component

    def pipeline(pipeline_file: str = text, base_dir: str = base_dir, tracking_uri: str = tracking_uri) -> str:
        done: dict[str, Any] = {}
        for stage in stages:
            task = components[stage](stage=stage, pipeline_file=pipeline_file, base_dir=base_dir,
                                     tracking_uri=tracking_uri, run_tag=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
                                     **{name: t.outputs["stage_dir"] for name, t in done.items()})
            task.set_display_name(stage)
            task.set_caching_options(False)  # KFP's cache cannot see the data files' bytes; our keys can
            done[stage] = task
        return done[stages[-1]].outputs["Output"]

    # KFP reads the annotations as objects; this module's `from __future__ import annotations` made them strings.
    pipeline.__annotations__ = {"pipeline_file": str, "base_dir": str, "tracking_uri": str, "return": str}
    return dsl.pipeline(name=_kfp_name(config.name), description=f"autoglm pipeline {config.name}: "
                        f"{' -> '.join(stages)} (compiled by `autoglm pipeline compile --to kubeflow`)")(pipeline)


def compile_kubeflow(pipeline_path: str | Path, output: str | Path, *, image: str = DEFAULT_IMAGE,
                     tracking_uri: str | None = None, base_dir: str | None = None) -> CompiledPipeline:
    """Validate ``pipeline_path`` and write its KFP v2 package to ``output``; see the module docstring."""
    from autoglm.training.loader import load_pipeline_file

    path = Path(pipeline_path)
    config = load_pipeline_file(path)  # a mistake is file:line key, before kfp is even imported
    text = _one_line(path.read_text(encoding="utf-8"))
    uri = tracking_uri or config.tracking.uri or ""
    stages = _stage_names(config)
    if "register" in stages and not uri:
        raise ConfigError(f"{path}: the register stage needs an MLflow tracking store that every Kubeflow pod "
                          "reaches; pass --tracking-uri (e.g. http://mlflow.kubeflow:5000) or set tracking.uri "
                          "in the file")
    if "register" in stages and not config.tracking.enabled:
        raise ConfigError(f"{path}: the register stage needs tracking, but tracking.enabled is false")
    _kfp()  # the clear message when kfp is missing
    from kfp import compiler

    pipeline = kubeflow_pipeline(config, text, base_dir=base_dir or str(path.resolve().parent), image=image,
                                 tracking_uri=uri)
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(pipeline, str(out))
    return CompiledPipeline(out, _kfp_name(config.name), stages, image, uri)


def _one_line(text: str) -> str:
    """The pipeline file as one line of JSON (which is YAML): KFP writes parameter defaults into the
    package's header comment, and a multi-line default breaks the package. ``${VAR}`` references stay
    as they are and are substituted in the pod."""
    import json

    import yaml

    return json.dumps(yaml.safe_load(text), default=str, separators=(", ", ": "))


def run_stage(stage: str, pipeline_text: str, out_dir: str | Path, *, upstream: dict[str, str] | None = None,
              base_dir: str = "", tracking_uri: str = "", run_tag: str = "") -> dict[str, Any]:
    """Run ``stage`` of the pipeline ``pipeline_text`` with ``out_dir`` as its home (the output artifact).

    ``upstream`` maps stage name -> an earlier task's ``stage_dir`` artifact (a home holding that
    finished stage). Returns ``{"stage", "key", "cached", "metrics", "summary"}`` (numbers only in
    metrics: they become the task's KFP metrics).
    """
    from autoglm.training.loader import parse_pipeline_text
    from autoglm.training.pipeline import run_pipeline

    config = parse_pipeline_text(pipeline_text, "pipeline_file", base_dir=base_dir or None)
    if tracking_uri:
        config = config.model_copy(update={"tracking": config.tracking.model_copy(update={"uri": tracking_uri})})
    home = Path(out_dir)
    stages_root = home / "pipelines" / config.name / "stages"
    stages_root.mkdir(parents=True, exist_ok=True)
    links = _link_upstream(upstream or {}, config.name, stages_root)
    try:
        result = run_pipeline(config, home=home, until=stage, progress=False,
                              tracking=bool(config.tracking.uri),  # a pod-local store would be lost
                              tags={RUN_TAG: run_tag} if run_tag else None)
    finally:
        for link in links:  # the artifact keeps this stage only; the upstream ones are already stored
            link.unlink(missing_ok=True)
    rec = result.stages[stage]
    metrics = {k: float(v) for k, v in rec.get("metrics", {}).items()
               if isinstance(v, (int, float)) and not isinstance(v, bool)}
    summary = {k: v for k, v in rec.get("summary", {}).items() if isinstance(v, (int, float, str, bool))}
    return {"stage": stage, "key": rec["key"], "cached": bool(rec.get("cached")), "metrics": metrics,
            "summary": summary}


def _link_upstream(upstream: dict[str, str], name: str, stages_root: Path) -> list[Path]:
    links = []
    for stage, artifact in upstream.items():
        found = [d for d in (Path(artifact) / "pipelines" / name / "stages").glob(f"{stage}-*")
                 if d.is_dir() and (d / "stage.json").is_file()]
        if len(found) != 1:
            raise ConfigError(f"the {stage} artifact {artifact} holds {len(found)} finished {stage} stages of "
                              f"pipeline {name!r}; expected one (was it produced by this pipeline?)")
        link = stages_root / found[0].name
        if not link.exists():
            link.symlink_to(found[0].resolve(), target_is_directory=True)
            links.append(link)
    return links
