"""TEST STAND-IN for transformers_neuronx (AWS Neuron SDK): the documented ``MistralForSampling``
API, run on the CPU with transformers. It is not the SDK and nothing here runs on Neuron.

Used only by the tests (``tests/standins`` is put on ``sys.path``). It keeps the documented
contract of the transformers-neuronx developer guide and is stricter where the real package is
lenient:

- ``MistralForSampling.from_pretrained(path, *, batch_size=1, tp_degree=2, amp='f32',
  n_positions=2048, context_length_estimate=None, ...)``: reads ``AutoConfig`` and the weights
  (transformers' ``MistralForCausalLM`` on the CPU); unknown keyword arguments raise TypeError (the
  real ``__init__`` swallows them in ``**kwargs``); ``amp`` must be 'f32', 'f16' or 'bf16';
  ``tp_degree`` must divide the attention heads (the developer guide's rule);
  ``max(context_length_estimate) <= max(n_positions)``.
- ``.to_neuron()``: checks ``tp_degree`` against the visible NeuronCores
  (``NEURON_RT_VISIBLE_CORES``, else the fake sysfs tree in ``WORKBOOK_NEURON_SYSFS``, through the
  torch_neuronx stand-in; never the real /sys) and casts the model to the ``amp`` dtype. No compile
  happens.
- ``.sample(input_ids, sequence_length, start_ids=None, top_k=50, top_p=1.0,
  eos_token_override=None, temperature=1.0, streamer=None, stopping_criteria_list=None)``: token
  ids, prompt included, at most ``sequence_length`` long; ``top_k=1`` is greedy. A batch size that
  was not compiled raises the real ValueError message.

The class lives in ``transformers_neuronx.mistral.model`` as in the real package and is exported
here. That module does NOT bind ``MistralForCausalLM``, so the seed service's
``from transformers_neuronx.mistral.model import MistralForCausalLM`` fails with ImportError against
this stand-in. Caution, from the real source (aws-neuron/transformers-neuronx,
``src/transformers_neuronx/mistral/model.py``): the real module imports the *internal* checkpoint
container ``transformers_neuronx.mistral.modules.MistralForCausalLM`` for its own use, so on the
real SDK that import succeeds and the seed fails one step later, when it calls the container like
a model (its ``from_pretrained`` passes ``tp_degree=...`` to ``__init__(self, config)``:
TypeError). Either way the workbook's chain records the failure with its stage.

Every call is appended to ``CALLS``.
"""
from __future__ import annotations

STANDIN = True
__version__ = "0.0.0+standin"
CALLS: list[dict] = []

# the real package's export
from transformers_neuronx.mistral.model import MistralForSampling  # noqa: E402

__all__ = ["MistralForSampling", "STANDIN", "CALLS"]
