"""TEST STAND-IN for neuronx_distributed_inference (NxDI, AWS Neuron SDK): the documented Mistral
classes, run on the CPU with transformers. It is not the SDK and nothing here runs on Neuron.

Used only by the tests (``tests/standins`` is put on ``sys.path``). Modules, as in the real
package:

- ``models.config``: ``NeuronConfig(**kwargs)`` (tp_degree, batch_size, seq_len, torch_dtype,
  padding_side, max_context_length, n_positions, ...) and ``InferenceConfig(neuron_config,
  fused_spec_config=None, load_config=None, metadata=None, **kwargs)``. Unknown NeuronConfig
  keywords raise TypeError (the real one only logs a warning).
- ``models.mistral.modeling_mistral``: ``MistralInferenceConfig`` and
  ``NeuronMistralForCausalLM(model_path, config=None, neuron_config=None)`` with
  ``compile(compiled_model_path, debug=False, pre_shard_weights_hook=None, dry_run=False)``
  (writes ``neuron_config.json`` and a marker, not a NEFF) and ``load(compiled_model_path,
  start_rank_id=None, local_ranks_size=None, skip_warmup=False)`` (needs a compiled folder, checks
  tp_degree against the visible NeuronCores through the torch_neuronx stand-in, loads
  transformers' ``MistralForCausalLM`` on the CPU in ``torch_dtype``).
- ``utils.hf_adapter``: ``load_pretrained_config(model_path_or_name=None, hf_config=None)`` and
  ``HuggingFaceGenerationAdapter(model).generate(input_ids, attention_mask=None,
  generation_config=None, max_new_tokens=..., do_sample=..., top_k=..., top_p=...,
  temperature=...)``: the padded prompt followed by the new tokens, as the real adapter returns
  them.

Stricter than the real package where that catches misuse: tp_degree must divide the attention heads
(the API guide's rule; real NxDI pads heads), the input batch must equal the compiled batch_size,
and the prompt plus new tokens must fit in seq_len. Every call is appended to ``CALLS``.
"""
from __future__ import annotations

STANDIN = True
__version__ = "0.0.0+standin"
CALLS: list[dict] = []
