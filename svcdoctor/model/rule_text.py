"""The one reader of iptables rule text: words, target, options, comment, counters and addresses of a dump line.

Every other module asks here instead of searching rule text itself, so that all of them agree on the spellings
real tools print (see docs/reference/bundle.md for the dump formats):

- `iptables-save -c`: `[PKTS:BYTES] -A CHAIN spec`;
- `iptables -S -v`: `-A CHAIN … -c PKTS BYTES -j TARGET …`;
- `iptables-save` / `iptables -S` / kube-proxy's restore input: `-A CHAIN spec`.

A comment is `--comment "text"` (iptables-save quotes it and escapes `"` and `\\` inside) or `--comment word`.
The string searches here are kept tight on purpose: a big node has 150,000 rules and `check` reads each of them.
"""

from __future__ import annotations

import ipaddress
import re

# `--comment "a \"b\""` or `--comment word`; iptables-save escapes quotes and backslashes inside the quotes
_COMMENT = re.compile(r'--comment (?:"((?:[^"\\]|\\.)*)"|(\S+))')
_ESCAPE = re.compile(r"\\(.)")
# The same two spellings as spans to rewrite in place (collect/redact.py): group 1 the option, group 2 its value.
COMMENT_SPAN = re.compile(r'(--comment )("(?:[^"\\]|\\.)*"|\S+)')
TO_DESTINATION_SPAN = re.compile(r"--to-destination (\S+)")
# kube-proxy's commonest rules as iptables-save prints them, matched whole (model/quick_explain.py: a report of
# 10,000 services reads them without building a Rule); any other spelling goes to the tokenizer below
_PLAIN_IPV4 = r"\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}"
_PLAIN_COMMENT = r'-m comment --comment "[^"\\]*"'
# KUBE-SERVICES: -d IP/32 -p tcp -m comment --comment "ns/name:port cluster IP" -m tcp --dport 80 -j KUBE-SVC-…
PLAIN_ENTRY = re.compile(rf'-d ({_PLAIN_IPV4})(?:/32)? -p (tcp|udp|sctp) '
                         rf'-m comment --comment "([^"\\]*) cluster IP" '
                         rf"-m \2 --dport (\d+) -j (KUBE-SVC-[A-Z0-9]{{16}})")
# KUBE-SVC: ! -s POD_CIDR -d IP/32 -p tcp -m comment --comment "…" -m tcp --dport 80 -j KUBE-MARK-MASQ
PLAIN_SVC_MASQ = re.compile(rf"! -s ({_PLAIN_IPV4}/\d{{1,2}}) -d {_PLAIN_IPV4}(?:/32)? -p (?:tcp|udp|sctp) "
                            rf"{_PLAIN_COMMENT} -m (?:tcp|udp|sctp) --dport \d+ -j KUBE-MARK-MASQ")
# KUBE-SVC: -m comment --comment "… -> IP:PORT" [-m statistic --mode random --probability P] -j KUBE-SEP-…
PLAIN_JUMP = re.compile(rf"{_PLAIN_COMMENT} (?:-m statistic --mode random --probability (\S+) )?"
                        rf"-j (KUBE-SEP-[A-Z0-9]{{16}})")
# KUBE-SEP: -s IP/32 -m comment --comment "…" -j KUBE-MARK-MASQ; -p tcp -m comment --comment "…" -m tcp -j DNAT …
PLAIN_SEP_MASQ = re.compile(rf"-s {_PLAIN_IPV4}(?:/32)? {_PLAIN_COMMENT} -j KUBE-MARK-MASQ")
PLAIN_DNAT = re.compile(rf"-p (?:tcp|udp|sctp) {_PLAIN_COMMENT} -m (?:tcp|udp|sctp) -j DNAT "
                        rf"--to-destination ({_PLAIN_IPV4}:\d+)")
_QUOTED_COMMENT = re.compile(r'--comment "(?:[^"\\]|\\.)*"')

# a line of iptables-save starts with one of these: "# …", "*table", ":CHAIN", "[p:b] -A", "-A", "COMMIT"
_STRAY_SAVE_LINE = re.compile(r"\n[^#*:\[\nC-]")

# kube-proxy's chains declared in a dump (`:KUBE-… - [0:0]`), counted without parsing it (collect/node_rules.py)
KUBE_CHAIN_DECLARATION = re.compile(r"\n:(KUBE-[^\s]+)")


def tokenize(spec: str) -> list[str]:
    """Split a rule into words; a double-quoted string (iptables-save's comments) is one word, unquoted and
    unescaped."""
    if '"' not in spec:
        return spec.split()
    words: list[str] = []
    i, n = 0, len(spec)
    while i < n:
        c = spec[i]
        if c == " " or c == "\t":
            i += 1
            continue
        if c == '"':
            j = i + 1
            buf = []
            while j < n and spec[j] != '"':
                if spec[j] == "\\" and j + 1 < n:
                    j += 1
                buf.append(spec[j])
                j += 1
            words.append("".join(buf))
            i = j + 1
        else:
            j = spec.find(" ", i)
            if j < 0:
                j = n
            words.append(spec[i:j])
            i = j
    return words


