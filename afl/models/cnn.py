"""Small image models: the CNN of the seed's demo, a CIFAR ResNet, an MLP.

Normalization layers hold no running statistics (GroupNorm, not BatchNorm):
batch statistics are per-client state that FedAvg-style averaging handles
badly under label skew (Hsieh et al. 2020), and stateless models keep the
client step a pure function of (params, batch).
"""
import functools
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


def max_pool_2x2(x):
  """2x2/stride-2 max pool as reshape + max (VALID: odd edges dropped).

  Same values as `nn.max_pool(x, (2, 2), (2, 2))`; its gradient is a
  select, where reduce_window's is a select-and-scatter that doubles the
  CNN's training step on XLA:CPU (benchmarks/NOTES.md). Ties split the
  gradient equally instead of going to the first maximum.
  """
  n, h, w, c = x.shape
  x = x[:, :h // 2 * 2, :w // 2 * 2]
  return x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


_NHWC = ("NHWC", "HWIO", "NHWC")


def _lax_conv(x, kernel, padding):
  return jax.lax.conv_general_dilated(x, kernel, (1, 1), padding,
                                      dimension_numbers=_NHWC)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _im2col_conv(x, kernel, padding):
  """Stride-1 NHWC conv: shifted slices of the padded input concatenated
  along channels, times the [kh*kw*cin, cout] kernel."""
  kh, kw, cin, cout = kernel.shape
  x = jnp.pad(x, ((0, 0), *padding, (0, 0)))
  n, h, w = x.shape[0], x.shape[1] - kh + 1, x.shape[2] - kw + 1
  cols = jnp.concatenate([x[:, i:i + h, j:j + w]
                          for i in range(kh) for j in range(kw)], axis=-1)
  y = jnp.dot(cols.reshape(n * h * w, kh * kw * cin),
              kernel.reshape(kh * kw * cin, cout))
  return y.reshape(n, h, w, cout)


def _im2col_fwd(x, kernel, padding):
  return _im2col_conv(x, kernel, padding), (x, kernel)


def _im2col_bwd(padding, res, g):
  # XLA:CPU's conv-backprop kernels beat the im2col transposes: the kernel
  # gradient of the 3->32 input conv (batch 16) takes 0.47 vs 0.93 ms.
  return jax.vjp(lambda a, b: _lax_conv(a, b, padding), *res)[1](g)


_im2col_conv.defvjp(_im2col_fwd, _im2col_bwd)


def patch_conv(lhs, rhs, window_strides, padding, lhs_dilation=None,
               rhs_dilation=None, dimension_numbers=None,
               feature_group_count=1, precision=None):
  """`lax.conv_general_dilated` with an im2col + matmul forward pass.

  For stride-1 channels-last convs the forward pass is one matmul over the
  concatenated shifted slices of the input; the backward pass is XLA's own
  conv gradients (custom VJP). On XLA:CPU this makes the CNN's training
  step 1.2-1.4x faster when used for its few-channel input layer, whose
  K = 9 * 3 contraction suits XLA's conv kernel badly (and slower for
  wider layers or ResNet's 16-channel stem: benchmarks/NOTES.md). Other
  convs (strides, dilations, groups, other layouts) go to
  `lax.conv_general_dilated` unchanged.
  """
  ones = lambda d: d is None or all(v == 1 for v in d)
  channels_last = dimension_numbers is None or (
      jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
      == jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC))
  if not (ones(window_strides) and ones(lhs_dilation) and ones(rhs_dilation)
          and feature_group_count == 1 and lhs.ndim == 4 and channels_last):
    return jax.lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
        dimension_numbers, feature_group_count, precision=precision)
  if isinstance(padding, str):
    padding = jax.lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], (1, 1),
                                      padding)
  return _im2col_conv(lhs, rhs, tuple(tuple(int(v) for v in p)
                                      for p in padding))


def _logits(x, num_classes, dtype):
  """The models' last layer: Dense(num_classes), logits in float32."""
  return nn.Dense(num_classes, dtype=dtype)(x).astype(jnp.float32)


class _Classifier(nn.Module):
  """An image model: [B, H, W, C] -> float32 logits [B, num_classes]."""
  num_classes: int


class CNN(_Classifier):
  """conv(w)-pool-conv(2w)-pool[-dense(hidden)]-dense(classes).

  With w=32 and no hidden layer on 32x32x3 this is the 60k-parameter CIFAR
  CNN of the throughput table; with hidden=128 it is the classic MNIST CNN.
  """
  width: int = 32
  hidden: int = 0
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = x.astype(self.dtype)
    for mult in (1, 2):
      # im2col for the few-channel input layer on CPU (see patch_conv).
      few = x.shape[-1] <= 4 and jax.default_backend() == "cpu"
      x = nn.Conv(self.width * mult, (3, 3), dtype=self.dtype,
                  conv_general_dilated=patch_conv if few else None)(x)
      x = max_pool_2x2(nn.relu(x))
    x = x.reshape(x.shape[0], -1)
    if self.hidden:
      x = nn.relu(nn.Dense(self.hidden, dtype=self.dtype)(x))
    return _logits(x, self.num_classes, self.dtype)


class MLP(_Classifier):
  """flatten-dense(h)-relu-...-dense(classes); (100,) gives 784-100-10."""
  hidden: Sequence[int] = (100,)
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = x.reshape(x.shape[0], -1).astype(self.dtype)
    for h in self.hidden:
      x = nn.relu(nn.Dense(h, dtype=self.dtype)(x))
    return _logits(x, self.num_classes, self.dtype)


class _Block(nn.Module):
  features: int
  stride: int
  dtype: jnp.dtype

  @nn.compact
  def __call__(self, x):
    norm = lambda: nn.GroupNorm(num_groups=min(8, self.features),
                                dtype=self.dtype)
    y = nn.Conv(self.features, (3, 3), (self.stride, self.stride),
                use_bias=False, dtype=self.dtype)(x)
    y = nn.relu(norm()(y))
    y = nn.Conv(self.features, (3, 3), use_bias=False, dtype=self.dtype)(y)
    y = norm()(y)
    if x.shape[-1] != self.features or self.stride != 1:
      x = nn.Conv(self.features, (1, 1), (self.stride, self.stride),
                  use_bias=False, dtype=self.dtype)(x)
      x = norm()(x)
    return nn.relu(x + y)


class ResNet(_Classifier):
  """CIFAR ResNet (He et al. 2016, sec. 4.2): 3 stages of n blocks each.

  depth = 6n + 2 (8, 14, 20, ...); widths w, 2w, 4w; GroupNorm.
  """
  depth: int = 8
  width: int = 16
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    n = (self.depth - 2) // 6
    x = x.astype(self.dtype)
    x = nn.Conv(self.width, (3, 3), use_bias=False, dtype=self.dtype)(x)
    x = nn.relu(nn.GroupNorm(num_groups=min(8, self.width),
                             dtype=self.dtype)(x))
    for stage in range(3):
      for b in range(n):
        stride = 2 if stage > 0 and b == 0 else 1
        x = _Block(self.width * 2**stage, stride, self.dtype)(x)
    x = jnp.mean(x, axis=(1, 2))
    return _logits(x, self.num_classes, self.dtype)
