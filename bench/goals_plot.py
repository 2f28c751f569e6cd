"""Every benchmark goal on one chart: how far each figure is from its goal, each round as a dot.

    python -m bench.goals_plot                     # bench/results/*.json -> bench/results/goals.png

Why: the goals are ratios with bounds in both directions (a time at most 1.15x, a throughput at
least 0.5x), spread over five reports. Scored as figure / goal for "at least" and goal / figure for
"at most", every goal reads the same way: right of the line at 1 is met, and the dots show how far
one run's rounds moved on the machine that measured them.
"""

from __future__ import annotations

import argparse
import json
import textwrap
from dataclasses import dataclass
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class GoalFigure:
    """One goal as a report wrote it: its figure, its bound and direction, and its rounds if it took several."""

    benchmark: str
    name: str
    value: float
    bound: float
    at_most: bool
    met: bool
    rounds: tuple[float, ...] = ()

    def score(self, value: float | None = None) -> float:
        """``value`` (default: the figure) against the goal, oriented so that >= 1 is met."""
        value = self.value if value is None else value
        return self.bound / value if self.at_most else value / self.bound

    @property
    def label(self) -> str:
        op = "<=" if self.at_most else ">="
        return f"{self.value:.3g} (goal {op} {self.bound:g})"


def load_goals(results: Path) -> list[GoalFigure]:
    """The goals of every report in ``results`` (``<benchmark>.json``), in file-name order; reports without any skipped."""
    goals = []
    for path in sorted(results.glob("*.json")):
        report = json.loads(path.read_text())
        for g in report.get("goals", []):
            goals.append(GoalFigure(report.get("benchmark", path.stem), g["name"], g["value"], g["bound"],
                                    g["op"] == "<=", g["met"], tuple(g.get("rounds", ()))))
    return goals


def plot(goals: list[GoalFigure], out: Path) -> None:
    """A horizontal bar a goal (green met, red not), the goal line at 1, the rounds as dots; written to ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not goals:
        raise ValueError("no goals to plot: run the benchmarks first (make bench)")
    fig, ax = plt.subplots(figsize=(12, 0.62 * len(goals) + 1.3))
    y = list(range(len(goals)))[::-1]  # the first report's first goal on top
    scores = [g.score() for g in goals]
    ax.barh(y, scores, color=["#2e7d32" if g.met else "#c62828" for g in goals], height=0.6)
    labelled = False
    for yi, g, s in zip(y, goals, scores, strict=True):
        if g.rounds:
            ax.plot([g.score(r) for r in g.rounds], [yi] * len(g.rounds), "o", color="black", markersize=3.5,
                    label=None if labelled else "one round (the bar: the median round)")
            labelled = True
        ax.text(max([s, *(g.score(r) for r in g.rounds)]) * 1.06, yi, g.label, va="center", fontsize=8)
    ax.axvline(1.0, color="black", linewidth=1)
    ax.set_xscale("log")
    low = min([*scores, *(g.score(r) for g in goals for r in g.rounds)])
    high = max([*scores, *(g.score(r) for g in goals for r in g.rounds)])
    ax.set_xlim(min(low, 1.0) / 1.5, max(high, 1.0) * 3)
    ax.set_yticks(y, ["\n".join(textwrap.wrap(f"{g.benchmark}: {g.name}", 48)) for g in goals], fontsize=7.5)
    ax.set_xlabel("figure against its goal (at least: figure / goal; at most: goal / figure); >= 1 is met")
    if labelled:
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", type=Path, default=RESULTS, help="the reports' folder (default: bench/results)")
    p.add_argument("--out", type=Path, help="the chart (default: goals.png in the reports' folder)")
    a = p.parse_args(argv)
    out = a.out or a.results / "goals.png"
    goals = load_goals(a.results)
    plot(goals, out)
    print(f"wrote {out}: {sum(g.met for g in goals)} of {len(goals)} goals met")


if __name__ == "__main__":
    main()
