"""bench/run's CPU split: the server under test and the load (wrk, sandbox) never share a CPU."""
from __future__ import annotations

import sys

import pytest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from sophon_bench import split_cpus  # noqa: E402


def test_split_cpus_gives_the_server_and_the_load_cpus_of_their_own():
    assert split_cpus({0}) is None
    assert split_cpus({0, 1}) == ({0}, {1})
    assert split_cpus({0, 1, 2}) == ({0, 1}, {2})
    assert split_cpus({2, 3, 5, 7}) == ({2, 3}, {5, 7})


def test_sophon_serve_runs_the_same_gunicorn_command_line_as_the_reference_apps(monkeypatch):
    """bench/run serves Sophon with `sophon serve` and the reference apps with plain gunicorn:
    the gunicorn argv must be the same but for the app (and the access log off for both)."""
    from sophon_bench import gunicorn_command, sophon_serve_command

    from sophon_core import server

    started = []

    class FakePopen:
        def __init__(self, argv, env=None, preexec_fn=None):
            started.append((argv, env))
            self.pid, self.returncode = 0, 0

        def wait(self, timeout=None):
            return 0

        def poll(self):
            return 0

    monkeypatch.setattr(server.subprocess, "Popen", FakePopen)
    assert server.run_gunicorn("127.0.0.1:9999", 2, 16, {}, access_log=False) == 0
    (gunicorn_argv, env), (sender_argv, sender_env) = started
    assert gunicorn_argv == gunicorn_command(9999, 2, 16, server.APP, access_log=False)
    assert "--access-logfile" not in gunicorn_argv
    assert sender_argv[1:3] == ["-m", "sophon_core.sender"] and sender_argv[-1] == "16"  # 8 threads x 2 workers
    assert env["SOPHON_REPLIES"] == sender_env["SOPHON_REPLIES"] == "sender"
    serve = sophon_serve_command(9999, 2, 16, access_log=False)
    assert serve[-8:] == ["serve", "--bind", "127.0.0.1:9999", "--workers", "2", "--threads", "16",
                          "--no-access-log"]


@pytest.mark.parametrize("args, says", [
    (["--ack-variant", "SENDER_NICE=19"], "--ack-variant takes SOPHON_NAME=VALUE"),
    (["--ack-variant", "SOPHON_SENDER_NICE"], "--ack-variant takes SOPHON_NAME=VALUE"),
    (["--ack-variant", "PYTHONPATH=/nonexistent-checkout"], "PYTHONPATH=/nonexistent-checkout: no sophon_core there"),
    (["--ack-workers", "0"], "--ack-workers takes worker counts"),
    (["--ack-workers", "one"], "--ack-workers takes worker counts"),
    (["--ack-prefill", "-5"], "--ack-prefill takes a number of conversations, 0 or more"),
])
def test_bad_bench_options_say_what_to_write_before_anything_runs(args, says, capsys, monkeypatch):
    import sophon_bench

    def never(*_):
        raise AssertionError("the bench went on to install its tools")

    monkeypatch.setattr(sophon_bench.tools, "ensure_all", never)
    with pytest.raises(SystemExit) as exited:
        sophon_bench.main(args)
    assert exited.value.code == 2
    assert says in capsys.readouterr().err


def test_a_variant_of_another_checkout_is_named_without_slashes():
    import sophon_bench

    assert sophon_bench.variant_name("PYTHONPATH", "/work/old") == "FULL pythonpath=_work_old"
