"""What svcdoctor may ask the API server for, and the words to say when it is refused (HTTP 403).

The grants are those of the manifest in docs/reference/rbac.md (tests/test_api_read.py keeps the two equal): a
403 names the verb and resource that are missing and quotes the manifest line that grants them, so whoever reads
the error can hand it to a cluster admin as is. Nothing here ever needs `nodes/proxy` (it would open the kubelet
API, far more than reading rules) or any write verb.
"""

from __future__ import annotations

# (API group, resource) -> (verbs, the manifest's rule line that grants them, scope)
GRANTS: dict[tuple[str, str], tuple[tuple[str, ...], str, str]] = {
    ("", "nodes"): (("list",), '- {apiGroups: [""], resources: ["nodes"], verbs: ["list"]}', "ClusterRole"),
    ("", "services"): (("get", "list"), '- {apiGroups: [""], resources: ["services"], verbs: ["get", "list"]}',
                       "ClusterRole"),
    ("", "pods"): (("list",), '- {apiGroups: [""], resources: ["pods"], verbs: ["list"]}', "ClusterRole"),
    ("discovery.k8s.io", "endpointslices"): (
        ("list",), '- {apiGroups: ["discovery.k8s.io"], resources: ["endpointslices"], verbs: ["list"]}',
        "ClusterRole"),
    ("", "configmaps"): (
        ("get",), '- {apiGroups: [""], resources: ["configmaps"], resourceNames: ["kube-proxy"], verbs: ["get"]}',
        "Role in kube-system"),
    ("", "pods/exec"): (("get", "create"), '- {apiGroups: [""], resources: ["pods/exec"], verbs: ["get", "create"]}',
                        "Role in the kube-proxy namespace"),
}

# Only for --debug-pod (docs/reference/rbac.md, "Only for --debug-pod"): a Role in the debug namespace. Kept apart
# from GRANTS: without the flag svcdoctor writes nothing, and the read-only manifest has no write verb.
DEBUG_GRANTS: dict[tuple[str, str], tuple[tuple[str, ...], str, str]] = {
    ("", "pods"): (("create", "delete", "get"),
                   '- {apiGroups: [""], resources: ["pods"], verbs: ["create", "delete", "get"]}',
                   "Role svcdoctor-debug in the debug namespace"),
    ("", "pods/exec"): (("get", "create"), '- {apiGroups: [""], resources: ["pods/exec"], verbs: ["get", "create"]}',
                        "Role svcdoctor-debug in the debug namespace"),
}
DEBUG_VERBS = {"create", "delete"}


def forbidden(verb: str, resource: str, group: str = "", namespace: str | None = None, server_message: str = "") -> str:
    """The one line a 403 becomes: what is missing, where, and the manifest line that grants it."""
    grants = DEBUG_GRANTS if verb in DEBUG_VERBS and resource == "pods" else GRANTS
    verbs, line, scope = grants.get((group, resource), ((verb,), "", ""))
    where = f" in namespace {namespace}" if namespace else ""
    grant = f"; docs/reference/rbac.md grants it ({scope}): {line}" if line else ""
    said = f" (the server said: {server_message})" if server_message else ""
    return f"forbidden: svcdoctor needs `{verb}` on `{resource}`{where}{said}{grant}"
