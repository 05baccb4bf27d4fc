"""Reading kube-proxy's nftables tables on a node (nftables mode). Read-only by construction: the only commands are
`nft list tables` (names only), `nft -j list table ip kube-proxy` and `nft -j list table ip6 kube-proxy`, falling
back to `nft list table …` (text) on nft builds without JSON support; never `nft list ruleset` (other components'
tables are not ours to read, and older nft binaries crash printing newer ones).

`read_nft_tables` takes a `run(argv) -> (exit status, stdout, stderr)` so that docker exec (collect/node_rules.py)
and, later, pods/exec can share it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

FAMILIES = ("ip", "ip6")
NOT_INSTALLED = "nft is not installed on the node"
Run = Callable[[list[str]], tuple[int, str, str]]


LIST_TABLES = ["nft", "list", "tables"]  # the tables' names only: never `nft list ruleset`


def list_command(family: str, as_json: bool) -> list[str]:
    return ["nft"] + (["-j"] if as_json else []) + ["list", "table", family, "kube-proxy"]


@dataclass(slots=True)
class NftTables:
    json: str | None = None  # the JSON documents of the tables found, one per line
    text: str | None = None  # the text listings, when nft has no JSON
    warnings: list[str] = field(default_factory=list)
    error: str | None = None  # nft could not run at all


def _no_table(stderr: str) -> bool:
    return "No such file or directory" in stderr or "does not exist" in stderr


def _no_json(stderr: str) -> bool:
    text = stderr.lower()
    return "json" in text and ("not compiled" in text or "support" in text or "unrecognized" in text) or \
        "invalid option" in text


def _not_found(output: str) -> bool:
    """No nft on the node: a shell's "nft: not found", or docker's (exit 126, on stdout) `OCI runtime exec failed:
    … exec: "nft": executable file not found in $PATH`."""
    return "not found" in output and "nft" in output


def read_nft_tables(run: Run) -> NftTables:
    """kube-proxy's tables of both families. `nft list tables` (names only, one exec) says which families have one,
    so a node without them (iptables mode) costs one exec; where it cannot tell, both are asked for."""
    try:
        code, stdout, stderr = run(LIST_TABLES)
    except Exception as exc:  # docker errors, timeouts: the node's iptables reading decides what failed
        return NftTables(error=f"nft: {exc}")
    if code == 127 or code != 0 and _not_found(stdout + stderr):
        return NftTables(error=NOT_INSTALLED)
    families = FAMILIES
    if code == 0 and stdout.rstrip():
        names = {tuple(line.split()[:3]) for line in stdout.splitlines()}
        families = tuple(f for f in FAMILIES if ("table", f, "kube-proxy") in names)
    elif code == 0:
        families = ()  # no table at all
    parts = []
    for family in families:
        parts.append(read_nft_family(run, family))
        if parts[-1].error:
            break
    return merge_families(parts)


def read_nft_family(run: Run, family: str) -> NftTables:
    """`nft -j list table FAMILY kube-proxy`, or its text where this nft has no JSON."""
    out = NftTables()
    try:
        code, stdout, stderr = run(list_command(family, True))
        as_json = not (code != 0 and _no_json(stderr))
        if not as_json:  # this nft has no JSON: read the text listing instead
            code, stdout, stderr = run(list_command(family, False))
    except Exception as exc:  # docker errors, timeouts: the node's iptables reading decides what failed
        out.error = f"nft: {exc}"
        return out
    if code == 127 or code != 0 and _not_found(stdout + stderr):
        out.error = NOT_INSTALLED
    elif code != 0:
        if not _no_table(stderr):
            out.warnings.append(f"{' '.join(list_command(family, as_json))} exited {code}: "
                                f"{(stderr.strip() or 'no output').splitlines()[0][:300]}")
    elif as_json:
        out.json = stdout.strip() + "\n"
    else:
        out.text = stdout.strip() + "\n"
    return out


def merge_families(parts: list[NftTables]) -> NftTables:
    """The families' reads as one: the first error (nft not there, exec failed) stands for the node."""
    out = NftTables()
    for part in parts:
        if part.error:
            return NftTables(error=part.error, warnings=part.warnings)
        out.warnings.extend(part.warnings)
    docs = [p.json.strip() for p in parts if p.json]
    texts = [p.text.strip() for p in parts if p.text]
    out.json = "\n".join(docs) + "\n" if docs else None
    out.text = "\n".join(texts) + "\n" if texts else None
    return out


def docker_runner(container, attempts: int = 3) -> Run:
    """`run` through docker's exec_run (argv only). docker-py now and then misreads an exec's multiplexed stream
    ("N is not a valid stream", docker/docker-py#3160) or ends it early; the command only reads, so it is asked
    again, as collect/node_rules.py read_backend does. A listing that does not end as nft ends one ("}"), or a
    failure without a word (nft always says why), counts as cut short."""
    def run(argv: list[str]) -> tuple[int, str, str]:
        for attempt in range(attempts):
            try:
                result = container.exec_run(argv, demux=True)
            except ValueError:
                if attempt == attempts - 1:
                    raise
                continue
            stdout, stderr = result.output if isinstance(result.output, tuple) else (result.output, None)
            out, err = (stdout or b"").decode("utf-8", "replace"), (stderr or b"").decode("utf-8", "replace")
            listing = argv[-3:-2] == ["table"]  # a table's listing ends with "}"; `nft list tables` does not
            cut = (listing and not out.rstrip().endswith("}")) if result.exit_code == 0 else not (out + err).strip()
            if cut and attempt < attempts - 1:
                continue
            return result.exit_code, out, err
        raise AssertionError("unreachable")  # the loop returns or raises on its last attempt

    return run


def attach_nftables(capture, tables: NftTables) -> None:
    """Put what was read into the node's capture. A node where nft answered and has no kube-proxy table gets an
    empty listing ("" rather than None, which means not read): collect/live.py tells its mode by that."""
    capture.warnings.extend(w for w in tables.warnings if w not in capture.warnings)
    if tables.error:
        if tables.error != NOT_INSTALLED:  # (a node without nft runs no nftables mode: nothing to say)
            capture.warnings.append(f"{tables.error} (kube-proxy's nftables tables not read)")
        return
    if not (tables.json or tables.text):
        capture.nftables_json = ""
        return
    capture.nftables_json, capture.nftables_text = tables.json, tables.text
    if capture.proxy_mode in (None, ""):
        capture.proxy_mode = "nftables"
