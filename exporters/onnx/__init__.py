"""``surgery export onnx``: a checkpoint written by ``surgery apply`` (or any supported model) to ONNX, with KV cache.

* :mod:`~surgery.exporters.onnx.config`: :class:`ExportConfig`, validated once at the edge;
* :mod:`~surgery.exporters.onnx.export`: :func:`export_onnx`, the entry point (optimum-onnx does the export);
* :mod:`~surgery.exporters.onnx.parity`: ONNX Runtime against PyTorch, logits and cached greedy generation;
* :mod:`~surgery.exporters.onnx.cli`: the thin click command.
"""
