"""The pipeline's Prefect deployments, served from this process until it is interrupted:

    train-and-deploy/<project>-<stage>   the PipelineConfig form; Run it from the UI
    retrain/<project>-<stage>            on schedule.retrain_cron (default Mondays 03:00 UTC)
    teardown/<project>-<stage>
    rollback/<project>-<stage>           asks for the version to serve again

Each deployment's default parameters are the configuration it was served with, so pressing Run
starts a run that works; the UI's form shows every field with its description, and a bad value is
refused naming the field. deployments/prefect.yaml describes the same deployments for a work pool.
"""
from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

from prefect.runner import Runner
from prefect.schedules import Cron

from backends.files import write_atomic
from core.config import PipelineConfig

log = logging.getLogger(__name__)


def deployment_name(config: PipelineConfig) -> str:
    return f"{config.project}-{config.stage}"


def build_deployments(config: PipelineConfig, cron: str | None = None) -> list:
    """The four RunnerDeployments of the pipeline `config` describes."""
    from flows.retrain import retrain
    from flows.rollback import rollback
    from flows.teardown import teardown
    from flows.train_and_deploy import train_and_deploy

    # Only what differs from the defaults: the API refuses an explicit null for a field the form
    # shows as a plain box (core.config._plain_input), and the form shows every default anyway.
    name, parameters = deployment_name(config), {"config": config.model_dump(mode="json", exclude_defaults=True)}
    tags = ["sagemaker-flows", f"backend:{config.backend}", f"stage:{config.stage}"]
    schedule = Cron(cron or config.schedule.retrain_cron, timezone=config.schedule.timezone)
    return [
        train_and_deploy.to_deployment(
            name, parameters=parameters, tags=tags,
            description=f"Train, register, deploy and smoke-test {name} ({config.backend} backend)."),
        retrain.to_deployment(
            name, parameters=parameters, tags=tags, schedule=schedule,
            description=f"Train a challenger for {name}; promote it only if it beats the champion."),
        teardown.to_deployment(
            name, parameters=parameters, tags=tags,
            description=f"Remove what {name} made (endpoint, function, autoscaling, roles); models stay."),
        rollback.to_deployment(
            name, parameters=parameters, tags=tags,
            description=f"Serve an earlier model version of {name} again (give its number)."),
    ]


def serve(config: PipelineConfig, cron: str | None = None, ready_file: Path | None = None) -> None:
    """Register the deployments on the server PREFECT_API_URL names and run their flow runs here,
    until interrupted. `ready_file` is written once they are registered."""
    deployments = build_deployments(config, cron)
    runner = Runner(pause_on_shutdown=True)  # a schedule nobody serves would pile up late runs
    ids = {f"{d.flow_name}/{d.name}": str(runner.add_deployment(d)) for d in deployments}
    print("serving, until interrupted (Ctrl-C):")
    for full_name, deployment_id in ids.items():
        print(f"  {full_name}  ({deployment_id})")
    if ready_file is not None:
        write_atomic(ready_file, json.dumps(ids))
    try:
        asyncio.run(runner.start())
    except KeyboardInterrupt:
        print("stopped serving")
