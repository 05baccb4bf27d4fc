"""Reads what `nft -j list table ip kube-proxy` prints (libnftables JSON, schema version 1) into NftRuleset objects.

The JSON gives every expression as a tree; only the shapes kube-proxy writes are turned into statements
(ruleset.py), anything else is kept as `Other`. Shapes as nft 1.0.x prints them (see
docs/explanation/kube-proxy-nftables.md): map elements with comments are `{"elem": {"val": …, "comment": …}}`, the
1.36 DNAT map is `{"dnat": {"family": "ip", "addr": {"map": {"key": {"numgen": …}, "data": {"set": […]}}}}}`.
"""

from __future__ import annotations

import json

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

VERDICT_KINDS = ("jump", "goto", "return", "drop", "accept", "continue", "reject")


def looks_like_json(text: str) -> bool:
    return text.lstrip()[:1] == "{"


def read_json_listing(text: str | bytes, source: str = "") -> list[NftRuleset]:
    """Every table in one or more `nft -j list …` documents (a bundle's nftables.json holds the ip table's and the
    ip6 table's listings one after the other)."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    items: list = []
    for doc in _documents(text, source):
        part = doc.get("nftables") if isinstance(doc, dict) else None
        if not isinstance(part, list):
            raise InputError(f"{source or 'nft JSON'}: not an `nft -j` listing (no \"nftables\" array)")
        items.extend(part)
    tables: dict[tuple[str, str], NftRuleset] = {}
    version = None

    def table_of(obj: dict) -> NftRuleset:
        key = (obj.get("family", "ip"), obj.get("table") or obj.get("name"))
        if key not in tables:
            tables[key] = NftRuleset(family=key[0], name=key[1], source=source, listing="json", nft_version=version)
        return tables[key]

    for item in items:
        if not isinstance(item, dict) or len(item) != 1:
            continue
        ((kind, obj),) = item.items()
        if kind == "metainfo":
            version = obj.get("version")
        elif kind == "table":
            table_of(obj).comment = obj.get("comment")
        elif kind in ("set", "map"):
            nset = _set(obj, kind == "map")
            table_of(obj).sets[nset.name] = nset
        elif kind == "chain":
            ruleset = table_of(obj)
            chain = ruleset.chains.setdefault(obj["name"], Chain(obj["name"]))
            chain.type, chain.hook = obj.get("type"), obj.get("hook")
            chain.priority = obj.get("prio") if isinstance(obj.get("prio"), int) else None
            chain.policy, chain.comment = obj.get("policy"), obj.get("comment")
        elif kind == "rule":
            ruleset = table_of(obj)
            chain = ruleset.chains.setdefault(obj["chain"], Chain(obj["chain"]))
            chain.rules.append(_rule(obj, ruleset.table, len(chain.rules) + 1))
    return list(tables.values())


def _documents(text: str, source: str) -> list:
    decoder = json.JSONDecoder()
    docs, at = [], 0
    while True:
        while at < len(text) and text[at].isspace():
            at += 1
        if at >= len(text):
            return docs
        try:
            doc, at = decoder.raw_decode(text, at)
        except ValueError as e:
            raise InputError(f"{source or 'nft JSON'}: not valid JSON ({e})") from None
        docs.append(doc)


def _set(obj: dict, is_map: bool) -> NftSet:
    typ = obj.get("type")
    types = tuple(typ) if isinstance(typ, list) else (typ,) if typ else ()
    flags = obj.get("flags") or ()
    nset = NftSet(
        name=obj["name"],
        is_map=is_map,
        type=types,
        map_type=obj.get("map") if is_map else None,
        flags=tuple(flags) if isinstance(flags, list) else (flags,),
        timeout=obj.get("timeout") if isinstance(obj.get("timeout"), int) else None,
        comment=obj.get("comment"),
    )
    for raw in obj.get("elem") or ():
        if is_map and isinstance(raw, list) and len(raw) == 2:
            key, comment = _element_key(raw[0])
            nset.elements.append(Element(key, _map_value(raw[1]), comment))
        else:
            key, comment = _element_key(raw)
            nset.elements.append(Element(key, None, comment, _expires(raw)))
    return nset


def _expires(raw) -> int | None:
    """The seconds an element has left (`{"elem": {"val": …, "timeout": 10800, "expires": 10790}}`)."""
    inner = raw.get("elem") if isinstance(raw, dict) else None
    expires = inner.get("expires") if isinstance(inner, dict) else None
    return expires if isinstance(expires, int) else None


def _element_key(raw) -> tuple:
    if isinstance(raw, dict) and "elem" in raw:
        inner = raw["elem"]
        return _value(inner.get("val")), inner.get("comment")
    return _value(raw), None


def _map_value(raw):
    verdict = _verdict(raw)
    return verdict if verdict is not None else _value(raw)


def _verdict(raw) -> Verdict | None:
    if isinstance(raw, dict) and len(raw) == 1:
        ((kind, arg),) = raw.items()
        if kind in VERDICT_KINDS:
            return Verdict(kind, arg.get("target") if isinstance(arg, dict) else None)
    return None


def _value(raw):
    """A literal, a tuple (concatenation), "a/len" (prefix), "a-b" (range), "@set", or a list (anonymous set)."""
    if isinstance(raw, (str, int)):
        return raw.lower() if isinstance(raw, str) and not raw.startswith("@") else raw
    if isinstance(raw, list):
        return [_value(v) for v in raw]
    if isinstance(raw, dict):
        if "concat" in raw:
            return tuple(_value(v) for v in raw["concat"])
        if "prefix" in raw:
            return f"{raw['prefix']['addr']}/{raw['prefix']['len']}"
        if "range" in raw:
            low, high = raw["range"]
            return f"{_value(low)}-{_value(high)}"
        if "set" in raw:
            inner = raw["set"]
            return [_value(v) for v in inner] if isinstance(inner, list) else [_value(inner)]
        if "elem" in raw:
            return _value(raw["elem"].get("val"))
    return json.dumps(raw)


def _selector(raw) -> tuple[tuple[str, ...], int | None] | None:
    """An expression's key as selector texts (one per part of a concatenation) and a mask, or None."""
    if not isinstance(raw, dict) or len(raw) != 1:
        return None
    ((kind, arg),) = raw.items()
    if kind == "concat":
        parts = [_selector(p) for p in arg]
        if any(p is None or p[1] is not None for p in parts):
            return None
        return tuple(p[0][0] for p in parts), None
    if kind == "&" and isinstance(arg, list) and len(arg) == 2 and isinstance(arg[1], int):
        inner = _selector(arg[0])
        return (inner[0], arg[1]) if inner is not None else None
    text = _single_selector(kind, arg)
    return ((text,), None) if text else None


