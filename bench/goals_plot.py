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

from bench.harness import Goal

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class ReportGoal:
    """A goal as a report wrote it, with the benchmark it came from."""

    benchmark: str
    goal: Goal

    @property
    def label(self) -> str:
        return f"{self.goal.value:.3g} (goal {'<=' if self.goal.at_most else '>='} {self.goal.bound:g})"


def load_goals(results: Path) -> list[ReportGoal]:
    """The goals of every report in ``results`` (``<benchmark>.json``), in file-name order; reports without any skipped."""
    goals = []
    for path in sorted(results.glob("*.json")):
        report = json.loads(path.read_text())
        for g in report.get("goals", []):
            goal = Goal(g["name"], g["value"], g["bound"], at_most=g["op"] == "<=", detail=g.get("detail", ""),
                        rounds=tuple(g.get("rounds", ())))
            goals.append(ReportGoal(report.get("benchmark", path.stem), goal))
    return goals


def plot(goals: list[ReportGoal], out: Path) -> None:
    """A horizontal bar a goal (green met, red not), the goal line at 1, the rounds as dots; written to ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not goals:
        raise ValueError("no goals to plot: run the benchmarks first (make bench)")
    fig, ax = plt.subplots(figsize=(12, 0.62 * len(goals) + 1.3))
    y = list(range(len(goals)))[::-1]  # the first report's first goal on top
    scores = [g.goal.score() for g in goals]
    rounds = [[g.goal.score(r) for r in g.goal.rounds] for g in goals]
    ax.barh(y, scores, color=["#2e7d32" if g.goal.met else "#c62828" for g in goals], height=0.6)
    for yi, g, score, dots in zip(y, goals, scores, rounds, strict=True):
        ax.plot(dots, [yi] * len(dots), "o", color="black", markersize=3.5)
        ax.text(max([score, *dots]) * 1.06, yi, g.label, va="center", fontsize=8)
    ax.axvline(1.0, color="black", linewidth=1)
    ax.set_xscale("log")
    every = [*scores, *(d for dots in rounds for d in dots)]
    ax.set_xlim(min(*every, 1.0) / 1.5, max(*every, 1.0) * 3)
    ax.set_yticks(y, ["\n".join(textwrap.wrap(f"{g.benchmark}: {g.goal.name}", 48)) for g in goals], fontsize=7.5)
    ax.set_xlabel("figure against its goal (at least: figure / goal; at most: goal / figure); >= 1 is met; "
                  "dots: each round of a median")
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
    print(f"wrote {out}: {sum(g.goal.met for g in goals)} of {len(goals)} goals met")


if __name__ == "__main__":
    main()
