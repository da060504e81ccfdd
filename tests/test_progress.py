"""Progress of long work: what the library reports, and what the CLI draws of it.

The library calls ``(stage, done, total)`` callbacks (`crx.registry.progress`) and never prints;
`crx.cli.progress.Reporter` draws tqdm bars on a terminal (a fake one here: a stream whose
``isatty()`` is true), a start and a ``done (x s)`` line per stage elsewhere, and nothing with
``--quiet``. The work is real: the tiny models of `tests.tiny_models` on a real registry.
"""

from __future__ import annotations

import io
import re
from collections import defaultdict
from pathlib import Path

from click.testing import CliRunner

from crx import Registry
from crx.cli.main import cli
from crx.cli.progress import Reporter, label
from crx.registry.progress import unit
from tests.tiny_models import PAIRS

TEMPLATE = "Scenario: {text}\nThe feeling is"
# tqdm's "<elapsed><<remaining>" with a count before it: "12/40 [00:01<00:02"
ETA = re.compile(r"(\d+)/(\d+) \[\d\d:\d\d<\d\d:\d\d")


class FakeTerminal(io.StringIO):
    """What a terminal's stderr looks like to the reporter: a text stream that is a TTY."""

    encoding = "utf-8"  # type: ignore[assignment]

    def isatty(self) -> bool:
        return True


