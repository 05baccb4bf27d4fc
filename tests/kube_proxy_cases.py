"""kube-proxy's own test cases (v1.28.0 proxier_test.go) as svcdoctor inputs: API objects, proxier settings,
the expected restore dumps and the packet flows. Import it from tests:

    from kube_proxy_cases import iter_cases
    for case in iter_cases():          # 19 entries: 15 cases + case 10's four variants; 169 flows in all
        model = case.cluster_model()   # svcdoctor.model.cluster.build_cluster_model on the fixture objects
        case.settings                  # svcdoctor.model.expected.ProxySettings
        case.nat_text, case.filter_text, case.flows

Fixtures live in tests/fixtures/kube_proxy_cases/<case>/ (written by generate.py there); `reference/` in each is a
verbatim copy of kube-proxy's test case <case> (docs/reference/kube-proxy-layout.md §3) so that the suite needs nothing outside the repo.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from svcdoctor.collect.snapshot import ApiObjects
from svcdoctor.model.cluster import ClusterModel, build_cluster_model
from svcdoctor.model.expected import ProxySettings

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "kube_proxy_cases"


@dataclass(slots=True)
class KubeProxyCase:
    name: str  # "07b-itp-local-with-local-endpoint", or "10-internal-external-masquerade/no-local-detector"
    case: str  # the case folder name
    variant: str | None  # case 10's variant, else None
    fixture_dir: Path  # tests/fixtures/kube_proxy_cases/<case>
    ref_dir: Path  # where this entry's nat.txt and filter.txt are
    cluster_dir: Path  # services.json, endpointslices.json
    settings_json: dict
    settings: ProxySettings
    flows: list[dict]  # {name, sourceIP, destIP, destPort, output, masq}
    node_ip: str  # the fake proxier's node IP, for the flows' addrtype LOCAL

    @property
    def nat_text(self) -> str:
        return (self.ref_dir / "nat.txt").read_text()

    @property
    def filter_text(self) -> str:
        return (self.ref_dir / "filter.txt").read_text()

    @property
    def restore_text(self) -> str:
        """Both tables, filter first, as kube-proxy hands them to iptables-restore."""
        return self.filter_text + self.nat_text

    def items(self, kind: str) -> list[dict]:
        """The items of cluster/<kind>.json ("services", "endpointslices"); [] when the file is absent."""
        path = self.cluster_dir / f"{kind}.json"
        return json.loads(path.read_text())["items"] if path.exists() else []

    def api_objects(self) -> ApiObjects:
        return ApiObjects(services=self.items("services"), endpointslices=self.items("endpointslices"), status="ok")

    def cluster_model(self) -> ClusterModel:
        return build_cluster_model(self.items("services"), self.items("endpointslices"))


def iter_cases() -> Iterator[KubeProxyCase]:
    for case_dir in sorted(p for p in FIXTURES.iterdir() if (p / "settings.json").is_file()):
        ref = case_dir / "reference"
        flows_doc = json.loads((ref / "flows.json").read_text())
        variants_dir = case_dir / "variants"
        if not variants_dir.is_dir():
            settings_json = json.loads((case_dir / "settings.json").read_text())
            yield KubeProxyCase(
                name=case_dir.name,
                case=case_dir.name,
                variant=None,
                fixture_dir=case_dir,
                ref_dir=ref,
                cluster_dir=case_dir / "cluster",
                settings_json=settings_json,
                settings=ProxySettings.from_json(settings_json),
                flows=flows_doc["flows"],
                node_ip=flows_doc["nodeIP"],
            )
            continue
        for variant in flows_doc["variants"]:
            settings_json = json.loads((variants_dir / variant["dir"] / "settings.json").read_text())
            yield KubeProxyCase(
                name=f"{case_dir.name}/{variant['dir']}",
                case=case_dir.name,
                variant=variant["dir"],
                fixture_dir=case_dir,
                ref_dir=ref / variant["dir"],
                cluster_dir=case_dir / "cluster",
                settings_json=settings_json,
                settings=ProxySettings.from_json(settings_json),
                flows=variant["flows"],
                node_ip=flows_doc["nodeIP"],
            )


def case_names() -> list[str]:
    return [case.name for case in iter_cases()]


def case_bundle(case: KubeProxyCase, path) -> str:
    """A bundle directory of the case: one node named as kube-proxy's tests name it (its local endpoints are local
    there), the case's dump, and its API objects."""
    from svcdoctor.collect.bundle import write_bundle
    from svcdoctor.collect.snapshot import ClusterSnapshot, NodeCapture

    node = NodeCapture(name=case.settings.node_name, iptables_save=case.restore_text, internal_ip=case.node_ip,
                       backend="nft", proxy_mode="iptables")
    write_bundle(ClusterSnapshot(cluster="cases", nodes=[node], api=case.api_objects(),
                                 collected_at="2026-11-26T00:00:00Z"), path)
    return str(path)
