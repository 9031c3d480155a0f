"""``surgery finetune``: heal a layer-surgery variant with full or LoRA fine-tuning (installed as ``surgery.finetune``).

``config`` (settings), ``data`` (ARC / jsonl -> tokens and labels), ``loop`` (the one resumable training loop),
``full`` and ``lora`` (which parameters train), ``write`` (the standalone checkpoint of the input's kind),
``report`` (train_log.jsonl, loss.png), ``run`` (entry point and ``check()``), ``cli`` (the command).
"""
