"""The command line: typer wiring only. Each command reads its input, calls the core, and hands the result to the
output code through its `Environment`; each returns its exit status (`svcdoctor/errors.py`).

The options every command shares are declared once, in `svcdoctor/options.py`. Imports stay inside the commands
so that `svcdoctor --help` starts fast (`benchmarks/bench_help.py`).
"""

from __future__ import annotations

import os
import sys
from enum import Enum
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from svcdoctor import __version__
from svcdoctor.errors import ExitStatus, SvcdoctorError, UsageError
from svcdoctor.help_examples import epilog
from svcdoctor.options import AllNamespacesOpt, GraphFormat, NamespaceOpt, Protocol, Severity, shared_options

if TYPE_CHECKING:
    from svcdoctor.environment import Environment
    from svcdoctor.inputs import InputOptions, LoadedInput

ROOT_EPILOG = """\b
Examples:
  # try it now on the demo bundle shipped with svcdoctor
  svcdoctor --demo services
  svcdoctor --demo explain svc-clusterip
  svcdoctor --demo check
  # the live kind cluster (kind get clusters); as a kubectl plugin too
  svcdoctor explain web -n shop
  kubectl svcdoctor explain web -n shop

The input options (--demo, --bundle, --cluster, --node, -o and the others) go before or after the command.
svcdoctor COMMAND --help shows a command's options and examples."""

