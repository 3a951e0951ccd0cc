"""The LLM wing: Mistral on Neuron (neuron), tensor parallelism over torchrun ranks on CUDA or the CPU
(launch starts the ranks, worker runs in each), and the export-configuration search (search)."""
