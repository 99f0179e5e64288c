"""TRL's GRPOTrainer configured as GSPO, trained for a fixed wall-clock budget; run by tools/bench/peer_trl.py
inside its own virtual environment (TRL installed there, torch pinned to the same CPU build).

It saves the policy as a Hugging Face directory every `--snapshot-every-s` seconds of its clock; the clock starts
when this process starts (imports and model loading count, as they do for a user) and stops while a snapshot is
written. Evaluation happens afterwards, in peer_trl.py, with the same code for both systems.

The TRL settings are those a user would pick to run GSPO with TRL (TRL's GSPO documentation):
importance_sampling_level "sequence", epsilon 3e-4 / epsilon_high 4e-4, loss_type "grpo", beta 0, G generations
per prompt, `prompts_per_rollout` prompts per generation round split into `steps_per_rollout` optimiser steps,
temperature 1, constant learning rate, no vLLM.
"""

from __future__ import annotations

import time

STARTED = time.monotonic()

import argparse  # noqa: E402
import json  # noqa: E402
from pathlib import Path  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="Hugging Face model directory (the starting policy)")
    p.add_argument("--train", required=True, help="JSONL of {prompt, answer, meta}: the training prompts, in order")
    p.add_argument("--reward", required=True, help="reward spec as gspo-async's task.reward (e.g. exact, mod:fn)")
    p.add_argument("--out", required=True, help="directory for snapshots and the run's JSON")
    p.add_argument("--budget-s", type=float, required=True)
    p.add_argument("--snapshot-every-s", type=float, required=True)
    p.add_argument("--lr", type=float, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--generations", type=int, default=8)
    p.add_argument("--prompts-per-rollout", type=int, default=16)
    p.add_argument("--steps-per-rollout", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=8)
    args = p.parse_args()

    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from gspo_async.tasks.prompting import encode_prompt
    from gspo_async.tasks.scoring import load_reward_fn

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(args.model, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    records = [json.loads(line) for line in Path(args.train).read_text().splitlines() if line.strip()]

    # TRL tokenizes prompt text without special tokens; gspo-async adds the tokenizer's own (a leading BOS for the
    # tiny model). Give TRL the same ids: prefix what encode_prompt adds, then check one prompt token for token.
    prefix = tokenizer.bos_token if tokenizer.bos_token and encode_prompt(tokenizer, "1")[0] == tokenizer.bos_token_id \
        else ""
    sample = records[0]["prompt"]
    trl_ids = tokenizer(prefix + sample, add_special_tokens=False)["input_ids"]
    if list(trl_ids) != encode_prompt(tokenizer, sample):
        raise SystemExit(f"TRL would see other prompt ids than gspo-async for {sample!r}: {trl_ids} vs "
                         f"{encode_prompt(tokenizer, sample)}")
    dataset = Dataset.from_list([{"prompt": prefix + r["prompt"], "answer": r["answer"],
                                  "meta": json.dumps(r.get("meta") or {})} for r in records])
    score = load_reward_fn(args.reward)

    def reward(prompts, completions, answer, meta, **_):
        return [float(score(p[len(prefix):], c, a, json.loads(m))) for p, c, a, m in zip(prompts, completions,
                                                                                           answer, meta)]

    per_step = args.prompts_per_rollout * args.generations // args.steps_per_rollout
    config = GRPOConfig(
        output_dir=str(out / "trainer"), importance_sampling_level="sequence", epsilon=3e-4, epsilon_high=4e-4,
        loss_type="grpo", beta=0.0, num_generations=args.generations, per_device_train_batch_size=per_step,
        steps_per_generation=args.steps_per_rollout, temperature=1.0, top_p=1.0, top_k=0,
        max_completion_length=args.max_new_tokens, learning_rate=args.lr, lr_scheduler_type="constant",
        warmup_steps=0, use_vllm=False, use_cpu=True, max_steps=10**7, save_strategy="no", report_to="none",
        logging_steps=10**9, seed=args.seed, shuffle_dataset=False, disable_dropout=True, bf16=False)
    snapshots: list[dict] = []
    paused = [0.0]

    def clock() -> float:
        return time.monotonic() - STARTED - paused[0]

    def snapshot(step: int) -> None:
        t_start = time.monotonic()
        at = clock()
        path = out / f"snapshot-{len(snapshots):04d}"
        model.save_pretrained(path, safe_serialization=True)
        tokenizer.save_pretrained(path)
        snapshots.append({"clock_s": at, "step": step, "path": str(path)})
        paused[0] += time.monotonic() - t_start

    class Budget(TrainerCallback):
        def on_step_end(self, _args, state, control, **kwargs):
            if clock() >= args.snapshot_every_s * len(snapshots):
                snapshot(state.global_step)
            if clock() >= args.budget_s:
                control.should_training_stop = True
            return control

    trainer = GRPOTrainer(model=model, reward_funcs=reward, args=config, train_dataset=dataset,
                          processing_class=tokenizer, callbacks=[Budget()])
    snapshot(0)
    trainer.train()
    if snapshots[-1]["step"] != trainer.state.global_step:
        snapshot(trainer.state.global_step)
    (out / "trl_run.json").write_text(json.dumps({"snapshots": snapshots, "lr": args.lr,
                                                  "optimizer_steps": trainer.state.global_step,
                                                  "completions_per_step": per_step}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
