"""The command line: typer wiring only. Each command reads its input, calls the core, and renders."""

from __future__ import annotations

import sys
from typing import Annotated, Optional

import typer

from svcdoctor import __version__
from svcdoctor.exit_codes import ExitStatus, SvcdoctorError, UsageError

app = typer.Typer(
    name="svcdoctor",
    help="Read-only diagnostics for kube-proxy's Service routing (iptables mode), on kind clusters and bundles.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)

OUTPUT_FORMATS = ("table", "wide", "json")

# --- the options every command takes (CONTRACT.md, Commands) ------------------------------------------------
BundleOpt = Annotated[Optional[str], typer.Option("--bundle", metavar="PATH", help="Offline input: a bundle directory or .tar.gz, "
                                                  "or a single iptables-save / iptables -S file.")]
DemoOpt = Annotated[bool, typer.Option("--demo", help="Use the demo bundle shipped with svcdoctor (the seed's myk8s).")]
ClusterOpt = Annotated[Optional[str], typer.Option("--cluster", metavar="NAME", help="kind cluster name.")]
KubeconfigOpt = Annotated[Optional[str], typer.Option("--kubeconfig", metavar="PATH", help="Path to the kubeconfig file.")]
ContextOpt = Annotated[Optional[str], typer.Option("--context", metavar="NAME", help="Kube context (default kind-NAME).")]
NoApiOpt = Annotated[bool, typer.Option("--no-api", help="Skip the Kubernetes API: work from the rules alone.")]
NodeOpt = Annotated[Optional[list[str]], typer.Option("--node", metavar="NODE", help="Only these nodes (repeatable).")]
OutputOpt = Annotated[str, typer.Option("-o", "--output", metavar="FORMAT", help="table | wide | json")]
NoColorOpt = Annotated[bool, typer.Option("--no-color", help="No colours (NO_COLOR is honoured too).")]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show a traceback on errors.")]
NamespaceOpt = Annotated[Optional[str], typer.Option("-n", "--namespace", metavar="NAMESPACE", help="Namespace (default: default).")]

_debug = False


def _input_options(bundle, demo, cluster, kubeconfig, context, no_api, node, service=None):
    from svcdoctor.commands.inputs import InputOptions

    return InputOptions(bundle=bundle, demo=demo, cluster=cluster, kubeconfig=kubeconfig, context=context,
                        no_api=no_api, nodes=list(node or []), service=service)


def _check_output(output: str, allowed=OUTPUT_FORMATS) -> str:
    if output not in allowed:
        raise UsageError(f"unknown output format {output!r}; use one of: {', '.join(allowed)}")
    return output


def _consoles(no_color: bool, output: str):
    from svcdoctor.render.console import make_consoles

    return make_consoles(no_color=no_color, json_output=output == "json")


def _load(opts, err):
    from svcdoctor.commands.inputs import load

    if opts.bundle or opts.demo:
        loaded = load(opts)
    else:
        with err.status("collecting rules from the kind nodes…") as status:
            loaded = load(opts, progress=lambda msg: status.update(msg))
    from svcdoctor.render.console import print_input_report

    print_input_report(loaded, err)
    return loaded


def _partial_exit(loaded) -> int:
    if loaded.failed:
        return ExitStatus.PARTIAL
    return ExitStatus.OK


def _print_json(doc) -> None:
    from svcdoctor.render.json_doc import dumps

    sys.stdout.write(dumps(doc) + "\n")


@app.callback(invoke_without_command=True)
def _root(
    ctx: typer.Context,
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
):
    if version:
        print(f"svcdoctor {__version__}")
        raise typer.Exit(0)


@app.command()
def explain(
    service: Annotated[str, typer.Argument(metavar="SERVICE", help="Service name (or NAMESPACE/NAME).")],
    namespace: NamespaceOpt = None,
    port: Annotated[Optional[str], typer.Option("--port", metavar="NAME|NUMBER", help="Only this port (name or number).")] = None,
    bundle: BundleOpt = None, demo: DemoOpt = False, cluster: ClusterOpt = None, kubeconfig: KubeconfigOpt = None,
    context: ContextOpt = None, no_api: NoApiOpt = False, node: NodeOpt = None, output: OutputOpt = "table",
    no_color: NoColorOpt = False, debug: DebugOpt = False,
):
    """Show, node by node, how a Service's traffic is routed: paths, verdicts, SNAT, endpoint shares, counters."""
    _set_debug(debug)
    _check_output(output)
    out, err = _consoles(no_color, output)
    svc_key = service if "/" in service else f"{namespace or 'default'}/{service}"
    loaded = _load(_input_options(bundle, demo, cluster, kubeconfig, context, no_api, node, svc_key), err)
    from svcdoctor.commands.explain import explain as run_explain

    result = run_explain(loaded, service, namespace, port)
    if output == "json":
        from svcdoctor.render.json_doc import explain_document

        _print_json(explain_document(result))
    else:
        from svcdoctor.render.explain_view import render_explain

        render_explain(result, out, wide=output == "wide")
    return _partial_exit(loaded)


@app.command()
def trace(
    dst: Annotated[str, typer.Option("--dst", metavar="IP:PORT", help="Destination IP:PORT.")],
    src: Annotated[Optional[str], typer.Option("--src", metavar="IP", help="Source IP (default: a client outside the cluster).")] = None,
    proto: Annotated[str, typer.Option("--proto", metavar="PROTO", help="tcp | udp | sctp")] = "tcp",
    node_ip: Annotated[Optional[list[str]], typer.Option("--node-ip", metavar="IP", help="The node's own address(es).")] = None,
    bundle: BundleOpt = None, demo: DemoOpt = False, cluster: ClusterOpt = None, kubeconfig: KubeconfigOpt = None,
    context: ContextOpt = None, no_api: NoApiOpt = False, node: NodeOpt = None, output: OutputOpt = "table",
    no_color: NoColorOpt = False, debug: DebugOpt = False,
):
    """Follow one packet through one node's nat and filter rules, every probabilistic branch included."""
    _set_debug(debug)
    _check_output(output)
    out, err = _consoles(no_color, output)
    from svcdoctor.commands.trace import parse_destination, run_trace

    dst_ip, dport = parse_destination(dst, proto)
    loaded = _load(_input_options(bundle, demo, cluster, kubeconfig, context, no_api, node), err)
    results = run_trace(loaded, src=src, dst=dst_ip, dport=dport, protocol=proto, node_ips=node_ip)
    if output == "json":
        docs = [r.to_dict() for r in results]
        _print_json(docs[0] if len(docs) == 1 else {"apiVersion": "svcdoctor/v1", "kind": "TraceList",
                                                      "items": docs})
    else:
        from svcdoctor.render.trace_view import render_trace

        for r in results:
            render_trace(r, out, wide=output == "wide")
    return _partial_exit(loaded)


@app.command()
def check(
    fail_on: Annotated[str, typer.Option("--fail-on", metavar="SEVERITY", help="error | warning | info")] = "error",
    namespace: NamespaceOpt = None,
    selector: Annotated[Optional[str], typer.Option("-l", "--selector", metavar="SELECTOR",
                                                    help="Only Services with these labels (kubectl's syntax).")] = None,
    bundle: BundleOpt = None, demo: DemoOpt = False, cluster: ClusterOpt = None, kubeconfig: KubeconfigOpt = None,
    context: ContextOpt = None, no_api: NoApiOpt = False, node: NodeOpt = None, output: OutputOpt = "table",
    no_color: NoColorOpt = False, debug: DebugOpt = False,
):
    """Check every service on every node; exit 1 when a finding is at or above --fail-on."""
    _set_debug(debug)
    _check_output(output)
    if fail_on not in ("error", "warning", "info"):
        raise UsageError(f"unknown --fail-on {fail_on!r}; use error, warning or info")
    out, err = _consoles(no_color, output)
    loaded = _load(_input_options(bundle, demo, cluster, kubeconfig, context, no_api, node), err)
    from svcdoctor.commands.check import failing, run_check

    result = run_check(loaded, namespace=namespace, selector=selector)
    if output == "json":
        from svcdoctor.render.json_doc import document

        _print_json(document(
            "Check",
            nodes=[{"name": n, "readable": n not in loaded.failed, "reason": loaded.failed.get(n)}
                   for n in [x.name for x in loaded.snapshot.nodes]],
            findings=[f.to_dict() for f in result.findings],
            summary=result.summary,
            services=result.services,
        ))
    else:
        from svcdoctor.render.check_view import render_check

        render_check(result, out, wide=output == "wide")
    if failing(result, fail_on):
        return ExitStatus.FINDINGS
    return _partial_exit(loaded)


@app.command()
def nodes(
    bundle: BundleOpt = None, demo: DemoOpt = False, cluster: ClusterOpt = None, kubeconfig: KubeconfigOpt = None,
    context: ContextOpt = None, no_api: NoApiOpt = False, node: NodeOpt = None, output: OutputOpt = "table",
    no_color: NoColorOpt = False, debug: DebugOpt = False,
):
    """One row per node: role, IP, iptables backend, proxy mode, rule and KUBE chain counts, problems."""
    _set_debug(debug)
    _check_output(output)
    out, err = _consoles(no_color, output)
    loaded = _load(_input_options(bundle, demo, cluster, kubeconfig, context, no_api, node), err)
    from svcdoctor.commands.nodes import node_rows

    rows = node_rows(loaded)
    if output == "json":
        from svcdoctor.render.json_doc import document

        _print_json(document("Nodes", nodes=rows))
    else:
        from svcdoctor.render.tables import render_nodes

        render_nodes(rows, out)
    return _partial_exit(loaded)


@app.command()
def collect(
    out_path: Annotated[str, typer.Option("--out", metavar="PATH", help="Bundle path; ending in .tar.gz writes an archive.")],
    bundle: BundleOpt = None, demo: DemoOpt = False, cluster: ClusterOpt = None, kubeconfig: KubeconfigOpt = None,
    context: ContextOpt = None, no_api: NoApiOpt = False, node: NodeOpt = None, output: OutputOpt = "table",
    no_color: NoColorOpt = False, debug: DebugOpt = False,
):
    """Write a bundle (svcdoctor-bundle/v1) with every node's raw rules and the API objects."""
    _set_debug(debug)
    _check_output(output)
    _, err = _consoles(no_color, output)
    from svcdoctor.collect.bundle import write_bundle
    from svcdoctor.commands.inputs import read_snapshot

    opts = _input_options(bundle, demo, cluster, kubeconfig, context, no_api, node)
    snapshot = read_snapshot(opts)
    if opts.nodes:
        snapshot.nodes = [n for n in snapshot.nodes if n.name in set(opts.nodes)]
    path = write_bundle(snapshot, out_path)
    failed = [n for n in snapshot.nodes if n.error]
    for n in failed:
        err.print(f"svcdoctor: node {n.name} could not be read: {n.error}", markup=False, highlight=False)
    if output == "json":
        from svcdoctor.render.json_doc import document

        _print_json(document("Collect", path=path, nodes=[n.name for n in snapshot.nodes],
                             failedNodes=[{"node": n.name, "reason": n.error} for n in failed],
                             api=snapshot.api.status))
    else:
        err.print(f"wrote {path}: {len(snapshot.nodes)} node(s), API: {snapshot.api.status}", markup=False)
    return ExitStatus.PARTIAL if failed else ExitStatus.OK


@app.command()
def graph(
    service: Annotated[Optional[str], typer.Argument(metavar="[SERVICE]", help="Service name (or NAMESPACE/NAME); all if omitted.")] = None,
    namespace: NamespaceOpt = None,
    fmt: Annotated[str, typer.Option("--format", metavar="FORMAT", help="dot | mermaid | json")] = "dot",
    bundle: BundleOpt = None, demo: DemoOpt = False, cluster: ClusterOpt = None, kubeconfig: KubeconfigOpt = None,
    context: ContextOpt = None, no_api: NoApiOpt = False, node: NodeOpt = None,
    output: Annotated[str, typer.Option("-o", "--output", metavar="FORMAT",
                                        help="table | wide (the --format picture) | json (same as --format json)")]
    = "table",
    no_color: NoColorOpt = False, debug: DebugOpt = False,
):
    """The chain graph of a service (or of all of kube-proxy's chains) for pictures in tickets and docs."""
    _set_debug(debug)
    _check_output(output)
    if fmt not in ("dot", "mermaid", "json"):
        raise UsageError(f"unknown graph format {fmt!r}; use dot, mermaid or json")
    if output == "json":
        fmt = "json"
    _, err = _consoles(no_color, "json")
    loaded = _load(_input_options(bundle, demo, cluster, kubeconfig, context, no_api, node), err)
    from svcdoctor.commands.graph import run_graph

    sys.stdout.write(run_graph(loaded, service, namespace, fmt))
    return _partial_exit(loaded)


@app.command()
def watch(
    service: Annotated[Optional[str], typer.Argument(metavar="[SERVICE]", help="Service name (or NAMESPACE/NAME); busiest rules if omitted.")] = None,
    namespace: NamespaceOpt = None,
    interval: Annotated[float, typer.Option("--interval", metavar="SECONDS", help="Seconds between samples.")] = 2.0,
    count: Annotated[Optional[int], typer.Option("--count", metavar="N", help="Stop after N samples.")] = None,
    top: Annotated[int, typer.Option("--top", metavar="N",
                                     help="Without a service: how many of the busiest rules to show.")] = 20,
    bundle: BundleOpt = None, demo: DemoOpt = False, cluster: ClusterOpt = None, kubeconfig: KubeconfigOpt = None,
    context: ContextOpt = None, no_api: NoApiOpt = False, node: NodeOpt = None, output: OutputOpt = "table",
    no_color: NoColorOpt = False, debug: DebugOpt = False,
):
    """Live counter diffs per endpoint, with the observed split next to the expected one.

    nat counters count connections (the first packet of each), not packets. Without a service: the cluster's
    busiest kube-proxy rules (--top). Needs a live cluster (not --bundle/--demo); Ctrl-C stops it (exit 130).
    """
    _set_debug(debug)
    _check_output(output)
    if interval <= 0:
        raise UsageError("--interval must be above 0 seconds")
    if count is not None and count < 1:
        raise UsageError("--count must be at least 1")
    if top < 1:
        raise UsageError("--top must be at least 1")
    out, err = _consoles(no_color, output)
    from svcdoctor.commands.watch import run_watch

    opts = _input_options(bundle, demo, cluster, kubeconfig, context, no_api, node)
    return run_watch(opts, service, namespace, interval, count, output, out, err, top=top)


def _set_debug(debug: bool) -> None:
    global _debug
    _debug = debug or _debug


def main(argv: list[str] | None = None) -> None:
    """Entry point: runs the app, turns every error into one line on stderr and the contract's exit code."""
    from typer.exceptions import Abort, Exit, TyperException

    global _debug
    _debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    try:
        rv = app(args=argv, prog_name="svcdoctor", standalone_mode=False)
    except SvcdoctorError as e:
        _error(str(e))
        if _debug:
            raise
        sys.exit(int(e.exit_status))
    except Exit as e:
        sys.exit(e.exit_code)
    except Abort:
        sys.exit(int(ExitStatus.INTERRUPTED))
    except KeyboardInterrupt:
        sys.exit(int(ExitStatus.INTERRUPTED))
    except TyperException as e:
        if type(e).__name__ == "NoArgsIsHelpError":
            app(args=["--help"], prog_name="svcdoctor", standalone_mode=False)
            sys.exit(int(ExitStatus.USAGE))
        _error(e.format_message().replace("\n", " "))
        sys.exit(int(ExitStatus.USAGE))
    except BrokenPipeError:
        sys.exit(0)
    except Exception as e:  # never a traceback for the user; --debug shows it
        if _debug:
            raise
        _error(f"internal error: {type(e).__name__}: {e} (run with --debug for the traceback)")
        sys.exit(70)
    sys.exit(int(rv) if isinstance(rv, int) else 0)


def _error(message: str) -> None:
    sys.stderr.write(f"svcdoctor: error: {message}\n")
