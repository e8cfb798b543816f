"""What `switchyard bench` writes: the table, the JSON document (schema v1) and the HTML report."""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Sequence
from typing import Any

SCHEMA = "switchyard.bench/v1"
# Ratios of --compare: the second target's value over the first's.
RATIO_METRICS: dict[str, tuple[str, str]] = {
    "requests_per_second": ("requests_per_second", ""),
    "output_tokens_per_second": ("output_tokens_per_second", ""),
    "latency_p50": ("latency_ms", "p50"),
    "latency_p90": ("latency_ms", "p90"),
    "latency_p95": ("latency_ms", "p95"),
    "latency_p99": ("latency_ms", "p99"),
    "ttft_p50": ("ttft_ms", "p50"),
    "ttft_p95": ("ttft_ms", "p95"),
    "ttft_p99": ("ttft_ms", "p99"),
    "inter_token_latency_p50": ("inter_token_latency_ms", "p50"),
}
COLORS = ("#1f77b4", "#d62728")


def _metric(summary: dict[str, Any], key: str, field: str) -> float | None:
    value = summary[key][field] if field else summary[key]
    return None if value is None else float(value)


def ratios(baseline: dict[str, Any], candidate: dict[str, Any]) -> dict[str, float | None]:
    """candidate / baseline for each ratio metric (None where either is missing or zero)."""
    out: dict[str, float | None] = {}
    for name, (key, field) in RATIO_METRICS.items():
        a, b = _metric(baseline, key, field), _metric(candidate, key, field)
        out[name] = None if a is None or b is None or a == 0 else b / a
    return out


def document(
    config: dict[str, Any],
    results: Sequence[dict[str, Any]],
    client: dict[str, Any],
    started_at: str,
    interrupted: bool = False,
) -> dict[str, Any]:
    """The JSON document (see README "Benchmarking" for every key)."""
    comparison = None
    if len(results) == 2:
        comparison = {
            "baseline": results[0]["target"],
            "candidate": results[1]["target"],
            "ratios": ratios(results[0], results[1]),
        }
    return {
        "schema": SCHEMA,
        "started_at": started_at,
        "interrupted": interrupted,
        "config": config,
        "client": client,
        "results": list(results),
        "comparison": comparison,
    }


def _ms(value: Any) -> str:
    return "-" if value is None else f"{value:.2f}"


def _num(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}" if value >= 10 else f"{value:.3f}"


Cell = Callable[[dict[str, Any]], str]
Row = tuple[str, Cell, str | None]


def _error_cell(code: str) -> Cell:
    return lambda s: str(s["errors_by_code"].get(code, 0))


def _stat_cell(key: str, field: str) -> Cell:
    return lambda s: _ms(s[key][field])


def _rows(results: Sequence[dict[str, Any]]) -> list[Row]:
    rows: list[Row] = [
        ("requests", lambda s: str(s["requests"]["total"]), None),
        ("ok", lambda s: str(s["requests"]["ok"]), None),
        ("errors", lambda s: str(s["requests"]["errors"]), None),
    ]
    codes = sorted({code for s in results for code in s["errors_by_code"]})
    for code in codes:
        rows.append((f"  {code}", _error_cell(code), None))
    rows += [
        ("requests/s", lambda s: _num(s["requests_per_second"]), "requests_per_second"),
        (
            "output tokens/s",
            lambda s: _num(s["output_tokens_per_second"]),
            "output_tokens_per_second",
        ),
    ]
    for q in ("p50", "p90", "p95", "p99"):
        rows.append((f"latency {q} ms", _stat_cell("latency_ms", q), f"latency_{q}"))
    for q in ("p50", "p95", "p99"):
        rows.append((f"TTFT {q} ms", _stat_cell("ttft_ms", q), f"ttft_{q}"))
    for q in ("p50", "p95", "p99"):
        ratio = "inter_token_latency_p50" if q == "p50" else None
        rows.append((f"inter-token {q} ms", _stat_cell("inter_token_latency_ms", q), ratio))
    return rows


