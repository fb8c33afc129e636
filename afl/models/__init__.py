"""Model registry: config `model.name` -> a Flax module builder."""
import jax.numpy as jnp

from afl.models.cnn import CNN, MLP, ResNet

# name -> (builder(num_classes, width, dtype), default width)
MODELS = {
    "cnn": (lambda c, w, d: CNN(c, width=w, dtype=d), 32),
    "cnn_mnist": (lambda c, w, d: CNN(c, width=w, hidden=128, dtype=d), 32),
    "mlp": (lambda c, w, d: MLP(c, hidden=(w,), dtype=d), 100),
    "resnet8": (lambda c, w, d: ResNet(c, depth=8, width=w, dtype=d), 16),
    "resnet20": (lambda c, w, d: ResNet(c, depth=20, width=w, dtype=d), 16),
}


CONV_MODELS = frozenset({"cnn", "cnn_mnist", "resnet8", "resnet20"})


def make_model(name: str, num_classes: int, width: int = 0,
               dtype: str = "float32"):
  """Builds the named model; width 0 takes the model's default."""
  builder, default_width = MODELS[name]
  return builder(num_classes, width or default_width, jnp.dtype(dtype))
