"""`surgery bench` measures the models of a backend in interleaved rounds (issue 21 item 1).

* every round measures every model once, in an order rotated and reversed between rounds; models are loaded
  before the first round and finished after the last;
* each figure's spread and each ratio's spread are computed across rounds, and a result is `noisy` when its
  per-round ratios disagree (hand-made timings: no clock is read by these tests);
* bench.json, bench.md and the console show the spreads and the noisy flag;
* a worker that fails in a round, or a reference model that fails, leaves the other rows measured.

Whether two runs in opposite orders agree on a quiet machine is measured, not tested: benchmarks/bench_order.py.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from surgery.bench import run as bench_run
from surgery.bench.config import BenchConfig
from surgery.bench.stats import NOISE_TOLERANCE, add_ratios, disagrees, round_order, summarize
from surgery.bench.worker import Worker
from surgery.cli.main import main as cli


class FakeWorker:
    """A measurement process without a process: its rounds are given timings, its calls go to a shared log.

    ``decode`` / ``prefill``: one value per timed-or-warm-up round (cycled); ``fail_at``: the call number (0 is
    the first round) that answers ``skipped``; ``interrupt_at``: the call number that raises KeyboardInterrupt.
    """

    def __init__(self, name, log, decode=(1.0,), prefill=(2.0,), fail_at=None, interrupt_at=None, start=None):
        self.name, self.log, self.decode, self.prefill = name, log, decode, prefill
        self.fail_at, self.interrupt_at, self.start_answer, self.calls = fail_at, interrupt_at, start, 0
        self.closed = False

    def start(self):
        self.log.append(("start", self.name))
        return self.start_answer or {"ready": True}

    def round(self):
        call, self.calls = self.calls, self.calls + 1
        self.log.append(("round", self.name))
        if call == self.interrupt_at:
            raise KeyboardInterrupt
        if call == self.fail_at:
            return {"skipped": "failed: RuntimeError: boom"}
        decode, prefill = self.decode[call % len(self.decode)], self.prefill[call % len(self.prefill)]
        return {"prefill_ms": prefill, "decode_ms_per_token": decode, "tokens_per_s": 1000.0 / decode}

    def finish(self):
        self.log.append(("finish", self.name))
        return {"peak_memory_mb": 1.0, "memory_kind": "fake", "decode_loop": "fake", "provider": None}

    def close(self):
        self.closed = True


def fake_workers(monkeypatch, log, **per_model):
    """Replace the measurement processes: model name (folder name) -> FakeWorker keyword arguments."""
    made = {}

    def start_worker(model, backend, config, threads):
        name = Path(model).name
        made[name] = FakeWorker(name, log, **per_model.get(name, {}))
        return made[name]

    monkeypatch.setattr(bench_run, "start_worker", start_worker)
    return made


@pytest.fixture(scope="module")
def three(tiny_checkpoints, tmp_path_factory):
    """Three loadable folders named a, b, c (copies of the tiny Llama: only their names matter here)."""
    import shutil

    root = tmp_path_factory.mktemp("rounds")
    for name in "abc":
        shutil.copytree(tiny_checkpoints["llama"], root / name)
    return [str(root / name) for name in "abc"]


# ------------------------------------------------------------------ the order of the rounds


@pytest.mark.parametrize("count", [1, 2, 3, 4, 5])
def test_every_round_is_a_permutation_and_the_order_changes(count):
    orders = [round_order(count, number) for number in range(2 * count)]
    assert all(sorted(order) == list(range(count)) for order in orders)  # every model in every round
    assert {order[0] for order in orders} == set(range(count))  # every model is first in some round
    assert {order[-1] for order in orders} == set(range(count))  # and last in some round
    assert orders[0] == list(range(count)) and orders[1] == list(range(count))[::-1]
    if count > 2:
        assert all(a != b for a, b in zip(orders, orders[1:]))  # the order changes every round
    if count == 2:
        assert orders == [[0, 1], [1, 0], [1, 0], [0, 1]]  # A B, B A, B A, A B: each first and last as often


def test_three_models_meet_every_order():
    assert [round_order(3, number) for number in range(6)] == [
        [0, 1, 2], [2, 1, 0], [1, 2, 0], [0, 2, 1], [2, 0, 1], [1, 0, 2],
    ]  # fmt: skip


def test_rounds_interleave_every_model_and_are_recorded(three, tmp_path, monkeypatch):
    log = []
    workers = fake_workers(monkeypatch, log)
    config = BenchConfig(models=three, repeats=4, warmup=1, out_dir=tmp_path)
    payload = bench_run.run_bench(config)
    starts = [i for i, (kind, _) in enumerate(log) if kind == "start"]
    rounds = [name for kind, name in log if kind == "round"]
    finishes = [i for i, (kind, _) in enumerate(log) if kind == "finish"]
    assert max(starts) < log.index(("round", "a")) and min(finishes) > max(
        i for i, (kind, _) in enumerate(log) if kind == "round"
    )  # every model is loaded before the first round and finished after the last
    grouped = [rounds[i : i + 3] for i in range(0, len(rounds), 3)]
    assert len(grouped) == 5 and all(sorted(group) == ["a", "b", "c"] for group in grouped)  # 1 warm-up + 4
    orders = payload["rounds"]["orders"]["torch"]
    assert [[["a", "b", "c"][i] for i in order] for order in orders] == grouped[1:]  # timed rounds, as measured
    assert len({tuple(order) for order in orders}) == 4  # no two timed rounds in the same order
    assert payload["rounds"]["count"] == 4 and payload["rounds"]["warmup"] == 1
    assert all(r["rounds"] == 4 and len(r["per_round"]["decode_ms_per_token"]) == 4 for r in payload["results"])
    assert all(worker.closed for worker in workers.values())


# ------------------------------------------------------------------ spread and noise from given timings


def _row(model, decode, prefill=None):
    prefill = prefill or [2.0] * len(decode)
    rounds = [{"prefill_ms": p, "decode_ms_per_token": d, "tokens_per_s": 1.0 / d} for p, d in zip(prefill, decode)]
    return {"model": model, "backend": "torch", **summarize(rounds)}


def test_a_burst_that_slows_a_whole_round_leaves_the_ratio_alone():
    """Times that double between rounds (load on the machine) but keep their proportion: not noisy."""
    rows = [_row("full", [10.0, 20.0, 10.0, 40.0]), _row("skip", [5.0, 10.0, 5.0, 20.0])]
    add_ratios(rows)
    skip = rows[1]
    assert skip["decode_ms_per_token"] == {"median": 7.5, "min": 5.0, "max": 20.0}  # the figure spreads 4x...
    assert skip["ratio_decode"] == 0.5 and skip["ratio_decode_spread"] == {"median": 0.5, "min": 0.5, "max": 0.5}
    assert skip["per_round"]["ratio_decode"] == [0.5, 0.5, 0.5, 0.5]  # ...the ratio does not move
    assert skip["noisy"] is False and skip["noisy_ratios"] == []
    assert rows[0]["ratio_decode"] == 1.0 and rows[0]["noisy"] is False


def test_rounds_that_disagree_make_the_result_noisy():
    rows = [_row("full", [10.0, 10.0, 10.0, 10.0, 10.0]), _row("skip", [5.0, 5.0, 5.0, 5.0, 7.0])]
    add_ratios(rows)
    skip = rows[1]
    assert skip["per_round"]["ratio_decode"] == [0.5, 0.5, 0.5, 0.5, 0.7]
    assert skip["ratio_decode"] == 0.5  # the median: one bad round does not move the headline...
    assert skip["ratio_decode_spread"] == {"median": 0.5, "min": 0.5, "max": 0.7}
    assert skip["noisy"] is True and skip["noisy_ratios"] == ["ratio_decode"]  # ...but the result is marked
    assert rows[0]["noisy"] is False  # the reference's ratio is 1 in every round


def test_the_tolerance_is_ten_percent_of_the_median_either_way():
    assert NOISE_TOLERANCE == 0.10
    assert not disagrees([1.0, 1.09, 0.91, 1.0, 1.0])
    assert disagrees([1.0, 1.11, 1.0])
    assert disagrees([1.0, 0.89, 1.0])
    assert disagrees([1.0])  # one round: agreement cannot be checked
    assert not disagrees([2.0, 2.0])


def test_prefill_noise_is_named_separately():
    rows = [_row("full", [10.0] * 3, [4.0, 4.0, 4.0]), _row("skip", [5.0] * 3, [2.0, 2.0, 3.0])]
    add_ratios(rows)
    assert rows[1]["noisy_ratios"] == ["ratio_prefill"] and rows[1]["ratio_decode_spread"]["max"] == 0.5


# ------------------------------------------------------------------ what the user sees


def test_json_table_and_console_show_spreads_and_the_noisy_flag(three, tmp_path, monkeypatch):
    fake_workers(monkeypatch, [], a={"decode": (10.0,)}, b={"decode": (5.0,)}, c={"decode": (5.0, 5.0, 8.0)})
    args = ["bench", *three, "--repeats", "3", "--warmup", "0", "--out", str(tmp_path / "out")]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    payload = json.loads((tmp_path / "out" / "bench.json").read_text())
    by_name = {Path(r["model"]).name: r for r in payload["results"]}
    assert by_name["b"]["noisy"] is False and by_name["b"]["ratio_decode"] == 0.5
    assert by_name["c"]["noisy"] is True and by_name["c"]["ratio_decode_spread"] == {
        "median": 0.5,
        "min": 0.5,
        "max": 0.8,
    }
    assert payload["noisy"] is True and payload["noise"]["tolerance"] == 0.1 and "±10%" in payload["noise"]["rule"]
    markdown = (tmp_path / "out" / "bench.md").read_text()
    assert "| c | torch | 2.0 | 5.00 (5.00–8.00) |" in markdown
    assert "0.50x (0.50–0.80) noisy |" in markdown and "| 0.50x |" in markdown  # b: one value, no range
    assert "**Noisy: c on torch.**" in markdown and "3 interleaved rounds" in markdown
    assert "0.50x (0.50–0.80) noisy" in result.stdout and "**Noisy: c on torch.**" in result.stdout
    assert "[torch round 3/3]" in result.stderr


def test_a_worker_that_fails_in_a_round_leaves_the_others_measured(three, tmp_path, monkeypatch):
    log = []
    fake_workers(monkeypatch, log, b={"fail_at": 1})
    payload = bench_run.run_bench(BenchConfig(models=three, repeats=3, warmup=0, out_dir=tmp_path))
    rows = {Path(r["model"]).name: r for r in payload["results"]}
    assert rows["b"]["skipped"] == "failed: RuntimeError: boom" and "ratio_decode" not in rows["b"]
    assert rows["a"]["rounds"] == rows["c"]["rounds"] == 3 and rows["c"]["ratio_decode"] == 1.0
    assert log.count(("round", "b")) == 2 and ("finish", "b") not in log  # not asked again after failing


def test_when_the_reference_fails_the_next_model_is_the_reference(three, tmp_path, monkeypatch):
    fake_workers(monkeypatch, [], a={"start": {"skipped": "failed: OSError: cannot load"}}, c={"decode": (2.0,)})
    payload = bench_run.run_bench(BenchConfig(models=three, repeats=2, warmup=0, out_dir=tmp_path))
    rows = {Path(r["model"]).name: r for r in payload["results"]}
    assert rows["a"]["skipped"].startswith("failed: OSError")
    assert rows["b"]["ratio_decode"] == 1.0 and rows["c"]["ratio_decode"] == 2.0
    assert payload["rounds"]["orders"]["torch"] == [[1, 2], [2, 1]]  # a is in no round


def test_an_interrupted_run_keeps_its_complete_rounds(three, tmp_path, monkeypatch):
    fake_workers(monkeypatch, [], b={"interrupt_at": 1})
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["bench", *three[:2], "--repeats", "3", "--warmup", "0", "--out", str(out)])
    assert result.exit_code != 0 and not (out / "bench.json").exists()
    partial = json.loads((out / "bench.partial.json").read_text())
    assert partial["partial"] == "1 of 3 rounds measured"
    assert [r["rounds"] for r in partial["results"]] == [1, 1]  # the half-measured second round is not kept


# ------------------------------------------------------------------ the real process, hostile ends


def _settings(model):
    return {"model": model, "backend": "torch", "device": "cpu", "dtype": "float32", "prompt_len": 4,
            "new_tokens": 2, "batch": 1, "threads": 1, "trust_remote_code": False}  # fmt: skip


def test_a_process_out_of_time_is_killed_and_reported(tiny_checkpoints):
    worker = Worker(_settings(str(tiny_checkpoints["llama"])), threads=1, timeout_s=0.05)
    answer = worker.start()
    assert answer == {"skipped": "failed: no result within 0.05 s"}
    assert worker._process.poll() is not None  # killed, not left running
    assert worker.round() == answer  # and not asked again


def test_a_model_that_cannot_load_is_one_failure_line(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    worker = Worker(_settings(str(tmp_path)), threads=1, timeout_s=120)
    answer = worker.start()
    worker.close()
    assert answer["skipped"].startswith("failed: ") and "\n" not in answer["skipped"]


def test_a_process_that_dies_between_rounds_is_reported(tiny_checkpoints):
    worker = Worker(_settings(str(tiny_checkpoints["llama"])), threads=1, timeout_s=120)
    assert worker.start() == {"ready": True}
    assert set(worker.round()) == {"prefill_ms", "decode_ms_per_token", "tokens_per_s"}
    worker._process.kill()  # dies between rounds (e.g. killed for memory)
    answer = worker.round()
    assert answer["skipped"].startswith("failed: ")
    worker.close()


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        ("echo '@bench {not json'; sleep 30", "failed: unreadable answer '{not json'"),
        ("echo '@bench [1, 2]'; sleep 30", "failed: unreadable answer '[1, 2]'"),
        ("echo 'Traceback: boom' >&2; exit 1", "failed: Traceback: boom"),
        ("exit 0", "failed: no output"),
        ("echo 'chatter without the prefix'; echo '@bench {\"ready\": true}'", None),
    ],
    ids=["garbled", "not-an-object", "dies-with-a-line", "dies-silently", "chatter-ignored"],
)
def test_a_measurement_process_that_misbehaves_is_one_failure(script, expected, tmp_path, monkeypatch):
    """Whatever the process prints or however it ends, the row gets one `failed: ...` reason, and the process
    is not left running."""
    fake = tmp_path / "python"
    fake.write_text(f"#!/bin/sh\n{script}\n")
    fake.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(fake))
    worker = Worker(_settings("unused"), threads=1, timeout_s=20)
    answer = worker.start()
    assert answer == ({"ready": True} if expected is None else {"skipped": expected})
    worker.close()
    assert worker._process.poll() is not None
