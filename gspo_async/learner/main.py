"""The learner process: serve leases, take rollout groups, train, publish weights, evaluate, checkpoint.

Threads: the :class:`LearnerServer` owns the ZeroMQ socket and the coordinator in a background thread; this
module's loop is the training thread. It waits for ``rollout_batch_size`` kept groups, trains on them, bumps the
version, hands the weights to the broadcaster (:mod:`~gspo_async.learner.broadcast`: a thread of its own, so no
step waits for a broadcast) and tells the coordinator (which re-opens admission). The broadcaster re-sends the
current weights whenever the membership changes, so an actor that joins receives the full current weights before
it generates.

This module only composes the parts: the trainer (:mod:`~gspo_async.learner.build`, the same on every rank), the
endpoint and coordinator, the weight broadcasts (:mod:`~gspo_async.learner.broadcast`) and the fleet
metrics (:mod:`~gspo_async.learner.fleet`).
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Optional

import torch

from gspo_async.config import Config
from gspo_async.dashboard.server import serve_dashboard
from gspo_async.engines.hf import HFEngine
from gspo_async.learner import distributed
from gspo_async.bootstrap import ensure_model
from gspo_async.learner.broadcast import WeightBroadcaster
from gspo_async.learner.build import build_trainer, model_files, restore_trainer
from gspo_async.learner.checkpoint import Checkpoint, load_latest, save_checkpoint, set_rng_state
from gspo_async.learner.coordinator import Coordinator
from gspo_async.learner.endpoint import LearnerServer
from gspo_async.learner.evaluation import DEFAULT_SET, FleetEvaluation, eval_metrics
from gspo_async.learner.fleet import FleetMetrics, StaleDropWatch
from gspo_async.learner.ledger import LedgerWriter
from gspo_async.learner.prompts import PromptSource
from gspo_async.learner.resume import run_identity
from gspo_async.learner.weight_sync import Cohorts, WeightSyncMembership
from gspo_async.process import StartupError, StopFlag, setup_logging, setup_process
from gspo_async.protocol.auth import CurveServerKeys
from gspo_async.protocol.messages import Limits
from gspo_async.tasks import task_from_config
from gspo_async.tasks.evaluate import evaluate, evaluation_sampling
from gspo_async.tasks.reward_checks import RewardCheckError, last_reward_error, scoring_for_run
from gspo_async.telemetry.derive import LoopMetrics, initial_values
from gspo_async.telemetry.names import METRICS
from gspo_async.telemetry.registry import MetricRegistry
from gspo_async.telemetry.sinks import build_sinks
from gspo_async.weights.elastic import WeightPublisher

__all__ = ["Learner", "run_follower", "run_learner"]

log = logging.getLogger(__name__)


def _is_metric(name: str) -> bool:
    """Whether `name` is a registered metric: gauges, histogram-lists given whole and counters given as totals (the
    coordinator's) all go into every step record; per-step values that are not in the registry stay in the
    history."""
    return name in METRICS


class Learner:
    def __init__(self, cfg: Config, resume: bool = False):
        self.cfg = cfg
        torch.manual_seed(cfg.seed)
        self.run_dir = Path(cfg.run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.yaml").write_text(cfg.to_yaml())
        self.run_id = run_identity(self.run_dir, resume)
        self.ckpt_root = self.run_dir / "checkpoints"
        ckpt = load_latest(self.ckpt_root) if resume else None
        self.distributed = cfg.learner.engine == "deepspeed"
        if self.distributed:  # rank 0 of a DeepSpeed learner: tell the followers which checkpoint to load
            distributed.init_learner_distributed(cfg)
            ensure_model(cfg)  # before the followers load it
            distributed.broadcast_object(str(ckpt.path) if ckpt else None)
        if resume and ckpt is None:
            log.info("[learner] --resume: no checkpoint under %s; starting fresh", self.ckpt_root)

        self.model_dir = ensure_model(cfg)
        parts = build_trainer(cfg, ckpt.path if ckpt else None)
        self.model, self.tokenizer = parts.model, parts.tokenizer
        self.engine, self.trainer = parts.backend, parts.trainer

        self.task = task_from_config(cfg.task)
        # every reward function is called on real items here, before any actor connects (RewardCheckError)
        self.reward, self.encoder, self.reward_monitor = scoring_for_run(cfg.task, self.task, self.tokenizer)
        self.exit_code = 0
        # held-out sets: the task's own split and task.eval_sets (learner/evaluation.py), empty ones left out
        sets = {DEFAULT_SET: self.task.eval_items(),
                **{name: task_from_config(cfg.task.eval_set_config(name)).eval_items() for name in cfg.task.eval_sets}}
        self.eval_sets = {name: items for name, items in sets.items() if items}
        self.evaluating = bool(cfg.learner.eval_every and self.eval_sets)
        self.prompts = PromptSource(self.encoder.encode_items(self.task.train_items(cfg.seed)))
        self.coordinator = Coordinator(
            self.prompts, groups_per_step=cfg.groups_per_step, group_size=cfg.num_return_sequences_in_group,
            max_staleness=cfg.off_policy.max_staleness, lease_timeout_s=cfg.learner.lease_timeout_s,
            heartbeat_timeout_s=cfg.learner.heartbeat_timeout_s, max_buffered_groups=cfg.max_buffered_groups,
            drop_stale=cfg.off_policy.drop_stale, max_prompt_tokens=cfg.prompt_length,
            min_actor_leases=cfg.actor.prompts_per_lease, filter_groups=cfg.filter_groups.enabled)

        self.step = 0
        self.version = 0
        self.history: list[dict[str, float]] = []
        if ckpt is not None:
            self._restore(parts, ckpt)

        self.registry = MetricRegistry("learner", self.run_dir, sinks=build_sinks(cfg.telemetry, self.run_dir))
        self.ledger = None
        if cfg.learner.ledger:
            self.ledger = LedgerWriter(self.run_dir, resumed_from=ckpt.step if ckpt is not None else -1)
        self.eval_engine = HFEngine((self.model, self.tokenizer), device=cfg.learner.device, seed=cfg.seed,
                                    evaluation=True)

        host = cfg.learner.host
        sync = cfg.learner.weight_sync
        try:
            self.publisher = WeightPublisher(host, cfg.weight_store_port, timeout_s=sync.timeout_s,
                                             bucket_bytes=int(sync.bucket_mb * 2**20),
                                             backend=sync.resolve_backend(cfg.learner.device),
                                             device=cfg.learner.device)
        except RuntimeError as err:  # torch's DistNetworkError: the port is taken or the address is not ours
            reason = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
            raise StartupError(f"cannot bind the weight store to {host}:{cfg.weight_store_port} ({reason}); is "
                               "another learner running? pick another learner.weight_store_port (default "
                               "learner.port + 1)") from None
        try:
            self.server = self._start_server(host)
        except OSError as err:  # the endpoint's own one-line message: port in use, address not ours
            self.publisher.close()
            raise StartupError(str(err)) from None
        self.weights = WeightBroadcaster(self.publisher, WeightSyncMembership(sync.timeout_s, sync.exclude_s),
                                         self.server.reachable_actor_ids, self.registry, background=sync.background,
                                         on_sent=self.server.set_fleet_version,
                                         cohorts=Cohorts(sync.cohort_size, sync.join_wait_s))
        self.fleet = FleetMetrics(self.server, self.registry, group_size=cfg.num_return_sequences_in_group)
        self.stale_watch = StaleDropWatch(cfg.off_policy.max_staleness)
        self.loop = LoopMetrics()  # busy and wait time, rates over one wall window
        self.registry.update(initial_values(time.time()))
        self.fleet_metrics()  # the start of the rate window
        self.dashboard = None
        self.stop = StopFlag()

    def _restore(self, parts, ckpt: Checkpoint) -> None:
        state = restore_trainer(parts, ckpt, self.distributed)
        set_rng_state(state["rng"])
        self.coordinator.load_state_dict(ckpt.state["coordinator"])
        self.step, self.version = ckpt.step, ckpt.version
        self.history = ckpt.state.get("history", [])
        log.info("[learner] resumed from %s at step %d, version %d", ckpt.path, self.step, self.version)

    def _start_server(self, host: str) -> LearnerServer:
        cfg = self.cfg
        head = self.model.get_output_embeddings().weight
        vocab = int(getattr(head, "ds_shape", head.shape)[0])  # a ZeRO-3 partition's own shape is empty
        limits = Limits(vocab_size=vocab, max_prompt_tokens=cfg.prompt_length,
                        max_response_tokens=cfg.response_length, group_size=cfg.num_return_sequences_in_group)
        curve = None
        if cfg.learner.curve.secret_key:
            curve = CurveServerKeys.load(cfg.learner.curve.secret_key, cfg.learner.curve.authorized_clients)
        server = LearnerServer(
            self.coordinator, host=host, port=cfg.learner.port, limits=limits, curve=curve,
            evaluation=self._fleet_evaluation() if cfg.learner.eval_on == "fleet" else None,
            insecure=cfg.learner.insecure, heartbeat_interval_s=cfg.learner.heartbeat_interval_s, run_id=self.run_id,
            welcome_extra={"config": cfg.to_dict(), "model_files": model_files(self.model_dir),
                           "weight_store": [cfg.learner.advertise_host or host, self.publisher.port]})
        server.start()
        server.set_version(self.version)
        return server

    # ----- the pieces of the loop -----
    def weight_snapshot(self, copy: bool) -> list[tuple[str, torch.Tensor]]:
        """The weights to broadcast, (name, tensor) in the broadcast dtype; with `copy` none aliases a parameter
        (a background broadcast must not see the next optimiser step). On the training thread only: under ZeRO-3
        the other ranks join the gathers."""
        if self.distributed:  # every rank takes part in gathering (ZeRO-3) the weights
            distributed.announce_weights()
        tensors = [(n, t.detach().clone() if copy else t) for n, t in self.engine.broadcast_tensors()]
        if copy and str(self.cfg.learner.device).startswith("cuda"):
            torch.cuda.current_stream().synchronize()  # the broadcast thread's stream must see finished copies
        return tensors

    def offer_weights(self) -> None:
        """Hand the current version to the broadcaster (background: only if it is idle; it never waits)."""
        self.weights.offer(self.version, self.weight_snapshot)

    def weights_behind(self) -> bool:
        """Whether the fleet's newest weights are more than weight_sync.max_version_lag versions behind the
        learner's (background broadcasts only): the next step waits, or the actors' groups would be stale."""
        return (self.weights.background
                and self.version - self.weights.sent_version > self.cfg.learner.weight_sync.max_version_lag)

    def _fleet_evaluation(self) -> FleetEvaluation:
        """The eval sets as evaluation prompts for the actors (prompts longer than prompt_length left out)."""
        sets = {}
        for name, items in self.eval_sets.items():
            encoded = [(self.encoder(it.prompt), it.answer, it.meta) for it in items]
            sets[name] = [e for e in encoded if len(e[0]) <= self.cfg.prompt_length]
            if len(sets[name]) < len(encoded):
                log.warning("[learner] eval set %s: %d of %d prompts are longer than prompt_length=%d and are not "
                            "evaluated", name, len(encoded) - len(sets[name]), len(encoded), self.cfg.prompt_length)
        return FleetEvaluation({k: v for k, v in sets.items() if v}, n=self.cfg.learner.eval_n,
                               lease_timeout_s=self.cfg.learner.lease_timeout_s)

    def record_evaluation(self, version: int, sets: dict[str, dict[str, float]]) -> dict[str, float]:
        """Record one evaluation of weights `version` ({set: {accuracy, pass_at_k, mean_length}}): registry,
        history (with the step it was recorded at); returns its metrics."""
        metrics = {"eval/version": float(version)}
        for name, result in sets.items():
            metrics.update(eval_metrics(name, result))
        self.registry.inc("eval/runs")  # an event marker: accuracy alone repeats in every record
        self.registry.update(metrics)
        self.history.append({"step": float(self.step), **metrics})
        log.info("[learner] evaluation of version %d: %s", version, ", ".join(
            f"{name} accuracy {r['accuracy']:.3f} pass@{self.cfg.learner.eval_n} {r['pass_at_k']:.3f} length "
            f"{r['mean_length']:.1f}" for name, r in sets.items()))
        return metrics

    def fleet_evaluations(self, start: bool = False) -> dict[str, float]:
        """learner.eval_on: fleet: start a round for the current version (`start`) and record the rounds that
        finished; returns the metrics of the newest one ({} when none finished)."""
        metrics: dict[str, float] = {}
        for done in self.server.evaluation_rounds(self.version if start else None):
            metrics = self.record_evaluation(done["version"], done["sets"])
        return metrics

    def finish_fleet_evaluations(self) -> None:
        """At the end of the run: wait (up to lease_timeout_s) for the rounds still out on the fleet."""
        deadline = time.monotonic() + self.cfg.learner.lease_timeout_s
        while self.server.evaluation.pending and time.monotonic() < deadline and not self.stop.is_set():
            time.sleep(0.1)  # polling interval: the rounds finish on the server thread
            self.fleet_evaluations()
        if self.server.evaluation.pending:
            log.warning("[learner] %d evaluation round(s) unfinished at the end of the run (no actor answered "
                        "within learner.lease_timeout_s); their results are not recorded",
                        self.server.evaluation.pending)

    def evaluate(self) -> dict[str, float]:
        """Held-out evaluation on the learner (training waits): records and returns the metrics."""
        engine = self.eval_engine
        if self.distributed:  # ZeRO-3: every rank helps gather the copy rank 0 evaluates (backend docstring)
            distributed.announce_export()
            model = self.engine.evaluation_model()
            if model is not self.model:
                engine = HFEngine((model, self.tokenizer), device=self.cfg.learner.device, seed=self.cfg.seed,
                                  evaluation=True)
        self.model.eval()
        sets = {}
        with torch.no_grad(), self.engine.autocast():  # the actors' compute dtype under mixed precision
            for name, items in self.eval_sets.items():
                result = evaluate(engine, self.tokenizer, items, self.reward, evaluation_sampling(self.cfg),
                                  n=self.cfg.learner.eval_n, encode=self.encoder)
                sets[name] = {"accuracy": result["accuracy"], "pass_at_k": result["pass_at_n"],
                              "mean_length": result["mean_length"]}
        return self.record_evaluation(self.version, sets)

    def record_ended(self, records: list[dict[str, Any]], sync: bool = False) -> None:
        """Append prompts that ended by this step to the ledger (a failed write is logged; training goes on)."""
        if self.ledger is None:
            return
        try:
            self.ledger.write(self.step, records)
            if sync:
                self.ledger.sync()
        except OSError as err:
            self.registry.inc("ledger/write_failures")
            log.error("[learner] ledger write at step %d failed (%s); %d records are missing from %s",
                      self.step, err, len(records), self.ledger.path)

    def checkpoint(self) -> bool:
        """Save the whole state under checkpoints/step-N; False (logged, counted) when the save failed."""
        coordinator_state, ended = self.server.snapshot()
        self.record_ended(ended, sync=True)  # the ledger reaches this state before the checkpoint that holds it
        model_state = None
        if self.distributed:  # ZeRO-3: the export needs the weights gathered by every rank (None under ZeRO-1/2)
            distributed.announce_export()
            model_state = self.engine.export_state_dict()
        try:
            save_checkpoint(self.ckpt_root, step=self.step, version=self.version, model=self.model,
                            model_state=model_state,
                            tokenizer=self.tokenizer,
                            trainer_state={"engine": self.engine.state_dict(),
                                           "running": self.trainer.running.state_dict(),
                                           "generator": self.trainer.generator.get_state()},
                            state={"coordinator": coordinator_state, "history": self.history},
                            keep=self.cfg.learner.checkpoint.keep, extra_writer=self._save_engine_files)
        except OSError as err:  # full disk, permissions: keep training, keep the previous checkpoint
            self.registry.inc("checkpoint/failures")
            log.error("[learner] checkpoint at step %d failed (%s); the previous one is intact. "
                      "Free space under %s to resume saving.", self.step, err, self.ckpt_root)
            return False
        self.registry.inc("checkpoint/saves")
        return True

    def _save_engine_files(self, tmp: Path) -> None:
        if self.distributed:  # DeepSpeed's partitioned optimiser state, written by every rank
            distributed.announce_save(tmp / "deepspeed")
            self.engine.save(tmp / "deepspeed")

    def fleet_metrics(self) -> dict[str, Any]:
        """Fleet-wide numbers (see :class:`FleetMetrics`) with the loop's busy fractions and window rates;
        per-actor rows go to the registry directly."""
        fleet = self.fleet.collect(self.version)
        return {**fleet, **self.loop.values(fleet)}

    # ----- main loop -----
    def _start_services(self) -> None:
        cfg = self.cfg
        log.info("[learner] listening on %s:%d (weights on port %d); run %s in %s", cfg.learner.host,
                 self.server.port, self.publisher.port, self.run_id, self.run_dir)
        if cfg.telemetry.dashboard_port is not None:
            self.dashboard = serve_dashboard(self.run_dir, port=cfg.telemetry.dashboard_port)
            log.info("[learner] dashboard: %s", self.dashboard.url)
        if cfg.telemetry.prometheus_port is not None:
            port = self.registry.serve_prometheus(port=cfg.telemetry.prometheus_port)
            log.info("[learner] prometheus metrics: http://127.0.0.1:%d/metrics", port)

    def run(self) -> int:
        cfg = self.cfg
        total = cfg.learner.total_steps
        self._start_services()
        fleet_eval = self.evaluating and cfg.learner.eval_on == "fleet"
        if self.step == 0 and fleet_eval:
            self.fleet_evaluations(start=True)
            log.info("[learner] evaluation of version 0 (before RL) queued for the actors")
        elif self.step == 0 and self.evaluating:
            self.evaluate()
            self.registry.log(self.step)
        start = time.time()
        last_log = start
        while self.step < total and not self.stop.is_set():
            batch: list = []
            wait_start = time.time()
            weights_wait_s = 0.0
            while (len(batch) < cfg.rollout_batch_size or self.weights_behind()) and not self.stop.is_set():
                self.offer_weights()  # a version not yet out (background: once the broadcaster is idle)
                if len(batch) < cfg.rollout_batch_size:
                    batch += self.server.take_groups(cfg.rollout_batch_size - len(batch), timeout_s=0.2)
                else:  # the batch is ready but the fleet's weights are too far behind (weight_sync.max_version_lag)
                    t = time.time()
                    self.weights.wait_sent(self.version - cfg.learner.weight_sync.max_version_lag,
                                           self.weight_snapshot, timeout_s=0.2)
                    weights_wait_s += time.time() - t
                if time.time() - last_log > cfg.telemetry.log_every_s:  # keep the dashboard live while waiting
                    if fleet_eval:
                        self.fleet_evaluations()
                    self.registry.update(self.fleet_metrics())
                    self.registry.log(self.step)
                    last_log = time.time()
            if self.stop.is_set():
                self.server.put_back(batch)  # untrained: buffered in the final state, re-issued on resume
                break
            wait_s = time.time() - wait_start
            t0 = time.time()
            lags = [self.version - g.min_version for g in batch]
            for g, lag in zip(batch, lags):
                self.registry.observe("staleness/hist", lag)
                self.registry.observe("staleness/hist_tokens", lag, g.num_tokens)
            if self.distributed:
                distributed.broadcast_batch(batch)
            metrics = self.trainer.train_step(batch)
            self.step += 1
            self.version += 1
            # Actors that apply the new weights may push groups of version v+1 before set_version below.
            self.server.allow_version(self.version)
            self.offer_weights()
            self.server.set_version(self.version)
            self.server.mark_trained(batch)
            self.record_ended(self.server.drain_journal())
            train_s = time.time() - t0
            self.loop.add_step(train_s, wait_s)
            # Counts (train/groups, train/tokens, drops...) are the coordinator's totals from fleet_metrics.
            metrics.update({
                "train/step": float(self.step), "train/version": float(self.version), "train/step_s": train_s,
                "staleness/mean": sum(lags) / len(lags), "staleness/max": float(max(lags)),
                "learner/wait_s": wait_s, **self.weights.last_sync(), **self.fleet_metrics(),
                "weights/version_lag": float(self.version - max(self.weights.sent_version, 0)),
                "weights/wait_s": weights_wait_s})
            due = self.evaluating and (self.step % cfg.learner.eval_every == 0 or self.step == total)
            if fleet_eval:  # the actors serve it between their training batches; results come steps later
                metrics.update(self.fleet_evaluations(start=due))
            elif due:
                metrics.update(self.evaluate())
            reward_metrics = self.reward_monitor.observe(batch)
            metrics.update(reward_metrics)
            self.registry.update({k: v for k, v in metrics.items() if _is_metric(k)})
            self.registry.update(reward_metrics)  # per-function names are a family, not in METRICS
            self.registry.log(self.step)
            last_log = time.time()
            # evaluations have their own history entries (record_evaluation)
            self.history.append({k: v for k, v in metrics.items()
                                 if isinstance(v, float) and not k.startswith("eval/")})
            self._log_progress(metrics, time.time() - start)
            stale = self.stale_watch.observe(metrics["train/groups"], metrics["staleness/dropped"])
            for warning in (self.reward_monitor.take_warning(), stale):
                if warning is not None:
                    log.warning("[learner] %s", warning)
            if self.reward_monitor.over_limit():  # stop: the final checkpoint below keeps what was acknowledged
                log.error("[learner] stopping at step %d: %s", self.step,
                          self.reward_monitor.stop_message(self._last_reward_error()))
                self.exit_code = 3
                break
            if cfg.learner.checkpoint.every and self.step % cfg.learner.checkpoint.every == 0:
                self.checkpoint()
        if not self.stop.is_set():
            self._send_final_weights(2 * cfg.learner.weight_sync.timeout_s)
        if fleet_eval:
            self.finish_fleet_evaluations()
        self.server.close_intake()  # what is acknowledged as accepted from here on would miss the final state
        saved = self.checkpoint()
        if self.stop.is_set():  # a signal: the state is saved first, then the actors get the version it holds
            self._send_final_weights(cfg.learner.weight_sync.timeout_s)
        # The final record: every count as the ledger now holds it, and the run marked ended.
        self.registry.update({**self.fleet_metrics(), "learner/finished": 1.0})
        self.registry.log(self.step)
        if self.distributed:
            distributed.broadcast_batch(None)  # release the follower ranks
        self._write_summary(time.time() - start, saved)
        return self.exit_code

    def _send_final_weights(self, timeout_s: float) -> None:
        """Offer the current version until a round has carried it to the fleet, at most `timeout_s` seconds: at
        the end of a run, and after the final save on a signal (the last version's offer may have been turned
        down while the previous round ran, and nothing would offer it again)."""
        if not self.weights.wait_sent(self.version, self.weight_snapshot, timeout_s):
            log.warning("[learner] the final weights (version %d) did not reach the actors; the newest they got "
                        "is version %d", self.version, self.weights.sent_version)

    def _last_reward_error(self) -> Optional[str]:
        """The last reward error an actor reported; its message rides in heartbeats, so wait up to two of them."""
        deadline = time.monotonic() + 2 * self.cfg.learner.heartbeat_interval_s
        while (error := last_reward_error(self.server.actors())) is None and time.monotonic() < deadline:
            time.sleep(0.1)  # polling interval: the condition is re-checked
        return error

    def _log_progress(self, m: dict[str, Any], elapsed: float) -> None:
        acc = f" | acc {m['eval/accuracy']:.3f}" if "eval/accuracy" in m else ""
        filtered = f" | filtered {m.get('groups/filtered', 0):.0f}" if self.cfg.filter_groups.enabled else ""
        log.info(f"[learner] step {self.step}/{self.cfg.learner.total_steps} v{self.version} | "
                 f"reward {m['reward/mean']:.3f}{acc} | staleness {m['staleness/mean']:.2f} (max "
                 f"{m['staleness/max']:.0f}) | gen {m['throughput/gen_tokens_per_s']:.0f} tok/s | train "
                 f"{m['throughput/train_tokens_per_s']:.0f} tok/s | busy {100 * m['learner/busy_frac']:.0f}% | "
                 f"clip {m.get('train/clipfrac', 0):.3f} | trunc {m.get('response/truncated_frac', 0):.2f}"
                 f"{filtered} | actors {m['actors/alive']:.0f} | {elapsed:.0f}s"
                 f"{self.reward_monitor.progress_suffix()}")

    def _write_summary(self, elapsed: float, saved: bool = True) -> None:
        accs = [(h["step"] if "step" in h else h.get("train/step"), h["eval/accuracy"])
                for h in self.history if "eval/accuracy" in h]
        by_version = [(h["eval/version"], h["eval/accuracy"]) for h in self.history
                      if "eval/version" in h and "eval/accuracy" in h]
        summary = {"steps": self.step, "version": self.version, "seconds": elapsed,
                   "eval_accuracy": accs, "eval_accuracy_by_version": by_version,
                   "accounting": self.server.accounting(), "counters": self.server.counters(),
                   "start_accuracy": accs[0][1] if accs else None, "final_accuracy": accs[-1][1] if accs else None}
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
        total = self.cfg.learner.total_steps
        accuracy = (f"; held-out accuracy {summary['start_accuracy']:.3f} -> {summary['final_accuracy']:.3f}"
                    if accs else "")
        if self.step < total and self.stop.is_set():  # a signal, not the end of the run
            log.info("[learner] stopped at step %d of %d (%s), %s%s; checkpoints in %s (continue with --resume); "
                     "metrics in %s", self.step, total, self.stop.reason,
                     "state saved" if saved else "the final save FAILED (the previous checkpoint is intact)",
                     accuracy, self.ckpt_root, self.run_dir / "metrics.jsonl")
        else:
            log.info("[learner] done: %d steps in %.0fs%s; checkpoints in %s; metrics in %s", self.step, elapsed,
                     accuracy, self.ckpt_root, self.run_dir / "metrics.jsonl")

    def close(self) -> None:
        for part in (getattr(self, "weights", None), self.server, self.publisher, self.registry, self.dashboard,
                     self.reward, self.ledger):
            if part is not None and hasattr(part, "close"):
                try:
                    part.close()
                except Exception as err:  # closing must not hide the run's own result
                    log.error("[learner] error while closing %s: %s", type(part).__name__, err)


def run_follower(cfg: Config) -> int:
    """Ranks > 0 of a DeepSpeed learner: hold a share of the ZeRO state and follow rank 0's commands."""
    ckpt_path = distributed.broadcast_object(None)  # same order of collectives as rank 0's Learner.__init__
    parts = build_trainer(cfg, Path(ckpt_path) if ckpt_path else None)
    if ckpt_path:
        restore_trainer(parts, Checkpoint(Path(ckpt_path), 0, 0, {}), distributed=True)
    distributed.follower_loop(parts.trainer, StopFlag().install())
    return 0


def check_world(cfg: Config, env: Optional[dict[str, str]] = None) -> int:
    """The number of learner ranks a launcher started (WORLD_SIZE, 1 without one); refuses several ranks unless
    the config shards the learner over them (learner.engine: deepspeed)."""
    env = os.environ if env is None else env
    raw = env.get("WORLD_SIZE", "1") or "1"
    try:
        world = int(raw)
    except ValueError:
        raise StartupError(f"WORLD_SIZE={raw!r} is not a number of ranks; unset it or start the learner with "
                           "torchrun") from None
    if world > 1 and cfg.learner.engine != "deepspeed":
        raise StartupError(
            f"WORLD_SIZE={world}: a launcher started {world} learner ranks, but learner.engine is "
            f"{cfg.learner.engine!r}, so every rank would start a whole learner on the same ports. Add "
            "learner.engine=deepspeed to shard one learner over the ranks (install it with "
            "python -m pip install 'gspo-async[deepspeed]'), or start a single process without torchrun")
    return world


def run_learner(cfg: Config, resume: bool = False) -> int:
    setup_process(cfg.learner.threads)
    setup_logging("learner")
    world = check_world(cfg)
    if cfg.learner.engine != "deepspeed":
        log.info("[learner] engine torch on %d rank, device %s", world, cfg.learner.device)
        return _run_learner(cfg, resume)
    rank, world = distributed.init_learner_distributed(cfg)
    try:
        if rank > 0:
            return run_follower(cfg)
        log.info("[learner] engine deepspeed (ZeRO stage %d) on %d rank(s), device %s",
                 cfg.learner.deepspeed.zero_stage, world, cfg.learner.device)
        return _run_learner(cfg, resume)
    finally:
        distributed.close_learner_distributed()


def _run_learner(cfg: Config, resume: bool) -> int:
    """Rank 0 (or the only rank): the learner itself."""
    try:
        learner = Learner(cfg, resume=resume)
    except RewardCheckError as err:  # a broken reward: stop before step 1, with what to fix
        log.error("[learner] %s", err)
        return 1
    learner.stop.install()
    try:
        return learner.run()
    finally:
        learner.close()
