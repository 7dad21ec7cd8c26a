"""Sophon's gunicorn settings (sophon_core/gunicorn_conf.py), under a real gunicorn."""
from __future__ import annotations

import os
import subprocess
import time
import urllib.request

from sophon_core.server import APP, gunicorn_argv
from sophon_core.testing import free_port

# A stand-in app: says how many objects its worker had frozen when it answered.
PROBE = '''
import gc

def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [str(gc.get_freeze_count()).encode()]
'''


def test_workers_freeze_what_they_made_at_start_up(tmp_path):
    """post_worker_init (a hook gunicorn finds by name: a typo would silently never run) puts
    the objects of start-up out of the collector's reach in each worker."""
    (tmp_path / "probe_app.py").write_text(PROBE)
    port = free_port()
    argv = gunicorn_argv(f"127.0.0.1:{port}", 2, 2)
    assert argv[-1] == APP
    env = {**os.environ, "SOPHON_DATA_DIR": str(tmp_path / "data"),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    log = tmp_path / "gunicorn.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([*argv[:-1], "probe_app:app"], env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        counts, deadline = [], time.monotonic() + 30
        while len(counts) < 4 and time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as r:
                    counts.append(int(r.read()))
            except OSError:
                time.sleep(0.1)
        assert len(counts) == 4, log.read_text()
        assert min(counts) > 1000, counts  # (gunicorn's own modules alone are thousands of objects)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
