"""The command line's options: the ones every command takes, declared once here and added to each command by
`@shared_options` (as sqlite-utils shares its click option decorators between commands), and the closed choices
(`-o`, `--fail-on`, `--format`, `--proto`) as enums, so that typer rejects a bad value with exit 2 and one line.

`docs/reference/commands.md` is every command's --help: the options' order, metavars and help texts are part of it
(tests/test_docs.py).
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import replace
from enum import Enum
from typing import TYPE_CHECKING, Annotated, Optional

import typer

if TYPE_CHECKING:
    from collections.abc import Callable

    from svcdoctor.environment import Environment


class OutputFormat(str, Enum):
    table = "table"
    wide = "wide"
    json = "json"


class Severity(str, Enum):
    """--fail-on: the lowest severity that makes `check` exit 1."""

    error = "error"
    warning = "warning"
    info = "info"


class GraphFormat(str, Enum):
    dot = "dot"
    mermaid = "mermaid"
    svg = "svg"
    json = "json"


class ColorMode(str, Enum):
    """--color: auto (on a terminal, unless NO_COLOR), always (pipes too), never."""

    auto = "auto"
    always = "always"
    never = "never"


class Via(str, Enum):
    """--via: how nodes are read (docs/reference/rbac.md for the API's permissions)."""

    auto = "auto"
    docker = "docker"
    api = "api"


class Protocol(str, Enum):
    tcp = "tcp"
    udp = "udp"
    sctp = "sctp"


# --- options more than one command takes, each command choosing where in its own list ---------------------------
NamespaceOpt = Annotated[Optional[str], typer.Option("-n", "--namespace", metavar="NAMESPACE",
                                                     help="Namespace (default: default).")]

AllNamespacesOpt = Annotated[bool, typer.Option("-A", "--all-namespaces",
                                                help="Every namespace (kubectl's -A).")]

OUTPUT_HELP = "table | wide | json"


# --- the options every command takes, after its own (docs/reference/commands.md) -------------------------------
def _shared_parameters(output_help: str, output_type: type[Enum] = OutputFormat,
                       output_default: Enum = OutputFormat.table) -> list[inspect.Parameter]:
    def option(name: str, annotation, default) -> inspect.Parameter:
        return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=default)

    return [
        option("bundle", Annotated[Optional[str], typer.Option(
            "--bundle", metavar="PATH",
            help="Offline input: a bundle directory or .tar.gz, a single iptables-save / iptables -S file (a paste is fine), or - for standard input.")], None),
        option("demo", Annotated[bool, typer.Option(
            "--demo", help="Use the demo bundle shipped with svcdoctor (the seed's myk8s).")], False),
        option("cluster", Annotated[Optional[str], typer.Option(
            "--cluster", metavar="NAME", help="kind cluster name.")], None),
        option("kubeconfig", Annotated[Optional[str], typer.Option(
            "--kubeconfig", metavar="PATH", help="Path to the kubeconfig file.")], None),
        option("context", Annotated[Optional[str], typer.Option(
            "--context", metavar="NAME", help="Kube context (default kind-NAME).")], None),
        option("no_api", Annotated[bool, typer.Option(
            "--no-api", help="Skip the Kubernetes API: work from the rules alone.")], False),
        option("node", Annotated[Optional[list[str]], typer.Option(
            "--node", metavar="NODE", help="Only these nodes (repeatable).")], None),
        # reading nodes through the Kubernetes API (docs/reference/rbac.md); one option per line, kept compact
        option("via", Annotated[Via, typer.Option("--via", metavar="DOOR", help="auto | docker | api: how nodes are read (auto: docker for a kind-NAME context running here).")], Via.auto),
        option("node_selector", Annotated[Optional[str], typer.Option("--node-selector", metavar="SELECTOR", help="Only nodes with these labels (--via api).")], None),
        option("sample", Annotated[Optional[int], typer.Option("--sample", metavar="K", help="K random nodes, spread over role and zone (--via api).")], None),
        option("parallel", Annotated[int, typer.Option("--parallel", metavar="N", help="Nodes read at once through the API.")], 16),
        option("proxy_namespace", Annotated[str, typer.Option("--proxy-namespace", metavar="NAMESPACE", help="Namespace of the kube-proxy pods.")], "kube-system"),
        option("proxy_selector", Annotated[str, typer.Option("--proxy-selector", metavar="SELECTOR", help="Label selector of the kube-proxy pods.")], "k8s-app=kube-proxy"),
        # consent to create (and always delete) helper pods on nodes without a kube-proxy pod (docs/reference/rbac.md)
        option("debug_pod", Annotated[Optional[str], typer.Option("--debug-pod", metavar="IMAGE", help="Read nodes without a kube-proxy pod through a short-lived pod of this image (created, then deleted).")], None),
        option("debug_namespace", Annotated[str, typer.Option("--debug-namespace", metavar="NAMESPACE", help="Namespace of the --debug-pod pods.")], "default"),
        option("image_pull_secret", Annotated[Optional[str], typer.Option("--image-pull-secret", metavar="NAME", help="Pull secret for the --debug-pod image.")], None),
        option("output", Annotated[output_type, typer.Option(
            "-o", "--output", metavar="FORMAT", help=output_help)], output_default),
        option("color", Annotated[ColorMode, typer.Option(
            "--color", metavar="WHEN", help="auto | always | never (auto: on a terminal, unless NO_COLOR is set).")],
            ColorMode.auto),
        option("no_color", Annotated[bool, typer.Option(
            "--no-color", help="No colours: --color never.")], False),
        option("debug", Annotated[bool, typer.Option("--debug", help="Show a traceback on errors.")], False),
    ]


