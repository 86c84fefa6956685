"""The template index: every template's embedding in one matrix, cached on disk, searched by matmul.

:func:`build_index` encodes the taxonomy's templates with an encoder once and keeps the
``float32 [N, dim]`` matrix in ``$AUTOGLM_HOME/recommend/index/<encoder fingerprint>-<content hash>.npy``,
so a restart (or a second replica) does not encode 1,000 templates again, and a changed template or
encoder setting makes a new file instead of reusing a stale one. :meth:`TemplateIndex.nearest` is a
sparse dot product (postings per hashed dimension; a dense matmul for dense encoders) and an ``argpartition``.

Knows nothing about tasks beyond their labels, nor about requests or models.
"""
from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from autoglm.recommend.encoders import Encoder

__all__ = ["TemplateIndex", "build_index", "index_dir"]

log = logging.getLogger(__name__)


def index_dir(home: Path | None = None) -> Path:
    from autoglm.config import default_store_dir

    return (home or default_store_dir()) / "recommend" / "index"


@dataclass
class TemplateIndex:
    encoder: Encoder
    matrix: np.ndarray  # [N, dim] float32, unit rows
    labels: np.ndarray  # [N] int: index into ``tasks``
    tasks: list[str]

    def __post_init__(self) -> None:
        # Hashed features are sparse (a template touches ~100 of 4,096 buckets): keep the matrix also as
        # postings per dimension, so a sparse query only visits the templates that share its buckets.
        dims, rows = np.nonzero(self.matrix.T)  # sorted by dimension
        self._sparse = len(dims) * 4 < self.matrix.size
        if self._sparse:
            self._rows = rows.astype(np.int64)
            self._vals = self.matrix[rows, dims]
            self._indptr = np.searchsorted(dims, np.arange(self.matrix.shape[1] + 1))

    def similarities(self, query: np.ndarray) -> np.ndarray:
        """Cosine similarity of ``query`` to every template: ``[N]``."""
        nz = np.flatnonzero(query)
        if not self._sparse or len(nz) * 4 >= len(query):
            return self.matrix @ query
        starts, ends = self._indptr[nz], self._indptr[nz + 1]
        lens = ends - starts
        total = int(lens.sum())
        if total == 0:
            return np.zeros(self.matrix.shape[0], dtype=np.float32)
        # the concatenation of the ranges [starts[i], ends[i]) without a Python loop
        offsets = np.repeat(starts - np.concatenate(([0], np.cumsum(lens)[:-1])), lens)
        idx = offsets + np.arange(total)
        weights = self._vals[idx] * np.repeat(query[nz], lens)
        return np.bincount(self._rows[idx], weights=weights, minlength=self.matrix.shape[0])

    def nearest(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(template indices, cosine similarities)`` of the ``k`` nearest templates, best first."""
        sims = self.similarities(query)
        k = min(k, len(sims))
        top = np.argpartition(-sims, k - 1)[:k] if k < len(sims) else np.arange(len(sims))
        top = top[np.argsort(-sims[top])]
        return top, sims[top]

    def vote(self, query: np.ndarray, k: int) -> np.ndarray:
        """Similarity-weighted vote per task: ``sum(max(sim, 0) for the task's templates in the top k) / k``."""
        top, sims = self.nearest(query, k)
        votes = np.zeros(len(self.tasks), dtype=np.float64)
        np.add.at(votes, self.labels[top], np.maximum(sims, 0.0))
        return votes / max(k, 1)

    def vote_and_top(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`vote` and, per task, the similarity of its nearest template (0 when none is positive)."""
        sims = self.similarities(query)
        k = min(k, len(sims))
        top = np.argpartition(-sims, k - 1)[:k] if k < len(sims) else np.arange(len(sims))
        votes = np.zeros(len(self.tasks), dtype=np.float64)
        np.add.at(votes, self.labels[top], np.maximum(sims[top], 0.0))
        best = np.zeros(len(self.tasks), dtype=np.float64)
        np.maximum.at(best, self.labels, sims)
        return votes / max(k, 1), best


def _atomic_save(path: Path, matrix: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, matrix)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def build_index(encoder: Encoder, texts: list[str], labels: list[str], tasks: list[str], *,
                cache: Path | None = None) -> TemplateIndex:
    """Encode ``texts`` (or load their cached matrix); ``cache`` None uses :func:`index_dir`."""
    digest = hashlib.sha256("\x00".join(texts).encode("utf-8")).hexdigest()[:16]
    path = (cache or index_dir()) / f"{encoder.fingerprint}-{digest}.npy"
    matrix = None
    if path.is_file():
        try:
            loaded = np.load(path)
            if loaded.shape[0] == len(texts) and loaded.dtype == np.float32:
                matrix = loaded
        except (OSError, ValueError):
            log.warning("template index cache %s is unreadable; rebuilding it", path)
    if matrix is None:
        matrix = encoder.encode(texts) if texts else np.zeros((0, 1), dtype=np.float32)
        try:
            _atomic_save(path, matrix)
        except OSError as exc:  # a read-only home only costs the next start its encoding time
            log.warning("cannot cache the template index at %s: %s", path, exc)
    position = {t: i for i, t in enumerate(tasks)}
    return TemplateIndex(encoder, np.ascontiguousarray(matrix), np.array([position[x] for x in labels],
                                                                          dtype=np.int64), list(tasks))
