"""The Kubeflow component every stage task runs: a lightweight KFP Python component.

KFP serialises :func:`autoglm_stage`'s source into the pipeline package and runs it inside the
image with ``python -m kfp.dsl.executor_main``; all it does is hand its inputs to
:func:`autoglm.training.kubeflow.run_stage` (which is plain, testable library code) and report what
came back. A lightweight component rather than a container component running ``autoglm pipeline
run FILE --until STAGE`` because ``kfp.local.SubprocessRunner`` runs only lightweight components,
and the same package must run on a cluster and, without Docker, under ``kfp.local`` in our tests.

This module imports kfp when imported, so only :mod:`autoglm.training.kubeflow` imports it, lazily.
It deliberately has no ``from __future__ import annotations``: KFP reads the parameter annotations
as objects to decide which parameters are artifacts.
"""
from kfp.dsl import Artifact, Input, Metrics, Output

__all__ = ["autoglm_stage"]


def autoglm_stage(
    stage: str,
    pipeline_file: str,
    base_dir: str,
    tracking_uri: str,
    run_tag: str,
    stage_dir: Output[Artifact],
    metrics: Output[Metrics],
    preprocess: Input[Artifact] = None,
    train: Input[Artifact] = None,
    evaluate: Input[Artifact] = None,
) -> str:
    """Run one stage of the pipeline whose YAML text is ``pipeline_file``; the finished stages it
    follows arrive as artifacts; its own stage directory leaves as ``stage_dir``."""
    import json

    from autoglm.training.kubeflow import run_stage

    given = {"preprocess": preprocess, "train": train, "evaluate": evaluate}
    upstream = {name: art.path for name, art in given.items() if art is not None}
    result = run_stage(stage, pipeline_file, stage_dir.path, upstream=upstream, base_dir=base_dir,
                       tracking_uri=tracking_uri, run_tag=run_tag)
    for name, value in result["metrics"].items():
        metrics.log_metric(name, value)
    stage_dir.metadata.update({"stage": stage, "key": result["key"]})
    return json.dumps(result)
