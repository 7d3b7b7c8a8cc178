"""The long-lived local Prefect server and the background deployments runner that `make demo`
leaves for the user: started once, found again, serving the deployments, stopped by `local down`."""

import pytest

from backends.local.processes import alive
from backends.local.state import LocalState
from core.demo import demo_config
from deployments.local_prefect import (ensure_runner, ensure_server, running_runner, running_server, stop_runner,
                                       stop_server)

pytestmark = pytest.mark.integration


def assert_a_web_page_cannot_start_runs(server, deployment_id):
    """What a page in the developer's browser can send: a cross-site POST (no CSRF token: refused), and a
    CORS preflight (no Access-Control-Allow-Origin for a foreign origin, so the browser sends nothing)."""
    import httpx

    create = f"{server.api_url}/deployments/{deployment_id}/create_flow_run"
    for headers in ({"Origin": "http://evil.example", "Content-Type": "text/plain"},
                    {"Origin": "http://evil.example", "Content-Type": "application/json"}):
        refused = httpx.post(create, content=b"{}", headers=headers, timeout=10)
        assert refused.status_code == 403 and "csrf" in refused.text.lower()
    preflight = httpx.options(create, timeout=10, headers={
        "Origin": "http://evil.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type,prefect-csrf-token,prefect-csrf-client"})
    assert "access-control-allow-origin" not in preflight.headers
    own = httpx.options(create, timeout=10, headers={"Origin": server.url, "Access-Control-Request-Method": "POST"})
    assert own.headers.get("access-control-allow-origin") == server.url  # the UI's own calls still work


def test_server_and_runner_live_until_local_down(tmp_path, tiny_dataset, capsys):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.cli import main

    state = LocalState.resolve(tmp_path / "home")
    server = ensure_server(state)
    try:
        assert server.started and server.url.startswith("http://127.0.0.1:")
        again = ensure_server(state)
        assert (again.pid, again.url, again.started) == (server.pid, server.url, False)  # found, not started again
        assert (state.home / "prefect" / "prefect.db").exists()  # its database lives in the state folder

        config = demo_config(str(tiny_dataset)).model_copy(update={"stage": "bg"})
        config_file = state.home / "deployments" / "bg.json"
        config_file.parent.mkdir(parents=True)
        config_file.write_text(config.model_dump_json())
        runner = ensure_runner(state, server.api_url, config_file)
        assert ensure_runner(state, server.api_url, config_file)["pid"] == runner["pid"]
        with temporary_settings(updates={PREFECT_API_URL: server.api_url}), get_client(sync_client=True) as client:
            names = {d.name for d in client.read_deployments()}
            deployment = client.read_deployments()[0]
            run = client.create_flow_run_from_deployment(deployment.id, parameters={})  # Prefect's client: allowed
        assert names == {"sagemaker-flows-bg"}
        assert_a_web_page_cannot_start_runs(server, deployment.id)
        with temporary_settings(updates={PREFECT_API_URL: server.api_url}), get_client(sync_client=True) as client:
            made = [r.id for r in client.read_flow_runs() if not r.auto_scheduled]  # not the schedule's own
            assert made == [run.id]  # the page's attempts made none

        capsys.readouterr()
        assert main(["local", "down", "--home", str(state.home)]) == 0
        said = capsys.readouterr().out
        assert "deployments runner stopped" in said and "local Prefect server stopped" in said
        assert running_server(state) is None and running_runner(state) is None
        assert not alive(server.pid) and not alive(runner["pid"])
    finally:
        stop_runner(state)
        stop_server(state)
