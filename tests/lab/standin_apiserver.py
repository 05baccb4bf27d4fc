"""A stand-in Kubernetes API server for the lab: real HTTP on 127.0.0.1, real paths, real JSON shapes.

It is not a kube-apiserver. It serves a fixed set of objects (a lab scenario's Services, EndpointSlices, Pods,
Nodes, ConfigMaps) read-only — except that Pods can be created and deleted (`pod_writes`), for svcdoctor's
`--debug-pod` helper pods: a created pod is "scheduled" on the lab node container its `spec.nodeName` names, so an
exec into it runs there; every create and delete is recorded (`created`, `deleted`), with what svcdoctor's client needs and what a real server would do with it:
bearer-token authentication (401 for an unknown token, 403 for a known user without rights), list pagination
with `limit`/`continue` (items in namespace/name order, as etcd keys sort), `labelSelector` and `fieldSelector`,
`Status` objects for errors, and the discovery documents (`/version`, `/api`, `/apis`, `/api/v1`, ...).
Fault modes make every authenticated request answer 401, 403, or hang (never answer) for timeout tests.
`pods/exec` is served over WebSocket (v4/v5 channel protocols) by `standin_exec.py` when an `exec_runner` is given
(in the lab: the argv run by `docker exec` in the pod's node container), with per-pod exec faults.

Run it by hand with `python -m tests.lab apiserver` (prints the kubeconfig path).
"""

from __future__ import annotations

import base64
import copy
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

ADMIN_TOKEN = "standin-admin-token"  # what the generated kubeconfig carries
FORBIDDEN_TOKEN = "standin-nobody-token"  # a user the stand-in knows but lets read nothing (403)
FORBIDDEN_USER = "system:serviceaccount:default:nobody"

# (group/version, plural) -> (kind, namespaced). The resources svcdoctor reads, plus namespaces.
RESOURCES: dict[tuple[str, str], tuple[str, bool]] = {
    ("v1", "services"): ("Service", True),
    ("v1", "pods"): ("Pod", True),
    ("v1", "configmaps"): ("ConfigMap", True),
    ("v1", "nodes"): ("Node", False),
    ("v1", "namespaces"): ("Namespace", False),
    ("discovery.k8s.io/v1", "endpointslices"): ("EndpointSlice", True),
}
KIND_TO_RESOURCE = {kind: key for key, (kind, _) in RESOURCES.items()}
UNAUTHENTICATED_PATHS = {"/version", "/healthz", "/livez", "/readyz"}  # system:public-info-viewer in kind


@dataclass(slots=True)
class RecordedRequest:
    method: str
    path: str
    query: dict[str, str]
    status: int