def table(doc: dict[str, Any]) -> str:
    """The summary table printed after a run (a ratio column with two targets)."""
    results = doc["results"]
    ratio_values = doc["comparison"]["ratios"] if doc["comparison"] else None
    header = ["", *(s["target"] for s in results)]
    if ratio_values is not None:
        header.append("ratio #2/#1")
    lines = [header]
    for label, cell, ratio_key in _rows(results):
        line = [label, *(cell(s) for s in results)]
        if ratio_values is not None:
            value = ratio_values.get(ratio_key) if ratio_key else None
            line.append("" if value is None else f"{value:.3f}x")
        lines.append(line)
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = []
    for line in lines:
        cells = [line[0].ljust(widths[0])]
        cells += [value.rjust(width) for value, width in zip(line[1:], widths[1:], strict=True)]
        out.append("  ".join(cells).rstrip())
    config = doc["config"]
    load = (
        f"closed loop, concurrency {config['concurrency']}"
        if config["mode"] == "closed"
        else f"open loop, {config['rate']:g} req/s ({config['arrival']})"
    )
    bound = (f"{config['requests']} requests" if config["requests"] is not None else "") + (
        f" within {config['duration_s']:g} s" if config["duration_s"] is not None else ""
    )
    title = (
        f"model {config['model']}, {load}, {bound.strip()}, prompts {config['prompts']}, "
        f"{'streaming' if config['stream'] else 'unary'}"
    )
    notes = []
    if not config["stream"]:
        notes.append("TTFT and inter-token latency need --stream.")
    if doc["interrupted"]:
        notes.append("Interrupted: these are the requests sent before the stop.")
    return "\n".join([title, "", *out, *(f"\n{n}" for n in notes)]) + "\n"


# --- HTML -----------------------------------------------------------------

_W, _H = 720, 300
_BINS = 30
_LEFT, _RIGHT, _TOP, _BOTTOM = 60, 20, 44, 45


def _el(tag: str, content: str = "", **attrs: object) -> str:
    """An SVG element; ``class_`` is ``class``, ``text_anchor`` is ``text-anchor``."""
    parts = []
    for key, value in attrs.items():
        shown = f"{value:.1f}" if isinstance(value, float) else str(value)
        parts.append(f'{key.rstrip("_").replace("_", "-")}="{html.escape(shown)}"')
    opening = f"<{tag} {' '.join(parts)}"
    return f"{opening}>{content}</{tag}>" if content else f"{opening}/>"


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    if high <= low:
        return [low]
    raw = (high - low) / count
    step = 10 ** math.floor(math.log10(raw))
    for factor in (1, 2, 5, 10):
        if raw <= factor * step:
            step *= factor
            break
    first = math.ceil(low / step) * step
    return [first + i * step for i in range(int((high - first) / step) + 1)]


def _scale(domain: tuple[float, float], span: tuple[float, float]) -> Callable[[float], float]:
    (d0, d1), (r0, r1) = domain, span
    width = (d1 - d0) or 1.0
    return lambda v: r0 + (v - d0) / width * (r1 - r0)


def _frame(
    chart_id: str,
    title: str,
    labels: tuple[str, str],
    ranges: tuple[tuple[float, float], tuple[float, float]],
    body: list[str],
    legend: Sequence[str],
) -> str:
    """Axes, ticks, labels and a legend around ``body`` (the marks)."""
    x_range, y_range = ranges
    bottom, right = _H - _BOTTOM, _W - _RIGHT
    sx, sy = _scale(x_range, (_LEFT, right)), _scale(y_range, (bottom, _TOP))
    parts = [
        _el("text", html.escape(title), x=_W / 2, y=16, text_anchor="middle", font_size=13),
        _el("line", x1=_LEFT, y1=bottom, x2=right, y2=bottom, stroke="#333"),
        _el("line", x1=_LEFT, y1=_TOP, x2=_LEFT, y2=bottom, stroke="#333"),
    ]
    for tick in _ticks(*x_range):
        x = sx(tick)
        parts.append(_el("line", x1=x, y1=bottom, x2=x, y2=bottom + 4, stroke="#333"))
        parts.append(_el("text", f"{tick:g}", x=x, y=bottom + 16, text_anchor="middle"))
    for tick in _ticks(*y_range):
        y = sy(tick)
        parts.append(_el("line", x1=_LEFT - 4, y1=y, x2=right, y2=y, stroke="#ddd"))
        parts.append(_el("text", f"{tick:g}", x=_LEFT - 6, y=y + 4, text_anchor="end"))
    middle = (_TOP + bottom) / 2
    parts.append(_el("text", html.escape(labels[0]), x=(_LEFT + right) / 2, y=_H - 8))
    parts.append(
        _el("text", html.escape(labels[1]), x=14, y=middle, transform=f"rotate(-90 14 {middle})")
    )
    for i, label in enumerate(legend):  # one row above the plot
        x = _LEFT + 240 * i
        parts.append(_el("rect", x=x, y=24, width=10, height=10, fill=COLORS[i % 2]))
        parts.append(_el("text", html.escape(label), x=x + 15, y=33))
    svg_attrs = {
        "id": chart_id,
        "xmlns": "http://www.w3.org/2000/svg",
        "width": _W,
        "height": _H,
        "viewBox": f"0 0 {_W} {_H}",
        "font-family": "sans-serif",
        "font-size": 11,
    }
    opening = " ".join(f'{k}="{v}"' for k, v in svg_attrs.items())
    return "\n".join([f"<svg {opening}>", *parts, *body, "</svg>"])


