"""TEST STAND-IN for ``neuronx_distributed_inference.models.mistral.modeling_mistral``:
``MistralInferenceConfig`` and ``NeuronMistralForCausalLM`` with the documented methods, running
transformers' ``MistralForCausalLM`` on the CPU. Not the SDK; compile writes no NEFF."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from neuronx_distributed_inference.models.config import InferenceConfig, NeuronConfig

_MARKER = "standin-compiled.txt"


class MistralInferenceConfig(InferenceConfig):
    def get_required_attributes(self) -> list[str]:
        return ["hidden_size", "num_attention_heads", "num_hidden_layers", "num_key_value_heads",
                "vocab_size", "max_position_embeddings", "rms_norm_eps", "hidden_act"]


class NeuronMistralForCausalLM:
    """``NeuronMistralForCausalLM(model_path, config=None, neuron_config=None)``."""

    def __init__(self, model_path, config=None, neuron_config=None):
        if not isinstance(model_path, (str, Path)):
            raise TypeError(f"NeuronMistralForCausalLM: model_path must be a path, "
                            f"got {type(model_path).__name__}")
        if not isinstance(config, InferenceConfig):
            raise TypeError("NeuronMistralForCausalLM: config must be an InferenceConfig "
                            "(MistralInferenceConfig); the stand-in does not rebuild one from a "
                            "compiled folder")
        if neuron_config is not None and not isinstance(neuron_config, NeuronConfig):
            raise TypeError("NeuronMistralForCausalLM: neuron_config must be a NeuronConfig")
        nc = config.neuron_config
        if config.num_attention_heads % nc.tp_degree:
            raise ValueError(f"NeuronMistralForCausalLM: tp_degree={nc.tp_degree} does not divide "
                             f"the {config.num_attention_heads} attention heads (API guide: heads "
                             "divisible by tp)")
        self.model_path = str(model_path)
        self.config = config
        self.neuron_config = nc
        self.kv_cache_populated = False
        self.hf = None
        self.compiled_path = None

    def compile(self, compiled_model_path, debug=False, pre_shard_weights_hook=None,
                dry_run=False):
        """Real: trace and compile the context/token graphs into ``compiled_model_path``.
        Stand-in: writes ``neuron_config.json`` and a marker file."""
        import neuronx_distributed_inference as pkg

        if not isinstance(compiled_model_path, (str, Path)):
            raise TypeError("NeuronMistralForCausalLM.compile: compiled_model_path must be a path")
        d = Path(compiled_model_path)
        d.mkdir(parents=True, exist_ok=True)
        (d / "neuron_config.json").write_text(json.dumps(self.neuron_config.to_dict(), indent=1))
        if not dry_run:
            (d / _MARKER).write_text("TEST STAND-IN for NxDI: no NEFF here; nothing ran on "
                                     "Neuron.\n")
        pkg.CALLS.append({"fn": "NeuronMistralForCausalLM.compile", "path": str(d),
                          "dry_run": dry_run})

    def load(self, compiled_model_path, start_rank_id=None, local_ranks_size=None,
             skip_warmup=False):
        """Real: load the compiled model and sharded weights onto ``tp_degree`` NeuronCores.
        Stand-in: check the folder and the core count, load the weights on the CPU in
        ``torch_dtype``."""
        from torch_neuronx import visible_core_count  # the stand-in: never reads the real /sys
        from transformers import MistralForCausalLM

        import neuronx_distributed_inference as pkg

        d = Path(compiled_model_path)
        if not (d / _MARKER).is_file() or not (d / "neuron_config.json").is_file():
            raise FileNotFoundError(f"NeuronMistralForCausalLM.load: {d} holds no compiled model "
                                    "(call compile first)")
        saved = json.loads((d / "neuron_config.json").read_text())
        now = self.neuron_config.to_dict()
        differs = sorted(k for k in ("tp_degree", "batch_size", "seq_len", "torch_dtype")
                         if saved.get(k) != now[k])
        if differs:
            raise ValueError(f"NeuronMistralForCausalLM.load: {d} was compiled with other "
                             f"{', '.join(differs)}")
        cores = visible_core_count()
        tp = self.neuron_config.tp_degree
        if tp > cores:
            raise RuntimeError(f"NeuronMistralForCausalLM.load: tp_degree={tp} needs that many "
                               f"NeuronCores but {cores} are visible")
        self.hf = MistralForCausalLM.from_pretrained(
            self.model_path, dtype=self.neuron_config.torch_dtype).eval()
        self.compiled_path = str(d)
        pkg.CALLS.append({"fn": "NeuronMistralForCausalLM.load", "path": str(d),
                          "skip_warmup": skip_warmup})

    def generate_rows(self, rows: list[torch.Tensor], **kw) -> list[torch.Tensor]:
        """Stand-in helper for the adapter: each unpadded prompt through transformers; the new
        tokens."""
        if self.hf is None:
            raise RuntimeError("NeuronMistralForCausalLM: call load() before generating")
        out = []
        with torch.inference_mode():
            for ids in rows:
                ids = ids[None]
                gen = self.hf.generate(ids, attention_mask=torch.ones_like(ids), **kw)
                out.append(gen[0, ids.shape[1]:])
        return out
