"""Quantize / dequantize-sum-requantize / dequantize kernels: Triton on CUDA, a torch reference elsewhere.

Importing this package registers the `torch.ops.flashcomm` custom ops.
"""

from . import ops  # noqa: F401
