"""What the commands hand to the output code (`svcdoctor/render/`): the renderers and `render/json_doc.py` import
these types from here, never from `svcdoctor/commands/`, so the output code does not depend on the commands."""

from __future__ import annotations

from dataclasses import dataclass, field

from svcdoctor.checks.findings import Finding
from svcdoctor.collect.snapshot import ClusterSnapshot, NodeCapture
from svcdoctor.inputs import LoadedInput
from svcdoctor.model.explain import ServiceView
from svcdoctor.model.service_list import ServiceSummary


@dataclass(slots=True)
class ExplainResult:
    view: ServiceView
    findings: list[Finding]
    loaded: LoadedInput


@dataclass(slots=True)
class CheckResult:
    findings: list[Finding]
    services: int
    nodes: list[str]
    failed: dict[str, str] = field(default_factory=dict)
    service_ports: int = 0
    settings: dict[str, str] = field(default_factory=dict)  # node -> where its proxy settings came from
    api: bool = False  # compared with the API objects (else: nodes with each other)
    skipped: dict[str, str] = field(default_factory=dict)  # node -> why its services were not checked

    @property
    def summary(self) -> dict[str, int]:
        out = {"error": 0, "warning": 0, "info": 0}
        for f in self.findings:
            out[f.severity] = out.get(f.severity, 0) + 1
        return out


@dataclass(slots=True)
class CollectResult:
    path: str  # the bundle written (directory or .tar.gz)
    snapshot: ClusterSnapshot

    @property
    def failed(self) -> list[NodeCapture]:
        """The nodes that could not be read: in the bundle with their reason, and named on stderr."""
        return [n for n in self.snapshot.nodes if n.error]


@dataclass(slots=True)
class ServicesResult:
    services: list[ServiceSummary]
    nodes: list[str]  # the nodes read
    namespace: str | None  # None: every namespace
    elsewhere: int = 0  # services in other namespaces, left out by -n
