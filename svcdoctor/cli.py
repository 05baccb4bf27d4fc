"""The command line: typer wiring only. Each command reads its input, calls the core, and hands the result to the
output code through its `Environment`; each returns its exit status (`svcdoctor/errors.py`).

The options every command shares are declared once, in `svcdoctor/options.py`. Imports stay inside the commands
so that `svcdoctor --help` starts fast (`benchmarks/bench_help.py`).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from svcdoctor import __version__
from svcdoctor.errors import ExitStatus, SvcdoctorError
from svcdoctor.options import GraphFormat, NamespaceOpt, Protocol, Severity, shared_options

if TYPE_CHECKING:
    from svcdoctor.environment import Environment
    from svcdoctor.inputs import InputOptions, LoadedInput

app = typer.Typer(
    name="svcdoctor",
    help="Read-only diagnostics for kube-proxy's Service routing (iptables mode), on live clusters (kind through docker, any other through the Kubernetes API) and bundles.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback(invoke_without_command=True)
def _root(
    ctx: typer.Context,
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
):
    if version:
        print(f"svcdoctor {__version__}")
        raise typer.Exit(0)


@app.command()
@shared_options
def explain(
    env: Environment, source: InputOptions,
    service: Annotated[str, typer.Argument(metavar="SERVICE", help="Service name (or NAMESPACE/NAME).")],
    namespace: NamespaceOpt = None,
    port: Annotated[Optional[str], typer.Option("--port", metavar="NAME|NUMBER", help="Only this port (name or number).")] = None,
) -> int:
    """Show, node by node, how a Service's traffic is routed: paths, verdicts, SNAT, endpoint shares, counters."""
    from svcdoctor.commands.explain import explain as run_explain
    from svcdoctor.render.explain_view import render_explain
    from svcdoctor.render.json_doc import explain_document

    # a live read then fetches only this service's API objects
    source.service = service if "/" in service else f"{namespace or 'default'}/{service}"
    loaded = _load(env, source)
    env.show(run_explain(loaded, service, namespace, port), explain_document, render_explain)
    return _status(loaded)


@app.command()
@shared_options
def trace(
    env: Environment, source: InputOptions,
    dst: Annotated[str, typer.Option("--dst", metavar="IP:PORT", help="Destination IP:PORT.")],
    src: Annotated[Optional[str], typer.Option("--src", metavar="IP", help="Source IP (default: a client outside the cluster).")] = None,
    proto: Annotated[Protocol, typer.Option("--proto", metavar="PROTO", help="tcp | udp | sctp",
                                            case_sensitive=False)] = Protocol.tcp,
    node_ip: Annotated[Optional[list[str]], typer.Option("--node-ip", metavar="IP", help="The node's own address(es).")] = None,
) -> int:
    """Follow one packet through one node's nat and filter rules, every probabilistic branch included."""
    from svcdoctor.commands.trace import parse_destination, run_trace
    from svcdoctor.render.json_doc import traces_document
    from svcdoctor.render.trace_view import render_traces

    dst_ip, dport = parse_destination(dst, proto.value)  # a bad --dst is an error before any input is read
    loaded = _load(env, source)
    results = run_trace(loaded, src=src, dst=dst_ip, dport=dport, protocol=proto.value, node_ips=node_ip)
    env.show(results, traces_document, render_traces)
    return _status(loaded)


@app.command()
@shared_options
def check(
    env: Environment, source: InputOptions,
    fail_on: Annotated[Severity, typer.Option("--fail-on", metavar="SEVERITY", help="error | warning | info")] = Severity.error,
    namespace: NamespaceOpt = None,
    selector: Annotated[Optional[str], typer.Option("-l", "--selector", metavar="SELECTOR",
                                                    help="Only Services with these labels (kubectl's syntax).")] = None,
) -> int:
    """Check every service on every node; exit 1 when a finding is at or above --fail-on."""
    from functools import partial

    from svcdoctor.commands.check import failing, run_check
    from svcdoctor.render.check_view import render_check
    from svcdoctor.render.json_doc import check_document

    loaded = _load(env, source)
    result = run_check(loaded, namespace=namespace, selector=selector)
    env.show(result, partial(check_document, loaded=loaded), render_check)
    if failing(result, fail_on.value):
        return ExitStatus.FINDINGS
    return _status(loaded)


@app.command()
@shared_options
def nodes(env: Environment, source: InputOptions) -> int:
    """One row per node: role, IP, iptables backend, proxy mode, rule and KUBE chain counts, problems."""
    from svcdoctor.commands.nodes import node_rows
    from svcdoctor.render.json_doc import nodes_document
    from svcdoctor.render.tables import render_nodes

    loaded = _load(env, source)
    env.show(node_rows(loaded), nodes_document, render_nodes)
    return _status(loaded)


@app.command()
@shared_options
def collect(
    env: Environment, source: InputOptions,
    out_path: Annotated[str, typer.Option("--out", metavar="PATH", help="Bundle path; ending in .tar.gz writes an archive.")],
) -> int:
    """Write a bundle (svcdoctor-bundle/v1) with every node's raw rules and the API objects."""
    from svcdoctor.commands.collect import collect as run_collect
    from svcdoctor.render.json_doc import collect_document

    result = run_collect(source, out_path)
    for n in result.failed:
        env.note(f"svcdoctor: node {n.name} could not be read: {n.error}")
    if env.json:
        env.write_json(collect_document(result))
    else:  # the bundle is the output; stdout stays empty for a pipe
        env.note(f"wrote {result.path}: {len(result.snapshot.nodes)} node(s), API: {result.snapshot.api.status}")
    return ExitStatus.PARTIAL if result.failed else ExitStatus.OK


