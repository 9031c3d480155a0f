"""Checkpoint I/O: locating source models and streaming safetensors."""
