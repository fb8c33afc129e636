import atexit
import os
import shutil
import tempfile

# Tests run on the CPU; keep XLA from grabbing every core's thread pool twice.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# One compilation cache for the session, subprocesses included: many tests
# compile the same programs (the tiny config's client and server steps)
# from fresh jit closures.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _cache = tempfile.mkdtemp(prefix="afl-test-jax-cache-")
  atexit.register(shutil.rmtree, _cache, ignore_errors=True)
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
