"""The apply pipeline: a resolved plan becomes a checkpoint directory, or a model in memory.

``materialize`` (streaming apply into an atomic output directory), ``provenance`` (``surgery.json``),
``card`` (the README model card), ``inmemory`` (the same plan on a loaded model, no checkpoint written) and
``demo`` (the newcomer's end-to-end run). Sits above ``surgery.architectures`` and ``surgery.io``.
"""
