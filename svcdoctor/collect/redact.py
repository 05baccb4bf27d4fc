"""Bundles safe to share (issue #12): namespaces, names, pod and node names and IP addresses replaced with
pseudonyms, and kube-proxy's chain names recomputed from the new names, so that every command answers the same on
the redacted bundle as on the original, with the names swapped.

- **Addresses** keep their subnets: the mapping is prefix-preserving (two addresses that share their first n bits
  still do, as in Crypto-PAn, Xu et al. 2002), so a pod CIDR still holds its pods and a `-s 10.10.0.0/16` still
  matches the same sources. The first octet (IPv6: the first 16 bits) is kept, so private ranges stay private and
  loopback stays loopback; 0.0.0.0/8, 127.0.0.0/8 and multicast and above are kept whole.
- **Names** become `ns-N`, `svc-N`, `pod-N`, `node-N`, numbered in the originals' order (sorted lists stay sorted).
  Port names are kept (they are `http`, `dns-tcp`: generic, and the evidence reads better).
- **Chains**: KUBE-SVC/SVL/EXT/FW/XLB are renamed to the hash of the new service port name, KUBE-SEP to the hash of
  the new name and endpoint (docs/reference/kube-proxy-layout.md §1); a chain whose name was not kube-proxy's hash
  of what its comment says stays not-a-hash (a random name), so `hash-mismatch` still finds it.
- **API objects** lose what svcdoctor never reads and may name anything (annotations, managed fields, owner
  references, uids, images, env); label values become `lv-N`, the same value the same pseudonym everywhere, so
  selectors still select.

The pseudonyms come from a random key drawn per run: the same input gives the same pseudonym within a bundle, and
nothing links two redactions. The mapping (to undo it) is the caller's to keep, never written into the bundle.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import hmac
import ipaddress
import re
import secrets
from dataclasses import dataclass, field

from svcdoctor.collect.bundle import write_bundle
from svcdoctor.model import rule_text
from svcdoctor.collect.snapshot import ApiObjects, ClusterSnapshot, NodeCapture
from svcdoctor.errors import InputError
from svcdoctor.model.hashes import endpoint_hash, service_hash
from svcdoctor.model.service_rules import service_port_of_comment

IPV4 = re.compile(r"(?<![\w.])(\d{1,3}(?:\.\d{1,3}){3})(?:/(\d{1,2}))?(?![\w])")
IPV6 = re.compile(r"(?<![\w:.])([0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7})(?:/(\d{1,3}))?(?![\w:])")
HASHED_CHAIN = re.compile(r"\bKUBE-(SVC|SVL|EXT|FW|XLB|SEP)-([A-Z2-7]{16})\b")
COMMENT = rule_text.COMMENT_SPAN  # the one reader's patterns (model/rule_text.py), used to rewrite in place
TO_DESTINATION = rule_text.TO_DESTINATION_SPAN
PROTOCOLS = ("tcp", "udp", "sctp")
KEPT_LABEL_KEYS = ("endpointslice.kubernetes.io/managed-by", "service.kubernetes.io/headless",
                   "service.kubernetes.io/service-proxy-name", "node-role.kubernetes.io/")
DROPPED_METADATA = ("annotations", "managedFields", "ownerReferences", "uid", "generateName", "selfLink",
                    "resourceVersion", "creationTimestamp")


@dataclass
class Pseudonyms:
    """The mapping of one redaction (original -> pseudonym), by kind; `to_dict` is the mapping file."""

    key: bytes = field(default_factory=lambda: secrets.token_bytes(32))
    names: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    addresses: dict[str, str] = field(default_factory=dict)
    chains: dict[str, str] = field(default_factory=dict)
    _bits: dict[tuple[int, str], int] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict:
        return {"names": self.names, "labelValues": self.labels, "addresses": self.addresses, "chains": self.chains}

    # --- addresses ---------------------------------------------------------------------------------------------
    def address(self, text: str) -> str:
        """One address, or a CIDR (its network mapped, its length kept); text that is not one is returned as is."""
        ip, _, length = text.partition("/")
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return text
        mapped = self._map_address(addr)
        if length:
            bits = int(length) if length.isdigit() else addr.max_prefixlen
            net = ipaddress.ip_network(f"{mapped}/{min(bits, addr.max_prefixlen)}", strict=False)
            out = f"{net.network_address}/{length}"
        else:
            out = str(mapped)
        if out != text:
            self.addresses[text] = out
        return out

    def _map_address(self, addr):
        v4 = addr.version == 4
        total = addr.max_prefixlen
        value = int(addr)
        first = value >> (total - 8) if v4 else value >> (total - 16)
        if v4 and (first in (0, 127) or first >= 224) or not v4 and value >> 64 == 0:
            return addr  # 0/8, loopback, multicast and reserved; IPv6 ::, ::1 and mapped v4: no one's address
        kept = 8 if v4 else 16
        out = value
        for i in range(kept, total):  # bit i (from the top) flips by a keyed function of the bits above it
            prefix = value >> (total - i)
            if self._flip(i, prefix):
                out ^= 1 << (total - 1 - i)
        return ipaddress.ip_address(out) if v4 else ipaddress.IPv6Address(out)

    def _flip(self, i: int, prefix: int) -> int:
        key = (i, prefix)
        bit = self._bits.get(key)
        if bit is None:
            bit = self._bits[key] = hmac.new(self.key, f"{i}:{prefix}".encode(), hashlib.sha256).digest()[0] & 1
        return bit

    def addresses_in(self, text: str) -> str:
        text = IPV4.sub(lambda m: self.address(m.group(0)), text)
        return IPV6.sub(lambda m: self._v6(m), text)

    def _v6(self, m: re.Match) -> str:
        try:
            ipaddress.IPv6Address(m.group(1))
        except ValueError:
            return m.group(0)  # a time, a MAC address: not an address
        return self.address(m.group(0))

    # --- names -------------------------------------------------------------------------------------------------
    def name(self, original: str | None) -> str | None:
        return self.names.get(original, original) if original else original

    def service_port_name(self, spn: str) -> str:
        """"ns/name[:port]" with the namespace and name swapped (the port name kept)."""
        ns, _, rest = spn.partition("/")
        name, colon, port = rest.partition(":")
        return f"{self.names.get(ns, ns)}/{self.names.get(name, name)}{colon}{port}"

    def label(self, value: str) -> str:
        if value in self.names:
            return self.names[value]
        if value not in self.labels:
            self.labels[value] = f"lv-{len(self.labels) + 1:04d}"
        return self.labels[value]


def redact_snapshot(snapshot: ClusterSnapshot, pseudonyms: Pseudonyms | None = None) -> tuple[ClusterSnapshot, Pseudonyms]:
    """A redacted copy of the snapshot (the original is untouched), and the mapping."""
    p = pseudonyms or Pseudonyms()
    _name_everything(snapshot, p)
    _chain_names(snapshot, p)
    api = snapshot.api
    out_api = ApiObjects(
        services=_objects(api.services, p, _service), endpointslices=_objects(api.endpointslices, p, _slice),
        pods=_objects(api.pods, p, _pod), nodes=_objects(api.nodes, p, _node),
        kube_proxy_config=_strings(api.kube_proxy_config, p) if api.kube_proxy_config else None,
        status=api.status)
    nodes = [_capture(n, p) for n in snapshot.nodes]
    cluster = p.names.get(snapshot.cluster, snapshot.cluster) if snapshot.cluster else None
    return ClusterSnapshot(cluster, nodes, out_api, snapshot.collected_at, "redacted"), p


# --- the names, numbered in order -------------------------------------------------------------------------------
def _name_everything(snapshot: ClusterSnapshot, p: Pseudonyms) -> None:
    api = snapshot.api
    kinds: dict[str, set[str]] = {"ns": set(), "svc": set(), "pod": set(), "node": set(), "slice": set()}
    for item in api.services or []:
        kinds["ns"].add(_meta(item).get("namespace") or "default")
        kinds["svc"].add(_meta(item).get("name") or "")
    for item in api.endpointslices or []:
        kinds["ns"].add(_meta(item).get("namespace") or "default")
        kinds["slice"].add(_meta(item).get("name") or "")
        for ep in item.get("endpoints") or []:
            ref = ep.get("targetRef") or {}
            if ref.get("kind", "Pod") == "Pod" and ref.get("name"):
                kinds["pod"].add(ref["name"])
            for key in ("nodeName", "hostname"):
                if ep.get(key):
                    kinds["node" if key == "nodeName" else "pod"].add(ep[key])
    for item in api.pods or []:
        kinds["ns"].add(_meta(item).get("namespace") or "default")
        kinds["pod"].add(_meta(item).get("name") or "")
        if (item.get("spec") or {}).get("nodeName"):
            kinds["node"].add(item["spec"]["nodeName"])
    for item in api.nodes or []:
        kinds["node"].add(_meta(item).get("name") or "")
    kinds["node"].update(n.name for n in snapshot.nodes)
    # names that only the rules know (no API, or a service the API no longer has): from kube-proxy's comments
    for capture in snapshot.nodes:
        for text in (capture.iptables_save, capture.ip6tables_save or "", capture.other_backend_save or ""):
            for m in COMMENT.finditer(text):
                spn, _ = service_port_of_comment(m.group(2).strip('"'))
                if spn and "/" in spn:
                    ns, _, rest = spn.partition("/")
                    kinds["ns"].add(ns)
                    kinds["svc"].add(rest.split(":", 1)[0])
    if snapshot.cluster:
        p.names[snapshot.cluster] = "cluster-0001"
    for kind, names in kinds.items():
        for i, original in enumerate(sorted(n for n in names if n and n not in p.names), 1):
            p.names[original] = f"{kind}-{i:04d}"


def _chain_names(snapshot: ClusterSnapshot, p: Pseudonyms) -> None:
    """Old hashed chain -> new one. A service chain: the hash of a known service port name (API or comments) and a
    protocol; an endpoint chain: of the name, protocol and the endpoint its DNAT rule names."""
    spns = set()
    for item in snapshot.api.services or []:
        meta = _meta(item)
        for port in (item.get("spec") or {}).get("ports") or []:
            base = f"{meta.get('namespace') or 'default'}/{meta.get('name') or ''}"
            spns.add(f"{base}:{port['name']}" if port.get("name") else base)
    texts = [t for n in snapshot.nodes for t in (n.iptables_save, n.ip6tables_save, n.other_backend_save) if t]
    for text in texts:
        for m in COMMENT.finditer(text):
            spn, _ = service_port_of_comment(m.group(2).strip('"'))
            if spn and "/" in spn:
                spns.add(spn)
    by_suffix = {service_hash(spn, proto): (spn, proto) for spn in spns for proto in PROTOCOLS}
    for text in texts:
        seps = _endpoint_chains(text)
        for m in HASHED_CHAIN.finditer(text):
            chain, kind, suffix = m.group(0), m.group(1), m.group(2)
            if chain in p.chains:
                continue
            new = None
            if kind == "SEP" and chain in seps:
                spn, proto, endpoint = seps[chain]
                if endpoint_hash(spn, proto, endpoint) == suffix:
                    new = endpoint_hash(p.service_port_name(spn), proto, _endpoint(endpoint, p))
            elif kind != "SEP" and suffix in by_suffix:
                spn, proto = by_suffix[suffix]
                new = service_hash(p.service_port_name(spn), proto)
            # not kube-proxy's hash of anything known: a name that is not a hash of anything either
            p.chains[chain] = f"KUBE-{kind}-{new or _random_suffix(p, chain)}"


def _endpoint_chains(text: str) -> dict[str, tuple[str, str, str]]:
    """KUBE-SEP chain -> (service port name, protocol, endpoint) from its DNAT rule."""
    out = {}
    for line in text.splitlines():
        if "-j DNAT" not in line or "-A KUBE-SEP-" not in line:
            continue
        chain = line.split("-A ", 1)[1].split(" ", 1)[0]
        comment = COMMENT.search(line)
        dest = TO_DESTINATION.search(line)
        proto = re.search(r" -p (\w+)", line)
        if comment and dest and proto:
            spn, _ = service_port_of_comment(comment.group(2).strip('"'))
            if spn:
                out[chain] = (spn, proto.group(1).lower(), dest.group(1))
    return out


def _endpoint(endpoint: str, p: Pseudonyms) -> str:
    host, _, port = endpoint.rpartition(":")
    bracketed = host.startswith("[")
    mapped = p.address(host.strip("[]"))
    return f"[{mapped}]:{port}" if bracketed else f"{mapped}:{port}"


def _random_suffix(p: Pseudonyms, chain: str) -> str:
    import base64

    return base64.b32encode(hmac.new(p.key, chain.encode(), hashlib.sha256).digest()[:10]).decode()


# --- the rules --------------------------------------------------------------------------------------------------
def redact_rules(text: str | None, p: Pseudonyms) -> str | None:
    if not text:
        return text
    text = HASHED_CHAIN.sub(lambda m: p.chains.get(m.group(0), m.group(0)), text)
    text = COMMENT.sub(lambda m: m.group(1) + _comment(m.group(2), p), text)
    return p.addresses_in(text)


def _comment(value: str, p: Pseudonyms) -> str:
    quoted = value.startswith('"')
    inner = value[1:-1] if quoted else value
    spn, _ = service_port_of_comment(inner)
    if spn and "/" in spn:
        inner = inner.replace(spn, p.service_port_name(spn), 1)
    else:  # not kube-proxy's: any name svcdoctor knows, as a whole word
        inner = _known_names(inner, p)
    return f'"{inner}"' if quoted else inner


_NAME_CHARS = r"[A-Za-z0-9_-]"


def _known_names(text: str, p: Pseudonyms) -> str:
    if not p.names:
        return text
    pattern = getattr(p, "_names_re", None)
    if pattern is None:
        alternatives = "|".join(re.escape(n) for n in sorted(p.names, key=len, reverse=True))
        pattern = re.compile(f"(?<!{_NAME_CHARS})(?:{alternatives})(?!{_NAME_CHARS})")
        object.__setattr__(p, "_names_re", pattern)
    return pattern.sub(lambda m: p.names[m.group(0)], text)


def _capture(n: NodeCapture, p: Pseudonyms) -> NodeCapture:
    return NodeCapture(
        name=p.name(n.name), iptables_save=redact_rules(n.iptables_save, p) or "",
        internal_ip=p.address(n.internal_ip) if n.internal_ip else None, role=n.role, backend=n.backend,
        proxy_mode=n.proxy_mode, other_backend_save=redact_rules(n.other_backend_save, p),
        ip6tables_save=redact_rules(n.ip6tables_save, p),
        warnings=[p.addresses_in(_known_names(w, p)) for w in n.warnings],
        error=p.addresses_in(_known_names(n.error, p)) if n.error else None,
        read_via=n.read_via)  # how the node was read stays; where from (a pod or container name) does not


# --- the API objects --------------------------------------------------------------------------------------------
def _objects(items: list[dict] | None, p: Pseudonyms, shape) -> list[dict] | None:
    if items is None:
        return None
    out = []
    for item in items:
        item = copy.deepcopy(item)
        meta = item.get("metadata")
        if isinstance(meta, dict):
            for key in DROPPED_METADATA:
                meta.pop(key, None)
            if isinstance(meta.get("labels"), dict):
                meta["labels"] = _labels(meta["labels"], p)
        out.append(_strings(shape(item, p), p))
    return out


def _meta(item: dict) -> dict:
    return item.get("metadata") or {}


def _labels(labels: dict, p: Pseudonyms) -> dict:
    """Keys kept; values mapped (the same value, the same pseudonym: selectors still select), but for the keys
    whose values are Kubernetes' own words."""
    return {k: (v if any(k.startswith(kept) for kept in KEPT_LABEL_KEYS) or not isinstance(v, str) or not v
                else p.label(v)) for k, v in labels.items()}


