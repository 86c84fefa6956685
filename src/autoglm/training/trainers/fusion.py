"""The ``fusion`` trainer: a text + image classifier (early, late or hybrid fusion, :mod:`autoglm.multimodal`).

Contract (see ``_base.Trainer``):

- ``preprocess`` reads ``data.train`` (``valid``/``test`` when given; otherwise a seeded, stratified
  split of train) as records with a text column, an image column (a file path relative to the data
  file, or a ``data:image/png;base64,...`` URI) and a label column. A missing (null, absent or empty)
  text or image is allowed -- that modality is masked for the sample -- but not both, and not a
  missing label; every valid/test label must occur in train. Everything is checked before anything
  is written; a problem is one :class:`~autoglm.training.data.DataError` naming file, line and
  column. The encoders' ``prepare`` turns the values into tensors: ``<split>.safetensors`` (token ids,
  attention mask, pixel values, ``label`` as the class index, ``present [N, 2]``) and ``meta.json``.
- ``train`` builds the encoders and the fusion model, computes the frozen encoders' features once
  (or, with ``finetune_encoders``, trains them too), standardises the inputs with train statistics,
  and trains with AdamW, cross-entropy and modality dropout for ``epochs``. After every epoch it
  scores valid, logs ``train_loss``/``valid_loss``/``valid_accuracy`` (step = epoch) and writes a
  checkpoint (:mod:`autoglm.training.checkpoint`: weights, optimizer, schedule, RNG); a re-run after a
  crash resumes after the last finished epoch, with the same data order and dropout masks (both
  seeded by ``(seed, epoch)``), so it ends where an uninterrupted run ends. Output: ``model/``
  (:meth:`autoglm.multimodal.model.FusionClassifier.save`).
- ``evaluate`` scores ``model/`` on test (``ctx.extra["split"] == "valid"``: valid): ``accuracy``,
  ``auc``, ``f1``, ``precision``, ``recall``, ``log_loss`` with the modalities each sample has, then
  ``accuracy_no_image`` / ``accuracy_no_text`` with that modality hidden for every sample (samples that
  would have nothing left are skipped), and ``latency_ms``: median milliseconds to classify one
  prepared sample (batch of 1, encoders included).

This module knows nothing about pipelines, MLflow or where its directories are.
"""
from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from autoglm.errors import ConfigError
from autoglm.training.data import DataError, label_key
from autoglm.training.events import TrainingEvent
from autoglm.training.trainers._base import StageContext, Trainer, register_trainer

if TYPE_CHECKING:
    import torch

__all__ = ["FusionTrainer", "read_split", "METRICS"]

META_FILE = "meta.json"
SPLITS = ("train", "valid", "test")
METRICS = ("accuracy", "auc", "f1", "precision", "recall", "log_loss", "accuracy_no_image", "accuracy_no_text",
           "latency_ms")
LATENCY_SAMPLES = 32


@contextlib.contextmanager
def _threads(n: int | None) -> Iterator[None]:
    import torch

    if not n:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and value != value) or (isinstance(value, str) and not value.strip())


def read_split(prepared: Path, split: str) -> dict[str, "torch.Tensor"]:
    from safetensors.torch import load_file

    tensors = load_file(str(Path(prepared) / f"{split}.safetensors"))
    tensors["present"] = tensors["present"].bool()
    return tensors


