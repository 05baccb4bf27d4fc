"""Offline input: `svcdoctor-bundle/v1` directories and `.tar.gz` archives, and single rules files.

A bundle is untrusted input (customers send them). An archive is read member by member into memory, never
extracted: nothing is written anywhere, absolute or `..` paths are refused, links and device files are never
followed, and sizes are capped.
"""

from __future__ import annotations

import io
import json
import os
import sys
import tarfile
import zlib
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath

from svcdoctor.collect.snapshot import ApiObjects, ClusterSnapshot, NodeCapture
from svcdoctor.errors import InputError
from svcdoctor.model.parse import decode_dump

BUNDLE_FORMAT = "svcdoctor-bundle/v1"
MAX_FILE_BYTES = 512 * 1024 * 1024  # one member (a big node's dump is ~20 MB per 10,000 services)
MAX_TOTAL_BYTES = 2 * 1024 * 1024 * 1024  # the whole archive, uncompressed
MAX_MEMBERS = 20000
CLUSTER_FILES = {
    "services.json": "services",
    "endpointslices.json": "endpointslices",
    "pods.json": "pods",
    "nodes.json": "nodes",
}
NODE_RULES_FILE = "iptables.txt"
NODE_OTHER_BACKEND_FILE = "iptables-other-backend.txt"  # svcdoctor's addition: the backend the node does not use
NODE_IP6_RULES_FILE = "ip6tables.txt"  # svcdoctor's addition: what `ip6tables-save -c` printed (IPv6 services)
NODE_META_FILE = "node.json"
# nftables mode (docs/reference/bundle-format.md): `nft -j list table ip kube-proxy` and `… ip6 kube-proxy`, one JSON
# document per table, concatenated; or the text of `nft list table …` where nft has no JSON
NODE_NFT_JSON_FILE = "nftables.json"
NODE_NFT_TEXT_FILE = "nftables.txt"
KUBE_PROXY_CONFIG_FILE = "kube-proxy-config.json"  # svcdoctor's addition: ConfigMap kube-system/kube-proxy config


def demo_bundle_path() -> Path:
    return Path(__file__).resolve().parent.parent / "demo" / "myk8s"


STDIN = "-"


def load_input(path: str | os.PathLike) -> ClusterSnapshot:
    """A bundle directory, a bundle `.tar.gz`, a single rules file, or `-`: a dump on standard input."""
    if str(path) == STDIN:
        return load_rules_stream(sys.stdin.buffer, "stdin")
    p = Path(path)
    if not p.exists():
        raise InputError(f"{path}: no such file or directory")
    if p.is_dir():
        return _load_bundle(_DirReader(p), str(path))
    name = p.name.lower()
    if name.endswith((".tar.gz", ".tgz", ".tar")):
        return _load_bundle(_TarReader(p), str(path))
    return load_rules_file(p)


def load_rules_stream(stream, name: str) -> ClusterSnapshot:
    """A dump piped in (`svcdoctor explain web --bundle - < dump.txt`), read as one node called `name`."""
    data = stream.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise InputError(f"{name}: more than the {MAX_FILE_BYTES} bytes a rules file may have")
    if not data.strip():
        raise InputError(f"{name}: no input (pipe a dump in, or give a file: --bundle FILE)")
    node = NodeCapture(name=name, iptables_save=decode_dump(data, name), source=name)
    _nft_dump(node)
    return ClusterSnapshot(cluster=None, nodes=[node], source=name)


def load_rules_file(path: Path) -> ClusterSnapshot:
    """One `iptables-save`/`iptables -S`/restore-input file, read as one node named after the file's stem."""
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise InputError(f"{path}: {size} bytes is more than the {MAX_FILE_BYTES} a rules file may have")
        data = path.read_bytes()
    except OSError as e:
        raise InputError(f"{path}: cannot read: {e.strerror}") from None
    if not data.strip():
        raise InputError(f"{path}: empty file")
    text = decode_dump(data, str(path))
    stem = path.name.split(".")[0] or path.name
    node = NodeCapture(name=stem, iptables_save=text, source=str(path))
    _nft_dump(node)
    return ClusterSnapshot(cluster=None, nodes=[node], source=str(path))


def _nft_dump(node: NodeCapture) -> None:
    """A single file (or standard input) that is an nftables listing, JSON or text, is read as the node's nftables
    tables instead of its iptables rules."""
    from svcdoctor.model.nft.read_json import looks_like_json

    text = node.iptables_save
    head = text.lstrip()[:4096]
    if looks_like_json(text) and '"nftables"' in head:
        node.nftables_json, node.iptables_save = text, ""
    elif head.startswith("table ") and "*nat" not in head:
        node.nftables_text, node.iptables_save = text, ""
    if node.has_nftables and node.proxy_mode is None:
        node.proxy_mode = "nftables"


