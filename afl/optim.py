"""Optimizers by config name (any optax alias taking `learning_rate`)."""
import optax


def make_optimizer(name: str, lr: float,
                   kwargs: dict) -> optax.GradientTransformation:
  return getattr(optax, name)(learning_rate=lr, **kwargs)
