"""Quantize / dequantize-sum-requantize / dequantize kernels: Triton on CUDA (`triton_kernels`), a torch reference
elsewhere (`reference`), the byte layout both share, the analytic error bound and the launch sizes."""
