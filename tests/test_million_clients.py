"""1M clients: partition + scheduler + one checkpoint round trip, no
training (slow: pytest -m slow)."""
import numpy as np
import pytest

from afl import checkpoint
from afl.config import build_config
from afl.simulation import Simulation
from configs import tiny

pytestmark = pytest.mark.slow

N, CONCURRENCY = 1_000_000, 10_000


def _sim(workdir):
  c = tiny.get_config()
  c.num_clients, c.concurrency = N, CONCURRENCY
  c.server.buffer_size = 1000
  c.data.update(synthetic_train=2 * N, partition="iid", min_shard_size=2)
  c.client.update(local_steps=1, batch_size=2)
  return Simulation(build_config(c), str(workdir), log=lambda m: None)


def _state(sim):
  out = {}
  for name, comp in sim.components().items():
    arrays, host = comp.state_dict()
    out[name] = ({k: np.asarray(v) for k, v in arrays.items()}, host)
  return out


def _event(sim):
  """One event as the async loop runs it: a pop, then its replacement."""
  task = sim.scheduler.pop()
  sim.loop.now = task.arrival_time
  sim.dispatch()
  return task


def test_million_clients_checkpoint_round_trip(tmp_path):
  sim = _sim(tmp_path / "a")
  assert len(sim.scheduler.slowness) == N
  for _ in range(CONCURRENCY):  # every slot in flight, as a run starts
    sim.dispatch()
  popped = [_event(sim) for _ in range(100)]
  assert len({t.seq for t in popped}) == 100
  mngr = checkpoint.manager(str(tmp_path / "a"), 1)
  checkpoint.save(mngr, sim.components(), 1, 0.0)

  other = _sim(tmp_path / "b")
  assert checkpoint.restore(mngr, other.components()) == 0.0
  want, got = _state(sim), _state(other)
  assert want.keys() == got.keys()
  for name in want:
    assert want[name][1] == got[name][1], name
    assert want[name][0].keys() == got[name][0].keys(), name
    for k, a in want[name][0].items():
      np.testing.assert_array_equal(got[name][0][k], a, err_msg=f"{name}/{k}")
  # The restored engine goes on with the same events.
  for _ in range(1000):
    assert _event(sim) == _event(other)
