"""Running a ``console`` block of the README as written, and comparing what it printed.

The README's console blocks are transcripts: ``$ COMMAND`` lines, each followed by the output
it shows. `console_steps` reads the block under a heading; `Console` runs it: ``$ export
NAME=VALUE`` sets a variable (in the environment too, as a shell does), ``$ cat > FILE <<'EOF'``
writes a file, ``$ crx ...`` runs the CLI in this process (``FEED | crx ...`` gives it FEED's
last word, a variable's value, on stdin; ``crx ... | head -N`` keeps the first N lines), and
any other command goes to the handler the test gives for its first word (``psql``, ``pip``,
...). Each command's output, as `Console.show` turns it into the README's lines, must match
the lines shown under it after `mask` (times and oids); a line ``…`` stands for any lines.

The walkthrough (tests/test_walkthrough.py) and the two-minute tour (tests/test_readme_tour.py)
run their blocks with it. ``record`` names an environment variable: set to a file, the run
writes the transcript it produced there (to refresh the README after a change of output).
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from click.testing import CliRunner

from crx.cli.main import cli

README = Path(__file__).resolve().parent.parent / "README.md"

#: A handler for a command that is not ``crx``: argv (variables expanded) → (output, exit code)
Handler = Callable[[list[str]], tuple[str, int]]


@dataclass
class Step:
    command: str
    expected: list[str] = field(default_factory=list)
    heredoc: list[str] | None = None


def console_steps(text: str, heading: str) -> list[Step]:
    """The commands of the first console block under ``heading``, each with the output shown."""
    start = text.index(heading)
    block = text[text.index("```console\n", start) + len("```console\n") :]
    block = block[: block.index("\n```")]
    steps: list[Step] = []
    lines = iter(block.splitlines())
    for line in lines:
        if line.startswith("$ "):
            step = Step(line[2:])
            if "<<'EOF'" in line:
                step.heredoc = []
                for body in lines:
                    if body == "EOF":
                        break
                    step.heredoc.append(body)
            steps.append(step)
        elif steps:
            steps[-1].expected.append(line)
    return steps


def mask(line: str) -> str:
    """What changes from run to run, masked: times and oids."""
    line = re.sub(
        r"\d{4}-\d\d-\d\d[ T]\d\d:\d\d(:\d\d(\.\d+)?)?( UTC|[+-]\d\d:\d\d)?", "<time>", line
    )
    return re.sub(r"\b[0-9a-f]{12,64}\b", "<oid>", line)


def matches(expected: list[str], actual: list[str]) -> bool:
    """``expected`` equals ``actual`` where a ``…`` line matches any run of lines."""
    if not expected:
        return not actual
    if expected[0] == "…":
        return any(matches(expected[1:], actual[i:]) for i in range(len(actual) + 1))
    return bool(actual) and expected[0] == actual[0] and matches(expected[1:], actual[1:])


@dataclass
class Console:
    """Runs console steps in ``work`` and collects the transcript and every mismatch.

    ``variables`` are the test's bindings of the README's ``$NAMES`` (an ``export`` of one of
    them keeps the test's value); ``rewrite`` turns the README's names (a server) into this
    run's after expansion; ``show`` turns a command's output into the lines the README shows
    (this run's folders by the README's names); ``setenv`` exports (``monkeypatch.setenv``).
    """

    work: Path
    show: Callable[[str], list[str]]
    setenv: Callable[[str, str], None]
    variables: dict[str, str] = field(default_factory=dict)
    handlers: dict[str, Handler] = field(default_factory=dict)
    rewrite: Callable[[str], str] = lambda text: text
    env: dict[str, str] = field(default_factory=dict)
    transcript: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def expand(self, text: str) -> str:
        known = {**self.variables, **self.env}
        return self.rewrite(re.sub(r"\$\{?(\w+)\}?", lambda m: known.get(m[1], m[0]), text))

    def run(self, steps: list[Step], record: str) -> None:
        """Run every step; then, if the environment variable ``record`` names a file, write
        the transcript there."""
        for step in steps:
            output, code = self._execute(step)
            shown = self.show(output)
            self.transcript += [f"$ {step.command}", *(step.heredoc or [])]
            self.transcript += ["EOF"] if step.heredoc is not None else []
            self.transcript += shown
            if not matches([mask(x) for x in step.expected], [mask(x) for x in shown]):
                self.failures.append(
                    f"$ {step.command}\n  exit {code}\n  expected:\n    "
                    + "\n    ".join(step.expected)
                    + "\n  got:\n    "
                    + "\n    ".join(shown)
                )
        target = os.environ.get(record)
        if target:
            Path(target).write_text("\n".join(self.transcript) + "\n")

    def _execute(self, step: Step) -> tuple[str, int]:
        command = step.command
        if command.startswith("export "):
            name, _, value = command[len("export ") :].partition("=")
            # The README's values name its servers and files; this test's bindings win.
            self.env[name] = self.variables.get(name) or self.expand(value.strip('"'))
            self.setenv(name, self.env[name])
            return "", 0
        if step.heredoc is not None:
            (self.work / shlex.split(command)[2]).write_text("\n".join(step.heredoc) + "\n")
            return "", 0
        stdin, keep = None, None
        if " | " in command and not command.startswith("crx "):
            feed, command = command.split(" | ", 1)
            stdin = self.expand(shlex.split(feed)[-1]) + "\n"
        head = re.fullmatch(r"(.*) \| head -(\d+)", command)
        if head:
            command, keep = head[1], int(head[2])
        argv = [self.expand(a) for a in shlex.split(command)]
        if argv[0] != "crx":
            if argv[0] not in self.handlers:
                return f"(the test has no handler for {argv[0]!r})", 127
            return self.handlers[argv[0]](argv)
        result = CliRunner().invoke(
            cli, argv[1:], input=stdin, prog_name="crx", catch_exceptions=False
        )
        # What a person reads: the output, or on failure the error (progress lines, with
        # their timings, go to stderr too and are left out).
        code = result.exit_code
        output = result.stdout if code == 0 else result.stdout + result.stderr
        if keep is not None:
            output = "".join(output.splitlines(keepends=True)[:keep])
        return output, code
