"""Chat and prompt/completion examples -> token ids with a loss mask, for the ``causal-lm`` trainer.

An example is a chat (a ``messages`` column: a list of ``{"role", "content"}``, or its JSON text in a
CSV cell) or a ``prompt``/``completion`` pair, which is the chat ``[user: prompt, assistant:
completion]``. An optional ``weight`` column (a number >= 0, default 1) scales the example's loss.
Every record is validated before anything is tokenised; the first problem is a ``DataError`` naming
``file:row column 'x'``.

Encoding applies the model's own chat template (``tokenizer.apply_chat_template``) to the whole chat
and finds each assistant turn's characters by templating prefixes: the turn spans from the end of
"everything before it + generation prompt" to the end of "everything up to it". Tokens that overlap
such a span are targets, and so is the token right after it when it is one the server stops on (the
next ``<|user|>`` turn, or the end-of-text token appended after the last turn), so the model learns to
stop. Every other label is -100. Sequences longer than ``max_length`` keep their first ``max_length``
tokens; one left with no target token is dropped (counted in ``meta.json``).

The prepared directory holds ``train.parquet``, ``valid.parquet`` and, when ``data.test`` is given,
``test.parquet`` (columns ``input_ids``, ``labels`` (list<int32>), ``weight`` (float64), ``row``), and
``meta.json`` (counts, tokens, the model directory, the chat template's sha256). This module knows
nothing about models, training or distribution; it needs a tokenizer and pyarrow.
"""
from __future__ import annotations

import hashlib
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from autoglm.errors import ConfigError
from autoglm.training.data import Location, Record

__all__ = [
    "Example", "Encoded", "ROLES", "examples_from_records", "encode_chat", "stop_token_ids",
    "prepare_splits", "load_split", "read_meta", "PREPARED_VERSION",
]

ROLES = ("system", "user", "assistant", "tool", "observation")  # what the GLM-4 template renders
IGNORE = -100
PREPARED_VERSION = 1
META_FILE = "meta.json"


def _data_error(where: Location, column: str, problem: str) -> Exception:
    return where.error(problem, column)


@dataclass(frozen=True)
class Example:
    messages: list[dict[str, str]]
    weight: float
    where: Location  # for error messages and the prepared ``row`` column (never the text)


@dataclass(frozen=True)
class Encoded:
    input_ids: list[int]
    labels: list[int]  # input_ids where the token is a target, -100 elsewhere (not shifted)
    truncated: bool


def _weight(value: Any, where: Location) -> float:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return 1.0
    if isinstance(value, bool):
        raise _data_error(where, "weight", f"{value!r} is not a number; use a number >= 0 such as 1.0")
    try:
        w = float(value)
    except (TypeError, ValueError):
        raise _data_error(where, "weight", f"{str(value)[:40]!r} is not a number; use a number >= 0 such as 1.0") from None
    if not math.isfinite(w) or w < 0:
        raise _data_error(where, "weight", f"{w!r} must be a finite number >= 0")
    return w


def _chat(value: Any, where: Location) -> list[dict[str, str]]:
    if isinstance(value, str):  # a CSV cell holds the list as JSON
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise _data_error(where, "messages", "is text but not a JSON list of {role, content} objects") from None
    if hasattr(value, "tolist"):  # parquet lists arrive as numpy arrays
        value = value.tolist()
    if not isinstance(value, list) or not value:
        raise _data_error(where, "messages", "must be a non-empty list of {role, content} objects")
    out: list[dict[str, str]] = []
    for i, m in enumerate(value, start=1):
        if not isinstance(m, dict):
            raise _data_error(where, "messages", f"message {i} is not an object with 'role' and 'content'")
        role, content = m.get("role"), m.get("content")
        if role is None:
            raise _data_error(where, "messages", f"message {i} has no 'role'")
        if role not in ROLES:
            raise _data_error(where, "messages", f"message {i} has unknown role {str(role)[:20]!r}; "
                                                 f"use one of {', '.join(ROLES)}")
        if not isinstance(content, str):
            raise _data_error(where, "messages", f"message {i} has no 'content' text")
        if role == "assistant" and not content.strip():
            raise _data_error(where, "messages", f"message {i} is an assistant turn with empty content")
        out.append({"role": role, "content": content})
    if not any(m["role"] == "assistant" for m in out):
        raise _data_error(where, "messages", "has no assistant message: there is nothing to learn")
    return out


