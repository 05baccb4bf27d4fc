"""`pods/exec` for the stand-in API server: the WebSocket side of `kubectl exec` / `kubernetes.stream`, with the
channel protocols `v5.channel.k8s.io` and `v4.channel.k8s.io`.

Not a kubelet. The stand-in (`standin_apiserver.py`) hands an upgrade request for
`/api/v1/namespaces/NS/pods/POD/exec?command=A&command=B&stdout=true&stderr=true` here; the handshake and the
framing are done by the `websockets` library's sans-I/O `ServerProtocol` (RFC 6455: key check, subprotocol
negotiation, masking, close handshake, ping/pong); the argv runs through a runner the test gives (in the lab: a
`docker exec` of that argv, no shell, in the node container the pod is scheduled on). What goes back is what a
real API server sends: one binary message per chunk, its first byte the channel (1 stdout, 2 stderr), then on
channel 3 a `Status` (`Success`, or `NonZeroExitCode` with `causes[{reason: ExitCode, message: "N"}]`; Kubernetes'
`staging/src/k8s.io/apimachinery/pkg/util/remotecommand/constants.go`, `kubelet/cri/streaming/remotecommand`), then
a close frame.

Per-pod (or per-node) faults (`ExecFaults`): `hang` (upgrade, then never a byte), `cut` (half of stdout, then the TCP connection
dropped without a close frame), `no-shell` (an image without a shell: `sh`/`bash` are not found, as the runtime
says it), and 403 for pods the user may not exec into. The stand-in counts open execs and their peak, so a test
can check that a client never has more open than it promised.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from websockets.datastructures import Headers
from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.server import ServerProtocol
from websockets.typing import Subprotocol

V5, V4 = "v5.channel.k8s.io", "v4.channel.k8s.io"
STDOUT, STDERR, STATUS = 1, 2, 3
CHUNK = 32 * 1024  # a real API server relays the kubelet's stream in pieces; several frames test reassembly
SHELLS = {"sh", "bash", "/bin/sh", "/bin/bash", "ash", "dash"}
HANG, CUT, NO_SHELL = "hang", "cut", "no-shell"

# runner(pod object, container, argv) -> (stdout, stderr, exit code)
Runner = Callable[[dict, "str | None", list], tuple]


@dataclass
class ExecFaults:
    by_pod: dict[str, str] = field(default_factory=dict)  # pod name -> HANG | CUT | NO_SHELL
    by_node: dict[str, str] = field(default_factory=dict)  # node name -> the same, for pods named at run time
    forbidden: set[str] = field(default_factory=set)  # pod names whose exec answers 403


@dataclass
class ExecCounter:
    active: int = 0
    peak: int = 0
    total: int = 0
    bytes: int = 0  # stdout and stderr sent back, every exec together (what moved through the "API server")
    lock: threading.Lock = field(default_factory=threading.Lock)

    def sent(self, n: int) -> None:
        with self.lock:
            self.bytes += n

    def enter(self) -> None:
        with self.lock:
            self.active += 1
            self.total += 1
            self.peak = max(self.peak, self.active)

    def leave(self) -> None:
        with self.lock:
            self.active -= 1


def is_exec(path: str) -> bool:
    parts = [p for p in path.split("/") if p]
    return len(parts) == 7 and parts[:3] == ["api", "v1", "namespaces"] and parts[4] == "pods" and parts[6] == "exec"


def serve_exec(handler, standin, path: str, query: dict[str, list[str]]) -> None:
    """Answer one exec request on the handler's connection (an http.server BaseHTTPRequestHandler)."""
    parts = [p for p in path.split("/") if p]
    namespace, pod_name = parts[3], parts[5]
    argv = query.get("command") or []
    container = (query.get("container") or [None])[-1]
    refusal = _refusal(standin, handler.headers.get("Authorization"), namespace, pod_name, argv)
    if refusal is not None:
        handler._send_json(*refusal)
        return
    pod = standin.get_object(("v1", "pods"), namespace, pod_name)
    protocol = ServerProtocol(subprotocols=[Subprotocol(p) for p in standin.exec_protocols], max_size=2**20)
    protocol.receive_data(_raw_request(handler))
    request = next(e for e in protocol.events_received() if isinstance(e, Request))
    response = protocol.accept(request)
    protocol.send_response(response)
    sock: socket.socket = handler.connection
    handler.close_connection = True  # the connection is the WebSocket's now
    _flush(protocol, sock)
    standin._record("GET", path, {"command": " ".join(argv)}, response.status_code)
    if response.status_code != 101:
        return
    fault = standin.exec_faults.by_pod.get(pod_name) or standin.exec_faults.by_node.get(
        ((pod or {}).get("spec") or {}).get("nodeName"))
    standin.exec_counter.enter()
    counted = True
    try:
        if fault == HANG:
            standin._release.wait(standin.hang_seconds)
            sock.close()
            return
        if fault == NO_SHELL and argv and argv[0] in SHELLS:
            out, err, code = b"", b"", None
            status = _failure(f'failed to exec in container: exec: "{argv[0]}": executable file not found in $PATH')
        else:
            time.sleep(standin.exec_latency)
            out, err, code = standin.exec_runner(pod, container, argv)
            status = _exit_status(code, argv)
        if fault == CUT:
            _send(protocol, sock, STDOUT, out[: max(1, len(out) // 2)])
            sock.shutdown(socket.SHUT_RDWR)  # no close frame, no status: the stream just stops
            sock.close()
            return
        _send(protocol, sock, STDOUT, out)
        _send(protocol, sock, STDERR, err)
        standin.exec_counter.sent(len(out) + len(err))
        protocol.send_binary(bytes([STATUS]) + json.dumps(status).encode())
        protocol.send_close(1000)
        # the exec is over once its status is out (counted before the client can see it, so that a client which
        # opens its next exec on reading it is never counted twice); the close handshake only tidies up
        standin.exec_counter.leave()
        counted = False
        _flush(protocol, sock)
        _await_close(protocol, sock)
    except OSError:
        pass  # the client went away
    finally:
        if counted:
            standin.exec_counter.leave()
        try:
            sock.close()
        except OSError:
            pass


def _refusal(standin, auth: str | None, namespace: str, pod_name: str, argv: list[str]):
    from .standin_apiserver import ADMIN_TOKEN, FORBIDDEN_TOKEN, FORBIDDEN_USER, _status

    token = auth[len("Bearer "):] if auth and auth.startswith("Bearer ") else None
    if token not in (ADMIN_TOKEN, FORBIDDEN_TOKEN):
        return 401, _status(401, "Unauthorized", "Unauthorized")
    if token == FORBIDDEN_TOKEN or pod_name in standin.exec_faults.forbidden:
        # an upgrade is a GET, and RBAC checks `get` (and `create` for a POST) on pods/exec
        return 403, _status(403, "Forbidden", f'pods "{pod_name}" is forbidden: User "{FORBIDDEN_USER}" cannot get '
                                              f'resource "pods/exec" in API group "" in the namespace "{namespace}"',
                            details={"name": pod_name, "kind": "pods"})
    if not argv:
        return 400, _status(400, "BadRequest", "you must specify at least 1 command")
    pod = standin.get_object(("v1", "pods"), namespace, pod_name)
    if pod is None:
        return 404, _status(404, "NotFound", f'pods "{pod_name}" not found', details={"name": pod_name, "kind": "pods"})
    if (pod.get("status") or {}).get("phase") != "Running":
        phase = (pod.get("status") or {}).get("phase")
        return 400, _status(400, "BadRequest", f"pod {pod_name} is not running (phase {phase})")
    return None


def _raw_request(handler) -> bytes:
    """http.server has read the request line and headers already; hand them to the protocol as they came."""
    lines = [handler.requestline] + [f"{k}: {v}" for k, v in handler.headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _send(protocol: ServerProtocol, sock, channel: int, data: bytes) -> None:
    for start in range(0, len(data), CHUNK):
        protocol.send_binary(bytes([channel]) + data[start:start + CHUNK])
        _flush(protocol, sock)


def _flush(protocol: ServerProtocol, sock) -> None:
    for chunk in protocol.data_to_send():
        if chunk:
            sock.sendall(chunk)


def _await_close(protocol: ServerProtocol, sock, seconds: float = 2.0) -> None:
    """Read until the client answers the close frame (pings answered on the way)."""
    sock.settimeout(seconds)
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return
            protocol.receive_data(data)
            events = protocol.events_received()
            _flush(protocol, sock)
            if any(isinstance(e, Frame) and e.opcode == Opcode.CLOSE for e in events):
                return
    except (OSError, TimeoutError):
        return


def _exit_status(code: int, argv: list[str]) -> dict:
    if code == 0:
        return {"metadata": {}, "status": "Success"}
    return {"metadata": {}, "status": "Failure",
            "message": f"command terminated with non-zero exit code: error executing command {argv}, exit code {code}",
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]}}


def _failure(message: str) -> dict:
    return {"metadata": {}, "status": "Failure", "message": message, "reason": "InternalError",
            "details": {"causes": [{"message": message}]}, "code": 500}


def docker_runner(client) -> Runner:
    """Run the argv (a list, no shell) in the node container the pod is scheduled on, stdout and stderr apart."""

    def run(pod: dict, container: str | None, argv: list[str]) -> tuple[bytes, bytes, int]:
        node = (pod.get("spec") or {}).get("nodeName")
        result = client.containers.get(node).exec_run(list(argv), demux=True)
        out, err = result.output if isinstance(result.output, tuple) else (result.output, b"")
        return out or b"", err or b"", result.exit_code

    return run


__all__ = ["ExecFaults", "ExecCounter", "serve_exec", "is_exec", "docker_runner", "Headers", "V4", "V5"]
