"""TEST STAND-IN for ``neuronx_distributed_inference.models.config``: ``NeuronConfig`` and
``InferenceConfig`` with the documented arguments and defaults. Not the SDK."""
from __future__ import annotations

import torch

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def to_torch_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ValueError(f"NeuronConfig: torch_dtype {name!r} is not one of "
                         f"{', '.join(DTYPES)}")
    return DTYPES[name]


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise TypeError(f"NeuronConfig: {name} must be a positive int, got {value!r}")
    return value


class NeuronConfig:
    """``NeuronConfig(**kwargs)``: defaults tp_degree=1, batch_size=1, seq_len=128,
    torch_dtype=bfloat16, padding_side='right'; n_positions, max_context_length and max_length
    default to seq_len."""

    KNOWN = ("tp_degree", "batch_size", "seq_len", "torch_dtype", "padding_side", "n_positions",
             "max_context_length", "max_length", "max_new_tokens", "enable_bucketing",
             "on_device_sampling_config", "logical_nc_config", "save_sharded_checkpoint",
             "overrides_torch_dtype")

    def __init__(self, **kwargs) -> None:
        unknown = sorted(set(kwargs) - set(self.KNOWN))
        if unknown:
            raise TypeError(f"NeuronConfig: unexpected keyword arguments {unknown} (the stand-in "
                            f"knows {', '.join(self.KNOWN)}; the real class only logs a warning)")
        self.tp_degree = _positive_int("tp_degree", kwargs.pop("tp_degree", 1))
        self.batch_size = _positive_int("batch_size", kwargs.pop("batch_size", 1))
        self.seq_len = _positive_int("seq_len", kwargs.pop("seq_len", 128))
        self.padding_side = kwargs.pop("padding_side", "right")
        if self.padding_side not in ("left", "right"):
            raise ValueError(f"NeuronConfig: padding_side must be 'left' or 'right', "
                             f"got {self.padding_side!r}")
        self.n_positions = _positive_int("n_positions", kwargs.pop("n_positions", self.seq_len))
        self.max_context_length = _positive_int("max_context_length",
                                                kwargs.pop("max_context_length", self.seq_len))
        self.max_length = _positive_int("max_length", kwargs.pop("max_length", self.seq_len))
        new = kwargs.pop("max_new_tokens", self.seq_len - self.max_context_length)
        self.max_new_tokens = new or None
        if "torch_dtype" in kwargs:
            dtype = kwargs.pop("torch_dtype")
            dtype = to_torch_dtype(dtype) if isinstance(dtype, str) else dtype
            if dtype not in DTYPES.values():
                raise TypeError(f"NeuronConfig: torch_dtype must be a torch dtype among "
                                f"{', '.join(DTYPES)}, got {dtype!r}")
            self.torch_dtype = dtype
            self.overrides_torch_dtype = kwargs.pop("overrides_torch_dtype", True)
        else:
            self.torch_dtype = torch.bfloat16
            self.overrides_torch_dtype = False
        self.enable_bucketing = kwargs.pop("enable_bucketing", False)
        self.on_device_sampling_config = kwargs.pop("on_device_sampling_config", None)
        self.logical_nc_config = kwargs.pop("logical_nc_config", 1)
        self.save_sharded_checkpoint = kwargs.pop("save_sharded_checkpoint", True)

    def to_dict(self) -> dict:
        return {k: (str(v).split(".")[-1] if isinstance(v, torch.dtype) else v)
                for k, v in vars(self).items() if k != "on_device_sampling_config"}


class InferenceConfig:
    """``InferenceConfig(neuron_config, fused_spec_config=None, load_config=None, metadata=None,
    **kwargs)``: ``load_config(self)`` fills the model attributes, then ``validate_config`` checks
    the required ones."""

    def __init__(self, neuron_config, fused_spec_config=None, load_config=None, metadata=None,
                 **kwargs):
        if not isinstance(neuron_config, NeuronConfig):
            raise TypeError("InferenceConfig: neuron_config must be a NeuronConfig, got "
                            f"{type(neuron_config).__name__}")
        self.neuron_config = neuron_config
        self.fused_spec_config = fused_spec_config
        if load_config is not None:
            load_config(self)
        self.metadata = metadata
        for key, value in kwargs.items():
            setattr(self, key, value)
        self.validate_config()

    def get_required_attributes(self) -> list[str]:
        return []

    def validate_config(self) -> None:
        missing = [a for a in self.get_required_attributes() if not hasattr(self, a)]
        if missing:
            raise AssertionError(f"Config must define {missing}")
