"""Starting the local gateway from several places at once, finding it again, and never killing a live
one for being slow (issue 10.6). Real gateway processes, no endpoints: each starts in a second or two."""
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from backends.errors import ServiceUnavailableError
from backends.local.gateway.client import GatewayConnection
from backends.local.gateway.server import GATEWAY_FILE, SERVER_MODULE, ensure_gateway, running_gateway, stop_gateway
from backends.local.processes import alive, command_line
from backends.local.state import LocalState

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def gateway_pids(state: LocalState) -> list[int]:
    """Live gateway processes of this state folder."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            argv = command_line(int(entry.name)) or []
            if SERVER_MODULE in argv and str(state.home) in argv:
                pids.append(int(entry.name))
    return pids


@pytest.fixture
def state(tmp_path):
    state = LocalState.resolve(tmp_path / "home")
    yield state
    stop_gateway(state)
    assert gateway_pids(state) == []


def test_two_processes_racing_to_start_it_get_one_gateway(state):
    script = textwrap.dedent(f"""
        import json, sys
        from backends.local.gateway.server import ensure_gateway
        from backends.local.state import LocalState
        sys.stdin.readline()  # both start together
        info = ensure_gateway(LocalState.resolve({str(state.home)!r}))
        print(json.dumps({{"url": info.url, "pid": info.pid}}))
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    racers = [subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env) for _ in range(2)]
    for racer in racers:
        racer.stdin.write("go\n")
        racer.stdin.flush()
    answers = []
    for racer in racers:
        out, err = racer.communicate(timeout=180)
        assert racer.returncode == 0, err
        answers.append(json.loads(out))
    assert answers[0] == answers[1]
    assert gateway_pids(state) == [answers[0]["pid"]]


def test_a_busy_gateway_is_waited_for_and_never_killed(state):
    info = ensure_gateway(state)
    os.kill(info.pid, signal.SIGSTOP)  # alive, its port accepts connections, it answers nothing
    try:
        with pytest.raises(ServiceUnavailableError, match="accepts connections but has not answered"):
            ensure_gateway(state, busy_timeout_s=1)
        assert alive(info.pid) and (state.home / GATEWAY_FILE).exists()
    finally:
        os.kill(info.pid, signal.SIGCONT)
    assert ensure_gateway(state) == info  # the same process, found again
    assert gateway_pids(state) == [info.pid]


def test_a_recorded_pid_that_is_not_a_gateway_is_left_alone(state):
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:  # gateway.json outlived its gateway, and its pid now belongs to another program
        record = {"url": "http://127.0.0.1:9", "pid": bystander.pid, "port": 9, "secret": "stale"}
        (state.home / GATEWAY_FILE).write_text(json.dumps(record))
        assert running_gateway(state) is None
        fresh = ensure_gateway(state)
        assert fresh.pid != bystander.pid and bystander.poll() is None
        assert gateway_pids(state) == [fresh.pid]
    finally:
        bystander.kill()
        bystander.wait()


def test_the_connection_follows_a_restart_on_the_same_port(state):
    first = ensure_gateway(state)
    connection = GatewayConnection(state)
    assert connection.client().status()["gateway"]["pid"] == first.pid
    assert stop_gateway(state)
    second = ensure_gateway(state, port=first.port)
    assert second.url == first.url and second.pid != first.pid and second.secret != first.secret
    assert connection.client().status()["gateway"]["pid"] == second.pid  # the new secret, read again
    connection.close()

    path = state.home / GATEWAY_FILE  # a record with fields this version does not know still finds it
    path.write_text(json.dumps({**json.loads(path.read_text()), "written_by": "a newer version"}))
    assert running_gateway(state) == second