def examples_from_records(records: Iterable[Record]) -> list[Example]:
    """Records of :func:`autoglm.training.data.read_records` -> validated examples; raises a
    ``DataError`` on the first bad record."""
    out: list[Example] = []
    for record in records:
        where, rec = record.location, record.data
        if "messages" in rec and rec["messages"] is not None:
            messages = _chat(rec["messages"], where)
        elif "prompt" in rec or "completion" in rec:
            prompt, completion = rec.get("prompt"), rec.get("completion")
            if not isinstance(prompt, str) or not prompt:
                raise _data_error(where, "prompt", "is missing or empty")
            if not isinstance(completion, str) or not completion.strip():
                raise _data_error(where, "completion", "is missing or empty: there is nothing to learn")
            messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]
        else:
            raise _data_error(where, "messages", "is missing; give a 'messages' column (a chat) or "
                                                 "'prompt' and 'completion' columns")
        out.append(Example(messages, _weight(rec.get("weight"), where), where))
    return out


def stop_token_ids(tokenizer: Any, model_dir: Path | None = None) -> set[int]:
    """Token ids generation stops on (generation_config's eos list, else the tokenizer's eos)."""
    ids: set[int] = set()
    if model_dir is not None and (model_dir / "generation_config.json").is_file():
        eos = json.loads((model_dir / "generation_config.json").read_text(encoding="utf-8")).get("eos_token_id")
        ids.update(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return ids


def _render(tokenizer: Any, messages: Sequence[dict[str, str]], generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=generation_prompt)


def encode_chat(tokenizer: Any, messages: Sequence[dict[str, str]], max_length: int,
                stop_ids: set[int] | None = None, *, only_last: bool = False) -> Encoded:
    """Template, tokenise and mask one chat (see the module docstring for which tokens are targets).
    ``only_last``: only the last assistant turn is a target (preference data: earlier turns are prompt)."""
    text = _render(tokenizer, messages)
    spans: list[tuple[int, int]] = []  # character spans of assistant turns in ``text``
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = _render(tokenizer, messages[:i], generation_prompt=True) if i else ""
        upto = _render(tokenizer, messages[: i + 1])
        if not (text.startswith(before) and text.startswith(upto)):
            raise ConfigError("the model's chat template renders a chat differently from its prefixes, so the "
                              "assistant turns cannot be located; use a model whose template appends turns")
        spans.append((len(before), len(upto)))
    eos = tokenizer.eos_token_id
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids: list[int] = list(enc["input_ids"])
    offsets: list[tuple[int, int]] = [tuple(o) for o in enc["offset_mapping"]]
    if eos is not None and (not ids or ids[-1] != eos):
        ids.append(int(eos))  # the last turn's end: what the model should emit when it is done
        offsets.append((len(text), len(text)))
    stop = stop_ids if stop_ids is not None else ({int(eos)} if eos is not None else set())
    labels = [IGNORE] * len(ids)
    for start, end in (spans[-1:] if only_last else spans):
        last = -1
        for t, (s, e) in enumerate(offsets):
            if e > start and s < end:
                labels[t] = ids[t]
                last = t
        if 0 <= last < len(ids) - 1 and ids[last + 1] in stop:
            labels[last + 1] = ids[last + 1]
    truncated = len(ids) > max_length
    return Encoded(ids[:max_length], labels[:max_length], truncated)


def _split(examples: list[Example], fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    if len(examples) < 2:
        raise ConfigError(f"the training data has {len(examples)} example(s); a validation split needs at "
                          "least 2, or give data.valid")
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_valid = min(len(examples) - 1, max(1, round(len(examples) * fraction)))
    valid = set(order[:n_valid])
    return ([e for i, e in enumerate(examples) if i not in valid], [e for i, e in enumerate(examples) if i in valid])


def _dedupe(examples: list[Example]) -> list[Example]:
    seen: set[str] = set()
    out = []
    for e in examples:
        key = json.dumps(e.messages, sort_keys=True, ensure_ascii=False)
        if key not in seen:
            seen.add(key)
            out.append(e)
    return out


def _write_split(path: Path, examples: list[Example], tokenizer: Any, max_length: int, stop_ids: set[int],
                 tick: Callable[[], None]) -> dict[str, int]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    cols: dict[str, list[Any]] = {"input_ids": [], "labels": [], "weight": [], "row": []}
    stats = {"examples": 0, "tokens": 0, "target_tokens": 0, "truncated": 0, "dropped_no_target": 0}
    for e in examples:
        enc = encode_chat(tokenizer, e.messages, max_length, stop_ids)
        tick()
        n_target = sum(1 for x in enc.labels if x != IGNORE)
        if n_target == 0:
            stats["dropped_no_target"] += 1
            continue
        cols["input_ids"].append(enc.input_ids)
        cols["labels"].append(enc.labels)
        cols["weight"].append(e.weight)
        cols["row"].append(e.where.row)
        stats["examples"] += 1
        stats["tokens"] += len(enc.input_ids)
        stats["target_tokens"] += n_target
        stats["truncated"] += int(enc.truncated)
    table = pa.table({
        "input_ids": pa.array(cols["input_ids"], type=pa.list_(pa.int32())),
        "labels": pa.array(cols["labels"], type=pa.list_(pa.int32())),
        "weight": pa.array(cols["weight"], type=pa.float64()),
        "row": pa.array(cols["row"], type=pa.int64()),
    })
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp)
    tmp.replace(path)
    return stats


def prepare_splits(splits: dict[str, list[Example]], tokenizer: Any, model_dir: Path, out_dir: Path,
                   max_length: int, *, valid_fraction: float, seed: int, drop_duplicates: bool = False,
                   progress: bool = True) -> dict[str, Any]:
    """Write the prepared directory from ``splits`` (``train`` required; ``valid`` split off ``train``
    when absent; ``test`` optional); returns what ``meta.json`` holds."""
    from tqdm.auto import tqdm

    splits = {k: (_dedupe(v) if drop_duplicates else v) for k, v in splits.items() if v is not None}
    if "valid" not in splits:
        splits["train"], splits["valid"] = _split(splits["train"], valid_fraction, seed)
    stop_ids = stop_token_ids(tokenizer, model_dir)
    template = tokenizer.chat_template or ""
    out_dir.mkdir(parents=True, exist_ok=True)
    total = sum(len(v) for v in splits.values())
    bar = tqdm(total=total, desc="tokenise", unit="ex", disable=not progress)
    meta: dict[str, Any] = {
        "version": PREPARED_VERSION, "model": str(model_dir), "max_length": max_length,
        "template_sha256": hashlib.sha256(template.encode("utf-8")).hexdigest(),
        "stop_token_ids": sorted(stop_ids), "pad_token_id": _pad_id(tokenizer), "splits": {},
    }
    try:
        for name, examples in splits.items():
            meta["splits"][name] = _write_split(out_dir / f"{name}.parquet", examples, tokenizer, max_length,
                                                stop_ids, lambda: bar.update(1))
    finally:
        bar.close()
    if meta["splits"]["train"]["examples"] == 0:
        raise ConfigError(f"no training example has a completion token within max_length={max_length}; "
                          "raise preprocess.max_length")
    (out_dir / META_FILE).write_text(json.dumps(meta, indent=2), encoding="utf-8")
    return meta


def _pad_id(tokenizer: Any) -> int:
    for v in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if v is not None:
            return int(v)
    return 0


def read_meta(prepared: Path) -> dict[str, Any]:
    path = Path(prepared) / META_FILE
    if not path.is_file():
        raise ConfigError(f"{prepared} is not a prepared causal-lm directory (no {META_FILE}); run the "
                          "preprocess stage first")
    return json.loads(path.read_text(encoding="utf-8"))


@dataclass(frozen=True)
class Split:
    input_ids: list[list[int]]
    labels: list[list[int]]
    weights: list[float]

    def __len__(self) -> int:
        return len(self.input_ids)


def read_split_table(prepared: Path, name: str) -> dict[str, list[Any]]:
    """The columns of the prepared split ``name`` (a clear error when preprocessing did not write it)."""
    import pyarrow.parquet as pq

    path = Path(prepared) / f"{name}.parquet"
    if not path.is_file():
        raise ConfigError(f"the prepared directory {prepared} has no {name!r} split")
    return pq.read_table(path).to_pydict()


def load_split(prepared: Path, name: str) -> Split:
    t = read_split_table(prepared, name)
    return Split(t["input_ids"], t["labels"], [float(w) for w in t["weight"]])