def target(spec: str) -> tuple[str | None, bool]:
    """(target, is_goto) of `-j T` / `-g T`, found from the end without tokenizing the whole rule; a target is
    never inside a quoted comment, so a `-j` inside quotes sends us to the tokenizer."""
    jump = spec.rfind(" -j ")
    # a goto after the jump would win; only the tail after the jump needs searching (`check` reads every rule)
    go = spec.find(" -g ", jump + 4) if jump >= 0 else spec.rfind(" -g ")
    idx, goto = (go, True) if go >= 0 else (jump, False)
    if idx < 0:
        if not spec.startswith(("-j ", "-g ")):
            return _target_from_words(spec)
        idx, goto = -1, spec[1] == "g"
    elif spec.find('"', idx) >= 0 and spec.count('"', 0, idx) % 2 == 1:
        return _target_from_words(spec)
    end = spec.find(" ", idx + 4)
    return (spec[idx + 4 :] if end < 0 else spec[idx + 4 : end]), goto


def _inside_quotes(line: str, at: int) -> bool:
    """Whether position `at` is inside a quoted comment. Only a quote after `at` can close one, and kube-proxy's
    comments come before the options read here, so the count is rarely needed (`check` reads every rule)."""
    return line.find('"', at) >= 0 and line.count('"', 0, at) % 2 == 1


def _target_from_words(spec: str) -> tuple[str | None, bool]:
    words = tokenize(spec)
    for i, w in enumerate(words):
        if w in ("-j", "--jump", "-g", "--goto") and i + 1 < len(words):
            return words[i + 1], w in ("-g", "--goto")
    return None, False


def target_name(line: str) -> str | None:
    """Just the target of a line (None when the rule has none)."""
    at = line.rfind(" -j ")
    if at < 0 or line.find(" -g ", at + 4) >= 0 or line.find('"', at) >= 0:
        return target(line)[0]  # a goto, no jump, or a quote after it: the careful way
    end = line.find(" ", at + 4)
    return line[at + 4 :] if end < 0 else line[at + 4 : end]


def option(line: str, name: str) -> str | None:
    """The word after ` NAME ` (e.g. "-d", "--dport"), None if absent. The first one counts; kube-proxy's comments
    never hold an option, and a quoted comment that did is skipped."""
    needle = f" {name} "
    at = line.find(needle)
    while at >= 0 and line.find('"', at) >= 0 and line.count('"', 0, at) % 2 == 1:  # inside a quoted comment
        at = line.find(needle, at + 1)
    if at < 0:
        return None
    start = at + len(needle)
    end = line.find(" ", start)
    return line[start:] if end < 0 else line[start:end]


def jump_to(line: str, prefix: str) -> tuple[str, float | None, bool] | None:
    """(target, `--probability` or None, whether it is a `--rcheck` affinity check) of a rule that jumps to a chain
    named `prefix…` (a balancing chain's jump to an endpoint chain, kube-proxy's KUBE-SEP-); None for any other
    rule. One call and plain string searches: this is the hot loop of `check`, every endpoint of every port on
    every node. A comment cannot hold ` -j CHAIN` and come after the real jump, so the last one is the target."""
    at = line.rfind(" -j " + prefix)
    if at < 0:
        return None
    end = line.find(" ", at + 4)
    name = line[at + 4 :] if end < 0 else line[at + 4 : end]
    if " --rcheck" in line:
        return name, None, True
    at = line.find(" --probability ")
    if at < 0:
        return name, None, False
    end = line.find(" ", at + 15)
    try:
        return name, float(line[at + 15 :] if end < 0 else line[at + 15 : end]), False
    except ValueError:
        return name, None, False


def has_option(line: str, name: str) -> bool:
    """Whether the rule has the flag ` NAME` (e.g. "--rcheck", "--random-fully"), outside a quoted comment."""
    needle = f" {name}"
    at = line.find(needle)
    while at >= 0:
        end = at + len(needle)
        if (end == len(line) or line[end] == " ") and not _inside_quotes(line, at):
            return True
        at = line.find(needle, at + 1)
    return False


def mentions(line: str, text: str) -> bool:
    """Whether `text` (a service's "ns/name") occurs anywhere in the rule: a cheap test before its comment is
    read, when one service's rules are looked for among a big node's."""
    return text in line


def option_of_words(words: list[str], *names: str) -> tuple[str | None, bool]:
    """(value, negated) of the first of `names` in a rule's words (from `words()`)."""
    for i, w in enumerate(words[:-1]):
        if w in names:
            return words[i + 1], i > 0 and words[i - 1] == "!"
    return None, False


def comment(line: str) -> str | None:
    """The rule's `--comment`, unquoted and unescaped; None when it has none."""
    m = _COMMENT.search(line)
    if m is None:
        return None
    if m.group(1) is not None:
        text = m.group(1)
        return _ESCAPE.sub(r"\1", text) if "\\" in text else text
    return m.group(2)


