#!/usr/bin/env python3
"""Draws the chart's Grafana dashboard (charts/sluice/dashboards/sluice.json) from real data.

Every panel's own queries are evaluated by a Prometheus server over a time range (the
`query_range` API, as Grafana would send them, with the dashboard's variables filled in),
and drawn at the panel's place in the dashboard's 24-column grid: time series as lines,
stats as their last value, rows as headings. Grafana itself is not needed (it does not
build from the registries this machine reaches); the picture shows the same queries on
the same data. `hack/dashboard-picture.sh` runs a job, scrapes it and calls this.

    render-dashboard.py --prometheus http://127.0.0.1:9099 --start UNIX --end UNIX \
        --namespace sluice-demo --job page-views --output docs/images/dashboard.png
"""

import argparse
import datetime
import json
import math
import sys
import urllib.parse
import urllib.request

import matplotlib

matplotlib.use("Agg")
import matplotlib.dates as mdates  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402

BACKGROUND = "#111217"
PANEL = "#181b1f"
TEXT = "#ccccdc"
GRID = "#2c3235"
COLORS = ["#73bf69", "#f2cc0c", "#5794f2", "#ff9830", "#f2495c", "#b877d9", "#8ab8ff", "#ca95e5"]


def query_range(prometheus, expr, start, end, step):
    """The matrix Prometheus returns for `expr`, or an error text."""
    arguments = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": step})
    try:
        with urllib.request.urlopen(f"{prometheus}/api/v1/query_range?{arguments}", timeout=30) as answer:
            body = json.load(answer)
    except Exception as error:  # noqa: BLE001 (shown in the panel)
        return None, f"failed to query Prometheus: {error}"
    if body.get("status") != "success":
        return None, body.get("error", "query failed")
    return body["data"]["result"], None


def fill(expr, variables):
    for name, value in variables.items():
        expr = expr.replace(f"${name}", value).replace(f"${{{name}}}", value)
    return expr


def legend(series, template):
    labels = series.get("metric", {})
    if template:
        text = template
        for name, value in labels.items():
            text = text.replace("{{" + name + "}}", value).replace("{{ " + name + " }}", value)
        return text
    return ", ".join(f"{k}={v}" for k, v in sorted(labels.items()) if k != "__name__") or "value"


