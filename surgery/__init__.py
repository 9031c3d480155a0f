"""surgery: layer surgery on pretrained transformers ("Transformer Layers as Painters").

Pipeline (one module per stage):

    plan text / YAML --(surgery.plan.spec)--> LayerPlan ops
        --(surgery.plan.resolve)--> ExecutionPlan (sequence of steps over source layers)
        --(surgery.materialize)--> checkpoint directory (via surgery.io.*)
"""

__version__ = "0.1.0"
PROJECT_URL = "https://github.com/surgery-tools/surgery"  # also [project.urls] in pyproject.toml
