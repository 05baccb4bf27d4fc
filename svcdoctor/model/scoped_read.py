"""Read only what one Service needs from a node's dump (part of the iptables reader).

`explain SERVICE` on a node with 10,000 services needs a dozen of its 150,000 rules: the service's own chains, the
entry rules that jump to them, and the chains every path goes through (KUBE-SERVICES' non-service rules,
KUBE-MARK-MASQ, KUBE-POSTROUTING, the built-in chains, the filter table's kube-proxy chains). Parsing the whole
dump line by line costs more than `iptables-restore --test` of it; finding the service's chains with C-speed
searches over the text and then dropping every other service's hashed chains and the entry rules to them leaves
a small dump that the ordinary parser reads in a few milliseconds, and explains to exactly the same answer
(tests/test_scoped_read.py compares both on every service of the test bundles).

A service is found by its `--comment` (kube-proxy writes "NAMESPACE/NAME:PORT …" on its rules) and by the hash
suffixes of its ports when the API objects are there; the chains those chains jump to (a balancing chain's
endpoint chains, whatever their comments) are followed until nothing new turns up.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from svcdoctor.model.hashes import LEGACY_XLB_PREFIX, SERVICE_CHAIN_PREFIXES

_HASHED_PREFIX = r"KUBE-(?:SVC|SVL|EXT|FW|SEP|XLB)-"
_HASHED = _HASHED_PREFIX + r"[A-Z0-9]{16}"
_HASHED_NAME = re.compile(_HASHED)
# an entry rule (KUBE-SERVICES, KUBE-NODEPORTS, …) that jumps to a hashed chain
_HASHED_TARGET = re.compile(r" -[jg] (" + _HASHED + r")(?= |$)")
_MAX_ROUNDS = 8  # service -> ext/fw -> svc/svl/xlb -> sep: three rounds on every layout kube-proxy has written


def scope_to_service(text: str, service_key: str, suffixes: Iterable[str] = ()) -> str | None:
    """The dump with every other service's hashed chains and entry rules left out; None when the dump names
    nothing of the service (the caller then reads the whole dump, e.g. to suggest names)."""
    wanted = service_chains(text, service_key, suffixes)
    if not wanted:
        return None
    # one search over the whole text (C speed; it starts at each newline) for the lines to keep: every line but
    # the rules and declarations of other services' hashed chains (most of a big dump)
    names = "|".join(re.escape(name) for name in sorted(wanted))
    kept = re.compile(
        r"\n("
        r"(?:\[\d+:\d+\] )?(?:-A |-[NP] |:)(?:(?!" + _HASHED_PREFIX + r")|(?:" + names + r")(?= |$))[^\n]*"
        r"|[^-:\[\n][^\n]*"  # table headers, COMMIT, comments, and whatever else: the parser judges it
        r"|-(?![ANP] )[^\n]*"
        r"|\[(?!\d+:\d+\] )[^\n]*"
        r")"
    ).findall("\n" + text)
    hashed_target = _HASHED_TARGET.search
    keep = [ln for ln in kept if ("-j KUBE-" not in ln and "-g KUBE-" not in ln)
            or (t := hashed_target(ln)) is None or t.group(1) in wanted]
    return "\n".join(keep)


def service_chains(text: str, service_key: str, suffixes: Iterable[str] = ()) -> set[str]:
    """Names of the hashed chains that belong to the service in this dump (and the chains they jump to)."""
    # names from the API's hashes need not exist on the node: a name with no rules keeps nothing
    found = {prefix + suffix for suffix in suffixes for prefix in SERVICE_CHAIN_PREFIXES + (LEGACY_XLB_PREFIX,)}
    for at in _mentions(text, service_key):
        found.update(_HASHED_NAME.findall(_line_at(text, at)))
    frontier = set(found)
    for _ in range(_MAX_ROUNDS):
        if not frontier:
            break
        rules_of = re.compile(r"-A (" + "|".join(re.escape(n) for n in sorted(frontier)) + r") ")
        reached: set[str] = set()
        for m in rules_of.finditer(text):
            reached.update(_HASHED_NAME.findall(_line_at(text, m.start())))
        frontier = reached - found
        found |= reached
    return found


def _mentions(text: str, service_key: str):
    """Where the comments name the service: `"ns/name:port …"`, `ns/name`, `… for ns/name:port …` (str.find is
    many times faster than a regular expression with a look-behind over a 20 MB dump)."""
    at = text.find(service_key)
    end_of_key = len(service_key)
    while at >= 0:
        before = text[at - 1] if at > 0 else "\n"
        after = text[at + end_of_key] if at + end_of_key < len(text) else "\n"
        if before in "\" " and after in ":\" \n":
            yield at
        at = text.find(service_key, at + end_of_key)


def _line_at(text: str, pos: int) -> str:
    start = text.rfind("\n", 0, pos) + 1
    end = text.find("\n", pos)
    return text[start:] if end < 0 else text[start:end]
