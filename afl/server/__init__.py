"""The server: stages over `Rows`, one `ServerState`, modes as objects.

- `stages`: the `(init, apply)` stage protocol, `chain`, the core stages and
  the registry of pre-aggregation stages.
- `private`: the privacy wrapper (server DP, secure aggregation).
- `step`: `ServerState`, `ServerSpec` and the jitted server steps.
- `server`: `Server`, holding the state for the loop.
- `modes`: fedasync, fedbuff, sync.
- `build`: all of it from an experiment config.
- `momentum`, `bucketing`, `nnm`, `duplicates`: registered pre-aggregation
  stages.
"""
from afl.server.rows import Arrival, Rows
from afl.server.server import Server
from afl.server.staleness import staleness_weight
from afl.server.step import ServerSpec, ServerState
# Registered pre-aggregation stages (imported for registration).
from afl.server import bucketing  # noqa: F401,E402
from afl.server import duplicates  # noqa: F401,E402
from afl.server import momentum  # noqa: F401,E402
from afl.server import nnm  # noqa: F401,E402