@dataclass
class StandinApiServer:
    """Serve `objects` (any of Service, EndpointSlice, Pod, Node, ConfigMap, Namespace dicts, with `kind`)."""

    objects: list[dict]
    fault: str | None = None  # None | "401" | "403" | "hang"
    max_page_size: int | None = None  # answer at most this many items per page, as a real server may
    hang_seconds: float = 60.0
    git_version: str = "v1.28.0"
    requests: list[RecordedRequest] = field(default_factory=list)
    exec_runner: object | None = None  # standin_exec.Runner; None: pods/exec answers 404
    exec_protocols: tuple[str, ...] = ("v5.channel.k8s.io", "v4.channel.k8s.io")  # in the server's preference
    exec_latency: float = 0.0  # seconds each exec waits before running (scale simulation)
    exec_faults: object = None  # standin_exec.ExecFaults
    tls: bool = False  # HTTPS with a throwaway self-signed certificate (kubectl sends no token over plain HTTP)
    # pods/create and pods/delete (--debug-pod); an image in `failing_images` never starts (ErrImagePull), and a
    # created pod stays Pending for `pod_start_seconds` first, as a kubelet pulling an image would
    pod_writes: bool = True
    failing_images: tuple[str, ...] = ("standin.invalid/pull-fails",)
    pod_start_seconds: float = 0.0
    created: list[dict] = field(default_factory=list)  # every pod body a client POSTed, accepted or not
    deleted: list[str] = field(default_factory=list)  # "namespace/name" of every pod deleted

    def __post_init__(self):
        self._store: dict[tuple[str, str], list[dict]] = {key: [] for key in RESOURCES}
        for obj in self.objects:
            key = KIND_TO_RESOURCE.get(obj.get("kind"))
            if key is None:
                raise ValueError(f"the stand-in does not serve kind {obj.get('kind')!r}")
            self._store[key].append(copy.deepcopy(obj))
        namespaces = {
            (o.get("metadata") or {}).get("namespace") for o in self.objects if RESOURCES[KIND_TO_RESOURCE[o["kind"]]][1]
        }
        known = {(o.get("metadata") or {}).get("name") for o in self._store[("v1", "namespaces")]}
        for ns in sorted(n for n in namespaces | {"default", "kube-system"} if n and n not in known):
            self._store[("v1", "namespaces")].append(
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "uid": _uid("ns", ns)},
                 "status": {"phase": "Active"}}
            )
        for items in self._store.values():
            items.sort(key=lambda o: ((o["metadata"].get("namespace") or ""), o["metadata"]["name"]))
        self.resource_version = "4242"
        self._lock = threading.Lock()
        self._release = threading.Event()  # wakes hanging handlers at shutdown
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        from .standin_exec import ExecCounter, ExecFaults

        self.exec_faults = self.exec_faults or ExecFaults()
        self.exec_counter = ExecCounter()

    def get_object(self, key: tuple[str, str], namespace: str | None, name: str) -> dict | None:
        return next((o for o in self._store[key] if o["metadata"]["name"] == name
                     and o["metadata"].get("namespace") == namespace), None)

    # --- lifecycle -------------------------------------------------------------------------------------------
    def start(self) -> StandinApiServer:
        server = self

        class Handler(_Handler):
            standin = server

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        if self.tls:
            self._httpd.socket = self._tls_context().wrap_socket(
                self._httpd.socket, server_side=True, do_handshake_on_connect=False)  # handshake in the handler
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="standin-apiserver", daemon=True)
        self._thread.start()
        return self

    def _tls_context(self):
        """A self-signed certificate for 127.0.0.1 made with the openssl command; the kubeconfig trusts it."""
        import ssl
        import subprocess
        import tempfile

        folder = Path(tempfile.mkdtemp(prefix="standin-tls-"))
        self.cert_file, key = folder / "cert.pem", folder / "key.pem"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                        "/CN=standin-apiserver", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key),
                        "-out", str(self.cert_file)], check=True, capture_output=True)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert_file, key)
        return context

    def stop(self) -> None:
        self._release.set()
        if self._httpd:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> StandinApiServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._httpd, "stand-in API server not started"
        host, port = self._httpd.server_address[:2]
        return f"{'https' if self.tls else 'http'}://{host}:{port}"

    def write_kubeconfig(self, path: Path, *, cluster: str = "myk8s", token: str = ADMIN_TOKEN) -> Path:
        """A kubeconfig like `kind get kubeconfig` writes (context kind-<cluster>), pointing at the stand-in."""
        import yaml

        name = f"kind-{cluster}"
        doc = {
            "apiVersion": "v1",
            "kind": "Config",
            "preferences": {},
            "clusters": [{"name": name, "cluster": {"server": self.url, **self._ca()}}],
            "users": [{"name": name, "user": {"token": token}}],
            "contexts": [{"name": name, "context": {"cluster": name, "user": name}}],
            "current-context": name,
        }
        path = Path(path)
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        return path

    def _ca(self) -> dict:
        if not self.tls:
            return {}
        return {"certificate-authority-data": base64.b64encode(self.cert_file.read_bytes()).decode()}

    def list_requests(self, plural: str) -> list[RecordedRequest]:
        """Recorded GETs of a collection (for pagination assertions)."""
        with self._lock:
            return [r for r in self.requests if r.path.rstrip("/").endswith("/" + plural)]

    # --- request handling ------------------------------------------------------------------------------------
    def _record(self, method: str, path: str, query: dict[str, str], status: int) -> None:
        with self._lock:
            self.requests.append(RecordedRequest(method, path, query, status))

    def handle(self, method: str, path: str, query: dict[str, str], auth: str | None,
               body: bytes = b"") -> tuple[int, dict] | None:
        """(HTTP status, JSON body), or None to hang without answering."""
        write = self._pod_write(method, path)
        if method == "POST" and write:
            with self._lock:
                try:
                    self.created.append(json.loads(body or b"{}"))
                except ValueError:
                    pass
        if method != "GET" and not write:
            return 405, _status(405, "MethodNotAllowed", f"the stand-in API server is read-only ({method} {path})")
        if path in UNAUTHENTICATED_PATHS:
            return self._public(path)
        if path == "/standin/execs":  # not an API path: the stand-in's own exec counter, for benchmarks
            c = self.exec_counter
            return 200, {"active": c.active, "peak": c.peak, "total": c.total, "bytes": c.bytes}
        token = auth[len("Bearer "):] if auth and auth.startswith("Bearer ") else None
        if self.fault == "hang":
            self._release.wait(self.hang_seconds)
            return None
        if self.fault == "401" or token not in (ADMIN_TOKEN, FORBIDDEN_TOKEN):
            return 401, _status(401, "Unauthorized", "Unauthorized")
        if self.fault == "403" or token == FORBIDDEN_TOKEN:
            return 403, _status(403, "Forbidden", self._forbidden_message(path))
        if query.get("watch") in ("true", "1"):
            return 400, _status(400, "BadRequest", "watch is not supported by the stand-in API server")
        if write == "create":
            return self._create_pod(path, body)
        if write == "delete":
            return self._delete_pod(path)
        discovery = self._discovery(path)
        if discovery is not None:
            return 200, discovery
        return self._resource(path, query)

    # --- pods/create and pods/delete (svcdoctor's --debug-pod) ------------------------------------------------
    def _pod_write(self, method: str, path: str) -> str | None:
        """"create" for POST …/namespaces/NS/pods, "delete" for DELETE …/namespaces/NS/pods/NAME, else None."""
        parts = [p for p in path.split("/") if p]
        if not self.pod_writes or parts[:3] != ["api", "v1", "namespaces"] or len(parts) < 5 or parts[4] != "pods":
            return None
        if method == "POST" and len(parts) == 5:
            return "create"
        if method == "DELETE" and len(parts) == 6:
            return "delete"
        return None

    def _create_pod(self, path: str, body: bytes) -> tuple[int, dict]:
        namespace = path.strip("/").split("/")[3]
        try:
            pod = json.loads(body or b"{}")
        except ValueError:
            return 400, _status(400, "BadRequest", "the body is not JSON")
        meta = pod.setdefault("metadata", {})
        name, spec = meta.get("name"), pod.get("spec") or {}
        if not name or not spec.get("containers"):
            return 422, _status(422, "Invalid", "a pod needs metadata.name and spec.containers")
        if meta.get("namespace", namespace) != namespace:
            return 400, _status(400, "BadRequest", "the namespace of the object does not match the request")
        with self._lock:
            if self.get_object(("v1", "pods"), namespace, name) is not None:
                return 409, _status(409, "AlreadyExists", f'pods "{name}" already exists',
                                    details={"name": name, "kind": "pods"})
            meta.update(namespace=namespace, uid=_uid("pod", namespace, name, str(time.monotonic_ns())),
                        creationTimestamp=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), resourceVersion="1")
            pod.update(apiVersion="v1", kind="Pod", status={"phase": "Pending"})
            node = next((n for n in self._store[("v1", "nodes")] if n["metadata"]["name"] == spec.get("nodeName")), None)
            if node is not None:
                pod["status"]["hostIP"] = next((a["address"] for a in (node.get("status") or {}).get("addresses") or []
                                                if a.get("type") == "InternalIP"), None)
            items = self._store[("v1", "pods")]
            items.append(pod)
            items.sort(key=lambda o: ((o["metadata"].get("namespace") or ""), o["metadata"]["name"]))
        if node is not None:
            # a kubelet would now pull the image and start the container; the stand-in only flips the status
            timer = threading.Timer(self.pod_start_seconds, self._start_pod, args=(pod,))
            timer.daemon = True
            timer.start()
        return 201, copy.deepcopy(pod)

    def _start_pod(self, pod: dict) -> None:
        container = pod["spec"]["containers"][0]
        with self._lock:
            if container.get("image") in self.failing_images:
                waiting = {"reason": "ErrImagePull", "message": f'failed to pull image "{container.get("image")}"'}
                pod["status"]["containerStatuses"] = [{"name": container["name"], "ready": False,
                                                       "state": {"waiting": waiting}}]
                return
            pod["status"].update(phase="Running", podIP=pod["status"].get("hostIP"),
                                 conditions=[{"type": "Ready", "status": "True"}],
                                 containerStatuses=[{"name": container["name"], "ready": True,
                                                     "state": {"running": {}}}])

    def _delete_pod(self, path: str) -> tuple[int, dict]:
        parts = path.strip("/").split("/")
        namespace, name = parts[3], parts[5]
        with self._lock:
            pod = self.get_object(("v1", "pods"), namespace, name)
            if pod is None:
                return 404, _status(404, "NotFound", f'pods "{name}" not found', details={"name": name, "kind": "pods"})
            self._store[("v1", "pods")].remove(pod)
            self.deleted.append(f"{namespace}/{name}")
        return 200, copy.deepcopy(pod)

    def pods_labelled(self, selector: str) -> list[dict]:
        """The pods the stand-in holds now that match a label selector (for tests)."""
        with self._lock:
            return [copy.deepcopy(p) for p in self._store[("v1", "pods")] if _labels_match(p, selector)]

    def _forbidden_message(self, path: str) -> str:
        parts = [p for p in path.split("/") if p]
        resource = parts[-1] if parts else "resource"
        return (f'{resource} is forbidden: User "{FORBIDDEN_USER}" cannot list resource "{resource}" '
                f'in API group "" at the cluster scope')

    def _public(self, path: str) -> tuple[int, dict]:
        if path == "/version":
            major, minor = self.git_version.lstrip("v").split(".")[:2]
            return 200, {"major": major, "minor": minor, "gitVersion": self.git_version, "gitCommit": "stand-in",
                         "gitTreeState": "clean", "buildDate": "2023-08-15T10:00:00Z", "goVersion": "go1.20.7",
                         "compiler": "gc", "platform": "linux/amd64"}
        return 200, {"status": "ok"}

    def _discovery(self, path: str) -> dict | None:
        path = path.rstrip("/")
        if path == "/api":
            return {"kind": "APIVersions", "versions": ["v1"],
                    "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1:6443"}]}
        if path == "/apis":
            return {"kind": "APIGroupList", "apiVersion": "v1", "groups": [
                {"name": "discovery.k8s.io",
                 "versions": [{"groupVersion": "discovery.k8s.io/v1", "version": "v1"}],
                 "preferredVersion": {"groupVersion": "discovery.k8s.io/v1", "version": "v1"}}]}
        for gv, prefix in (("v1", "/api/v1"), ("discovery.k8s.io/v1", "/apis/discovery.k8s.io/v1")):
            if path == prefix:
                return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": [
                    {"name": plural, "singularName": kind.lower(), "namespaced": namespaced, "kind": kind,
                     "verbs": ["get", "list"]}
                    for (g, plural), (kind, namespaced) in RESOURCES.items() if g == gv]}
        if path == "/apis/discovery.k8s.io":
            return {"kind": "APIGroup", "apiVersion": "v1", "name": "discovery.k8s.io",
                    "versions": [{"groupVersion": "discovery.k8s.io/v1", "version": "v1"}],
                    "preferredVersion": {"groupVersion": "discovery.k8s.io/v1", "version": "v1"}}
        return None

    def _resource(self, path: str, query: dict[str, str]) -> tuple[int, dict]:
        parts = [p for p in path.split("/") if p]
        if parts[:2] == ["api", "v1"]:
            gv, rest = "v1", parts[2:]
        elif parts[:1] == ["apis"] and len(parts) >= 3:
            gv, rest = f"{parts[1]}/{parts[2]}", parts[3:]
        else:
            return 404, _status(404, "NotFound", "the server could not find the requested resource")
        namespace = None
        if len(rest) >= 3 and rest[0] == "namespaces":
            namespace, rest = rest[1], rest[2:]
        if not rest or len(rest) > 2 or (gv, rest[0]) not in RESOURCES:
            return 404, _status(404, "NotFound", "the server could not find the requested resource")
        plural = rest[0]
        kind, namespaced = RESOURCES[(gv, plural)]
        if namespace is not None and not namespaced:
            return 404, _status(404, "NotFound", "the server could not find the requested resource")
        with self._lock:  # pods may be created and deleted meanwhile
            items = [o for o in self._store[(gv, plural)]
                     if namespace is None or (o["metadata"].get("namespace") == namespace)]
        if len(rest) == 2:  # GET one object
            if namespaced and namespace is None:
                return 404, _status(404, "NotFound", "the server could not find the requested resource")
            for obj in items:
                if obj["metadata"]["name"] == rest[1]:
                    return 200, obj
            group = gv.split("/")[0] if "/" in gv else ""
            return 404, _status(404, "NotFound", f'{plural}{"." + group if group else ""} "{rest[1]}" not found',
                                details={"name": rest[1], "group": group, "kind": plural})
        try:
            items = [o for o in items if _labels_match(o, query.get("labelSelector", ""))
                     and _fields_match(o, query.get("fieldSelector", ""))]
        except ValueError as exc:
            return 400, _status(400, "BadRequest", str(exc))
        return self._page(gv, kind, items, query)

    def _page(self, gv: str, kind: str, items: list[dict], query: dict[str, str]) -> tuple[int, dict]:
        selection = (query.get("labelSelector", ""), query.get("fieldSelector", ""))
        offset = 0
        if query.get("continue"):
            try:
                token = json.loads(base64.urlsafe_b64decode(query["continue"].encode()))
                offset = int(token["offset"])
                if token["rv"] != self.resource_version or tuple(token["sel"]) != selection:
                    raise ValueError
            except (ValueError, KeyError, TypeError):
                return 400, _status(400, "BadRequest", "continue key is not valid for this list")
        limit = int(query.get("limit") or 0)
        if self.max_page_size:
            limit = min(limit or self.max_page_size, self.max_page_size)
        metadata: dict = {"resourceVersion": self.resource_version}
        page = items[offset:]
        if limit and len(page) > limit:
            page = page[:limit]
            nxt = {"offset": offset + limit, "rv": self.resource_version, "sel": list(selection)}
            metadata["continue"] = base64.urlsafe_b64encode(json.dumps(nxt).encode()).decode()
            metadata["remainingItemCount"] = len(items) - offset - limit
        body_items = []
        for obj in page:
            item = copy.deepcopy(obj)
            # a real server's list items carry no kind/apiVersion (kubectl adds them when printing)
            item.pop("kind", None)
            item.pop("apiVersion", None)
            body_items.append(item)
        return 200, {"kind": f"{kind}List", "apiVersion": gv, "metadata": metadata, "items": body_items}


