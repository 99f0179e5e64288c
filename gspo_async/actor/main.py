"""The actor process: lease prompts, generate a group per prompt, score it, push it; take new weights between batches.

Everything an actor needs comes from the learner's welcome: the run config, the model's config and tokenizer
files, and the weight store's address. The model is built from its config and filled by the first weight
broadcast, so an actor on another machine needs nothing but ``--learner HOST:PORT``.

Threads: the :class:`ActorClient` owns the ZeroMQ socket (heartbeats, acks, resends) in its own thread; a weight
thread receives broadcasts into fresh buffers; this loop applies the newest received version at the safe point
between generation batches, so a response never mixes weights and each group carries one version.

Signals: SIGTERM (or the first SIGINT) finishes the current batch, pushes it, waits for its acks and returns any
unstarted leases; a second SIGINT exits at once.
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Optional

import numpy as np

from gspo_async.process import StopFlag, setup_logging, setup_process
from gspo_async.protocol.messages import ProtocolError


log = logging.getLogger(__name__)

LEARNER_SILENT_S = 3.0  # the learner counts as gone after this long without a message (it answers every heartbeat)
STOP_ACK_WAIT_S = 0.5  # how long a stopping actor waits for acks from a silent learner (they will not come)


class Actor:
    def __init__(self, learner: str, actor_id: Optional[str], local_overrides: list[str],
                 config_path: Optional[str], run_dir: Optional[str]):
        from gspo_async.protocol.client import ActorClient

        self.actor_id = actor_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:4]}"
        self.learner = learner
        self.local_overrides = local_overrides
        self.config_path = config_path
        self.run_dir = run_dir
        self.stop = StopFlag()
        self.engine = None
        self.weights = None  # WeightReceiverThread
        self.stats = {"tokens_per_s": 0.0, "groups_per_s": 0.0, "reward_mean": 0.0, "version": -1.0,
                      "unacked": 0.0, "groups_total": 0.0, "tokens_total": 0.0, "reward_errors": 0.0,
                      "busy_frac": 0.0}
        self.client = ActorClient(learner, self.actor_id, engine=self._local_engine_name(), curve=self._curve_keys(),
                                  stats_fn=lambda: dict(self.stats))
        self.session: Optional[str] = None
        self._announced_weights = False
        self._preload: Optional[threading.Thread] = None  # importing transformers while the learner starts

    def _local_engine_name(self) -> str:
        """The engine this actor will run: its own override, else whatever the learner's config says."""
        for o in _actor_overrides(self.local_overrides):
            if o.split("=")[0] == "actor.engine":
                return o.split("=", 1)[1]
        return "hf"  # the learner's config decides in the end; this only labels the registration

    def _curve_keys(self):
        if not self.config_path and not any("curve" in o.split("=")[0] for o in self.local_overrides):
            return None
        from gspo_async.config import load_config

        local = load_config(self.config_path, _actor_overrides(self.local_overrides)).actor.curve
        if not local.secret_key:
            return None
        from gspo_async.protocol.auth import CurveClientKeys

        return CurveClientKeys.load(local.secret_key, local.server_public_key)

    # ----- setup from the welcome -----
    def _configure(self, welcome) -> None:
        from gspo_async.config import apply_overrides, config_from_dict, load_config
        from gspo_async.tasks import reward_runner_from_config, task_from_config

        raw = dict(welcome.config)
        if self.config_path:  # local actor settings (device, engine, keys) win over the learner's
            raw["actor"] = load_config(self.config_path).to_dict()["actor"]
        raw = apply_overrides(raw, _actor_overrides(self.local_overrides))
        self.cfg = config_from_dict(raw, source="learner welcome")
        setup_process(self.cfg.actor.threads)
        from gspo_async.weights import WeightReceiverThread, WeightSubscriber

        # The weight store first: a learner that went away again fails here (ConnectionError), before any work.
        if self.weights is not None:
            self.weights.stop()
            self.weights = None
        host, port = welcome.weight_store
        backend = self.cfg.learner.weight_sync.resolve_backend(self.cfg.actor.device)
        # the id the learner assigned (another live process may hold the requested one): broadcasts name it
        subscriber = WeightSubscriber(host, int(port), self.client.actor_id,
                                      timeout_s=self.cfg.learner.weight_sync.timeout_s,
                                      device=self.cfg.actor.device, backend=backend)
        self.weights = WeightReceiverThread(subscriber).start()  # holds the newest version until the engine is up
        model_dir = Path(tempfile.mkdtemp(prefix=f"gspo-actor-{self.actor_id}-"))
        for name, data in welcome.model_files.items():
            (model_dir / Path(name).name).write_bytes(data)
        if self._preload is not None:
            # transformers' lazy modules are not safe to import from two threads at once ("cannot import name
            # 'AutoConfig'"): the engine build starts after the background import has finished
            self._preload.join()
        if self.engine is not None:
            self.engine.close()  # a reconfigure (learner restart) replaces it
        self.engine = self._build_engine(model_dir)
        if getattr(self, "reward", None) is not None:
            self.reward.close()  # a reconfigure (learner restart) must not leak the old worker pool
        self.reward = reward_runner_from_config(self.cfg.task, task_from_config(self.cfg.task))
        self.session = welcome.session

    def _reconfigure(self) -> bool:
        """Set up for a restarted learner (its config, model files and weight store). Returns False when its weight
        store did not answer (it stopped again, or is still starting): the loop tries again after the client's
        next registration, and the actor keeps running meanwhile."""
        print(f"[actor {self.actor_id}] learner restarted; re-configuring", flush=True)
        try:
            self._configure(self.client.welcome)
            return True
        except ConnectionError as err:
            print(f"[actor {self.actor_id}] could not set up with the restarted learner: {err}; waiting for it to "
                  "answer again", flush=True)
            self.stop.event.wait(1.0)  # the client re-registers on its own thread; no busy retry meanwhile
            return False

    def _wait_for_weights(self, wait_s: float) -> None:
        """Wait up to `wait_s` for a version to apply; a receiver that ended (the learner went away) is not polled
        (that would spin): the loop waits for the next learner instead."""
        if self.weights is None or self.weights.error is not None:
            self.stop.event.wait(wait_s)
        else:
            self.apply_pending_weights(wait_s=wait_s)

    def _build_engine(self, model_dir: Path):
        from gspo_async.engines.factory import build_engine

        return build_engine(self.cfg, model_dir, seed=self.cfg.actor.seed + _stable_hash(self.actor_id))

    # ----- weights -----
    def apply_pending_weights(self, wait_s: float = 0.0) -> bool:
        """Apply the newest received version (waiting up to `wait_s` for one). True if one was applied."""
        if self.weights is None:
            return False
        received = self.weights.wait(wait_s) if wait_s > 0 else self.weights.take()
        if received is None:
            return False
        self.engine.apply_weights(received.tensors, received.version)
        self.stats["version"] = float(received.version)
        self.client.applied_version = received.version
        if received.checksum is not None and hasattr(self.engine, "model"):
            # CPU receivers already hash what arrived; hashing what the engine now holds proves the apply too.
            from gspo_async.weights import named_weights, state_checksum

            held = state_checksum(named_weights(self.engine.model))
            if held != received.checksum:
                log.error("[actor %s] applied version %d checksum %s MISMATCH with received %s", self.actor_id,
                          received.version, held, received.checksum)
            else:  # one line per version: debug only (GSPO_LOG_LEVEL=DEBUG)
                log.debug("[actor %s] applied version %d checksum %s", self.actor_id, received.version, held)
        if not self._announced_weights:
            self._announced_weights = True
            print(f"[actor {self.actor_id}] applied version {received.version} (first weights; every version's "
                  "checksum is logged at debug level, GSPO_LOG_LEVEL=DEBUG)", flush=True)
        return True

    # ----- the loop -----
    def run(self) -> int:
        from gspo_async.engines.base import SamplingSettings

        from gspo_async.protocol.client import LearnerUnavailable

        if self._local_engine_name() == "hf":  # while the learner starts up, not after its welcome
            self._preload = threading.Thread(target=_preload_transformers, name="preload-transformers", daemon=True)
            self._preload.start()
        try:
            welcome = self.client.connect(timeout_s=60, stop=self.stop.event)
        except LearnerUnavailable:
            if not self.stop.is_set():
                raise
            print(f"[actor {self.actor_id}] stopped ({self.stop.reason}) before a learner answered; nothing to keep",
                  flush=True)
            return 0
        self._configure(welcome)  # a first learner whose weight store does not answer is a setup error: raise
        print(f"[actor {self.actor_id}] connected to {self.learner}; engine {self.cfg.actor.engine}; waiting for "
              "weights", flush=True)
        window: list[tuple[float, int, int]] = []  # (time, tokens, groups) for recent rates
        started, busy_s = time.time(), 0.0
        while not self.stop.is_set():
            if self.client.learner_session != self.session:  # the learner restarted: new config, new weight store
                if not self._reconfigure():
                    continue
            if self.engine.version < 0:  # generate nothing before this learner's first weights
                self._wait_for_weights(0.5)
                continue
            cfg = self.cfg
            sampling = SamplingSettings(temperature=cfg.sampling.temperature, top_p=cfg.sampling.top_p,
                                        top_k=cfg.sampling.top_k, max_new_tokens=cfg.response_length)
            self.apply_pending_weights()
            # The learner holds the request until admission opens (a new version), so no polling loop here.
            # a silent learner will not answer: ask in short waits so that a stop is seen within a second
            silent = self.client.learner_silent_s > LEARNER_SILENT_S
            leases = self.client.lease(cfg.actor.prompts_per_lease, timeout_s=0.5 if silent else 10, wait_s=5,
                                       stop=self.stop.event)
            if not leases:
                self.apply_pending_weights(wait_s=0.5)
                continue
            self.apply_pending_weights()  # admission opened by a new version: generate with its weights
            if any(lease.eval_set for lease in leases):  # a reply holds one kind: evaluation prompts
                self._serve_evaluation([lease for lease in leases if lease.eval_set])
                leases = [lease for lease in leases if not lease.eval_set]
                if not leases:
                    continue
            t0 = time.time()
            groups = self.engine.generate([lease.tokens.tolist() for lease in leases],
                                          cfg.num_return_sequences_in_group, sampling)
            gen_s = time.time() - t0
            tokens = self._push(self._make_groups(leases, groups, gen_s), leases)
            now = time.time()
            window = [w for w in window if now - w[0] < 30] + [(now, tokens, len(groups))]
            span = max(now - window[0][0] + gen_s, 1e-9) if len(window) > 1 else max(gen_s, 1e-9)
            self.stats.update(tokens_per_s=sum(w[1] for w in window) / span,
                              groups_per_s=sum(w[2] for w in window) / span,
                              unacked=float(self.client.unacked()),
                              tokens_total=self.stats["tokens_total"] + tokens,
                              groups_total=self.stats["groups_total"] + len(groups),
                              reward_errors=float(sum(self.reward.errors.values())),
                              reward_last_error=(self.reward.last_error or "").encode()[:240].decode(errors="ignore"),
                              busy_frac=(busy_s := busy_s + gen_s) / max(now - started, 1e-9))
        self._finish()
        return 0

    def _finish(self) -> None:
        """Wait for the acknowledgements of pushed groups (at most STOP_ACK_WAIT_S when the learner is silent,
        so a stop never hangs on a learner that is gone) and say what is left undelivered."""
        silent_s = self.client.learner_silent_s
        gone = silent_s > LEARNER_SILENT_S
        pending = self.client.unacked()
        print(f"[actor {self.actor_id}] stopping ({self.stop.reason}); "
              + (f"waiting for the acks of {pending} group(s)" if pending else "nothing unacknowledged")
              + (f" (the learner has been silent for {silent_s:.0f} s)" if gone else ""), flush=True)
        if pending:
            # A live learner acks within a heartbeat or two; one that stops answering while we wait (it was
            # stopped too) is given up on LEARNER_SILENT_S after its last word, not after the 30 s bound.
            deadline = time.monotonic() + (STOP_ACK_WAIT_S if gone else 30)
            while not self.client.wait_acked(timeout_s=min(0.25, max(0.0, deadline - time.monotonic()))):
                if time.monotonic() >= deadline or self.client.learner_silent_s > LEARNER_SILENT_S:
                    break
        left = self.client.unacked()
        if left:
            print(f"[actor {self.actor_id}] stopped with {left} unacknowledged group(s) kept until exit and not "
                  "delivered (no learner answered); their prompts go back to the queue when the learner's leases "
                  "expire", flush=True)

    def _serve_evaluation(self, leases) -> None:
        """Answer evaluation prompts with this actor's engine: learner.eval_n responses each at the evaluation
        sampling (tasks/evaluate.py), scored here and pushed as groups. The learner counts them as evaluation by
        their prompt ids (learner/evaluation.py) and never trains on them; they stay out of the training rates."""
        from gspo_async.tasks.evaluate import evaluation_sampling

        t0 = time.time()
        groups = self.engine.generate([lease.tokens.tolist() for lease in leases], self.cfg.learner.eval_n,
                                      evaluation_sampling(self.cfg))
        self._push(self._make_groups(leases, groups, time.time() - t0, training=False), leases,
                   group_size=self.cfg.learner.eval_n)

    def _push(self, groups, leases, group_size: Optional[int] = None) -> int:
        """Push each group (a group that cannot be sent is reported and its prompt returned); returns the
        response tokens pushed. group_size: responses per group when not G (evaluation)."""
        tokens = 0
        for group, lease in zip(groups, leases):
            tokens += group.num_tokens
            try:
                self.client.push(group, group_size=group_size)
            except ProtocolError as err:  # our own bug or a bad reward value: report, return the prompt
                print(f"[actor {self.actor_id}] group for prompt {lease.prompt_id} not sendable: {err}", flush=True)
                self.client.return_leases([lease.prompt_id])
        return tokens

    def _make_groups(self, leases, groups, gen_s: float, training: bool = True):
        """Score the G responses to each lease (all groups of the batch at once, in parallel on the reward
        workers) and wrap each as a RolloutGroup with the engine's version spans and its reward figures."""
        from gspo_async.protocol.messages import Response, RolloutGroup

        t0 = time.time()
        decode = self.engine.tokenizer.decode
        jobs = [(decode(lease.tokens.tolist(), skip_special_tokens=True),
                 [decode(g.tokens, skip_special_tokens=True) for g in gens], lease.answer, lease.meta)
                for lease, gens in zip(leases, groups)]
        scores = self.reward.score_groups(jobs)
        reward_s = (time.time() - t0) / max(len(jobs), 1)
        out = []
        for lease, gens, score in zip(leases, groups, scores):
            if training:  # evaluation rewards stay out of the actor's training statistics
                self.stats["reward_mean"] = float(np.mean(score.rewards))
            responses = [Response(tokens=np.asarray(g.tokens, dtype=np.int32),
                                  logprobs=np.asarray(g.logprobs, dtype=np.float32), reward=float(r),
                                  finish_reason=g.finish_reason,
                                  version_spans=np.asarray(g.version_spans, dtype=np.int32).reshape(-1, 3))
                         for g, r in zip(gens, score.rewards)]
            # the group's map holds at most max_items entries: the timings first, then the reward figures
            figures = score.figures(max_items=_MAX_REWARD_FIGURES)
            out.append(RolloutGroup(group_id=f"{self.actor_id}:{lease.prompt_id}:{uuid.uuid4().hex[:8]}",
                                    prompt_id=lease.prompt_id, actor_id=self.actor_id, prompt_tokens=lease.tokens,
                                    responses=responses, timings={"gen_s": gen_s, "reward_s": reward_s, **figures}))
        return out

    def close(self) -> None:
        try:
            self.client.close()
        finally:
            if self.weights is not None:
                self.weights.stop()
            if self.engine is not None:
                self.engine.close()
            if getattr(self, "reward", None) is not None:
                self.reward.close()


