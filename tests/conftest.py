"""Test-wide set-up.

Triton's CPU interpreter must be switched on *before* triton is first imported, so this happens here, at the
top of the first file pytest imports. On a machine with a CUDA device the real compiler is used instead.
"""

import os

import torch  # importing torch does not import triton

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from hypothesis import settings  # noqa: E402

# Property tests do real linear algebra: no per-example deadline, and a modest example count so the whole
# suite stays fast on a 2-core machine. ATTNLIB_HYPOTHESIS_PROFILE=thorough runs many more examples.
settings.register_profile("default", deadline=None, max_examples=40)
settings.register_profile("thorough", deadline=None, max_examples=500)
settings.load_profile(os.environ.get("ATTNLIB_HYPOTHESIS_PROFILE", "default"))
