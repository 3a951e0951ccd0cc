"""Triton kernels for the SigLIP-2 encoder block, each beside the plain PyTorch it replaces.

Why they exist: the seed report's fused MLP (GELU applied on the fp32 accumulator, activation
recomputed in backward), fused QKV, Triton LayerNorm and an encoder assembled from them, measured
for precision (against fp64) and speed (against transformers' sdpa model) by
``notebooks/triton_precision``.

On a machine without a GPU the kernels run under the Triton interpreter: ``TRITON_INTERPRET=1`` must
be set *before* this package is imported (``runtime.unavailable_reason`` says so when it is not).
"""

# How the QKV projection may run (see heads.ln_qkv_heads). Here, not in heads.py, so that model
# options can be checked without importing Triton: importing the kernels fixes TRITON_INTERPRET for
# the whole process.
QKV_PROJECTIONS = ("planes", "concat", "triton")
