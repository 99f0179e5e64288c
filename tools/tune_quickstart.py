"""Can group RL lift the tiny model's held-out greedy accuracy within the quickstart's time budget?

A single-process experiment (one thread): build the tiny model (tokenizer, Llama config, supervised warm-up), measure
held-out greedy accuracy and pass@G, then run a minimal on-policy group-RL loop for a fixed wall time and print
greedy accuracy every `--eval-every-s` seconds of RL time (evaluation time is not counted). The loss is the
sequence-level policy gradient that GSPO reduces to on-policy (ratio 1): A_i = (r_i - mean_group) / (std_group +
1e-6), loss = -mean_i A_i * mean_t log pi(y_it), log pi taken at the sampling temperature. `--staleness K` trains
each rollout batch K updates after it was sampled, and `--clip-low/--clip-high` turn on GSPO's clipped sequence
ratio (behaviour logprobs from the engine), to see how the asynchronous system's lag and clip range change the curve.

    PYTHONPATH=. HF_HUB_OFFLINE=1 python tools/tune_quickstart.py --rl-seconds 240

It prints one JSON line per evaluation (prefix "EVAL") so runs can be compared with grep. The defaults of
`gspo_async.models.tiny.build_tiny` and of this script are the settings these runs picked (2 CPU cores, 1 thread):
2-digit addition, Llama 2 x 128 (0.54M parameters), warm-up until greedy accuracy on training prompts reaches 0.3
(seed 0: 550 steps, ~25 s; held-out greedy 0.35, pass@8 0.71-0.75), then lr 2e-4, G = 8, 16 prompts per step,
temperature 1, 8 new tokens: greedy accuracy 0.35 -> 0.81 after 30 s (407 steps) and 0.875 after 240 s. Starting
the RL earlier, from a model that is almost never right (greedy 0.04, pass@8 0.2-0.35), gained under 10 points in
2 minutes; lr 1e-3 from there collapsed to 0.
"""

from __future__ import annotations

import argparse
import collections
import itertools
import json
import os
import tempfile
import time

