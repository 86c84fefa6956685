"""Task identification and model recommendation: ``model: "auto"``.

* :mod:`~autoglm.recommend.encoders` - text encoders (hashing n-grams, MiniLM, any sentence-transformers model);
* :mod:`~autoglm.recommend.taxonomy` - tasks, keywords and templates from YAML (``data/*.yaml`` + yours);
* :mod:`~autoglm.recommend.index` - template embeddings, cached on disk, KNN by matmul;
* :mod:`~autoglm.recommend.identify` - KNN vote + keywords + request shape + length -> task, confidence;
* :mod:`~autoglm.recommend.calibrate` - fit weights and threshold on labelled prompts, versioned;
* :mod:`~autoglm.recommend.profiles` / :mod:`~autoglm.recommend.route` - model profiles, hard
  constraints and the score that picks a model;
* :mod:`~autoglm.recommend.recommender` - all of it built from a deploy file (:func:`build_recommender`);
* :mod:`~autoglm.recommend.http` - the hook in the HTTP path and ``POST /v1/recommend``.

Importing this package does no work: names are loaded on first use.
"""
from __future__ import annotations

import importlib
from typing import Any

__all__ = ["build_recommender", "Recommender", "TaskIdentifier", "Identification", "IdentifyParams",
           "load_taxonomy", "ModelProfile", "RouteDecision", "make_encoder"]

_WHERE = {
    "build_recommender": "recommender", "Recommender": "recommender", "TaskIdentifier": "identify",
    "Identification": "identify", "IdentifyParams": "identify", "load_taxonomy": "taxonomy",
    "ModelProfile": "profiles", "RouteDecision": "route", "make_encoder": "encoders",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'autoglm.recommend' has no attribute {name!r}")
    return getattr(importlib.import_module(f"autoglm.recommend.{module}"), name)
