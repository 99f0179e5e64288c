"""docs/reliability.md's figures are the rendering of what the reliability tests recorded, never typed by hand."""

from __future__ import annotations

import importlib.util

from tests.integration.conftest import ROOT

spec = importlib.util.spec_from_file_location("reliability_figures", ROOT / "tools" / "reliability_figures.py")
figures_tool = importlib.util.module_from_spec(spec)
spec.loader.exec_module(figures_tool)


def test_the_doc_is_the_rendering_of_the_recorded_figures():
    assert figures_tool.main(["--check"]) == 0, "run python tools/reliability_figures.py after the reliability tests"


def test_rendering_by_hand():
    rec = {"groups_lost": 2, "groups_trained_twice": 0, "partitions": 2, "late_groups": 6, "late_accepted": 1,
           "drop_reasons": {"stale": 3}, "seed": 7, "soak_s": 0.0, "finished": "2026-01-01 00:00:00"}
    name = "test_partitioned_actor_returns_with_stale_groups_that_are_counted_and_never_trained"
    merged = figures_tool.merge({}, {name: rec, "test_unknown": {**rec, "soak_s": 60.0}})
    assert set(merged) == {name, "test_unknown@soak"}
    text = figures_tool.render(merged)
    assert ("| partition | 2 | 0 | partitions 2; late_groups 6; late_accepted 1 | 7 | 2026-01-01 00:00:00 |"
            in text.splitlines())
    assert "**Soak runs (GSPO_SOAK_S)**, [60.0] s per fault loop:" in text
    assert "| test_unknown | 2 | 0 | drop_reasons {stale: 3}; late_accepted 1; late_groups 6; partitions 2 | 7 |" in text
    assert "No recorded figures yet for: actor churn, learner crash" in text
    doc = f"a\n{figures_tool.BEGIN}\nold\n{figures_tool.END}\nb\n"
    assert figures_tool.rewrite(doc, "new\n") == f"a\n{figures_tool.BEGIN}\nnew\n{figures_tool.END}\nb\n"
