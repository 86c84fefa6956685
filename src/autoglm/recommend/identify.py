"""Task identification: which task of the taxonomy a request is, and how sure we are.

Signals, each a score per task:

* ``knn`` - for each encoder, the similarity-weighted vote of the ``k`` nearest templates
  (``sum(max(sim, 0)) / k`` per task), averaged over the encoders by their weights;
* ``keywords`` - ``1 - 0.5 ** hits`` where ``hits`` is the number of distinct keywords of the task
  in the text (English and Chinese lists: MiniLM and character n-grams are both weak on short Chinese
  requests, keywords are not);
* request shape - ``response_format`` ``json_object``/``json_schema`` adds ``shape_json`` to
  ``extraction``; ``tools`` adds ``shape_tools`` to it;
* fluency - how much the text reads as natural language (the share of common function words, or
  of common Chinese characters with no long runs of one character), added as ``w_fluency * fluency`` to
  ``chat``: well-formed language that matches no task better is general chat, while gibberish, noise
  and symbols stay below the threshold and become "unknown";
* length - a prompt of at least ``long_tokens`` (estimated) tokens adds ``length`` to ``long_doc_qa``
  and a third of it to ``summarization``;
* material - a prompt that carries a text to work on (a pasted document, e-mail, code file: at least
  ``doc_tokens`` estimated tokens) is split into the *instruction* (its short first and/or last
  paragraph, or what comes before a colon that opens it: "Summarise this: ...") and the *material*
  (the rest). The KNN vote and fluency read the instruction only, and keywords count fully in the
  instruction and ``w_material`` each in the material - a report full of numbers is not a maths
  question, while pasted code still says "code". When the instruction is a question, ``doc_question``
  is added to ``long_doc_qa`` (a question about a given text) - unless the material is program code
  (most of its lines look like code: indented, ending in ``;{}:``, starting with a keyword), which
  adds ``doc_question`` to ``code`` instead: a question about code is a code task.

Besides the vote, each encoder gives ``top`` - per task, the similarity of its nearest template.

**Combining them.** With the built-in parameters (and after ``autoglm recommend calibrate``) a
calibrated linear model (:mod:`~autoglm.recommend.linear`: a softmax over the tasks and ``unknown``,
one weight per signal and language, fitted on labelled prompts) gives each task a probability; the
``confidence`` is the best task's probability, and the task is ``unknown`` when ``unknown`` is more
probable or the confidence is below ``threshold``. With a neural encoder beside the hashing one the
identification is a cascade: the hashing-only model decides when it is sure (probability at least
``cascade``), otherwise the neural encoder runs and the model over every signal decides; a language the
model gives the neural encoder no weight in (Chinese, for MiniLM) never runs it. The built-in models
are in ``data/linear.json``, fitted on the dev set by ``benchmarks/task_identification.py --refit``
(an identifier whose encoders have no built-in model uses the weighted sum below).

**The weighted sum** (``linear: None``):
``score[t] = w_knn * knn[t] + w_keywords * keywords[t] + shape[t] + length[t] + material[t]
(+ fluency for chat)``;
``confidence = max(score) / (sum(score) + prior)`` - the ``prior`` is evidence for "none of these", so
a request that matches nothing well has a low confidence even when one task is slightly ahead. Below
``threshold`` the task is :data:`~autoglm.recommend.taxonomy.UNKNOWN`. The weights and the threshold
are :class:`IdentifyParams`, which :func:`~autoglm.recommend.calibrate.fit` with ``method="grid"`` fits; the defaults
are that fit on the dev set shipped in ``tests/recommend/data`` (all ``labelled_*.jsonl``) with the
hashing encoder, and ``doc_tokens``, ``w_material``, ``doc_question`` the best of a small grid on the
same set - except ``prior``: a refit would lower it to 0.3 for one more correct dev row, which lets
keyboard mashing ("qwzx vbnm plkj") pass the threshold, so it stays 0.5. The held-out set in
``benchmarks/data/task_identification`` is never used to fit anything.

The text identified is the last user message (the instruction; long documents keep head and tail in
the hashing encoder); length counts every message. Knows nothing about models or HTTP.
"""
from __future__ import annotations

import functools
import json
import re
from collections.abc import Container, Mapping
from importlib import resources
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np