def shared_options(fn: Callable | None = None, *, output_help: str = OUTPUT_HELP, **output_choices):
    """Gives a command the shared options and hands its body, instead of them, an `Environment` (where output goes)
    and an `InputOptions` (where input comes from) as its first two arguments:

        @app.command()
        @shared_options
        def nodes(env: Environment, source: InputOptions) -> int: ...
    """
    if fn is None:
        return functools.partial(shared_options, output_help=output_help, **output_choices)
    # output_type / output_default: a command whose -o chooses among other formats (graph: dot, svg, …)
    shared = _shared_parameters(output_help, **output_choices)
    names = [p.name for p in shared]
    params = list(inspect.signature(fn).parameters.values())
    if [p.name for p in params[:2]] != ["env", "source"]:
        raise TypeError(f"{fn.__name__}: a command with @shared_options starts with (env, source)")
    own = params[2:]
    # typer reads the signature and the annotations; this module's are strings (PEP 563): resolve them
    own = [p.replace(annotation=_resolve(p.annotation, fn)) for p in own]

    @functools.wraps(fn)
    def command(ctx: typer.Context, **kwargs):
        from svcdoctor.inputs import InputOptions, no_cyclic_gc

        values = {name: kwargs.pop(name) for name in names}
        env = _environment(ctx, values["output"].value, values["no_color"], values["debug"], values["color"].value)
        debug_pod = _debug_pod(values)
        live = not (values["bundle"] or values["demo"])
        source = InputOptions(bundle=values["bundle"], demo=values["demo"], cluster=values["cluster"],
                              kubeconfig=values["kubeconfig"], context=values["context"], no_api=values["no_api"],
                              nodes=list(values["node"] or []), via=values["via"].value,
                              api_read=_api_read(values, debug_pod) if live else None)
        if live:  # (watch samples for hours; a live read runs network code for minutes)
            return fn(env, source, **kwargs)
        # a bundle is read, worked over and done with: millions of objects that hold no cycles, which the
        # collector would walk again after each step (0.25 s of `check` on three nodes of 10,000 services)
        with no_cyclic_gc():
            return fn(env, source, **kwargs)

    # typer hands a parameter annotated typer.Context the click context, and leaves it out of --help
    context = inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context)
    parameters = [context] + own + shared
    command.__signature__ = inspect.Signature(parameters)
    command.__annotations__ = {p.name: p.annotation for p in parameters}
    return command


def _api_read(values: dict, debug_pod):
    """How nodes are read through the API (a live input only: collect/live.py, which a bundle does not import)."""
    from svcdoctor.collect.live import ApiReadOptions

    return ApiReadOptions(values["parallel"], values["node_selector"], values["sample"], values["proxy_namespace"],
                          values["proxy_selector"], debug_pod)


def _debug_pod(values: dict):
    """--debug-pod IMAGE (with --debug-namespace, --image-pull-secret), or None: no consent, nothing created."""
    from svcdoctor.errors import UsageError

    if not values["debug_pod"]:
        if values["image_pull_secret"] or values["debug_namespace"] != "default":
            raise UsageError("--debug-namespace and --image-pull-secret go with --debug-pod IMAGE")
        return None
    from svcdoctor.collect.debug_pods import DebugPodOptions

    return DebugPodOptions(values["debug_pod"], values["debug_namespace"], values["image_pull_secret"])


def _environment(ctx: typer.Context, output: str, no_color: bool, debug: bool, color: str = "auto") -> Environment:
    """The terminal's, unless the caller of `svcdoctor.cli.run` passed its own (tests do, as httpie's do)."""
    from svcdoctor.environment import Environment

    given = ctx.find_root().obj
    if isinstance(given, Environment):
        return replace(given, output=output, debug=given.debug or debug)
    return Environment.create(output=output, no_color=no_color, debug=debug, color=color)


def _resolve(annotation, fn: Callable):
    if isinstance(annotation, str):
        return eval(annotation, fn.__globals__)  # noqa: S307 - our own source's annotations
    return annotation
