"""The demo with client-level DP-SGD: per-example clipping and noise,
epsilon reported at every evaluation and in the summary."""
from configs import fmnist_hybrid


def get_config(arg=None):
  c = fmnist_hybrid.get_config(arg)
  c.client.optimizer_kwargs = dict(momentum=0.5)
  c.dp.update(mode="client", clip_norm=1.0, noise_multiplier=1.0,
              delta=1e-5, accountant="rdp")
  return c