def _service(item: dict, p: Pseudonyms) -> dict:
    spec = item.get("spec") or {}
    if isinstance(spec.get("selector"), dict):
        spec["selector"] = _labels(spec["selector"], p)
    return item


def _slice(item: dict, p: Pseudonyms) -> dict:
    for ep in item.get("endpoints") or []:
        ref = ep.get("targetRef")
        if isinstance(ref, dict):
            ep["targetRef"] = {k: v for k, v in ref.items() if k in ("kind", "name", "namespace")}
    return item


def _pod(item: dict, p: Pseudonyms) -> dict:
    spec = item.get("spec") or {}
    status = item.get("status") or {}
    kept = {k: v for k, v in spec.items() if k in ("nodeName", "hostNetwork")}
    kept["containers"] = [{"name": f"c{i}", "ports": c.get("ports") or []}
                          for i, c in enumerate(spec.get("containers") or []) if isinstance(c, dict)]
    item["spec"] = kept
    item["status"] = {k: v for k, v in status.items() if k in ("podIP", "podIPs", "phase", "hostIP", "hostIPs")}
    if isinstance(status.get("conditions"), list):
        item["status"]["conditions"] = [{k: c.get(k) for k in ("type", "status")} for c in status["conditions"]
                                        if isinstance(c, dict)]
    return item


