"""The task taxonomy: task names, descriptions, keywords and example templates, read from YAML.

A taxonomy file (``src/autoglm/recommend/data/*.yaml`` ships the default; users add their own with
``recommend.templates`` in a deploy file) is ``tasks:``, a list of ``{name, description, keywords,
templates}``; ``keywords`` and ``templates`` map a language code (``en``, ``zh``, ...) to a list of
strings. Files merge by task name: a later file adds keywords and templates to a task, or a new task.
A keyword is a word or phrase (matched on word boundaries for Latin script, as a substring for CJK,
case-insensitively) or ``re:<regex>``.

Errors point at ``file:line key``. This module knows nothing about encoders, scoring or models.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from autoglm.configfile import load_yaml_config, parse_yaml_config
from autoglm.errors import ConfigError
from autoglm.recommend.encoders import is_cjk

__all__ = ["Task", "Taxonomy", "load_taxonomy", "DEFAULT_TASKS", "UNKNOWN"]

UNKNOWN = "unknown"
# The default taxonomy's task names, in display order.
DEFAULT_TASKS = ("chat", "code", "math", "translation", "summarization", "extraction", "creative_writing",
                 "long_doc_qa")
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")


class _TaskSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    description: str = ""
    keywords: dict[str, list[str]] = Field(default_factory=dict)
    templates: dict[str, list[str]] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if v == UNKNOWN or not _NAME.match(v):
            raise ValueError(f"a task name is lower_snake_case (not {UNKNOWN!r}), at most 40 characters; got {v!r}")
        return v

    @field_validator("keywords")
    @classmethod
    def _regexes(cls, v: dict[str, list[str]]) -> dict[str, list[str]]:
        for words in v.values():
            for w in words:
                if w.startswith("re:"):
                    try:
                        re.compile(w[3:])
                    except re.error as exc:
                        raise ValueError(f"keyword {w!r} is not a valid regex: {exc}") from None
                elif not w.strip():
                    raise ValueError("a keyword is empty")
        return v


class _TaxonomyFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int = 1
    tasks: list[_TaskSpec] = Field(min_length=1)


@dataclass
class Task:
    name: str
    description: str = ""
    keywords: list[str] = field(default_factory=list)
    templates: list[tuple[str, str]] = field(default_factory=list)  # (language, text)
    _pattern: re.Pattern[str] | None = field(default=None, repr=False)

    def compile(self) -> None:
        parts = []
        for k in dict.fromkeys(self.keywords):
            if k.startswith("re:"):
                parts.append(f"(?:{k[3:]})")
            elif any(is_cjk(c) for c in k):
                parts.append(re.escape(k.lower()))
            else:
                parts.append(r"(?<![a-z0-9_])" + re.escape(k.lower()) + r"(?![a-z0-9_])")
        self._pattern = re.compile("|".join(parts), re.IGNORECASE) if parts else None

    def keyword_hits(self, lowered: str) -> int:
        """How many distinct keywords of this task occur in ``lowered`` text."""
        if self._pattern is None:
            return 0
        return len({m.group(0).lower() for m in self._pattern.finditer(lowered)})


class Taxonomy:
    """Tasks by name, merged from one or more files; :attr:`content_hash` covers every template."""

    def __init__(self, tasks: list[Task]):
        self.tasks = {t.name: t for t in tasks}
        for t in tasks:
            t.compile()

    @property
    def names(self) -> list[str]:
        return list(self.tasks)

    def templates(self) -> tuple[list[str], list[str]]:
        """``(texts, task names)``, aligned."""
        texts, labels = [], []
        for t in self.tasks.values():
            for _lang, text in t.templates:
                texts.append(text)
                labels.append(t.name)
        return texts, labels

    @property
    def content_hash(self) -> str:
        texts, labels = self.templates()
        return hashlib.sha256(json.dumps([texts, labels], ensure_ascii=False).encode("utf-8")).hexdigest()[:16]

    def add(self, spec: _TaskSpec) -> None:
        task = self.tasks.get(spec.name)
        if task is None:
            task = self.tasks[spec.name] = Task(spec.name, spec.description)
        task.description = task.description or spec.description
        for words in spec.keywords.values():
            task.keywords.extend(words)
        for lang, texts in spec.templates.items():
            task.templates.extend((lang, t) for t in texts if t.strip())
        task.compile()


def _default_files() -> list[tuple[str, str]]:
    base = resources.files("autoglm.recommend") / "data"
    return sorted((f"autoglm/recommend/data/{p.name}", p.read_text(encoding="utf-8"))
                  for p in base.iterdir() if p.name.endswith(".yaml"))


def load_taxonomy(extra_files: list[str | Path] = (), *, include_default: bool = True) -> Taxonomy:
    """The default taxonomy (unless ``include_default`` is False) merged with ``extra_files``."""
    tax = Taxonomy([])
    specs: list[_TaskSpec] = []
    if include_default:
        for name, text in _default_files():
            specs.extend(parse_yaml_config(text, name, _TaxonomyFile).tasks)
    for path in extra_files:
        specs.extend(load_yaml_config(path, "templates file", _TaxonomyFile).tasks)
    for spec in specs:
        tax.add(spec)
    if not tax.tasks:
        raise ConfigError("the task taxonomy is empty; give at least one templates file with 'tasks:'")
    empty = [t.name for t in tax.tasks.values() if not t.templates and not t.keywords]
    if empty:
        raise ConfigError(f"task(s) {', '.join(empty)} have neither templates nor keywords; add some")
    return tax
