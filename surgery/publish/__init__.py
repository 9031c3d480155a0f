"""Publishing a checkpoint: ``surgery card`` (re-render README.md) and ``surgery push`` (upload to the Hub).

``config`` (settings), ``measurements`` (eval / bench files, validated and checked against the checkpoint),
``results`` (their card sections and ``model-index``), ``checkpoint`` (what is published and which files),
``files`` (reading a folder for upload without leaving it), ``render`` (``surgery card``), ``push``
(``surgery push``), ``cli`` (both commands). The card itself is
rendered by :mod:`surgery.apply.card`.
"""
