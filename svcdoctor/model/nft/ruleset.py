"""One kube-proxy nftables table in memory, whichever way it was listed (`nft -j list table …` JSON or the text of
`nft list table …`): chains of rules made of statements, and the sets and maps the rules look up.

Both readers (read_json.py, read_text.py) build these same objects, so everything downstream (names, layout,
explain, trace) reads one form. Only the statements kube-proxy writes are modelled
(docs/explanation/kube-proxy-nftables.md); anything else is kept as `Other` with its text, never guessed at.

Literal values are normalised the same way from both listings: addresses, prefixes ("10.0.0.0/8"), ranges
("a-b"), protocol and keyword names as lower-case strings; ports, numbers and marks as ints; a concatenation
("1.2.3.4 . tcp . 80") as a tuple.
"""

from __future__ import annotations

from dataclasses import dataclass, field

Value = str | int | tuple  # a literal, a concatenation of literals, or "@set" (a reference)


@dataclass(slots=True)
class Match:
    """`KEY [& MASK] [OP] VALUE`: key is the selector text, one per part of a concatenation ("ip daddr",
    "meta l4proto", "th dport", "fib saddr type", "ct state", "meta mark")."""

    key: tuple[str, ...]
    op: str  # "==" | "!=" (nft's implicit relation, and `in` for flags like ct state, are "==")
    value: Value | list  # a list is an anonymous set
    mask: int | None = None

    def text(self) -> str:
        key = " . ".join(self.key) + (f" & {_hex(self.mask)}" if self.mask is not None else "")
        value = _value_text(self.value, mark=self.mask is not None)
        if self.mask is not None:
            return f"{key} {self.op} {value}"
        return f"{key} {value}" if self.op == "==" else f"{key} {self.op} {value}"


@dataclass(slots=True)
class Verdict:
    kind: str  # jump | goto | return | drop | accept | reject | continue
    target: str | None = None

    def text(self) -> str:
        return f"{self.kind} {self.target}" if self.target else self.kind


@dataclass(slots=True)
class VMap:
    """`KEY vmap @map` or `KEY vmap { k : verdict, … }` (kube-proxy's numgen split up to 1.35)."""

    key: tuple[str, ...]
    map: str | None = None  # a named map
    elements: list[tuple[Value, Verdict]] | None = None  # an anonymous map

    def text(self) -> str:
        if self.map is not None:
            return f"{' . '.join(self.key)} vmap @{self.map}"
        body = ", ".join(f"{_value_text(k)} : {v.text()}" for k, v in self.elements or [])
        return f"{' . '.join(self.key)} vmap {{ {body} }}"


@dataclass(slots=True)
class Dnat:
    """`dnat to IP:PORT`, or from 1.36 `dnat ip to numgen random mod N map { i : IP . PORT, … }`."""

    family: str | None  # "ip" | "ip6" | None (nft omits it in an ip/ip6 table)
    address: str | None = None
    port: int | None = None
    key: tuple[str, ...] | None = None  # the map's key ("numgen random mod 2",)
    elements: list[tuple[Value, tuple[str, int | None]]] | None = None  # i -> (address, port)

    def text(self) -> str:
        fam = f" {self.family}" if self.family else ""
        if self.elements is not None:
            body = ", ".join(f"{_value_text(k)} : {a} . {p}" for k, (a, p) in self.elements)
            return f"dnat{fam} to {' . '.join(self.key or ())} map {{ {body} }}"
        where = f"[{self.address}]" if self.port is not None and ":" in (self.address or "") else self.address
        return f"dnat{fam} to {where}" + (f":{self.port}" if self.port is not None else "")

    def destinations(self) -> list[tuple[str, int | None]]:
        if self.elements is not None:
            return [dest for _, dest in self.elements]
        return [(self.address or "", self.port)]


@dataclass(slots=True)
class MarkSet:
    """`meta mark set meta mark | 0x4000` (or `^`); `op` "=" for `meta mark set 0x4000`."""

    op: str
    value: int

    def text(self) -> str:
        if self.op == "=":
            return f"meta mark set {_hex(self.value)}"
        return f"meta mark set meta mark {self.op} {_hex(self.value)}"


@dataclass(slots=True)
class Masquerade:
    flags: str = ""

    def text(self) -> str:
        return f"masquerade {self.flags}".strip()


@dataclass(slots=True)
class SetUpdate:
    """`update @set { ip saddr }`: session affinity's record of a client."""

    set: str
    key: tuple[str, ...]
    op: str = "update"

    def text(self) -> str:
        return f"{self.op} @{self.set} {{ {' . '.join(self.key)} }}"


@dataclass(slots=True)
class Other:
    """A statement svcdoctor does not model (counter, log, …): kept as nft printed it."""

    raw: str
    terminal: bool = False

    def text(self) -> str:
        return self.raw