from autoglm.recommend.encoders import _CJK, Encoder, clip_head_tail
from autoglm.recommend.index import TemplateIndex, build_index
from autoglm.recommend.linear import LinearModel
from autoglm.recommend.taxonomy import UNKNOWN, Taxonomy

__all__ = ["IdentifyParams", "default_params", "RequestSignals", "Identification", "TaskIdentifier", "signals_from_request",
           "detect_language", "fluency", "split_material", "is_question", "looks_like_code"]

_LATIN = re.compile(r"[A-Za-z]")
KEYWORD_CHARS = 1200  # keywords are looked for in the head and tail of a long prompt, like the encoder
_EN_WORD = re.compile(r"[a-z']+")
_FUNCTION_WORDS_EN = frozenset("""a an the i you he she it we they me my your our their this that these those is are
was were be been am do does did have has had can could should would will shall may might must what why how
when where which who whom whose if or and but so not no to of in on at for with about from by as than then
there here any some all more most very just really too also up out into over after before because while
like get go make want need think know tell give help please let it's i'm don't what's""".split())
_COMMON_ZH = frozenset("的了是我你他她它们在有和就不人都一个上也很到说要去会着没看好自己这那么什吗呢吧啊哪谁怎"
                       "为能可以想还多少最比较应该觉得喜欢怎样一下给对用做时候大家知道真的")


@dataclass(frozen=True)
class IdentifyParams:
    k: int = 7
    w_knn: float = 2.0
    w_keywords: float = 0.8
    shape_json: float = 0.8
    shape_tools: float = 0.3
    w_fluency: float = 0.1
    length: float = 0.5
    long_tokens: int = 700
    doc_tokens: int = 100  # a prompt at least this long may carry material (see "material" above)
    w_material: float = 0.25  # a keyword in the material counts this much of one in the instruction
    doc_question: float = 0.6  # added to long_doc_qa for a question about the material
    prior: float = 0.5
    threshold: float = 0.15
    encoder_weights: dict[str, float] = field(default_factory=dict)  # name -> weight (default 1 each)
    # the calibrated linear model (recommend.linear) over every encoder's signals, and the one over the cheap
    # (hashing) encoder's alone; None: the weighted sum above. ``cascade``: the slower encoders run only when
    # the cheap model's probability of its best answer is below this.
    linear: dict[str, Any] | None = None
    linear_fast: dict[str, Any] | None = None
    cascade: float = 0.9

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> IdentifyParams:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def default_params(encoder_key: str) -> IdentifyParams:
    """The built-in parameters for these encoders: the linear models fitted on the shipped dev set
    (``data/linear.json``, written by ``benchmarks/task_identification.py --refit``) when there are some for
    them, else the hand-set weighted sum."""
    fitted = _builtin_linear()
    entry = fitted.get(encoder_key)
    if not entry:
        return IdentifyParams()
    return IdentifyParams(linear=entry.get("linear"), linear_fast=entry.get("linear_fast"),
                          cascade=float(entry.get("cascade", 0.9)), threshold=float(entry.get("threshold", 0.0)))


@functools.lru_cache(maxsize=1)
def _builtin_linear() -> dict[str, Any]:
    try:
        text = (resources.files("autoglm.recommend") / "data" / "linear.json").read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    return json.loads(text).get("models", {})


@dataclass
class RequestSignals:
    """What identification reads from a request."""

    text: str  # the instruction: the last user message's text (or the completion prompt)
    total_chars: int = 0  # every message's text
    has_tools: bool = False
    response_format: str | None = None  # "json_object", "json_schema", "text" or None
    has_images: bool = False

    @property
    def est_tokens(self) -> int:
        return estimate_tokens(self.text, self.total_chars)


def estimate_tokens(text: str, total_chars: int) -> int:
    """About 1 token per CJK character and per 4 other characters (no tokenizer on the routing path)."""
    cjk = len(_CJK.findall(text[:4000]))
    share = cjk / max(1, min(len(text), 4000))
    return int(total_chars * (share + (1 - share) / 4)) + 1


def detect_language(text: str) -> str:
    """``zh`` when CJK characters are at least a fifth of the letters, else ``en``."""
    sample = text[:2000]
    cjk = len(_CJK.findall(sample))
    latin = len(_LATIN.findall(sample))
    return "zh" if cjk and cjk * 5 >= cjk + latin else "en"