class _DirReader:
    def __init__(self, root: Path):
        self.root = root

    def names(self) -> list[str]:
        out = []
        for dirpath, _dirs, files in os.walk(self.root, followlinks=False):
            for f in files:
                full = Path(dirpath) / f
                if full.is_symlink() or not full.is_file():
                    continue  # a link could point anywhere on the reader's machine
                out.append(full.relative_to(self.root).as_posix())
        return out

    def read(self, name: str) -> bytes:
        full = self.root / name
        size = full.stat().st_size
        if size > MAX_FILE_BYTES:
            raise InputError(f"{full}: {size} bytes is over the limit of {MAX_FILE_BYTES}")
        return full.read_bytes()


class _TarReader:
    """Reads regular files of an archive into memory; refuses traversal, skips links and devices."""

    def __init__(self, path: Path):
        self.path = path
        self._files: dict[str, bytes] = {}
        self.skipped: list[str] = []
        total = 0
        try:
            with tarfile.open(path, "r:*") as tar:
                count = 0
                for member in tar:
                    count += 1
                    if count > MAX_MEMBERS:
                        raise InputError(f"{path}: more than {MAX_MEMBERS} files in the archive")
                    name = member.name
                    pure = PurePosixPath(name)
                    if pure.is_absolute() or ".." in pure.parts:
                        raise InputError(f"{path}: unsafe path in archive: {name!r}")
                    if not member.isfile():
                        if not member.isdir():
                            self.skipped.append(name)  # symlink, hard link, device, fifo: never honoured
                        continue
                    if member.size > MAX_FILE_BYTES:
                        raise InputError(f"{path}: {name} is {member.size} bytes, over the limit of {MAX_FILE_BYTES}")
                    total += member.size
                    if total > MAX_TOTAL_BYTES:
                        raise InputError(f"{path}: archive unpacks to more than {MAX_TOTAL_BYTES} bytes")
                    f = tar.extractfile(member)
                    data = f.read(MAX_FILE_BYTES + 1) if f else b""
                    if len(data) > MAX_FILE_BYTES:
                        raise InputError(f"{path}: {name} is over the limit of {MAX_FILE_BYTES} bytes")
                    self._files[str(pure)] = data
        except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
            raise InputError(f"{path}: not a readable .tar.gz bundle ({e})") from None
        # an archive of a bundle directory has one top folder; strip it
        tops = {n.split("/", 1)[0] for n in self._files}
        if "manifest.json" not in self._files and len(tops) == 1:
            top = tops.pop() + "/"
            self._files = {n[len(top):]: d for n, d in self._files.items() if n.startswith(top)}

    def names(self) -> list[str]:
        return list(self._files)

    def read(self, name: str) -> bytes:
        return self._files[name]


def _json(reader, name: str, where: str):
    try:
        return json.loads(reader.read(name))
    except (ValueError, UnicodeDecodeError) as e:
        raise InputError(f"{where}: {name} is not valid JSON ({e})") from None


def _list_items(doc, name: str, where: str) -> list[dict]:
    if isinstance(doc, dict) and isinstance(doc.get("items"), list):
        return [i for i in doc["items"] if isinstance(i, dict)]
    if isinstance(doc, list):
        return [i for i in doc if isinstance(i, dict)]
    raise InputError(f"{where}: {name} is not a v1 List (expected an object with 'items')")


def _load_bundle(reader, where: str) -> ClusterSnapshot:
    names = set(reader.names())
    manifest = {}
    if "manifest.json" in names:
        manifest = _json(reader, "manifest.json", where)
        if not isinstance(manifest, dict):
            raise InputError(f"{where}: manifest.json is not an object")
        fmt = manifest.get("format")
        if fmt != BUNDLE_FORMAT:
            raise InputError(f"{where}: manifest.json format is {fmt!r}; svcdoctor reads {BUNDLE_FORMAT!r}")
    elif not any(n.startswith("nodes/") for n in names):
        raise InputError(f"{where}: not a svcdoctor bundle (no manifest.json and no nodes/ folder)")
    node_names = [n.split("/")[1] for n in names if n.startswith("nodes/") and n.count("/") == 2]
    ordered = [n for n in manifest.get("nodes") or [] if isinstance(n, str)]
    ordered += sorted(set(node_names) - set(ordered))
    nodes: list[NodeCapture] = []
    for node in ordered:
        base = f"nodes/{node}/"
        capture = NodeCapture(name=node, source=f"{where}/{base}{NODE_RULES_FILE}", read_via="bundle")
        if base + NODE_META_FILE in names:
            meta = _json(reader, base + NODE_META_FILE, where)
            if isinstance(meta, dict):
                capture.internal_ip = meta.get("internalIP")
                capture.backend = meta.get("backend")
                capture.proxy_mode = meta.get("proxyMode")
                capture.role = meta.get("role")
                if meta.get("readVia"):  # how the collection read the node (docker exec, pods/exec)
                    capture.read_via = f"bundle ({meta['readVia']})"
                if meta.get("error"):
                    capture.error = str(meta["error"])
                capture.warnings = [str(w) for w in meta.get("warnings") or []]
        if base + NODE_NFT_JSON_FILE in names:
            capture.nftables_json = decode_dump(reader.read(base + NODE_NFT_JSON_FILE), f"{where}/{base}nftables.json")
        if base + NODE_NFT_TEXT_FILE in names:
            capture.nftables_text = decode_dump(reader.read(base + NODE_NFT_TEXT_FILE), f"{where}/{base}nftables.txt")
        if base + NODE_RULES_FILE in names:
            capture.iptables_save = decode_dump(reader.read(base + NODE_RULES_FILE), capture.source)
        elif capture.has_nftables:
            capture.source = f"{where}/{base}" + (NODE_NFT_JSON_FILE if capture.nftables_json else NODE_NFT_TEXT_FILE)
        elif not capture.error:
            capture.error = f"no {NODE_RULES_FILE} in the bundle"
        if base + NODE_OTHER_BACKEND_FILE in names:
            capture.other_backend_save = decode_dump(reader.read(base + NODE_OTHER_BACKEND_FILE), where)
        if base + NODE_IP6_RULES_FILE in names:
            capture.ip6tables_save = decode_dump(reader.read(base + NODE_IP6_RULES_FILE), f"{where}/{base}ip6tables.txt")
        nodes.append(capture)
    if not nodes:
        raise InputError(f"{where}: the bundle has no nodes")
    api = ApiObjects(status="not in the bundle")
    present = False
    for fname, attr in CLUSTER_FILES.items():
        name = "cluster/" + fname
        if name in names:
            setattr(api, attr, _list_items(_json(reader, name, where), name, where))
            present = True
    if "cluster/" + KUBE_PROXY_CONFIG_FILE in names:
        cfg = _json(reader, "cluster/" + KUBE_PROXY_CONFIG_FILE, where)
        api.kube_proxy_config = cfg if isinstance(cfg, dict) else None
    if present:
        api.status = "ok (from the bundle)"
        if api.services is not None and api.endpointslices is None:
            api.endpointslices = []
    snapshot = ClusterSnapshot(
        cluster=manifest.get("cluster"),
        nodes=nodes,
        api=api,
        collected_at=manifest.get("collectedAt"),
        source=where,
    )
    return snapshot


