"""surgery: layer surgery on pretrained transformers ("Transformer Layers as Painters").

Pipeline (one module per stage):

    plan text / YAML --(surgery.plan.spec)--> LayerPlan ops
        --(surgery.plan.resolve)--> ExecutionPlan (sequence of steps over source layers)
        --(surgery.apply.materialize)--> checkpoint directory (via surgery.io.*)

Floors, each importing only the ones below it:

1. foundation: ``errors``, ``fileio``, ``text_limits``, ``quiet``, ``config`` (shared pydantic types), and
   ``modeling`` (the shipped model class, which imports nothing of ours);
2. ``plan`` (pure: text/YAML to an execution plan) and ``io`` (files, the Hub, the trust policy for model code);
3. ``architectures`` (what each family looks like, detection, loading);
4. ``apply`` (the checkpoint writer, provenance, the card, in-memory plans);
5. the commands: ``analysis``, ``evaluation``, ``glue``, ``bench``, ``publish``, ``sweep``, ``finetune``,
   ``exporters``, and ``cli`` (the ``surgery`` group that loads them lazily).
"""

__version__ = "0.1.0"
PROJECT_URL = "https://github.com/surgery-tools/surgery"  # also [project.urls] in pyproject.toml
