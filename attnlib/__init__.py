"""attnlib: attention, the Transformer layer, the KV cache and FlashAttention, twice.

* ``attnlib.numpy`` -- readable reference implementations on NumPy arrays.
* ``attnlib.torch`` -- the same names as PyTorch functions and ``nn.Module``s (CPU, CUDA, autograd),
  plus a Triton FlashAttention kernel.

The two namespaces share one vocabulary: ``q, k, v, scale, mask, causal, m, l, acc, block_q, block_k``.
Importing ``attnlib`` alone imports neither NumPy- nor torch-heavy code; import the namespace you need.

``attnlib.sizes`` counts a model's parameters, KV-cache bytes and multiply-adds from its configuration alone,
in pure Python.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
