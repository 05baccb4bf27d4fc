"""Read the Services, EndpointSlices, Pods, Nodes and kube-proxy's settings from the Kubernetes API.

The `kubernetes` client is imported inside functions: importing it at module level would slow down every
command, `svcdoctor --help` included. Objects come back as plain JSON dicts in the API's own camelCase (the raw
response body, not the client's snake_case models), each with `apiVersion` and `kind` as `kubectl get -o json`
prints list items, so the model and the bundle writer see the same shapes as from a bundle.

The API is optional for svcdoctor: when it cannot be read (401, 403, timeout, unreachable, no kubeconfig) the result
is `ApiObjects(status="why")` with the lists left None, and the caller carries on from the rules alone.
Only a mistake in the user's own flags (--kubeconfig file missing, --context unknown) is an error.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from svcdoctor.collect.kind import KIND_CONTEXT_PREFIX, kubeconfig_paths
from svcdoctor.collect.snapshot import ApiObjects
from svcdoctor.errors import InputError, UsageError, first_line

DEFAULT_PAGE_SIZE = 500  # kubectl's --chunk-size default
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
KUBE_PROXY_CONFIGMAP = ("kube-system", "kube-proxy")
SKIPPED = "skipped (--no-api)"


class ApiUnavailable(Exception):
    """The API cannot be read; the message is the ApiObjects.status the user sees."""


@dataclass(slots=True)
class ApiSession:
    """A configured client for one kube context; `server` and `context` are for messages."""

    client: object  # kubernetes.client.ApiClient
    server: str
    context: str
    timeout: float
    page_size: int = DEFAULT_PAGE_SIZE

    def core(self):
        from kubernetes import client

        return client.CoreV1Api(self.client)

    def discovery(self):
        from kubernetes import client

        return client.DiscoveryV1Api(self.client)


def open_session(
    kubeconfig: str | None = None,
    context: str | None = None,
    cluster: str | None = None,
    timeout: float = 10.0,
    page_size: int = DEFAULT_PAGE_SIZE,
) -> ApiSession:
    """Load the kubeconfig as kubectl would; the context is --context, else `kind-<cluster>`, else the current one.

    Raises InputError/UsageError for the user's own mistakes, ApiUnavailable for everything else.
    """
    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException

    if kubeconfig and not Path(kubeconfig).expanduser().is_file():
        raise InputError(f"--kubeconfig {kubeconfig}: no such file")
    paths = [p for p in kubeconfig_paths(kubeconfig) if p.is_file()]
    if not paths:
        raise ApiUnavailable(f"no kubeconfig ({', '.join(map(str, kubeconfig_paths(kubeconfig)))} not found)")
    config_file = str(paths[0]) if len(paths) == 1 else None  # None: the client merges $KUBECONFIG itself
    try:
        contexts, active = config.list_kube_config_contexts(config_file=config_file)
    except (ConfigException, OSError, ValueError) as exc:
        raise ApiUnavailable(f"kubeconfig {paths[0]}: {first_line(exc)}") from exc
    names = [c.get("name") for c in contexts or []]
    if context is not None:
        if context not in names:
            raise UsageError(f"--context {context}: no such context in the kubeconfig (it has: {', '.join(names)})")
    elif cluster is not None:
        # kind names its context kind-<cluster>; another context would show a different cluster's objects
        context = KIND_CONTEXT_PREFIX + cluster
        if context not in names:
            raise ApiUnavailable(f"the kubeconfig has no context {context} for kind cluster {cluster!r}")
    else:
        context = (active or {}).get("name")
    configuration = client.Configuration()
    try:
        config.load_kube_config(
            config_file=config_file, context=context, client_configuration=configuration, persist_config=False
        )
    except (ConfigException, OSError, ValueError) as exc:
        raise ApiUnavailable(f"kube context {context}: {first_line(exc)}") from exc
    # No urllib3 retries: a hung API server must cost one timeout, not four.
    configuration.retries = 0
    return ApiSession(
        client=client.ApiClient(configuration),
        server=configuration.host,
        context=context or "",
        timeout=timeout,
        page_size=page_size,
    )


def describe_failure(exc: BaseException, session: ApiSession | None, what: str) -> str:
    """One line saying why the API could not be read (the ApiObjects.status)."""
    from kubernetes.client.exceptions import ApiException

    where = f"the API server at {session.server}" if session else "the API server"
    if isinstance(exc, ApiException):
        message = _status_message(exc)
        if exc.status == 401:
            return f"unauthorized (HTTP 401) by {where}: the credentials in the kubeconfig were refused"
        if exc.status == 403:
            return f"forbidden (HTTP 403) to {what} at {where}: {message}"
        return f"HTTP {exc.status} from {where} while trying to {what}: {message}"
    name = type(exc).__name__
    text = str(exc)
    if "Timeout" in name or "timed out" in text.lower():
        seconds = f" within {session.timeout:g}s" if session else ""
        return f"no answer from {where}{seconds} (timed out trying to {what})"
    reason = getattr(exc, "reason", None)  # urllib3's MaxRetryError wraps the real cause
    if reason is not None and "Timeout" in type(reason).__name__:
        seconds = f" within {session.timeout:g}s" if session else ""
        return f"no answer from {where}{seconds} (timed out trying to {what})"
    return f"cannot reach {where}: {first_line(reason or exc)}"


def _status_message(exc) -> str:
    """The `message` of the Status object the API server sent, else the HTTP reason."""
    try:
        body = json.loads(exc.body or "{}")
        if isinstance(body, dict) and body.get("message"):
            return str(body["message"])
    except (TypeError, ValueError):
        pass
    return str(exc.reason or "").strip() or "no reason given"


def _raw(call: Callable, session: ApiSession, **kwargs) -> dict:
    """Call a client method and return the response body as JSON (camelCase, as the server sent it)."""
    response = call(_preload_content=False, _request_timeout=session.timeout, **kwargs)
    try:
        return json.loads(response.data)
    finally:
        release = getattr(response, "release_conn", None)
        if release:
            release()


def list_all(session: ApiSession, call: Callable, kind: str, api_version: str, **kwargs) -> list[dict]:
    """Every item of a list call, page by page (`limit` + `continue`, as kubectl's --chunk-size does)."""
    from kubernetes.client.exceptions import ApiException

    items: list[dict] = []
    token: str | None = None
    restarted = False
    while True:
        page_args = dict(kwargs, limit=session.page_size)
        if token:
            page_args["_continue"] = token
        try:
            doc = _raw(call, session, **page_args)
        except ApiException as exc:
            # 410 Gone: the continue token expired mid-list; a consistent list must start over (once)
            if exc.status == 410 and token and not restarted:
                items, token, restarted = [], None, True
                continue
            raise
        for item in doc.get("items") or []:
            # the API leaves kind/apiVersion off list items; `kubectl get -o json` puts them back
            item.setdefault("apiVersion", api_version)
            item.setdefault("kind", kind)
            items.append(item)
        token = (doc.get("metadata") or {}).get("continue") or None
        if not token:
            return items


def read_kube_proxy_config(session: ApiSession) -> dict | None:
    """`config.conf` of ConfigMap kube-system/kube-proxy (kubeadm's and kind's KubeProxyConfiguration).

    None when the ConfigMap is absent or unreadable: a cluster may deploy kube-proxy differently, and the rules
    alone still show what kube-proxy wrote.
    """
    import yaml
    from kubernetes.client.exceptions import ApiException

    namespace, name = KUBE_PROXY_CONFIGMAP
    try:
        doc = _raw(session.core().read_namespaced_config_map, session, name=name, namespace=namespace)
    except ApiException as exc:
        if exc.status in (403, 404):
            return None
        raise
    text = (doc.get("data") or {}).get("config.conf")
    if not text:
        return None
    try:
        parsed = yaml.safe_load(text)
    except yaml.YAMLError:
        return None
    return parsed if isinstance(parsed, dict) else None


def proxy_mode(kube_proxy_config: dict | None) -> str | None:
    """kube-proxy's mode from its config; an empty mode means iptables on Linux."""
    if kube_proxy_config is None:
        return None
    return str(kube_proxy_config.get("mode") or "iptables")


def fetch_api_objects(
    kubeconfig: str | None = None,
    context: str | None = None,
    cluster: str | None = None,
    *,
    no_api: bool = False,
    timeout: float = 10.0,
    page_size: int = DEFAULT_PAGE_SIZE,
    progress: Callable[[str], None] | None = None,
) -> ApiObjects:
    """All Services, EndpointSlices, Pods and Nodes, plus kube-proxy's config; never raises for API trouble."""
    if no_api:
        return ApiObjects(status=SKIPPED)

    def read_all(session: ApiSession) -> ApiObjects:
        core, discovery = session.core(), session.discovery()
        steps = [
            ("services", "list services", core.list_service_for_all_namespaces, "Service", "v1"),
            ("endpointslices", "list endpointslices", discovery.list_endpoint_slice_for_all_namespaces,
             "EndpointSlice", "discovery.k8s.io/v1"),
            ("pods", "list pods", core.list_pod_for_all_namespaces, "Pod", "v1"),
            ("nodes", "list nodes", core.list_node, "Node", "v1"),
        ]
        found = {}
        for field_name, what, call, kind, api_version in steps:
            if progress:
                progress(f"API: {what}")
            found[field_name] = _guarded(session, what, lambda: list_all(session, call, kind, api_version))
        return ApiObjects(**found, kube_proxy_config=_guarded(session, "read kube-proxy's ConfigMap",
                                                              lambda: read_kube_proxy_config(session)), status="ok")

    return _with_session(kubeconfig, context, cluster, timeout, page_size, read_all)


def fetch_service_objects(
    namespace: str,
    name: str,
    kubeconfig: str | None = None,
    context: str | None = None,
    cluster: str | None = None,
    *,
    no_api: bool = False,
    timeout: float = 10.0,
    page_size: int = DEFAULT_PAGE_SIZE,
    progress: Callable[[str], None] | None = None,
) -> ApiObjects:
    """What `explain` needs for one Service: it, its EndpointSlices (by label), their pods, and the nodes.

    When the Service does not exist, `services` holds every Service instead, so the caller can say
    "unknown service" with close matches.
    """
    from kubernetes.client.exceptions import ApiException

    if no_api:
        return ApiObjects(status=SKIPPED)

    def read_one(session: ApiSession) -> ApiObjects:
        core, discovery = session.core(), session.discovery()
        if progress:
            progress(f"API: read service {namespace}/{name}")

        def read_service() -> dict | None:
            try:
                doc = _raw(core.read_namespaced_service, session, name=name, namespace=namespace)
            except ApiException as exc:
                if exc.status == 404:
                    return None
                raise
            return doc

        service = _guarded(session, f"read service {namespace}/{name}", read_service)
        nodes = _guarded(session, "list nodes", lambda: list_all(session, core.list_node, "Node", "v1"))
        kube_proxy_config = _guarded(session, "read kube-proxy's ConfigMap", lambda: read_kube_proxy_config(session))
        if service is None:
            services = _guarded(
                session, "list services",
                lambda: list_all(session, core.list_service_for_all_namespaces, "Service", "v1"),
            )
            return ApiObjects(services=services, endpointslices=[], pods=[], nodes=nodes,
                              kube_proxy_config=kube_proxy_config, status="ok")
        slices = _guarded(
            session, f"list endpointslices of {namespace}/{name}",
            lambda: list_all(session, discovery.list_namespaced_endpoint_slice, "EndpointSlice",
                             "discovery.k8s.io/v1", namespace=namespace,
                             label_selector=f"{SERVICE_NAME_LABEL}={name}"),
        )
        wanted = {
            (ep.get("targetRef") or {}).get("name")
            for es in slices
            for ep in es.get("endpoints") or []
            if (ep.get("targetRef") or {}).get("kind") == "Pod"
        }
        pods = []
        if wanted:
            pods = _guarded(session, f"list pods in {namespace}",
                            lambda: list_all(session, core.list_namespaced_pod, "Pod", "v1", namespace=namespace))
            pods = [p for p in pods if (p.get("metadata") or {}).get("name") in wanted]
        return ApiObjects(services=[service], endpointslices=slices, pods=pods, nodes=nodes,
                          kube_proxy_config=kube_proxy_config, status="ok")

    return _with_session(kubeconfig, context, cluster, timeout, page_size, read_one)


class _Failed(Exception):
    def __init__(self, status: str):
        super().__init__(status)
        self.status = status


def _guarded(session: ApiSession, what: str, fn: Callable):
    """Run one API read; any failure becomes _Failed(status) naming what was being read."""
    try:
        return fn()
    except (InputError, UsageError):
        raise
    except Exception as exc:
        raise _Failed(describe_failure(exc, session, what)) from exc


def _with_session(kubeconfig, context, cluster, timeout, page_size, body: Callable[[ApiSession], ApiObjects]):
    try:
        session = open_session(kubeconfig, context, cluster, timeout=timeout, page_size=page_size)
    except ApiUnavailable as exc:
        return ApiObjects(status=str(exc))
    try:
        return body(session)
    except _Failed as failed:
        return ApiObjects(status=failed.status)
    finally:
        close = getattr(session.client, "close", None)
        if close:
            close()
