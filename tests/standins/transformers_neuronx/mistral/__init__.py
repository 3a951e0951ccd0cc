"""TEST STAND-IN: ``transformers_neuronx.mistral`` (see the package docstring). Not the SDK."""