class _Handler(BaseHTTPRequestHandler):
    standin: StandinApiServer
    protocol_version = "HTTP/1.1"  # keep-alive, as the client's urllib3 pool expects
    server_version = "standin-apiserver"

    def do_GET(self):  # noqa: N802 (http.server's naming)
        self._serve("GET")

    def do_POST(self):  # noqa: N802
        self._serve("POST")

    def do_PUT(self):  # noqa: N802
        self._serve("PUT")

    def do_DELETE(self):  # noqa: N802
        self._serve("DELETE")

    def _serve(self, method: str) -> None:
        split = urlsplit(self.path)
        lists = parse_qs(split.query, keep_blank_values=True)
        query = {k: v[-1] for k, v in lists.items()}
        from .standin_exec import is_exec, serve_exec

        if (method == "GET" and is_exec(split.path) and self.standin.exec_runner is not None
                and self.headers.get("Upgrade", "").lower() == "websocket"):
            serve_exec(self, self.standin, split.path, lists)
            return
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        answer = self.standin.handle(method, split.path, query, self.headers.get("Authorization"), body)
        if answer is None:  # hang: close without a word once released
            self.standin._record(method, split.path, query, 0)
            self.close_connection = True
            return
        status, body = answer
        self.standin._record(method, split.path, query, status)
        self._send_json(status, body)

    def _send_json(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Audit-Id", f"standin-{time.monotonic_ns()}")
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


def _status(code: int, reason: str, message: str, details: dict | None = None) -> dict:
    body = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": reason, "code": code}
    if details:
        body["details"] = details
    return body


def _uid(*parts: str) -> str:
    import uuid

    return str(uuid.uuid5(uuid.NAMESPACE_URL, "standin/" + "/".join(parts)))


def _split_selector(selector: str) -> list[str]:
    """Split on commas that are not inside `in (a,b)` parentheses."""
    terms, depth, current = [], 0, ""
    for ch in selector:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            terms.append(current.strip())
            current = ""
        else:
            current += ch
    if current.strip():
        terms.append(current.strip())
    return terms


def _labels_match(obj: dict, selector: str) -> bool:
    """Kubernetes label selector: k=v, k==v, k!=v, k, !k, k in (a,b), k notin (a,b)."""
    labels = (obj.get("metadata") or {}).get("labels") or {}
    for term in _split_selector(selector):
        if " notin " in term or " in " in term:
            negate = " notin " in term
            key, values = term.split(" notin " if negate else " in ", 1)
            values = values.strip()
            if not (values.startswith("(") and values.endswith(")")):
                raise ValueError(f"unable to parse requirement: {term!r}")
            allowed = {v.strip() for v in values[1:-1].split(",")}
            present = labels.get(key.strip()) in allowed
            if present == negate:
                return False
        elif "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key.strip()) == value.strip():
                return False
        elif "=" in term:
            key, value = term.replace("==", "=").split("=", 1)
            if labels.get(key.strip()) != value.strip():
                return False
        elif term.startswith("!"):
            if term[1:].strip() in labels:
                return False
        elif term not in labels:
            return False
    return True


def _fields_match(obj: dict, selector: str) -> bool:
    """Field selector on dotted paths (metadata.name, metadata.namespace, spec.nodeName): =, ==, !=."""
    for term in _split_selector(selector):
        negate = "!=" in term
        key, value = term.split("!=" if negate else "=", 1) if ("=" in term) else (term, None)
        if value is None:
            raise ValueError(f"invalid field selector: {term!r}")
        current: object = obj
        for part in key.lstrip("=").strip().split("."):
            current = current.get(part) if isinstance(current, dict) else None
        actual = "" if current is None else str(current)
        if (actual == value.lstrip("=").strip()) == negate:
            return False
    return True