app = typer.Typer(
    name="svcdoctor",
    help="Read-only diagnostics for kube-proxy's Service routing (iptables mode), on live clusters (kind through "
         "docker, any other through the Kubernetes API) and bundles.",
    epilog=ROOT_EPILOG,
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


@app.command(epilog=epilog("explain"))
@shared_options
def explain(
    env: Environment, source: InputOptions,
    service: Annotated[Optional[str], typer.Argument(
        metavar="SERVICE",
        help="NAME, NAMESPACE/NAME, svc/NAME, an address it is reached at (ClusterIP[:PORT], external or "
             "load-balancer IP) or :NODEPORT.")] = None,
    namespace: NamespaceOpt = None,
    all_namespaces: AllNamespacesOpt = False,
    port: Annotated[Optional[str], typer.Option("--port", metavar="NAME|NUMBER",
                                                help="Only this port (name, number or node port).")] = None,
) -> int:
    """Show, node by node, how a Service's traffic is routed: paths, verdicts, SNAT, endpoint shares, counters."""
    from svcdoctor.commands.explain import explain as run_explain
    from svcdoctor.inputs import resolve_target
    from svcdoctor.model.service_ref import parse_service_ref
    from svcdoctor.render.explain_view import render_explain
    from svcdoctor.render.json_doc import explain_document

    if not service:
        raise UsageError("explain needs a SERVICE: NAME (-n NAMESPACE), NAMESPACE/NAME, svc/NAME, a ClusterIP[:PORT] "
                         "or :NODEPORT; `svcdoctor services` lists the services the rules hold")
    ref = parse_service_ref(service)
    if not ref.is_address and not all_namespaces:  # a live read then fetches only this service's API objects
        source.service = f"{ref.namespace or namespace or 'default'}/{ref.name}"
    loaded = _load(env, source)
    ns, name, address_port = resolve_target(loaded, service, namespace, all_namespaces)
    env.show(run_explain(loaded, f"{ns}/{name}", None, port or address_port), explain_document, render_explain)
    return _status(loaded)


@app.command(epilog=epilog("trace"))
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


@app.command(epilog=epilog("check"))
@shared_options
def check(
    env: Environment, source: InputOptions,
    fail_on: Annotated[Severity, typer.Option("--fail-on", metavar="SEVERITY", help="error | warning | info")] = Severity.error,
    namespace: Annotated[Optional[str], typer.Option(
        "-n", "--namespace", metavar="NAMESPACE",
        help="Only this namespace's services (without -n: every namespace; an unknown one exits 2).")] = None,
    all_namespaces: AllNamespacesOpt = False,
    selector: Annotated[Optional[str], typer.Option("-l", "--selector", metavar="SELECTOR",
                                                    help="Only Services with these labels (kubectl's syntax).")] = None,
) -> int:
    """Check every service on every node; exit 1 when a finding is at or above --fail-on.

    Without -n it checks every namespace, as -A does (its first line says which namespaces it checked).
    """
    from functools import partial

    from svcdoctor.commands.check import failing, run_check
    from svcdoctor.render.check_view import render_check
    from svcdoctor.render.json_doc import check_document

    loaded = _load(env, source, defer=True)
    owed = bool(loaded.deferred)  # a big bundle's nodes are read by run_check: what they say is said after
    try:
        if all_namespaces and namespace:
            raise UsageError("-n and -A exclude each other")
        result = run_check(loaded, namespace=namespace, selector=selector)
    finally:
        if owed:
            _report_deferred(env, loaded)
    scope = f"namespace {namespace}" if namespace else "every namespace"
    env.show(result, partial(check_document, loaded=loaded, namespace=namespace), partial(render_check, scope=scope))
    if failing(result, fail_on.value):
        return ExitStatus.FINDINGS
    return _status(loaded)


@app.command(epilog=epilog("nodes"))
@shared_options
def nodes(env: Environment, source: InputOptions) -> int:
    """One row per node: role, IP, iptables backend, proxy mode, rule and KUBE chain counts, problems."""
    from svcdoctor.commands.nodes import node_rows
    from svcdoctor.render.json_doc import nodes_document
    from svcdoctor.render.tables import render_nodes

    loaded = _load(env, source)
    env.show(node_rows(loaded), nodes_document, render_nodes)
    return _status(loaded)


@shared_options
def services(
    env: Environment, source: InputOptions,
    namespace: NamespaceOpt = None,
    all_namespaces: AllNamespacesOpt = False,
) -> int:
    """List the services the rules hold (alias: svc): namespace, name, ports, entries, endpoints, nodes."""
    from svcdoctor.commands.services import run_services
    from svcdoctor.render.json_doc import services_document
    from svcdoctor.render.services_view import render_services

    loaded = _load(env, source)
    # kubectl's meaning: -n NAMESPACE, -A every namespace, neither the default namespace
    result = run_services(loaded, None if all_namespaces else (namespace or "default"))
    env.show(result, services_document, render_services)
    if result.elsewhere and not env.json:
        env.note(f"{result.elsewhere} more service(s) in other namespaces: -A lists every namespace")
    return _status(loaded)


app.command("services", epilog=epilog("services"))(services)
app.command("svc", hidden=True, epilog=epilog("services"))(services)


@app.command(epilog=epilog("collect"))
@shared_options
def collect(
    env: Environment, source: InputOptions,
    out_path: Annotated[str, typer.Option("--out", metavar="PATH", help="Bundle path; ending in .tar.gz writes an archive.")],
    redact: Annotated[bool, typer.Option("--redact", help="Names and addresses replaced with pseudonyms (mapping in PATH.mapping.json, beside it).")] = False,
) -> int:
    """Write a bundle (svcdoctor-bundle/v1) with every node's raw rules and the API objects."""
    from svcdoctor.commands.collect import collect as run_collect
    from svcdoctor.render.json_doc import collect_document

    result = run_collect(source, out_path, redact)
    for n in result.failed:
        env.note(f"svcdoctor: node {n.name} could not be read: {n.error}")
    if env.json:
        env.write_json(collect_document(result))
    else:  # the bundle is the output; stdout stays empty for a pipe
        env.note(f"wrote {result.path}: {len(result.snapshot.nodes)} node(s), API: {result.snapshot.api.status}")
    return ExitStatus.PARTIAL if result.failed else ExitStatus.OK


@app.command(epilog=epilog("graph"))
@shared_options(output_help="dot | mermaid | svg | json", output_type=GraphFormat, output_default=GraphFormat.dot)
def graph(
    env: Environment, source: InputOptions,
    service: Annotated[Optional[str], typer.Argument(metavar="[SERVICE]", help="Service name (or NAMESPACE/NAME); all if omitted.")] = None,
    namespace: NamespaceOpt = None,
    fmt: Annotated[Optional[GraphFormat], typer.Option("--format", metavar="FORMAT", help="The same as -o.")] = None,
) -> int:
    """The chain graph of a service (or of all of kube-proxy's chains) for pictures in tickets and docs.

    A picture shows one node: the one with the most traffic for it (named on stderr) unless --node says which;
    several --node draw several. -o json holds every node.
    """
    from svcdoctor.commands.graph import run_graph

    loaded = _load(env, source)
    result = run_graph(loaded, service, namespace, fmt.value if fmt else env.output, nodes_given=bool(source.nodes))
    if result.chosen:
        env.note(f"drawing {result.chosen}, {result.because} (--node NODE for another)")
    env.write(result.text)
    return _status(loaded)


@app.command(epilog=epilog("report"))
@shared_options(output_help="table (a line on stderr) | json (what was written, on stdout)")
def report(
    env: Environment, source: InputOptions,
    out_path: Annotated[Optional[str], typer.Option("--out", metavar="FILE", help="The HTML file to write (- for standard output; default svcdoctor-report-CLUSTER-TIME.html).")] = None,
    docs_url: Annotated[Optional[str], typer.Option("--docs-url", metavar="URL", help="Where svcdoctor's docs/ folder is served, for the findings' links.")] = None,
) -> int:
    """One self-contained HTML file to attach to a ticket: the cluster at a glance, the findings, every service's
    per-node paths and pictures. Opens offline in any browser."""
    from svcdoctor.commands.check import run_check
    from svcdoctor.commands.nodes import node_rows
    from svcdoctor.commands.report import write_report

    loaded = _load(env, source)
    written = write_report(loaded, run_check(loaded), node_rows(loaded), out_path, docs_url, env.stdout.file if out_path == "-" else None)
    if env.json:
        env.write_json({"apiVersion": "svcdoctor/v1", "kind": "Report", **written})
    elif out_path != "-":
        env.note(f"wrote {written['path']} ({written['bytes'] // 1024} KB): {written['services']} service(s), "
                 f"{written['findings']} finding(s)")
    return _status(loaded)


@app.command(epilog=epilog("redact"))
def redact(
    in_path: Annotated[str, typer.Argument(metavar="IN", help="A bundle (directory or .tar.gz) or a rules file.")],
    out_path: Annotated[str, typer.Argument(metavar="OUT", help="The redacted bundle; ending in .tar.gz writes an archive.")],
) -> int:
    """Copy a bundle with namespaces, names, pod and node names and IP addresses replaced with pseudonyms, and
    kube-proxy's chain names recomputed from them. The mapping is written beside OUT (OUT.mapping.json): keep it."""
    from svcdoctor.commands.redact import redact_bundle

    written, mapping, _ = redact_bundle(in_path, out_path)
    print(f"wrote {written}; the mapping back to the real names is {mapping} (keep it, do not send it)",
          file=sys.stderr)
    return ExitStatus.OK


class WatchSource(str, Enum):
    """watch --source: what new connections are counted from."""

    counters = "counters"
    conntrack = "conntrack"


@app.command(epilog=epilog("watch"))
@shared_options
def watch(
    env: Environment, source: InputOptions,
    service: Annotated[Optional[str], typer.Argument(metavar="[SERVICE]", help="Service name (or NAMESPACE/NAME); busiest rules if omitted.")] = None,
    namespace: NamespaceOpt = None,
    interval: Annotated[float, typer.Option("--interval", metavar="SECONDS", help="Seconds between samples.")] = 2.0,
    count: Annotated[Optional[int], typer.Option("--count", metavar="N", help="Stop after N samples.")] = None,
    top: Annotated[int, typer.Option("--top", metavar="N",
                                     help="Without a service: how many of the busiest rules to show.")] = 20,
    all_nodes: Annotated[bool, typer.Option("--all-nodes", help="Show every node's endpoints, also the nodes where "
                                            "the service counted no connection (one line without it).")] = False,
    counted_from: Annotated[WatchSource, typer.Option(
        "--source", metavar="counters|conntrack",
        help="Count new connections from kube-proxy's rule counters (iptables mode) or from the nodes' conntrack "
             "tables. Nodes in nftables mode use conntrack either way (their rules keep no counters).")
    ] = "counters",
) -> int:
    """Live counter diffs per endpoint, with the observed split next to the expected one.

    nat counters count connections (the first packet of each), not packets. On nodes in nftables mode (no
    counters), and with --source conntrack, new connections are counted from conntrack. Without a service: the
    cluster's busiest kube-proxy rules (--top). Needs a live cluster (not --bundle/--demo); Ctrl-C stops it (exit
    130).
    """
    from svcdoctor.commands.watch import run_watch
    from svcdoctor.errors import UsageError

    if interval <= 0:
        raise UsageError("--interval must be above 0 seconds")
    if count is not None and count < 1:
        raise UsageError("--count must be at least 1")
    if top < 1:
        raise UsageError("--top must be at least 1")
    return run_watch(source, service, namespace, interval, count, env.output, env.stdout, env.stderr, top=top,
                     all_nodes=all_nodes, source=WatchSource(counted_from).value)


class Shell(str, Enum):
    bash = "bash"
    zsh = "zsh"
    fish = "fish"


@app.command(epilog=epilog("completion"))
def completion(
    shell: Annotated[Shell, typer.Argument(metavar="SHELL", help="bash | zsh | fish")],
) -> int:
    """Print the shell completion script for bash, zsh or fish (commands, options, choices)."""
    from typer.completion import completion_init, get_completion_script

    completion_init()
    sys.stdout.write(get_completion_script(prog_name="svcdoctor", complete_var=COMPLETE_VAR,
                                           shell=shell.value).rstrip("\n") + "\n")
    return ExitStatus.OK


def _full_summaries() -> None:
    """The command list of `svcdoctor --help` shows each command's whole first line (click cuts it at ~45
    characters, "paths,..."); the first line is the summary, written to fit."""
    for info in app.registered_commands:
        doc = (info.callback.__doc__ or "").strip()
        if info.short_help is None and doc:
            info.short_help = doc.splitlines()[0]


_full_summaries()


# --- the steps the commands share ------------------------------------------------------------------------------
def _load(env: Environment, source: InputOptions, defer: bool = False) -> LoadedInput:
    """Read and parse the input; then say on stderr what every command says: warnings, and unreadable nodes.
    `defer` (check): a big bundle's rules may be left for check's workers to read; then this is said when the
    command has read them (_report_deferred)."""
    from svcdoctor.inputs import load
    from svcdoctor.render.console import print_input_report

    if source.bundle or source.demo:
        loaded = load(source, defer=defer)
    else:  # a live read takes seconds (minutes on thousands of nodes): show what it is doing
        from svcdoctor.render.progress import collection_progress

        with collection_progress(env.stderr) as progress:
            loaded = load(source, progress=progress, defer=defer)
    if not loaded.deferred:
        print_input_report(loaded, env.stderr)
    return loaded


def _report_deferred(env: Environment, loaded: LoadedInput) -> None:
    """What `_load` did not say for the nodes it left unread, once they are read (here, when the command stopped
    before reading them): the same lines, in the same order."""
    from svcdoctor.render.console import print_input_report

    loaded.read_deferred()
    print_input_report(loaded, env.stderr)


def _status(loaded: LoadedInput) -> ExitStatus:
    """Some nodes could not be read: the rest is reported, and the exit status says it is partial."""
    return ExitStatus.PARTIAL if loaded.failed else ExitStatus.OK


# --- the entry point -------------------------------------------------------------------------------------------
COMPLETE_VAR = "_SVCDOCTOR_COMPLETE"  # what the completion scripts set when they ask for completions

# the options every command takes (svcdoctor/options.py), which may also come before the command: flags, and
# options that take a value
LEADING_FLAGS = {"--demo", "--no-api", "--no-color", "--debug", "-A", "--all-namespaces"}
LEADING_VALUES = {"--bundle", "--cluster", "--kubeconfig", "--context", "--node", "-o", "--output", "--color",
                  "-n", "--namespace"}


def main(argv: list[str] | None = None) -> None:
    """Entry point: runs the app; every error becomes one line on stderr and its exit status."""
    if os.environ.get(COMPLETE_VAR):  # the shell asks for completions (scripts from `svcdoctor completion`)
        from typer.completion import completion_init

        completion_init()
    sys.exit(int(run(sys.argv[1:] if argv is None else argv)))


def kubectl_main() -> None:
    """`kubectl svcdoctor …`: kubectl runs the kubectl-svcdoctor program found on PATH with the rest of the line."""
    main()


def options_after_command(args: list[str]) -> list[str]:
    """`svcdoctor --demo nodes` → `svcdoctor nodes --demo`: the input options may come before the command, as
    kubectl's (`kubectl -n shop get svc`) do."""
    leading: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        name = arg.split("=", 1)[0]
        if name in LEADING_FLAGS:
            leading.append(arg)
        elif name in LEADING_VALUES and ("=" in arg or i + 1 < len(args)):
            leading.append(arg)
            if "=" not in arg:
                i += 1
                leading.append(args[i])
        else:
            break
        i += 1
    if not leading or i >= len(args) or args[i].startswith("-"):
        return args  # no command after them (`svcdoctor --demo`, `svcdoctor --demo --help`): click says what is wrong
    return [args[i], *leading, *args[i + 1:]]


def run(args: list[str], env: Environment | None = None) -> int:
    """Run one command line and return its exit status. `env` replaces the terminal (stdout, stderr, colour) for
    the command's output; the flags still choose the format."""
    from typer.exceptions import Abort, Exit, TyperException

    # errors can come before a command has parsed its own --debug (a bad flag, a bad value): look for it here
    debug = "--debug" in args
    args = options_after_command(list(args))
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
        if type(e).__name__ == "NoArgsIsHelpError":  # bare `svcdoctor`: the help is the answer
            app(args=["--help"], prog_name="svcdoctor", standalone_mode=False)
            return ExitStatus.OK
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
