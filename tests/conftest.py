"""Shared test set-up: Triton's interpreter on machines without CUDA, no graph cache, and hypothesis profiles.

TRITON_INTERPRET must be set before any @triton.jit function is defined, hence here, before the package is imported.
"""

import os

# Each test sees the pass run: Inductor's FX graph cache (and AOTAutograd's, which needs it) is off unless a test
# turns it on, or a graph another test compiled would come back from the cache with no record of its rewrite.
os.environ.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE_DEFAULT", "0")

import torch  # noqa: E402

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from hypothesis import HealthCheck, settings  # noqa: E402

_common = dict(deadline=None, print_blob=True, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", max_examples=15, **_common)
settings.register_profile("ci", max_examples=25, **_common)
settings.register_profile("gpu", max_examples=30, **_common)
settings.register_profile("thorough", max_examples=300, **_common)  # after a kernel change
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))
