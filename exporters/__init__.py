"""Exporters for surgery checkpoints (installed as ``surgery.exporters``). Placeholder."""
