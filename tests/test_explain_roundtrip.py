"""Explanations from what the kernel prints equal explanations from what kube-proxy wrote: each case is loaded
into a network namespace with iptables-restore and dumped back (`iptables-save -c` and `iptables -S -v`), with
the nft and the legacy backend."""

import pytest

from kube_proxy_cases import iter_cases
from netns import Namespace, require_netns
from svcdoctor.commands.explain import explain
from svcdoctor.inputs import LoadedInput
from svcdoctor.collect.snapshot import ClusterSnapshot, NodeCapture
from svcdoctor.model.parse import parse_rules
from svcdoctor.render.json_doc import explain_document

pytestmark = pytest.mark.netns
CASES = [c for c in iter_cases()]


def loaded_from(text: str, case) -> LoadedInput:
    rules = parse_rules(text, case.name)
    snap = ClusterSnapshot(cluster=None, nodes=[NodeCapture(name="node", iptables_save=text, internal_ip=case.node_ip)],
                           api=case.api_objects())
    return LoadedInput(snap, {"node": rules}, {}, {}, case.cluster_model(), [])


def essence(doc: dict) -> list:
    """What an explanation says, without rule spellings and counters (which the kernel rewrites / adds)."""
    out = []
    for port in doc["ports"]:
        for node in port["nodes"]:
            for e in node["entries"]:
                out.append((port["servicePortName"], e["kind"], e["destination"], e["verdict"], tuple(e["path"]),
                            e["masquerade"], round(e["unmatchedShare"], 9),
                            tuple((x["ip"], x["port"], x["chain"], round(x["probability"], 9),
                                   None if x["ruleProbability"] is None else round(x["ruleProbability"], 9),
                                   x["masquerade"], x["local"]) for x in e["endpoints"])))
    return sorted(out, key=repr)


def explanations(text: str, case) -> dict:
    loaded = loaded_from(text, case)
    result = {}
    for svc in case.items("services"):
        ns, name = svc["metadata"]["namespace"], svc["metadata"]["name"]
        doc = explain_document(explain(loaded, name, ns))
        result[f"{ns}/{name}"] = (essence(doc), sorted((f["id"], f["node"]) for f in doc["findings"]))
    return result


@pytest.mark.parametrize("backend", ["nft", "legacy"])
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_kernel_dumps_explain_like_the_original(case, backend):
    require_netns()
    original = explanations(case.restore_text, case)
    with Namespace() as ns:
        ns.restore(case.restore_text, backend=backend)
        saved = ns.save(backend=backend, counters=True)
        listed = ns.list_rules("nat", backend=backend) + ns.list_rules("filter", backend=backend)
    assert explanations(saved, case) == original
    assert explanations(listed, case) == original
