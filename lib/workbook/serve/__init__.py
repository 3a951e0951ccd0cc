"""Serving under load: the model behind an OpenAI-compatible HTTP server, and the load run on it.

``engine`` holds the model with one static KV cache per batch size and runs a batch of requests to
the end (prefill, then decode steps); ``batcher`` admits requests, queues them and hands the
waiting ones to the engine as one batch (static batching); ``vision`` builds the LLaVA-style image
prefix; ``app`` is the FastAPI application and ``cli`` the ``workbook serve`` command. The load
itself comes from GuideLLM (``bench``) and its records are turned into ``vllm bench serve``'s
metrics (``metrics``).
"""
