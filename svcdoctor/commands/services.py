"""`svcdoctor services` (alias `svc`): the services the rules hold, one row each, as `kubectl get services` lists
them, with what kube-proxy made of them (entries, endpoints, nodes)."""

from __future__ import annotations

from svcdoctor.inputs import LoadedInput
from svcdoctor.model.service_list import list_services
from svcdoctor.results import ServicesResult


def run_services(loaded: LoadedInput, namespace: str | None) -> ServicesResult:
    every = list_services(loaded.rules, loaded.cluster, loaded.rules6, loaded.nft)
    chosen = [s for s in every if namespace is None or s.namespace == namespace]
    return ServicesResult(chosen, sorted(loaded.rules), namespace, len(every) - len(chosen))