def unit_format(unit, value):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "No data"
    if unit in ("bytes", "decbytes"):
        for suffix in ["B", "KiB", "MiB", "GiB", "TiB"]:
            if abs(value) < 1024:
                return f"{value:.3g} {suffix}"
            value /= 1024
        return f"{value:.3g} PiB"
    if unit == "ms":
        return f"{value / 1000:.3g} s" if abs(value) >= 1000 else f"{value:.3g} ms"
    if unit == "s":
        return f"{value * 1000:.3g} ms" if abs(value) < 1 else f"{value:.3g} s"
    suffix = {"reqps": " req/s", "ops": " ops/s", "short": ""}.get(unit or "", "")
    if abs(value) >= 1e6:
        return f"{value / 1e6:.3g}M{suffix}"
    if abs(value) >= 1e3:
        return f"{value / 1e3:.3g}K{suffix}"
    return f"{value:.3g}{suffix}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dashboard", default="charts/sluice/dashboards/sluice.json")
    parser.add_argument("--prometheus", required=True)
    parser.add_argument("--start", type=float, required=True)
    parser.add_argument("--end", type=float, required=True)
    parser.add_argument("--namespace", default=".*")
    parser.add_argument("--job", default=".*")
    parser.add_argument("--rate-interval", default="20s", help="$__rate_interval (4 scrape intervals)")
    parser.add_argument("--output", required=True)
    arguments = parser.parse_args()

    dashboard = json.load(open(arguments.dashboard))
    step = max(5, int((arguments.end - arguments.start) / 240))
    variables = {
        "namespace": arguments.namespace,
        "job": arguments.job,
        "__rate_interval": arguments.rate_interval,
        "__range": f"{int(arguments.end - arguments.start)}s",
    }
    panels = dashboard["panels"]
    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
    unit_height = 0.36  # inches per grid row (Grafana: 30 px)
    width = 20.0
    figure = plt.figure(figsize=(width, rows * unit_height + 0.8), facecolor=BACKGROUND)
    top = 1 - 0.8 / (rows * unit_height + 0.8)
    start = datetime.datetime.fromtimestamp(arguments.start, datetime.timezone.utc)
    end = datetime.datetime.fromtimestamp(arguments.end, datetime.timezone.utc)
    figure.text(0.01, 1 - 0.25 / (rows * unit_height + 0.8),
                f"{dashboard.get('title', 'Sluice')}   namespace {arguments.namespace}, StreamJob {arguments.job}   "
                f"{start:%Y-%m-%d %H:%M:%S} to {end:%H:%M:%S} UTC",
                color=TEXT, fontsize=13, weight="bold", va="center")
    empty = []
    for panel in panels:
        grid = panel["gridPos"]
        left = grid["x"] / 24 + 0.004
        panel_width = grid["w"] / 24 - 0.008
        bottom = top - (grid["y"] + grid["h"]) / rows * top + 0.002
        height = grid["h"] / rows * top - 0.004
        if panel["type"] == "row":
            figure.text(left, bottom + height / 2, panel["title"], color=TEXT, fontsize=12, weight="bold", va="center")
            continue
        # Time series leave room on the left for their axis labels, inside the panel.
        inset = 0.0 if panel["type"] == "stat" else 0.035
        axes = figure.add_axes([left + inset, bottom, panel_width - inset, height * 0.86], facecolor=PANEL)
        figure.text(left + 0.003, bottom + height * 0.93, panel["title"], color=TEXT, fontsize=9, weight="bold", va="center")
        unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit")
        results = []
        errors = []
        # A panel's minimum interval (Grafana's `$__interval` is never below it) is also
        # its step, so the windows of `increase(...[$__interval])` do not overlap.
        panel_step = step
        if panel.get("interval", "").endswith("m"):
            panel_step = max(step, int(panel["interval"][:-1]) * 60)
        elif panel.get("interval", "").endswith("s"):
            panel_step = max(step, int(panel["interval"][:-1]))
        panel_variables = dict(variables, __interval=f"{panel_step}s")
        for target in panel.get("targets", []):
            data, error = query_range(arguments.prometheus, fill(target["expr"], panel_variables),
                                      arguments.start, arguments.end, panel_step)
            if error:
                errors.append(error)
                continue
            for series in data:
                points = [(datetime.datetime.fromtimestamp(float(t), datetime.timezone.utc), float(v)) for t, v in series["values"]]
                results.append((legend(series, target.get("legendFormat")), points))
        for spine in axes.spines.values():
            spine.set_color(GRID)
        axes.tick_params(colors=TEXT, labelsize=7)
        if panel["type"] == "stat":
            axes.set_xticks([])
            axes.set_yticks([])
            last = None
            for _, points in results:
                values = [v for _, v in points if not math.isnan(v)]
                if values:
                    last = (last or 0) + values[-1] if len(results) > 1 else values[-1]
            if last is None:
                empty.append(panel["title"])
            axes.text(0.5, 0.45, unit_format(unit, last), color=COLORS[0] if last is not None else TEXT,
                      fontsize=22, weight="bold", ha="center", va="center", transform=axes.transAxes)
            continue
        axes.grid(color=GRID, linewidth=0.5)
        axes.set_xlim(start, end)
        axes.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M"))
        axes.yaxis.set_major_formatter(
            matplotlib.ticker.FuncFormatter(lambda value, _, unit=unit: unit_format(unit, value)))
        if not results:
            empty.append(panel["title"])
            axes.text(0.5, 0.5, errors[0][:80] if errors else "No data", color=TEXT, fontsize=10,
                      ha="center", va="center", transform=axes.transAxes)
            continue
        # Every series is drawn; with more than a few, those at zero throughout stay out
        # of the legend (the drawing is small).
        quiet = len(results) > 5
        for index, (name, points) in enumerate(results):
            moved = any(v != 0 and not math.isnan(v) for _, v in points)
            axes.plot([t for t, _ in points], [v for _, v in points], color=COLORS[index % len(COLORS)],
                      linewidth=1.2, label=name[:60] if moved or not quiet else "_")
        values = [v for _, points in results for _, v in points if not math.isnan(v)]
        if values and min(values) >= 0:
            # As Grafana draws a non-negative series: from zero up (a line at zero shows).
            ceiling = max(values) * 1.1 if max(values) > 0 else 1
            axes.set_ylim(bottom=-0.02 * ceiling, top=ceiling)
        if any(not line.get_label().startswith("_") for line in axes.get_lines()):
            axes.legend(loc="upper left", fontsize=6.5, facecolor=PANEL, edgecolor=GRID, labelcolor=TEXT,
                        framealpha=0.8)
    figure.savefig(arguments.output, dpi=80, facecolor=BACKGROUND)
    print(f"wrote {arguments.output}; panels with no data: {', '.join(empty) if empty else 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
