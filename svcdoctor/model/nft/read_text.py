"""Reads the text of `nft list table ip kube-proxy` (for nft builds without JSON) into the same NftRuleset objects
as read_json.py.

nft prints a normalised form of what kube-proxy wrote (docs/explanation/kube-proxy-nftables.md):
`meta mark set meta mark | 0x00004000`, `meta mark & 0x00004000 == 0x00000000`, `dnat ip to numgen random mod 2
map { 0 : 10.180.0.4 . 80, 1 : 10.180.0.5 . 80 }`, priorities by name (`dstnat - 10`), set elements grouped into
`elements = { … }` over several lines. kube-proxy's own input spellings (`mark set mark or 0x4000`, `dnat ip addr .
port to …`) are accepted too, so a rules file written by hand reads the same.
"""

from __future__ import annotations

import re

from svcdoctor.errors import InputError
from svcdoctor.model.nft.ruleset import (
    Chain,
    Dnat,
    Element,
    Masquerade,
    Match,
    MarkSet,
    NftRuleset,
    NftSet,
    Other,
    Rule,
    SetUpdate,
    Verdict,
    VMap,
)

TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|#[^\n]*|[{},;]|\n|[^\s{},;"]+')
# nft's named priorities (man nft, "Standard priority names"), for the ip/ip6/inet families
PRIORITY_NAMES = {"raw": -300, "mangle": -150, "dstnat": -100, "filter": 0, "security": 50, "srcnat": 100}
SELECTOR_STARTS = {"ip", "ip6", "meta", "th", "tcp", "udp", "sctp", "fib", "ct", "numgen", "mark"}
TWO_WORD = {"ip", "ip6", "meta", "th", "tcp", "udp", "sctp", "ct"}
VERDICTS = {"return", "drop", "accept", "continue"}
MARK_OPS = {"|": "|", "or": "|", "^": "^", "xor": "^", "&": "&", "and": "&"}


class _Tokens:
    def __init__(self, text: str, source: str):
        self.text = text
        self.source = source
        self.items = [(m.group(), m.start(), m.end()) for m in TOKEN.finditer(text) if m.group()[0] != "#"]
        self.i = 0

    def peek(self, ahead: int = 0) -> str | None:
        j = self.i + ahead
        return self.items[j][0] if j < len(self.items) else None

    def next(self) -> str:
        if self.i >= len(self.items):
            raise InputError(f"{self.source}: the nft listing ends in the middle of a block")
        self.i += 1
        return self.items[self.i - 1][0]

    def expect(self, token: str) -> None:
        got = self.next()
        if got != token:
            line = self.text.count("\n", 0, self.items[self.i - 1][1]) + 1
            raise InputError(f"{self.source}: line {line}: expected {token!r}, found {got!r}")

    def line(self) -> tuple[list[str], str]:
        """The tokens up to the end of the line (braces may span lines), and the line's text."""
        out: list[str] = []
        start = end = None
        depth = 0
        while self.i < len(self.items):
            tok, s, e = self.items[self.i]
            if tok == "\n" and depth == 0:
                self.i += 1
                if out:
                    break
                continue
            if tok == "}" and depth == 0:
                break  # the end of the enclosing block
            self.i += 1
            if tok == "\n":
                continue
            depth += (tok == "{") - (tok == "}")
            out.append(tok)
            start = s if start is None else start
            end = e
        return out, (self.text[start:end] if start is not None else "")


def read_text_listing(text: str, source: str = "") -> list[NftRuleset]:
    """Every `table … { … }` block in the text."""
    toks = _Tokens(text, source or "nft listing")
    tables = []
    while toks.peek() is not None:
        tok = toks.next()
        if tok == "\n" or tok == ";":
            continue
        if tok != "table":
            raise InputError(f"{toks.source}: not an `nft list` listing (found {tok!r} where a table starts)")
        family = toks.next()
        name = toks.next()
        if name == "{":  # `table NAME {`: the family defaults to ip
            family, name = "ip", family
        else:
            toks.expect("{")
        ruleset = NftRuleset(family=family, name=_unquote(name), source=source, listing="text")
        _table_body(toks, ruleset)
        tables.append(ruleset)
    return tables


