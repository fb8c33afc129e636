"""A PyTorch sequential client loop: the baseline afl's backends must beat.

One model object is reused; for every client the global weights are loaded,
`local_steps` SGD steps of batch `batch` are taken on random data of the
client's shard, and the delta is formed — the usual way a PyTorch FL
simulator (e.g. the seed framework) trains clients one after another.
torch is optional (CPU wheel); `throughput.py --baseline torch` times it in
the same interleaved rounds as afl's backends.
"""
import numpy as np


def _models(torch):
  nn = torch.nn

  class CNN(nn.Module):  # conv32-conv64-dense, as afl.models.CNN
    def __init__(self, in_ch, side):
      super().__init__()
      self.c1 = nn.Conv2d(in_ch, 32, 3, padding=1)
      self.c2 = nn.Conv2d(32, 64, 3, padding=1)
      self.fc = nn.Linear(64 * (side // 4) ** 2, 10)

    def forward(self, x):
      x = torch.max_pool2d(torch.relu(self.c1(x)), 2)
      x = torch.max_pool2d(torch.relu(self.c2(x)), 2)
      return self.fc(x.flatten(1))

  class MLP(nn.Module):  # 784-100-10, as afl.models.MLP
    def __init__(self, in_dim, hidden):
      super().__init__()
      self.l1 = nn.Linear(in_dim, hidden)
      self.l2 = nn.Linear(hidden, 10)

    def forward(self, x):
      return self.l2(torch.relu(self.l1(x.flatten(1))))

  return CNN, MLP


def cohort_fn(name, shape, steps, batch, cohort):
  """once(t): trains one cohort sequentially (after one warm-up cohort)."""
  import torch  # pylint: disable=g-import-not-at-top
  cnn, mlp = _models(torch)
  h, w, c = shape
  model = cnn(c, h) if name == "cnn" else mlp(h * w * c, 100)
  global_state = {k: v.clone() for k, v in model.state_dict().items()}
  rng = np.random.default_rng(0)
  per_client = 64
  x = torch.from_numpy(rng.standard_normal(
      (cohort * per_client, c, h, w)).astype(np.float32))
  y = torch.from_numpy(rng.integers(0, 10, cohort * per_client))
  loss_fn = torch.nn.CrossEntropyLoss()

  def once(t=0):
    del t
    for client in range(cohort):
      model.load_state_dict(global_state)
      opt = torch.optim.SGD(model.parameters(), lr=0.05)
      for _ in range(steps):
        idx = client * per_client + torch.randint(0, per_client, (batch,))
        opt.zero_grad()
        loss_fn(model(x[idx]), y[idx]).backward()
        opt.step()
      _ = {k: v - global_state[k] for k, v in model.state_dict().items()}

  once()  # warm-up
  return once
