"""Correctness checks of VLLMEngine on real vLLM (one GPU), written to JSON: what CI checks over the test double.

  logprobs     n responses per prompt; their logprobs against a transformers recomputation (same weights, same
               dtype, log softmax(logits / T)) of prompt + response: mean and max absolute difference
  updates      apply_weights via host and via ipc, then the same parity against the new weights
  in flight    updates mid-generation in keep and abort modes: spans split by version, no response lost, and in
               abort mode the tokens after the switch match the new weights (re-prefilled)
The model is a small random Qwen2 (no download); vLLM starts on dummy weights and receives them by apply_weights.
vLLM's NCCL path (join_weight_group / VLLMWeightSender) needs a second GPU: NCCL forbids two ranks on one GPU.

    PYTHONPATH=. python tools/gpu/check_vllm.py --out "$OUT/vllm_checks.json"
    PYTHONPATH=. python tools/gpu/check_vllm.py --fake --out /tmp/vllm_checks.json   # CPU dry run
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

import torch

SHAPE = dict(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, vocab_size=1024, tie_word_embeddings=False)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fake", action="store_true")
    ap.add_argument("--vllm-version", default="0.24.0", help="emulated version with --fake")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--max-new-tokens", type=int, default=400, help="response length in the in-flight checks")
    ap.add_argument("--tolerance", type=float, default=0.05, help="allowed mean |logprob difference| (bf16)")
    args = ap.parse_args()
    os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")

    from transformers import AutoModelForCausalLM, Qwen2Config

    from gspo_async.engines.base import SamplingSettings
    from gspo_async.engines.hf import sequence_logprobs
    from gspo_async.engines.vllm import VLLMEngine
    from gspo_async.config import VLLMConfig

    cuda = torch.cuda.is_available() and not args.fake
    device, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    api = None
    if args.fake:
        from gspo_async.testing.vllm_fake import fake_api

        api = fake_api(args.vllm_version)
    model_dir = Path(tempfile.mkdtemp(prefix="check-vllm-"))
    cfg = Qwen2Config(**SHAPE, max_position_embeddings=4096, bos_token_id=1, eos_token_id=2,
                      architectures=["Qwen2ForCausalLM"], dtype="bfloat16")
    cfg.save_pretrained(model_dir)
    models = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        models.append(AutoModelForCausalLM.from_config(cfg, dtype=dtype).to(device).eval())
    weights = [{k: v.detach().to(torch.bfloat16) for k, v in m.named_parameters()} for m in models]

    checks: dict = {}
    vcfg = VLLMConfig(weight_transport="host", update_mode="keep", gpu_memory_utilization=0.3, max_model_len=512)
    engine = VLLMEngine(model_dir, vcfg, seed=3, api=api, step_timeout_s=120,
                        engine_overrides={"skip_tokenizer_init": True})
    prompts = torch.randint(3, SHAPE["vocab_size"], (4, 12), generator=torch.Generator().manual_seed(0)).tolist()

    def parity(groups, model, temperature, start=0):
        diffs = []
        for prompt, group in zip(prompts, groups):
            for g in group:
                if len(g.tokens) > start:
                    ref = sequence_logprobs(model, prompt, g.tokens, temperature)[start:].float().cpu()
                    diffs.append((torch.tensor(g.logprobs[start:]) - ref).abs())
        d = torch.cat(diffs) if diffs else torch.zeros(1)
        return {"mean_abs": float(d.mean()), "max_abs": float(d.max()), "tokens": int(d.numel()),
                "ok": bool(d.mean() < args.tolerance)}

    def record(name, fn):
        t0 = time.perf_counter()
        try:
            checks[name] = {**fn(), "seconds": time.perf_counter() - t0}
        except Exception as err:  # noqa: BLE001 - every check reports, none stops the others
            checks[name] = {"ok": False, "error": f"{type(err).__name__}: {err}"}
        print(name, checks[name], flush=True)

    try:
        transports = ["host"] + (["ipc"] if cuda else [])
        for i, transport in enumerate(transports):
            def update_and_generate(transport=transport, version=i + 1):
                w = {k: (v.cuda() if transport == "ipc" else v.cpu()) for k, v in weights[0].items()}
                engine.apply_weights(w, version, transport=transport)
                groups = engine.generate(prompts, 4, SamplingSettings(temperature=0.7, max_new_tokens=24))
                spans_ok = all(g.version_spans == [(version, 0, len(g.tokens))] for grp in groups for g in grp)
                p = parity(groups, models[0], 0.7)
                return {**p, "ok": p["ok"] and spans_ok and all(len(grp) == 4 for grp in groups)}

            record(f"apply_{transport}_then_logprob_parity", update_and_generate)

        version = len(transports)
        for mode in ("keep", "abort"):
            def in_flight(mode=mode):
                nonlocal version
                engine.cfg.update_mode = mode
                old, new = (0, 1) if version % 2 == 1 else (1, 0)
                box: dict = {}
                thread = threading.Thread(target=lambda: box.setdefault("g", engine.generate(
                    prompts, 4, SamplingSettings(temperature=1.0, max_new_tokens=args.max_new_tokens))))
                if args.fake:  # the double can stop after exactly 5 steps: a deterministic mid-generation point
                    steps = engine.llm.steps_done + 5
                    engine.llm.set_step_budget(5)
                thread.start()
                if args.fake:
                    deadline = time.monotonic() + 60
                    while engine.llm.steps_done < steps and time.monotonic() < deadline:
                        time.sleep(0.005)
                else:
                    time.sleep(0.1)  # some decoding steps under the old weights (a whole response takes far longer)
                version += 1
                engine.apply_weights({k: v.cpu() for k, v in weights[new].items()}, version, transport="host")
                if args.fake:
                    engine.llm.set_step_budget(None)
                thread.join()
                groups = box["g"]
                split = [g for grp in groups for g in grp if len(g.version_spans) == 2]
                lost = [g for grp in groups for g in grp if g.finish_reason == "abort"]
                out = {"responses": sum(len(grp) for grp in groups), "split": len(split), "lost": len(lost),
                       "pause_s": engine.stats()["pause_s_last"], "ok": not lost and bool(split)}
                if mode == "abort" and split:  # after the switch: the new weights' full softmax
                    first = {id(g): g.version_spans[1][1] for g in split}
                    diffs = [(torch.tensor(g.logprobs[first[id(g)]:])
                              - sequence_logprobs(models[new], p, g.tokens, 1.0)[first[id(g)]:].float().cpu()).abs()
                             for p, grp in zip(prompts, groups) for g in grp if id(g) in first]
                    d = torch.cat(diffs)
                    out.update(after_switch_mean_abs=float(d.mean()), ok=out["ok"] and bool(d.mean() < args.tolerance))
                return out

            record(f"update_mid_generation_{mode}", in_flight)
    finally:
        engine.close()
    report = {"vllm": engine.api.version, "torch": torch.__version__, "fake": args.fake,
              "device": torch.cuda.get_device_name() if cuda else "cpu", "checks": checks,
              "all_ok": all(c.get("ok") for c in checks.values())}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps({"all_ok": report["all_ok"]}))
    return 0 if report["all_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