Statement = Match | Verdict | VMap | Dnat | MarkSet | Masquerade | SetUpdate | Other


@dataclass(slots=True)
class Rule:
    """One rule, with the attributes the renderers read from an iptables Rule (duck-typed: `.text`, `.table`,
    `.chain`, `.comment`, `.target`, `.packets`, `.bytes`). nftables keeps no counters unless a rule asks for
    one; kube-proxy's never do, so packets and bytes are None."""

    table: str  # "ip kube-proxy"
    chain: str
    position: int  # 1-based, in listing order
    statements: list[Statement]
    comment: str | None = None
    handle: int | None = None
    raw: str | None = None  # the line as `nft list` printed it, when read from text
    packets: int | None = None
    bytes: int | None = None

    @property
    def text(self) -> str:
        if self.raw is not None:
            return self.raw
        body = " ".join(s.text() for s in self.statements)
        return body + (f' comment "{self.comment}"' if self.comment else "")

    @property
    def verdict(self) -> Verdict | None:
        for s in self.statements:
            if isinstance(s, Verdict):
                return s
        return None

    @property
    def target(self) -> str | None:
        """What the rule ends in, in the words the views use: a chain jumped to, DNAT, DROP, REJECT, …"""
        for s in self.statements:
            if isinstance(s, Verdict):
                return s.target or s.kind.upper()
            if isinstance(s, Dnat):
                return "DNAT"
            if isinstance(s, Masquerade):
                return "MASQUERADE"
            if isinstance(s, VMap):
                return "vmap"
        return None


@dataclass(slots=True)
class Element:
    key: Value
    value: Verdict | Value | None = None  # maps only
    comment: str | None = None
    expires: int | None = None  # seconds left, for an element a rule added with a timeout (session affinity)

    def text(self) -> str:
        out = _value_text(self.key)
        if self.comment:
            out += f' comment "{self.comment}"'
        if self.value is not None:
            out += " : " + (self.value.text() if isinstance(self.value, Verdict) else _value_text(self.value))
        return out


@dataclass(slots=True)
class NftSet:
    """A named set or map. `elements` in listing order; `index` finds an exact key fast."""

    name: str
    is_map: bool
    type: tuple[str, ...]
    map_type: str | None = None  # "verdict", or the data type of a data map
    flags: tuple[str, ...] = ()
    timeout: int | None = None  # seconds
    comment: str | None = None
    elements: list[Element] = field(default_factory=list)
    _index: dict | None = None

    def lookup(self, key: Value) -> Element | None:
        """The element whose key matches (an exact key, or one inside a prefix or range element)."""
        if self._index is None:
            self._index = {}
            for e in self.elements:
                self._index.setdefault(e.key, e)
        hit = self._index.get(key)
        if hit is not None:
            return hit
        from svcdoctor.model.nft.values import value_matches

        for e in self.elements:
            if value_matches(key, e.key):
                return e
        return None


@dataclass(slots=True)
class Chain:
    name: str
    rules: list[Rule] = field(default_factory=list)
    type: str | None = None  # filter | nat (base chains only)
    hook: str | None = None
    priority: int | None = None
    policy: str | None = None
    comment: str | None = None

    @property
    def is_base(self) -> bool:
        return self.hook is not None


@dataclass(slots=True)
class NftRuleset:
    """One table: `ip kube-proxy` or `ip6 kube-proxy`."""

    family: str  # ip | ip6 | inet
    name: str
    chains: dict[str, Chain] = field(default_factory=dict)
    sets: dict[str, NftSet] = field(default_factory=dict)  # sets and maps by name
    comment: str | None = None
    source: str = ""  # where it was read from
    listing: str = ""  # "json" | "text"
    nft_version: str | None = None  # from the JSON metainfo
    # indexes worked out once per table by the code that reads it many times (model/nft/explain.py)
    cache: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def table(self) -> str:
        return f"{self.family} {self.name}"

    @property
    def address_family(self) -> str:
        return "IPv6" if self.family == "ip6" else "IPv4"

    def chain(self, name: str) -> Chain | None:
        return self.chains.get(name)

    def set(self, name: str) -> NftSet | None:
        return self.sets.get(name.lstrip("@"))

    def base_chains(self, hook: str) -> list[Chain]:
        """The chains on one netfilter hook, in the order the kernel runs them (lowest priority first)."""
        return sorted((c for c in self.chains.values() if c.hook == hook), key=lambda c: c.priority or 0)


def _hex(n: int | None) -> str:
    return f"0x{(n or 0):08x}"


def _value_text(value, mark: bool = False) -> str:
    if isinstance(value, list):
        return "{ " + ", ".join(_value_text(v) for v in value) + " }"
    if isinstance(value, tuple):
        return " . ".join(_value_text(v) for v in value)
    if isinstance(value, str) and value.startswith("@"):
        return value
    if mark and isinstance(value, int):
        return _hex(value)
    return str(value)
