"""`Workspace`: a `Catalog` and the models loaded on it, what every workflow step works with.

A model is loaded once per workspace (the facade keeps one for its lifetime) and checked against
its registered shape, so a folder changed after registration is an error, not a wrong vector.
A hub model loads at its registered commit, its config and tokenizer hashes checked first.
Every load uses the workspace's one `LoadSettings` (device, dtype, memory budget, offload
folder): set them once with `use`, and every workflow step loads the same way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from crx.registry.catalog.service import Catalog
from crx.registry.errors import InvalidInput
from crx.registry.progress import StagedProgress, staged
from crx.schemas.records import ModelRecord

if TYPE_CHECKING:
    from crx.registry.engine.loading import LoadedModel, LoadSettings


class Workspace:
    """The catalogue a workflow reads and records into, and its cache of loaded models."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self.settings: LoadSettings | None = None  # None: the defaults
        self._loaded: dict[str, LoadedModel] = {}

    def use(self, settings: LoadSettings) -> None:
        """Load with ``settings`` from now on (refused here if the device is not there);
        models loaded otherwise are dropped, so none is used with the wrong settings."""
        from crx.registry.engine.loading import check_device

        check_device(settings)
        if settings != self.settings:
            self._loaded.clear()
        self.settings = settings

    def load(
        self, model: str | ModelRecord, *, progress: StagedProgress | None = None
    ) -> LoadedModel:
        """A registered model loaded for hooks (cached for the rest of this workspace).

        A load reports as the stage ``load NAME (WHERE, DTYPE)``, ``load gpt2 (cpu, float32)``;
        a model already loaded reports nothing.
        """
        from crx.registry.engine.loading import LoadSettings, load_model, plan_load
        from crx.registry.models.facts import check_hub_pins, is_hub_id

        record = model if isinstance(model, ModelRecord) else self.catalog.get_model(model)
        if record.name not in self._loaded:
            # Resolved before the stage starts, so its name says where the model goes.
            plan = plan_load(self.settings or LoadSettings())
            if record.revision and record.gguf_file is None and is_hub_id(record.path):
                check_hub_pins(
                    record.path, record.revision, record.config_sha256, record.tokenizer_sha256
                )
            loaded = load_model(
                record.path,
                name=record.name,
                gguf_file=record.gguf_file,
                gguf_sha256=record.weights_sha256,
                revision=record.revision,
                plan=plan,
                progress=staged(progress, f"load {record.name} ({plan.label})"),
            )
            if loaded.n_layers != record.n_layers or loaded.d_model != record.d_model:
                raise InvalidInput(
                    f"model {record.name} loads with {loaded.n_layers} layers x "
                    f"{loaded.d_model}, but is registered as {record.n_layers} x "
                    f"{record.d_model}"
                )
            self._loaded[record.name] = loaded
        return self._loaded[record.name]

    def dtype(self) -> str:
        """The dtype models load in under this workspace's settings (``float32`` on a CPU by
        default), without loading one."""
        from crx.registry.engine.loading import LoadSettings, resolved_dtype

        return resolved_dtype(self.settings or LoadSettings())

    def is_loaded(self, model: str | ModelRecord) -> bool:
        """Whether this workspace holds the model loaded."""
        return (model.name if isinstance(model, ModelRecord) else model) in self._loaded

    def release(self, model: str | ModelRecord) -> None:
        """Forget a loaded model, so its memory is freed once nothing else holds it."""
        self._loaded.pop(model.name if isinstance(model, ModelRecord) else model, None)
