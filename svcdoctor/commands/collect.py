"""`svcdoctor collect --out PATH`: write what was read (every node's raw rules, the API objects) as a bundle
(`docs/reference/bundle-format.md`), to read back later with --bundle."""

from __future__ import annotations

from svcdoctor.collect.bundle import write_bundle
from svcdoctor.inputs import InputOptions, read_snapshot
from svcdoctor.results import CollectResult


def collect(source: InputOptions, out_path: str, redact: bool = False) -> CollectResult:
    # the raw snapshot, not the parsed input: a bundle keeps exactly what the nodes printed, unreadable parts too
    snapshot = read_snapshot(source)
    if source.nodes:
        snapshot.nodes = [n for n in snapshot.nodes if n.name in set(source.nodes)]
    if redact:  # the bundle holds only pseudonyms; the mapping is written beside it (collect/redact.py)
        from svcdoctor.collect.redact import write_redacted

        written, _, _ = write_redacted(snapshot, out_path)
        return CollectResult(written, snapshot)
    return CollectResult(write_bundle(snapshot, out_path), snapshot)
