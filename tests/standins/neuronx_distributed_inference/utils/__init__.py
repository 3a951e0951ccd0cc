"""TEST STAND-IN: ``neuronx_distributed_inference.utils`` (see the package docstring)."""
