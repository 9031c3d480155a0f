"""Fine-tuning for surgery checkpoints (installed as ``surgery.finetune``). Placeholder."""
