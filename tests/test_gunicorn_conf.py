"""Sophon's gunicorn settings (sophon_core/gunicorn_conf.py), under a real gunicorn."""
from __future__ import annotations

import os
import urllib.request

from sophon_core.testing import gunicorn

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
    env = {"SOPHON_DATA_DIR": str(tmp_path / "data"),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))}
    with gunicorn(env, workers=2, threads=2, log=tmp_path / "gunicorn.log", app="probe_app:app") as server:
        counts = []
        for _ in range(4):
            with urllib.request.urlopen(f"{server.url}/", timeout=5) as r:
                counts.append(int(r.read()))
    assert min(counts) > 1000, counts  # (gunicorn's own modules alone are thousands of objects)
