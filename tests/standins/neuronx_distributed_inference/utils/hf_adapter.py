"""TEST STAND-IN for ``neuronx_distributed_inference.utils.hf_adapter``: ``load_pretrained_config``
and ``HuggingFaceGenerationAdapter`` with the documented calls. Not the SDK; generation runs on the
CPU."""
from __future__ import annotations

import torch

from neuronx_distributed_inference.models.config import to_torch_dtype

GENERATE_KWARGS = ("max_new_tokens", "max_length", "do_sample", "top_k", "top_p", "temperature",
                   "eos_token_id", "pad_token_id")


def load_pretrained_config(model_path_or_name=None, hf_config=None):
    """A ``load_config`` hook for ``InferenceConfig``: copies a Hugging Face config's attributes."""

    def load_config(self) -> None:
        from transformers import AutoConfig

        if (model_path_or_name is None) == (hf_config is None):
            raise ValueError('Please provide only one of "model_path_or_name" or "hf_config"')
        config = (AutoConfig.from_pretrained(model_path_or_name)
                  if model_path_or_name is not None else hf_config)
        d = config.to_dict()
        for key in ("torch_dtype", "dtype"):  # transformers 5 writes "dtype"
            value = d.pop(key, None)
            if value is not None and not self.neuron_config.overrides_torch_dtype:
                self.neuron_config.torch_dtype = (to_torch_dtype(value) if isinstance(value, str)
                                                  else value)
        self.__dict__.update(d)

    return load_config


class HuggingFaceGenerationAdapter:
    """``HuggingFaceGenerationAdapter(model).generate(input_ids, attention_mask=None,
    generation_config=None, **kwargs)``: returns the (padded) prompt followed by the new tokens;
    finished rows are padded."""

    def __init__(self, model):
        from neuronx_distributed_inference.models.mistral.modeling_mistral import (
            NeuronMistralForCausalLM)

        if not isinstance(model, NeuronMistralForCausalLM):
            raise TypeError(f"HuggingFaceGenerationAdapter: model must be a Neuron application, "
                            f"got {type(model).__name__}")
        self.neuron_model = model
        self.neuron_config = model.config.neuron_config
        self.padding_side = self.neuron_config.padding_side

    def generate(self, input_ids, attention_mask=None, generation_config=None, **kwargs):
        import neuronx_distributed_inference as pkg

        unknown = sorted(set(kwargs) - set(GENERATE_KWARGS))
        if unknown or generation_config is not None:
            raise TypeError(f"HuggingFaceGenerationAdapter.generate (stand-in): unsupported "
                            f"arguments {unknown or ['generation_config']}; it models "
                            f"{', '.join(GENERATE_KWARGS)}")
        if (not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2
                or input_ids.dtype != torch.long):
            raise TypeError("HuggingFaceGenerationAdapter.generate: input_ids must be a 2-D "
                            "torch.long tensor")
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        if mask.shape != input_ids.shape:
            raise ValueError(f"attention_mask shape {tuple(mask.shape)} differs from input_ids "
                             f"{tuple(input_ids.shape)}")
        nc = self.neuron_config
        batch, width = input_ids.shape
        if batch != nc.batch_size:
            raise ValueError(f"HuggingFaceGenerationAdapter.generate: batch {batch} is not the "
                             f"compiled batch_size {nc.batch_size}")
        new = kwargs.pop("max_new_tokens", None)
        if new is None:
            new = kwargs.pop("max_length", nc.max_length) - width
        kwargs.pop("max_length", None)
        if width > nc.max_context_length or width + new > nc.seq_len:
            raise ValueError(f"HuggingFaceGenerationAdapter.generate: prompt width {width} + {new} "
                             f"new tokens does not fit seq_len={nc.seq_len} "
                             f"(max_context_length={nc.max_context_length})")
        cfg = self.neuron_model.config
        eos = kwargs.pop("eos_token_id", getattr(cfg, "eos_token_id", None))
        pad = kwargs.pop("pad_token_id", None)
        if pad is None:
            pad = eos[0] if isinstance(eos, (list, tuple)) else (eos if eos is not None else 0)
        if not kwargs.get("do_sample", False):
            for k in ("top_k", "top_p", "temperature"):
                kwargs.pop(k, None)
        rows = [ids[m.bool()] for ids, m in zip(input_ids, mask)]
        gens = self.neuron_model.generate_rows(rows, max_new_tokens=new, eos_token_id=eos,
                                               pad_token_id=pad, **kwargs)
        steps = max(len(g) for g in gens)
        out = torch.full((batch, width + steps), pad, dtype=torch.long)
        out[:, :width] = input_ids
        for i, g in enumerate(gens):
            out[i, width:width + len(g)] = g
        self.neuron_model.kv_cache_populated = True
        pkg.CALLS.append({"fn": "HuggingFaceGenerationAdapter.generate", "shape": [batch, width],
                          "max_new_tokens": new, "padding_side": self.padding_side})
        return out