def _table_body(toks: _Tokens, ruleset: NftRuleset) -> None:
    while True:
        tok = toks.next()
        if tok == "}":
            return
        if tok in ("\n", ";"):
            continue
        if tok == "comment":
            ruleset.comment = _unquote(toks.next())
        elif tok in ("set", "map"):
            name = _unquote(toks.next())
            toks.expect("{")
            ruleset.sets[name] = _set_body(toks, name, tok == "map")
        elif tok == "chain":
            name = _unquote(toks.next())
            toks.expect("{")
            chain = ruleset.chains.setdefault(name, Chain(name))
            _chain_body(toks, chain, ruleset.table)
        else:  # flowtable, counter, quota, ct helper, …: not kube-proxy's; skip the block
            _skip_block(toks)


def _skip_block(toks: _Tokens) -> None:
    depth = 0
    while True:
        tok = toks.next()
        if tok == "{":
            depth += 1
        elif tok == "}":
            depth -= 1
            if depth <= 0:
                return


def _set_body(toks: _Tokens, name: str, is_map: bool) -> NftSet:
    nset = NftSet(name=name, is_map=is_map, type=())
    while True:
        words, _ = toks.line()
        if not words:
            toks.expect("}")
            return nset
        words = [w for w in words if w != ";"]
        head = words[0]
        if head in ("type", "typeof"):
            spec = words[1:]
            if is_map and ":" in spec:
                cut = spec.index(":")
                nset.map_type = " ".join(spec[cut + 1:])
                spec = spec[:cut]
            nset.type = tuple(w for w in spec if w != ".")
        elif head == "flags":
            nset.flags = tuple(w for w in words[1:] if w != ",")
        elif head == "timeout" and len(words) > 1:
            nset.timeout = parse_duration(words[1])
        elif head == "comment" and len(words) > 1:
            nset.comment = _unquote(words[1])
        elif head == "elements":
            nset.elements = _elements(words[words.index("{") + 1: _last(words, "}")], is_map)


def _chain_body(toks: _Tokens, chain: Chain, table: str) -> None:
    while True:
        words, raw = toks.line()
        if not words:
            toks.expect("}")
            return
        if words[0] == "type" and "hook" in words:
            _chain_header(words, chain)
        elif words[0] == "comment" and len(words) == 2:
            chain.comment = _unquote(words[1])
        elif words[0] == "policy":
            chain.policy = words[1] if len(words) > 1 else None
        else:
            chain.rules.append(parse_rule(words, raw, table, chain.name, len(chain.rules) + 1))


def _chain_header(words: list[str], chain: Chain) -> None:
    """`type filter hook prerouting priority dstnat - 10; policy accept;`"""
    chain.type = words[1]
    chain.hook = words[words.index("hook") + 1]
    if "priority" in words:
        expr = []
        for w in words[words.index("priority") + 1:]:
            if w == ";":
                break
            expr.append(w)
        chain.priority = parse_priority(expr)
    if "policy" in words:
        chain.policy = words[words.index("policy") + 1]


def parse_priority(expr: list[str]) -> int | None:
    total, sign = 0, 1
    for w in expr:
        if w in ("+", "-"):
            sign = 1 if w == "+" else -1
            continue
        if w.lstrip("-").isdigit():
            total += sign * int(w)
        elif w in PRIORITY_NAMES:
            total += sign * PRIORITY_NAMES[w]
        else:
            return None
        sign = 1
    return total


def parse_duration(text: str) -> int | None:
    """nft's `3h`, `10800s`, `1d2h3m4s` (and `…ms`) in whole seconds."""
    units = {"d": 86400, "h": 3600, "m": 60, "s": 1}
    total = 0
    for number, unit in re.findall(r"(\d+)(ms|d|h|m|s)", text):
        total += 0 if unit == "ms" else int(number) * units[unit]
    return total if re.fullmatch(r"(\d+(ms|d|h|m|s))+", text) else None


def _last(words: list[str], token: str) -> int:
    return len(words) - 1 - words[::-1].index(token) if token in words else len(words)


def _split_top(words: list[str], sep: str = ",") -> list[list[str]]:
    parts, cur, depth = [], [], 0
    for w in words:
        if w == sep and depth == 0:
            parts.append(cur)
            cur = []
            continue
        depth += (w == "{") - (w == "}")
        cur.append(w)
    if cur:
        parts.append(cur)
    return parts


