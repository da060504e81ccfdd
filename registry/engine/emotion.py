"""The ConTrans emotion task: concepts from RepE scenarios, six-shot evaluation, held out.

Pairs (ConTrans' "refine" construction): positive = a scenario of the emotion, negative = a
scenario of another emotion (the others in turn, seeded), both in the template ``Scenario:
{text}\\nThe emotion of the above scenario is``. Evaluation: the six-shot prefix of ConTrans'
evaluation followed by a query scenario in the same template; token accuracy = the top-1 next
token is the emotion word, logit accuracy = the emotion word has the highest logit among the six.

ConTrans evaluates on the very scenarios it extracts from; crx splits every emotion's scenarios
in two by the sha256 of their text (order-independent, reproducible): ``train`` builds the
concept's pairs, ``test`` is evaluated.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from crx.registry.errors import InvalidInput
from crx.registry.pairs import ContrastPair

EMOTIONS = ("happiness", "sadness", "anger", "fear", "disgust", "surprise")
TEMPLATE = "Scenario: {text}\nThe emotion of the above scenario is"
HOLDOUT_FRACTION = 0.5


def _data(name: str) -> str:
    return resources.files("crx.registry").joinpath("data", name).read_text(encoding="utf-8")


def six_shot_prefix() -> str:
    return _data("emotion_6shot_prefix.txt")


def check_emotions(emotions: Sequence[str]) -> list[str]:
    """``emotions`` without repeats, or `InvalidInput` naming the unknown ones and the six."""
    unknown = [e for e in emotions if e not in EMOTIONS]
    if unknown:
        raise InvalidInput(
            f"unknown emotion {', '.join(map(repr, unknown))}: the emotions are "
            f"{', '.join(EMOTIONS)} (lower case)"
        )
    return list(dict.fromkeys(emotions))


def load_scenarios(emotion: str, folder: str | Path | None = None) -> list[str]:
    """RepE scenarios of ``emotion`` (shipped copy, or ``folder/emotions_<emotion>.json``)."""
    if emotion not in EMOTIONS:
        raise InvalidInput(f"unknown emotion {emotion!r} (one of {', '.join(EMOTIONS)})")
    if folder is None:
        text = _data(f"emotions/{emotion}.json")
    else:
        text = (Path(folder) / f"emotions_{emotion}.json").read_text(encoding="utf-8")
    scenarios = json.loads(text)
    return list(dict.fromkeys(s.strip() for s in scenarios if s.strip()))


@dataclass(frozen=True)
class Split:
    train: list[str]
    test: list[str]


def split_scenarios(scenarios: Sequence[str], holdout: float = HOLDOUT_FRACTION) -> Split:
    """Order-independent split: scenarios sorted by sha256; the first ``holdout`` share is test."""
    ranked = sorted(scenarios, key=lambda s: hashlib.sha256(s.encode()).hexdigest())
    cut = round(len(ranked) * holdout)
    test = set(ranked[:cut])
    return Split(
        train=[s for s in scenarios if s not in test], test=[s for s in scenarios if s in test]
    )


def build_pairs(emotion: str, train: dict[str, list[str]], *, seed: int = 0) -> list[ContrastPair]:
    """One pair per training scenario of ``emotion``, negatives drawn from the other emotions."""
    rng = random.Random(f"{seed}:{emotion}")
    others = [e for e in EMOTIONS if e != emotion]
    pools = {e: rng.sample(train[e], len(train[e])) for e in others}
    pairs = []
    for i, scenario in enumerate(train[emotion]):
        other = others[i % len(others)]
        pool = pools[other]
        pairs.append(ContrastPair(positive=scenario, negative=pool[(i // len(others)) % len(pool)]))
    return pairs


def training_pairs(emotion: str) -> list[ContrastPair]:
    """The pairs of ``emotion``'s concept: `build_pairs` over the training half of every
    emotion's shipped scenarios (the test half stays for `accuracy`)."""
    check_emotions([emotion])
    train = {e: split_scenarios(load_scenarios(e)).train for e in EMOTIONS}
    return build_pairs(emotion, train)


def label_token_ids(tokenizer: Any) -> list[int]:
    """First token of `` <emotion>`` for each emotion, as the prompts' answers are written."""
    ids = []
    for emotion in EMOTIONS:
        tokens = tokenizer(" " + emotion, add_special_tokens=False)["input_ids"]
        if not tokens:
            raise InvalidInput(f"the tokenizer gives no token for {emotion!r}")
        ids.append(tokens[0])
    if len(set(ids)) != len(ids):
        raise InvalidInput("two emotions share their first token in this tokenizer")
    return ids


def eval_prompts(scenarios: Sequence[str]) -> list[str]:
    prefix = six_shot_prefix()
    return [prefix + TEMPLATE.replace("{text}", s) for s in scenarios]


def accuracy(
    loaded: Any,
    emotion: str,
    scenarios: Sequence[str],
    *,
    batch_size: int = 16,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, float]:
    """Token and logit accuracy of answering ``emotion`` on ``scenarios`` (hooks as installed)."""
    from crx.registry.engine.prompts import read_next_tokens

    ids = label_token_ids(loaded.tokenizer)
    target = EMOTIONS.index(emotion)
    readout = read_next_tokens(
        loaded, eval_prompts(scenarios), ids, batch_size=batch_size, progress=progress
    )
    token_hits = (readout.top1 == ids[target]).float().mean().item()
    logit_hits = (readout.candidate_logits.argmax(dim=-1) == target).float().mean().item()
    return {"token_accuracy": token_hits, "logit_accuracy": logit_hits}
