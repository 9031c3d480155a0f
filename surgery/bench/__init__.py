"""``surgery bench``: latency of variants side by side, measured in one run, as ratios to the first model.

* :mod:`~surgery.bench.config`: :class:`BenchConfig`;
* :mod:`~surgery.bench.measure`: one model x one backend, run in its own process (its own threads, its own
  peak memory), one round at a time: prefill latency, decode latency per token with the KV cache, tokens/s;
* :mod:`~surgery.bench.worker`: the parent's side of that process (kept warm, answers against a time budget);
* :mod:`~surgery.bench.stats`: the order of the interleaved rounds, spreads, per-round ratios, the noisy rule;
* :mod:`~surgery.bench.decode`: the lean static-cache decode loop of ``--backend torch-compile``;
* :mod:`~surgery.bench.weights`: the physical bounds beside the figures: weight bytes read and sequential steps
  per decoded token;
* :mod:`~surgery.bench.run`: the entry point (every backend, its models in interleaved rounds, machine record);
* :mod:`~surgery.bench.report`: ``bench.json``, a markdown table and a PNG;
* :mod:`~surgery.bench.cli`: the thin command.
"""