@app.command()
@shared_options(output_help="table | wide (the --format picture) | json (same as --format json)")
def graph(
    env: Environment, source: InputOptions,
    service: Annotated[Optional[str], typer.Argument(metavar="[SERVICE]", help="Service name (or NAMESPACE/NAME); all if omitted.")] = None,
    namespace: NamespaceOpt = None,
    fmt: Annotated[GraphFormat, typer.Option("--format", metavar="FORMAT", help="dot | mermaid | json")] = GraphFormat.dot,
) -> int:
    """The chain graph of a service (or of all of kube-proxy's chains) for pictures in tickets and docs."""
    from svcdoctor.commands.graph import run_graph

    loaded = _load(env, source)
    env.write(run_graph(loaded, service, namespace, "json" if env.json else fmt.value))
    return _status(loaded)


@app.command()
@shared_options
def watch(
    env: Environment, source: InputOptions,
    service: Annotated[Optional[str], typer.Argument(metavar="[SERVICE]", help="Service name (or NAMESPACE/NAME); busiest rules if omitted.")] = None,
    namespace: NamespaceOpt = None,
    interval: Annotated[float, typer.Option("--interval", metavar="SECONDS", help="Seconds between samples.")] = 2.0,
    count: Annotated[Optional[int], typer.Option("--count", metavar="N", help="Stop after N samples.")] = None,
    top: Annotated[int, typer.Option("--top", metavar="N",
                                     help="Without a service: how many of the busiest rules to show.")] = 20,
) -> int:
    """Live counter diffs per endpoint, with the observed split next to the expected one.

    nat counters count connections (the first packet of each), not packets. Without a service: the cluster's
    busiest kube-proxy rules (--top). Needs a live cluster (not --bundle/--demo); Ctrl-C stops it (exit 130).
    """
    from svcdoctor.commands.watch import run_watch
    from svcdoctor.errors import UsageError

    if interval <= 0:
        raise UsageError("--interval must be above 0 seconds")
    if count is not None and count < 1:
        raise UsageError("--count must be at least 1")
    if top < 1:
        raise UsageError("--top must be at least 1")
    return run_watch(source, service, namespace, interval, count, env.output, env.stdout, env.stderr, top=top)


# --- the steps the commands share ------------------------------------------------------------------------------
def _load(env: Environment, source: InputOptions) -> LoadedInput:
    """Read and parse the input; then say on stderr what every command says: warnings, and unreadable nodes."""
    from svcdoctor.inputs import load
    from svcdoctor.render.console import print_input_report

    if source.bundle or source.demo:
        loaded = load(source)
    else:  # a live read takes seconds (minutes on thousands of nodes): show what it is doing
        from svcdoctor.render.progress import collection_progress

        with collection_progress(env.stderr) as progress:
            loaded = load(source, progress=progress)
    print_input_report(loaded, env.stderr)
    return loaded


def _status(loaded: LoadedInput) -> ExitStatus:
    """Some nodes could not be read: the rest is reported, and the exit status says it is partial."""
    return ExitStatus.PARTIAL if loaded.failed else ExitStatus.OK


# --- the entry point -------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> None:
    """Entry point: runs the app; every error becomes one line on stderr and its exit status."""
    sys.exit(int(run(sys.argv[1:] if argv is None else argv)))


def run(args: list[str], env: Environment | None = None) -> int:
    """Run one command line and return its exit status. `env` replaces the terminal (stdout, stderr, colour) for
    the command's output; the flags still choose the format."""
    from typer.exceptions import Abort, Exit, TyperException

    # errors can come before a command has parsed its own --debug (a bad flag, a bad value): look for it here
    debug = "--debug" in args
    try:
        rv = app(args=args, prog_name="svcdoctor", standalone_mode=False, obj=env)
    except SvcdoctorError as e:
        _error(str(e))
        if debug:
            raise
        return e.exit_status
    except Exit as e:
        return e.exit_code
    except (Abort, KeyboardInterrupt):
        return ExitStatus.INTERRUPTED
    except TyperException as e:
        if type(e).__name__ == "NoArgsIsHelpError":
            app(args=["--help"], prog_name="svcdoctor", standalone_mode=False)
            return ExitStatus.USAGE
        _error(e.format_message().replace("\n", " "))
        return ExitStatus.USAGE
    except BrokenPipeError:
        return ExitStatus.OK  # `svcdoctor … | head`: the reader has what it wanted
    except Exception as e:  # never a traceback for the user; --debug shows it
        if debug:
            raise
        _error(f"internal error: {type(e).__name__}: {e} (run with --debug for the traceback)")
        return ExitStatus.INTERNAL
    return int(rv) if isinstance(rv, int) else ExitStatus.OK


def _error(message: str) -> None:
    sys.stderr.write(f"svcdoctor: error: {message}\n")
