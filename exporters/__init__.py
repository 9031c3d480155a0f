"""Exporters for surgery checkpoints (installed as ``surgery.exporters``): ``onnx`` (``surgery export onnx``)."""
