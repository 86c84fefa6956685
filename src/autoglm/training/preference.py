"""Preference objectives for the causal-LM trainer: DPO on chosen/rejected pairs, KTO on unpaired examples.

Data (JSONL/CSV/Parquet rows, validated before anything is tokenised; the first problem is a
``DataError`` naming ``file:line column 'x'``, like the SFT path):

* DPO: ``{"prompt": str | "messages": [...], "chosen": str, "rejected": str, "weight"?: float}``;
* KTO: ``{"prompt" | "messages", "completion": str, "label": true | false, "weight"?: float}``.

``messages`` is the conversation before the answer (it must not end with an assistant turn); the answer
becomes the last assistant turn and is the only target (plus the token that ends it), templated by
:func:`autoglm.training.text_data.encode_chat`. ``autoglm feedback export --format dpo|kto`` writes these.

Reference model: the frozen starting weights. Their sequence log-probabilities are computed once, before
the first step (for LoRA with the adapters disabled: the base model), and kept per sample; a resumed run
computes the same numbers again from the same starting weights. With ``logp(y) = sum of log p(token)``
over the answer's target tokens and ``r = logp_policy - logp_ref``:

* DPO: ``loss = -log sigmoid(beta * (r_chosen - r_rejected))``;
* KTO: ``z = max(0, mean r over the micro-batch)`` (detached; the batch's own estimate of the
  policy/reference KL), desirable ``lambda_d * (1 - sigmoid(beta * (r - z)))``, undesirable
  ``lambda_u * (1 - sigmoid(beta * (z - r)))``. A micro-batch needs >= 2 examples for ``z`` to be a
  baseline, so KTO needs ``batch_size >= 2``.

A step's loss is ``sum_i w_i * loss_i / sum_i w_i`` over all its samples, as for SFT. These losses are
written here (a few lines each) rather than taken from TRL, whose trainers would replace this project's
loop (exact resume, guards, adaptive LR, DDP). Knows tokenisation through text_data and torch; not files
of the pipeline or MLflow.
"""
from __future__ import annotations

import contextlib
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from autoglm.errors import ConfigError
from autoglm.training.data import Location, Record
from autoglm.training.text_data import IGNORE, ROLES, META_FILE, PREPARED_VERSION, _pad_id, _weight, encode_chat, \
    stop_token_ids

__all__ = ["PREFERENCE_OBJECTIVES", "PreferenceSettings", "PrefExample", "preference_examples",
           "prepare_preference", "load_preference_split", "PreferenceObjective", "sequence_logps", "dpo_loss",
           "kto_loss", "evaluate_preference", "drift_texts"]

PREFERENCE_OBJECTIVES = ("dpo", "kto")


@dataclass(frozen=True)
class PreferenceSettings:
    beta: float = 0.1
    desirable_weight: float = 1.0  # KTO's lambda_d
    undesirable_weight: float = 1.0  # KTO's lambda_u


@dataclass(frozen=True)
class PrefExample:
    prompt: list[dict[str, str]]  # the conversation before the answer
    chosen: str  # DPO: the preferred answer; KTO: the completion
    rejected: str | None  # DPO only
    label: bool | None  # KTO only
    weight: float
    where: Location


# --- data ------------------------------------------------------------------------------------------

def _prompt(rec: dict[str, Any], where: Location) -> list[dict[str, str]]:
    if rec.get("messages") is not None:
        value = rec["messages"]
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                raise where.error("is text but not a JSON list of {role, content} objects", "messages") from None
        if hasattr(value, "tolist"):
            value = value.tolist()
        if not isinstance(value, list) or not value:
            raise where.error("must be a non-empty list of {role, content} objects (the conversation before the "
                              "answer)", "messages")
        out = []
        for i, m in enumerate(value, start=1):
            if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
                raise where.error(f"message {i} must be an object with a role ({', '.join(ROLES)}) and text "
                                  "content", "messages")
            out.append({"role": m["role"], "content": m["content"]})
        if out[-1]["role"] == "assistant":
            raise where.error("ends with an assistant turn; give the conversation before the answer and the "
                              "answer(s) in their own columns", "messages")
        return out
    prompt = rec.get("prompt")
    if not isinstance(prompt, str) or not prompt:
        raise where.error("is missing or empty; give 'prompt' (text) or 'messages' (a chat)", "prompt")
    return [{"role": "user", "content": prompt}]


