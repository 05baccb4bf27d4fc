"""The netfilter rules of one node, as parsed from `iptables-save` and friends.

There can be hundreds of thousands of rules on a big node, so these are slotted classes and a rule's
match list is built only when something asks for it (most rules of a big dump are never looked at).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from svcdoctor.model import rule_text
from svcdoctor.model.rule_text import tokenize

BUILTIN_CHAINS = {
    "filter": ("INPUT", "FORWARD", "OUTPUT"),
    "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"),
    "mangle": ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"),
    "raw": ("PREROUTING", "OUTPUT"),
    "security": ("INPUT", "FORWARD", "OUTPUT"),
}

# Options that take no value (everything else takes the following words up to the next option).
FLAG_OPTIONS = frozenset(
    {
        "--rcheck",
        "--set",
        "--update",
        "--remove",
        "--reap",
        "--rsource",
        "--rdest",
        "--random-fully",
        "--random",
        "--persistent",
        "--syn",
        "-f",
        "--fragment",
        "--rttl",
    }
)

OPTION_ALIASES = {
    "--source": "-s",
    "--src": "-s",
    "--destination": "-d",
    "--dst": "-d",
    "--protocol": "-p",
    "--in-interface": "-i",
    "--out-interface": "-o",
    "--destination-port": "--dport",
    "--source-port": "--sport",
    "--destination-ports": "--dports",
    "--source-ports": "--sports",
    "--jump": "-j",
    "--goto": "-g",
    "--match": "-m",
}


@dataclass(slots=True)
class Match:
    """One condition of a rule: `[!] OPTION VALUE`, with the `-m MODULE` it came under (None for -s/-d/-p/-i/-o)."""

    option: str
    value: str | None
    negated: bool = False
    module: str | None = None

    def text(self) -> str:
        neg = "! " if self.negated else ""
        return f"{neg}{self.option}" + (f" {self.value}" if self.value is not None else "")


class Rule:
    """One `-A CHAIN …` rule. ``spec`` is the rule text after the chain name, without counters."""

    __slots__ = ("table", "chain", "position", "spec", "packets", "bytes", "target", "goto", "_parsed")

    def __init__(
        self,
        table: str,
        chain: str,
        position: int,
        spec: str,
        packets: int | None = None,
        bytes_: int | None = None,
    ):
        self.table = table
        self.chain = chain
        self.position = position  # 1-based, as `iptables -L --line-numbers` counts
        self.spec = spec
        self.packets = packets
        self.bytes = bytes_
        self.target, self.goto = rule_text.target(spec)
        self._parsed: _ParsedRule | None = None

    # -- the lazily parsed parts -------------------------------------------------------------------------
    @property
    def parsed(self) -> _ParsedRule:
        if self._parsed is None:
            self._parsed = _parse_spec(self.spec)
        return self._parsed

    @property
    def matches(self) -> list[Match]:
        return self.parsed.matches

    @property
    def comment(self) -> str | None:
        return self.parsed.comment

    @property
    def target_args(self) -> list[str]:
        return self.parsed.target_args

    def option(self, name: str) -> Match | None:
        for m in self.parsed.matches:
            if m.option == name:
                return m
        return None

    def value(self, name: str) -> str | None:
        m = self.option(name)
        return m.value if m is not None else None

    def target_option(self, name: str) -> str | None:
        args = self.parsed.target_args
        for i, a in enumerate(args):
            if a == name:
                return args[i + 1] if i + 1 < len(args) else ""
        return None

    @property
    def probability(self) -> float | None:
        p = self.value("--probability")
        try:
            return float(p) if p is not None else None
        except ValueError:
            return None

    @property
    def dnat_destination(self) -> str | None:
        if self.target != "DNAT":
            return None
        return self.target_option("--to-destination")

    @property
    def text(self) -> str:
        """The rule as `iptables -S` would show it (without counters)."""
        return f"-A {self.chain} {self.spec}" if self.spec else f"-A {self.chain}"

    def __repr__(self) -> str:
        return f"Rule({self.table}:{self.text!r}, packets={self.packets})"


@dataclass(slots=True)
class _ParsedRule:
    matches: list[Match]
    comment: str | None
    target_args: list[str]


def _parse_spec(spec: str) -> _ParsedRule:
    words = tokenize(spec)
    matches: list[Match] = []
    comment = None
    target_args: list[str] = []
    module = None
    negated = False
    i, n = 0, len(words)
    while i < n:
        w = words[i]
        if w == "!":
            negated = True
            i += 1
            continue
        w = OPTION_ALIASES.get(w, w)
        if w == "-m":
            module = words[i + 1] if i + 1 < n else None
            i += 2
            continue
        if w in ("-j", "-g"):
            target_args = words[i + 2 :]
            break
        if w == "-c" and i + 2 < n:  # `iptables -S -v` puts counters inline; the parser took them already
            i += 3
            continue
        if not w.startswith("-"):
            # a stray word (e.g. an unquoted comment with spaces): attach it to the previous option's value
            if matches:
                prev = matches[-1]
                prev.value = w if prev.value is None else prev.value + " " + w
            i += 1
            continue
        value_words = []
        j = i + 1
        if w not in FLAG_OPTIONS:
            while j < n and (not words[j].startswith("-") or _is_number(words[j])) and words[j] != "!":
                value_words.append(words[j])
                j += 1
        value = " ".join(value_words) if value_words else None
        if w in ("-s", "-d", "-p", "-i", "-o"):
            owner = None
        else:
            owner = module
        if w == "--comment" and owner == "comment":
            comment = value if comment is None else comment + " " + (value or "")
        else:
            matches.append(Match(w, value, negated, owner))
        negated = False
        i = j
    return _ParsedRule(matches, comment, target_args)


def _is_number(word: str) -> bool:
    return word[1:].replace(".", "", 1).isdigit() if word.startswith("-") else False


class Chain:
    """A chain and its rules. The rules of a big dump are kept as text until someone asks for them:
    explaining one service on a node with 10,000 services touches a handful of its 40,000 chains."""

    __slots__ = ("name", "table", "policy", "packets", "bytes", "declared", "_lines", "_rules")

    def __init__(self, name: str, table: str, policy: str | None = None, packets: int | None = None,
                 bytes: int | None = None, rules: list[Rule] | None = None, declared: bool = True):
        self.name = name
        self.table = table
        self.policy = policy  # ACCEPT/DROP for builtin chains, None ("-") for user chains
        self.packets = packets
        self.bytes = bytes
        self.declared = declared  # False: only referenced by a rule, never declared
        self._lines: list[str] = []  # "[p:b] -A NAME spec" or "-A NAME spec [-c p b]", not yet parsed
        self._rules: list[Rule] | None = list(rules) if rules is not None else None

    def add_line(self, line: str) -> None:
        if self._rules is not None:
            self._rules.append(rule_from_line(self.table, self.name, len(self._rules) + 1, line))
        else:
            self._lines.append(line)

    @property
    def rules(self) -> list[Rule]:
        if self._rules is None:
            table, name = self.table, self.name
            self._rules = [rule_from_line(table, name, i, line) for i, line in enumerate(self._lines, 1)]
            self._lines = []
        return self._rules

    @property
    def rule_count(self) -> int:
        return len(self._rules) if self._rules is not None else len(self._lines)

    def lines(self) -> list[str]:
        """The rules as dump lines (counters first, as `iptables-save -c` prints them), without building Rule
        objects for a chain nobody has parsed yet."""
        if self._rules is None:
            return self._lines
        return [(f"[{r.packets}:{r.bytes}] " if r.packets is not None else "") + r.text for r in self._rules]

    @property
    def builtin(self) -> bool:
        return self.name in BUILTIN_CHAINS.get(self.table, ())

    def __repr__(self) -> str:
        return f"Chain({self.table}:{self.name}, {self.rule_count} rules)"


def rule_from_line(table: str, chain: str, position: int, line: str) -> Rule:
    """A rule from its dump line: `[p:b] -A CHAIN spec` (iptables-save -c), `-A CHAIN spec -c p b -j T`
    (iptables -S -v), or `-A CHAIN spec`. The parser already checked the shape of the line."""
    from svcdoctor.errors import InputError

    packets = nbytes = None
    if line[0] == "[" or " -c " in line:
        stripped, packets, nbytes = rule_text.split_counted_line(line)
        if packets is None and line[0] == "[":
            raise InputError(f"chain {chain}: bad counters in: {line[:80]}")
        line = stripped
    spec = line[4 + len(chain) :].strip()  # after "-A CHAIN "
    return Rule(table, chain, position, spec, packets, nbytes)


@dataclass(slots=True)
class Table:
    name: str
    chains: dict[str, Chain] = field(default_factory=dict)
    committed: bool = True

    def chain(self, name: str) -> Chain | None:
        return self.chains.get(name)

    def rules(self):
        for chain in self.chains.values():
            yield from chain.rules


@dataclass(slots=True)
class NodeRules:
    """All tables read from one node (one backend)."""

    tables: dict[str, Table] = field(default_factory=dict)
    format: str = "iptables-save"  # iptables-save | iptables-S | restore-input
    has_counters: bool = False
    warnings: list[str] = field(default_factory=list)
    # `iptables-save` lines like "# Warning: iptables-legacy tables present": evidence, never rules
    backend_warnings: list[str] = field(default_factory=list)

    def table(self, name: str) -> Table | None:
        return self.tables.get(name)

    def chain(self, table: str, name: str) -> Chain | None:
        t = self.tables.get(table)
        return t.chains.get(name) if t else None

    @property
    def rule_count(self) -> int:
        return sum(c.rule_count for t in self.tables.values() for c in t.chains.values())

    @property
    def kube_chain_count(self) -> int:
        return sum(1 for t in self.tables.values() for name in t.chains if name.startswith("KUBE-"))

    def has_kube_proxy_rules(self) -> bool:
        nat = self.tables.get("nat")
        if nat is None:
            return False
        svc = nat.chains.get("KUBE-SERVICES")
        return svc is not None and svc.rule_count > 0 or any(n.startswith("KUBE-SVC-") for n in nat.chains)
