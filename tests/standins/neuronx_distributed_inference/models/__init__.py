"""TEST STAND-IN: ``neuronx_distributed_inference.models`` (see the package docstring)."""
