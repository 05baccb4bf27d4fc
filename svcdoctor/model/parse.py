"""Read every spelling of iptables rules that real nodes and users produce (docs/reference/contract.md, Bundle).

- `iptables-save [-c]`: `*table`, `:CHAIN POLICY [p:b]`, `[p:b] -A CHAIN …`, `COMMIT`;
- `iptables [-t T] -S [-v]`: `-P CHAIN POLICY [-c p b]`, `-N CHAIN`, `-A CHAIN … [-c p b] -j T` (no table header:
  the table is inferred from the chains and the guess is reported);
- kube-proxy's iptables-restore input: `:CHAIN - [0:0]`, bare comments, `-X CHAIN`, `0x00004000` marks.
"""

from __future__ import annotations

import re

from svcdoctor.errors import InputError
from svcdoctor.model.rules import BUILTIN_CHAINS, Chain, NodeRules, Table

# `[pkts:bytes] -A CHAIN …` with digits for counters, as iptables-save -c prints every rule: its chain's name
_COUNTED_RULE = re.compile(r"\[[0-9]+:[0-9]+\] -A ([^ ]+)")
MAX_LINE_LENGTH = 16384  # real rule lines are far shorter; a longer one is not an iptables dump
LEGACY_WARNING_PREFIX = "# Warning:"

# What a chain or a target says about its table when a dump has no `*table` header.
_NAT_HINTS = ("KUBE-SVC-", "KUBE-SVL-", "KUBE-SEP-", "KUBE-EXT-", "KUBE-FW-", "KUBE-XLB-", "KUBE-MARK-MASQ",
              "KUBE-POSTROUTING", "PREROUTING", "POSTROUTING", "DOCKER_OUTPUT", "DOCKER_POSTROUTING", "KIND-MASQ-AGENT")
_NAT_TARGETS = ("DNAT", "SNAT", "MASQUERADE", "REDIRECT")
_FILTER_HINTS = ("KUBE-FORWARD", "KUBE-EXTERNAL-SERVICES", "KUBE-FIREWALL", "KUBE-PROXY-FIREWALL", "FORWARD", "INPUT")
_FILTER_TARGETS = ("REJECT", "ACCEPT", "DROP")


def parse_rules(text: str, source: str = "<input>") -> NodeRules:
    """Parse one node's rules. Raises InputError (exit 2) on input that is not an iptables dump."""
    if "\x00" in text:
        raise InputError(f"{source}: binary data, not an iptables dump")
    result = NodeRules()
    tables = result.tables
    table: Table | None = None
    headerless: list[tuple[int, str]] = []  # lines of `iptables -S` output, placed once the table is known
    saw_header = False
    counters = False
    chains: dict[str, Chain] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line:
            continue
        if len(line) > MAX_LINE_LENGTH:
            raise InputError(f"{source}: line {lineno} is {len(line)} characters long; not an iptables dump")
        if line[0] == " " or line[-1] == " " or line[0] == "\t":
            line = line.strip()
            if not line:
                continue
        first = line[0]
        if first == "[":
            # `[pkts:bytes] -A CHAIN …` (iptables-save -c), 150,000 times on a big node: kept tight, the counters
            # and the rule itself are read when someone asks for the chain's rules
            counted = _COUNTED_RULE.match(line)  # the common spelling in one search
            if counted is not None and table is not None:
                start, name = counted.start(1), counted.group(1)
            else:
                close = line.find("] -A ")
                if close < 0 or table is None:
                    raise InputError(f"{source}: line {lineno}: not a rule with counters (or outside a table): "
                                     f"{_short(line)}")
                pk, _, by = line[1:close].partition(":")
                if not (pk.isdigit() and by.isdigit()):
                    raise InputError(f"{source}: line {lineno}: bad counters: {_short(line)}")
                start = close + 5
                end = line.find(" ", start)
                name = line[start:end] if end > 0 else line[start:]
            chain = chains.get(name)
            if chain is None or chain._rules is not None:
                _add_line(table, line, start, lineno, source)
                chains = table.chains
            else:
                chain._lines.append(line)
            counters = True
        elif first == "-":
            if table is None:
                headerless.append((lineno, line))
                continue
            if line.startswith("-A "):
                if not counters and " -c " in line:
                    counters = True
                _add_line(table, line, 3, lineno, source)
            elif line.startswith("-X "):
                # kube-proxy's restore input deletes stale chains this way; they are gone after the restore
                table.chains.pop(line[3:].strip(), None)
            elif line.startswith("-N ") or line.startswith("-P "):
                _declare_from_s(table, line, lineno, source)
            else:
                raise InputError(f"{source}: line {lineno}: not an iptables rule: {_short(line)}")
        elif first == ":" and table is not None and line.endswith(" - [0:0]") and " " not in line[1:-8]:
            name = line[1:-8]  # ":KUBE-SEP-… - [0:0]", 40,000 times on a big node
            if name not in chains:
                chains[name] = Chain(name, table.name, None, 0, 0)
        elif first == ":":
            if table is None:
                raise InputError(f"{source}: line {lineno}: chain declaration outside a table: {_short(line)}")
            _declare_chain(table, line, lineno, source)
        elif first == "*":
            name = line[1:].strip()
            if not name.isidentifier():
                raise InputError(f"{source}: line {lineno}: bad table header: {_short(line)}")
            if table is not None and not table.committed:
                raise InputError(f"{source}: table {table.name} has no COMMIT before line {lineno}: truncated dump?")
            table = tables.get(name) or Table(name)
            table.committed = False
            tables[name] = table
            chains = table.chains
            saw_header = True
        elif line == "COMMIT":
            if table is None:
                raise InputError(f"{source}: line {lineno}: COMMIT outside a table")
            table.committed = True
            table = None
        elif first == "#":
            if line.startswith(LEGACY_WARNING_PREFIX):
                result.backend_warnings.append(line)
            continue
        else:
            raise InputError(f"{source}: line {lineno}: not an iptables rule: {_short(line)}")
    if table is not None and not table.committed:
        raise InputError(f"{source}: table {table.name} has no COMMIT: the dump looks truncated")
    if headerless:
        if saw_header:
            raise InputError(
                f"{source}: line {headerless[0][0]}: rule outside a table (mixed iptables-save and -S output?)"
            )
        counters = _place_headerless(result, headerless, source) or counters
        result.format = "iptables-S"
    elif _looks_like_restore_input(result):  # also with `[p:b]` counters, as `iptables-restore -c` takes them
        result.format = "restore-input"
    if not tables or not any(t.chains for t in tables.values()) and result.rule_count == 0:
        raise InputError(f"{source}: no iptables rules found")
    result.has_counters = counters
    return result


