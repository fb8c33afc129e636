"""The compiled engine reproduces the pure-Python one event for event.

`reference_scheduler.ReferenceScheduler` is the engine as it was before
afl.engine_kernels; every pop and dispatch (time, seq, client, task index,
start version, dispatch time, dropped) must come out the same, across
seeds, duration models, drop-outs, the idle-pick fallback (most clients
busy), pick and draw block boundaries, checkpoints inside a window, and
whole simulations in all three server modes.
"""
import json

import numpy as np
import pytest

from afl.config import SchedulerConfig
from afl.scheduler import Scheduler
from reference_scheduler import ReferenceScheduler

CONFIGS = [
    dict(dropout_prob=0.2),
    dict(heterogeneity=1.0, network_delay=0.5, duration_dist="lognormal"),
    dict(duration_dist="constant", heterogeneity=0.0, network_delay=0.0),
]


def _make(cls, kw, seed, clients, concurrency, pattern):
  extra = {} if cls is ReferenceScheduler else dict(pattern=pattern)
  return cls(SchedulerConfig(**kw), clients, concurrency, 3,
             np.random.default_rng(seed), **extra)


def _drive(s, pattern, events, concurrency, seed):
  """Runs `events` pops in `pattern` (for "manual", a random order of pops
  and dispatches); returns every task handed out."""
  out = [s.dispatch(0.0, 0) for _ in range(concurrency)]
  order = np.random.default_rng(seed + 100)
  version, now = 0, 0.0
  for i in range(events):
    if pattern == "manual" and (not s.in_flight or (
        s.in_flight < concurrency and order.random() < .5)):
      out.append(s.dispatch(now, version))
      continue
    t = s.pop()
    out.append(t)
    now, version = t.arrival_time, i // 3
    if pattern == "replace":
      out.append(s.dispatch(now, version))
    elif pattern == "rounds" and s.in_flight == 0:
      out += [s.dispatch(now, version) for _ in range(concurrency)]
  return out


@pytest.mark.parametrize("pattern", ["replace", "rounds", "manual"])
@pytest.mark.parametrize("kw", CONFIGS)
@pytest.mark.parametrize("seed", [0, 1])
def test_same_events_as_the_reference_engine(pattern, kw, seed):
  events = 6000 if pattern != "manual" else 10000  # > one 4096-draw block
  args = (kw, seed, 500, 40, pattern)
  ref = _drive(_make(ReferenceScheduler, *args), pattern, events, 40, seed)
  new = _drive(_make(Scheduler, *args), pattern, events, 40, seed)
  assert len(new) == len(ref) > 9000
  assert [tuple(t) for t in new] == [tuple(t) for t in ref]


@pytest.mark.parametrize("pattern", ["replace", "rounds"])
def test_most_clients_busy_takes_the_same_fallback_picks(pattern):
  # 9 of 12 clients in flight: the idle pick is an explicit draw from the
  # idle set, not rejection sampling.
  args = (dict(dropout_prob=0.1, heterogeneity=0.5), 3, 12, 9, pattern)
  ref = _drive(_make(ReferenceScheduler, *args), pattern, 5000, 9, 3)
  new = _drive(_make(Scheduler, *args), pattern, 5000, 9, 3)
  assert [tuple(t) for t in new] == [tuple(t) for t in ref]


@pytest.mark.parametrize("pattern", ["replace", "rounds"])
@pytest.mark.parametrize("stop", [1, 777, 5001])
def test_checkpoint_inside_a_window_continues_identically(pattern, stop):
  kw = dict(dropout_prob=0.2, heterogeneity=0.7)
  a = _make(Scheduler, kw, 5, 300, 30, pattern)
  ref = _make(ReferenceScheduler, kw, 5, 300, 30, pattern)
  _drive(a, pattern, stop, 30, 5)
  _drive(ref, pattern, stop, 30, 5)
  # What a checkpoint sees is the state after the calls made, not the
  # engine's window ahead of them.
  assert a.tasks() == ref.tasks() and a.in_flight == ref.in_flight
  assert a.seq == ref.seq and a.busy == ref.busy
  np.testing.assert_array_equal(a.task_counts, ref.task_counts)
  arrays, host = a.state_dict()
  host = json.loads(json.dumps(host))
  b = _make(Scheduler, kw, 99, 300, 30, pattern)
  b.load_state_dict(arrays, host)
  old = _make(ReferenceScheduler, kw, 99, 300, 30, pattern)
  old.load_state_dict(arrays, host)  # the reference reads the same format
  runs = []
  for s in (a, b, old, ref):
    seen = []
    for _ in range(3000):
      t = s.pop()
      seen.append(tuple(t))
      if pattern == "replace" or s.in_flight == 0:
        k = 1 if pattern == "replace" else 30
        seen += [tuple(s.dispatch(t.arrival_time, 7)) for _ in range(k)]
    runs.append(seen)
  assert runs[0] == runs[1] == runs[2] == runs[3]


def test_calls_off_the_pattern_fail_loudly():
  s = _make(Scheduler, {}, 0, 50, 5, "replace")
  for _ in range(5):
    s.dispatch(0.0, 0)
  t = s.pop()
  with pytest.raises(RuntimeError, match="between a pop"):
    s.state_dict()
  with pytest.raises(RuntimeError, match="peek_time"):
    s.peek_time()
  with pytest.raises(RuntimeError, match="does not follow"):
    s.dispatch(t.arrival_time + 1.0, 0)
  s2 = _make(Scheduler, {}, 0, 50, 5, "replace")
  for _ in range(5):
    s2.dispatch(0.0, 0)
  s2.pop()
  with pytest.raises(RuntimeError, match="does not follow"):
    s2.pop()
    s2.dispatch(0.0, 0)


@pytest.mark.parametrize("mode", ["fedasync", "fedbuff", "sync"])
def test_whole_runs_match_the_reference_engine(mode, monkeypatch):
  from afl import build  # pylint: disable=g-import-not-at-top
  from afl import config as config_lib  # pylint: disable=g-import-not-at-top
  from afl.simulation import Simulation  # pylint: disable=g-import-not-at-top

  def run(cls):
    monkeypatch.setattr(build, "Scheduler", cls)
    c = config_lib.base_config()
    c.update(num_clients=40, concurrency=6)
    c.data.update(name="synthetic", synthetic_train=800, synthetic_test=100,
                  partition="iid")
    c.model.update(name="mlp")
    c.client.update(local_steps=1, batch_size=4)
    c.scheduler.update(dropout_prob=0.2, heterogeneity=0.8)
    c.server.update(mode=mode, buffer_size=3)
    c.stop.max_versions = 12
    c.eval.every_versions = 4
    sim = Simulation(config_lib.build_config(c), None, log=lambda m: None)
    summary = sim.run()
    return summary, sim.history.records, sim.scheduler.tasks()

  def reference(*args, pattern):
    del pattern
    return ReferenceScheduler(*args)

  new, old = run(Scheduler), run(reference)
  keep = lambda d: {k: v for k, v in d.items() if "wall" not in k}
  assert [keep(r) for r in new[1]] == [keep(r) for r in old[1]]
  assert [tuple(t) for t in new[2]] == [tuple(t) for t in old[2]]
  assert keep(new[0]) == keep(old[0])
