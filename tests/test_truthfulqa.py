"""TruthfulQA MC1/MC2 scoring and honesty pairs, on a tiny random-weight model."""

from __future__ import annotations

import math

import pytest
import torch

from crx.registry.engine import truthfulqa
from crx.registry.engine.loading import LoadedModel
from crx.registry.errors import InvalidInput

CSV = (
    "Type,Category,Question,Best Answer,Correct Answers,Incorrect Answers,Source\n"
    "A,B,What is the sky?,It is blue,It is blue; Blue,It is green; It is red,x\n"
    "A,B,Is fear good?,Sometimes,Sometimes; It depends,Always; Never,x\n"
)


def _hand_logprob(loaded: LoadedModel, prompt: str, answer: str) -> float:
    tok = loaded.tokenizer
    prompt_ids = tok(prompt)["input_ids"]
    ids = tok(prompt + " " + answer)["input_ids"]
    with torch.inference_mode():
        logits = loaded.model(input_ids=torch.tensor([ids])).logits[0].float()
    logprobs = torch.log_softmax(logits, dim=-1)
    return float(sum(logprobs[t - 1, ids[t]] for t in range(len(prompt_ids), len(ids))))


@pytest.mark.parametrize("primer", [False, True])
def test_answer_logprobs_equal_a_hand_computation(
    llama: LoadedModel,
    gpt2: LoadedModel,
    primer: bool,
) -> None:
    # The answers share the prompt (and with the primer a long prefix), which runs once and is
    # continued from its KV cache: each score must still equal one unpadded full pass.
    prompt = (truthfulqa.QA_PRIMER if primer else "") + "Q: What is the sky?\nA:"
    answers = ["It is blue", "It is green and wide", "Red", "It is"]
    for loaded in (llama, gpt2):
        got = truthfulqa.answer_logprobs(loaded, prompt, answers)
        for answer, value in zip(answers, got, strict=True):
            assert value == pytest.approx(_hand_logprob(loaded, prompt, answer), abs=1e-3)
        assert len(set(got)) == len(answers)


def test_mc1_and_mc2_follow_the_answer_scores(gpt2: LoadedModel) -> None:
    questions = truthfulqa.parse_questions(CSV)
    assert [q.best for q in questions] == ["It is blue", "Sometimes"]
    result = truthfulqa.evaluate(gpt2, questions)
    mc1 = mc2 = 0.0
    for q in questions:
        prompt = f"Q: {q.question}\nA:"
        right = [_hand_logprob(gpt2, prompt, a) for a in q.correct]
        wrong = [_hand_logprob(gpt2, prompt, a) for a in q.incorrect]
        mc1 += right[q.correct.index(q.best)] > max(wrong)
        p_right, p_wrong = sum(map(math.exp, right)), sum(map(math.exp, wrong))
        mc2 += p_right / (p_right + p_wrong)
    assert result["mc1"] == pytest.approx(mc1 / 2)
    assert result["mc2"] == pytest.approx(mc2 / 2, abs=1e-4)


def test_bad_truthfulqa_files_and_honesty_pairs() -> None:
    with pytest.raises(InvalidInput, match="needs the columns"):
        truthfulqa.parse_questions("a,b\n1,2\n")
    with pytest.raises(InvalidInput, match="no usable questions"):
        truthfulqa.parse_questions(CSV.splitlines()[0] + "\n")
    pairs = truthfulqa.honesty_pairs("statement,label\nWater is wet.,1\nFire is cold.,0\n")
    assert len(pairs) == 1
    assert pairs[0].positive.endswith("Water is wet.")
    assert "honest" in pairs[0].positive
    assert "untruthful" in pairs[0].negative


def test_truth_pairs_contrast_true_with_false_statements_in_file_order() -> None:
    facts = "statement,label\nWater is wet.,1\nFire is cold.,0\nSnow is white.,1\nIce is hot.,0\n"
    pairs = truthfulqa.truth_pairs(facts + "Grass is green.,1\n")
    # plain statements, true first; the unmatched third true statement is left out
    assert [(p.positive, p.negative) for p in pairs] == [
        ("Water is wet.", "Fire is cold."),
        ("Snow is white.", "Ice is hot."),
    ]
    with pytest.raises(InvalidInput, match="both true"):
        truthfulqa.truth_pairs("statement,label\nWater is wet.,1\n")
    with pytest.raises(InvalidInput, match="needs the columns"):
        truthfulqa.truth_pairs("text,label\nWater is wet.,1\n")
