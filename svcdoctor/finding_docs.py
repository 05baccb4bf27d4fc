"""What to do about each finding: a one-line fix and the page that explains it, keyed by finding id (the ids are
`svcdoctor/checks/findings.py: CATALOGUE`). The fixes are the **Fix** paragraphs of docs/reference/findings.md in
one line; `doc` is that page's section for the id, `runbook` the runbook that walks through the symptom, where one
does. tests/test_finding_docs.py checks that every catalogued id has a fix and that every anchor exists.

An id that is not here yet (a check added later) still gets its page: every section of findings.md has an anchor
named after its id.
"""

from __future__ import annotations

FINDINGS_PAGE = "docs/reference/findings.md"
RESTART = "restart kube-proxy on the node (kubectl -n kube-system delete pod -l k8s-app=kube-proxy " \
          "--field-selector spec.nodeName=NODE)"

# id -> (one-line fix, runbook under docs/runbooks/ or None); the page is docs/reference/findings.md#ID (an anchor
# named after the id, above its heading)
FIXES: dict[str, tuple[str, str | None]] = {
    "no-endpoints": (
        "make the pods ready (kubectl describe pod, readiness probe), or fix the Service's selector / targetPort",
        "service-times-out-vs-connection-refused.md"),
    "etp-local-no-local-endpoints": (
        "send external clients only to nodes with a ready pod (an LB with health checks), run a pod on every node, "
        "or set externalTrafficPolicy: Cluster if the client IP does not matter",
        "nodeport-works-on-some-nodes-only.md"),
    "itp-local-no-local-endpoints": ("run the pods as a DaemonSet, or set internalTrafficPolicy: Cluster", None),
    "stale-endpoint": (f"{RESTART}, and read its log for why it stopped syncing", "traffic-goes-to-an-old-pod.md"),
    "missing-endpoint": (f"{RESTART}, and read its log for why it stopped syncing", "traffic-goes-to-an-old-pod.md"),
    "missing-service-rules": (f"{RESTART}; check `svcdoctor nodes` for the node's backend and proxy mode", None),
    "missing-entry": (RESTART, None),
    "stale-entry": (RESTART, None),
    "policy-mismatch": (f"{RESTART}; if the rules were written by hand or by another tool, remove that",
                        "client-ip-is-not-preserved.md"),
    "uneven-split": (f"{RESTART}, and find what edited the rules", "one-pod-gets-all-the-traffic.md"),
    "orphan-chain": (f"{RESTART}: a full sync removes the chains it does not know", None),
    "hash-mismatch": (f"find what wrote the rules; {RESTART}", None),
    "node-drift": ("restart kube-proxy on the odd node", None),
    "no-kube-proxy-rules": ("get kube-proxy running on the node (its log says why it is not)", None),
    "proxy-mode-mismatch": ("set the mode in the kube-proxy ConfigMap (mode:) and restart kube-proxy on every node",
                            None),
    "stale-iptables-rules": ("run `kube-proxy --cleanup` in iptables mode on the node (or flush and delete its "
                             "KUBE-* chains), then restart kube-proxy", None),
    "kube-proxy-replaced": ("nothing to fix: read the Service routing with the replacement's own tools (cilium-dbg "
                            "service list)", None),
    "nft-without-json": ("nothing to fix: svcdoctor reads the text listing; an nft built with JSON support "
                         "(libjansson) lets other tools read the node too", None),
    "proxy-mode-not-read": ("nothing to fix: read the node with the mode's own tools (ipvsadm -Ln, nft list ruleset)",
                            None),
    "backend-mismatch": (
        "flush and delete kube-proxy's KUBE-* chains in the backend the node does not use (iptables-legacy or "
        "iptables-nft -F/-X), then restart kube-proxy there", "traffic-goes-to-an-old-pod.md"),
}


def fix_of(finding_id: str) -> str | None:
    entry = FIXES.get(finding_id)
    return entry[0] if entry else None


def doc_of(finding_id: str) -> str:
    """The finding's section: `docs/reference/findings.md#ID`."""
    return f"{FINDINGS_PAGE}#{finding_id}"


def runbook_of(finding_id: str) -> str | None:
    entry = FIXES.get(finding_id)
    return f"docs/runbooks/{entry[1]}" if entry and entry[1] else None


def finding_fields(finding_id: str) -> dict:
    """The JSON fields a finding gains (docs/reference/json.md): fix, doc, runbook."""
    return {"fix": fix_of(finding_id), "doc": doc_of(finding_id), "runbook": runbook_of(finding_id)}
