"""Run one command (an argv, never a shell string) in a pod through `pods/exec`, over the kubernetes client's
WebSocket transport, with stdout and stderr kept apart, the exit status read, a byte limit and a timeout.

The exec endpoint (`GET /api/v1/namespaces/NS/pods/POD/exec?command=…&stdout=true&stderr=true`, upgraded to a
WebSocket) speaks the channel protocol `v5.channel.k8s.io` or `v4.channel.k8s.io`: each binary message starts with
its channel byte (1 stdout, 2 stderr, 3 a final `Status` object; v5 adds 255 "channel closed"). The exit status is
that Status: `Success`, or `NonZeroExitCode` with the code in `details.causes[ExitCode]` (Kubernetes'
`staging/src/k8s.io/apimachinery/pkg/util/remotecommand/constants.go` and `client-go/tools/remotecommand`).

Why `ws_client.WSClient` and not `kubernetes.stream.stream()`: stream() swaps the shared ApiClient's `call_api`
for the duration of the call (kubernetes/stream/stream.py), so two threads streaming on one client — or one
streaming while another lists — can send a list over the WebSocket path. The WSClient underneath is the same
transport stream() uses, called directly, so parallel execs on one client are safe.

`command` is passed as repeated `command=` query parameters: the container runtime execs that argv directly
(no shell), which also works in kube-proxy images that have none (distroless).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from svcdoctor.errors import first_line, is_timeout

DEFAULT_MAX_BYTES = 64 * 1024 * 1024  # a 100,000-service node prints ~30 MB; anything past this is not iptables-save
STDOUT, STDERR, STATUS = 1, 2, 3


class ExecFailed(Exception):
    """The exec could not be made or did not end properly (not a non-zero exit: that is an ExecResult)."""

    def __init__(self, message: str, *, status: int | None = None):
        super().__init__(message)
        self.status = status  # the HTTP status of a refused upgrade (403, 404, …), when there was one
        self.explanation = message  # what node_rules._exec_failure shows


class ExecTimeout(ExecFailed):
    """No end within the timeout (node_rules reads the class name to mark the read as timed out)."""


@dataclass(slots=True)
class ExecResult:
    """Shaped like docker's ExecResult with demux=True, so `node_rules.read_backend` reads both the same way."""

    exit_code: int
    output: tuple[bytes, bytes]


@dataclass(slots=True)
class PodTarget:
    """One container of one pod that commands can be run in; `exec_run` is what node_rules calls."""

    session: object  # kube_api.ApiSession
    namespace: str
    pod: str
    container: str | None = None
    timeout: float = 10.0
    max_bytes: int = DEFAULT_MAX_BYTES

    def exec_run(self, argv: list[str], demux: bool = True) -> ExecResult:  # noqa: ARG002 - always demuxed
        return exec_in_pod(self.session, self.namespace, self.pod, argv, container=self.container,
                           timeout=self.timeout, max_bytes=self.max_bytes)

    def __str__(self) -> str:
        return f"pod {self.namespace}/{self.pod}"


def exec_url(host: str, namespace: str, pod: str, argv: list[str], container: str | None) -> str:
    from kubernetes.stream.ws_client import get_websocket_url

    params = [("command", list(argv)), ("stdout", "true"), ("stderr", "true"), ("stdin", "false"), ("tty", "false")]
    if container:
        params.append(("container", container))
    return get_websocket_url(f"{host.rstrip('/')}/api/v1/namespaces/{namespace}/pods/{pod}/exec", params)