def _short(line: str) -> str:
    return line if len(line) <= 80 else line[:77] + "..."


def _looks_like_restore_input(result: NodeRules) -> bool:
    # kube-proxy declares no builtin chain with a policy (iptables-save always prints them with one)
    return all(c.policy is None for t in result.tables.values() for c in t.chains.values())


def _declare_chain(table: Table, line: str, lineno: int, source: str) -> None:
    # ":NAME POLICY [p:b]"; kube-proxy's restore input writes ":NAME - [0:0]"
    if line.endswith(" - [0:0]") and table.chains.get(line[1:-8]) is None:
        name = line[1:-8]
        if " " not in name:
            table.chains[name] = Chain(name, table.name, None, 0, 0)  # the common case, 40,000 times on a big node
            return
    parts = line[1:].split()
    if not parts:
        raise InputError(f"{source}: line {lineno}: bad chain declaration: {_short(line)}")
    name = parts[0]
    policy = parts[1] if len(parts) > 1 else "-"
    packets = nbytes = None
    if len(parts) > 2 and parts[2].startswith("[") and parts[2].endswith("]"):
        try:
            pk, by = parts[2][1:-1].split(":")
            packets, nbytes = int(pk), int(by)
        except ValueError:
            raise InputError(f"{source}: line {lineno}: bad chain counters: {_short(line)}") from None
    chain = table.chains.get(name)
    if chain is None:
        table.chains[name] = Chain(name, table.name, None if policy == "-" else policy, packets, nbytes)
    else:
        chain.policy = None if policy == "-" else policy
        chain.packets, chain.bytes, chain.declared = packets, nbytes, True


def _declare_from_s(table: Table, line: str, lineno: int, source: str) -> None:
    # `-N NAME` or `-P NAME POLICY [-c p b]`
    parts = line.split()
    if len(parts) < 2:
        raise InputError(f"{source}: line {lineno}: bad chain line: {_short(line)}")
    name = parts[1]
    chain = table.chains.get(name)
    if chain is None:
        chain = table.chains[name] = Chain(name, table.name)
    chain.declared = True
    if parts[0] == "-P" and len(parts) > 2:
        chain.policy = parts[2]
        if len(parts) >= 6 and parts[3] == "-c":
            chain.packets, chain.bytes = _int(parts[4], lineno, source), _int(parts[5], lineno, source)


def _int(word: str, lineno: int, source: str) -> int:
    try:
        return int(word)
    except ValueError:
        raise InputError(f"{source}: line {lineno}: bad counter {word!r}") from None


