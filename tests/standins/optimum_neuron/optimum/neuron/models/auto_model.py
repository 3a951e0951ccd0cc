"""TEST STAND-IN for ``optimum.neuron.models.auto_model`` (optimum-neuron 0.4.5): its registry of
Neuron model classes and the query the export search asks, ``has_neuron_model_class``. Not the
package: the registered "classes" are placeholders and nothing here exports or compiles."""
from __future__ import annotations

STANDIN = True
_REGISTERED_NEURON_MODELS: dict = {}


def register_neuron_model(model_type: str, task: str, mode: str):
    def wrapper(cls):
        _REGISTERED_NEURON_MODELS[(model_type, task, mode)] = cls
        return cls
    return wrapper


def has_neuron_model_class(model_type: str, task: str, mode: str) -> bool:
    from .inference import auto_models  # noqa: F401 - registers them, as the real module does

    return (model_type, task, mode) in _REGISTERED_NEURON_MODELS
