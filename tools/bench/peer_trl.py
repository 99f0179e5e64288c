"""Side by side with the trainer users would pick instead: TRL's GRPOTrainer configured as GSPO vs gspo-async, on
the same starting model, training prompts, reward and held-out set, each for the same wall-clock budget, one after
the other in one invocation on this machine.

    PYTHONPATH=. python tools/bench/peer_trl.py                         # quickstart task, 300 s each, TRL lr sweep
    PYTHONPATH=. python tools/bench/peer_trl.py --task sort             # the other built-in task
    PYTHONPATH=. python tools/bench/peer_trl.py --quick                 # 60 s each, one TRL learning rate
    PYTHONPATH=. python tools/bench/peer_trl.py --model DIR --data train.jsonl --eval-data eval.jsonl --reward mod:fn

How it is fair:
- TRL runs in its own virtual environment (``runs/bench/trl-venv``, created on first use: TRL from the registry,
  torch pinned to the same 2.13.0 CPU build, this project installed for the shared evaluation code) with 2 threads;
  gspo-async runs as ``gspo-async local`` would (a learner and actors, one thread each) with the config given.
- Both clocks start when the system's process starts (imports, model loading and start-up count) and run for
  ``--budget-s``. Both save the policy while they train (gspo-async: its checkpoints, whose write time counts
  against it; TRL: snapshots whose write time is excluded). Held-out greedy accuracy of every saved policy is
  measured afterwards with one evaluation code path (gspo_async.tasks.evaluate, greedy, the task's reward), so
  evaluation time counts for neither.
- TRL's learning rate is the best of a small sweep (``--trl-lrs``), reported; gspo-async runs its config as is.
- Target accuracy = start + 0.8 x (TRL's accuracy at its full budget - start); the table gives each system's time to
  reach it (the first evaluation at or above it, with interpolation off) and the ratio gspo-async / TRL.

Results: tools/bench/results/peer_trl[-TASK].json, a PNG curve in docs/img/, the table printed.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tools.bench.report import IMG, Column, machine_info, markdown_table, text_table, write_result  # noqa: E402

WORK = ROOT / "runs" / "bench" / "peer_trl"
VENV = ROOT / "runs" / "bench" / "trl-venv"
TRL_PINS = ["trl>=1.0", "datasets>=2.19"]


# ----------------------------------------------------------------------------------------------- set-up
def ensure_trl_venv(venv: Path = VENV) -> Path:
    """The TRL environment's python, created and installed on first use (torch pinned through the constraints)."""
    python = venv / "bin" / "python"
    marker = venv / ".gspo-peer-ready"
    if marker.is_file():
        return python
    print(f"installing TRL into {venv} (first use; a few minutes) ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "install", "-q", "-c", str(ROOT / "constraints-cpu.txt")]
    subprocess.run(pip + ["torch==2.13.0", *TRL_PINS, "-e", str(ROOT)], check=True)
    version = subprocess.run([str(python), "-c", "import trl; print(trl.__version__)"], check=True,
                             capture_output=True, text=True).stdout.strip()
    marker.write_text(version + "\n")
    return python


def prepare(args: argparse.Namespace) -> dict[str, Any]:
    """Starting model, training prompts (JSONL, in the order both systems read them) and held-out items."""
    from gspo_async.config import load_config
    from gspo_async.tasks import task_from_config

    overrides = [f"task.name={args.task}"] if args.task else []
    if args.data:
        overrides += ["task.name=jsonl", f"task.path={args.data}"] + ([f"task.options.eval_path={args.eval_data}"]
                                                                       if args.eval_data else [])
    if args.reward:
        overrides.append(f"task.reward={args.reward}")
    cfg = load_config(args.config, overrides + list(args.set))
    task = task_from_config(cfg.task)
    WORK.mkdir(parents=True, exist_ok=True)
    if args.model:
        model_dir = Path(args.model)
    else:
        from gspo_async.bootstrap.tiny import build_tiny

        model_dir = WORK / f"tiny-{cfg.task.name}"
        build_tiny(model_dir, seed=cfg.seed, task=cfg.task.name, task_options=dict(cfg.task.options))
    train = WORK / f"train-{cfg.task.name}.jsonl"
    with train.open("w") as f:
        for _, item in zip(range(args.train_prompts), task.train_items(cfg.seed)):
            f.write(json.dumps({"prompt": item.prompt, "answer": item.answer, "meta": item.meta}) + "\n")
    return {"cfg": cfg, "task": task, "model_dir": model_dir, "train": train,
            "reward": cfg.task.reward or task.reward_fn}


# ----------------------------------------------------------------------------------------------- the two systems
def run_trl(lr: float, setup: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    python = ensure_trl_venv()
    out = WORK / f"trl-{setup['cfg'].task.name}-lr{lr:g}"
    if out.exists():
        import shutil

        shutil.rmtree(out)
    cmd = [str(python), str(ROOT / "tools" / "bench" / "peer_trl_worker.py"), "--model", str(setup["model_dir"]),
           "--train", str(setup["train"]), "--reward", setup["reward"], "--out", str(out),
           "--budget-s", str(args.budget_s), "--snapshot-every-s", str(args.eval_every_s), "--lr", str(lr),
           "--seed", str(setup["cfg"].seed), "--generations", str(setup["cfg"].num_return_sequences_in_group),
           "--max-new-tokens", str(setup["cfg"].response_length)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(ROOT)}
    print(f"TRL lr={lr:g}: {args.budget_s:.0f} s ...", flush=True)
    with open(WORK / f"{out.name}.log", "wb") as log:
        proc = subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=args.budget_s + 600)
    if proc.returncode != 0:
        tail = (WORK / f"{out.name}.log").read_text(errors="replace")[-3000:]
        raise RuntimeError(f"TRL run failed (exit {proc.returncode}):\n{tail}")
    run = json.loads((out / "trl_run.json").read_text())
    return {"system": "TRL", "lr": lr, "snapshots": run["snapshots"], "optimizer_steps": run["optimizer_steps"]}


def run_gspo(setup: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """`gspo-async local` for the budget, then SIGTERM (a clean stop: the final state is saved)."""
    from gspo_async.local import free_port
    from gspo_async.telemetry.registry import read_metrics

    cfg = setup["cfg"]
    run_dir = WORK / f"gspo-{cfg.task.name}"
    if run_dir.exists():
        import shutil

        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    overrides = [f"run_dir={run_dir}", f"model.path={setup['model_dir']}", "model.build_tiny_if_missing=false",
                 f"task.reward={setup['reward']}", "learner.total_steps=1000000", "learner.eval_every=0",
                 f"learner.checkpoint.every={args.checkpoint_every}", "learner.checkpoint.keep=100000",
                 "telemetry.dashboard_port=null", f"learner.port={free_port()}",
                 f"learner.weight_store_port={free_port()}"]
    config_path = run_dir / "bench-config.yaml"
    config_path.write_text(cfg.to_yaml())
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": str(ROOT)}
    print(f"gspo-async: {args.budget_s:.0f} s ...", flush=True)
    t0 = time.time()
    with open(run_dir / "local.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "gspo_async", "local", str(config_path), *overrides],
                                env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        try:
            proc.wait(timeout=args.budget_s)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=180)
    times = {r["step"]: r["time"] - t0 for r in read_metrics(run_dir)
             if r.get("role") == "learner" and r.get("step", 0) >= 1}
    snapshots = [{"clock_s": 0.0, "step": 0, "path": str(setup["model_dir"])}]
    for ckpt in sorted((run_dir / "checkpoints").glob("step-*")):
        step = int(ckpt.name.split("-")[1])
        if step in times and times[step] <= args.budget_s:
            snapshots.append({"clock_s": times[step], "step": step, "path": str(ckpt / "model")})
    return {"system": "gspo-async", "snapshots": snapshots, "optimizer_steps": max(times, default=0)}


# ----------------------------------------------------------------------------------------------- evaluation
def evaluate_run(run: dict[str, Any], setup: dict[str, Any], grid: list[float]) -> list[dict[str, float]]:
    """Held-out greedy accuracy of the newest snapshot at or before each grid time."""
    from gspo_async.engines.base import SamplingSettings
    from gspo_async.engines.hf import HFEngine
    from gspo_async.tasks.evaluate import evaluate
    from gspo_async.tasks.scoring import RewardRunner

    items = setup["task"].eval_items()
    greedy = SamplingSettings(temperature=0.0, max_new_tokens=setup["cfg"].response_length)
    cache: dict[str, float] = {}
    curve = []
    with RewardRunner(setup["reward"]) as scorer:
        for t in grid:
            older = [s for s in run["snapshots"] if s["clock_s"] <= t]
            if not older:
                continue
            snap = older[-1]
            if snap["path"] not in cache:
                engine = HFEngine(snap["path"], seed=0)
                cache[snap["path"]] = evaluate(engine, engine.tokenizer, items, scorer.score, greedy)["accuracy"]
            curve.append({"t": t, "step": snap["step"], "snapshot_s": snap["clock_s"], "accuracy": cache[snap["path"]]})
    return curve


def time_to(curve: list[dict], target: float) -> Optional[float]:
    return next((c["t"] for c in curve if c["accuracy"] >= target), None)


# ----------------------------------------------------------------------------------------------- main
def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(ROOT / "configs" / "quickstart.yaml"), help="gspo-async's config")
    p.add_argument("--set", nargs="*", default=[], help="extra config overrides for gspo-async (key=value)")
    p.add_argument("--task", default=None, help="built-in task (default: the config's)")
    p.add_argument("--model", default=None, help="starting model directory (default: the tiny model, built)")
    p.add_argument("--data", default=None, help="training JSONL (task.name=jsonl)")
    p.add_argument("--eval-data", default=None, help="held-out JSONL")
    p.add_argument("--reward", default=None, help="reward spec (default: the task's)")
    p.add_argument("--budget-s", type=float, default=300.0, help="wall-clock seconds per system (default 300)")
    p.add_argument("--eval-every-s", type=float, default=25.0, help="evaluation grid step in seconds (default 25)")
    p.add_argument("--checkpoint-every", type=int, default=10, help="gspo-async checkpoint interval in steps")
    p.add_argument("--trl-lrs", default="1e-5,3e-5,1e-4", help="TRL learning rates to sweep (best one kept)")
    p.add_argument("--train-prompts", type=int, default=20000, help="training prompts exported for both systems")
    p.add_argument("--quick", action="store_true", help="60 s per system, one TRL learning rate (3e-5)")
    p.add_argument("--skip-trl", action="store_true", help="reuse the TRL results of the last run's JSON")
    p.add_argument("--tag", default="", help="suffix of the result's name, to keep a variant's run beside the main one")
    args = p.parse_args()
    if args.quick:
        args.budget_s, args.eval_every_s, args.trl_lrs = 60.0, 10.0, "3e-5"

    setup = prepare(args)
    name = setup["cfg"].task.name
    out_json = ROOT / "tools" / "bench" / "results" / f"peer_trl-{name}.json"
    tagged = out_json.with_name(f"peer_trl-{name}-{args.tag}.json") if args.tag else out_json
    grid = [round(k * args.eval_every_s, 6) for k in range(int(args.budget_s // args.eval_every_s) + 1)]
    trl_runs = []
    if args.skip_trl and out_json.is_file():
        trl_runs = json.loads(out_json.read_text())["trl_runs"]
    else:
        for lr in [float(x) for x in args.trl_lrs.split(",")]:
            run = run_trl(lr, setup, args)
            run["curve"] = evaluate_run(run, setup, grid)
            trl_runs.append(run)
    ours = run_gspo(setup, args)
    ours["curve"] = evaluate_run(ours, setup, grid)
    best = max(trl_runs, key=lambda r: (r["curve"][-1]["accuracy"], -r["lr"]))
    start = best["curve"][0]["accuracy"]
    target = start + 0.8 * (best["curve"][-1]["accuracy"] - start)
    t_trl, t_ours = time_to(best["curve"], target), time_to(ours["curve"], target)
    rows = [{"system": f"TRL GRPOTrainer (GSPO), lr {r['lr']:g}" + (" (best)" if r is best else ""),
             "steps": r["optimizer_steps"], "final": r["curve"][-1]["accuracy"],
             "time_to_target": time_to(r["curve"], target)} for r in trl_runs]
    rows.append({"system": "gspo-async (" + Path(args.config).name + ")", "steps": ours["optimizer_steps"],
                 "final": ours["curve"][-1]["accuracy"], "time_to_target": t_ours})
    result = {"task": name, "budget_s": args.budget_s, "eval_every_s": args.eval_every_s, "start_accuracy": start,
              "target_accuracy": target, "trl_time_to_target_s": t_trl, "gspo_time_to_target_s": t_ours,
              "ratio": (t_ours / t_trl) if t_ours is not None and t_trl else None, "rows": rows,
              "trl_runs": trl_runs, "gspo_run": ours, "args": vars(args), "machine": machine_info(),
              "trl_version": (VENV / ".gspo-peer-ready").read_text().strip() if (VENV / ".gspo-peer-ready").is_file()
              else None}
    print(text_table(rows, columns(target)))
    print(verdict(result))
    result["plot"] = None if args.tag else plot(result, name)  # a variant's curve is in the levers table instead
    write_result(tagged, result)
    return 0


def columns(target: float) -> list[Column]:
    return [("system", "system", None), ("steps", "steps (TRL: optimiser; gspo-async: learner)", None),
            ("final", "held-out acc. at budget", ".3f"), ("time_to_target", f"time to {target:.3f} (s)", ".0f")]


GOAL_RATIO = 0.5  # gspo-async's time to the target at most this fraction of TRL's
NOISE = 0.05  # held-out accuracy on 200 prompts: a binomial standard deviation of up to 0.035 per evaluation


def verdict(result: dict[str, Any]) -> str:
    ratio = result["ratio"]
    flat = result["target_accuracy"] - result["start_accuracy"] < NOISE
    return (("TRL's gain at its budget is within evaluation noise of its start, so the target is too and the ratio "
             "that follows says little (compare the final accuracies); " if flat else "")
            + f"start {result['start_accuracy']:.3f}, target {result['target_accuracy']:.3f} (start + 0.8 x TRL's "
            "gain at its full budget); gspo-async / TRL time to target: "
            + (f"{ratio:.2f}x (goal at most {GOAL_RATIO:g}x: {'met' if ratio <= GOAL_RATIO else 'NOT met'})"
               if ratio is not None else "not reached by one of them"))


def render_markdown(result: dict[str, Any], doc_dir: Path) -> str:
    """A section of docs/benchmarks.md: settings, the table, the verdict and the curve."""
    import os.path

    a = result["args"]
    text = (f"Task `{result['task']}`; each system trains for {result['budget_s']:g} s of wall clock (start-up "
            f"included, evaluation excluded) and every saved policy is evaluated afterwards, greedy, on the task's "
            f"held-out set, with one code path for both; the curve takes the newest policy at each "
            f"{result['eval_every_s']:g} s mark. TRL {result.get('trl_version') or '(version not recorded)'} "
            f"`GRPOTrainer` as GSPO (sequence-level ratio, epsilon 3e-4 / 4e-4, beta 0, no vLLM, 2 threads), its "
            f"learning rate swept over {a['trl_lrs']}; gspo-async runs `{Path(a['config']).name}` as is "
            f"(`tools/bench/peer_trl.py`).\n\n" + markdown_table(result["rows"], columns(result["target_accuracy"]))
            + "\n\n" + verdict(result) + ". A gspo-async learner step is `optim.num_mini_batches` x `ppo_epochs` "
            "optimiser steps on `rollout_batch_size` x `num_return_sequences_in_group` responses (2 steps on 128 in "
            "the quickstart config); a TRL step is one optimiser step.")
    if result.get("plot"):
        text += f"\n\n![accuracy against wall time]({os.path.relpath(ROOT / result['plot'], doc_dir)})"
    return text


# What each variant run on the quickstart task decided (the table's figures are its reasons); tags as run.
LEVER_DECISIONS = {
    "base": "reference: the quickstart settings of the time (max_staleness 2, no filtering)",
    "filter": "kept, with max_staleness 1 (f-s1)",
    "decoupled": "rejected: an extra no-grad pass per step, fewer steps, behind base at every mark",
    "f-lr6": "rejected: behind filter at every mark",
    "f-b8": "not adopted: more, cheaper steps, but behind filter until the last marks",
    "f-s1": "kept: the quickstart's settings since; also the steadiest over three seeds (Stability sections)",
}


def load_levers(task: str, results_dir: Path) -> Optional[dict[str, Any]]:
    """The variants run with --tag on `task` (each its own JSON), oldest first; None when there are none."""
    runs = [json.loads(p.read_text()) for p in sorted(results_dir.glob(f"peer_trl-{task}-*.json"))]
    runs = sorted((r for r in runs if r.get("args", {}).get("tag")), key=lambda r: r["machine"]["time"])
    return ({"task": task, "runs": runs, "machine": runs[-1]["machine"],
             "argv": ["--skip-trl", "--budget-s", "BUDGET", "--tag", "NAME", "--set", "OVERRIDES"]} if runs else None)


def render_levers(levers: dict[str, Any], doc_dir: Path) -> str:
    """The levers tried on a task: gspo-async alone per variant (its overrides on top of the config), held-out
    accuracy at each mark of the wall-clock grid. Compare rows with each other, not with the TRL table above when
    the two were measured on different machines (the dates say)."""
    runs = levers["runs"]
    grid = sorted({c["t"] for r in runs for c in r["gspo_run"]["curve"]})
    rows = []
    for r in runs:
        at = {c["t"]: c["accuracy"] for c in r["gspo_run"]["curve"]}
        rows.append({"variant": r["args"]["tag"], "overrides": " ".join(r["args"]["set"]) or "(the config as is)",
                     "steps": r["gspo_run"]["optimizer_steps"], **{f"t{t:g}": at.get(t) for t in grid},
                     "decision": LEVER_DECISIONS.get(r["args"]["tag"], "")})
    cols: list[Column] = [("variant", "variant", None), ("overrides", "overrides", None),
                          ("steps", "learner steps", None)]
    cols += [(f"t{t:g}", f"acc. at {t:g} s", ".3f") for t in grid if t > 0] + [("decision", "decision", None)]
    first, last = runs[0]["machine"]["time"], runs[-1]["machine"]["time"]
    return (f"gspo-async alone on `{levers['task']}`, `{Path(runs[0]['args']['config']).name}` of the time (see the "
            f"reference row) plus each variant's overrides, {runs[0]['budget_s']:g} s each, run one after another "
            f"({first} to {last}) with `tools/bench/peer_trl.py --skip-trl --tag NAME --set ...`; the starting model "
            "and held-out set are the side-by-side run's. One run per variant: differences of a few points at one "
            "mark are within the run-to-run noise (compare neighbouring marks).\n\n" + markdown_table(rows, cols))


def plot(result: dict[str, Any], name: str) -> Optional[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is missing (pip install 'gspo-async[report]'): no curve drawn", flush=True)
        return None
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for run in result["trl_runs"]:
        ax.plot([c["t"] for c in run["curve"]], [c["accuracy"] for c in run["curve"]], alpha=0.6,
                label=f"TRL lr {run['lr']:g}")
    ours = result["gspo_run"]["curve"]
    ax.plot([c["t"] for c in ours], [c["accuracy"] for c in ours], lw=2.5, label="gspo-async")
    ax.axhline(result["target_accuracy"], ls=":", c="gray", label="target")
    ax.set_xlabel("wall-clock seconds (evaluation excluded)")
    ax.set_ylabel("held-out greedy accuracy")
    ax.set_title(f"{name}: gspo-async vs TRL GRPOTrainer (GSPO)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    IMG.mkdir(parents=True, exist_ok=True)
    path = IMG / f"peer_trl-{name}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path.relative_to(ROOT))


if __name__ == "__main__":
    raise SystemExit(main())
