"""Command-line plumbing: the ``surgery`` group (``main``), shared click options and missing-extra messages.

Each command's own code lives in its package (``surgery.bench.cli``, ``surgery.finetune.cli``, ...) and is
imported lazily by ``main`` when that command runs.
"""
