"""Helper pods, only with the user's consent (`--debug-pod IMAGE`): a node without a usable kube-proxy pod is read
through a short-lived pod of svcdoctor's own on that node. Without the flag svcdoctor creates nothing.

The pod has the least privilege that can read the rules: the host's network namespace (`hostNetwork`, where the
rules are) and the capabilities NET_ADMIN (nf_tables and iptables' getsockopt need it to *list* rules) and
NET_RAW (iptables-legacy lists through a raw socket) — every other capability dropped, not privileged, no
privilege escalation, no service account token. It is pinned to its node (`nodeName`: no scheduler), tolerates
every taint (`operator: Exists`, so NoExecute taints do not evict it), never restarts, and runs `sleep LEASE`
as an argv: svcdoctor execs the same argv-only reads into it as into a kube-proxy pod (`api_nodes.read_node`).

It is always deleted: by the worker that used it as soon as its node is read (success or error), and by the
run's cleanup (`DebugPods.close`) on any way out — an error, Ctrl-C, or SIGTERM/SIGHUP, which the guard turns
into the same interruption. Each pod carries its lease (`svcdoctor.io/lease-until`): when the run that made it
can no longer be using it, and `activeDeadlineSeconds` makes the kubelet stop it then, whatever happens to
svcdoctor. A run that was killed outright (SIGKILL) leaves its pods behind; the next `--debug-pod` run lists the
pods with svcdoctor's labels that are older than itself and past their lease, deletes them and says so. A pod
still within its lease belongs to a run that may be going on (someone else's): it is named and left alone.

The grants this needs, apart from the read-only manifest: docs/reference/rbac.md, "Only for --debug-pod".
"""

from __future__ import annotations

import random
import re
import signal
import string
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from svcdoctor.collect import kube_api, rbac
from svcdoctor.collect.proxy_pods import ProxyPod

MANAGED_BY = "app.kubernetes.io/managed-by"
COMPONENT = "app.kubernetes.io/component"
LABELS = {MANAGED_BY: "svcdoctor", COMPONENT: "debug-pod"}
SELECTOR = ",".join(f"{k}={v}" for k, v in LABELS.items())
LEASE_ANNOTATION = "svcdoctor.io/lease-until"
NODE_ANNOTATION = "svcdoctor.io/node"
CONTAINER = "svcdoctor-debug"
DEFAULT_NAMESPACE = "default"
CAPABILITIES = ["NET_ADMIN", "NET_RAW"]
# a container that cannot start: no point waiting out the whole start timeout
HOPELESS = {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "CreateContainerConfigError",
            "CreateContainerError", "RunContainerError", "ErrImageNeverPull"}
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


@dataclass(slots=True)
class DebugPodOptions:
    """--debug-pod IMAGE, --debug-namespace, --image-pull-secret."""

    image: str
    namespace: str = DEFAULT_NAMESPACE
    pull_secret: str | None = None


class DebugPodError(Exception):
    """The helper pod could not be created or did not start; the message is the node's error."""


def start_timeout(timeout: float) -> float:
    """How long to wait for a helper pod to run: pulling an image takes longer than a read."""
    return max(30.0, 3 * timeout)


def lease_seconds(timeout: float) -> int:
    """How long a run can be using one helper pod: starting it, then two tries of three reads (api_nodes)."""
    return int(start_timeout(timeout) + 6 * timeout + 30)


def pod_name(node: str, rng: random.Random | None = None) -> str:
    """`svcdoctor-debug-NODE-xxxxx`: a DNS-1123 name (node names are), short enough, unique per run."""
    base = re.sub(r"[^a-z0-9-]", "-", node.lower())[:40].strip("-") or "node"
    suffix = "".join((rng or random).choice(string.ascii_lowercase + string.digits) for _ in range(5))
    return f"svcdoctor-debug-{base}-{suffix}"


def manifest(name: str, node: str, opts: DebugPodOptions, lease: int, now: datetime) -> dict:
    """The helper pod: host network, NET_ADMIN + NET_RAW only, pinned to the node, every taint tolerated."""
    spec = {
        "nodeName": node,
        "hostNetwork": True,
        "restartPolicy": "Never",
        "activeDeadlineSeconds": lease,  # the kubelet ends it at the lease, whatever happens to svcdoctor
        "terminationGracePeriodSeconds": 1,  # `sleep` as PID 1 ignores SIGTERM: do not wait 30 s for it
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "tolerations": [{"operator": "Exists"}],  # every taint, NoExecute included
        "containers": [{
            "name": CONTAINER,
            "image": opts.image,
            "command": ["sleep", str(lease)],  # argv: no shell
            "securityContext": {
                "privileged": False,
                "allowPrivilegeEscalation": False,
                "capabilities": {"drop": ["ALL"], "add": list(CAPABILITIES)},
            },
            "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "64Mi"}},
        }],
    }
    if opts.pull_secret:
        spec["imagePullSecrets"] = [{"name": opts.pull_secret}]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": opts.namespace,
            "labels": dict(LABELS),
            "annotations": {NODE_ANNOTATION: node,
                            LEASE_ANNOTATION: (now + timedelta(seconds=lease)).strftime(_TIME_FORMAT)},
        },
        "spec": spec,
    }


