import atexit
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(__file__))

# One persistent XLA compilation cache for the session (set before anything imports jax), which
# the launch scripts the tests run as subprocesses inherit: a program many tests build (the same
# tiny problem, estimator and tuner) compiles once. JAX keys the cache by the program and its
# compile options, so a hit is the same executable. Fresh per session; a user's own setting wins.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="metaopt-test-xla-cache-")
  atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.1")

import glob
import socket
import subprocess

import chex
import pytest


@pytest.fixture(autouse=True)
def _fresh_trace_counters():
  """chex.assert_max_traces counts per function source and call site, which a parametrized test
  shares between its cases: start every test from zero."""
  chex.clear_trace_counter()


def _postgres_bin(name):
  found = shutil.which(name) or sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
  return found if isinstance(found, str) else (found[-1] if found else None)


@pytest.fixture(scope="session")
def postgres_url():
  """A real PostgreSQL server on loopback for the session (Debian's package; .ci/run installs it)."""
  initdb, pg_ctl = _postgres_bin("initdb"), _postgres_bin("pg_ctl")
  if not (initdb and pg_ctl):
    message = "PostgreSQL server binaries (initdb, pg_ctl) not found: apt-get install postgresql"
    if os.environ.get("CI"):
      pytest.fail(message)  # CI must run this test, never skip it
    pytest.skip(message)
  folder = tempfile.mkdtemp(prefix="metaopt-pg-")
  as_user = []
  if os.geteuid() == 0:  # the server refuses to run as root
    shutil.chown(folder, "postgres", "postgres")
    as_user = ["runuser", "-u", "postgres", "--"]
  data = os.path.join(folder, "data")
  subprocess.run([*as_user, initdb, "-D", data, "-A", "trust", "-U", "postgres"], check=True,
                 capture_output=True)
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1"
  subprocess.run([*as_user, pg_ctl, "-D", data, "-o", options, "-l",
                  os.path.join(folder, "log"), "-w", "start"], check=True, capture_output=True)
  try:
    import psycopg  # pylint: disable=g-import-not-at-top
    with psycopg.connect(f"host=127.0.0.1 port={port} user=postgres dbname=postgres",
                         autocommit=True) as conn:
      conn.execute("CREATE DATABASE metaopt")
    yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/metaopt"
  finally:
    subprocess.run([*as_user, pg_ctl, "-D", data, "-m", "immediate", "stop"], capture_output=True)
    shutil.rmtree(folder, ignore_errors=True)
