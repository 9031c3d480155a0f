"""Configuration of surgery checkpoints that the source architecture cannot express.

This file is copied verbatim into every such checkpoint and loaded there with ``trust_remote_code=True``;
it depends only on ``transformers``, never on the ``surgery`` package.

A ``SurgeryConfig`` is the source model's config, flat (``hidden_size``, ``vocab_size``, ... keep their
meaning), plus:

* ``source_model_type`` / ``source_architectures``: what the stored layers are (e.g. ``llama`` /
  ``LlamaForCausalLM``);
* ``surgery_layer_list``: dotted path of the block list inside the wrapped source model (``model.layers``);
* ``surgery_stored_layers``: how many layers' weights are stored (``surgery_source_layers`` gives the
  source layer each one came from);
* ``surgery_steps``: the executed sequence, one list of stored-layer indices per step; a list of several
  indices is a parallel group whose outputs are averaged;
* ``num_hidden_layers``: the number of executed layer *instances* (one KV-cache slot each), with
  ``layer_types`` (when the source has it) giving each instance's attention type, so caches built from this
  config by ``generate`` have the right shape;
* ``surgery_fuse_parallel`` (default true): parallel groups of Llama-family layers run fused at inference
  (same numbers, fewer kernels; see ``modeling_surgery``). Set it false to run members one by one.
"""

from __future__ import annotations

from transformers import PretrainedConfig

SURGERY_KEYS = (
    "source_model_type",
    "source_architectures",
    "surgery_layer_list",
    "surgery_stored_layers",
    "surgery_source_layers",
    "surgery_stored_layer_types",
    "surgery_steps",
    "surgery_plan",
    "surgery_fuse_parallel",
)


class SurgeryConfig(PretrainedConfig):
    """Source config + an executed layer sequence over stored layers (see module docstring)."""

    model_type = "surgery"

    def __init__(
        self,
        source_model_type: str | None = None,
        source_architectures: list[str] | None = None,
        surgery_layer_list: str | None = None,
        surgery_stored_layers: int = 0,
        surgery_source_layers: list[int] | None = None,
        surgery_stored_layer_types: list[str] | None = None,
        surgery_steps: list[list[int]] | None = None,
        surgery_plan: str | None = None,
        surgery_fuse_parallel: bool = True,
        **kwargs,
    ):
        self.source_model_type = source_model_type
        self.source_architectures = source_architectures or []
        self.surgery_layer_list = surgery_layer_list
        self.surgery_stored_layers = surgery_stored_layers
        self.surgery_source_layers = surgery_source_layers or []
        self.surgery_stored_layer_types = surgery_stored_layer_types
        self.surgery_steps = [list(step) for step in (surgery_steps or [])]
        self.surgery_plan = surgery_plan
        self.surgery_fuse_parallel = surgery_fuse_parallel
        super().__init__(**kwargs)

    def source_config_dict(self) -> dict:
        """The wrapped source model's config as a dict, sized for the *stored* layers."""
        fields = {
            key: value
            for key, value in self.to_dict().items()
            if key not in SURGERY_KEYS
            and key not in ("model_type", "auto_map", "architectures", "transformers_version")
        }
        fields["num_hidden_layers"] = self.surgery_stored_layers
        if self.surgery_stored_layer_types is not None:
            fields["layer_types"] = list(self.surgery_stored_layer_types)
        fields["architectures"] = list(self.source_architectures)
        return fields