class Recorder:
    """A `StagedProgress` that keeps every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int | None, int | None]] = []

    def __call__(self, stage: str, done: int | None, total: int | None) -> None:
        self.calls.append((stage, done, total))

    def by_stage(self) -> dict[str, list[tuple[int | None, int | None]]]:
        out: dict[str, list[tuple[int | None, int | None]]] = defaultdict(list)
        for stage, done, total in self.calls:
            out[stage].append((done, total))
        return dict(out)


def _setup(reg: Registry, model_dirs: dict[str, Path]) -> None:
    reg.register_model("src", str(model_dirs["llama"]))
    reg.register_model("tgt", str(model_dirs["gpt2"]))
    reg.register_concept("happiness", PAIRS, template=TEMPLATE)


def _increasing_to_the_end(calls: list[tuple[int | None, int | None]]) -> None:
    dones = [d for d, _ in calls]
    assert all(d is not None for d in dones)
    assert dones == sorted(dones), dones  # type: ignore[type-var]
    assert calls[-1][0] == calls[-1][1], calls  # the stage ends with done == total
    assert len({t for _, t in calls}) == 1, calls  # one total for the whole stage


# -- the library's calls ------------------------------------------------------------------


def test_fit_extract_evaluate_report_increasing_counts(
    reg: Registry, model_dirs: dict[str, Path], corpus_file: Path
) -> None:
    _setup(reg, model_dirs)
    seen = Recorder()
    reg.fit("src", "tgt", corpus=corpus_file, batch_size=8, progress=seen)
    stages = seen.by_stage()
    assert list(stages) == [
        "load src (cpu, float32)",  # the stage says where and as what the model loads
        "states src",
        "load tgt (cpu, float32)",
        "states tgt",
        "fit src -> tgt (ridge, auto)",
    ]
    for calls in stages.values():
        _increasing_to_the_end(calls)
    n_lines = stages["states src"][-1][1]
    assert n_lines is not None
    assert n_lines >= 20
    assert len(stages["states src"]) == -(-n_lines // 8)  # after every batch of 8 lines
    assert stages["fit src -> tgt (ridge, auto)"][-1] == (4 + 3, 4 + 3)  # 4 sources, 3 maps
    assert stages["load src (cpu, float32)"] == [(0, 3), (1, 3), (2, 3), (3, 3)]

    # A second fit (another solver) reuses the states and reports only its own stage.
    again = Recorder()
    reg.fit("src", "tgt", corpus=corpus_file, pairs="1:2", solver="lstsq-svd", progress=again)
    assert list(again.by_stage()) == ["fit src -> tgt (lstsq-svd, explicit)"]

    seen = Recorder()
    reg.extract("happiness", "src", batch_size=3, progress=seen)
    stages = seen.by_stage()
    # the fit released the models it loaded (bounded memory), so src is loaded again
    assert list(stages) == ["load src (cpu, float32)", "extract happiness@1 on src"]
    calls = stages["extract happiness@1 on src"]
    _increasing_to_the_end(calls)
    assert calls[-1] == (2 * len(PAIRS), 2 * len(PAIRS))  # both sides of every pair
    assert len(calls) >= 4  # a call per batch of 3 texts, not one at the end

    reg.extract("happiness", "tgt")
    seen = Recorder()
    reg.evaluate(
        "happiness",
        "tgt",
        alphas=[0.0, 0.1, 0.2],
        normalize=True,
        with_base=True,
        progress=seen,
    )
    stages = seen.by_stage()
    vector = reg.list_vectors(model="tgt", limit=None).items[-1].id
    steered = f"evaluate happiness@1 on tgt: vector {vector}"
    assert list(stages) == ["evaluate happiness@1 on tgt: base", "norm tgt@2", steered]
    for calls in stages.values():
        _increasing_to_the_end(calls)
    n = stages["evaluate happiness@1 on tgt: base"][-1][1]
    assert n is not None
    assert n > 1
    # One stage over every α: the count goes on from one α to the next, it does not restart.
    assert stages[steered][-1] == (3 * n, 3 * n)
    assert any(n < d < 2 * n for d, _ in stages[steered] if d is not None)


def test_a_transplant_counts_its_maps(
    reg: Registry, model_dirs: dict[str, Path], corpus_file: Path
) -> None:
    _setup(reg, model_dirs)
    reg.fit("src", "tgt", corpus=corpus_file)
    reg.extract("happiness", "src")
    seen = Recorder()
    reg.transplant("happiness", "src", "tgt", progress=seen)
    assert seen.by_stage() == {
        "transplant happiness@1 src -> tgt (ridge)": [(0, 3), (1, 3), (2, 3), (3, 3)]
    }


# -- what the CLI draws -------------------------------------------------------------------


def test_a_terminal_shows_tqdm_bars_with_counts_and_the_time_left() -> None:
    term = FakeTerminal()
    report = Reporter(term, min_interval=0)
    for done in range(0, 41, 8):
        report("states gemma3-270m", done, 40)
    for done in range(0, 3 * 2**20 + 1, 2**20):
        report("assemble gemma3-270m", done, 3 * 2**20)
    report.finish()
    text = term.getvalue()
    assert "corpus states of gemma3-270m" in text
    assert "\r" in text  # redrawn in place
    counts = [(int(a), int(b)) for a, b in ETA.findall(text.split("assembling")[0])]
    assert (8, 40) in counts
    assert (40, 40) in counts
    assert "line/s" in text  # what is counted is named, and never as bytes
    states = text.split("assembling")[0]
    assert "MiB" not in states
    assert "MB" not in states
    assert "assembling the GGUF of gemma3-270m" in text
    assert "2.00MiB/3.00MiB [" in text  # bytes in binary prefixes, with the time left
    assert "iB/s]" in text  # the rate too
    report("verify gemma3-270m", 0, 1)  # the hash was taken while assembling: one step
    report("verify gemma3-270m", 1, 1)
    assert "1/1 [" in term.getvalue().split("checking the sha256 of gemma3-270m")[-1]


def test_elsewhere_one_line_per_stage_start_and_end() -> None:
    log = io.StringIO()
    report = Reporter(log)
    assert not report.live
    for done in range(0, 41, 8):
        report("states src", done, 40)
    report("fit src -> tgt (ridge, auto)", 0, 7)
    report("fit src -> tgt (ridge, auto)", 7, 7)
    report("fit src -> tgt (ridge, auto)", 0, 1)  # the same stage again: a second fit
    report("fit src -> tgt (ridge, auto)", 1, 1)
    report("apply step", None, None)  # a stage with no count ends when the next begins
    report.finish()
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue()
    assert [re.sub(r"\(\d+\.\d s\)", "(T)", line) for line in lines] == [
        "corpus states of src ...",
        "corpus states of src ... done (T)",
        "fit src -> tgt (ridge, auto) ...",
        "fit src -> tgt (ridge, auto) ... done (T)",
        "fit src -> tgt (ridge, auto) ...",
        "fit src -> tgt (ridge, auto) ... done (T)",
        "apply step ...",
        "apply step ... done (T)",
    ]


def test_quiet_draws_nothing() -> None:
    term = FakeTerminal()
    report = Reporter(term, quiet=True)
    report("states src", 0, 4)
    report("states src", 4, 4)
    report.note("an estimate")
    report.finish()
    assert term.getvalue() == ""


def test_labels_and_units() -> None:
    assert (
        label("download smollm2-135m-instruct") == "downloading the wheels of smollm2-135m-instruct"
    )
    assert (
        label("convert tiny-test") == "converting tiny-test to float32 safetensors (transformers)"
    )
    assert label("convert") == "converting to float32 safetensors (transformers)"
    assert label("load gemma3-270m") == "loading gemma3-270m"
    assert label("evaluate joy on tgt: base") == "evaluate joy on tgt: base"
    assert [unit(s) for s in ("states x", "assemble x", "download x", "evaluate x", "what")] == [
        "line",
        "B",
        "package",
        "item",
        "it",
    ]


def test_the_tiny_models_draw_real_bars_on_a_terminal(
    reg: Registry, model_dirs: dict[str, Path], corpus_file: Path
) -> None:
    _setup(reg, model_dirs)
    term = FakeTerminal()
    reg.fit("src", "tgt", corpus=corpus_file, batch_size=4, progress=Reporter(term, min_interval=0))
    text = term.getvalue()
    for name in ("loading src", "corpus states of src", "corpus states of tgt", "fit src -> tgt"):
        assert name in text, text
    assert ETA.search(text.split("corpus states of src", 1)[1]), text
    assert "MiB" not in text


# -- the commands -------------------------------------------------------------------------


def _cli(reg: Registry, *args: str) -> tuple[str, str]:
    argv = ["--db", reg.location.database_url, "--store", reg.location.store_url, *args]
    result = CliRunner().invoke(cli, argv)
    assert result.exit_code == 0, result.output
    return result.stdout, result.stderr


def test_commands_report_each_stage_on_stderr(
    registry: Registry, model_dirs: dict[str, Path], corpus_file: Path
) -> None:
    reg = registry  # SQLite and PostgreSQL
    _setup(reg, model_dirs)
    stderr = ""
    out, err = _cli(reg, "fit", "--source", "src", "--target", "tgt", "--corpus", str(corpus_file))
    assert "->" in out
    stderr += err
    out, err = _cli(reg, "extract", "happiness", "--model", "tgt")
    assert "extracted" in out
    stderr += err
    out, err = _cli(reg, "evaluate", "happiness", "--model", "tgt", "--alpha", "0,0.1",
                    "--normalize")  # fmt: skip
    assert "token_accuracy" in out
    stderr += err
    lines = stderr.splitlines()
    assert "\r" not in stderr
    assert "%|" not in stderr
    assert all(line.endswith(" ...") or re.search(r" \.\.\. done \(\d+\.\d s\)$", line)
               for line in lines), lines  # fmt: skip
    done = [line.split(" ... ")[0] for line in lines if " ... done (" in line]
    assert done[:5] == [
        "loading src (cpu, float32)",
        "corpus states of src",
        "loading tgt (cpu, float32)",
        "corpus states of tgt",
        "fit src -> tgt (ridge, auto)",
    ]
    assert "extract happiness@1 on tgt" in done
    assert "residual norm of tgt@2" in done
    assert any(d.startswith("evaluate happiness@1 on tgt: vector ") for d in done)
    assert len(done) == len(lines) / 2  # every stage that starts, ends


def test_quiet_commands_print_nothing_on_stderr(
    reg: Registry, model_dirs: dict[str, Path], corpus_file: Path
) -> None:
    _setup(reg, model_dirs)
    out, err = _cli(reg, "fit", "--source", "src", "--target", "tgt", "--corpus",
                    str(corpus_file), "--quiet")  # fmt: skip
    assert "->" in out
    assert err == ""
    out, err = _cli(reg, "extract", "happiness", "--model", "tgt", "-q")
    assert "extracted" in out
    assert err == ""
    out, err = _cli(reg, "evaluate", "happiness", "--model", "tgt", "--alpha", "0.1",
                    "--normalize", "--quiet")  # fmt: skip
    assert "token_accuracy" in out
    assert err == ""


def test_the_demo_says_what_it_will_take_before_it_starts(reg: Registry) -> None:
    from crx.cli.cmd_demo import _estimate_line
    from crx.registry.workflows.demo import SOURCE, TARGET, Estimate

    estimate = reg.demo_estimate()  # a fresh $CRX_HOME: nothing pulled, nothing cached
    assert (estimate.seconds, estimate.disk_bytes) == (1051, 2_200_000_000)
    assert estimate.pulled == {SOURCE: False, TARGET: False}
    assert estimate.states_cached == {SOURCE: False, TARGET: False}
    assert estimate.bank_extracted == {SOURCE: False, TARGET: False}
    assert not estimate.reused
    line = _estimate_line(estimate, all_six=True)
    assert line.startswith("crx demo: ~18 min from scratch on a 2-core CPU (1051 s measured")
    assert "~60 min on a loaded machine" in line
    assert "~2.2 GB under $CRX_HOME" in line
    assert line.endswith(
        f"to do here: pull {SOURCE}, pull {TARGET}, corpus states of {SOURCE}, "
        f"corpus states of {TARGET}, concept bank on {SOURCE}, concept bank on {TARGET}"
    )
    done = Estimate(717, 3060, 2_100_000_000, 1_600_000_000, {SOURCE: True}, {SOURCE: True})
    assert done.reused
    assert not Estimate(717, 3060, 1, 1, {SOURCE: True}, {SOURCE: True}, {SOURCE: False}).reused
    assert "are here" in _estimate_line(done, all_six=False)
