"""Benchmark one vLLM actor (VLLMEngine) on a GPU, and write the figures to JSON and a Markdown table.

Measured in one run, on one engine:
  generation    tokens/s of one actor (n responses per prompt, random prompts, temperature 1, no truncation)
  updates       seconds per full weight update through apply_weights, per transport (host: bytes through the
                worker RPC; ipc: CUDA IPC handles), as s/GB and GB/s, next to the raw copy bandwidth of the same
                bytes measured in the same process (pinned host -> device, device -> device)
  in flight     generation while updates land mid-generation, per update_mode (keep / abort): the actor's
                pause per update (pause call to resume), tokens/s under updates, responses resubmitted
No model is downloaded: the model directory holds only a config.json of the chosen shape, vLLM starts from random
('dummy') weights, prompts are random token ids, and every update sends random bf16 tensors with the checkpoint's
names and shapes. Random weights rarely sample EOS, so responses run to max_new_tokens: a throughput ceiling
for that length.

    PYTHONPATH=. python tools/gpu/bench_vllm.py --shape qwen2.5-1.5b --out "$OUT/vllm_bench.json"
    PYTHONPATH=. python tools/gpu/bench_vllm.py --fake --out /tmp/vllm_bench.json   # CPU dry run (test double)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

SHAPES = {  # Qwen2 architecture; the numbers of the public Qwen2.5 configs
    "qwen2.5-1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                         num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "qwen2.5-7b": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                       num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=512, tie_word_embeddings=False),
}
GB = 1e9


def write_model_dir(shape: str, path: Path) -> tuple[list[str], list[torch.Size]]:
    """config.json of the shape (no weights, no tokenizer); returns the HF parameter names and shapes."""
    from transformers import AutoModelForCausalLM, Qwen2Config

    cfg = Qwen2Config(**SHAPES[shape], max_position_embeddings=32768, rope_theta=1e6, rms_norm_eps=1e-6,
                      bos_token_id=SHAPES[shape]["vocab_size"] - 2, eos_token_id=SHAPES[shape]["vocab_size"] - 1,
                      architectures=["Qwen2ForCausalLM"], dtype="bfloat16")
    cfg.save_pretrained(path)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    names, shapes = zip(*[(n, p.shape) for n, p in model.named_parameters()])
    return list(names), list(shapes)


def random_weights(names: list[str], shapes: list[torch.Size], device: str, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator(device=device).manual_seed(seed)
    out = {}
    for name, shape in zip(names, shapes):
        t = torch.randn(shape, generator=gen, device=device, dtype=torch.float32).mul_(0.02).to(torch.bfloat16)
        out[name] = t.pin_memory() if device == "cpu" and torch.cuda.is_available() else t
    return out


def timed(fn, reps: int) -> list[float]:
    times = []
    for _ in range(reps):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return times


def raw_copy_gb_per_s(nbytes: int, reps: int) -> dict[str, float]:
    """Bandwidth of one flat copy of nbytes: pinned host -> device and device -> device (CPU: memcpy)."""
    n = nbytes // 2
    if not torch.cuda.is_available():
        a, b = torch.empty(n, dtype=torch.bfloat16), torch.empty(n, dtype=torch.bfloat16)
        return {"host_to_host": nbytes / GB / statistics.median(timed(lambda: b.copy_(a), reps))}
    host = torch.empty(n, dtype=torch.bfloat16, pin_memory=True)
    dev, dev2 = torch.empty(n, dtype=torch.bfloat16, device="cuda"), torch.empty(n, dtype=torch.bfloat16, device="cuda")
    h2d = statistics.median(timed(lambda: dev.copy_(host, non_blocking=True), reps))
    d2d = statistics.median(timed(lambda: dev2.copy_(dev), reps))
    del host, dev, dev2
    torch.cuda.empty_cache()
    return {"host_to_device": nbytes / GB / h2d, "device_to_device": nbytes / GB / d2d}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", default="qwen2.5-1.5b", choices=sorted(SHAPES))
    ap.add_argument("--fake", action="store_true", help="CPU dry run over the test double (shape 'tiny')")
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--n", type=int, default=8, help="responses per prompt")
    ap.add_argument("--prompt-len", type=int, default=256)
    ap.add_argument("--max-new-tokens", type=int, default=512)
    ap.add_argument("--updates", type=int, default=3, help="updates per measurement")
    ap.add_argument("--gpu-memory-utilization", type=float, default=0.6)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")

    from gspo_async.engines.base import SamplingSettings
    from gspo_async.engines.vllm import VLLMEngine
    from gspo_async.config import VLLMConfig

    api, shape = None, args.shape
    if args.fake:
        from gspo_async.testing.vllm_fake import fake_api

        api, shape = fake_api(), "tiny"
        args.prompts, args.n, args.prompt_len, args.max_new_tokens = 2, 2, 8, 16
    model_dir = Path(tempfile.mkdtemp(prefix=f"bench-{shape}-"))
    names, shapes = write_model_dir(shape, model_dir)
    vcfg = VLLMConfig(weight_transport="host", update_mode="keep", gpu_memory_utilization=args.gpu_memory_utilization,
                      max_model_len=args.prompt_len + args.max_new_tokens)
    t0 = time.perf_counter()
    engine = VLLMEngine(model_dir, vcfg, seed=1, api=api, step_timeout_s=300,
                        engine_overrides={"skip_tokenizer_init": True})
    startup_s = time.perf_counter() - t0
    report: dict = {"shape": shape, "fake": args.fake, "vllm": engine.api.version, "torch": torch.__version__,
                    "python": platform.python_version(),
                    "device": torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor(),
                    "engine_startup_s": startup_s, "settings": {k: v for k, v in vars(args).items() if k != "out"}}
    try:
        vocab = SHAPES[shape]["vocab_size"]
        gen = torch.Generator().manual_seed(0)
        prompts = torch.randint(0, vocab - 2, (args.prompts, args.prompt_len), generator=gen).tolist()
        sampling = SamplingSettings(temperature=1.0, max_new_tokens=args.max_new_tokens)
        engine.generate(prompts[:2], 2, SamplingSettings(temperature=1.0, max_new_tokens=8))  # warm-up

        # -- weight updates, idle engine, per transport, against raw copies of the same bytes
        host_w = random_weights(names, shapes, "cpu", 1)
        nbytes = sum(t.numel() * t.element_size() for t in host_w.values())
        report["weights"] = {"tensors": len(names), "bytes": nbytes}
        report["raw_copy_gb_per_s"] = raw_copy_gb_per_s(nbytes, reps=5)
        version = 0
        updates = {}
        transports = [("host", host_w)]
        if torch.cuda.is_available():
            transports.append(("ipc", {k: v.cuda() for k, v in host_w.items()}))
        for transport, weights in transports:
            secs = []
            for _ in range(args.updates):
                version += 1
                t0 = time.perf_counter()
                engine.apply_weights(weights, version, transport=transport)
                secs.append(time.perf_counter() - t0)
            med = statistics.median(secs)
            updates[transport] = {"seconds": secs, "median_s": med, "s_per_gb": med / (nbytes / GB),
                                  "gb_per_s": nbytes / GB / med, "pause_s_last": engine.stats()["pause_s_last"]}
        report["idle_updates"] = updates
        fast = transports[-1]

        # -- generation throughput, no updates
        t0 = time.perf_counter()
        groups = engine.generate(prompts, args.n, sampling)
        secs = time.perf_counter() - t0
        tokens = sum(len(g.tokens) for grp in groups for g in grp)
        report["generation"] = {"tokens": tokens, "seconds": secs, "tokens_per_s": tokens / secs}
        report["bare_vllm"] = bare_generation(engine, prompts, args.n, args.max_new_tokens)
        report["generation"]["vs_bare"] = report["generation"]["tokens_per_s"] / report["bare_vllm"]["tokens_per_s"]

        # -- generation with updates landing mid-generation, per update mode
        in_flight = {}
        for mode in ("keep", "abort"):
            engine.cfg.update_mode = mode
            before = engine.stats()
            box: dict = {}
            thread = threading.Thread(target=lambda: box.setdefault("groups", engine.generate(prompts, args.n,
                                                                                              sampling)))
            t0 = time.perf_counter()
            thread.start()
            pauses = []
            spacing = max(0.05, report["generation"]["seconds"] / (args.updates + 1))
            for _ in range(args.updates):
                deadline = time.perf_counter() + spacing
                while time.perf_counter() < deadline and thread.is_alive():
                    time.sleep(0.01)
                if not thread.is_alive():
                    break
                version += 1
                engine.apply_weights(fast[1], version, transport=fast[0])
                pauses.append(engine.stats()["pause_s_last"])
            thread.join()
            secs = time.perf_counter() - t0
            tokens = sum(len(g.tokens) for grp in box["groups"] for g in grp)
            split = sum(len(g.version_spans) > 1 for grp in box["groups"] for g in grp)
            in_flight[mode] = {"transport": fast[0], "updates": len(pauses), "pause_s": pauses,
                               "pause_s_median": statistics.median(pauses) if pauses else None,
                               "tokens_per_s": tokens / secs, "responses_spanning_versions": split,
                               "resubmitted": engine.stats()["resubmitted_total"] - before["resubmitted_total"]}
        report["in_flight_updates"] = in_flight
    finally:
        engine.close()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    args.out.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))
    return 0


def bare_generation(engine, prompts: list[list[int]], n: int, max_new_tokens: int) -> dict:
    """The same requests sent straight to the engine's AsyncLLM (one n=1 request per response, FINAL_ONLY
    outputs, no adapter: no logprob extraction, version tracking or resubmission): what VLLMEngine is measured
    against."""
    import asyncio

    api = engine.api
    params = api.sampling_params(n=1, temperature=1.0, top_p=1.0, top_k=0, min_p=0.0, max_tokens=max_new_tokens,
                                 logprobs=0, detokenize=False, output_kind=api.output_kind.FINAL_ONLY)

    async def one(prompt: list[int], rid: str) -> int:
        tokens = 0
        async for out in engine.llm.generate({"prompt_token_ids": prompt}, params, rid):
            tokens = len(out.outputs[0].token_ids)
        return tokens

    async def run() -> int:
        jobs = [one(p, f"bare-{i}-{j}") for i, p in enumerate(prompts) for j in range(n)]
        return sum(await asyncio.gather(*jobs))

    t0 = time.perf_counter()
    tokens = engine._loop.call(run())
    secs = time.perf_counter() - t0
    return {"tokens": tokens, "seconds": secs, "tokens_per_s": tokens / secs}


def markdown(r: dict) -> str:
    """A table to paste into docs/benchmarks.md."""
    lines = [f"vLLM actor benchmark: shape {r['shape']}, vLLM {r['vllm']}, torch {r['torch']}, {r['device']}"
             f"{' (CPU dry run over the test double: not a measurement)' if r['fake'] else ''}", "",
             "| quantity | value |", "| --- | --- |",
             f"| engine start-up | {r['engine_startup_s']:.1f} s |",
             f"| generation, 1 actor | {r['generation']['tokens_per_s']:.0f} tokens/s |",
             f"| generation, bare vLLM (same requests, no adapter) | {r['bare_vllm']['tokens_per_s']:.0f} tokens/s "
             f"(actor / bare = {r['generation']['vs_bare']:.2f}) |",
             f"| weights per update | {r['weights']['bytes'] / GB:.2f} GB, {r['weights']['tensors']} tensors |"]
    for k, v in r["raw_copy_gb_per_s"].items():
        lines.append(f"| raw copy {k.replace('_', ' ')} | {v:.1f} GB/s |")
    for k, v in r["idle_updates"].items():
        lines.append(f"| update via {k} (idle) | {v['median_s']:.2f} s = {v['s_per_gb']:.2f} s/GB "
                     f"({v['gb_per_s']:.1f} GB/s) |")
    for k, v in r["in_flight_updates"].items():
        med = "n/a" if v["pause_s_median"] is None else f"{v['pause_s_median']:.2f} s"
        lines.append(f"| update_mode {k}: pause per update | {med} ({v['updates']} updates; "
                     f"{v['tokens_per_s']:.0f} tokens/s; {v['resubmitted']:.0f} resubmitted) |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
