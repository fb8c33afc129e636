"""Optimizers by config name (any optax alias taking `learning_rate`)."""
import inspect

import optax

from afl import validate as v


def make_optimizer(name: str, lr: float,
                   kwargs: dict) -> optax.GradientTransformation:
  return getattr(optax, name)(learning_rate=lr, **kwargs)


def check_optimizer(p: str, name: str, kwargs: dict):
  """`<p>.optimizer` must name an optax optimizer, i.e. a function taking
  `learning_rate`, and `<p>.optimizer_kwargs` must be among its arguments."""
  fn = getattr(optax, name, None) if not name.startswith("_") else None
  try:
    params = inspect.signature(fn).parameters if callable(fn) else {}
  except (TypeError, ValueError):
    params = {}
  if "learning_rate" not in params:
    v.fail(f"{p}.optimizer", f"{name!r} is not an optax optimizer taking a "
          "learning_rate (e.g. sgd, adam, adamw)")
  takes_any = any(a.kind == a.VAR_KEYWORD for a in params.values())
  for key in kwargs:
    if key == "learning_rate" or (key not in params and not takes_any):
      v.fail(f"{p}.optimizer_kwargs", f"optax.{name} takes no argument "
            f"{key!r}" + (" (the rate is client.lr / server.lr)"
                          if key == "learning_rate" else ""))
