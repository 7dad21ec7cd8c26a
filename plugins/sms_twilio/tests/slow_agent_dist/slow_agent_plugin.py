"""A throwaway agent plugin for crash tests, loaded by gunicorn through an entry point."""
import time

from sophon_core.hookspecs import hookimpl


class SlowEcho:
    id = "slow-echo"

    def reply(self, message, history):
        time.sleep(0.6)
        return f"echo: {message.text}"


@hookimpl
def sophon_agents():
    return [SlowEcho()]
