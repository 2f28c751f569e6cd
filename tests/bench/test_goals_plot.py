"""bench.goals_plot: the benchmarks' goals, read from their reports and drawn on one chart."""

import json
from pathlib import Path

import matplotlib.image
import pytest

from bench.goals_plot import RESULTS, load_goals, main, plot
from bench.harness import Goal, Report


def write_reports(folder: Path) -> None:
    """Two reports as the benchmarks write them (one goal a median of rounds), and one with no goals."""
    scene = Report("scene", "a scene", {"repo": "r"})
    scene.goals = [Goal("wall / engine", 1.3, 1.15, at_most=True, rounds=(1.19, 1.3, 1.46)),
                   Goal("peak RSS (GiB)", 1.2, 1.5, at_most=True)]
    serve = Report("serve", "serving", {"repo": "r"})
    serve.goals = [Goal("service / engine", 0.06, 0.5, at_most=False), Goal("with / without", 2.0, 1.0, at_most=False)]
    for report in (scene, serve):
        report.write(folder)
    (folder / "engine_speed.json").write_text(json.dumps({"benchmark": "engine_speed", "rows": []}))


def test_goals_are_read_in_report_order_with_their_rounds(tmp_path):
    write_reports(tmp_path)
    goals = load_goals(tmp_path)
    assert [(g.benchmark, g.goal.name) for g in goals] == [("scene", "wall / engine"), ("scene", "peak RSS (GiB)"),
                                                      ("serve", "service / engine"), ("serve", "with / without")]
    assert goals[0].goal.rounds == (1.19, 1.3, 1.46) and goals[1].goal.rounds == ()
    assert [g.goal.met for g in goals] == [False, True, False, True]
    assert goals[0].label == "1.3 (goal <= 1.15)" and goals[2].label == "0.06 (goal >= 0.5)"


def test_a_score_of_one_or_more_is_a_met_goal_whichever_its_direction(tmp_path):
    write_reports(tmp_path)
    for g in load_goals(tmp_path):
        assert (g.goal.score() >= 1) == g.goal.met, g
    committed = {(g.benchmark, g.goal.name): g.goal for g in load_goals(RESULTS)}
    for path in RESULTS.glob("*.json"):  # the committed reports: their recorded verdicts
        for written in json.loads(path.read_text()).get("goals", []):
            assert (committed[path.stem, written["name"]].score() >= 1) == written["met"], written
    at_most = load_goals(tmp_path)[0].goal
    assert at_most.score(1.15) == pytest.approx(1.0) and at_most.score(1.46) < at_most.score(1.19) < 1


def test_the_chart_grows_with_the_goals_and_the_cli_says_how_many_are_met(tmp_path, capsys):
    write_reports(tmp_path)
    goals = load_goals(tmp_path)
    plot(goals[:2], tmp_path / "two.png")
    main(["--results", str(tmp_path), "--out", str(tmp_path / "all.png")])
    assert "2 of 4 goals met" in capsys.readouterr().out
    two, four = (matplotlib.image.imread(tmp_path / name) for name in ("two.png", "all.png"))
    assert four.shape[0] > two.shape[0] and four.shape[1] == two.shape[1]
    with pytest.raises(ValueError, match="make bench"):
        plot([], tmp_path / "none.png")
    assert not (tmp_path / "none.png").exists()