def histogram_svg(chart_id: str, title: str, series: Sequence[tuple[str, Sequence[float]]]) -> str:
    """Bars: how many requests fell in each latency bin, one colour per target."""
    values = [v for _, vs in series for v in vs]
    if not values:
        return f'<p id="{chart_id}">{html.escape(title)}: no successful requests.</p>'
    low, high = min(values), max(values)
    if high == low:
        low, high = low * 0.9, high * 1.1 + 1e-9
    step = (high - low) / _BINS
    counts = []
    for _, vs in series:
        per_bin = [0] * _BINS
        for v in vs:
            per_bin[min(int((v - low) / step), _BINS - 1)] += 1
        counts.append(per_bin)
    top = max(max(c) for c in counts)
    sx = _scale((low, high), (_LEFT, _W - _RIGHT))
    sy = _scale((0, top), (_H - _BOTTOM, _TOP))
    body = []
    width = (sx(low + step) - sx(low)) / len(series)
    for s, per_bin in enumerate(counts):
        for b, count in enumerate(per_bin):
            if count:
                edge = low + b * step
                tip = _el("title", f"{edge:.1f}-{edge + step:.1f} ms: {count}")
                body.append(
                    _el(
                        "rect", tip, class_="bar", x=sx(edge) + s * width, y=sy(count),
                        width=max(width - 1, 1.0), height=sy(0) - sy(count), fill=COLORS[s % 2],
                    )
                )  # fmt: skip
    ranges = ((low, high), (0.0, float(top)))
    legend = [label for label, _ in series]
    return _frame(chart_id, title, ("milliseconds", "requests"), ranges, body, legend)


def scatter_svg(
    chart_id: str,
    title: str,
    y_label: str,
    series: Sequence[tuple[str, Sequence[tuple[float, float]]]],
) -> str:
    """One dot per request: when it was scheduled (x, seconds) against a time in ms (y)."""
    points = [p for _, ps in series for p in ps]
    if not points:
        return f'<p id="{chart_id}">{html.escape(title)}: no data.</p>'
    x_range = (0.0, max(max(x for x, _ in points), 1e-3))
    y_range = (0.0, max(max(y for _, y in points), 1e-3))
    sx, sy = _scale(x_range, (_LEFT, _W - _RIGHT)), _scale(y_range, (_H - _BOTTOM, _TOP))
    body = [
        _el("circle", class_="point", cx=sx(x), cy=sy(y), r=2, fill=COLORS[s % 2], opacity=0.6)
        for s, (_, ps) in enumerate(series)
        for x, y in ps
    ]
    legend = [label for label, _ in series]
    labels = ("seconds since start", y_label)
    return _frame(chart_id, title, labels, (x_range, y_range), body, legend)


def html_report(doc: dict[str, Any], table_text: str) -> str:
    """A self-contained page: the table, a latency histogram, TTFT and latency over time."""
    results = doc["results"]
    ok = [(r["target"], [s for s in r["samples"] if s["code"] == "OK"]) for r in results]
    latencies = [(target, [s["latency_ms"] for s in samples]) for target, samples in ok]
    charts = [histogram_svg("latency-histogram", "Latency of successful requests", latencies)]
    if doc["config"]["stream"]:
        ttfts = [
            (
                target,
                [(s["scheduled_s"], s["ttft_ms"]) for s in samples if s["ttft_ms"] is not None],
            )
            for target, samples in ok
        ]
        charts.append(
            scatter_svg("ttft-over-time", "Time to first token over time", "TTFT (ms)", ttfts)
        )
    over_time = [
        (target, [(s["scheduled_s"], s["latency_ms"]) for s in samples]) for target, samples in ok
    ]
    charts.append(scatter_svg("latency-over-time", "Latency over time", "latency (ms)", over_time))
    title = f"switchyard bench: {doc['config']['model']} ({doc['started_at']})"
    client = doc["client"]
    style = (
        "body{font-family:sans-serif;margin:2em;max-width:780px}"
        "pre{background:#f6f6f6;padding:1em;overflow-x:auto}svg{display:block;margin:1em 0}"
    )
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f"<title>{html.escape(title)}</title>",
            f"<style>{style}</style>",
            "</head><body>",
            f"<h1>{html.escape(title)}</h1>",
            f"<pre>{html.escape(table_text)}</pre>",
            *charts,
            f"<p>Schema {SCHEMA}; client event loop {html.escape(str(client['event_loop']))}, "
            f"client CPU {client['cpu_utilization'] * 100:.0f}% of one core.</p>",
            "</body></html>",
            "",
        ]
    )
