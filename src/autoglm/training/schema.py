"""The pipeline file's schema: strict pydantic models for ``autoglm pipeline run FILE.yaml``.

A pipeline file has a ``name``, a ``seed``, a ``data`` section (where the examples are), and one
section per stage: ``preprocess``, ``train``, ``evaluate``, ``register`` (a stage whose section is
absent or ``false`` does not run; ``train`` is required, preprocess and evaluate run with defaults
unless turned off), plus ``tracking`` (MLflow). The ``train`` section is a union over trainers,
chosen by its ``trainer`` key; each trainer's settings are their own model, so a key that belongs
to the other trainer is an unknown key with a did-you-mean. Guards and the adaptive learning rate
are sub-sections of ``train``.

This module knows nothing about YAML, line numbers or how stages run; the loader
(``autoglm.training.loader``) maps its errors to ``file:line key``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    PrivateAttr,
    field_validator,
    model_validator,
)

__all__ = [
    "PipelineConfig",
    "DataConfig",
    "PreprocessConfig",
    "CausalLMConfig",
    "TabularConfig",
    "FusionConfig",
    "LoraConfig",
    "SchedulerConfig",
    "AdaptiveLRConfig",
    "GuardConfig",
    "EvaluateConfig",
    "RegisterConfig",
    "TrackingConfig",
    "DistributedConfig",
    "SearchConfig",
    "ParamSpec",
    "PrunerConfig",
    "reported_metrics",
]

Loc = tuple[Union[str, int], ...]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=(), populate_by_name=True)


class DataConfig(_Strict):
    """Where the examples are: JSONL, CSV or Parquet files (paths relative to the pipeline file)."""

    train: str  # a file (or a glob) of training examples
    valid: Optional[str] = None  # evaluation examples; default: a split of ``train``
    test: Optional[str] = None  # held-out examples scored by the evaluate stage (default: valid)
    valid_fraction: float = Field(0.1, gt=0.0, lt=1.0)  # used when ``valid`` is not given
    format: Literal["auto", "jsonl", "csv", "parquet"] = "auto"
    reference: Optional[str] = None  # reference data for the drift guard (default: the training data)
    # The pipeline file's folder (from the loader's validation context): relative paths start there.
    _base_dir: Optional[str] = PrivateAttr(default=None)

    def model_post_init(self, context: Any) -> None:
        if isinstance(context, dict) and context.get("base_dir"):
            self._base_dir = str(context["base_dir"])

    @property
    def base_dir(self) -> Optional[str]:
        return self._base_dir

    def resolve(self, value: str | None) -> Path | None:
        if value is None:
            return None
        p = Path(value).expanduser()
        return p if p.is_absolute() or self._base_dir is None else Path(self._base_dir) / p

    def files(self) -> list[Path]:
        return [p for p in (self.resolve(v) for v in (self.train, self.valid, self.test)) if p is not None]


class PreprocessConfig(_Strict):
    max_length: PositiveInt = 512  # causal-lm: tokens per example (longer examples are truncated)
    drop_duplicates: bool = False
    shuffle: bool = True


class LoraConfig(_Strict):
    r: PositiveInt = 8
    alpha: PositiveFloat = 16.0
    dropout: NonNegativeFloat = 0.0
    target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])


class SchedulerConfig(_Strict):
    """The base schedule; the adaptive rule multiplies on top of it."""

    type: Literal["constant", "linear", "cosine"] = "constant"
    warmup_steps: NonNegativeInt = 0
    min_lr_ratio: float = Field(0.0, ge=0.0, le=1.0)  # cosine/linear end at lr * min_lr_ratio


class AdaptiveLRConfig(_Strict):
    """The seed's learning rate from gradient variance (``autoglm.training.adaptive_lr``)."""

    enabled: bool = True
    window: PositiveInt = 100
    high: PositiveFloat = 1e-4  # variance above this -> lr * down
    low: PositiveFloat = 1e-6  # variance below this -> lr * up
    down: PositiveFloat = 0.5
    up: PositiveFloat = 2.0
    cooldown: NonNegativeInt = 0  # steps after a change before the next one
    min_lr: NonNegativeFloat = 0.0
    max_lr: Optional[PositiveFloat] = None
    statistic: Literal["variance", "relative"] = "variance"  # relative: var / mean^2 of the grad norm

    @model_validator(mode="after")
    def _order(self) -> "AdaptiveLRConfig":
        if self.low >= self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        return self