@register_trainer
class FusionTrainer(Trainer):
    name = "fusion"

    def _classifier(self, classes: list[Any], store_dir: Path | None = None) -> Any:
        from autoglm.multimodal.model import FusionClassifier

        c = self.config
        return FusionClassifier.build(c.mode, classes, c.text_encoder, c.image_encoder, c.encoder_model, c.hidden,
                                      c.dropout, c.heads, finetune_encoders=c.finetune_encoders, store_dir=store_dir)

    # --- preprocess --------------------------------------------------------------------------------

    def _read(self, split: str) -> list[tuple[Any, Any, Any, Any]] | None:
        """(text, image array, label, location) per record, every value checked."""
        from autoglm.multimodal.data import decode_image
        from autoglm.training.data import read_records

        c = self.config
        path = self.data.resolve(getattr(self.data, split))
        if path is None:
            return None
        rows = []
        for rec in read_records(path, self.data.format):
            d, loc = rec.data, rec.location
            text, image, label = d.get(c.text_column), d.get(c.image_column), d.get(c.label_column)
            if _missing(label):
                raise loc.error("the label is missing", c.label_column)
            if _missing(text) and _missing(image):
                raise loc.error(f"has neither text ({c.text_column!r}) nor an image ({c.image_column!r}); "
                                "a sample needs at least one", c.image_column)
            if not _missing(text) and not isinstance(text, str):
                raise loc.error(f"expected text; got {type(text).__name__}", c.text_column)
            array = None
            if not _missing(image):
                if not isinstance(image, str):
                    raise loc.error("expected an image file path or a data:image/... URI; got "
                                    f"{type(image).__name__}", c.image_column)
                try:
                    array = decode_image(image, Path(loc.file).parent)
                except ValueError as e:
                    raise loc.error(str(e), c.image_column) from None
            rows.append((None if _missing(text) else text, array, label, loc))
        return rows

    def preprocess(self, ctx: StageContext) -> dict[str, Any]:
        import torch
        from safetensors.torch import save_file

        from autoglm.training.rundir import write_json

        c = self.config
        splits = {s: rows for s in SPLITS if (rows := self._read(s)) is not None}  # all checked before any work
        train = splits["train"]
        classes = sorted({label_key(r[2]) for r in train}, key=lambda k: (not k.lstrip("-").isdigit(), len(k), k))
        if len(classes) < 2:
            raise DataError(f"has only one label ({classes[0]!r}); classification needs at least two",
                            train[0][3].file, column=c.label_column)
        index = {k: i for i, k in enumerate(classes)}
        for name, rows in splits.items():
            for text, image, label, loc in rows:
                if label_key(label) not in index:
                    raise loc.error(f"label {label!r} never occurs in the training data (labels: "
                                    f"{', '.join(classes)})", c.label_column)
        if "valid" not in splits:
            from autoglm.training.data import split_frame

            import pandas as pd

            frame = pd.DataFrame({"label": [label_key(r[2]) for r in train]})
            fit, held = split_frame(frame, self.data.valid_fraction, ctx.seed, stratify="label")
            splits["train"], splits["valid"] = [train[i] for i in fit.index], [train[i] for i in held.index]
        splits.setdefault("test", splits["valid"])
        model = self._classifier(classes, ctx.extra.get("home"))
        ctx.work_dir.mkdir(parents=True, exist_ok=True)
        counts: dict[str, Any] = {}
        for name in SPLITS:
            rows = splits[name]
            tensors = {**model.encoders["text"].prepare([r[0] for r in rows]),
                       **model.encoders["image"].prepare([r[1] for r in rows])}
            tensors["label"] = torch.tensor([index[label_key(r[2])] for r in rows], dtype=torch.long)
            tensors["present"] = torch.tensor([[r[0] is not None, r[1] is not None] for r in rows], dtype=torch.uint8)
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(ctx.work_dir / f"{name}.safetensors"))
            counts[f"rows_{name}"] = len(rows)
            counts[f"{name}_no_text"] = sum(r[0] is None for r in rows)
            counts[f"{name}_no_image"] = sum(r[1] is None for r in rows)
        write_json(ctx.work_dir / META_FILE, {"classes": classes, "text_encoder": c.text_encoder,
                                              "image_encoder": c.image_encoder, "encoder_model": c.encoder_model,
                                              "test_source": "test" if self.data.test else "valid", **counts})
        return {**{k: v for k, v in counts.items() if k.startswith("rows_")}, "classes": classes}

    def drift_data(self, prepared: Path) -> Any:
        """The captions of the training data (length and word mix), for the drift guard."""
        rows = self._read("train") or []
        return {"text": [r[0] or "" for r in rows]}

    # --- train -------------------------------------------------------------------------------------

    def train(self, prepared: Path, ctx: StageContext) -> dict[str, Any]:
        with _threads(self.config.threads):
            return self._train(prepared, ctx)

    def _train(self, prepared: Path, ctx: StageContext) -> dict[str, Any]:
        import json

        import torch
        import torch.nn.functional as F
        from tqdm.auto import tqdm

        from autoglm.multimodal.fusion import drop_modalities
        from autoglm.training import checkpoint

        c = self.config
        if any(g.type != "drift" for g in c.guards):
            raise ConfigError("train.guards: the fusion trainer takes only the drift guard")
        meta = json.loads((prepared / META_FILE).read_text(encoding="utf-8"))
        train, valid = read_split(prepared, "train"), read_split(prepared, "valid")
        torch.manual_seed(ctx.seed)  # the fusion model's initial weights
        model = self._classifier(meta["classes"], ctx.extra.get("home"))
        frozen = not c.finetune_encoders
        train_feats = model.encode_all(train)  # frozen: these are the features; else the normalisation's basis
        valid_feats = model.encode_all(valid) if frozen else None
        model.fusion.fit_normalisation(train_feats, train["present"])
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=c.lr, weight_decay=c.weight_decay)
        n = len(train["label"])
        steps_per_epoch = math.ceil(n / c.batch_size)
        total = c.epochs * steps_per_epoch
        warm = min(steps_per_epoch, total // 10)

        def lr_at(step: int) -> float:  # short warmup, then cosine to 10%
            if step < warm:
                return (step + 1) / warm
            t = (step - warm) / max(total - warm, 1)
            return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)
        root = ctx.work_dir / "checkpoints"
        history: list[dict[str, Any]] = []
        start = 0
        found = checkpoint.latest(root)
        if found is not None:
            state = checkpoint.load(found, model=model, optimizer=optimizer, scheduler=scheduler, guards=[])
            start, history = int(state["step"]), list(state["history"])
            ctx.emit(TrainingEvent("stage", "train", "resumed", f"resumed after epoch {start} of {c.epochs}",
                                   step=start))
        ctx.log_params({"mode": c.mode, "text_encoder": c.text_encoder, "image_encoder": c.image_encoder,
                        "encoder_model": c.encoder_model, "trainable_params": sum(p.numel() for p in params)})
        bar = tqdm(total=c.epochs, initial=start, desc=f"fusion {c.mode}", unit="epoch", disable=not ctx.progress)
        t0 = time.perf_counter()
        for epoch in range(start, c.epochs):
            gen = torch.Generator().manual_seed(ctx.seed * 1_000_003 + epoch)
            order = torch.randperm(n, generator=gen)
            model.train()
            total_loss = 0.0
            for k in range(steps_per_epoch):
                rows = order[k * c.batch_size:(k + 1) * c.batch_size]
                feats = _rows(train_feats, rows) if frozen else model.encode(train, rows)
                present = drop_modalities(train["present"][rows], c.modality_dropout, gen)
                loss = F.cross_entropy(model.logits(feats, present), train["label"][rows])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if c.max_grad_norm:
                    torch.nn.utils.clip_grad_norm_(params, c.max_grad_norm)
                optimizer.step()
                scheduler.step()
                total_loss += float(loss.detach()) * len(rows)
            scores = _evaluate(model, valid, valid_feats if frozen else model.encode_all(valid))
            entry = {"epoch": epoch + 1, "train_loss": total_loss / n, "valid_loss": scores["loss"],
                     "valid_accuracy": scores["accuracy"], "lr": float(optimizer.param_groups[0]["lr"])}
            history.append(entry)
            checkpoint.save(root, epoch + 1, model=model, optimizer=optimizer, scheduler=scheduler, guards=[],
                            rngs=[checkpoint.rng_state()], state={"history": history})
            ctx.log_metrics({k: v for k, v in entry.items() if k != "epoch"}, epoch + 1)  # after: a logged epoch is kept
            bar.update(1)
            bar.set_postfix(loss=f"{entry['train_loss']:.4f}", valid_acc=f"{entry['valid_accuracy']:.3f}")
        bar.close()
        final = history[-1]
        metrics = {"epochs": c.epochs, "resumed_from": start, "train_loss": final["train_loss"],
                   "valid_loss": final["valid_loss"], "valid_accuracy": final["valid_accuracy"],
                   "train_seconds": round(time.perf_counter() - t0, 3)}
        weights = model.fusion.modality_weights()
        if weights:
            metrics.update({f"weight_{m}": w for m, w in weights.items()})
        model.save(ctx.work_dir / "model", {"metrics": metrics, "history": history, "seed": ctx.seed})
        return metrics

    # --- evaluate ----------------------------------------------------------------------------------

    def evaluate(self, prepared: Path, model: Path, ctx: StageContext) -> dict[str, float]:
        with _threads(self.config.threads):
            return self._evaluate_stage(prepared, model, ctx)

    def _evaluate_stage(self, prepared: Path, model_dir: Path, ctx: StageContext) -> dict[str, float]:
        import torch

        from autoglm.multimodal.model import load_fusion_model
        from autoglm.training.trainers.tabular import score

        split = str(ctx.extra.get("split", "test"))
        model = load_fusion_model(model_dir, ctx.extra.get("home"))
        data = read_split(prepared, split)
        feats = model.encode_all(data)
        y = data["label"].numpy()
        n_classes = len(model.classes)
        with torch.no_grad():
            proba = torch.softmax(model.logits(feats, data["present"]).double(), dim=-1).numpy()
        out = score("classification", y, proba, n_classes)
        for name, hidden in (("accuracy_no_image", 1), ("accuracy_no_text", 0)):
            present = data["present"].clone()
            present[:, hidden] = False
            rows = present.any(dim=1)
            if bool(rows.any()):
                sub = _rows(feats, rows.nonzero().squeeze(1))
                with torch.no_grad():
                    pred = model.logits(sub, present[rows]).argmax(dim=1)
                out[name] = float((pred == data["label"][rows]).double().mean())
        out["latency_ms"] = _latency(model, data)
        return out


