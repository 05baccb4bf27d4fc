"""Chain graphs as SVG, drawn here (no Graphviz): columns from `model/graph_layout.py`, boxes sized to their text,
one curve per rule with its share, conditions and counters. `graph -o svg` writes a standalone file; the report
(`render/report_html.py`) embeds the same drawing and gives the style and arrowheads once for all of them.

Every name in a picture comes from the input (a customer's dump): it is escaped, never markup.
"""

from __future__ import annotations

from xml.sax.saxutils import escape, quoteattr

import networkx as nx

from svcdoctor.model.graph_layout import layered_layout
from svcdoctor.render.graph_format import _edge_label

CHAR_W = 7.3  # width of one character of 12px monospace
LABEL_CHAR_W = 6.2  # of 10.5px monospace, the edge labels
BOX_H, BOX2_H = 24, 38  # one line, two lines (an endpoint and its pod)
ROW_GAP, COL_GAP, MARGIN, TITLE_H = 22, 150, 12, 30

# what the boxes look like, by node kind (model/graph.py); `.sdg` keeps it off the rest of a page
STYLE = """
.sdg{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12px}
.sdg rect{fill:#fff;stroke:#555;stroke-width:1}
.sdg .svc rect{fill:#dbeafe}.sdg .svl rect{fill:#e0f7fa}.sdg .ext rect{fill:#fef3c7}
.sdg .fw rect{fill:#fed7aa}.sdg .xlb rect{fill:#fce7f3}.sdg .sep rect{fill:#dcfce7}
.sdg .builtin rect,.sdg .filter rect{fill:#eee}.sdg .dnat rect{fill:#bbf7d0;stroke:#15803d}
.sdg .drop rect,.sdg .reject rect{fill:#fee2e2;stroke:#b91c1c;stroke-width:2}
.sdg .drop text,.sdg .reject text{fill:#991b1b;font-weight:bold}
.sdg .map rect,.sdg .set rect{fill:#f3e8ff;stroke:#7e22ce}
.sdg .missing rect{stroke-dasharray:4 3}
.sdg .sub{font-size:10.5px;fill:#444}
.sdg path{fill:none;stroke:#64748b;stroke-width:1.2;marker-end:url(#sdg-arrow)}
.sdg path.hot{stroke:#0f172a;stroke-width:2}.sdg path.ends{stroke:#b91c1c;stroke-width:2}
.sdg .lbl{font-size:10.5px;fill:#1e293b;paint-order:stroke;stroke:#fff;stroke-width:3px}
.sdg .title{font-size:14px;font-weight:bold}
"""
DEFS = ('<defs><marker id="sdg-arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" '
        'orient="auto-start-reverse"><path d="M0 0L10 5L0 10z" style="fill:#475569;stroke:none;marker-end:none"/>'
        '</marker></defs>')


def to_svg(g: nx.MultiDiGraph, title: str, standalone: bool = True) -> str:
    """The picture of one chain graph. ``standalone``: an SVG file of its own (style and arrowhead inside);
    else an element for a page that holds `STYLE` and `DEFS` once."""
    boxes = _boxes(g)
    width = max([x + w for x, _, w, _ in boxes.values()], default=200) + MARGIN
    height = max([y + h for _, y, _, h in boxes.values()], default=TITLE_H) + MARGIN
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="sdg" width="{width:.0f}" height="{height:.0f}" '
           f'viewBox="0 0 {width:.0f} {height:.0f}" role="img">', f"<title>{escape(title)}</title>"]
    if standalone:
        out += [f"<style>{STYLE}</style>", DEFS, '<rect width="100%" height="100%" style="fill:#fff;stroke:none"/>']
    out.append(f'<text class="title" x="{MARGIN}" y="{MARGIN + 12}">{escape(title)}</text>')
    out += _edges(g, boxes)
    out += [_box(name, data, boxes[name]) for name, data in g.nodes(data=True)]
    out.append("</svg>")
    return "\n".join(out) + "\n"


def to_svg_document(pictures: list[tuple[nx.MultiDiGraph, str]]) -> str:
    """One SVG file: one picture, or several (one per node) one under the other."""
    if len(pictures) == 1:
        return to_svg(*pictures[0])
    inner, y, width = [], 0, 0
    for g, title in pictures:
        svg = to_svg(g, title, standalone=False)
        w, h = _size(svg)
        inner.append(svg.replace("<svg ", f'<svg y="{y}" ', 1))
        y, width = y + h, max(width, w)
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{y}" viewBox="0 0 {width} {y}">\n'
            f'<style>{STYLE}</style>\n{DEFS}\n<rect width="100%" height="100%" style="fill:#fff;stroke:none"/>\n'
            + "".join(inner) + "</svg>\n")


