"""Pulling: a real model from the package registry, downloaded, checked, converted, registered.

The download and conversion live in `crx.registry.models.pull`; this step adds the
registration and what ``crx models pull|available`` report.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from crx.registry.catalog.service import Catalog
from crx.registry.progress import StagedProgress, suffixed
from crx.schemas.records import ModelRecord, Registered


@dataclass(frozen=True)
class PullResult:
    """A pulled and registered model, and whether this call downloaded it."""

    registered: Registered[ModelRecord]
    downloaded: bool
    seconds: float
    gguf_sha256: str
    source: str


def available() -> list[dict[str, Any]]:
    """Every model crx can pull, with its facts and whether it is pulled on this machine."""
    from crx.registry.models.catalogue import CATALOGUE, model_dir, pulled

    return [
        {
            "name": spec.name,
            "title": spec.title,
            "family": spec.family,
            "role": spec.role,
            "n_layers": spec.n_layers,
            "d_model": spec.d_model,
            "gguf_name": spec.gguf_name,
            "gguf_size": spec.size,
            "gguf_sha256": spec.sha256,
            "source": spec.source,
            "packages": spec.requirements,
            "licence": spec.licence,
            "pulled": pulled(spec) is not None,
            "path": str(model_dir(spec.name)),
        }
        for spec in CATALOGUE.values()
    ]


def pull_model(
    catalog: Catalog, name: str, *, progress: StagedProgress | None = None, keep_gguf: bool = False
) -> PullResult:
    """Pull a catalogued model (once: a pulled folder is reused) and register it.

    Reports `crx.registry.models.pull.pull`'s stages with the model's name after each
    (``download smollm2-135m-instruct``), so a run that pulls two models tells them apart.
    """
    from crx.registry.models.pull import get_spec, pull, pulled

    spec = get_spec(name)
    already = pulled(spec) is not None
    started = time.monotonic()
    folder = pull(spec, progress=suffixed(progress, spec.name), keep_gguf=keep_gguf)
    registered = catalog.register_model(
        spec.name,
        str(folder),
        family=spec.family,
        role=spec.role,
        tags={"source": spec.source, "gguf_sha256": spec.sha256},
    )
    return PullResult(
        registered=registered,
        downloaded=not already,
        seconds=time.monotonic() - started,
        gguf_sha256=spec.sha256,
        source=spec.source,
    )
