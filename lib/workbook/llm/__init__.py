"""The LLM wing, one module per job.

Mistral on Neuron: neuron (the path chain and its probe), neuron_paths (NxD Inference,
transformers-neuronx). Tensor parallelism over torchrun ranks on CUDA or the CPU: shard (the plans
and the one check of every dimension they split), launch (starts the ranks), decode (runs in each),
styles, validate (one export-search attempt). The export search: search_plan (candidates and
rules), search (the resumable state and loop), attempts (one process per try), search_cli.
"""