def _elements(words: list[str], is_map: bool) -> list[Element]:
    out = []
    for part in _split_top(words):
        comment = None
        if "comment" in part:
            at = part.index("comment")
            comment = _unquote(part[at + 1])
            part = part[:at] + part[at + 2:]
        expires = None
        for cut in ("timeout", "expires"):
            if cut in part:
                at = part.index(cut)
                if cut == "expires" and at + 1 < len(part):
                    expires = parse_duration(part[at + 1])
                part = part[:at] + part[at + 2:]
        value = None
        if is_map and ":" in part:
            at = part.index(":")
            value = _verdict_or_value(part[at + 1:])
            part = part[:at]
        out.append(Element(_concat_value(part), value, comment, expires))
    return out


def _verdict_or_value(words: list[str]):
    if words and words[0] in ("jump", "goto"):
        return Verdict(words[0], _unquote(words[1]))
    if words and (words[0] in VERDICTS or words[0] == "reject"):
        return Verdict(words[0])
    return _concat_value(words)


def _concat_value(words: list[str]):
    parts = [literal(w) for w in words if w != "."]
    return parts[0] if len(parts) == 1 else tuple(parts)


def literal(word: str):
    if word.startswith('"'):
        return _unquote(word)
    if word.isdigit():
        return int(word)
    if word.startswith("0x"):
        try:
            return int(word, 16)
        except ValueError:
            return word
    return word if word.startswith("@") else word.lower()


def _unquote(word: str) -> str:
    if len(word) >= 2 and word[0] == word[-1] == '"':
        return word[1:-1].replace('\\"', '"')
    return word


# --- rules --------------------------------------------------------------------------------------------------------
def parse_rule(words: list[str], raw: str, table: str, chain: str, position: int) -> Rule:
    parser = _RuleParser(words)
    statements = parser.statements()
    return Rule(table=table, chain=chain, position=position, statements=statements, comment=parser.comment,
                raw=raw, packets=parser.packets, bytes=parser.bytes)


