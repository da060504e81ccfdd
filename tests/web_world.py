"""A registry for the catalogue's pages, shaped like the demo's on tiny models: the JSON API
tests' world (`tests.test_serve_api.populate`) plus joy on ``tiny-b`` twice, natively and
transplanted from ``tiny`` through the fitted map, each evaluated at several α (relative to
the residual norm) beside the bare model, and a second model pair with maps of other R².
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from crx.registry import Registry
from tests.test_serve_api import populate

ALPHAS = (0.05, 0.1, 0.2, 0.4)


def catalogue(reg: Registry, folder: Path) -> dict[str, Any]:
    facts = populate(reg, folder)
    rng = np.random.default_rng(7)
    native = reg.save_vector(
        "joy@2", "tiny-b", rng.standard_normal((2, 16)).astype(np.float32), origin="extracted"
    ).record
    mapped = reg.save_vector(
        "joy@2",
        "tiny-b",
        rng.standard_normal((2, 16)).astype(np.float32),
        origin="mapped",
        source_vector_id=facts["v2"],
        map_ids=[facts["map"]],
        lineage_key=f"map:{facts['map']}",
        layers=[1],
    ).record
    settings = {"normalize": True}
    for vector, scores in ((native, (0.3, 0.5, 0.6, 0.4)), (mapped, (0.4, 0.7, 0.8, 0.5))):
        for alpha, score in zip(ALPHAS, scores, strict=True):
            reg.record_evaluation(
                "tiny-b",
                "emotion",
                {"token_accuracy": score, "logit_accuracy": score / 2},
                vector_id=vector.id,
                alpha=alpha,
                layers=[1],
                n=40,
                dataset_oid="d" * 64,
                settings=settings,
            )
    reg.record_evaluation(
        "tiny-b",
        "emotion",
        {"token_accuracy": 0.2, "logit_accuracy": 0.1},
        n=40,
        dataset_oid="d" * 64,
        settings=settings,
    )
    # Maps tiny -> tiny-c on more layer pairs, other R² (another heat-map).
    for source, target in ((0, 0), (1, 2), (3, 3)):
        reg.save_map(
            "tiny",
            "tiny-c",
            source,
            target,
            np.eye(32, dtype=np.float32),
            None,
            solver="ridge",
            r2=0.1 * (source + target),
        )
    return facts | {"native": native.id, "mapped": mapped.id}
