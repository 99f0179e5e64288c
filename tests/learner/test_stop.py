"""A learner stopped by a signal: the state is saved, then the fleet is handed the version that state holds.

The version a step makes is offered to the broadcaster at once, but a background broadcaster turns the offer down
while it still sends the previous version; the run loop offers again on its next pass. A signal that ends the loop
in between used to leave the last version unoffered: the checkpoint held version N and the actors kept N - 1.
The real Learner is built in this process and driven by the scripted actor of the resume-fidelity test; with no
actor in the weight fleet, a round counts as sent at once, so whether the final version was offered is exact.
"""

from __future__ import annotations

import json

from tests.learner.test_resume_fidelity import make_config, model_dir, open_learner, train  # noqa: F401 (fixture)


def test_a_signal_after_a_step_still_sends_the_saved_version(model_dir, tmp_path):  # noqa: F811
    learner = open_learner(make_config(model_dir, tmp_path / "run"))
    try:
        train(learner, 2)  # two steps whose versions the run loop never offered
        assert learner.weights.sent_version < learner.version == 2
        learner.stop.reason = "SIGTERM"
        learner.stop.event.set()  # what the handler does on the signal
        assert learner.run() == 0
        assert learner.weights.sent_version == 2
    finally:
        learner.close()
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps"] == summary["version"] == 2
