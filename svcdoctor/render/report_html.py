"""The report as one HTML file that works offline (`file://`, no network): its style, script and pictures are all
inside it. Sections are `<details>`, so a big cluster opens folded; a filter box (a few lines of inline script)
hides the services that do not match. Everything from the input is escaped; the script only reads attributes.
"""

from __future__ import annotations

import base64
import gzip
from html import escape

from svcdoctor import __version__
from svcdoctor.checks.findings import CATALOGUE, SEVERITIES, Finding
from svcdoctor.model.hashes import endpoint_string
from svcdoctor.render.graph_svg import DEFS, STYLE, to_svg

# finding id -> the runbook that starts from its symptom (docs/runbooks/)
RUNBOOKS = {
    "no-endpoints": "service-times-out-vs-connection-refused.md",
    "etp-local-no-local-endpoints": "nodeport-works-on-some-nodes-only.md",
    "itp-local-no-local-endpoints": "service-times-out-vs-connection-refused.md",
    "stale-endpoint": "traffic-goes-to-an-old-pod.md",
    "uneven-split": "one-pod-gets-all-the-traffic.md",
    "policy-mismatch": "client-ip-is-not-preserved.md",
    "backend-mismatch": "nodeport-works-on-some-nodes-only.md",
}
OPEN_UP_TO = 50  # services drawn unfolded when the cluster is this small
PACK_ABOVE = 300  # services; in a bigger cluster, those without findings are kept compressed until opened
PACK_SIZE = 100  # services to a compressed pack
SEVERITY_TITLE = {"error": "Errors", "warning": "Warnings", "info": "Info"}
SEVERITY_MARK = {"error": "✖", "warning": "!", "info": "i"}

