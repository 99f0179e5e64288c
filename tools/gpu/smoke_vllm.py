"""The first GPU run of the vLLM actor: one `VLLMEngine` on a small random Qwen2 model takes weights from the
learner's side twice, each update landing in the middle of a generation (update_mode keep, then abort), and its
log-probabilities are compared in bf16 with the learner's own computation after each. One JSON comes out, which
docs/benchmarks.md renders (`render_markdown`).

  parity     the actor's logprob of every sampled token against the learner's (`token_logprobs_from_hidden` over
             the same weights, bf16 model, fp32 log-softmax at the sampling temperature): max and mean |diff|
  keep       an update while requests run: none is lost, some responses span two versions, pause length
  abort      the same in abort mode: the requests are resubmitted, and their tokens after the switch match the
             learner's logprobs under the new weights (they were re-prefilled)

The model is random (nothing is downloaded) and vLLM starts from its `dummy` weights; the first weights come by
`apply_weights`, as for a real actor. The weight path is the default `weight_transport: auto` (CUDA IPC here).

    PYTHONPATH=. python tools/gpu/smoke_vllm.py --out "$OUT/vllm_smoke.json"
    PYTHONPATH=. python tools/gpu/smoke_vllm.py --fake --out /tmp/vllm_smoke.json   # CPU dry run over the double
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[2]
SHAPES = {  # a small Qwen2 for the GPU; a tiny one for dry runs on the CPU double
    "small": dict(hidden_size=512, intermediate_size=1376, num_hidden_layers=4, num_attention_heads=8,
                  num_key_value_heads=2, vocab_size=4096, tie_word_embeddings=False),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=256, tie_word_embeddings=False),
}
TEMPERATURE = 1.0


def learner_logprobs(model: Any, prompt: list[int], tokens: list[int], temperature: float) -> torch.Tensor:
    """The learner's logprobs of `tokens` after `prompt`: its decoder's hidden states through the chunked
    log-softmax the trainer uses."""
    from gspo_async.algo.logprobs import token_logprobs_from_hidden

    device = next(model.parameters()).device
    ids = torch.tensor([prompt + tokens], device=device)
    with torch.no_grad():
        hidden = model.model(input_ids=ids).last_hidden_state[0, len(prompt) - 1:-1]
        lp, _ = token_logprobs_from_hidden(hidden, model.lm_head.weight, ids[0, len(prompt):],
                                           temperature=temperature)
    return lp.float().cpu()


def parity(prompts: list[list[int]], groups: list, model: Any, start_of: Any = None) -> dict[str, Any]:
    """max / mean |actor - learner| over every response token (from `start_of(g)` on, when given)."""
    diffs = []
    for prompt, group in zip(prompts, groups):
        for g in group:
            start = start_of(g) if start_of else 0
            if start is None or len(g.tokens) <= start:
                continue
            ref = learner_logprobs(model, prompt, g.tokens, TEMPERATURE)[start:]
            diffs.append((torch.tensor(g.logprobs[start:]) - ref).abs())
    if not diffs:
        return {"tokens": 0, "max_abs": None, "mean_abs": None}
    d = torch.cat(diffs)
    return {"tokens": int(d.numel()), "max_abs": float(d.max()), "mean_abs": float(d.mean())}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fake", action="store_true", help="CPU dry run over the test double (numbers mean nothing)")
    ap.add_argument("--vllm-version", default="0.24.0", help="emulated version with --fake")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--max-new-tokens", type=int, default=256, help="response length in the in-flight updates")
    ap.add_argument("--shape", choices=sorted(SHAPES), default="small")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--n", type=int, default=4, help="responses per prompt")
    ap.add_argument("--tolerance", type=float, default=0.05, help="allowed mean |logprob diff| in bf16")
    args = ap.parse_args()
    os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
    t_start = time.perf_counter()

    from transformers import AutoModelForCausalLM, Qwen2Config

    from gspo_async.config import VLLMConfig
    from gspo_async.engines.base import SamplingSettings
    from gspo_async.engines.vllm import VLLMEngine

    cuda = torch.cuda.is_available() and not args.fake
    device, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    api = None
    if args.fake:
        from gspo_async.testing.vllm_fake import fake_api

        api = fake_api(args.vllm_version)
    model_dir = Path(tempfile.mkdtemp(prefix="smoke-vllm-"))
    shape = SHAPES[args.shape]
    cfg = Qwen2Config(**shape, max_position_embeddings=4096, bos_token_id=1, eos_token_id=2,
                      architectures=["Qwen2ForCausalLM"], dtype="bfloat16")
    cfg.save_pretrained(model_dir)
    learners = []  # the learner's model at versions 0, 1, 2 (three random draws)
    for seed in (0, 1, 2):
        torch.manual_seed(seed)
        learners.append(AutoModelForCausalLM.from_config(cfg, dtype=dtype).to(device).eval())
    weights = [{k: v.detach() for k, v in m.named_parameters()} for m in learners]
    prompts = torch.randint(3, shape["vocab_size"], (args.prompts, 16), generator=torch.Generator().manual_seed(0)).tolist()
    sampling = SamplingSettings(temperature=TEMPERATURE, max_new_tokens=args.max_new_tokens)

    report: dict[str, Any] = {"fake": args.fake, "torch": torch.__version__, "shape": shape,
                              "device": torch.cuda.get_device_name() if cuda else "cpu",
                              "time": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "cpus": os.cpu_count(), "steps": {}}
    steps = report["steps"]
    t0 = time.perf_counter()
    engine = VLLMEngine(model_dir, VLLMConfig(update_mode="keep", gpu_memory_utilization=0.3, max_model_len=1024,
                                              enforce_eager=True),
                        seed=3, api=api, step_timeout_s=120, engine_overrides={"skip_tokenizer_init": True})
    report["vllm"] = engine.api.version
    report["engine_start_s"] = time.perf_counter() - t0

    def step(name: str, fn: Any) -> None:
        t = time.perf_counter()
        try:
            steps[name] = {**fn(), "seconds": time.perf_counter() - t}
        except Exception as err:  # noqa: BLE001 - every step reports; a failed one fails the smoke
            steps[name] = {"ok": False, "error": f"{type(err).__name__}: {err}"}
        print(name, json.dumps(steps[name]), flush=True)

    def first_weights() -> dict[str, Any]:
        engine.apply_weights(weights[0], 0)
        groups = engine.generate(prompts, args.n, SamplingSettings(temperature=TEMPERATURE, max_new_tokens=32))
        p = parity(prompts, groups, learners[0])
        return {**p, "transport": engine.transport_last,
                "ok": p["mean_abs"] is not None and p["mean_abs"] < args.tolerance}

    def in_flight(mode: str, version: int) -> dict[str, Any]:
        engine.cfg.update_mode = mode
        box: dict[str, Any] = {}
        thread = threading.Thread(target=lambda: box.setdefault("groups", engine.generate(prompts, args.n, sampling)))
        tokens_before = engine.stats()["tokens_total"]
        if args.fake:  # the double stops after exactly 5 steps: a deterministic point in the middle
            engine.llm.set_step_budget(5)
            target = engine.llm.steps_done + 5
        thread.start()
        if args.fake:
            while engine.llm.steps_done < target and thread.is_alive():
                time.sleep(0.005)
        else:  # some decoding steps under the old weights; a whole response takes far longer
            time.sleep(0.2)
        engine.apply_weights(weights[version], version)
        if args.fake:
            engine.llm.set_step_budget(None)
        thread.join()
        groups = box["groups"]
        flat = [g for grp in groups for g in grp]
        split = [g for g in flat if len(g.version_spans) == 2]
        lost = [g for g in flat if g.finish_reason == "abort"]
        stats = engine.stats()
        out: dict[str, Any] = {"responses": len(flat), "split": len(split), "lost": len(lost),
                               "pause_s": stats["pause_s_last"], "update_s": stats["update_s_last"],
                               "tokens": int(stats["tokens_total"] - tokens_before),
                               "resubmitted_total": int(stats["resubmitted_total"]),
                               "transport": engine.transport_last}
        if mode == "abort":  # tokens after the switch were sampled under the new weights, re-prefilled
            out["parity_after_switch"] = parity(prompts, groups, learners[version],
                                                start_of=lambda g: g.version_spans[1][1] if len(g.version_spans) == 2
                                                else None)
        fresh = engine.generate(prompts, args.n, SamplingSettings(temperature=TEMPERATURE, max_new_tokens=32))
        out["parity_fresh"] = parity(prompts, fresh, learners[version])
        checked = [out["parity_fresh"]] + ([out["parity_after_switch"]] if mode == "abort" else [])
        out["ok"] = (not lost and bool(split) and engine.version == version
                     and all(p["mean_abs"] is not None and p["mean_abs"] < args.tolerance for p in checked))
        return out

    try:
        step("first_weights", first_weights)
        step("update_keep", lambda: in_flight("keep", 1))
        step("update_abort", lambda: in_flight("abort", 2))
    finally:
        engine.close()
    report["total_s"] = time.perf_counter() - t_start
    report["all_ok"] = all(s.get("ok") for s in steps.values())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(render_markdown(report))
    return 0 if report["all_ok"] else 1


def render_markdown(r: dict[str, Any]) -> str:
    """The smoke test as docs/benchmarks.md shows it: one row per step."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from tools.bench.report import markdown_table

    def p(key: str, field: str):
        return lambda row: (row.get(key) or {}).get(field)

    rows = [{"step": name, **s} for name, s in r["steps"].items()]
    cols = [("step", "step", None), ("transport", "transport", None),
            (lambda x: x.get("max_abs", p("parity_fresh", "max_abs")(x)), "max abs diff", ".4f"),
            (lambda x: x.get("mean_abs", p("parity_fresh", "mean_abs")(x)), "mean abs diff", ".4f"),
            (p("parity_after_switch", "mean_abs"), "mean abs diff after switch (abort)", ".4f"),
            ("responses", "responses", "d"), ("split", "spanning 2 versions", "d"), ("lost", "lost", "d"),
            ("pause_s", "pause s", ".3f"), ("seconds", "step s", ".1f"), (lambda x: "yes" if x.get("ok") else "NO",
                                                                          "ok", None)]
    head = (f"vLLM {r.get('vllm')}, torch {r.get('torch')}, {r.get('device')}; random Qwen2 "
            f"({r['shape']['num_hidden_layers']} layers, hidden {r['shape']['hidden_size']}, vocab "
            f"{r['shape']['vocab_size']}), bf16, T = {TEMPERATURE}; engine start {r.get('engine_start_s', 0):.1f} s, "
            f"whole smoke {r.get('total_s', 0):.1f} s (`tools/gpu/smoke.sh`). Diffs are |actor - learner| logprob "
            "per token; after an update they are against the new weights on fresh requests.")
    if r.get("fake"):
        head = "**Dry run over the CPU test double: not a GPU measurement.** " + head
    return head + "\n\n" + markdown_table(rows, cols)


if __name__ == "__main__":
    sys.exit(main())