def _answer(rec: dict[str, Any], column: str, where: Location) -> str:
    value = rec.get(column)
    if isinstance(value, dict):  # {"role": "assistant", "content": ...}
        value = value.get("content")
    if not isinstance(value, str) or not value.strip():
        raise where.error("is missing or empty: there is nothing to learn", column)
    return value


def _label(value: Any, where: Location) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0"):
        return value.strip().lower() in ("true", "1")
    raise where.error(f"{str(value)[:20]!r} is not true or false (desirable or not)", "label")


def preference_examples(records: Iterable[Record], objective: str) -> list[PrefExample]:
    """Validated DPO or KTO examples; raises a ``DataError`` on the first bad record."""
    if objective not in PREFERENCE_OBJECTIVES:
        raise ConfigError(f"objective {objective!r} is not a preference objective ({', '.join(PREFERENCE_OBJECTIVES)})")
    out = []
    for record in records:
        rec, where = record.data, record.location
        prompt = _prompt(rec, where)
        if objective == "dpo":
            chosen, rejected = _answer(rec, "chosen", where), _answer(rec, "rejected", where)
            if chosen.strip() == rejected.strip():
                raise where.error("is the same text as 'chosen': a pair needs two different answers", "rejected")
            out.append(PrefExample(prompt, chosen, rejected, None, _weight(rec.get("weight"), where), where))
        else:
            if "label" not in rec or rec["label"] is None:
                raise where.error("is missing; KTO rows need label: true (a good answer) or false", "label")
            out.append(PrefExample(prompt, _answer(rec, "completion", where), None, _label(rec["label"], where),
                                   _weight(rec.get("weight"), where), where))
    return out


def _encode(tokenizer: Any, prompt: list[dict[str, str]], answer: str, max_length: int, stop: set[int]) -> Any:
    return encode_chat(tokenizer, [*prompt, {"role": "assistant", "content": answer}], max_length, stop,
                       only_last=True)


def _write(path: Path, examples: list[PrefExample], objective: str, tokenizer: Any, max_length: int,
           stop: set[int]) -> dict[str, int]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    sides = ("chosen", "rejected") if objective == "dpo" else ("chosen",)
    cols: dict[str, list[Any]] = {f"{s}_{k}": [] for s in sides for k in ("ids", "labels")}
    cols.update(weight=[], row=[], label=[])
    stats = {"examples": 0, "tokens": 0, "truncated": 0, "dropped_no_target": 0}
    for e in examples:
        encoded = [_encode(tokenizer, e.prompt, e.chosen if s == "chosen" else e.rejected, max_length, stop)
                   for s in sides]
        if any(all(x == IGNORE for x in enc.labels) for enc in encoded):
            stats["dropped_no_target"] += 1
            continue
        for s, enc in zip(sides, encoded):
            cols[f"{s}_ids"].append(enc.input_ids)
            cols[f"{s}_labels"].append(enc.labels)
            stats["tokens"] += len(enc.input_ids)
            stats["truncated"] += int(enc.truncated)
        cols["weight"].append(e.weight)
        cols["row"].append(e.where.row)
        cols["label"].append(bool(e.label) if e.label is not None else True)
        stats["examples"] += 1
    ints = pa.list_(pa.int32())
    table = pa.table({**{k: pa.array(v, type=ints) for k, v in cols.items() if k.endswith(("_ids", "_labels"))},
                      "weight": pa.array(cols["weight"], type=pa.float64()),
                      "row": pa.array(cols["row"], type=pa.int64()), "label": pa.array(cols["label"], type=pa.bool_())})
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp)
    tmp.replace(path)
    return stats