class GuardConfig(_Strict):
    """One guard: ``type`` is the guard's registered name, the other keys its settings."""

    model_config = ConfigDict(extra="allow", frozen=True)
    type: Literal["drift", "structure", "explosion"]

    def settings(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class DistributedConfig(_Strict):
    nproc: PositiveInt = 1  # processes on this machine (``--nproc`` overrides)
    backend: Literal["auto", "gloo", "nccl"] = "auto"


class _TrainCommon(_Strict):
    epochs: PositiveInt = 1
    guards: list[GuardConfig] = Field(default_factory=list)


class CausalLMConfig(_TrainCommon):
    """Full or LoRA fine-tuning of a GLM-architecture model."""

    trainer: Literal["causal-lm"]
    model: str = "autoglm-demo"  # an alias, repo id, local directory (what ``autoglm serve`` takes)
    method: Literal["full", "lora"] = "lora"
    lora: LoraConfig = Field(default_factory=LoraConfig)
    objective: Literal["sft", "dpo", "kto"] = "sft"
    batch_size: PositiveInt = 8
    grad_accum: PositiveInt = 1
    lr: PositiveFloat = 1e-4
    weight_decay: NonNegativeFloat = 0.0
    max_grad_norm: Optional[PositiveFloat] = 1.0
    max_steps: Optional[PositiveInt] = None  # stop after this many optimizer steps (default: epochs)
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    adaptive_lr: AdaptiveLRConfig = Field(default_factory=lambda: AdaptiveLRConfig(enabled=False))
    eval_every: Optional[PositiveInt] = None  # optimizer steps between evaluations (default: each epoch)
    checkpoint_every: PositiveInt = 20  # optimizer steps between checkpoints
    merge: bool = True  # LoRA: write a merged model (False: the adapter beside its base)
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    # LoRA: the precision the frozen base is held and computed in while training; the adapters and their
    # optimizer stay float32 and the output is merged into ``dtype``. Unset: ``dtype``. auto: bfloat16
    # where the hardware has native bfloat16 matmuls (AVX512-BF16 or AMX CPUs, CUDA), else ``dtype``.
    base_dtype: Optional[Literal["auto", "float32", "bfloat16"]] = None
    # torch.compile every transformer block for the training steps (autoglm.training.compiled): the first
    # step waits for the compile (about a minute on 2 cold CPU cores, seconds from inductor's cache)
    compile: bool = False
    distributed: DistributedConfig = Field(default_factory=DistributedConfig)

    @field_validator("base_dtype")
    @classmethod
    def _frozen_base(cls, v: Optional[str], info: Any) -> Optional[str]:
        dtype = info.data.get("dtype", "float32")
        if info.data.get("method") == "full" and v not in (None, "auto", dtype):
            raise ValueError(f"{v} would hold a frozen base in another precision, and method: full has none "
                             f"(every weight trains, in dtype {dtype}); use method: lora, or leave base_dtype out")
        return v


class TabularConfig(_TrainCommon):
    """Gradient-boosted trees or any scikit-learn estimator on a table."""

    trainer: Literal["tabular"]
    target: str  # the label column
    task: Literal["auto", "classification", "regression"] = "auto"
    estimator: str = "lightgbm"  # lightgbm | xgboost | a scikit-learn class name (RandomForestClassifier, ...)
    params: dict[str, Any] = Field(default_factory=dict)  # passed to the estimator
    features: Optional[list[str]] = None  # default: every column but target and weight
    weight_column: Optional[str] = None  # per-row sample_weight
    cv_folds: int = Field(0, ge=0)  # k-fold cross-validation on train (0 or 1: none)
    explain: bool = True  # SHAP: global importance and per-row reasons

    @field_validator("cv_folds")
    @classmethod
    def _folds(cls, v: int) -> int:
        if v == 1:
            raise ValueError("cv_folds: 1 is not cross-validation; use 0 (none) or at least 2")
        return v


class FusionConfig(_TrainCommon):
    """A text + image classifier: frozen (or fine-tuned) encoders and an early, late or hybrid fusion model."""

    trainer: Literal["fusion"]
    mode: Literal["early", "late", "hybrid"] = "early"
    text_encoder: str = "clip-text"  # a registered encoder (autoglm.multimodal.encoders)
    image_encoder: str = "clip-image"
    encoder_model: str = "autoglm-tiny-clip"  # built locally; or a CLIP directory / repo id
    finetune_encoders: bool = False  # false: features computed once, only the fusion model trains
    text_column: str = "text"
    image_column: str = "image"  # a file path (relative to the data file) or a data:image/... URI
    label_column: str = "label"
    hidden: PositiveInt = 64
    heads: PositiveInt = 4  # hybrid: cross-attention heads
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    modality_dropout: float = Field(0.25, ge=0.0, lt=1.0)  # chance to hide each modality of a training sample
    batch_size: PositiveInt = 32
    lr: PositiveFloat = 3e-3
    weight_decay: NonNegativeFloat = 0.0
    max_grad_norm: Optional[PositiveFloat] = 1.0
    threads: Optional[PositiveInt] = None  # torch CPU threads while training/evaluating (default: torch's)

    @field_validator("heads")
    @classmethod
    def _heads(cls, v: int, info: Any) -> int:
        mode, hidden = info.data.get("mode"), info.data.get("hidden")
        if mode == "hybrid" and hidden and hidden % v:
            raise ValueError(f"hybrid fusion needs hidden ({hidden}) to be a multiple of heads ({v})")
        return v


TrainConfig = Annotated[Union[CausalLMConfig, TabularConfig, FusionConfig], Field(discriminator="trainer")]


class EvaluateConfig(_Strict):
    metrics: list[str] = Field(default_factory=list)  # default: the trainer's own
    split: Literal["valid", "test"] = "test"


class RegisterConfig(_Strict):
    name: Optional[str] = None  # registered model name (default: the pipeline's name)
    alias: str = "challenger"
    when: Optional[str] = None  # e.g. "eval_loss < 5.0": register only if the metric passes


class TrackingConfig(_Strict):
    enabled: bool = True  # false: no MLflow (the register stage then refuses to run)
    uri: Optional[str] = None  # default: sqlite:///$AUTOGLM_HOME/mlflow.db
    experiment: Optional[str] = None  # default: the pipeline's name


class ParamSpec(_Strict):
    """One searched parameter. Its name (the key in ``search.params``) is a dotted path into this file,
    e.g. ``train.params.num_leaves`` or ``train.lora.r``."""

    type: Literal["int", "float", "categorical"]
    low: Optional[float] = None
    high: Optional[float] = None
    log: bool = False
    step: Optional[float] = None  # a grid over int/float needs it (the grid is low, low+step, ..., high)
    choices: Optional[list[Any]] = None
    when: Optional[dict[str, Any]] = None  # exists only when another (categorical) parameter has this value

    @model_validator(mode="after")
    def _shape(self) -> "ParamSpec":
        if self.type == "categorical":
            if self.choices is None:
                raise ValueError("a categorical parameter needs 'choices'")
            if not self.choices:
                raise ValueError("choices is empty; give at least one value")
            if self.low is not None or self.high is not None:
                raise ValueError("a categorical parameter takes 'choices', not low/high")
        else:
            if self.low is None or self.high is None:
                raise ValueError(f"an {self.type} parameter needs 'low' and 'high'")
            if self.low > self.high:
                raise ValueError(f"low ({self.low:g}) is above high ({self.high:g})")
            if self.log and self.low <= 0:
                raise ValueError(f"log: true needs low > 0; got {self.low:g}")
            if self.choices is not None:
                raise ValueError(f"an {self.type} parameter takes low/high, not choices")
            if self.type == "int" and (self.low != int(self.low) or self.high != int(self.high)):
                raise ValueError("an int parameter needs whole-number low and high")
        return self


class PrunerConfig(_Strict):
    type: Literal["none", "median", "hyperband"] = "median"
    metric: Optional[str] = None  # an intermediate metric (per fold / per evaluation); default from `metric`
    warmup_steps: NonNegativeInt = 0
    startup_trials: NonNegativeInt = 5


class SearchConfig(_Strict):
    """Hyper-parameter and structure search over this pipeline (``autoglm tune FILE``), on Optuna."""

    strategy: Literal["grid", "random", "bayes"] = "bayes"
    sampler: Literal["tpe", "gp"] = "tpe"  # the Bayesian model (strategy: bayes)
    metric: str  # a metric the pipeline reports, e.g. test_auc, cv_auc_mean, test_eval_loss
    direction: Literal["maximize", "minimize"] = "maximize"
    n_trials: Optional[PositiveInt] = 20  # grid: default the whole grid
    timeout: Optional[PositiveFloat] = None  # seconds for the whole study
    cv_folds: Optional[int] = Field(None, ge=0)  # overrides train.cv_folds in every trial (tabular)
    pruner: PrunerConfig = Field(default_factory=PrunerConfig)
    params: dict[str, ParamSpec] = Field(min_length=1)


class PipelineConfig(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
    seed: int = 0
    data: DataConfig
    preprocess: Union[PreprocessConfig, Literal[False]] = Field(default_factory=PreprocessConfig)
    train: TrainConfig
    evaluate: Union[EvaluateConfig, Literal[False]] = Field(default_factory=EvaluateConfig)
    register_: Union[RegisterConfig, Literal[False]] = Field(False, alias="register")  # `register` is taken by ABCMeta
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    search: Optional[SearchConfig] = None

    @field_validator("preprocess", "evaluate", "register_", mode="before")
    @classmethod
    def _true_is_default(cls, v: Any) -> Any:
        return {} if v is True or v is None else v


def reference_errors(config: PipelineConfig) -> list[tuple[Loc, str]]:
    """Cross-field rules pydantic cannot state per field, as (key path, message)."""
    problems: list[tuple[Loc, str]] = []
    train = config.train
    if isinstance(train, TabularConfig):
        if train.weight_column is not None and train.weight_column == train.target:
            problems.append((("train", "weight_column"), "the weight column cannot be the target column"))
        if train.features is not None and train.target in train.features:
            problems.append((("train", "features"), f"the target {train.target!r} cannot also be a feature"))
    if config.search is not None:
        from autoglm.tuning.space import search_errors

        problems.extend(search_errors(config))
    for i, guard in enumerate(train.guards):
        if isinstance(train, TabularConfig) and guard.type in ("structure", "explosion"):
            problems.append((("train", "guards", i, "type"),
                             f"the {guard.type} guard needs a neural model; the tabular trainer takes only 'drift'"))
            continue
        if isinstance(train, FusionConfig) and guard.type in ("structure", "explosion"):
            problems.append((("train", "guards", i, "type"),
                             f"the fusion trainer does not run the {guard.type} guard; it takes only 'drift'"))
            continue
        from autoglm.errors import ConfigError
        from autoglm.training.guards import create_guard

        try:  # settings are the guard's own: let it check them now, not at step 500
            create_guard(guard.type, **guard.settings())
        except ConfigError as exc:
            key = next((k for k in guard.settings() if repr(k) in str(exc)), None)
            problems.append((("train", "guards", i) + ((key,) if key else ()), str(exc)))
    return problems


_FUSION_METRICS = ("accuracy", "auc", "f1", "precision", "recall", "log_loss", "accuracy_no_image",
                   "accuracy_no_text", "latency_ms")
_TABULAR_METRICS = {"classification": ("auc", "f1", "accuracy", "precision", "recall", "log_loss"),
                    "regression": ("rmse", "mae", "r2")}


def reported_metrics(config: PipelineConfig, cv_folds: int | None = None) -> list[str]:
    """The metric names a run of this pipeline reports (what ``search.metric`` and ``register.when`` may name)."""
    train = config.train
    names: list[str] = []
    if isinstance(train, TabularConfig):
        kinds = _TABULAR_METRICS.get(train.task) or sum(_TABULAR_METRICS.values(), ())
        folds = train.cv_folds if cv_folds is None else cv_folds
        for m in kinds:
            names.append(f"valid_{m}")
            if folds >= 2:
                names += [f"cv_{m}_mean", f"cv_{m}_std"]
        base = list(kinds)
    elif isinstance(train, FusionConfig):
        names += ["train_loss", "valid_loss", "valid_accuracy"]
        base = list(_FUSION_METRICS)
    else:
        names += ["train_loss", "eval_loss", "perplexity"]
        base = ["eval_loss", "perplexity"]
    if config.evaluate:
        wanted = config.evaluate.metrics or base
        names += [f"test_{m}" for m in wanted]
    return names
