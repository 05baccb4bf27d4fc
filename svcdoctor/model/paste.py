"""A dump pasted from a terminal is input too: what support engineers receive is rarely a clean `iptables-save`.

Before the parser reads a single-file input (a file or standard input, not a collected bundle), this pass:

- skips lines that are not rule syntax (the typed command, a shell prompt, prose between blocks, a `kubectl exec`
  banner) and names them once; a line that looks like a rule (`-A`, `-N`, `-P`, `[p:b] -A`, `:CHAIN …`, `*table`)
  is left to the parser, so a malformed rule is still an error with its line number;
- drops CR line ends and leading indentation (copies from a chat or a web page);
- counts identical repeated rule lines once (a grep pasted twice, a command run twice), their first place kept
  and the later counters read; a chain listed again from its `-N CHAIN` line (`iptables -S CHAIN` run twice) is
  read from its later listing only, never concatenated, and a listing that changed is named;
- reads `:CHAIN - [0:0]` declarations of an `iptables-save | grep` paste that has no `*table` header as
  `iptables -S`'s `-N CHAIN`, so the table is inferred as for any headerless listing.

Dropped lines become empty lines, so the parser's line numbers are still the user's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from svcdoctor.model import rule_text

# what iptables-save / iptables -S / kube-proxy's restore input print, and nothing else
_RULE_SYNTAX = re.compile(r"(?:\[\d|-[ANPXI] |-[ANPXI]$|:\S|\*\w|COMMIT$|#)")
_SHOWN = 3  # skipped lines quoted in the note; the rest are counted


@dataclass(slots=True)
class Paste:
    text: str
    notes: list[str] = field(default_factory=list)


def clean_paste(text: str, source: str) -> Paste:
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    skipped: list[tuple[int, str]] = []
    has_header = any(ln.lstrip().startswith("*") for ln in lines)
    first_at: dict[tuple[int, str], int] = {}  # (part, rule without counters) -> where it was first read
    repeated = 0
    relisted: set[str] = set()
    part = 0  # a table header, or `-P` lines after rules (another `iptables -S` listing), starts a new part
    after_rule = False
    out: list[str] = []
    rules_of: dict[tuple[int, str], list[int]] = {}  # (part, chain) -> where its rules are in `out`
    listed_again: dict[tuple[int, str], list[str]] = {}  # (part, chain) -> the rules of its earlier listing
    for index, raw in enumerate(lines):
        line = raw.strip()
        if not line:
            out.append("")
            continue
        if not _RULE_SYNTAX.match(line):
            skipped.append((index + 1, line))
            out.append("")
            continue
        if line.startswith(":") and not has_header and line.endswith(" - [0:0]"):
            line = "-N " + line[1:-8]
        if line.startswith("*") or (line.startswith("-P ") and after_rule):
            part += 1
            after_rule = False
        if line.startswith("-N ") and (part, line[3:]) in rules_of:
            # `iptables -S CHAIN` run again: its listing starts over; the earlier one is kept aside to compare
            name = line[3:]
            earlier = [rule_text.strip_counters(out[i]) for i in rules_of.pop((part, name))]
            for key in [(part, text) for text in earlier]:
                out[first_at.pop(key)] = ""
            listed_again[(part, name)] = earlier
        chain = _rule_chain(line)
        if chain is None:
            out.append(line)
            continue
        after_rule = True
        key = (part, rule_text.strip_counters(line))
        at = first_at.get(key)
        if at is None:
            first_at[key] = len(out)
            rules_of.setdefault((part, chain), []).append(len(out))
            out.append(line)
            continue
        # the same rule again: a grep pasted twice, or a chain listed again; its place stays the first one's,
        # its counters are the later ones (a second `iptables -S CHAIN -v` sees the counters moved on)
        repeated += 1
        if out[at] != line:
            out[at] = line
            relisted.add(chain)
        out.append("")
    changed = []
    for (part, name), earlier in sorted(listed_again.items()):
        later = [rule_text.strip_counters(out[i]) for i in rules_of.get((part, name), [])]
        if later == earlier:
            repeated += len(earlier)
        else:
            changed.append(name)
    return Paste("\n".join(out), _notes(source, skipped, repeated, sorted(relisted), changed))


def _rule_chain(line: str) -> str | None:
    """The chain of an `-A CHAIN …` line (with or without counters); None for anything else."""
    if line.startswith("["):
        at = line.find("] -A ")
        line = line[at + 2 :] if at > 0 else line
    if not line.startswith("-A "):
        return None
    end = line.find(" ", 3)
    return line[3:] if end < 0 else line[3:end]


def _notes(source: str, skipped: list[tuple[int, str]], repeated: int, relisted: list[str],
           changed: list[str]) -> list[str]:
    notes = []
    if skipped:
        shown = ", ".join(f"line {n} `{_short(text)}`" for n, text in skipped[:_SHOWN])
        more = f" and {len(skipped) - _SHOWN} more" if len(skipped) > _SHOWN else ""
        what = "lines that are not rules" if len(skipped) != 1 else "line that is not a rule"
        notes.append(f"{source}: skipped {len(skipped)} {what}: {shown}{more}")
    if repeated:
        notes.append(f"{source}: {repeated} repeated rule line{'s' if repeated != 1 else ''} counted once")
    if changed:
        notes.append(f"{source}: listed twice with different rules, the later listing read: {', '.join(changed)}")
    if relisted:
        notes.append(f"{source}: listed more than once, the last counters read: {', '.join(relisted)}")
    return notes


def _short(line: str) -> str:
    return line if len(line) <= 60 else line[:57] + "..."
