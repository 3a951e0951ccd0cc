"""TEST STAND-IN for optimum-neuron (see tests/standins/README.md): not the package."""