def prepare_preference(splits: dict[str, list[PrefExample]], objective: str, tokenizer: Any, model_dir: Path,
                       out_dir: Path, max_length: int, *, valid_fraction: float, seed: int) -> dict[str, Any]:
    """Write ``<split>.parquet`` and ``meta.json`` (``objective`` recorded) for a preference objective."""
    splits = {k: v for k, v in splits.items() if v is not None}
    if "valid" not in splits:
        train = splits["train"]
        if len(train) < 2:
            raise ConfigError(f"the training data has {len(train)} example(s); a validation split needs at least 2, "
                              "or give data.valid")
        order = list(range(len(train)))
        random.Random(seed).shuffle(order)
        n_valid = min(len(train) - 1, max(1, round(len(train) * valid_fraction)))
        held = set(order[:n_valid])
        splits["train"] = [e for i, e in enumerate(train) if i not in held]
        splits["valid"] = [e for i, e in enumerate(train) if i in held]
    stop = stop_token_ids(tokenizer, model_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    meta: dict[str, Any] = {"version": PREPARED_VERSION, "objective": objective, "model": str(model_dir),
                            "max_length": max_length, "stop_token_ids": sorted(stop), "pad_token_id": _pad_id(tokenizer),
                            "splits": {}}
    for name, examples in splits.items():
        meta["splits"][name] = _write(out_dir / f"{name}.parquet", examples, objective, tokenizer, max_length, stop)
    if meta["splits"]["train"]["examples"] == 0:
        raise ConfigError(f"no training example has an answer token within max_length={max_length}; raise "
                          "preprocess.max_length")
    (out_dir / META_FILE).write_text(json.dumps(meta, indent=2), encoding="utf-8")
    return meta


@dataclass(frozen=True)
class PreferenceSplit:
    chosen_ids: list[list[int]]
    chosen_labels: list[list[int]]
    rejected_ids: list[list[int]] | None  # DPO only
    rejected_labels: list[list[int]] | None
    labels: list[bool]  # KTO: desirable or not (DPO: all True)
    weights: list[float]

    def __len__(self) -> int:
        return len(self.chosen_ids)


def load_preference_split(prepared: Path, name: str) -> PreferenceSplit:
    from autoglm.training.text_data import read_split_table

    t = read_split_table(prepared, name)
    return PreferenceSplit(t["chosen_ids"], t["chosen_labels"], t.get("rejected_ids"), t.get("rejected_labels"),
                           [bool(x) for x in t["label"]], [float(w) for w in t["weight"]])


# --- losses ----------------------------------------------------------------------------------------

def sequence_logps(model: Any, ids: Sequence[Sequence[int]], labels: Sequence[Sequence[int]], pad_id: int,
                   device: Any = "cpu") -> tuple[Any, int]:
    """Sum of log p(target token) per sequence ``[B]`` (right-padded, one forward), and the input tokens."""
    import torch

    width = max(len(x) for x in ids)
    inp = torch.full((len(ids), width), pad_id, dtype=torch.long)
    lab = torch.full((len(ids), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for row, (x, y) in enumerate(zip(ids, labels)):
        inp[row, :len(x)], lab[row, :len(y)], mask[row, :len(x)] = torch.tensor(x), torch.tensor(y), 1
    inp, lab, mask = inp.to(device), lab.to(device), mask.to(device)
    logits = model(input_ids=inp, attention_mask=mask, use_cache=False).logits
    logits = logits[:, :-1].to(torch.promote_types(logits.dtype, torch.float32))  # [B, S-1, V]
    target = lab[:, 1:]  # [B, S-1]
    valid = target != IGNORE
    logp = torch.log_softmax(logits, dim=-1).gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)  # [B, S-1]
    return (logp * valid).sum(dim=1), int(mask.sum())


def dpo_loss(pc: Any, pr: Any, rc: Any, rr: Any, beta: float) -> tuple[Any, Any]:
    """Per-pair DPO loss ``[B]`` and the implicit reward margin ``[B]`` (policy/reference chosen, rejected)."""
    import torch.nn.functional as F

    margin = (pc - rc) - (pr - rr)
    return -F.logsigmoid(beta * margin), margin


def kto_loss(policy: Any, ref: Any, desirable: Any, s: PreferenceSettings) -> tuple[Any, Any]:
    """Per-example KTO loss ``[B]`` and the rewards ``[B]``; ``desirable`` is a bool tensor ``[B]``."""
    import torch

    reward = policy - ref
    z = reward.detach().mean().clamp(min=0)
    good = s.desirable_weight * (1 - torch.sigmoid(s.beta * (reward - z)))
    bad = s.undesirable_weight * (1 - torch.sigmoid(s.beta * (z - reward)))
    return torch.where(desirable, good, bad), reward


# --- the objective the training loop runs ----------------------------------------------------------

class PreferenceObjective:
    """DPO or KTO for :func:`autoglm.training.loop.train_loop` (``objective=``): backward, eval, guard loss."""

    def __init__(self, kind: str, train: PreferenceSplit, valid: PreferenceSplit, pad_id: int, batch_size: int,
                 settings: PreferenceSettings | None = None, device: Any = "cpu"):
        if kind not in PREFERENCE_OBJECTIVES:
            raise ConfigError(f"objective {kind!r} is not one of {', '.join(PREFERENCE_OBJECTIVES)}")
        if kind == "kto" and batch_size < 2:
            raise ConfigError("objective: kto needs train.batch_size >= 2 (the batch estimates the KL baseline)")
        self.kind, self.train, self.valid, self.pad_id = kind, train, valid, pad_id
        self.batch_size, self.settings, self.device = batch_size, settings or PreferenceSettings(), device
        self.ref: dict[str, dict[str, list[float]]] = {}

    # reference log-probs of the frozen starting weights -------------------------------------------
    def compute_reference(self, model: Any) -> None:
        """Reference log-probs of every sample, from ``model`` as it is now (the starting weights; a
        peft model with its adapters disabled)."""
        import torch

        disable = getattr(model, "disable_adapter", None)
        was_training = model.training
        model.eval()
        with torch.no_grad(), (disable() if callable(disable) else contextlib.nullcontext()):
            for name, split in (("train", self.train), ("valid", self.valid)):
                self.ref[name] = {side: self._all_logps(model, split, side) for side in self._sides()}
        model.train(was_training)

    def _sides(self) -> tuple[str, ...]:
        return ("chosen", "rejected") if self.kind == "dpo" else ("chosen",)

    def _all_logps(self, model: Any, split: PreferenceSplit, side: str) -> list[float]:
        ids, labels = (split.chosen_ids, split.chosen_labels) if side == "chosen" else \
            (split.rejected_ids, split.rejected_labels)
        out: list[float] = []
        for start in range(0, len(split), self.batch_size):
            idx = range(start, min(start + self.batch_size, len(split)))
            logps, _ = sequence_logps(model, [ids[i] for i in idx], [labels[i] for i in idx], self.pad_id, self.device)
            out.extend(float(x) for x in logps.double())
        return out

    # losses ------------------------------------------------------------------------------------------
    def _losses(self, runner: Any, split: PreferenceSplit, ref: dict[str, list[float]], idx: Sequence[int]) -> \
            tuple[Any, Any, int]:
        """Per-sample loss ``[B]``, reward margin (DPO) or reward (KTO) ``[B]``, input tokens."""
        import torch

        def ref_of(side: str) -> Any:
            return torch.tensor([ref[side][i] for i in idx], dtype=torch.float64, device=self.device)

        if self.kind == "dpo":
            assert split.rejected_ids is not None and split.rejected_labels is not None
            ids = [split.chosen_ids[i] for i in idx] + [split.rejected_ids[i] for i in idx]
            labels = [split.chosen_labels[i] for i in idx] + [split.rejected_labels[i] for i in idx]
            logps, tokens = sequence_logps(runner, ids, labels, self.pad_id, self.device)  # [2B]: chosen, rejected
            logps = logps.double()
            pc, pr = logps[:len(idx)], logps[len(idx):]
            loss, margin = dpo_loss(pc, pr, ref_of("chosen"), ref_of("rejected"), self.settings.beta)
            return loss, margin, tokens
        logps, tokens = sequence_logps(runner, [split.chosen_ids[i] for i in idx],
                                       [split.chosen_labels[i] for i in idx], self.pad_id, self.device)
        desirable = torch.tensor([split.labels[i] for i in idx], device=self.device)
        loss, reward = kto_loss(logps.double(), ref_of("chosen"), desirable, self.settings)
        return loss, reward, tokens

    def backward_step(self, model: Any, step_samples: Sequence[int], *, batch_size: int, world_size: int, rank: int,
                      device: Any = "cpu", ddp: Any = None) -> tuple[float, int]:
        """Like :func:`autoglm.training.loop.backward_step`, with this objective's loss."""
        from autoglm.training.distributed import micro_batches

        wsum = float(sum(self.train.weights[i] for i in step_samples))
        runner = ddp if ddp is not None else model
        mbs = micro_batches(step_samples, batch_size, world_size, rank)
        part_total, tokens = 0.0, 0
        for a, mb in enumerate(mbs):
            sync = ddp is None or a == len(mbs) - 1
            with (contextlib.nullcontext() if sync else ddp.no_sync()):
                losses, _, n = self._losses(runner, self.train, self.ref["train"], list(mb))
                import torch

                w = torch.tensor([self.train.weights[i] for i in mb], dtype=losses.dtype, device=losses.device)
                part = (losses * w).sum() / wsum if wsum > 0 else losses.sum() * 0.0
                (part * world_size).backward()
            part_total += float(part.detach())
            tokens += n
        return part_total, tokens

    def validation_loss(self, model: Any) -> Any:
        """One differentiable validation batch's mean loss (for guards)."""
        idx = list(range(min(self.batch_size, len(self.valid))))
        losses, _, _ = self._losses(model, self.valid, self.ref["valid"], idx)
        return losses.mean()

    def evaluate(self, model: Any) -> dict[str, float]:
        """Mean loss on the validation split, and how the policy moved from the reference."""
        return evaluate_preference(self, model, self.valid, self.ref["valid"])


def evaluate_preference(obj: PreferenceObjective, model: Any, split: PreferenceSplit,
                        ref: dict[str, list[float]]) -> dict[str, float]:
    """``eval_loss``; DPO: ``reward_accuracy`` (margin > 0) and ``reward_margin``; KTO: mean reward of the
    desirable and of the undesirable examples."""
    import torch

    was_training = model.training
    model.eval()
    losses, stats = [], []
    with torch.no_grad():
        for start in range(0, len(split), obj.batch_size):
            idx = list(range(start, min(start + obj.batch_size, len(split))))
            loss, stat, _ = obj._losses(model, split, ref, idx)
            losses.extend(loss.tolist())
            stats.extend(stat.tolist())
    model.train(was_training)
    n = max(len(losses), 1)
    out = {"eval_loss": sum(losses) / n, "perplexity": float("nan")}
    if obj.kind == "dpo":
        out["reward_accuracy"] = sum(1 for m in stats if m > 0) / n
        out["reward_margin"] = sum(stats) / n
    else:
        good = [r for r, lab in zip(stats, split.labels) if lab]
        bad = [r for r, lab in zip(stats, split.labels) if not lab]
        out["desirable_reward"] = sum(good) / len(good) if good else float("nan")
        out["undesirable_reward"] = sum(bad) / len(bad) if bad else float("nan")
    return {k: (v if math.isfinite(v) else float("nan")) for k, v in out.items()}


def drift_texts(examples: list[PrefExample]) -> dict[str, list[str]]:
    """What the drift guard compares: the users' text and the (chosen) answers' text."""
    prompt = [" ".join(m["content"] for m in e.prompt if m["role"] != "assistant") for e in examples]
    return {"prompt": prompt, "answer": [e.chosen for e in examples]}