def _rows(feats: dict[str, Any], rows: Any) -> dict[str, Any]:
    from autoglm.multimodal.encoders import Encoded

    return {m: Encoded(e.tokens[rows], e.mask[rows], e.pooled[rows]) for m, e in feats.items()}


def _evaluate(model: Any, data: dict[str, Any], feats: dict[str, Any]) -> dict[str, float]:
    import torch
    import torch.nn.functional as F

    model.eval()
    with torch.no_grad():
        logits = model.logits(feats, data["present"])
        loss = float(F.cross_entropy(logits, data["label"]))
        accuracy = float((logits.argmax(dim=1) == data["label"]).double().mean())
    model.train()
    return {"loss": loss, "accuracy": accuracy}


def _latency(model: Any, data: dict[str, Any]) -> float:
    """Median ms to encode and classify one prepared sample (batch of 1), over the first samples."""
    import statistics

    import torch

    n = min(len(data["label"]), LATENCY_SAMPLES)
    times = []
    model.eval()
    with torch.no_grad():
        for i in range(-2, n):  # two warm-up passes
            rows = slice(max(i, 0), max(i, 0) + 1)
            t0 = time.perf_counter()
            model.logits(model.encode(data, rows), data["present"][rows])
            if i >= 0:
                times.append((time.perf_counter() - t0) * 1000.0)
    return float(statistics.median(times))
