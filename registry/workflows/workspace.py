"""`Workspace`: a `Catalog` and the models loaded on it, what every workflow step works with.

A model is loaded once per workspace (the facade keeps one for its lifetime) and checked against
its registered shape, so a folder changed after registration is an error, not a wrong vector.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from crx.registry.catalog.service import Catalog
from crx.registry.errors import InvalidInput
from crx.registry.progress import StagedProgress, staged
from crx.schemas.records import ModelRecord

if TYPE_CHECKING:
    from crx.registry.engine.loading import LoadedModel


class Workspace:
    """The catalogue a workflow reads and records into, and its cache of loaded models."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self._loaded: dict[str, LoadedModel] = {}

    def load(
        self,
        model: str | ModelRecord,
        *,
        device: str | None = None,
        progress: StagedProgress | None = None,
    ) -> LoadedModel:
        """A registered model loaded for hooks (cached for the rest of this workspace).

        A load reports as the stage ``load NAME``; a model already loaded reports nothing.
        """
        from crx.registry.engine.loading import load_model

        record = model if isinstance(model, ModelRecord) else self.catalog.get_model(model)
        if record.name not in self._loaded:
            loaded = load_model(
                record.path,
                name=record.name,
                gguf_file=record.gguf_file,
                gguf_sha256=record.weights_sha256,
                revision=record.revision,
                device=device,
                progress=staged(progress, f"load {record.name}"),
            )
            if loaded.n_layers != record.n_layers or loaded.d_model != record.d_model:
                raise InvalidInput(
                    f"model {record.name} loads with {loaded.n_layers} layers x "
                    f"{loaded.d_model}, but is registered as {record.n_layers} x "
                    f"{record.d_model}"
                )
            self._loaded[record.name] = loaded
        return self._loaded[record.name]

    def is_loaded(self, model: str | ModelRecord) -> bool:
        """Whether this workspace holds the model loaded."""
        return (model.name if isinstance(model, ModelRecord) else model) in self._loaded

    def release(self, model: str | ModelRecord) -> None:
        """Forget a loaded model, so its memory is freed once nothing else holds it."""
        self._loaded.pop(model.name if isinstance(model, ModelRecord) else model, None)
