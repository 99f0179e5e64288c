"""The README's quickstart figures are what tools/quickstart_figures.py measured with the quickstart config as it is."""

from __future__ import annotations

import importlib.util

from tests.integration.conftest import ROOT


def figures_tool():
    spec = importlib.util.spec_from_file_location("quickstart_figures_tool", ROOT / "tools" / "quickstart_figures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_readme_shows_the_recorded_run_of_the_current_config():
    tool = figures_tool()
    assert tool.main(["--check"]) == 0, "run python tools/quickstart_figures.py --render"
    record = tool.load()
    assert record["config_sha256"] == tool.config_digest(), (
        "configs/quickstart.yaml changed after its figures were measured: python tools/quickstart_figures.py")


def test_rendering_of_a_hand_made_record():
    record = {"eval_accuracy": [[0, 0.29], [25, 0.4], [300, 0.75]], "steps": 300, "wall_s": 101.4, "cpus": 2,
              "load_1min_before": 0.5, "commit": "abc1234", "time": "2026-12-07 00:00 UTC"}
    text = figures_tool().render(record)
    assert "| when RL starts (after the warm-up) | 0.290 |" in text
    assert "| after 300 steps | 0.750 (+46 points) |" in text
    assert "| wall time, model build included | 101 s |" in text
    assert "Accuracy along the way: 0.400 (step 25)." in text
    assert figures_tool().render({}) == "Not measured yet: `python tools/quickstart_figures.py`.\n"