def is_leftover(pod: dict, run_started: datetime) -> bool:
    """A helper pod of an earlier run that no run can still be using: created before this run, past its lease
    (a pod without a readable lease counts as past it)."""
    meta = pod.get("metadata") or {}
    created = _parse_time(meta.get("creationTimestamp"))
    if created is None or created >= run_started.replace(microsecond=0):
        return False
    lease = _parse_time((meta.get("annotations") or {}).get(LEASE_ANNOTATION))
    return lease is None or lease <= run_started


def _parse_time(text) -> datetime | None:
    try:
        return datetime.strptime(str(text), _TIME_FORMAT).replace(tzinfo=timezone.utc)
    except (TypeError, ValueError):
        return None


def start_problem(pod: dict) -> str | None:
    """Why the pod will not run (image pull failed, it ended), or None while it may still start."""
    status = pod.get("status") or {}
    if status.get("phase") in ("Failed", "Succeeded"):
        return f"it ended ({status.get('phase')}{': ' + status['reason'] if status.get('reason') else ''})"
    for cs in status.get("containerStatuses") or []:
        waiting = (cs.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in HOPELESS:
            return f"{waiting['reason']}: {(waiting.get('message') or '').strip()[:200]}".rstrip(": ")
    return None


def is_running(pod: dict) -> bool:
    status = pod.get("status") or {}
    return status.get("phase") == "Running" and all(
        "running" in (cs.get("state") or {}) for cs in status.get("containerStatuses") or [])


class DebugPods:
    """This run's helper pods: created on demand (one per node, from the node's worker thread), each deleted as
    soon as its node is read, and every one still registered deleted by `close()`."""

    def __init__(self, session: kube_api.ApiSession, opts: DebugPodOptions, timeout: float,
                 cancel: threading.Event | None = None):
        self.session = session
        self.opts = opts
        self.timeout = timeout
        self.cancel = cancel or threading.Event()
        self.started = datetime.now(timezone.utc)
        self._names: set[str] = set()  # registered before the POST: a create cut short is still deleted
        self._lock = threading.Lock()

    # --- leftovers --------------------------------------------------------------------------------------------
    def sweep(self) -> list[str]:
        """Delete the leftovers of earlier runs (is_leftover); say on stderr what was removed or left alone."""
        from kubernetes.client.exceptions import ApiException

        core = self.session.core()
        try:
            pods = kube_api.list_all(self.session, core.list_namespaced_pod, "Pod", "v1",
                                     namespace=self.opts.namespace, label_selector=SELECTOR)
        except ApiException as exc:
            _notice(f"could not look for leftover debug pods in namespace {self.opts.namespace}: "
                    f"{kube_api.describe_failure(exc, self.session, 'list pods')}")
            return []
        removed = []
        for pod in pods:
            meta = pod.get("metadata") or {}
            where = f"{self.opts.namespace}/{meta.get('name')}"
            if is_leftover(pod, self.started):
                if self._delete(meta.get("name")):
                    removed.append(meta.get("name"))
                    _notice(f"removed leftover debug pod {where} (node {_node_of(pod)}, created "
                            f"{meta.get('creationTimestamp')} by an earlier run that did not clean up)")
            else:
                lease = (meta.get("annotations") or {}).get(LEASE_ANNOTATION, "?")
                _notice(f"debug pod {where} of another svcdoctor run is still within its lease (until {lease}): "
                        "left alone")
        return removed

    # --- one node's pod ---------------------------------------------------------------------------------------
    @contextmanager
    def on_node(self, node: str) -> Iterator[ProxyPod]:
        """A running helper pod on the node for the `with` body; deleted when it ends, however it ends."""
        name = pod_name(node)
        with self._lock:
            self._names.add(name)
        try:
            self._create(name, node)
            self._wait_running(name, node)
            yield ProxyPod(self.opts.namespace, name, CONTAINER)
        finally:
            self._delete(name)

    def _create(self, name: str, node: str) -> None:
        from kubernetes.client.exceptions import ApiException

        body = manifest(name, node, self.opts, lease_seconds(self.timeout), datetime.now(timezone.utc))
        try:
            kube_api._raw(self.session.core().create_namespaced_pod, self.session, namespace=self.opts.namespace,
                          body=body)
        except ApiException as exc:
            if exc.status == 403:
                raise DebugPodError(rbac.forbidden("create", "pods", namespace=self.opts.namespace,
                                                   server_message=kube_api._status_message(exc))) from exc
            raise DebugPodError(f"cannot create debug pod {self.opts.namespace}/{name}: "
                                f"{kube_api.describe_failure(exc, self.session, 'create a pod')}") from exc
        except Exception as exc:  # noqa: BLE001 - timeouts, refused connections
            raise DebugPodError(f"cannot create debug pod {self.opts.namespace}/{name}: "
                                f"{kube_api.describe_failure(exc, self.session, 'create a pod')}") from exc

    def _wait_running(self, name: str, node: str) -> None:
        from kubernetes.client.exceptions import ApiException

        where = f"debug pod {self.opts.namespace}/{name}"
        limit = start_timeout(self.timeout)
        deadline = time.monotonic() + limit
        pause = 0.1
        while True:
            if self.cancel.is_set():
                raise DebugPodError("interrupted")
            try:
                pod = kube_api._raw(self.session.core().read_namespaced_pod, self.session, name=name,
                                    namespace=self.opts.namespace)
            except ApiException as exc:
                raise DebugPodError(f"{where}: {kube_api.describe_failure(exc, self.session, 'get a pod')}") from exc
            if is_running(pod):
                return
            problem = start_problem(pod)
            if problem:
                raise DebugPodError(f"{where} (image {self.opts.image}) did not start on {node}: {problem}")
            if time.monotonic() > deadline:
                phase = (pod.get("status") or {}).get("phase") or "Unknown"
                raise DebugPodError(f"{where} (image {self.opts.image}) was not running within {limit:g}s "
                                    f"(still {phase})")
            time.sleep(pause)
            pause = min(pause * 2, 1.0)

    def _delete(self, name: str | None) -> bool:
        """Delete one pod; gone already is fine. False (and a notice) when it could not be deleted."""
        from kubernetes.client.exceptions import ApiException

        if not name:
            return False
        try:
            kube_api._raw(self.session.core().delete_namespaced_pod, self.session, name=name,
                          namespace=self.opts.namespace)
        except ApiException as exc:
            if exc.status != 404:
                _notice(f"could not delete debug pod {self.opts.namespace}/{name}: "
                        f"{kube_api.describe_failure(exc, self.session, 'delete a pod')}; delete it with "
                        f"`kubectl delete pod -n {self.opts.namespace} -l {SELECTOR}`")
                return False
        except Exception as exc:  # noqa: BLE001
            _notice(f"could not delete debug pod {self.opts.namespace}/{name}: {exc}; delete it with "
                    f"`kubectl delete pod -n {self.opts.namespace} -l {SELECTOR}`")
            return False
        with self._lock:
            self._names.discard(name)
        return True

    def close(self) -> None:
        """Delete every pod this run registered and has not deleted yet (an error or Ctrl-C left them)."""
        self.cancel.set()
        with self._lock:
            names = sorted(self._names)
        for name in names:
            self._delete(name)


@contextmanager
def cleanup_guard(pods: DebugPods) -> Iterator[DebugPods]:
    """Run the body with SIGTERM and SIGHUP turned into KeyboardInterrupt (as Ctrl-C), and delete the run's pods on
    the way out, with Ctrl-C ignored while that goes on: a second Ctrl-C must not leave a pod behind."""
    main = threading.current_thread() is threading.main_thread()
    previous = {}
    if main:
        for sig in (signal.SIGTERM, signal.SIGHUP):
            previous[sig] = signal.signal(sig, _interrupt)
    try:
        yield pods
    finally:
        held = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None
        try:
            pods.close()
        finally:
            if main:
                for sig, handler in ((signal.SIGINT, held), *previous.items()):
                    # None: the handler was not set from Python; SIGINT's own is KeyboardInterrupt
                    signal.signal(sig, handler if handler is not None else
                                  signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL)


def _interrupt(signum, _frame):
    raise KeyboardInterrupt(f"signal {signum}")


def _node_of(pod: dict) -> str:
    return ((pod.get("spec") or {}).get("nodeName") or
            ((pod.get("metadata") or {}).get("annotations") or {}).get(NODE_ANNOTATION) or "?")


def _notice(text: str) -> None:
    # stderr, as every warning: at the time of the call, so that a test's redirect_stderr sees it
    sys.stderr.write(f"svcdoctor: {text}\n")
    sys.stderr.flush()