def write_bundle(snapshot: ClusterSnapshot, out: str | os.PathLike) -> str:
    """Write a snapshot as a bundle: a directory, or a `.tar.gz` when the path ends so. Returns the path."""
    files: dict[str, bytes] = {}
    manifest = {
        "format": BUNDLE_FORMAT,
        "cluster": snapshot.cluster,
        "collectedAt": snapshot.collected_at or datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "nodes": [n.name for n in snapshot.nodes],
    }
    files["manifest.json"] = _dump(manifest)
    for node in snapshot.nodes:
        base = f"nodes/{node.name}/"
        meta = {
            "name": node.name,
            "internalIP": node.internal_ip,
            "backend": node.backend,
            "proxyMode": node.proxy_mode,
            "role": node.role,
        }
        # how the node was first read: a bundle written again from a bundle keeps what the collection said
        read_via = node.read_via
        if read_via and read_via.startswith("bundle ("):
            read_via = read_via[len("bundle (") : -1]
        if read_via and read_via != "bundle":
            meta["readVia"], meta["readFrom"] = read_via, node.source
        if node.warnings:
            meta["warnings"] = node.warnings
        if node.error:
            meta["error"] = node.error
        files[base + NODE_META_FILE] = _dump(meta)
        if not node.error and (node.iptables_save or not node.has_nftables):
            files[base + NODE_RULES_FILE] = node.iptables_save.encode()
        if node.nftables_json and not node.error:
            files[base + NODE_NFT_JSON_FILE] = node.nftables_json.encode()
        if node.nftables_text and not node.error:
            files[base + NODE_NFT_TEXT_FILE] = node.nftables_text.encode()
        if node.other_backend_save:
            files[base + NODE_OTHER_BACKEND_FILE] = node.other_backend_save.encode()
        if node.ip6tables_save and not node.error:
            files[base + NODE_IP6_RULES_FILE] = node.ip6tables_save.encode()
    api = snapshot.api
    for fname, attr in CLUSTER_FILES.items():
        items = getattr(api, attr)
        if items is not None:
            files["cluster/" + fname] = _dump({"apiVersion": "v1", "kind": "List", "items": items})
    if api.kube_proxy_config is not None:
        files["cluster/" + KUBE_PROXY_CONFIG_FILE] = _dump(api.kube_proxy_config)
    out = str(out)
    if out.endswith((".tar.gz", ".tgz")):
        top = os.path.basename(out).split(".")[0] or "svcdoctor-bundle"
        try:
            with tarfile.open(out, "w:gz") as tar:
                for name, data in sorted(files.items()):
                    info = tarfile.TarInfo(f"{top}/{name}")
                    info.size = len(data)
                    info.mode = 0o644
                    tar.addfile(info, io.BytesIO(data))
        except OSError as e:
            raise InputError(f"{out}: cannot write: {e.strerror}") from None
        return out
    root = Path(out)
    try:
        for name, data in files.items():
            target = root / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
    except OSError as e:
        raise InputError(f"{out}: cannot write: {e.strerror}") from None
    return out


def _dump(doc) -> bytes:
    return (json.dumps(doc, indent=2, sort_keys=False) + "\n").encode()