def fluency(text: str) -> float:
    """0..1: how much ``text`` reads as natural language (function words, common characters)."""
    sample = text[:600].lower()
    cjk = _CJK.findall(sample)
    if len(cjk) >= 3:
        common = sum(c in _COMMON_ZH for c in cjk) / len(cjk)
        diversity = len(set(cjk)) / len(cjk)
        return min(1.0, 4 * common) * (1.0 if diversity >= 0.5 else 0.0)
    words = _EN_WORD.findall(sample)
    if len(words) < 3:
        return 0.0
    return min(1.0, 2.5 * sum(w in _FUNCTION_WORDS_EN for w in words) / len(words))


def _content_text(content: Any) -> tuple[str, bool]:
    if isinstance(content, str):
        return content, False
    texts, images = [], False
    if isinstance(content, list):
        for part in content:
            if isinstance(part, Mapping):
                if part.get("type") == "text" and isinstance(part.get("text"), str):
                    texts.append(part["text"])
                elif part.get("type") in ("image_url", "input_image", "image"):
                    images = True
    return "\n".join(texts), images


def signals_from_request(request: Mapping[str, Any]) -> RequestSignals:
    """Signals from a chat (``messages``) or completions (``prompt``) request body, as a dict."""
    rf = request.get("response_format")
    rf_type = rf.get("type") if isinstance(rf, Mapping) else None
    tools = bool(request.get("tools")) or bool(request.get("functions"))
    messages = request.get("messages")
    if isinstance(messages, list):
        texts, last_user, images = [], "", False
        for m in messages:
            if not isinstance(m, Mapping):
                continue
            text, img = _content_text(m.get("content"))
            images = images or img
            texts.append(text)
            if m.get("role") == "user":
                last_user = text
        total = sum(len(t) for t in texts)
        return RequestSignals(last_user or (texts[-1] if texts else ""), total, tools, rf_type, images)
    prompt = request.get("prompt")
    if isinstance(prompt, list):
        prompt = "\n".join(p for p in prompt if isinstance(p, str))
    text = prompt if isinstance(prompt, str) else ""
    return RequestSignals(text, len(text), tools, rf_type)


_PARAGRAPH = re.compile(r"\n\s*\n")
_COLON = re.compile(r"[:：]")
_MAX_INSTRUCTION = 320  # characters of a paragraph that is an instruction rather than material
_QUESTION = re.compile(
    r"[?？]|[吗呢么]\s*$|(什么|多少|几[个天次条岁年月点号]|哪|怎么|如何|是否|能否|为什么|有没有|会不会|可不可以|能不能)"
    r"|^\s*(what|which|when|who|whom|whose|where|why|how|is|are|was|were|do|does|did|can|could|will|would|should|may"
    r"|has|have)\b", re.IGNORECASE)


def split_material(text: str, doc_tokens: int) -> tuple[str, str]:
    """``(instruction, material)``; ``material`` is empty when the text carries none (see module docstring)."""
    if estimate_tokens(text, len(text)) < doc_tokens:
        return text, ""
    paragraphs = [p for p in _PARAGRAPH.split(text.strip()) if p.strip()]
    if len(paragraphs) >= 2:
        first, last = paragraphs[0], paragraphs[-1]
        head = first if len(first) <= _MAX_INSTRUCTION else ""
        tail = last if len(last) <= _MAX_INSTRUCTION else ""
        if head or tail:
            body = paragraphs[1 if head else 0:len(paragraphs) - 1 if tail else None]
            if body:
                return "\n".join(x for x in (head, tail) if x), "\n\n".join(body)
    colon = _COLON.search(text, 0, 200)
    if colon is not None and estimate_tokens(text[colon.end():], len(text) - colon.end()) >= doc_tokens:
        return text[:colon.start()], text[colon.end():]
    return text, ""


_CODE_LINE = re.compile(r"^\s{2,}\S|[;{}:)]\s*$|^\s*(def|class|import|from|return|if|elif|else|for|while|try|except"
                        r"|function|const|let|var|public|private|static|func|fn|#include|package|select|insert)\b")


