"""TEST STAND-IN for ``transformers_neuronx.mistral.model``: ``MistralForSampling`` with the
documented signatures, generating on the CPU with transformers. Not the SDK; nothing here runs on
Neuron.

Deliberately absent: ``MistralForCausalLM`` (the seed's import). See the package docstring for how
the real module differs (it binds the internal checkpoint container under that name).
"""
from __future__ import annotations

import time

import torch

STEP_S = 0.01  # seconds the stand-in's "device" takes per generated token
AMP_DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}
_KNOWN = ("n_positions", "batch_size", "amp", "tp_degree", "context_length_estimate",
          "context_unroll", "unroll", "neuron_config")


def _int_or_list(name: str, value, allow_none: bool = False) -> list[int]:
    if value is None and allow_none:
        return []
    vals = value if isinstance(value, list) else [value]
    if not vals or any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in vals):
        raise TypeError(f"MistralForSampling: {name} must be an int or a list of ints, "
                        f"got {value!r}")
    return vals


class MistralForSampling:
    """``MistralForSampling(config, *, n_positions=2048, batch_size=1, amp='f32', tp_degree=2,
    context_length_estimate=None, context_unroll=None, unroll=None, neuron_config=None)``."""

    def __init__(self, config, *, n_positions=2048, batch_size=1, amp="f32", tp_degree=2,
                 context_length_estimate=None, context_unroll=None, unroll=None,
                 neuron_config=None, **kwargs):
        if kwargs:
            raise TypeError(f"MistralForSampling got unexpected keyword arguments {sorted(kwargs)} "
                            f"(the stand-in accepts {', '.join(_KNOWN)}; the real class would "
                            "silently ignore them)")
        if getattr(config, "model_type", None) != "mistral":
            raise ValueError(f"MistralForSampling needs a mistral config, got model_type="
                             f"{getattr(config, 'model_type', None)!r}")
        if amp not in AMP_DTYPES:
            raise ValueError(f"MistralForSampling: amp={amp!r} is not one of "
                             f"{', '.join(AMP_DTYPES)}")
        if isinstance(tp_degree, bool) or not isinstance(tp_degree, int) or tp_degree < 1:
            raise TypeError(f"MistralForSampling: tp_degree must be a positive int, "
                            f"got {tp_degree!r}")
        heads = config.num_attention_heads
        if heads % tp_degree:
            raise ValueError(f"MistralForSampling: tp_degree={tp_degree} does not divide the "
                             f"{heads} attention heads (developer guide: the number of attention "
                             "heads must be divisible by tp_degree)")
        self.batch_sizes = sorted(_int_or_list("batch_size", batch_size))
        if 0 in self.batch_sizes:
            raise ValueError("MistralForSampling: batch_size must be at least 1")
        positions = _int_or_list("n_positions", n_positions)
        estimates = _int_or_list("context_length_estimate", context_length_estimate,
                                 allow_none=True)
        if estimates and max(estimates) > max(positions):
            raise ValueError(f"MistralForSampling: max(n_positions)={max(positions)} must be >= "
                             f"max(context_length_estimate)={max(estimates)}")
        self.config = config
        self.n_positions = max(positions)
        self.amp = amp
        self.tp_degree = tp_degree
        self.context_length_estimate = context_length_estimate
        self.neuron_config = neuron_config
        self._hf = None
        self._on_neuron = False

    @classmethod
    def from_pretrained(cls, pretrained_model_path, *model_args, **kwargs):
        """``AutoConfig.from_pretrained(path)``, ``cls(config, **kwargs)``, then the weights (CPU,
        transformers)."""
        from transformers import AutoConfig, MistralForCausalLM

        import transformers_neuronx as pkg

        config = AutoConfig.from_pretrained(pretrained_model_path)
        self = cls(config, *model_args, **kwargs)
        self._hf = MistralForCausalLM.from_pretrained(pretrained_model_path,
                                                      dtype=torch.float32).eval()
        pkg.CALLS.append({"fn": "MistralForSampling.from_pretrained",
                          "path": str(pretrained_model_path), **kwargs})
        return self

    def to_neuron(self):
        """Real: shard, compile every bucket, load onto ``tp_degree`` NeuronCores. Stand-in: check
        the core count and cast to the ``amp`` dtype."""
        from torch_neuronx import visible_core_count  # the stand-in: never reads the real /sys

        import transformers_neuronx as pkg

        if self._hf is None:
            raise RuntimeError("MistralForSampling.to_neuron: no weights (construct it with "
                               "from_pretrained)")
        cores = visible_core_count()
        if self.tp_degree > cores:
            raise RuntimeError(f"MistralForSampling.to_neuron: tp_degree={self.tp_degree} needs "
                               f"{self.tp_degree} NeuronCores but {cores} are visible")
        self._hf = self._hf.to(AMP_DTYPES[self.amp])
        self._on_neuron = True
        pkg.CALLS.append({"fn": "MistralForSampling.to_neuron", "tp_degree": self.tp_degree,
                          "amp": self.amp, "dtype": str(self._hf.dtype)})

    def sample(self, input_ids, sequence_length, start_ids=None, top_k=50, top_p=1.0,
               eos_token_override=None, temperature=1.0, streamer=None,
               stopping_criteria_list=None):
        """Token ids, prompt included (``sequence_length`` total at most); ``top_k=1`` is greedy."""
        import transformers_neuronx as pkg

        if not self._on_neuron:
            raise RuntimeError("MistralForSampling.sample: call to_neuron() first")
        if (not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2
                or input_ids.dtype != torch.long):
            raise TypeError("MistralForSampling.sample: input_ids must be a 2-D torch.long tensor")
        if start_ids is not None or streamer is not None or stopping_criteria_list is not None:
            raise NotImplementedError("the transformers_neuronx stand-in does not model start_ids, "
                                      "streamer or stopping_criteria_list")
        batch_size, context_length = input_ids.shape
        if batch_size not in self.batch_sizes:
            raise ValueError(f"Model not compiled for batch_size : {batch_size}. Acceptable "
                             f"batch_size is one of the following {self.batch_sizes}")
        if isinstance(sequence_length, bool) or not isinstance(sequence_length, int):
            raise TypeError(f"MistralForSampling.sample: sequence_length must be an int, "
                            f"got {sequence_length!r}")
        if not context_length < sequence_length <= self.n_positions:
            raise ValueError(f"MistralForSampling.sample: sequence_length={sequence_length} must "
                             f"be above the context length {context_length} and at most "
                             f"n_positions={self.n_positions}")
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise TypeError(f"MistralForSampling.sample: top_k must be a positive int, "
                            f"got {top_k!r}")
        if not 0.0 < float(top_p) <= 1.0 or float(temperature) <= 0.0:
            raise ValueError(f"MistralForSampling.sample: need 0 < top_p <= 1 and temperature > 0, "
                             f"got top_p={top_p}, temperature={temperature}")
        eos = self.config.eos_token_id if eos_token_override is None else eos_token_override
        first_eos = eos[0] if isinstance(eos, (list, tuple)) else eos
        kw = dict(max_new_tokens=sequence_length - context_length, eos_token_id=eos,
                  pad_token_id=first_eos, attention_mask=torch.ones_like(input_ids))
        if top_k == 1:
            kw.update(do_sample=False)
        else:
            kw.update(do_sample=True, top_k=top_k, top_p=float(top_p),
                      temperature=float(temperature))
        pkg.CALLS.append({"fn": "MistralForSampling.sample", "shape": list(input_ids.shape),
                          "sequence_length": sequence_length, "top_k": top_k})
        with torch.inference_mode():
            out = self._hf.generate(input_ids, **kw)
        # a device takes time per step; the tiny CPU model alone is so fast that a busy CPU's
        # noise can make a one-token call look slower than a full one
        time.sleep(STEP_S * (out.shape[1] - context_length))
        return out