import torch


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="arithmetic")
    p.add_argument("--task-options", default="{}", help="JSON dict, e.g. '{\"digits\": 2}'")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--hidden-size", type=int, default=None)
    p.add_argument("--layers", type=int, default=None)
    p.add_argument("--heads", type=int, default=None)
    p.add_argument("--warmup-steps", type=int, default=None, help="most warm-up steps")
    p.add_argument("--warmup-target-accuracy", type=float, default=None, help="stop the warm-up at this accuracy")
    p.add_argument("--warmup-lr", type=float, default=None)
    p.add_argument("--warmup-batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=2e-4, help="RL learning rate (AdamW)")
    p.add_argument("--group-size", type=int, default=8, help="G responses per prompt")
    p.add_argument("--prompts-per-step", type=int, default=16)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--max-new-tokens", type=int, default=8)
    p.add_argument("--staleness", type=int, default=0,
                   help="train on rollouts made K updates earlier (emulates the asynchronous actors)")
    p.add_argument("--clip-low", type=float, default=None, help="GSPO eps_low (default: no clipping)")
    p.add_argument("--clip-high", type=float, default=None, help="GSPO eps_high (default: no clipping)")
    p.add_argument("--rl-seconds", type=float, default=240.0)
    p.add_argument("--eval-every-s", type=float, default=30.0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="model directory (default: a temporary one)")
    p.add_argument("--reuse", action="store_true", help="reuse a model in --out built with the same settings")
    return p.parse_args()


def response_logprobs(model, prompts: list[list[int]], responses: list[list[int]], temperature: float, pad: int):
    """Per-token log pi at temperature T for each (prompt, response), as a [B, R] tensor and its [B, R] mask."""
    seqs = [p + r for p, r in zip(prompts, responses)]
    width = max(len(s) for s in seqs)
    rlen = max(len(r) for r in responses)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    attn = torch.zeros_like(ids)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        attn[i, : len(s)] = 1
    logp = torch.log_softmax(model(input_ids=ids, attention_mask=attn).logits.float() / temperature, dim=-1)
    out = torch.zeros((len(seqs), rlen))
    mask = torch.zeros((len(seqs), rlen))
    for i, (p, r) in enumerate(zip(prompts, responses)):
        pos = torch.arange(len(p) - 1, len(p) - 1 + len(r))
        out[i, : len(r)] = logp[i, pos, torch.tensor(r)]
        mask[i, : len(r)] = 1.0
    return out, mask


def train_step(model, opt, batch: list, args: argparse.Namespace, pad: int) -> float:
    """One update on (prompt, response, behaviour logprobs, advantage) tuples; returns the share of clipped sequences.

    Sequence ratio s_i = exp(mean_t(log pi - log mu)) (GSPO); loss = -sum_i min(s_i A_i, clip(s_i) A_i) / (P * G).
    On-policy without clipping this is the plain sequence-level policy gradient.
    """
    model.train()
    prompts, responses, behaviour, adv = zip(*batch)
    logp, mask = response_logprobs(model, list(prompts), list(responses), args.temperature, pad)
    mu = torch.zeros_like(logp)
    for i, lp in enumerate(behaviour):
        mu[i, : len(lp)] = torch.tensor(lp)
    log_ratio = ((logp - mu) * mask).sum(1) / mask.sum(1)
    ratio = torch.exp(log_ratio.clamp(max=10.0))
    a = torch.tensor(adv)
    low = 1.0 - (args.clip_low if args.clip_low is not None else float("inf"))
    high = 1.0 + (args.clip_high if args.clip_high is not None else float("inf"))
    clipped_ratio = ratio.clamp(min=max(low, 0.0), max=high)
    surrogate = torch.minimum(ratio * a, clipped_ratio * a)
    loss = -surrogate.sum() / (args.prompts_per_step * args.group_size)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    model.eval()
    return ((ratio * a) > (clipped_ratio * a)).float().mean().item()


def main() -> None:
    args = parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    torch.set_num_threads(args.threads)
    from gspo_async.engines.base import SamplingSettings
    from gspo_async.engines.hf import HFEngine
    from gspo_async.tasks.scoring import RewardRunner
    from gspo_async.models.loading import load_model_and_tokenizer
    from gspo_async.models.tiny import TINY_META, build_tiny
    from gspo_async.tasks import get_task
    from gspo_async.tasks.evaluate import evaluate
    from gspo_async.tasks.prompting import encode_prompt

    task_options = json.loads(args.task_options)
    build_kwargs = {
        k: getattr(args, k)
        for k in ("hidden_size", "layers", "heads", "warmup_steps", "warmup_target_accuracy", "warmup_lr",
                  "warmup_batch_size")
        if getattr(args, k) is not None
    }
    out = args.out or tempfile.mkdtemp(prefix="tiny-")
    t_start = time.monotonic()
    build_tiny(out, seed=args.seed, task=args.task, task_options=task_options, overwrite=not args.reuse,
               num_threads=args.threads, **build_kwargs)  # fmt: skip
    build_s = time.monotonic() - t_start
    meta = json.loads(open(os.path.join(out, TINY_META)).read())
    print(f"BUILD {json.dumps({'build_s': round(build_s, 1), **meta})}", flush=True)

    model, tok = load_model_and_tokenizer(out)
    task = get_task(args.task, **task_options)
    reward = RewardRunner(task.reward_fn)
    engine = HFEngine((model, tok), seed=args.seed + 1)
    evals = task.eval_items()
    greedy = SamplingSettings(temperature=0.0, max_new_tokens=args.max_new_tokens)
    sample = SamplingSettings(temperature=args.temperature, max_new_tokens=args.max_new_tokens)

    def report(step: int, rl_s: float, extra: dict) -> float:
        g = evaluate(engine, tok, evals, reward.score, greedy)
        row = {"step": step, "rl_s": round(rl_s, 1), "greedy_acc": g["accuracy"], **extra}
        print(f"EVAL {json.dumps(row)}", flush=True)
        return g["accuracy"]

    s = evaluate(engine, tok, evals, reward.score, sample, n=args.group_size)
    start_acc = report(0, 0.0, {"sample_acc": s["accuracy"], f"pass_at_{args.group_size}": s["pass_at_n"]})

    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.98), weight_decay=0.0)
    stream = task.train_items(args.seed + 7)
    pending: collections.deque = collections.deque()  # rollout batches waiting `staleness` updates
    rl_s, step, next_eval, rewards_seen, clipped = 0.0, 0, args.eval_every_s, [], []
    gen_s = train_s = 0.0
    while rl_s < args.rl_seconds:
        t0 = time.monotonic()
        items = list(itertools.islice(stream, args.prompts_per_step))
        prompts = [encode_prompt(tok, it.prompt) for it in items]
        groups = engine.generate(prompts, args.group_size, sample)
        batch = []  # (prompt ids, response ids, behaviour logprobs, advantage)
        for it, p, group in zip(items, prompts, groups):
            texts = [tok.decode(g.tokens, skip_special_tokens=True) for g in group]
            r = torch.tensor(reward.score(it.prompt, texts, it.answer, it.meta))
            rewards_seen.append(r.mean().item())
            a = (r - r.mean()) / (r.std() + 1e-6)
            batch += [(p, g.tokens, g.logprobs, ai) for g, ai in zip(group, a.tolist()) if ai != 0.0]
        pending.append(batch)
        t1 = time.monotonic()
        if len(pending) > args.staleness:
            batch = pending.popleft()
            if batch:
                clipped.append(train_step(model, opt, batch, args, tok.pad_token_id))
        step += 1
        t2 = time.monotonic()
        gen_s += t1 - t0
        train_s += t2 - t1
        rl_s += t2 - t0
        if rl_s >= next_eval or rl_s >= args.rl_seconds:
            recent = rewards_seen[-50 * args.prompts_per_step :]
            report(step, rl_s, {"train_reward": round(sum(recent) / len(recent), 3),
                                "clipfrac_seq": round(sum(clipped) / max(1, len(clipped)), 3),
                                "gen_s": round(gen_s, 1), "train_s": round(train_s, 1)})  # fmt: skip
            rewards_seen, clipped = [], []
            next_eval += args.eval_every_s
    final = evaluate(engine, tok, evals, reward.score, greedy)["accuracy"]
    print(f"RESULT start={start_acc:.3f} final={final:.3f} gain={100 * (final - start_acc):+.1f} points "
          f"steps={step} build_s={build_s:.1f}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
