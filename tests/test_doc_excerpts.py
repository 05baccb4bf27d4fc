"""Every output excerpt in the docs comes from a run: a fenced block right after a comment naming the command that
produced it, `<!-- output of: svcdoctor explain svc-clusterip --demo -->`, is compared with what that command prints
now (into a pipe: whole lines, no colour).

In an excerpt, a line that is only `…` (indented or not) stands for lines left out, and a line ending in `…` for
the start of a longer line; every other line must be a line of the output, in order, with no line skipped between
two of them. An excerpt that does not start with a `…` line starts where the output starts, and one that does not
end with one ends where it ends. `SVCDOCTOR_UPDATE_GOLDEN=1` rewrites the blocks that quote an output whole (no
`…` anywhere)."""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

from cli_run import run_cli

ROOT = Path(__file__).resolve().parent.parent
TAG = re.compile(r"^<!-- output of: (svcdoctor .+?) -->$")
GAP = "…"


@dataclass
class Excerpt:
    path: Path
    command: str
    start: int  # index of the first line inside the fence
    lines: list[str]
    ordinal: int  # the how-manieth tagged block of its file

    @property
    def whole(self) -> bool:
        return not any(line.rstrip().endswith(GAP) for line in self.lines)


def excerpts(files: list[Path] | None = None) -> list[Excerpt]:
    found = []
    for md in files or sorted((ROOT / "docs").rglob("*.md")) + [ROOT / "README.md"]:
        lines = md.read_text().splitlines()
        ordinal = 0
        for i, line in enumerate(lines):
            m = TAG.match(line.strip())
            if not m:
                continue
            assert lines[i + 1].startswith("```"), f"{md}:{i + 1}: the tag must be right above a fenced block"
            end = next(j for j in range(i + 2, len(lines)) if lines[j].startswith("```"))
            found.append(Excerpt(md, m.group(1), i + 2, lines[i + 2:end], ordinal))
            ordinal += 1
    return found


EXCERPTS = excerpts()


def output_of(command: str) -> list[str]:
    os.environ["NO_COLOR"] = "1"
    result = run_cli(*shlex.split(command)[1:])
    assert "Traceback" not in result.stderr
    lines = [line.rstrip() for line in result.stdout.splitlines()]
    while lines and not lines[-1]:  # the blank line a view ends with is not quoted
        lines.pop()
    return lines


def _matches(want: str | None, got: str | None) -> bool:
    if want is None or got is None:  # the end-of-output marker matches only itself
        return want is got
    want = want.rstrip()
    return got.startswith(want[:-1].rstrip()) if want.endswith(GAP) else got == want


def quoted_in(excerpt: list[str], output: list[str]) -> str | None:
    """None when `excerpt` is quoted from `output` (runs of lines in order, `…` lines between runs, anchored at the
    output's start and end unless a `…` line leaves them out); else the first line that is not."""
    runs: list[list[str]] = [[]]
    for line in excerpt:
        if line.strip() == GAP:
            runs.append([])
        else:
            runs[-1].append(line)
    if not runs[0]:
        output = [GAP] + output  # a leading gap: the first run may start anywhere
    if runs[-1]:
        output = output + [None]  # no trailing gap: the last run must end at the output's last line
        runs[-1] = runs[-1] + [None]
    at = 0
    for i, run in enumerate(filter(None, runs)):
        starts = [at] if i == 0 and output[:1] != [GAP] else range(at, len(output) - len(run) + 1)
        for start in starts:
            if all(_matches(w, g) for w, g in zip(run, output[start:start + len(run)])) \
                    and start + len(run) <= len(output):
                at = start + len(run)
                break
        else:
            return next((w for w in run if w is not None and not any(_matches(w, g) for g in output[at:])),
                        run[0] if run[0] is not None else "(the output goes on after the excerpt's last line)")
    return None


def test_the_docs_have_excerpts_to_check():
    where = {e.path.relative_to(ROOT).as_posix() for e in EXCERPTS}
    assert "docs/tutorial.md" in where and sum(p.startswith("docs/runbooks/") for p in where) >= 4


@pytest.mark.parametrize("excerpt", EXCERPTS,
                         ids=[f"{e.path.relative_to(ROOT)}:{e.start}:{e.command}" for e in EXCERPTS])
def test_each_excerpt_is_what_its_command_prints(excerpt):
    output = output_of(excerpt.command)
    if os.environ.get("SVCDOCTOR_UPDATE_GOLDEN") and excerpt.whole:
        _rewrite(excerpt, output)
        return
    stale = quoted_in(excerpt.lines, output)
    assert stale is None, (f"{excerpt.path.relative_to(ROOT)}: the excerpt of `{excerpt.command}` is stale at "
                           f"{stale!r}; it prints now:\n" + "\n".join(output))


def _rewrite(excerpt: Excerpt, output: list[str]) -> None:
    # read the file again: a block rewritten before this one may have moved it
    excerpt = excerpts([excerpt.path])[excerpt.ordinal]
    lines = excerpt.path.read_text().splitlines()
    lines[excerpt.start:excerpt.start + len(excerpt.lines)] = output
    excerpt.path.write_text("\n".join(lines) + "\n")


def test_the_matching_rules():
    out = ["a", "b", "c long line", "d"]
    assert quoted_in(["a", "b", GAP], out) is None
    assert quoted_in(["a", GAP, "d"], out) is None
    assert quoted_in([GAP, "c long…", "d"], out) is None
    assert quoted_in(out, out) is None
    assert quoted_in(["a", "c long line", GAP], out) == "a"  # a run must be contiguous
    assert quoted_in([GAP, "b", GAP, "a"], out) == "a"  # and in order
    assert quoted_in(["b", GAP], out) == "b"  # without a leading gap, the output's first line
    assert quoted_in([GAP, "b"], out) is not None  # without a trailing gap, its last


@pytest.mark.parametrize("doc", ["README.md", "docs/tutorial.md"])
def test_the_front_docs_name_services_completion_and_the_kubectl_plugin(doc):
    text = (ROOT / doc).read_text()
    assert "svcdoctor services" in text or "`services`" in text
    assert "completion bash" in text and "kubectl svcdoctor" in text and "kubectl-svcdoctor" in text
