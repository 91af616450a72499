"""attnlib: attention, the Transformer layer, the KV cache and FlashAttention, twice.

* ``attnlib.numpy`` -- readable reference implementations on NumPy arrays.
* ``attnlib.torch`` -- the same names as PyTorch functions and ``nn.Module``s (CPU, CUDA, autograd),
  plus a Triton FlashAttention kernel.

The two namespaces share one vocabulary: ``q, k, v, scale, mask, causal, m, l, acc, block_q, block_k``.
Importing ``attnlib`` alone imports neither NumPy- nor torch-heavy code; import the namespace you need.
``attnlib.set_finite_checks(False)`` switches off the NaN/inf/overflow scans of both namespaces (see ``_checks``).

``attnlib.sizes`` counts a model's parameters, KV-cache bytes and multiply-adds from its configuration alone,
in pure Python.
"""

from ._settings import finite_checks, finite_checks_set_to, set_finite_checks

__version__ = "0.1.0"
__all__ = ["__version__", "finite_checks", "set_finite_checks", "finite_checks_set_to"]
