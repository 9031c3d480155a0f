"""GLUE for encoder models (paper §2, A.8, A.9): fine-tune a BERT-style model under a layer plan and evaluate.

* :mod:`surgery.glue.data`: the seven GLUE tasks the paper uses, read from local ``.tsv`` files
  (GLUE's ``download_glue_data.py`` layout) or from the Hub's ``nyu-mll/glue``.
* :mod:`surgery.glue.metrics`: each task's GLUE metrics and the paper's unnormalized average.
* :mod:`surgery.glue.train`: the fine-tune-then-evaluate loop, ``full`` or ``frozen`` (head only).
* :mod:`surgery.glue.cli`: the ``surgery glue`` command.
"""
