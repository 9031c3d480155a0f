"""Benchmark evaluation of layer-plan variants (``surgery eval``): the paper's Llama benchmarks via lm-eval.

* :mod:`~surgery.evaluation.tasks`: the six benchmarks, Hub or local data, generated task YAMLs
* :mod:`~surgery.evaluation.data`: local files -> the Hub schema lm-eval's stock tasks expect
* :mod:`~surgery.evaluation.harness`: lm-eval's ``HFLM`` + ``simple_evaluate`` on the in-memory planned model
* :mod:`~surgery.evaluation.normalize`: the paper's normalized score (median) and GLUE's unnormalized average
* :mod:`~surgery.evaluation.report`: results JSON and the printed table
* :mod:`~surgery.evaluation.cli`: the ``eval`` click command
"""
