"""The learner process: serve leases, take rollout groups, train, publish weights, evaluate, checkpoint.

Threads: the :class:`LearnerServer` owns the ZeroMQ socket and the coordinator in a background thread; this
module's loop is the training thread. It waits for ``rollout_batch_size`` kept groups, trains on them, bumps the
version, broadcasts the weights to every live actor, and tells the coordinator (which re-opens admission).
While it waits for data it re-broadcasts the current weights whenever the membership changed, so an actor that
joins receives the full current weights before it generates.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any, Optional

import torch

from gspo_async.config import Config
from gspo_async.process import StopFlag, setup_process

MODEL_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
               "special_tokens_map.json", "chat_template.jinja", "tiny_meta.json")


def ensure_model(cfg: Config) -> Path:
    """The model directory, building the tiny local model there first when it is missing and allowed."""
    path = Path(cfg.model.path)
    if not (path / "config.json").is_file() and cfg.model.build_tiny_if_missing:
        from gspo_async.models.tiny import build_tiny

        print(f"[learner] building the tiny local model at {path} (no hub access) ...", flush=True)
        build_tiny(path, seed=cfg.seed)
    return path


def model_files(path: Path) -> dict[str, bytes]:
    """Small files that let a remote actor rebuild the architecture and tokenizer (weights come by broadcast)."""
    return {name: (path / name).read_bytes() for name in MODEL_FILES if (path / name).is_file()}


def _is_metric(name: str) -> bool:
    """Whether `name` is a registered metric whose value is set per step: a gauge, or a histogram-list given whole
    (per-step values that are not in the registry stay in the history)."""
    from gspo_async.telemetry.names import GAUGE, HIST, METRICS

    spec = METRICS.get(name)
    return spec is not None and spec.kind in (GAUGE, HIST)


class Learner:
    def __init__(self, cfg: Config, resume: bool = False):
        from gspo_async.engines.hf import HFEngine
        from gspo_async.tasks.scoring import RewardRunner
        from gspo_async.learner.checkpoint import load_latest, load_trainer_state, set_rng_state
        from gspo_async.learner.coordinator import Coordinator
        from gspo_async.learner.backends import build_backend
        from gspo_async.learner.prompts import PromptSource
        from gspo_async.learner.trainer import Trainer
        from gspo_async.models.loading import load_model_and_tokenizer
        from gspo_async.protocol.messages import Limits
        from gspo_async.learner.endpoint import LearnerServer
        from gspo_async.tasks import task_from_config
        from gspo_async.tasks.prompting import encode_prompt
        from gspo_async.telemetry.registry import MetricRegistry
        from gspo_async.weights.elastic import WeightPublisher

        self.cfg = cfg
        torch.manual_seed(cfg.seed)
        self.run_dir = Path(cfg.run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.yaml").write_text(cfg.to_yaml())
        self.ckpt_root = self.run_dir / "checkpoints"
        ckpt = load_latest(self.ckpt_root) if resume else None
        self.distributed = cfg.learner.engine == "deepspeed"
        if self.distributed:  # rank 0 of a DeepSpeed learner: tell the followers which checkpoint to load
            from gspo_async.learner.distributed import broadcast_object, init_learner_distributed

            init_learner_distributed(cfg)
            ensure_model(cfg)  # before the followers load it
            broadcast_object(str(ckpt.path) if ckpt else None)
        if resume and ckpt is None:
            print(f"[learner] --resume: no checkpoint under {self.ckpt_root}; starting fresh", flush=True)

        model_dir = ensure_model(cfg)
        self.model_dir = model_dir
        load_from = ckpt.path / "model" if ckpt else model_dir
        dtype = getattr(torch, cfg.model.dtype)
        self.model, self.tokenizer = load_model_and_tokenizer(load_from, dtype=dtype, device=cfg.learner.device)
        if cfg.model.gradient_checkpointing:
            self.model.gradient_checkpointing_enable()
        ref_model = None
        if cfg.use_kl_loss or cfg.add_token_level_kl:
            ref_model, _ = load_model_and_tokenizer(model_dir, dtype=dtype, device=cfg.learner.device)
            ref_model.requires_grad_(False)
        self.engine = build_backend(cfg, self.model)
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self.trainer = Trainer(cfg, self.engine, pad_id, ref_model)

        self.task = task_from_config(cfg.task)
        self.reward = RewardRunner(cfg.task.reward if cfg.task.reward != "exact" else self.task.reward_fn,
                                   timeout_s=cfg.task.reward_timeout_s)
        chat = cfg.task.chat_template or None

        def encode(text: str) -> list[int]:
            return encode_prompt(self.tokenizer, text, chat=chat)

        self.prompts = PromptSource(self.task.train_items(cfg.seed), encode=encode)
        self.coordinator = Coordinator(
            self.prompts, groups_per_step=cfg.groups_per_step, group_size=cfg.num_return_sequences_in_group,
            max_staleness=cfg.off_policy.max_staleness, lease_timeout_s=cfg.learner.lease_timeout_s,
            heartbeat_timeout_s=cfg.learner.heartbeat_timeout_s, max_buffered_groups=cfg.max_buffered_groups,
            drop_stale=cfg.off_policy.drop_stale, max_prompt_tokens=cfg.prompt_length)

        self.step = 0
        self.version = 0
        self.history: list[dict[str, float]] = []
        if ckpt is not None:
            state = load_trainer_state(ckpt)
            self.engine.load_state_dict(state["engine"])
            if self.distributed:
                self.engine.load(ckpt.path / "deepspeed")
            self.trainer.running.load_state_dict(state["running"])
            set_rng_state(state["rng"])
            self.trainer.generator.set_state(state["generator"])
            self.coordinator.load_state_dict(ckpt.state["coordinator"])
            self.step, self.version = ckpt.step, ckpt.version
            self.history = ckpt.state.get("history", [])
            print(f"[learner] resumed from {ckpt.path} at step {self.step}, version {self.version}", flush=True)

        from gspo_async.telemetry.sinks import build_sinks

        self.registry = MetricRegistry("learner", self.run_dir, sinks=build_sinks(cfg.telemetry, self.run_dir))
        self.ledger = None
        if cfg.learner.ledger:
            from gspo_async.learner.ledger import LedgerWriter

            self.ledger = LedgerWriter(self.run_dir, resumed_from=ckpt.step if ckpt is not None else -1)
        self.known_actors: set[str] = set()
        self.eval_engine = HFEngine((self.model, self.tokenizer), device=cfg.learner.device, seed=cfg.seed)

        host = cfg.learner.host
        self.publisher = WeightPublisher(host, cfg.weight_store_port, timeout_s=cfg.learner.weight_sync.timeout_s,
                                         bucket_bytes=int(cfg.learner.weight_sync.bucket_mb * 2**20),
                                         backend=cfg.learner.weight_sync.resolve_backend(cfg.learner.device),
                                         device=cfg.learner.device)
        vocab = int(self.model.get_output_embeddings().weight.shape[0])
        limits = Limits(vocab_size=vocab, max_prompt_tokens=cfg.prompt_length,
                        max_response_tokens=cfg.response_length, group_size=cfg.num_return_sequences_in_group)
        curve = None
        if cfg.learner.curve.secret_key:
            from gspo_async.protocol.auth import CurveServerKeys

            curve = CurveServerKeys.load(cfg.learner.curve.secret_key, cfg.learner.curve.authorized_clients)
        self.server = LearnerServer(
            self.coordinator, host=host, port=cfg.learner.port, limits=limits, curve=curve,
            insecure=cfg.learner.insecure, heartbeat_interval_s=cfg.learner.heartbeat_interval_s,
            welcome_extra={"config": cfg.to_dict(), "model_files": model_files(model_dir),
                           "weight_store": [cfg.learner.advertise_host or host, self.publisher.port]})
        self.server.start()
        self.server.set_version(self.version)
        self.published_members: Optional[list[str]] = None
        self.weight_excluded: dict[str, float] = {}  # actor id -> monotonic time until which it is left out
        self.weight_failures: Counter[str] = Counter()  # consecutive failed rounds per actor (for the back-off)
        self.weight_present: set[str] = set()  # actors whose weight receiver has been seen listening
        self.last_sync: dict[str, float] = {}
        self.dashboard = None
        self.stop = StopFlag()

    # ----- the pieces of the loop -----
    def weight_members(self) -> list[str]:
        """Live actors that take part in broadcasts: those whose weight receiver is listening, but for those
        excluded after a recent failed round."""
        now = time.monotonic()
        self.weight_excluded = {a: until for a, until in self.weight_excluded.items() if now < until}
        live = set(self.server.live_actor_ids()) - set(self.weight_excluded)
        self.weight_present &= live | set(self.weight_excluded)
        self.weight_present |= set(self.publisher.present(sorted(live - self.weight_present)))
        return sorted(live & self.weight_present)

    def sync_weights(self, reason: str, retry: bool = True) -> None:
        """Broadcast the current weights to the live actors (a failure is logged; the next call rebuilds). Actors
        that made the round fail are excluded for weight_sync.exclude_s, then tried again; the others get this
        version at once by a second round without them."""
        members = self.weight_members()
        if self.distributed:  # every rank takes part in gathering (ZeRO-3) the weights
            from gspo_async.learner.distributed import announce_weights

            announce_weights()
        result = self.publisher.publish(list(self.engine.broadcast_tensors()), self.version, members)
        self.last_sync = {"weights/sync_s": result.seconds, "weights/bytes": float(result.nbytes),
                          "weights/transfer_s": max(result.seconds - result.group_seconds, 0.0)}
        if result.ok:
            self.published_members = members
            for m in members:
                self.weight_failures.pop(m, None)
            self.registry.inc("weights/syncs")
            self.registry.inc("weights/bytes_sent", float(result.nbytes * len(members)))
        else:
            self.published_members = None  # rebuild at the next chance
            self.registry.inc("weights/failures")
            sync = self.cfg.learner.weight_sync
            excluded = [m for m in result.missing if m in members] if sync.exclude_s else []
            for m in excluded:  # back off: one timeout after a first failure, doubling up to exclude_s
                self.weight_failures[m] += 1
                hold = min(sync.exclude_s, sync.timeout_s * 2 ** (self.weight_failures[m] - 1))
                self.weight_excluded[m] = time.monotonic() + hold
            print(f"[learner] weight sync v{self.version} ({reason}) to {members} failed: {result.error}"
                  + (f"; leaving {excluded} out of broadcasts for a while (backing off up to {sync.exclude_s:g}s)"
                     if excluded else ""), flush=True)
            if excluded and retry and self.weight_members():
                self.sync_weights(f"{reason}, without {excluded}", retry=False)
        self.registry.set("weights/excluded", float(len(self.weight_excluded)))

    def membership_changed(self) -> bool:
        return self.weight_members() != self.published_members

    def evaluate(self) -> float:
        from gspo_async.engines.base import SamplingSettings
        from gspo_async.tasks.evaluate import evaluate

        items = self.task.eval_items()
        if not items:
            return float("nan")
        max_new = self.cfg.learner.eval_max_new_tokens or self.cfg.response_length
        self.model.eval()
        with torch.no_grad():
            result = evaluate(self.eval_engine, self.tokenizer, items, self.reward.score,
                              SamplingSettings(temperature=0.0, max_new_tokens=max_new))
        return float(result["accuracy"])

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
            print(f"[learner] ledger write at step {self.step} failed ({err}); {len(records)} records are missing "
                  f"from {self.ledger.path}", flush=True)

    def checkpoint(self) -> None:
        from gspo_async.learner.checkpoint import save_checkpoint

        coordinator_state, ended = self.server.snapshot()
        self.record_ended(ended, sync=True)  # the ledger reaches this state before the checkpoint that holds it
        try:
            save_checkpoint(self.ckpt_root, step=self.step, version=self.version, model=self.model,
                            tokenizer=self.tokenizer,
                            trainer_state={"engine": self.engine.state_dict(),
                                           "running": self.trainer.running.state_dict(),
                                           "generator": self.trainer.generator.get_state()},
                            state={"coordinator": coordinator_state, "history": self.history},
                            keep=self.cfg.learner.checkpoint.keep, extra_writer=self._save_engine_files)
        except OSError as err:  # full disk, permissions: keep training, keep the previous checkpoint
            self.registry.inc("checkpoint/failures")
            print(f"[learner] checkpoint at step {self.step} failed ({err}); the previous one is intact. "
                  f"Free space under {self.ckpt_root} to resume saving.", flush=True)

    def _save_engine_files(self, tmp: Path) -> None:
        if self.distributed:  # DeepSpeed's partitioned optimiser state, written by every rank
            from gspo_async.learner.distributed import announce_save

            announce_save(tmp / "deepspeed")
            self.engine.save(tmp / "deepspeed")

    def fleet_metrics(self) -> dict[str, float]:
        """Fleet-wide numbers from the coordinator; per-actor rows go to the registry directly."""
        gen_rate, skew = 0.0, 0
        live = set()
        for a in self.server.actors():
            aid = a["actor_id"]
            live.add(aid)
            lag = max(self.version - int(a["version"]), 0)
            st = a.get("stats", {})
            self.registry.set_actor(aid, {
                "tokens_per_s": a["tokens_per_s"], "version": float(a["version"]), "version_lag": float(lag),
                "leases": float(a["leases"]), "tokens": float(st.get("tokens_total", 0.0)),
                "groups": float(st.get("groups_total", 0.0)), "busy_frac": float(st.get("busy_frac", 0.0)),
                "pending_groups": float(a.get("unacked", 0)), "heartbeat_age_s": float(a["last_contact_s"]),
                "alive": 1.0})
            gen_rate += a["tokens_per_s"]
            skew = max(skew, lag)
        for gone in self.known_actors - live:
            self.registry.forget_actor(gone)
        self.known_actors = live
        c = self.server.counters()
        lengths = lambda d: [float(d.get(i, d.get(str(i), 0))) for i in range(1 + max(map(int, d), default=-1))]
        return {"throughput/gen_tokens_per_s": gen_rate, "weights/version_skew_max": float(skew),
                "actors/alive": float(c["actors_alive"]), "buffer/groups": float(c["buffered"]),
                "leases/in_flight": float(c["in_flight"]), "staleness/dropped": float(c["dropped_stale"]),
                "staleness/dropped_tokens": float(c["dropped_stale_tokens"]),
                "drops/duplicate": float(c["groups_duplicate"]), "drops/invalid": float(c["groups_rejected"]),
                "drops/length_hist_kept": lengths(c["length_hist_kept"]),
                "drops/length_hist_dropped": lengths(c["length_hist_dropped"]),
                "leases/expired": float(c["leases_expired"]), **self.server.ages()}

    # ----- main loop -----
    def run(self) -> int:
        cfg = self.cfg
        total = cfg.learner.total_steps
        print(f"[learner] listening on {cfg.learner.host}:{self.server.port} (weights on port {self.publisher.port}); "
              f"run dir {self.run_dir}", flush=True)
        if cfg.telemetry.dashboard_port is not None:
            from gspo_async.dashboard.server import serve_dashboard

            self.dashboard = serve_dashboard(self.run_dir, port=cfg.telemetry.dashboard_port)
            print(f"[learner] dashboard: {self.dashboard.url}", flush=True)
        if cfg.telemetry.prometheus_port is not None:
            port = self.registry.serve_prometheus(port=cfg.telemetry.prometheus_port)
            print(f"[learner] prometheus metrics: http://127.0.0.1:{port}/metrics", flush=True)
        if self.step == 0 and cfg.learner.eval_every:
            acc = self.evaluate()
            self.registry.set("eval/accuracy", acc)
            self.registry.log(self.step)
            self.history.append({"step": 0, "eval/accuracy": acc})
            print(f"[learner] step 0: held-out accuracy {acc:.3f} (before RL)", flush=True)
        start = time.time()
        last_log = start
        busy = 0.0
        while self.step < total and not self.stop.is_set():
            batch: list = []
            wait_start = time.time()
            while len(batch) < cfg.rollout_batch_size and not self.stop.is_set():
                if self.membership_changed():
                    self.sync_weights("membership")
                batch += self.server.take_groups(cfg.rollout_batch_size - len(batch), timeout_s=0.2)
                if time.time() - last_log > cfg.telemetry.log_every_s:  # keep the dashboard live while waiting
                    self.registry.update(self.fleet_metrics())
                    self.registry.log(self.step)
                    last_log = time.time()
            if self.stop.is_set():
                break
            wait_s = time.time() - wait_start
            t0 = time.time()
            lags = [self.version - g.min_version for g in batch]
            for g, lag in zip(batch, lags):
                self.registry.observe("staleness/hist", lag)
                self.registry.observe("staleness/hist_tokens", lag, g.num_tokens)
            if self.distributed:
                from gspo_async.learner.distributed import broadcast_batch

                broadcast_batch(batch)
            metrics = self.trainer.train_step(batch)
            self.step += 1
            self.version += 1
            # Actors that apply the new weights may push groups of version v+1 before set_version below.
            self.server.allow_version(self.version)
            self.sync_weights("new version")
            self.server.set_version(self.version)
            self.server.mark_trained(batch)
            self.record_ended(self.server.drain_journal())
            train_s = time.time() - t0
            busy += train_s
            metrics.update({
                "train/step": float(self.step), "train/version": float(self.version),
                "staleness/mean": sum(lags) / len(lags), "staleness/max": float(max(lags)),
                "learner/wait_s": wait_s, "learner/busy_frac": busy / max(time.time() - start, 1e-9),
                "throughput/train_tokens_per_s": metrics["train/tokens"] / max(train_s, 1e-9),
                "throughput/samples_per_s": metrics["train/samples"] / max(train_s + wait_s, 1e-9),
                **self.last_sync, **self.fleet_metrics()})
            if cfg.learner.eval_every and (self.step % cfg.learner.eval_every == 0 or self.step == total):
                metrics["eval/accuracy"] = self.evaluate()
            self.registry.update({k: v for k, v in metrics.items() if _is_metric(k)})
            self.registry.inc("train/step")
            self.registry.inc("train/tokens", metrics["train/tokens"])
            self.registry.inc("train/samples", metrics["train/samples"])
            self.registry.inc("train/groups", float(len(batch)))
            self.registry.log(self.step)
            last_log = time.time()
            self.history.append({k: v for k, v in metrics.items() if isinstance(v, float)})
            self._print_progress(metrics, time.time() - start)
            if cfg.learner.checkpoint.every and self.step % cfg.learner.checkpoint.every == 0:
                self.checkpoint()
        self.server.close_intake()  # what is acknowledged as accepted from here on would miss the final state
        self.checkpoint()
        if self.distributed:
            from gspo_async.learner.distributed import broadcast_batch

            broadcast_batch(None)  # release the follower ranks
        self._write_summary(time.time() - start)
        return 0

    def _print_progress(self, m: dict[str, Any], elapsed: float) -> None:
        acc = f" | acc {m['eval/accuracy']:.3f}" if "eval/accuracy" in m else ""
        print(f"[learner] step {self.step}/{self.cfg.learner.total_steps} v{self.version} | "
              f"reward {m['reward/mean']:.3f}{acc} | staleness {m['staleness/mean']:.2f} (max {m['staleness/max']:.0f})"
              f" | gen {m['throughput/gen_tokens_per_s']:.0f} tok/s | train {m['throughput/train_tokens_per_s']:.0f}"
              f" tok/s | busy {100 * m['learner/busy_frac']:.0f}% | clip {m.get('train/clipfrac', 0):.3f} | "
              f"actors {m['actors/alive']:.0f} | {elapsed:.0f}s", flush=True)

    def _write_summary(self, elapsed: float) -> None:
        accs = [(h["step"] if "step" in h else h.get("train/step"), h["eval/accuracy"])
                for h in self.history if "eval/accuracy" in h]
        summary = {"steps": self.step, "version": self.version, "seconds": elapsed,
                   "eval_accuracy": accs, "accounting": self.server.accounting(), "counters": self.server.counters(),
                   "start_accuracy": accs[0][1] if accs else None, "final_accuracy": accs[-1][1] if accs else None}
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
        print(f"[learner] done: {self.step} steps in {elapsed:.0f}s; held-out accuracy "
              f"{summary['start_accuracy']} -> {summary['final_accuracy']}; checkpoints in {self.ckpt_root}; "
              f"metrics in {self.run_dir / 'metrics.jsonl'}", flush=True)

    def close(self) -> None:
        for part in (self.server, self.publisher, self.registry, self.dashboard, self.reward, self.ledger):
            if part is not None and hasattr(part, "close"):
                try:
                    part.close()
                except Exception as err:  # closing must not hide the run's own result
                    print(f"[learner] error while closing {type(part).__name__}: {err}", flush=True)


def run_follower(cfg: Config) -> int:
    """Ranks > 0 of a DeepSpeed learner: hold a share of the ZeRO state and follow rank 0's commands."""
    from gspo_async.learner.checkpoint import load_trainer_state
    from gspo_async.learner.distributed import broadcast_object, follower_loop
    from gspo_async.learner.backends import build_backend
    from gspo_async.learner.checkpoint import Checkpoint
    from gspo_async.learner.trainer import Trainer
    from gspo_async.models.loading import load_model_and_tokenizer

    ckpt_path = broadcast_object(None)  # same order of collectives as rank 0's Learner.__init__
    dtype = getattr(torch, cfg.model.dtype)
    model, tokenizer = load_model_and_tokenizer(Path(ckpt_path) / "model" if ckpt_path else cfg.model.path,
                                                dtype=dtype, device=cfg.learner.device)
    if cfg.model.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    ref_model = None
    if cfg.use_kl_loss or cfg.add_token_level_kl:
        ref_model, _ = load_model_and_tokenizer(cfg.model.path, dtype=dtype, device=cfg.learner.device)
        ref_model.requires_grad_(False)
    engine = build_backend(cfg, model)
    trainer = Trainer(cfg, engine, tokenizer.pad_token_id or 0, ref_model)
    if ckpt_path:
        state = load_trainer_state(Checkpoint(Path(ckpt_path), 0, 0, {}))
        engine.load_state_dict(state["engine"])
        engine.load(Path(ckpt_path) / "deepspeed")
        trainer.running.load_state_dict(state["running"])
        trainer.generator.set_state(state["generator"])
    follower_loop(trainer, StopFlag().install())
    return 0


def run_learner(cfg: Config, resume: bool = False) -> int:
    setup_process(cfg.learner.threads)
    if cfg.learner.engine == "deepspeed":
        from gspo_async.learner.distributed import init_learner_distributed

        rank, _ = init_learner_distributed(cfg)
        if rank > 0:
            return run_follower(cfg)
    learner = Learner(cfg, resume=resume)
    learner.stop.install()
    try:
        return learner.run()
    finally:
        learner.close()
