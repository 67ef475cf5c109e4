"""Shared test set-up: Triton's interpreter on machines without CUDA, and hypothesis profiles.

TRITON_INTERPRET must be set before any @triton.jit function is defined, hence here, before the package is imported.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from hypothesis import HealthCheck, settings  # noqa: E402

_common = dict(deadline=None, print_blob=True, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", max_examples=15, **_common)
settings.register_profile("ci", max_examples=25, **_common)
settings.register_profile("gpu", max_examples=30, **_common)
settings.register_profile("thorough", max_examples=300, **_common)  # after a kernel change
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))