def _add_line(table: Table, line: str, name_at: int, lineno: int, source: str) -> None:
    """File a rule line under its chain (``name_at``: where the chain name starts); parsed when needed."""
    sp = line.find(" ", name_at)
    name = line[name_at:] if sp < 0 else line[name_at:sp]
    if not name:
        raise InputError(f"{source}: line {lineno}: rule without a chain: {_short(line)}")
    chain = table.chains.get(name)
    if chain is None:
        chain = table.chains[name] = Chain(name, table.name, declared=False)
    chain.add_line(line)


def _guess_table(lines: list[tuple[int, str]]) -> tuple[str, str]:
    """Guess the table of headerless `iptables -S` lines. Returns (table, why)."""
    policies = {line.split()[1] for _, line in lines if line.startswith("-P ") and len(line.split()) > 1}
    for table in ("mangle", "nat", "filter", "raw"):
        if policies and policies == set(BUILTIN_CHAINS[table]):
            return table, f"builtin chains {', '.join(sorted(policies))}"
    nat = filt = 0
    for _, line in lines:
        words = line.split()
        if len(words) < 2:
            continue
        chain = words[1]
        if chain.startswith(_NAT_HINTS):
            nat += 1
        elif chain.startswith(_FILTER_HINTS):
            filt += 1
        target = words[words.index("-j") + 1] if "-j" in words and words.index("-j") + 1 < len(words) else None
        if target in _NAT_TARGETS or (target or "").startswith(("KUBE-SVC-", "KUBE-SEP-", "KUBE-EXT-", "KUBE-MARK-")):
            nat += 1
        elif target in _FILTER_TARGETS:
            filt += 1
    if nat >= filt:
        return "nat", f"{nat} nat-only chain/target mentions against {filt} for filter"
    return "filter", f"{filt} filter-only chain/target mentions against {nat} for nat"


def _place_headerless(result: NodeRules, lines: list[tuple[int, str]], source: str) -> bool:
    """`iptables -S` output has no table header; several tables may be pasted one after another.

    Each `iptables -S` listing starts with its `-P` lines, so a `-P` after rules starts a new listing.
    """
    segments: list[list[tuple[int, str]]] = [[]]
    seen_rule = False
    for item in lines:
        if item[1].startswith("-P ") and seen_rule:
            segments.append([])
            seen_rule = False
        elif not item[1].startswith("-P "):
            seen_rule = True
        segments[-1].append(item)
    counters = False
    for segment in segments:
        name, why = _guess_table(segment)
        table = result.tables.get(name)
        if table is None:
            table = result.tables[name] = Table(name)
        result.warnings.append(f"{source}: no table header; read as the {name} table ({why})")
        for lineno, line in segment:
            if line.startswith("-A "):
                counters = counters or " -c " in line
                _add_line(table, line, 3, lineno, source)
            elif line.startswith(("-N ", "-P ")):
                _declare_from_s(table, line, lineno, source)
            else:
                raise InputError(f"{source}: line {lineno}: not an iptables rule: {_short(line)}")
    return counters


def decode_dump(data: bytes, source: str) -> str:
    """Bytes of a rules file to text; random bytes are refused rather than half-read."""
    if b"\x00" in data:
        raise InputError(f"{source}: binary data, not an iptables dump")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{source}: not UTF-8 text, not an iptables dump") from None


def parse_service_rules(text: str, source: str, service_key: str, suffixes=(), pasted: bool = False) -> NodeRules:
    """Parse only what explaining one service needs (model/scoped_read.py); the whole dump when the service is
    not named in it, or when the short dump does not parse (the whole one then gives the error its line numbers).
    A pasted dump (model/paste.py) is cleaned first and read whole: it is small."""
    if pasted:
        return parse_pasted_rules(text, source)
    from svcdoctor.model.scoped_read import scope_to_service

    scoped = scope_to_service(text, service_key, suffixes)
    if scoped is not None:
        try:
            return parse_rules(scoped, source)
        except InputError:
            pass
    return parse_rules(text, source)


def parse_pasted_rules(text: str, source: str = "<input>") -> NodeRules:
    """Parse a single-file input the way a person pasted it (model/paste.py): prompts and prose skipped and named,
    repeated lines counted once, indentation and CR line ends accepted."""
    from svcdoctor.model.paste import clean_paste

    if "\x00" in text:
        raise InputError(f"{source}: binary data, not an iptables dump")
    paste = clean_paste(text, source)
    result = parse_rules(paste.text, source)
    result.warnings[:0] = paste.notes
    return result
