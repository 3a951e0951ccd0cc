"""TEST STAND-IN: ``neuronx_distributed_inference.models.mistral`` (see the package docstring)."""
