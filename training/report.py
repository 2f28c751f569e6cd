"""Routing report: how specialised the experts of a checkpoint are, on held-out synthetic scenes.

    python -m training.report runs/tiny/checkpoint.pt --out runs/tiny/report

Writes ``routing.png`` (one heatmap per MoE layer: share of each modality's tokens per expert)
and ``routing.json`` (``specialization[layer][modality]`` = share of that modality's tokens that
go to its two most used experts; 1/E*2 would be a router that ignores modality).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from training.checkpoint import load_model  # noqa: E402
from training.routing import RouteCounts, count_synthetic_routes  # noqa: E402
from training.seeds import HELDOUT  # noqa: E402

__all__ = ["main", "plot_routing", "routing_report"]


def routing_report(checkpoint: str | Path, scenes: int = 128, seed: int = 0, batch: int = 32) -> tuple[dict, RouteCounts]:
    """Count routing on ``scenes`` held-out synthetic scenes; returns the JSON report and the counts."""
    model, payload = load_model(checkpoint)
    cfg = model.cfg
    counts = count_synthetic_routes(model, HELDOUT, scenes, seed, batch)
    spec = counts.specialization(top=2)
    values = [v for layer in spec.values() for v in layer.values()]
    shares = counts.shares()
    report = {
        "checkpoint": str(checkpoint),
        "router": cfg.router,
        "step": payload.get("step"),
        "data": "synthetic held-out scenes (not real imagery)",
        "scenes": scenes,
        "seed": seed,
        "specialization": {str(layer): v for layer, v in spec.items()},
        "mean_specialization": float(np.mean(values)),
        "min_specialization": float(np.min(values)),
        "experts_used": {str(layer): int((counts.counts[i].sum(axis=0) > 0).sum()) for i, layer in enumerate(counts.layers)},
        "shares": {str(layer): {m: shares[i, j].round(4).tolist() for j, m in enumerate(counts.modalities)}
                   for i, layer in enumerate(counts.layers)},
    }
    return report, counts


def plot_routing(counts: RouteCounts, router: str, path: str | Path) -> Path:
    """One heatmap per MoE layer: rows are modalities, columns experts, colour the share of tokens."""
    shares = counts.shares()
    n = len(counts.layers)
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n + 1, 3.2), squeeze=False, constrained_layout=True)
    for i, ax in enumerate(axes[0]):
        image = ax.imshow(shares[i], vmin=0, vmax=1, cmap="viridis", aspect="auto")
        ax.set_title(f"block {counts.layers[i]}")
        ax.set_xlabel("expert")
        ax.set_xticks(range(shares.shape[2]))
        ax.set_yticks(range(len(counts.modalities)), counts.modalities if i == 0 else [""] * len(counts.modalities))
    fig.colorbar(image, ax=axes[0].tolist(), label="share of the modality's tokens")
    fig.suptitle(f"MAPEX routing ({router} router, synthetic held-out scenes)")
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.report", description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--out", type=Path, required=True, help="folder for routing.png and routing.json")
    p.add_argument("--scenes", type=int, default=128, help="held-out synthetic scenes to route")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    report, counts = routing_report(a.checkpoint, a.scenes, a.seed)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "routing.json").write_text(json.dumps(report, indent=2))
    plot_routing(counts, report["router"], a.out / "routing.png")
    print(f"specialization mean {report['mean_specialization']:.3f}, min {report['min_specialization']:.3f} -> {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
