"""The Examples section of every command's --help, kept as data so that tests/test_help_examples.py runs each one
on the demo bundle (with --demo added where the example reads a live cluster) and checks its exit status, as
tests/test_docs.py runs the README's. A line after `|` is the shell's, not svcdoctor's; the test runs the part
before it."""

from __future__ import annotations

from typing import NamedTuple


class Example(NamedTuple):
    line: str  # what the user types
    says: str  # what it does, one line
    demo_status: int  # its exit status on the demo bundle (with --demo added)


EXAMPLES: dict[str, list[Example]] = {
    "explain": [
        Example("svcdoctor explain svc-clusterip --demo", "try it on the demo bundle shipped with svcdoctor", 0),
        Example("svcdoctor explain web -n shop", "a service of the live kind cluster, by name", 2),
        Example("svcdoctor explain svc/svc-nodeport --port 32624", "kubectl's TYPE/NAME; one port, by node port", 0),
        Example("svcdoctor explain 10.200.1.73:9000", "whatever service a ClusterIP:port belongs to", 0),
        Example("svcdoctor explain :32624", "whatever service a node port belongs to", 0),
        Example("svcdoctor explain kube-dns -A -o json", "any namespace; the JSON document", 0),
    ],
    "trace": [
        Example("svcdoctor trace --dst 10.200.1.73:9000 --demo", "a packet to a ClusterIP, on every node", 0),
        Example("svcdoctor trace --dst 172.18.0.3:32624 --src 172.18.0.100 --node myk8s-worker",
                "a client outside the cluster, to a node port of one node", 0),
    ],
    "check": [
        Example("svcdoctor check --demo", "every service on every node (the demo has one planted error: exit 1)", 1),
        Example("svcdoctor check -n kube-system --fail-on warning", "one namespace; warnings fail too", 0),
        Example("svcdoctor check -o json | jq -r '.findings[].fix'", "what to do about each finding", 1),
    ],
    "services": [
        Example("svcdoctor services --demo", "the services the rules hold, in the default namespace", 0),
        Example("svcdoctor svc -A -o wide", "every namespace, with the nodes and endpoint addresses", 0),
    ],
    "nodes": [
        Example("svcdoctor nodes --demo", "one row per node", 0),
        Example("svcdoctor nodes | grep worker2", "a pipe gets whole lines: grep, awk and cut work", 0),
    ],
    "collect": [
        Example("svcdoctor collect --out myk8s.tar.gz", "a bundle to attach to a ticket (read it with --bundle)", 0),
    ],
    "graph": [
        Example("svcdoctor graph svc-local -o svg > svc-local.svg",
                "a picture of one service's chains on its busiest node, to open in a browser", 0),
        Example("svcdoctor graph svc-clusterip --node myk8s-worker -o mermaid", "for a Markdown page", 0),
    ],
    "report": [
        Example("svcdoctor report --demo", "one HTML file to attach to a ticket (named after the cluster and time)",
                0),
        Example("svcdoctor report --out myk8s.html", "the live cluster, to a file of your naming", 0),
    ],
    "redact": [
        Example("svcdoctor redact myk8s.tar.gz myk8s-redacted.tar.gz",
                "pseudonyms for every name and address; the mapping stays beside OUT, with you", 2),
    ],
    "watch": [
        Example("svcdoctor watch web -n shop", "live counters per endpoint, every 2 seconds (Ctrl-C stops)", 2),
        Example("svcdoctor watch --count 5 -o json", "the busiest rules, five samples, one JSON line each", 2),
        Example("svcdoctor watch web -n shop --source conntrack", "new connections from conntrack, not counters", 2),
    ],
    "completion": [
        Example("source <(svcdoctor completion bash)", "tab completion in this bash", 0),
        Example("svcdoctor completion zsh > \"${fpath[1]}/_svcdoctor\"", "zsh, for every new shell", 0),
        Example("svcdoctor completion fish > ~/.config/fish/completions/svcdoctor.fish", "fish", 0),
    ],
}


def epilog(command: str) -> str:
    """The Examples section, as click prints it unwrapped (a paragraph that starts with \\b)."""
    lines = ["\b", "Examples:"]
    for e in EXAMPLES.get(command, []):
        lines.append(f"  # {e.says}")
        lines.append(f"  {e.line}")
    return "\n".join(lines)
