"""Architecture knowledge: which families surgery handles and how their checkpoints are laid out.

``specs`` (the registry: block-list names, layer-count keys, per-layer config keys, as data),
``detect`` (structure of an unknown checkpoint, found on the meta device), ``cache`` (detections cached per
config hash), ``layer_config`` (per-layer config lists a plan must rewrite), ``integrity`` (a checkpoint's
tensors and config agree with its architecture) and ``loading`` (loading a model of a known architecture).
Imports the foundation modules, ``surgery.io`` and ``surgery.plan``; nothing from the apply pipeline or the
commands.
"""