def _size(svg: str) -> tuple[int, int]:
    head = svg[:svg.index(">")]
    return (int(head.split(' width="', 1)[1].split('"', 1)[0]), int(head.split(' height="', 1)[1].split('"', 1)[0]))


def _lines(name: str, data: dict) -> tuple[str, str | None]:
    """A box's text: the chain, or the verdict and what it applies to (the endpoint's pod and node)."""
    if data.get("kind") == "verdict":
        if name.startswith("DNAT ") and (data.get("pod") or data.get("node")):
            return name, f"{data.get('pod') or '?'} @ {data.get('node') or '?'}"
        verdict, _, where = name.partition(" (")
        if where:
            return verdict, where.rstrip(")")
    return name, None


def _boxes(g: nx.MultiDiGraph) -> dict[str, tuple[float, float, float, float]]:
    """name -> (x, y, width, height) of its box."""
    layout = layered_layout(g)
    out = {}
    x = MARGIN
    for column in layout.columns:
        texts = {name: _lines(name, g.nodes[name]) for name in column}
        w = max(max(len(a), len(b or "")) for a, b in texts.values()) * CHAR_W + 16
        y = MARGIN + TITLE_H
        for name in column:
            h = BOX2_H if texts[name][1] else BOX_H
            out[name] = (x, y, w, h)
            y += h + ROW_GAP
        x += w + COL_GAP
    return out


def _box(name: str, data: dict, box: tuple[float, float, float, float]) -> str:
    x, y, w, h = box
    first, second = _lines(name, data)
    kind = data.get("kind") or "chain"
    if kind == "verdict":
        kind = first.split(" ", 1)[0].lower()
    classes = kind + ("" if data.get("exists", True) else " missing")
    text = f'<text x="{x + 8:.0f}" y="{y + 16:.0f}">{escape(first)}</text>'
    if second:
        text += f'<text class="sub" x="{x + 8:.0f}" y="{y + 31:.0f}">{escape(second)}</text>'
    return (f'<g class={quoteattr(classes)}><title>{escape(name)}</title>'
            f'<rect x="{x:.0f}" y="{y:.0f}" width="{w:.0f}" height="{h}" rx="5"/>{text}</g>')


def _edges(g: nx.MultiDiGraph, boxes: dict) -> list[str]:
    out = []
    seen: dict[tuple[str, str], int] = {}
    for a, b, data in g.edges(data=True):
        k = seen[(a, b)] = seen.get((a, b), -1) + 1  # the k-th rule between the same two chains
        ax, ay, aw, ah = boxes[a]
        bx, by, bw, bh = boxes[b]
        x1, y1 = ax + aw, ay + ah / 2 + 4 * k
        if bx > ax:
            x2, y2 = bx, by + bh / 2 + 4 * k
            bend = min(max((x2 - x1) / 2, 30), 120)
            # a jump over a column would run behind its boxes: it sags below them, more for longer jumps
            sag = 0 if (x2 - x1) <= COL_GAP + 1 else BOX_H + ROW_GAP * 0.6 + 8 * k
            d = (f"M{x1:.0f} {y1:.0f}C{x1 + bend:.0f} {y1 + sag * 1.33:.0f} {x2 - bend:.0f} {y2 + sag * 1.33:.0f} "
                 f"{x2:.0f} {y2:.0f}")
            lx, ly = (x1 + x2) / 2, (y1 + y2) / 2 + sag - 3 + 12 * k
        else:  # a jump back (a loop, or into the same column): under the boxes
            x1, y1, x2, y2 = ax + aw / 2, ay + ah, bx + bw / 2, by + bh
            low = max(y1, y2) + 26 + 8 * k
            d = f"M{x1:.0f} {y1:.0f}C{x1:.0f} {low:.0f} {x2:.0f} {low:.0f} {x2:.0f} {y2:.0f}"
            lx, ly = (x1 + x2) / 2, low - 2
        cls = _edge_class(g, b, data)
        out.append(f'<g><title>{escape(data.get("rule") or "")}</title><path{cls} d="{d}"/>')
        label = _label(data)
        if label:
            out.append(f'<text class="lbl" x="{lx:.0f}" y="{ly:.0f}" text-anchor="middle">{escape(label)}</text>')
        out.append("</g>")
    return out


def _edge_class(g: nx.MultiDiGraph, target: str, data: dict) -> str:
    if g.nodes[target].get("kind") == "verdict" and target.startswith(("DROP", "REJECT")):
        return ' class="ends"'
    if data.get("packets"):
        return ' class="hot"'
    return ""


def _label(data: dict) -> str:
    """Shares, the conditions written on the rule (not "some sources"), counters."""
    label = _edge_label(data)
    if data.get("when"):
        label = label.replace("some sources", data["when"])
    return label
