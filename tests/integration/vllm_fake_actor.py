"""An actor process whose engine is `VLLMEngine` over the CPU test double of vLLM.

The actor loop, the weight receiver and `VLLMEngine` with the run's `actor.vllm` settings are the production code;
only vLLM itself is the double (the user's config cannot select it: the engine is built with the double's api).
After every applied weight version it rewrites --report (JSON: the engine's stats, the transport it used, the
double's counters), so the test can read it even after killing the process.

    python -m tests.integration.vllm_fake_actor --learner HOST:PORT --id NAME --report PATH [--vllm-version V]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from gspo_async.actor.main import Actor
from gspo_async.engines.vllm import VLLMEngine
from gspo_async.process import setup_process
from gspo_async.testing.vllm_fake import fake_api


class FakeVLLMActor(Actor):
    def __init__(self, learner: str, actor_id: str, report: Path, vllm_version: str):
        super().__init__(learner, actor_id, [], None, None)
        self.report, self.vllm_version = report, vllm_version

    def _build_engine(self, model_dir: Path) -> VLLMEngine:
        return VLLMEngine.from_config(self.cfg, model_dir, seed=self.cfg.actor.seed, api=fake_api(self.vllm_version))

    def apply_pending_weights(self, wait_s: float = 0.0) -> bool:
        applied = super().apply_pending_weights(wait_s)
        if applied:
            engine = self.engine
            record = {"stats": engine.stats(), "transport_last": engine.transport_last,
                      "weight_transport": engine.cfg.weight_transport, "update_mode": engine.cfg.update_mode,
                      "aborts_of_finished": engine.llm.aborts_of_finished, "vllm_version": self.vllm_version}
            tmp = self.report.with_suffix(".tmp")
            tmp.write_text(json.dumps(record))
            tmp.replace(self.report)
        return applied


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--learner", required=True)
    ap.add_argument("--id", required=True)
    ap.add_argument("--report", type=Path, required=True)
    ap.add_argument("--vllm-version", default="0.24.0")
    args = ap.parse_args()
    setup_process(1)
    actor = FakeVLLMActor(args.learner, args.id, args.report, args.vllm_version)
    actor.stop.install()
    try:
        return actor.run()
    finally:
        actor.close()


if __name__ == "__main__":
    raise SystemExit(main())
