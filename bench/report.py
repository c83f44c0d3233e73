"""Markdown tables (with ratios to slirp4netns) and PNG charts from results.json."""

from __future__ import annotations

from pathlib import Path
from typing import Any

BASELINE = "slirp4netns"
HIGHER_IS_BETTER = ("Gbit/s", "conn/s", "queries/s")


def _index(doc: dict[str, Any]) -> dict[tuple[str, int, str], float | None]:
    return {(r["system"], r["mtu"], r["metric"]): r["value"] for r in doc["results"]}


def markdown(doc: dict[str, Any]) -> str:
    idx = _index(doc)
    systems = list(dict.fromkeys(r["system"] for r in doc["results"]))
    mtus = list(dict.fromkeys(r["mtu"] for r in doc["results"]))
    m = doc["machine"]
    lines = [
        f"Machine: {m['cpu']}, {m['cores']} cores, kernel {m['kernel']}, "
        f"Python {m['python']}, {m['date']}.",
        "",
    ]
    for mtu in mtus:
        lines.append(f"**MTU {mtu}**")
        lines.append("")
        lines.append("| metric | " + " | ".join(systems) + " |")
        lines.append("|---|" + "---|" * len(systems))
        # this MTU's rows only (the UDP rows name their datagram size, which differs)
        metrics = dict.fromkeys((r["metric"], r["unit"]) for r in doc["results"] if r["mtu"] == mtu)
        for metric, unit in metrics:
            cells = []
            base = idx.get((BASELINE, mtu, metric))
            for s in systems:
                v = idx.get((s, mtu, metric))
                if v is None:
                    cells.append("n/a")
                    continue
                cell = f"{v:,.2f}" if v < 100 else f"{v:,.0f}"
                if base and s != BASELINE and v:
                    ratio = v / base if unit in HIGHER_IS_BETTER else base / v
                    cell += f" ({ratio:.1f}x)"
                cells.append(cell)
            lines.append(f"| {metric} ({unit}) | " + " | ".join(cells) + " |")
        lines.append("")
    lines.append(
        "Ratios are against slirp4netns, >1 is better (throughput, connection rate and "
        "DNS queries/s: ours / theirs; latency, CPU, memory, ready time, loss, "
        "timeouts: theirs / ours). UDP: iperf3 -u -b 0, the receiver's rate and loss."
    )
    return "\n".join(lines) + "\n"


def charts(doc: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    idx = _index(doc)
    systems = list(dict.fromkeys(r["system"] for r in doc["results"]))
    mtus = list(dict.fromkeys(r["mtu"] for r in doc["results"]))
    for proto, title, name in (("tcp ", "TCP", "throughput.png"), ("udp ", "UDP", "udp.png")):
        fig, axes = plt.subplots(1, len(mtus), figsize=(7 * len(mtus), 4.5), squeeze=False)
        width = 0.8 / max(len(systems), 1)
        for ax, mtu in zip(axes[0], mtus, strict=True):
            rows = [
                m
                for m in dict.fromkeys(r["metric"] for r in doc["results"] if r["mtu"] == mtu)
                if m.startswith(proto)
            ]
            for i, s in enumerate(systems):
                vals = [idx.get((s, mtu, m)) or 0 for m in rows]
                xs = [j + i * width for j in range(len(rows))]
                ax.bar(xs, vals, width, label=s)
            ax.set_xticks([j + width * (len(systems) - 1) / 2 for j in range(len(rows))])
            ax.set_xticklabels(
                [m.replace(proto, "").replace(" ", "\n", 1) for m in rows], fontsize=8
            )
            ax.set_ylabel("Gbit/s" + (" received" if proto == "udp " else ""))
            ax.set_title(f"{title} throughput (iperf3; GSO: probe.py gso), MTU {mtu}")
            ax.legend(fontsize=8)
            ax.grid(axis="y", alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4))
    labels, p50, p99 = [], [], []
    for mtu in mtus:
        for s in systems:
            labels.append(f"{s}\n{mtu}")
            p50.append(idx.get((s, mtu, "latency p50")) or 0)
            p99.append(idx.get((s, mtu, "latency p99")) or 0)
    positions = range(len(labels))
    ax.bar([x - 0.2 for x in positions], p50, 0.4, label="p50")
    ax.bar([x + 0.2 for x in positions], p99, 0.4, label="p99")
    ax.set_xticks(list(positions))
    ax.set_xticklabels(labels, fontsize=7)
    ax.set_ylabel("microseconds")
    ax.set_title("TCP request/response latency (64 B)")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "latency.png", dpi=110)
    plt.close(fig)
