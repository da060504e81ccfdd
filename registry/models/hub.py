"""Hub models pinned: an id resolved to one commit, and the small files that identify it.

Registering ``ORG/NAME`` fetches only ``config.json`` and the tokenizer files (never the
weights) through ``huggingface_hub.snapshot_download``, which resolves a branch or tag to its
commit: online from the hub, offline (``HF_HUB_OFFLINE=1``) from the local cache's
``models--ORG--NAME/refs/<revision>`` and ``snapshots/<commit>/``. The commit and the files'
hashes are recorded (`crx.registry.models.facts`); loading asks for that commit and checks
the hashes again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from crx.registry.errors import InvalidInput


@dataclass(frozen=True)
class HubSnapshot:
    hub_id: str
    commit: str  # the 40-hex commit the revision resolved to
    folder: Path  # the cache's snapshots/<commit>/ holding the identity files


def offline() -> bool:
    """Whether huggingface_hub runs offline (``HF_HUB_OFFLINE``, read when it is imported)."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def resolve(hub_id: str, revision: str | None, files: Sequence[str]) -> HubSnapshot:
    """``hub_id`` at ``revision`` (default ``main``) as a commit, with ``files`` (those of
    them the repository has) fetched into the cache's snapshot folder."""
    from huggingface_hub import snapshot_download

    wanted = revision or "main"
    try:
        folder = Path(snapshot_download(hub_id, revision=wanted, allow_patterns=list(files)))
    except Exception as exc:
        if offline():
            raise InvalidInput(
                f"{hub_id!r} at {wanted} is not in the local Hugging Face cache, and "
                "HF_HUB_OFFLINE is set: unset HF_HUB_OFFLINE (or set it to 0) to fetch it, or "
                f"fetch it once where the hub is reachable (`hf download {hub_id}`)"
            ) from None
        raise InvalidInput(
            f"cannot resolve {hub_id!r} at {wanted} on the hub ({_first_line(exc)}); with "
            "the model in the local cache, HF_HUB_OFFLINE=1 reads it from there"
        ) from None
    return HubSnapshot(hub_id=hub_id, commit=folder.name, folder=folder)
