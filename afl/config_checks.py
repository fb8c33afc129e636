"""Combinations of config values that make no sense, each a one-line error
naming the key to change. They read component properties (`afl.registry`),
never lists of names."""
from __future__ import annotations

from afl import aggregators
from afl.server import modes
from afl.server import stages
from afl.validate import fail


def _sum_only(c, key: str, agg_msg: str, mode_msg: str, weight_msg: str):
  """Server DP and secure aggregation see only a (clipped) sum: a linear
  aggregator, a buffered mode and unweighted rows."""
  if not c.aggregator.entry.prop("linear"):
    fail(key, agg_msg)
  if not c.server.entry.prop("buffered"):
    fail(key, f"{mode_msg}; use server.mode="
         + " or ".join(modes.REGISTRY.where("buffered")))
  if c.server.weight_by_examples:
    fail("server.weight_by_examples", weight_msg)


def check_combinations(c):
  agg = c.aggregator.name
  linear = "|".join(aggregators.REGISTRY.where("linear"))
  if c.dp.mode == "server":
    _sum_only(c, "dp.mode",
              f"server DP calibrates noise to the sensitivity of a sum of "
              f"clipped updates, which a {agg!r} aggregate does not have; use "
              f"aggregator.name={linear} or dp.mode=client",
              "server DP needs a buffer or round to add noise to",
              "must be False with dp.mode=server (example weights would "
              "change the sensitivity)")
  if c.trust.enabled and c.secagg.enabled:
    fail("trust.enabled", "trust scores need individual updates, which "
         "secure aggregation hides; disable one of them")
  if c.trust.enabled and c.dp.mode == "server":
    fail("trust.enabled", "server DP aggregates clipped updates with noise "
         "calibrated to the mean; trust reweighting is not covered by it")
  for section, path in ((c.aggregator, "aggregator"), (c.server, "server"),
                        (c.attack, "attack"), (c.data, "data"),
                        (c.model, "model")):
    check = getattr(section.params, "check", None)
    if check is not None:
      check(c, path)
  if (c.dp.mode == "client" and c.sampling() == "with_replacement"
      and c.dp.accountant != "pld"):
    fail("dp.accountant", "client.sampling=with_replacement is accounted as "
         "a mixture of Gaussians (an example can repeat in a batch), which "
         "only the pld accountant computes; use dp.accountant=pld or "
         "client.sampling=poisson")
  for name in c.aggregator.stages:
    check = getattr(getattr(c.stage, name), "check", None)
    if check is not None:
      check(c, f"stage.{name}")
  private = c.secagg.enabled or c.dp.mode == "server"
  for name in c.aggregator.stages:
    if private and not stages.REGISTRY[name].prop("linear"):
      fail("aggregator.stages", f"stage {name!r} needs individual updates; "
           "secure aggregation and server DP see only the clipped sum")
  if private and not c.server.merge_client_rows:
    fail("server.merge_client_rows", "must be True with secagg.enabled or "
         "dp.mode=server (a client's rows must be one row: one pair of "
         "masks, one clip norm)")
  if c.secagg.enabled:
    _sum_only(c, "secagg.enabled",
              f"secure aggregation only reveals the sum; aggregator {agg!r} "
              f"needs individual updates (use {linear})",
              "secure aggregation needs several updates per aggregation",
              "must be False with secagg.enabled (the server cannot weight "
              "updates it never sees)")