def counters(line: str) -> tuple[int, int] | None:
    """(packets, bytes) of a dump line, `[p:b] -A …` or `… -c p b …`; None when the line has none (or they are not
    numbers)."""
    if line.startswith("["):
        close = line.find("]")
        pk, _, by = line[1:close].partition(":")
        if close > 0 and pk.isdigit() and by.isdigit():
            return int(pk), int(by)
        return None
    at = line.find(" -c ")
    if at < 0 or line.count('"', 0, at) % 2 == 1:
        return None
    parts = line[at + 4 :].split(" ", 2)
    if len(parts) >= 2 and parts[0].isdigit() and parts[1].isdigit():
        return int(parts[0]), int(parts[1])
    return None


def packets(line: str) -> int:
    """The packet counter of a dump line; 0 when the dump has none."""
    if line.startswith("[0:0]"):
        return 0  # most rules of a dump never matched a packet: the common case, answered at once
    found = counters(line)
    return found[0] if found is not None else 0


def strip_counters(line: str) -> str:
    """The line without its counters, as `iptables-save` without -c prints it (`-A CHAIN spec`)."""
    if line.startswith("["):
        close = line.find("] ")
        return line[close + 2 :].lstrip() if close > 0 else line
    at = line.find(" -c ")
    if at >= 0 and line.count('"', 0, at) % 2 == 0:
        parts = line[at + 4 :].split(" ", 2)
        if len(parts) >= 2 and parts[0].isdigit() and parts[1].isdigit():
            return line[:at] + (" " + parts[2] if len(parts) > 2 else "")
    return line


def split_counted_line(line: str) -> tuple[str, int | None, int | None]:
    """(line without counters, packets, bytes) of a dump line; counters None when it has none."""
    found = counters(line)
    if found is None:
        return line, None, None
    return strip_counters(line), found[0], found[1]


def words(line: str) -> list[str]:
    """A dump line's words without its counters (both spellings), quoted strings as one word."""
    return tokenize(strip_counters(line.strip()))


def is_source_conditional(line: str) -> bool:
    """Whether a rule picks its packets by source (pod CIDR, the node itself, an interface)."""
    return " -s " in line or "--src-type" in line or " -i " in line


def address(value: str | None) -> str:
    """An address as one spelling: iptables-save prints `-d 10.96.0.1/32` where kube-proxy wrote `-d 10.96.0.1`,
    and IPv6 has many spellings (iptables prints the short one)."""
    if not value:
        return ""
    if value.endswith("/32") or value.endswith("/128"):
        value = value.rsplit("/", 1)[0]
    if ":" in value and "/" not in value:
        try:
            return str(ipaddress.ip_address(value))
        except ValueError:
            pass
    return value


def network(value: str | None) -> str:
    """A source range as one spelling: kube-proxy 1.28 writes the user's "10.0.0.1/24", iptables and 1.30+ print
    "10.0.0.0/24"; a single address has no mask."""
    try:
        return address(str(ipaddress.ip_network(value or "", strict=False)))
    except ValueError:
        return value or ""


def host_port(ip: str, port: int | str) -> str:
    """Go's net.JoinHostPort, as kube-proxy spells an endpoint: `10.0.0.1:80`, `[fd00::1]:80`."""
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def split_host_port(text: str) -> tuple[str, str]:
    """`10.0.0.1:80` -> ("10.0.0.1", "80"); `[fd00::1]:80` -> ("fd00::1", "80"); no port -> (text, "")."""
    if text.startswith("["):
        close = text.find("]")
        if close > 0:
            return text[1:close], text[close + 2 :] if text[close + 1 : close + 2] == ":" else ""
    if text.count(":") == 1:
        host, _, port = text.partition(":")
        return host, port
    return text, ""


def hex_mark(value: str | None) -> int | None:
    """0x4000, 0x00004000 or 0x4000/0x4000 (value/mask) -> 16384."""
    try:
        return int(value.split("/")[0], 16) if value else None
    except ValueError:
        return None


UNPLAIN = object()  # plain_comment's answer for a spelling only the tokenizer reads


def plain_comment(spec: str):
    """A rule's comment when it is spelled the plain way (one quoted `-m comment --comment "…"`, as iptables-save and
    kube-proxy write it), None when the rule has no comment, UNPLAIN for any other spelling (ask the tokenizer)."""
    at = spec.find("--comment ")
    if at < 0:
        return None if "--comment" not in spec else UNPLAIN
    if spec[at + 10 : at + 11] == '"' and spec.endswith("-m comment ", 0, at) and spec.find("--comment", at + 10) < 0:
        m = _QUOTED_COMMENT.match(spec, at)
        if m is not None and spec[m.end() : m.end() + 2] in ("", " -", " !"):
            return comment(spec[at : m.end()])
    return UNPLAIN


def save_lines_well_formed(text: str) -> bool:
    """No line iptables-save would not print (one search over the text: ~20 ms on a 150,000-line dump); what a
    garbled read of docker's exec stream leaves behind (collect/node_rules.py) is caught here."""
    return _STRAY_SAVE_LINE.search(text) is None
