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


_TOKEN = re.compile(r"[a-z0-9_]+|[^\sa-z0-9_]")


def tokens(lowered: str) -> list[str]:
    """Latin words and single symbols (CJK characters are matched as substrings instead)."""
    return _TOKEN.findall(lowered)


@dataclass
class Task:
    name: str
    description: str = ""
    keywords: list[str] = field(default_factory=list)
    templates: list[tuple[str, str]] = field(default_factory=list)  # (language, text)
    _phrases: frozenset[tuple[str, ...]] = field(default=frozenset(), repr=False)
    _cjk: tuple[str, ...] = field(default=(), repr=False)
    _regexes: tuple[re.Pattern[str], ...] = field(default=(), repr=False)

    def compile(self) -> None:
        phrases, cjk, regexes = set(), [], []
        for k in dict.fromkeys(self.keywords):
            if k.startswith("re:"):
                regexes.append(re.compile(k[3:], re.IGNORECASE | re.MULTILINE))
            elif any(is_cjk(c) for c in k):
                cjk.append(k.lower())
            else:
                phrases.add(tuple(tokens(k.lower())))
        self._phrases, self._cjk, self._regexes = frozenset(phrases), tuple(cjk), tuple(regexes)

    @property
    def longest_phrase(self) -> int:
        return max((len(p) for p in self._phrases), default=1)

    def keyword_hits(self, lowered: str, ngrams: frozenset[tuple[str, ...]] | None = None) -> int:
        """How many distinct keywords of this task occur in ``lowered`` text. ``ngrams``: the text's token
        n-grams (see :meth:`Taxonomy.ngrams`), computed once for every task."""
        if ngrams is None:
            ngrams = ngram_set(lowered, self.longest_phrase)
        hits = len(self._phrases & ngrams) + sum(k in lowered for k in self._cjk)
        return hits + sum(1 for r in self._regexes if r.search(lowered))


def ngram_set(lowered: str, n: int) -> frozenset[tuple[str, ...]]:
    toks = tokens(lowered)
    return frozenset(tuple(toks[i:i + k]) for k in range(1, n + 1) for i in range(len(toks) - k + 1))


class Taxonomy:
    """Tasks by name, merged from one or more files; :attr:`content_hash` covers every template."""

    def __init__(self, tasks: list[Task]):
        self.tasks = {t.name: t for t in tasks}
        for t in tasks:
            t.compile()

    @property
    def names(self) -> list[str]:
        return list(self.tasks)

    def keyword_hits(self, lowered: str) -> list[int]:
        """Distinct keyword hits per task, in :attr:`names` order."""
        grams = ngram_set(lowered, max((t.longest_phrase for t in self.tasks.values()), default=1))
        return [t.keyword_hits(lowered, grams) for t in self.tasks.values()]

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