def _node(item: dict, p: Pseudonyms) -> dict:
    status = item.get("status") or {}
    spec = item.get("spec") or {}
    item["status"] = {"addresses": status.get("addresses") or []}
    item["spec"] = {k: v for k, v in spec.items() if k in ("podCIDR", "podCIDRs", "unschedulable", "taints")}
    return item


def _strings(value, p: Pseudonyms, key: str | None = None, port: bool = False):
    """Every string value of an object (not the keys): a name, or names and addresses inside text, swapped. Port
    names (a port's `name`, a `targetPort`) are kept, as in the rules' comments."""
    if isinstance(value, dict):
        is_port = "port" in value or "containerPort" in value
        return {k: _strings(v, p, k, is_port) for k, v in value.items()}
    if isinstance(value, list):
        return [_strings(v, p, key) for v in value]
    if isinstance(value, str):
        if (port and key == "name") or key == "targetPort" or value.startswith("lv-"):
            return value
        if value in p.names:
            return p.names[value]
        return p.addresses_in(_known_names(value, p))
    return value


# --- writing ---------------------------------------------------------------------------------------------------
def mapping_path(out: str) -> str:
    """OUT.mapping.json beside OUT (a directory, or an archive: its name without .tar.gz)."""
    base = out.rstrip("/")
    for ext in (".tar.gz", ".tgz", ".tar"):
        if base.endswith(ext):
            base = base[: -len(ext)]
            break
    return base + ".mapping.json"


def write_redacted(snapshot: ClusterSnapshot, out_path: str) -> tuple[str, str, Pseudonyms]:
    """Redact and write; returns (bundle path, mapping path, the mapping)."""
    redacted, pseudonyms = redact_snapshot(snapshot)
    written = write_bundle(redacted, out_path)
    where = mapping_path(out_path)
    try:
        fd = os.open(where, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # only its owner may read it
        with os.fdopen(fd, "w") as f:
            json.dump(pseudonyms.to_dict(), f, indent=2)
            f.write("\n")
    except OSError as e:
        raise InputError(f"{where}: cannot write the mapping: {e.strerror}") from None
    return written, where, pseudonyms
