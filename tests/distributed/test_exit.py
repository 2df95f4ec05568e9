"""A distributed run's processes end cleanly: the teardown of `cli.run_recipe` waits for the collectives in flight
(#23.24: a run that had finished aborted at exit, SIGABRT, "terminate called without an active exception")."""

import subprocess
import sys

from _env import TESTS, subprocess_env

EXIT_IN_FLIGHT = str(TESTS / "distributed" / "exit_in_flight.py")


def test_a_process_leaving_with_a_collective_in_flight_exits_cleanly(tmp_path):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", EXIT_IN_FLIGHT]
    done = subprocess.run(
        [*command, "--flag", str(tmp_path / "exiting")],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert "terminate called" not in done.stderr, done.stderr[-3000:]
    assert done.returncode == 0, done.stderr[-3000:]