class _RuleParser:
    def __init__(self, words: list[str]):
        self.w = words
        self.i = 0
        self.comment: str | None = None
        self.packets: int | None = None
        self.bytes: int | None = None

    def peek(self, ahead: int = 0) -> str | None:
        j = self.i + ahead
        return self.w[j] if j < len(self.w) else None

    def take(self) -> str:
        self.i += 1
        return self.w[self.i - 1]

    def statements(self) -> list:
        out = []
        other: list[str] = []
        while self.peek() is not None:
            start = self.i
            statement = self.statement()
            if statement is None:  # a word svcdoctor does not model: keep it as text
                self.i = start + 1
                other.append(self.w[start])
                continue
            if other:
                out.append(Other(" ".join(other)))
                other = []
            if statement is not True:
                out.append(statement)
        if other:
            out.append(Other(" ".join(other)))
        return out

    def statement(self):
        t = self.peek()
        if t == "comment":
            self.take()
            self.comment = _unquote(self.take())
            return True
        if t == "counter":
            self.take()
            while self.peek() in ("packets", "bytes"):
                what = self.take()
                n = self.take()
                setattr(self, what, int(n) if n.isdigit() else None)
            return True
        if t in ("jump", "goto"):
            self.take()
            return Verdict(t, _unquote(self.take()))
        if t in VERDICTS:
            self.take()
            return Verdict(t)
        if t == "reject":
            self.take()
            if self.peek() == "with":
                while self.peek() not in (None, "comment"):
                    self.take()
            return Verdict("reject")
        if t == "masquerade":
            self.take()
            flags = []
            while self.peek() in ("fully-random", "random", "persistent", ","):
                flag = self.take()
                if flag != ",":
                    flags.append(flag)
            return Masquerade(",".join(flags))
        if t == "dnat":
            return self.dnat()
        if t in ("update", "add") and (self.peek(1) or "").startswith("@"):
            self.take()
            name = self.take()[1:]
            key: tuple[str, ...] = ()
            if self.peek() == "{":
                self.take()
                key = self.selector() or ()
                while self.peek() not in (None, "}"):
                    self.take()
                self.take()
            return SetUpdate(name, key, t)
        if t in SELECTOR_STARTS:
            return self.expression()
        return None

    def selector_one(self) -> str | None:
        t = self.peek()
        if t == "mark":  # kube-proxy's input spelling of meta mark
            self.take()
            return "meta mark"
        if t in TWO_WORD and self.peek(1) is not None:
            return f"{self.take()} {self.take()}"
        if t == "fib":
            self.take()
            flags = []
            while self.peek() in ("saddr", "daddr", "mark", "iif", "oif", "."):
                flags.append(self.take())
            result = self.take()
            return f"fib {' '.join(flags)} {result}"
        if t == "numgen":
            words = [self.take(), self.take()]  # numgen random
            if self.peek() == "mod":
                words += [self.take(), self.take()]
            if self.peek() == "offset":
                offset = [self.take(), self.take()]
                if offset[1] != "0":
                    words += offset
            return " ".join(words)
        return None

    def selector(self) -> tuple[str, ...] | None:
        first = self.selector_one()
        if first is None:
            return None
        key = [first]
        while self.peek() == "." and self.peek(1) in SELECTOR_STARTS:
            self.take()
            key.append(self.selector_one())
        return tuple(key)

    def expression(self):
        key = self.selector()
        if key is None:
            return None
        nxt = self.peek()
        if nxt == "vmap":
            self.take()
            if (self.peek() or "").startswith("@"):
                return VMap(key, map=self.take()[1:])
            return VMap(key, elements=[(k, v if isinstance(v, Verdict) else Verdict("continue"))
                                       for k, v in self.anonymous_map()])
        if nxt == "set" and key == ("meta mark",):
            self.take()
            if self.peek() in ("meta", "mark"):
                self.selector_one()
                op = MARK_OPS.get(self.take(), "|")
                return MarkSet(op, literal(self.take()))
            return MarkSet("=", literal(self.take()))
        mask = None
        if nxt in ("&", "and"):
            self.take()
            mask = literal(self.take())
            nxt = self.peek()
        op = "=="
        if nxt in ("==", "eq"):
            self.take()
        elif nxt in ("!=", "ne"):
            self.take()
            op = "!="
        return Match(key, op, self.value(), mask)

    def value(self):
        t = self.peek()
        if t is None:
            return ""
        if t == "{":
            return [_concat_value(part) for part in _split_top(self.braced())]
        parts = [literal(self.take())]
        while self.peek() == "." and self.peek(1) is not None and self.peek(1) not in SELECTOR_STARTS:
            self.take()
            parts.append(literal(self.take()))
        value = parts[0] if len(parts) == 1 else tuple(parts)
        if self.peek() != ",":
            return value
        items = [value]  # a flag list: ct state established,related
        while self.peek() == "," and self.peek(1) is not None:
            self.take()
            items.append(literal(self.take()))
        return items

    def braced(self) -> list[str]:
        """The words between a `{` (the next word) and the `}` that closes it."""
        self.take()  # {
        words = []
        depth = 1
        while self.peek() is not None:
            w = self.take()
            depth += (w == "{") - (w == "}")
            if depth == 0:
                break
            words.append(w)
        return words

    def anonymous_map(self) -> list[tuple]:
        words = self.braced()
        pairs = []
        for part in _split_top(words):
            if ":" not in part:
                continue
            at = part.index(":")
            pairs.append((_concat_value(part[:at]), _verdict_or_value(part[at + 1:])))
        return pairs

    def dnat(self):
        self.take()
        family = None
        if self.peek() in ("ip", "ip6"):
            family = self.take()
        while self.peek() in ("addr", ".", "port"):  # kube-proxy's `dnat ip addr . port to …`
            self.take()
        if self.peek() != "to":
            return None
        self.take()
        if self.peek() in SELECTOR_STARTS:
            key = self.selector()
            if self.peek() != "map":
                return None
            self.take()
            elements = []
            for k, v in self.anonymous_map():
                dest = v if isinstance(v, tuple) else (v, None)
                elements.append((k, (str(dest[0]), dest[1] if len(dest) > 1 and isinstance(dest[1], int) else None)))
            return Dnat(family, key=key, elements=elements)
        address, port = split_host_port(self.take())
        if self.peek() == "." and (self.peek(1) or "").isdigit():  # `dnat ip to 10.0.0.1 . 80`
            self.take()
            port = int(self.take())
        return Dnat(family, address=address, port=port)


def split_host_port(word: str) -> tuple[str, int | None]:
    """`10.0.0.1:80`, `[fd00::1]:80`, `10.0.0.1`, `fd00::1`."""
    if word.startswith("["):
        host, _, rest = word[1:].partition("]")
        port = rest.lstrip(":")
        return host.lower(), int(port) if port.isdigit() else None
    if word.count(":") == 1:
        host, _, port = word.partition(":")
        return host, int(port) if port.isdigit() else None
    return word.lower(), None
