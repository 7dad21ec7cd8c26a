"""A bench-only agent plugin: agent ``slow20`` takes ``BENCH_SLOW_AGENT_SECONDS`` (default 20) per reply.

Loaded by gunicorn through the ``sophon`` entry point of the fake dist-info next to
this file (bench/run puts this folder on PYTHONPATH and names ``bench_slow_agent``
in SOPHON_PLUGINS). A channel selects it with ``"routing": {"agentId": "slow20"}``.
It sleeps (no CPU), like an LLM call waiting on the network.
"""
import os
import time

from sophon_core.hookspecs import hookimpl


class SlowAgent:
    id = "slow20"

    def __init__(self) -> None:
        self.seconds = float(os.environ.get("BENCH_SLOW_AGENT_SECONDS") or 20)

    def reply(self, message, history):
        time.sleep(self.seconds)
        return f"slow agent, after {self.seconds:g} s: {message.text}"


@hookimpl
def sophon_agents():
    return [SlowAgent()]
