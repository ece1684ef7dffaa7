#!/usr/bin/env python3
"""Charts of bench/run's comparison: reads the raw figures that
`millrace-bench compare` wrote (results.json) and the profile's folded
stacks, writes PNGs next to the report.

    python3 bench/charts.py bench/results.json bench/profile.folded bench/charts
"""
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

SYSTEMS = [
    ("millrace", "Millrace", "#1f77b4"),
    ("kafka-streams", "Kafka Streams", "#ff7f0e"),
    ("pass-java", "pass-through, Java client", "#9e9e9e"),
    ("pass-rdkafka", "pass-through, librdkafka", "#5e5e5e"),
]
GUARANTEES = [("exactly-once", "exactly-once"), ("at-least-once", "at-least-once")]


def grouped_bars(ax, runs, value, ylabel, fmt):
    """Bars per guarantee (groups) and system (colours)."""
    width = 0.8 / len(SYSTEMS)
    for i, (key, label, colour) in enumerate(SYSTEMS):
        xs, ys = [], []
        for g, (gkey, _) in enumerate(GUARANTEES):
            for r in runs:
                if r["system"] == key and r["guarantee"] == gkey:
                    xs.append(g + (i - (len(SYSTEMS) - 1) / 2) * width)
                    ys.append(value(r))
        if xs:
            bars = ax.bar(xs, ys, width, label=label, color=colour)
            ax.bar_label(bars, labels=[fmt(y) for y in ys], fontsize=8, padding=2)
    ax.set_xticks(range(len(GUARANTEES)), [label for _, label in GUARANTEES])
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    ax.margins(y=0.15)


def throughput(results, out):
    runs = results["drains"] + results["passthrough"]
    if not runs:
        return
    fig, ax = plt.subplots(figsize=(9, 5))
    grouped_bars(ax, runs, lambda r: r["records_per_second"], "records/s", lambda y: f"{y:,.0f}")
    ax.set_title(f"Backlog drain of {results['records']:,} records (higher is better)")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "throughput.png"), dpi=110)
    plt.close(fig)


def cpu(results, out):
    runs = results["drains"] + results["passthrough"]
    if not runs:
        return
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 5))
    grouped_bars(a, runs, lambda r: r["cpu_seconds_per_million"], "CPU seconds per million records",
                 lambda y: f"{y:.1f}")
    a.set_title("CPU per record (lower is better)")
    grouped_bars(b, runs, lambda r: r["peak_rss_mib"], "MiB", lambda y: f"{y:.0f}")
    b.set_title("Peak RSS during the drain (lower is better)")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "cpu.png"), dpi=110)
    plt.close(fig)


def latency(results, out):
    runs = results["latency"]
    if not runs:
        return
    fig, ax = plt.subplots(figsize=(9, 5))
    colours = {key: colour for key, _, colour in SYSTEMS}
    labels = {key: label for key, label, _ in SYSTEMS}
    for r in runs:
        qs = list(range(len(r["percentiles"])))
        ax.plot(qs, r["percentiles"], label=(
            f"{labels[r['system']]}: p50 {r['p50_ms']:.0f} ms, p99 {r['p99_ms']:.0f} ms, "
            f"max {r['max_ms']:.0f} ms"), color=colours[r["system"]])
    ax.set_yscale("log")
    ax.set_xlabel("percentile of results")
    ax.set_ylabel("closing reading produced → result visible (ms, log scale)")
    rate = runs[0]["target_rate"]
    ax.set_title(f"Latency at {rate:,} records/s, exactly-once (lower is better)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "latency.png"), dpi=110)
    plt.close(fig)


def recovery(results, out):
    runs = results["recovery"]
    if not runs:
        return
    fig, ax = plt.subplots(figsize=(8, 5))
    states = ["kept", "deleted"]
    width = 0.35
    for i, (key, label, colour) in enumerate(SYSTEMS[:2]):
        xs, ys = [], []
        for s, state in enumerate(states):
            for r in runs:
                if r["system"] == key and r["local_state"] == state:
                    xs.append(s + (i - 0.5) * width)
                    ys.append(r["seconds"])
        if xs:
            bars = ax.bar(xs, ys, width, label=label, color=colour)
            ax.bar_label(bars, labels=[f"{y:.1f} s" for y in ys], fontsize=8, padding=2)
    ax.set_xticks(range(len(states)), [f"local state {s}" for s in states])
    ax.set_ylabel("restart → first committed output (s)")
    ax.set_title(f"Recovery after SIGKILL, {results['table_mib']:.0f} MiB table (lower is better)")
    ax.legend(fontsize=8)
    ax.margins(y=0.15)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "recovery.png"), dpi=110)
    plt.close(fig)


def flamegraph(folded, out, min_share=0.005):
    """An icicle-style flame graph (root at the bottom) from folded stacks."""
    if not os.path.exists(folded):
        return
    root = {"n": 0, "children": {}}
    with open(folded) as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not stack:
                continue
            n = int(count)
            node = root
            node["n"] += n
            for frame in stack.split(";"):
                node = node["children"].setdefault(frame, {"n": 0, "children": {}})
                node["n"] += n
    total = root["n"]
    if total == 0:
        return
    boxes = []

    def walk(node, x, depth):
        for name, child in sorted(node["children"].items()):
            w = child["n"] / total
            if w >= min_share:
                boxes.append((x, depth, w, name))
                walk(child, x, depth + 1)
            x += w

    walk(root, 0.0, 0)
    depth = max((d for _, d, _, _ in boxes), default=0) + 1
    fig, ax = plt.subplots(figsize=(16, max(4, depth * 0.28)))
    palette = ["#f4a261", "#e76f51", "#e9c46a", "#f6bd60", "#f28482", "#f5cac3"]
    for x, d, w, name in boxes:
        colour = "#8ecae6" if "[kernel]" in name else palette[sum(name.encode()) % len(palette)]
        ax.add_patch(plt.Rectangle((x, d), w, 0.95, facecolor=colour, edgecolor="white", linewidth=0.3))
        chars = int(w * 16 * 100 / 6.5)
        if chars > 3:
            label = name if len(name) <= chars else name[: chars - 1] + "…"
            ax.text(x + 0.002, d + 0.45, label, fontsize=6.5, va="center", clip_on=True)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, depth)
    ax.set_yticks([])
    ax.set_xlabel(f"share of {total} samples (frames under {min_share:.1%} hidden)")
    ax.set_title("Millrace during an exactly-once drain: perf samples by call stack (root at the bottom)")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "flamegraph.png"), dpi=110)
    plt.close(fig)


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    results_path, folded, out = sys.argv[1:]
    with open(results_path) as f:
        results = json.load(f)
    os.makedirs(out, exist_ok=True)
    throughput(results, out)
    cpu(results, out)
    latency(results, out)
    recovery(results, out)
    flamegraph(folded, out)
    print(f"charts written to {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
