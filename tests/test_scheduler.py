"""The discrete-event engine against hand-computed timelines."""
import json

import numpy as np
import pytest

from afl.config import SchedulerConfig
from afl.scheduler import Scheduler


def _sched(num_clients=10, concurrency=3, seed=0, **kw):
  cfg = SchedulerConfig(**kw)
  return Scheduler(cfg, num_clients, concurrency, local_steps=2,
                   rng=np.random.default_rng(seed))


def test_constant_durations_closed_form():
  s = _sched(duration_dist="constant", heterogeneity=0.0, network_delay=0.0,
             step_time=1.5)
  tasks = [s.dispatch(0.0, version=0) for _ in range(3)]
  assert [t.arrival_time for t in tasks] == [3.0, 3.0, 3.0]  # 2 steps x 1.5
  popped = [s.pop() for _ in range(3)]
  assert [t.seq for t in popped] == [0, 1, 2]  # ties break by dispatch order


def test_slowness_scales_duration():
  s = _sched(duration_dist="constant", heterogeneity=0.0, network_delay=0.0)
  s.slowness = np.arange(1, 11, dtype=float)
  t = s.dispatch(5.0, version=2)
  assert t.arrival_time == pytest.approx(5.0 + 2 * s.slowness[t.client_id])
  assert t.start_version == 2 and t.task_index == 0


def test_event_order_and_concurrency_limit():
  s = _sched(num_clients=20, concurrency=5, dropout_prob=0.3)
  for _ in range(5):
    s.dispatch(0.0, 0)
  with pytest.raises(RuntimeError):
    s.dispatch(0.0, 0)
  last = -1.0
  for _ in range(500):
    t = s.pop()
    assert t.arrival_time >= last
    last = t.arrival_time
    assert s.in_flight == 4 and len(s.busy) == 4
    assert t.client_id not in s.busy
    s.dispatch(t.arrival_time, 0)
    assert len(s.busy) == 5  # never above the limit


def test_dropouts_rate_and_time():
  s = _sched(num_clients=100, concurrency=1, dropout_prob=0.25,
             duration_dist="constant", heterogeneity=0.0, network_delay=0.0)
  dropped = 0
  n = 4000
  for _ in range(n):
    t = s.dispatch(0.0, 0)
    s.pop()
    if t.dropped:
      dropped += 1
      assert 0.0 <= t.arrival_time < 2.0  # drops before it would finish
    else:
      assert t.arrival_time == 2.0
  # Binomial(4000, 0.25): std ~ 27; 5 sigma.
  assert abs(dropped - 0.25 * n) < 5 * np.sqrt(n * 0.25 * 0.75)


def test_exponential_mean():
  s = _sched(num_clients=1000, concurrency=1, heterogeneity=0.0,
             network_delay=0.0)
  d = []
  for _ in range(5000):
    t = s.dispatch(0.0, 0)
    s.pop()
    d.append(t.arrival_time)
  assert np.mean(d) == pytest.approx(2.0, rel=0.05)  # local_steps x step_time


def test_task_indices_count_per_client():
  s = _sched(num_clients=3, concurrency=1)
  seen = {}
  for _ in range(30):
    t = s.dispatch(0.0, 0)
    s.pop()
    assert t.task_index == seen.get(t.client_id, 0)
    seen[t.client_id] = t.task_index + 1


def test_state_dict_round_trip_continues_identically():
  a = _sched(num_clients=50, concurrency=4, dropout_prob=0.1)
  for _ in range(4):
    a.dispatch(0.0, 0)
  for _ in range(5000):  # past the first block of pre-drawn numbers
    t = a.pop()
    a.dispatch(t.arrival_time, 1)
  b = _sched(num_clients=50, concurrency=4, seed=99, dropout_prob=0.1)
  # Through JSON, as a checkpoint stores it.
  arrays, host = a.state_dict()
  b.load_state_dict(arrays, json.loads(json.dumps(host)))
  for _ in range(20):
    ta, tb = a.pop(), b.pop()
    assert ta == tb
    assert a.dispatch(ta.arrival_time, 2) == b.dispatch(tb.arrival_time, 2)


def test_many_clients_memory_is_scalars():
  s = _sched(num_clients=100_000, concurrency=8)
  for _ in range(8):
    s.dispatch(0.0, 0)
  assert s.slowness.nbytes + s.task_counts.nbytes <= 16 * 100_000
  assert s.in_flight == len(s.tasks()) == 8
