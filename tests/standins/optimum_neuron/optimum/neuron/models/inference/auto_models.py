"""TEST STAND-IN for ``optimum.neuron.models.inference.auto_models``: the text-generation decoders
optimum-neuron's documentation lists (supported architectures page), registered with placeholders.
Mistral is not among them, as in every optimum-neuron after 0.1.0."""
from ..auto_model import register_neuron_model

DECODERS = ("gemma3_text", "granite", "llama", "llama4_text", "mixtral", "phi3", "qwen2", "qwen3",
            "qwen3_moe", "smollm3")

for _model_type in DECODERS:
    register_neuron_model(_model_type, "text-generation", "inference")(object)