def looks_like_code(material: str) -> bool:
    lines = [ln for ln in material.splitlines()[:200] if ln.strip()]
    return len(lines) >= 3 and sum(bool(_CODE_LINE.search(ln)) for ln in lines) >= 0.6 * len(lines)


def is_question(instruction: str) -> bool:
    return bool(_QUESTION.search(instruction.strip()[-300:]))


@dataclass
class Identification:
    task: str  # a task name or "unknown"
    confidence: float
    best: str  # the top task even when below the threshold
    language: str
    scores: dict[str, float]  # per task, the combined score
    signals: dict[str, dict[str, float]]  # signal -> task -> value (only non-zero)

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task, "confidence": round(self.confidence, 4), "best": self.best,
                "language": self.language, "scores": {k: round(v, 4) for k, v in self.scores.items()},
                "signals": {s: {t: round(v, 4) for t, v in d.items()} for s, d in self.signals.items()}}


class TaskIdentifier:
    """Taxonomy + template indexes (one per encoder) + :class:`IdentifyParams`."""

    def __init__(self, taxonomy: Taxonomy, encoders: list[Encoder], params: IdentifyParams | None = None, *,
                 cache: Any = None):
        self.taxonomy = taxonomy
        self.tasks = taxonomy.names
        texts, labels = taxonomy.templates()
        self.indexes: list[TemplateIndex] = [build_index(e, texts, labels, self.tasks, cache=cache)
                                             for e in encoders] if texts else []
        self._pos = {t: i for i, t in enumerate(self.tasks)}
        self._names = [ix.encoder.name for ix in self.indexes]
        self._models_of: IdentifyParams | None = None
        self._models: tuple[LinearModel | None, LinearModel | None] = (None, None)
        self.params = params or default_params(self.encoder_key)

    def _load_models(self, p: IdentifyParams) -> tuple[LinearModel | None, LinearModel | None]:
        self._models, self._models_of = self.models(p), p  # parsed once per parameter set
        return self._models

    @property
    def encoder_key(self) -> str:
        """The encoders' names joined by ``+``: which built-in linear model applies (``data/linear.json``)."""
        return "+".join(self._names)

    @property
    def fingerprint(self) -> str:
        """The encoders and the templates: a calibration applies only to the identifier it was fitted on."""
        return "+".join(ix.encoder.fingerprint for ix in self.indexes) + "/" + self.taxonomy.content_hash

    @property
    def fast(self) -> bool:
        """Whether identification is cheap enough (well under a millisecond) to run on the event loop."""
        return all(ix.encoder.name == "hashing" for ix in self.indexes)

    def signal_matrix(self, signals: RequestSignals, *, run: Container[str] | None = None) -> dict[str, np.ndarray]:
        """The raw signals (before weights): name -> ``[n_tasks]``. ``run``: the encoders to run (default: all;
        the others' ``knn:``/``top:`` signals are left out)."""
        p, n = self.params, len(self.tasks)
        out: dict[str, np.ndarray] = {}
        instruction, material = split_material(signals.text, p.doc_tokens)
        if self.indexes:
            self.add_encoder_signals(out, instruction, run)
        hits = np.array(self.taxonomy.keyword_hits(clip_head_tail(instruction, KEYWORD_CHARS).lower()),
                        dtype=np.float64)
        if material:  # (head and tail of a long one, as the encoder reads a long prompt)
            lowered = clip_head_tail(material, KEYWORD_CHARS).lower()
            hits = hits + p.w_material * np.array(self.taxonomy.keyword_hits(lowered), dtype=np.float64)
        out["keywords"] = 1.0 - 0.5 ** hits
        shape = np.zeros(n)
        if "extraction" in self._pos:
            if signals.response_format in ("json_object", "json_schema"):
                shape[self._pos["extraction"]] += 1.0 * p.shape_json
            if signals.has_tools:
                shape[self._pos["extraction"]] += 1.0 * p.shape_tools
        out["shape"] = shape
        fluent = np.zeros(n)
        if "chat" in self._pos:
            fluent[self._pos["chat"]] = fluency(instruction)
        out["fluency"] = fluent
        doc = np.zeros(n)
        if material and looks_like_code(material):
            if "code" in self._pos:
                doc[self._pos["code"]] = p.doc_question
        elif material and "long_doc_qa" in self._pos and is_question(instruction):
            doc[self._pos["long_doc_qa"]] = p.doc_question
        out["material"] = doc
        length = np.zeros(n)
        if signals.est_tokens >= p.long_tokens:
            if "long_doc_qa" in self._pos:
                length[self._pos["long_doc_qa"]] = p.length
            if "summarization" in self._pos:
                length[self._pos["summarization"]] = p.length / 3
        out["length"] = length
        return out

    def add_encoder_signals(self, out: dict[str, np.ndarray], instruction: str,
                            run: Container[str] | None = None) -> None:
        """``knn:<encoder>`` and ``top:<encoder>`` for the encoders in ``run`` (default: all) into ``out``, and
        ``knn``: the weighted mean of every encoder's vote in ``out`` (``encoder_weights``)."""
        p = self.params
        for ix in self.indexes:
            if run is None or ix.encoder.name in run:
                vote, top = ix.vote_and_top(ix.encoder.encode([instruction])[0], p.k)
                out[f"knn:{ix.encoder.name}"], out[f"top:{ix.encoder.name}"] = vote, top
        total_w, knn = 0.0, np.zeros(len(self.tasks))
        for ix in self.indexes:
            w = p.encoder_weights.get(ix.encoder.name, 1.0)
            if w > 0 and f"knn:{ix.encoder.name}" in out:
                knn += w * out[f"knn:{ix.encoder.name}"]
                total_w += w
        out["knn"] = knn / max(total_w, 1e-9)

    def models(self, params: IdentifyParams | None = None) -> tuple[LinearModel | None, LinearModel | None]:
        """``(full, fast)`` linear models of ``params`` (None where it has none)."""
        p = params or self.params
        return (LinearModel.from_dict(p.linear) if p.linear else None,
                LinearModel.from_dict(p.linear_fast) if p.linear_fast else None)

    def combine(self, raw: Mapping[str, np.ndarray], params: IdentifyParams | None = None) -> tuple[int, float,
                                                                                                   np.ndarray]:
        """``(best task index, confidence, scores)`` from raw signals under ``params``."""
        p = params or self.params
        scores = raw["shape"] + raw["length"] + p.w_keywords * raw["keywords"] + p.w_fluency * raw["fluency"]
        if "knn" in raw:
            scores = scores + p.w_knn * raw["knn"]
        if "material" in raw:
            scores = scores + raw["material"]
        best = int(np.argmax(scores))
        confidence = float(scores[best] / (scores.sum() + p.prior))
        return best, confidence, scores

    def identify(self, signals: RequestSignals | Mapping[str, Any] | str) -> Identification:
        if isinstance(signals, str):
            signals = RequestSignals(signals, len(signals))
        elif not isinstance(signals, RequestSignals):
            signals = signals_from_request(signals)
        language = detect_language(signals.text)
        p = self.params
        full, fast = self._models if self._models_of is p else self._load_models(p)
        if full is None:
            raw = self.signal_matrix(signals, run={n for n in self._names if p.encoder_weights.get(n, 1.0) > 0})
            best, confidence, scores = self.combine(raw)
            ok = confidence >= p.threshold and scores[best] > 0
        else:
            cheap = [n for n in self._names if n == "hashing"]
            slow = [n for n in self._names if n != "hashing" and full.needs(f"knn:{n}", language)]
            raw = self.signal_matrix(signals, run=cheap)
            model = full
            if slow and fast is not None:
                probs = fast.probabilities(raw, language, self.tasks)
                model = fast if probs.max() >= p.cascade else full
            if model is full and slow:  # the cheap model is unsure: ask the slower encoders too
                instruction, _ = split_material(signals.text, p.doc_tokens)
                self.add_encoder_signals(raw, instruction, slow)
            probs = model.probabilities(raw, language, self.tasks)
            scores = probs[:-1]
            best = int(np.argmax(scores))
            confidence = float(scores[best])
            ok = confidence >= p.threshold and confidence >= probs[-1]
        name = self.tasks[best]
        task = name if ok else UNKNOWN
        return Identification(
            task=task, confidence=confidence, best=name, language=language,
            scores={t: float(s) for t, s in zip(self.tasks, scores)},
            signals={k: {t: float(v) for t, v in zip(self.tasks, arr) if v} for k, arr in raw.items()},
        )