_MAX_REWARD_FIGURES = 48  # of the 64 entries a group's timings map may hold


def _preload_transformers() -> None:
    """Import the architecture-independent transformers stack (model loading, generation, the auto classes) in the
    background while the actor waits for the learner's welcome: those imports cost seconds of a core, and after
    the welcome they would delay the first generation. The engine build waits for this thread to end (see
    Actor._configure), then imports the same modules and reports any failure with its context."""
    try:
        import transformers.generation.utils  # noqa: F401
        import transformers.modeling_utils  # noqa: F401
        import transformers.models.auto.modeling_auto  # noqa: F401
    except Exception as err:  # noqa: BLE001 - the engine build imports these again and raises there
        log.debug("[actor] preloading transformers failed: %s", err)


def _actor_overrides(overrides: list[str]) -> list[str]:
    """Command-line overrides of an actor address its own section: `device=cuda` means `actor.device=cuda`."""
    return [o if o.startswith("actor.") else f"actor.{o}" for o in overrides]


def _stable_hash(text: str) -> int:
    """A small per-actor seed offset that is the same in every run (Python's hash() is salted)."""
    return int.from_bytes(text.encode()[-8:].rjust(8, b"\0"), "little") % 1_000_003


def run_actor(learner: str, actor_id: Optional[str] = None, config_path: Optional[str] = None,
              overrides: Optional[list[str]] = None, run_dir: Optional[str] = None) -> int:
    setup_process(1)
    setup_logging(f"actor {actor_id}" if actor_id else "actor")
    actor = Actor(learner, actor_id, overrides or [], config_path, run_dir)
    actor.stop.install()
    try:
        return actor.run()
    finally:
        actor.close()
