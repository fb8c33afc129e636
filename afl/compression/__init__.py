"""Top-k sparsification with error feedback, and communication accounting.

A client sends only the k largest-magnitude coordinates of its update (plus
their indices); what it did not send is kept in a per-client residual and
added to its next update (error feedback), so no part of the update is lost,
only delayed. Kernels are pure and jittable on flat [D] vectors (vmap them
over a cohort; `topk.py`); the residuals live on the host in a
`ResidualStore` keyed by client id, holding only clients that have
participated (`host.py`, with the bytes accounting). `CompressionConfig`
(`config.py`) is the `compression` section and builds the compressor.

Example:

  >>> import jax.numpy as jnp
  >>> sent, res = compress_with_feedback(jnp.array([3., -1., 0.5, -4.]),
  ...                                    jnp.zeros(4), 2)
  >>> sent
  Array([ 3.,  0.,  0., -4.], dtype=float32)
  >>> res
  Array([ 0. , -1. ,  0.5,  0. ], dtype=float32)

References:
  Stich, Cordonnier and Jaggi 2018, "Sparsified SGD with Memory", NeurIPS.
  Karimireddy, Rebjock, Stich and Jaggi 2019, "Error Feedback Fixes SignSGD
  and other Gradient Compression Schemes", ICML.
  Aji and Heafield 2017, "Sparse Communication for Distributed Gradient
  Descent", EMNLP (top-k with a residual, per-tensor selection).
"""
from afl.compression.config import (KINDS, CompressFn, CompressionConfig,
                                    make_compressor)
from afl.compression.host import CommStats, ResidualStore, bytes_per_update
from afl.compression.topk import (Budget, budget_total, compress,
                                  compress_with_feedback, densify, k_for,
                                  segments_for, topk_mask, topk_per_tensor,
                                  topk_sparsify)