def exec_in_pod(session, namespace: str, pod: str, argv: list[str], *, container: str | None = None,
                timeout: float = 10.0, max_bytes: int = DEFAULT_MAX_BYTES) -> ExecResult:
    """Run argv in the pod; ExecResult for any exit status, ExecFailed/ExecTimeout when it did not run or end."""
    configuration = session.client.configuration
    url = exec_url(configuration.host, namespace, pod, argv, container)
    deadline = time.monotonic() + timeout
    client = _connect(configuration, url, timeout, f"{namespace}/{pod}")
    try:
        while client.is_open():
            left = deadline - time.monotonic()
            if left <= 0:
                raise ExecTimeout(f"{argv[0]} in pod {namespace}/{pod} did not finish within {timeout:g}s")
            try:
                client.update(timeout=min(left, 1.0))
            except Exception as exc:  # noqa: BLE001 - websocket-client raises a zoo of socket errors
                if is_timeout(exc):
                    continue  # the socket timeout fired between frames; the loop checks the deadline
                raise ExecFailed(f"the exec stream of pod {namespace}/{pod} broke: {first_line(exc)}") from exc
            size = len(client.peek_channel(STDOUT)) + len(client.peek_channel(STDERR))
            if size > max_bytes:
                raise ExecFailed(f"{argv[0]} in pod {namespace}/{pod} printed more than {max_bytes} bytes")
        stdout, stderr = client.read_channel(STDOUT), client.read_channel(STDERR)
        status = client.read_channel(STATUS)
    finally:
        client.close()
    return ExecResult(exit_code=exit_code(status, f"{namespace}/{pod}"), output=(stdout, stderr))


def exit_code(status: bytes, where: str) -> int:
    """The command's exit status from the Status object on channel 3. No Status means the stream was cut
    before the command ended (a real API server always sends one), which is a failure, not a success."""
    if not status:
        raise ExecFailed(f"the exec stream of pod {where} ended without an exit status (connection cut?)")
    try:
        doc = json.loads(status)
    except ValueError as exc:
        raise ExecFailed(f"pod {where}: unreadable exec status {status[:100]!r}") from exc
    if doc.get("status") == "Success":
        return 0
    details = doc.get("details") or {}
    for cause in details.get("causes") or []:
        if cause.get("reason") == "ExitCode":
            try:
                return int(cause.get("message"))
            except (TypeError, ValueError):
                break
    # e.g. "executable file not found in $PATH": the container runtime could not start the command
    raise ExecFailed(f"pod {where}: {doc.get('message') or doc.get('reason') or 'exec failed'}")


def _connect(configuration, url: str, timeout: float, where: str):
    """Open the WebSocket (the handshake is the `pods/exec` request: RBAC answers it with 403)."""
    import websocket
    from kubernetes.stream import ws_client

    headers = {}
    bearer = (configuration.auth_settings() or {}).get("BearerToken")
    if bearer and bearer.get("value"):
        headers["authorization"] = bearer["value"]
    # create_websocket() passes no timeout, so websocket-client falls back to its module default: set it, or a
    # server that accepts the connection and never answers the handshake would hold this thread for good
    websocket.setdefaulttimeout(timeout)
    try:
        client = ws_client.WSClient(configuration, url, headers, capture_all=False, binary=True)
    except websocket.WebSocketBadStatusException as exc:
        raise ExecFailed(_refusal(exc, where), status=exc.status_code) from exc
    except Exception as exc:  # noqa: BLE001 - connection refused, TLS, DNS, …
        if is_timeout(exc):
            raise ExecTimeout(f"no answer to the exec request for pod {where} within {timeout:g}s") from exc
        raise ExecFailed(f"cannot open an exec stream to pod {where}: {first_line(exc)}") from exc
    return client


def _refusal(exc, where: str) -> str:
    """The API server's Status message for a refused exec (403 from RBAC, 404 no such pod, 400 not running)."""
    message = ""
    body = getattr(exc, "resp_body", None)
    if body:
        try:
            message = json.loads(body).get("message") or ""
        except (ValueError, AttributeError):
            message = body.decode("utf-8", "replace") if isinstance(body, bytes) else str(body)
    code = exc.status_code
    label = {403: "forbidden", 401: "unauthorized", 404: "not found"}.get(code, "refused")
    return f"exec into pod {where} {label} (HTTP {code}){': ' + message[:300] if message else ''}"
