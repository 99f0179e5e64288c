"""Benchmark: chunked vs naive token log-probabilities from hidden states, forward + backward, on CPU.

For each vocabulary size V (N tokens and hidden size H fixed) and each implementation
(`token_logprobs_from_hidden` with `--chunk-size` rows at a time, and `naive_token_logprobs`, which builds
the whole [N x V] float32 log-softmax), a fresh single-threaded subprocess builds the inputs, records its
peak resident memory (ru_maxrss), runs one forward + backward (logprobs and entropy, gradients for hidden
and lm-head weight) and reports the growth of the peak over that baseline: the extra memory the computation
needed (glibc is told to serve large blocks by mmap, so freed buffers leave RSS at once and the figure is
the live peak, not allocator caching). It then times `--repeats` more forward + backward passes and reports
the median. The table shows both implementations and the chunked/naive ratios; the JSON at `--out` holds
every number.

    PYTHONPATH=. python tools/bench/logprobs.py [--vocab 8192 32768 131072] [--tokens 1024] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

DEFAULT_OUT = Path(__file__).parent / "results" / "logprobs.json"


def child(impl: str, vocab: int, tokens: int, hidden_size: int, chunk_size: int, repeats: int) -> dict:
    """Runs in the subprocess: measure one implementation at one size, return its figures."""
    import torch

    from gspo_async.algo.logprobs import naive_token_logprobs, token_logprobs_from_hidden

    torch.set_num_threads(1)
    torch.manual_seed(0)
    hidden = torch.randn(tokens, hidden_size, requires_grad=True)
    weight = (torch.randn(vocab, hidden_size) / hidden_size**0.5).requires_grad_()
    labels = torch.randint(0, vocab, (tokens,))

    def step() -> None:
        hidden.grad = weight.grad = None
        if impl == "chunked":
            lp, ent = token_logprobs_from_hidden(hidden, weight, labels, chunk_size=chunk_size, compute_entropy=True)
        else:
            lp, ent = naive_token_logprobs(hidden, weight, labels, compute_entropy=True)
        (lp.sum() + 0.01 * ent.sum()).backward()

    # a tiny pass first, so one-off start-up allocations (autograd engine, kernels) are in the baseline
    small = torch.randn(4, hidden_size, requires_grad=True)
    token_logprobs_from_hidden(small, weight[:8], labels[:4] % 8, compute_entropy=True)[0].sum().backward()
    naive_token_logprobs(small, weight[:8], labels[:4] % 8, compute_entropy=True)[0].sum().backward()
    baseline_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    step()
    peak_extra_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - baseline_kb) / 1024
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return {"peak_extra_mb": peak_extra_mb, "time_s": statistics.median(times)}


def measure(impl: str, vocab: int, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--child", impl, str(vocab), str(args.tokens), str(args.hidden),
           str(args.chunk_size), str(args.repeats)]
    # large blocks straight from mmap, so a freed buffer leaves RSS at once and the peak is the live peak
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "131072",
           "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{impl} V={vocab} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vocab", type=int, nargs="+", default=[8192, 16384, 32768, 65536, 131072])
    parser.add_argument("--tokens", type=int, default=1024, help="N, tokens per call")
    parser.add_argument("--hidden", type=int, default=64, help="H, hidden size (small: the vocab axis is the point)")
    parser.add_argument("--chunk-size", type=int, default=128, help="rows per chunk for the chunked path")
    parser.add_argument("--repeats", type=int, default=2, help="timed forward+backward passes per case")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--child", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        impl, *numbers = args.child
        print(json.dumps(child(impl, *map(int, numbers))))
        return

    rows = []
    header = (f"{'V':>7} {'full fp32 MB':>12} | {'naive MB':>9} {'chunked MB':>10} {'mem ratio':>9} | "
              f"{'naive s':>8} {'chunked s':>9} {'time ratio':>10}")
    print(f"N={args.tokens} tokens, H={args.hidden}, chunk_size={args.chunk_size}, 1 thread, forward+backward")
    print(header)
    print("-" * len(header))
    for vocab in args.vocab:
        naive, chunked = measure("naive", vocab, args), measure("chunked", vocab, args)
        row = {
            "vocab": vocab,
            "full_logprobs_fp32_mb": args.tokens * vocab * 4 / 2**20,
            "naive": naive,
            "chunked": chunked,
            "memory_ratio": chunked["peak_extra_mb"] / max(naive["peak_extra_mb"], 1e-9),
            "time_ratio": chunked["time_s"] / naive["time_s"],
        }
        rows.append(row)
        print(f"{vocab:>7} {row['full_logprobs_fp32_mb']:>12.1f} | {naive['peak_extra_mb']:>9.1f} "
              f"{chunked['peak_extra_mb']:>10.1f} {row['memory_ratio']:>9.3f} | {naive['time_s']:>8.3f} "
              f"{chunked['time_s']:>9.3f} {row['time_ratio']:>10.2f}")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "benchmark": "token logprobs from hidden states, chunked vs naive, forward+backward",
        "tokens": args.tokens, "hidden": args.hidden, "chunk_size": args.chunk_size, "repeats": args.repeats,
        "threads": 1, "machine": platform.machine(), "python": platform.python_version(),
        "rows": rows,
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