def _single_selector(kind: str, arg) -> str | None:
    if kind == "payload" and isinstance(arg, dict):
        return f"{arg.get('protocol')} {arg.get('field')}"
    if kind in ("meta", "ct") and isinstance(arg, dict):
        return f"{kind} {arg.get('key')}"
    if kind == "fib" and isinstance(arg, dict):
        flags = arg.get("flags") or []
        flags = [flags] if isinstance(flags, str) else flags
        return f"fib {' . '.join(flags)} {arg.get('result')}"
    if kind == "numgen" and isinstance(arg, dict):
        offset = f" offset {arg['offset']}" if arg.get("offset") else ""
        return f"numgen {arg.get('mode')} mod {arg.get('mod')}{offset}"
    return None


def _rule(obj: dict, table: str, position: int) -> Rule:
    rule = Rule(table=table, chain=obj["chain"], position=position, statements=[], comment=obj.get("comment"),
                handle=obj.get("handle"))
    for expr in obj.get("expr") or ():
        statement = _statement(expr, rule)
        if statement is not None:
            rule.statements.append(statement)
    return rule


def _statement(expr: dict, rule: Rule):
    if not isinstance(expr, dict) or len(expr) != 1:
        return Other(json.dumps(expr))
    ((kind, arg),) = expr.items()
    if kind in VERDICT_KINDS:
        return Verdict(kind, arg.get("target") if isinstance(arg, dict) else None)
    if kind == "match":
        key = _selector(arg.get("left"))
        if key is None:
            return Other(json.dumps(expr))
        op = "!=" if arg.get("op") == "!=" else "=="
        return Match(key[0], op, _value(arg.get("right")), key[1])
    if kind == "vmap":
        key = _selector(arg.get("key"))
        data = arg.get("data")
        if key is None:
            return Other(json.dumps(expr), terminal=True)
        if isinstance(data, str):
            return VMap(key[0], map=data.lstrip("@"))
        pairs = data.get("set") if isinstance(data, dict) else None
        return VMap(key[0], elements=[(_value(k), _verdict(v) or Verdict("continue")) for k, v in pairs or ()])
    if kind == "dnat":
        return _dnat(arg, expr)
    if kind == "mangle":
        return _mangle(arg, expr)
    if kind == "masquerade":
        flags = (arg or {}).get("flags") or ""
        return Masquerade(" ".join(flags) if isinstance(flags, list) else flags)
    if kind == "set" and isinstance(arg, dict) and arg.get("op") in ("update", "add"):
        key = _selector(arg.get("elem"))
        return SetUpdate(arg.get("set", "").lstrip("@"), key[0] if key else (), arg["op"])
    if kind == "counter":
        rule.packets, rule.bytes = (arg or {}).get("packets"), (arg or {}).get("bytes")
        return None
    return Other(json.dumps(expr))


def _dnat(arg: dict, expr: dict):
    family = arg.get("family")
    addr = arg.get("addr")
    if isinstance(addr, dict) and "map" in addr:
        key = _selector(addr["map"].get("key"))
        data = addr["map"].get("data")
        pairs = data.get("set") if isinstance(data, dict) else None
        if key is None or pairs is None:
            return Other(json.dumps(expr), terminal=True)
        elements = []
        for k, v in pairs:
            dest = _value(v)
            dest = dest if isinstance(dest, tuple) else (dest, None)
            elements.append((_value(k), (str(dest[0]), dest[1] if len(dest) > 1 else None)))
        return Dnat(family, key=key[0], elements=elements)
    if not isinstance(addr, str):
        return Other(json.dumps(expr), terminal=True)
    port = arg.get("port")
    return Dnat(family, address=addr, port=port if isinstance(port, int) else None)


def _mangle(arg: dict, expr: dict):
    key = _selector(arg.get("key"))
    value = arg.get("value")
    if key is None or key[0] != ("meta mark",):
        return Other(json.dumps(expr))
    if isinstance(value, int):
        return MarkSet("=", value)
    if isinstance(value, dict) and len(value) == 1:
        op, operands = next(iter(value.items()))
        if op in ("|", "^", "&") and isinstance(operands, list) and isinstance(operands[-1], int):
            return MarkSet(op, operands[-1])
    return Other(json.dumps(expr))