PAGE_STYLE = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;max-width:1400px;padding:0 16px;color:#111}
h1{font-size:22px}h2{font-size:18px;border-bottom:1px solid #ccc;padding-bottom:3px;margin-top:28px}
table{border-collapse:collapse;margin:6px 0}td,th{border:1px solid #ddd;padding:3px 7px;text-align:left;vertical-align:top}
th{background:#f3f4f6}code,pre,.mono{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12px}
pre{background:#f8fafc;border:1px solid #e5e7eb;padding:6px;overflow-x:auto;white-space:pre-wrap;word-break:break-all}
details{margin:4px 0}summary{cursor:pointer}details.svc{border:1px solid #e5e7eb;border-radius:5px;padding:4px 8px}
details.svc[open]{background:#fcfcfd}.sev-error{color:#b91c1c;font-weight:bold}.sev-warning{color:#b45309;font-weight:bold}
.sev-info{color:#1d4ed8}.muted{color:#666}.pic{overflow-x:auto;margin:6px 0}
.drop,.reject{color:#b91c1c;font-weight:bold}.dnat{color:#15803d}
#filter{font-size:15px;padding:4px 8px;width:min(600px,90%)}
"""
# the filter: show the services whose text holds every word typed (names, IPs, ports, nodes, pods, chains)
SCRIPT = """
(function(){var box=document.getElementById('filter'),count=document.getElementById('shown');
var items=[].slice.call(document.querySelectorAll('details.svc'));
box.addEventListener('input',function(){var words=box.value.toLowerCase().split(/\\s+/).filter(Boolean),n=0;
items.forEach(function(d){var q=d.getAttribute('data-q'),ok=words.every(function(w){return q.indexOf(w)>=0});
d.hidden=!ok;if(ok)n++;});count.textContent=n;});})();
"""
# opening a packed service (by a click, or a link to it: #s-NS--NAME) inflates its pack and fills it in
UNPACK_SCRIPT = """
(function(){var packs={};
function pack(n){if(!packs[n]){var b=atob(document.getElementById('pack-'+n).textContent),a=new Uint8Array(b.length);
for(var i=0;i<b.length;i++)a[i]=b.charCodeAt(i);
packs[n]=new Response(new Blob([a]).stream().pipeThrough(new DecompressionStream('gzip'))).text()
.then(function(t){return t.split('\\0');});}return packs[n];}
function fill(d){var p=d.querySelector('div.packed');if(!p||p.getAttribute('data-done'))return;
var i=+p.getAttribute('data-i');p.setAttribute('data-done','1');
pack(Math.floor(i/PACK_SIZE)).then(function(bodies){p.innerHTML=bodies[i%PACK_SIZE];});}
document.addEventListener('toggle',function(e){if(e.target.open&&e.target.classList.contains('svc'))fill(e.target);},true);
function follow(){var d=location.hash&&document.getElementById(location.hash.slice(1));
if(d&&d.tagName==='DETAILS'){d.open=true;fill(d);}}
window.addEventListener('hashchange',follow);follow();})();
""".replace("PACK_SIZE", str(PACK_SIZE))


def report_html(result, sections: list[tuple[str, str | None]], docs_url: str | None = None,
                packs: list[str] | None = None) -> str:
    """The whole page, around the services' `service_section`s (in `result.services`' order). ``docs_url``: where svcdoctor's docs/ are (a link base); without it, their paths as text.
    ``packs``: the `pack`s of the `packed` services' bodies, made already (their bodies in ``sections`` are then
    None); without them, they are made here."""
    loaded = result.loaded
    snapshot = loaded.snapshot
    cluster = snapshot.cluster or snapshot.source
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           # nothing from outside this file is ever fetched
           "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; "
           "script-src 'unsafe-inline'; img-src data:\">",
           f"<title>svcdoctor report: {escape(cluster)}</title>",
           f"<style>{PAGE_STYLE}{STYLE}</style></head><body>",
           f'<svg width="0" height="0" style="position:absolute" aria-hidden="true">{DEFS}</svg>',
           f"<h1>svcdoctor report: {escape(cluster)}</h1>",
           f'<p class="muted">Input: {escape(snapshot.source)}; collected {escape(snapshot.collected_at or "?")}; '
           f"report written {escape(result.generated_at)} by svcdoctor {escape(__version__)}. "
           "Read-only: nothing on the cluster was changed.</p>"]
    out += _glance(result)
    out += _findings(result, docs_url)
    out += _services(result, sections, packs)
    out.append(f"<script>{SCRIPT}{UNPACK_SCRIPT}</script></body></html>")
    return "\n".join(out) + "\n"


# --- the cluster at a glance -----------------------------------------------------------------------------------
def _glance(result) -> list[str]:
    loaded, check = result.loaded, result.check
    summary = check.summary
    out = ['<h2 id="glance">The cluster at a glance</h2>',
           f"<p>{len(loaded.snapshot.nodes)} node(s), {len(result.services)} service(s); "
           f'findings: <span class="sev-error">{summary["error"]} error(s)</span>, '
           f'<span class="sev-warning">{summary["warning"]} warning(s)</span>, {summary["info"]} info. '
           + ("Each node compared with what kube-proxy would program there (API objects: "
              f"{escape(loaded.snapshot.api.status)})." if check.api else
              "No API objects: the nodes were compared with each other.") + "</p>",
           "<table><tr><th>Node</th><th>Role</th><th>IP</th><th>iptables backend</th><th>Proxy mode</th>"
           "<th>Rules</th><th>KUBE chains</th><th>Proxy settings from</th><th>Problems</th></tr>"]
    for row in result.nodes:
        cells = [row["name"], row["role"], row["internalIP"], row["backend"], row["proxyMode"], row["rules"],
                 row["kubeChains"], check.settings.get(row["name"]) or check.skipped.get(row["name"]),
                 "; ".join(row["problems"])]
        out.append("<tr>" + "".join(f"<td>{escape(_text(c))}</td>" for c in cells) + "</tr>")
    out.append("</table>")
    unread = [f"node {n}: {why}" for n, why in sorted(loaded.failed.items())]
    if not loaded.snapshot.api.available:
        unread.append(f"Kubernetes API objects: {loaded.snapshot.api.status}")
    unread += [f"{n}: not checked, {why}" for n, why in sorted(check.skipped.items())]
    unread += loaded.warnings
    out.append("<h3>What could not be read</h3>" + (
        "<ul>" + "".join(f"<li>{escape(u)}</li>" for u in unread) + "</ul>" if unread
        else "<p>Everything was read: every node's rules and the API objects.</p>"))
    return out


# --- findings --------------------------------------------------------------------------------------------------
def _findings(result, docs_url: str | None) -> list[str]:
    findings = result.check.findings
    out = ['<h2 id="findings">Findings</h2>']
    if not findings:
        return out + ["<p>None: every service port is routed the way kube-proxy would route it.</p>"]
    for severity in SEVERITIES:
        these = [f for f in findings if f.severity == severity]
        if not these:
            continue
        out.append(f'<details open><summary class="sev-{severity}">{SEVERITY_TITLE[severity]} ({len(these)})'
                   "</summary>")
        for fid in sorted({f.id for f in these}):
            group = [f for f in these if f.id == fid]
            meaning = CATALOGUE.get(fid, ("", ""))[1]
            out.append(f'<h3 id="f-{escape(fid)}" class="sev-{severity}">{SEVERITY_MARK[severity]} '
                       f"<code>{escape(fid)}</code> ({len(group)})</h3>"
                       f"<p>{escape(meaning)}. {_doc_links(fid, docs_url)}</p>")
            out += [_finding(f) for f in group]
        out.append("</details>")
    return out


def _doc_links(fid: str, docs_url: str | None) -> str:
    links = [("the finding", f"reference/findings.md#{fid}")]
    if fid in RUNBOOKS:
        links.append(("runbook", f"runbooks/{RUNBOOKS[fid]}"))
    parts = []
    for label, path in links:
        if docs_url:
            parts.append(f'{label}: <a href="{escape(docs_url.rstrip("/") + "/" + path)}">{escape(path)}</a>')
        else:
            parts.append(f"{label}: <code>docs/{escape(path)}</code>")
    return "See " + ", ".join(parts) + " (svcdoctor's docs)."


def _finding(f: Finding) -> str:
    where = " · ".join(filter(None, [f"node {f.node}" if f.node else "", f.service or ""]))
    link = f' <a href="#s-{_anchor(_service_key(f.service))}">the service ↓</a>' if f.service else ""
    evidence = f"<pre>{escape(chr(10).join(f.evidence))}</pre>" if f.evidence else ""
    return (f'<div class="finding"><p><b>{escape(where)}</b>{link}<br>{escape(f.message)}</p>{evidence}</div>')


# --- services --------------------------------------------------------------------------------------------------
def _services(result, sections: list[tuple[str, str | None]], packs: list[str] | None) -> list[str]:
    services = result.services
    out = ['<h2 id="services">Services</h2>',
           '<p><input id="filter" type="search" placeholder="filter: name, namespace, IP, port, node, pod, chain" '
           f'autocomplete="off"> <span id="shown">{len(services)}</span> of {len(services)} shown; '
           "those with findings first.</p>"]
    is_packed = packed(services)
    bodies: list[str] = []
    n = 0
    for entry, (head, body), in_pack in zip(services, sections, is_packed):
        if in_pack:
            out.append(f'{head}<div class="packed" data-i="{n}">(unpacking…)</div></details>')
            n += 1
            if packs is None:
                bodies.append(body)
        else:
            out.append(f"{head}{body}</details>")
    if packs is None:
        packs = [pack(bodies[start:start + PACK_SIZE]) for start in range(0, len(bodies), PACK_SIZE)]
    out += [f'<script type="application/gzip" id="pack-{i}">{data}</script>' for i, data in enumerate(packs)]
    return out


def packed(services) -> list[bool]:
    """Which services' bodies are packed: in a big cluster, those without findings. The n-th packed one is in pack
    n // PACK_SIZE."""
    big = len(services) > PACK_ABOVE
    return [big and not entry.findings for entry in services]


def pack(bodies: list[str]) -> str:
    """Up to PACK_SIZE bodies of services without findings as one gzip member, base64: about a tenth of their
    size; the script inflates a pack when one of its services is opened (DecompressionStream, in every browser
    since 2023). A NUL separates the bodies: escaped HTML never holds one."""
    data = gzip.compress("\0".join(bodies).encode(), compresslevel=6, mtime=0)
    return base64.b64encode(data).decode()


def service_section(s, total: int, node_count: int) -> tuple[str, str]:
    """(the opening of its <details> with the summary line, the rest of it up to </details>)."""
    unfold = total <= OPEN_UP_TO or bool(s.findings)
    view = s.view
    api = view.api_ports[0] if view.api_ports else None
    words = [s.key, api.type if api else "", *(api.cluster_ips if api else [])]
    head = [f"<b>{escape(s.key)}</b>"]
    if api is not None:
        head.append(escape(f"{api.type} {', '.join(api.cluster_ips) or 'no cluster IP'}"))
    ports = ", ".join(f"{p.name + ' ' if p.name else ''}{p.port}/{p.protocol}"
                      + (f" nodePort {p.node_port}" if p.node_port else "") for p in view.ports)
    head.append(escape(ports or "no ports in the rules"))
    marks = "".join(f'<span class="sev-{sev}">{SEVERITY_MARK[sev]} {n}</span> '
                    for sev, n in _counts(s.findings).items() if n)
    body = []
    if s.findings:
        body.append("<ul>" + "".join(
            f'<li class="sev-{f.severity}"><a href="#f-{escape(f.id)}">{escape(f.id)}</a> '
            f"{escape(f.node or '')}: <span style=\"color:#111;font-weight:normal\">{escape(f.message)}</span></li>"
            for f in s.findings) + "</ul>")
    if len(s.explained_nodes) < node_count:
        others = ", ".join(f"{n} {p} pkts" for n, p in s.entry_packets.items() if n not in s.explained_nodes)
        body.append(f'<p class="muted">Shown on {escape(", ".join(s.explained_nodes))}, its busiest node; check found '
                    f"nothing wrong on the others, which hold the rules kube-proxy would write there (their entry "
                    f"counters: {escape(others)}). <code>svcdoctor explain {escape(s.key)}</code> shows every "
                    "node.</p>")
    for pv in view.ports:
        body += _port(pv, words)
    for drawn, same, g in s.pictures:
        caption = f"{s.key} on {drawn}" + (f" (the same chains on {', '.join(same)})" if same else "")
        body.append(f'<div class="pic">{to_svg(g, caption, standalone=False)}</div>')
        words += list(g.nodes)
    if not getattr(s, "drawn", True):
        # a quiet service of a big cluster: its table says it all; the picture is one command away
        node = s.explained_nodes[0] if s.explained_nodes else ""
        body.append(f'<p class="muted">Not drawn (a big cluster\'s services without findings are not, to keep the '
                    f"report quick to write): <code>svcdoctor graph {escape(s.key)}"
                    f"{' --node ' + escape(node) if node else ''} -o svg</code> draws its chains.</p>")
        words += [c for pv in view.ports for c in pv.chains.values() if c]
    q = escape(" ".join(w for w in words if w).lower())
    return (f'<details class="svc" id="s-{_anchor(s.key)}" data-q="{q}"{" open" if unfold else ""}>'
            f"<summary>{marks}{' · '.join(head)}</summary>", "".join(body))


def _port(pv, words: list[str]) -> list[str]:
    chains = ", ".join(c for c in pv.chains.values() if c)
    out = [f"<h4>Port {escape(pv.name or '(unnamed)')} {pv.port}/{escape(pv.protocol)}"
           + (f" → {escape(str(pv.target_port))}" if pv.target_port is not None else "")
           + (f", nodePort {pv.node_port}" if pv.node_port else "")
           + (f' <span class="mono muted">{escape(chains)}</span>' if chains else "") + "</h4>",
           "<table><tr><th>Node</th><th>Entry</th><th>Verdict</th><th>Pkts</th><th>Masquerade</th>"
           "<th>Affinity</th><th>Endpoints: share, address, pod @ node, pkts</th></tr>"]
    evidence = []
    for nv in pv.nodes:
        if not nv.entries:
            out.append(f'<tr><td>{escape(nv.node)}</td><td colspan="6" class="muted">no rules for this port</td></tr>')
        for e in nv.entries:
            words += [nv.node, e.destination]
            eps = "<br>".join(_endpoint(ep, words) for ep in e.endpoints) or "-"
            if e.unmatched_share > 1e-9 and e.endpoints:
                eps += f"<br>{e.unmatched_share:.1%} not DNATed"
            masq = e.masquerade + (f" ({'; '.join(e.masquerade_when)})" if e.masquerade_when else "")
            verdict = e.verdict.upper() if e.verdict != "none" else "-"
            out.append(f"<tr><td>{escape(nv.node)}</td><td class=\"mono\">{escape(e.kind)} {escape(e.destination)}"
                       f'{" (" + e.family + ")" if e.family != "IPv4" else ""}</td>'
                       f'<td class="{escape(e.verdict)}">{escape(verdict)}</td><td>{_text(e.packets)}</td>'
                       f"<td>{escape(masq)}</td><td>{_text(e.session_affinity_seconds and f'{e.session_affinity_seconds}s')}"
                       f'</td><td class="mono">{eps}</td></tr>')
            evidence += _evidence(nv.node, e)
    out.append("</table>")
    if evidence:
        out.append(f"<details><summary>Evidence: the rules read ({len(evidence)})</summary>"
                   f"<pre>{escape(chr(10).join(evidence))}</pre></details>")
    return out


def _endpoint(ep, words: list[str]) -> str:
    address = endpoint_string(ep.ip, ep.port) if ep.port is not None else ep.ip
    words += [address, ep.pod or "", ep.node or "", ep.chain]
    where = f" {ep.pod or '?'} @ {ep.node or '?'}" if (ep.pod or ep.node) else ""
    masq = " masq" if ep.masquerade == "always" else ""
    return escape(f"{ep.probability:.1%} {address}{where} [{_text(ep.packets)} pkts]{masq}")


def _evidence(node: str, e) -> list[str]:
    rules = [e.entry_rule, e.blackhole_rule]
    for ep in e.endpoints:
        rules += ep.jump_rules + [ep.dnat_rule]
    out, seen = [], set()
    for r in rules:
        if r is None or (r.table, r.text) in seen:
            continue
        seen.add((r.table, r.text))
        counters = f"[{r.packets}:{r.bytes}] " if r.packets is not None else ""
        out.append(f"{node} {r.table}: {counters}{r.text}")
    return out


def _counts(findings: list[Finding]) -> dict[str, int]:
    out = {s: 0 for s in SEVERITIES}
    for f in findings:
        out[f.severity] = out.get(f.severity, 0) + 1
    return out


def _service_key(service: str) -> str:
    ns, _, rest = service.partition("/")
    return f"{ns}/{rest.split(':', 1)[0]}"


def _anchor(key: str) -> str:
    return escape(key.replace("/", "--"))


def _text(value) -> str:
    return "-" if value is None or value == "" else str(value)
