"""Runs an afl simulation from a config file.

  python launch.py --config configs/fmnist_hybrid.py --workdir runs/demo
  python launch.py --config configs/tiny.py --config.server.mode=fedasync
  python launch.py --experiments configs/experiments.py --workdir runs/sweep

Intentionally kept short: flags, then one call into the library.
"""
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "config file")
_WORKDIR = flags.DEFINE_string("workdir", None, "output directory")
_OVERWRITE = flags.DEFINE_bool("overwrite", False,
                               "replace a workdir holding another run")
_RESUME = flags.DEFINE_bool("resume", False,
                            "continue the run in --workdir from its latest "
                            "checkpoint")


def _parse(argv):
  from afl import cli_errors  # pylint: disable=g-import-not-at-top
  try:
    cli_errors.check_config_path(argv)
    return flags.FLAGS(argv)
  except Exception as e:  # pylint: disable=broad-except
    print(f"error: {cli_errors.explain_flag_error(argv, e)}", file=sys.stderr)
    sys.exit(2)


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  # pylint: disable=g-import-not-at-top
  from afl import cli_errors
  from afl import run
  # pylint: enable=g-import-not-at-top
  try:
    run.run(_CONFIG.value, _WORKDIR.value, _OVERWRITE.value, _RESUME.value)
  except KeyboardInterrupt:  # before the loop's safe points
    print("error: interrupted before the run started; nothing to resume",
          file=sys.stderr)
    sys.exit(cli_errors.EXIT_INTERRUPTED)
  except Exception as e:  # pylint: disable=broad-except
    failure = cli_errors.expected_failure(e)
    if failure is None:
      raise  # unexpected: keep the traceback
    print(failure[1], file=sys.stderr)
    sys.exit(failure[0])


if __name__ == "__main__":
  if any(a == "--experiments" or a.startswith("--experiments=")
         for a in sys.argv[1:]):
    from afl import experiments  # pylint: disable=g-import-not-at-top
    sys.exit(experiments.main(sys.argv[1:]))
  flags.mark_flag_as_required("config")
  app.run(main, flags_parser=_parse)
