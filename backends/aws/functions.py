"""The Functions service on Lambda: a deterministic code zip and an idempotent publish.

publish() creates the function or updates only what differs (code by CodeSha256, configuration by
field), publishes a version only when something changed (or none exists yet), points an alias at
it, and sets reserved concurrency on the function and provisioned concurrency on the alias, waiting
for each step AWS runs asynchronously: botocore's function_active_v2 (a new function) and
function_updated_v2 waiters for the function, published_version_active for a version,
backends.waiting for provisioned concurrency (botocore has no waiter for it). check_concurrency()
says before any paid step whether the concurrency asked for fits the account (core.lambda_concurrency).
"""
from __future__ import annotations

import base64
import hashlib
import io
import os
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path

from backends.aws.errors import ROLE_PROPAGATION_BUDGET_S, if_exists, or_none, while_role_propagates
from backends.aws.waiters import wait_until
from backends.errors import DeploymentFailedError, InvalidRequestError
from backends.types import FunctionState
from backends.waiting import SYSTEM_CLOCK, Clock, wait_for
from core.config import FunctionConfig
from core.functions import function_environment
from core.lambda_concurrency import concurrency_problem

_FIXED_TIMESTAMP = (1980, 1, 1, 0, 0, 0)  # the earliest a zip can hold
_EXCLUDED_DIRS = {"__pycache__"}
_EXCLUDED_SUFFIXES = (".pyc", ".pyo")
# The configuration fields publish() manages, compared one by one with GetFunctionConfiguration.
_MANAGED = ("Role", "Handler", "Runtime", "MemorySize", "Timeout", "Environment")
LAMBDA_SOURCE_DIR = Path(__file__).resolve().parents[2] / "lambda_src"
ALIAS = "live"
RUNTIME, HANDLER = "python3.12", "handler.lambda_handler"  # how the handler is deployed


def zip_source(folder: str) -> bytes:
    """The folder as a zip, files at the root, byte-for-byte the same for the same content.

    Entries are sorted, timestamps and permissions fixed, and __pycache__ / *.pyc left out, so the
    same code always has the same CodeSha256 and a re-run can tell the code is unchanged.
    """
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"Lambda source folder {folder!r} does not exist")
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _EXCLUDED_DIRS)
        for filename in filenames:
            if filename.endswith(_EXCLUDED_SUFFIXES):
                continue
            path = Path(dirpath) / filename
            files.append((path.relative_to(root).as_posix(), path))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for arcname, path in sorted(files):
            info = zipfile.ZipInfo(arcname, date_time=_FIXED_TIMESTAMP)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.create_system = 3  # unix, so the permission bits below are honoured
            info.external_attr = ((0o755 if os.access(path, os.X_OK) else 0o644) | 0o100000) << 16
            archive.writestr(info, path.read_bytes(), compresslevel=9)
    return buffer.getvalue()


def code_sha256(code_zip: bytes) -> str:
    """Lambda's CodeSha256: the base64 of the zip's SHA-256 digest."""
    return base64.b64encode(hashlib.sha256(code_zip).digest()).decode("ascii")


def _environment(configuration: dict) -> dict[str, str]:
    return dict((configuration.get("Environment") or {}).get("Variables") or {})


def _differs(configuration: dict, desired: dict) -> list[str]:
    """The managed fields whose value in `configuration` is not the desired one."""
    changed = []
    for key in _MANAGED:
        have = _environment(configuration) if key == "Environment" else configuration.get(key)
        want = desired[key]["Variables"] if key == "Environment" else desired[key]
        if have != want:
            changed.append(key)
    return changed


class LambdaFunctions:
    """Lambda functions published behind an alias, with reserved and provisioned concurrency.

    role_arn(function name, endpoint name, readable s3 prefixes) gives the role a function runs as
    (PipelineRoles); it is needed by publish_function only, as are tags (put on every function made).
    role_budget_s: how long a create or configuration update waits for Lambda to accept a new role.
    """

    def __init__(self, lambda_client, poll_seconds: float = 2.0, timeout_s: float = 600, *,
                 role_arn: Callable[[str, str, Sequence[str]], str] | None = None, tags: dict[str, str] | None = None,
                 source_dir: Path = LAMBDA_SOURCE_DIR, clock: Clock = SYSTEM_CLOCK,
                 role_budget_s: float = ROLE_PROPAGATION_BUDGET_S):
        self.client = lambda_client
        self.poll_seconds = poll_seconds
        self.timeout_s = timeout_s
        self.role_arn, self.tags, self.source_dir = role_arn, tags, source_dir
        self.clock, self.role_budget_s = clock, role_budget_s

    def check_concurrency(self, name: str, config: FunctionConfig) -> None:
        """Raise InvalidRequestError, saying what to change, when `config`'s reserved and provisioned
        concurrency would leave the account fewer than the 100 unreserved executions AWS keeps."""
        limit = self.client.get_account_settings()["AccountLimit"]
        reserved_now = (or_none(self.client.get_function_concurrency, FunctionName=name) or {}).get(
            "ReservedConcurrentExecutions")
        provisioned_now = 0
        if reserved_now is None and config.reserved_concurrency is None:  # then it is out of the unreserved pool
            provisioned_now = (self._provisioned(name, ALIAS) or {}).get("RequestedProvisionedConcurrentExecutions", 0)
        problem = concurrency_problem(limit["ConcurrentExecutions"], limit["UnreservedConcurrentExecutions"],
                                      reserved_now, config.reserved_concurrency, config.provisioned_concurrency,
                                      provisioned_now)
        if problem:
            raise InvalidRequestError(f"Lambda function {name}: {problem}")

    # -- the Functions service ------------------------------------------------------------
    def publish_function(self, name: str, endpoint_name: str, config: FunctionConfig,
                         model_version: str = "", s3_prefixes: Sequence[str] = ()) -> FunctionState:
        if self.role_arn is None:
            raise ValueError("publish_function needs the role_arn the functions run as")
        environment = function_environment(endpoint_name, config, model_version, s3_prefixes)
        return self.publish(name, self.role_arn(name, endpoint_name, s3_prefixes), zip_source(str(self.source_dir)), environment,
                            config, tags=self.tags)

    # -- reads ------------------------------------------------------------------------
    def _configuration(self, name: str) -> dict | None:
        return or_none(self.client.get_function_configuration, FunctionName=name)

    def _published_like(self, name: str, code_sha256: str, desired: dict) -> dict | None:
        """The newest published version (not $LATEST) with this code and configuration, or None."""
        found = None
        for page in self.client.get_paginator("list_versions_by_function").paginate(FunctionName=name):
            for version in page.get("Versions", []):
                if (version.get("Version", "$LATEST").isdigit() and version.get("CodeSha256") == code_sha256
                        and not _differs(version, desired)
                        and (found is None or int(version["Version"]) > int(found["Version"]))):
                    found = version
        return found

    def _alias(self, name: str, alias: str) -> dict | None:
        return or_none(self.client.get_alias, FunctionName=name, Name=alias)

    def _provisioned(self, name: str, alias: str) -> dict | None:
        return or_none(self.client.get_provisioned_concurrency_config, FunctionName=name, Qualifier=alias)

    # -- waits ------------------------------------------------------------------------
    def _wait_ready(self, name: str, created: bool = False) -> dict:
        """Wait until no update of the function is in progress (and, when it was just `created`, until
        it is Active); its configuration.

        Only a new function is waited for to be Active. Lambda makes a function idle for weeks
        Inactive, and it stays so until invoked or updated (UpdateFunctionCode and
        UpdateFunctionConfiguration are refused only while it is Pending): function_active_v2 never
        ends on it. function_updated_v2 covers a Pending one too, as LastUpdateStatus is first
        Successful when its creation completes.
        """
        waiters = ((("function_active_v2", "become Active"),) if created else ()) + (
            ("function_updated_v2", "finish its update"),)
        for waiter, what in waiters:
            failed = wait_until(self.client, waiter, what=f"Lambda function {name} to {what}",
                                timeout_s=self.timeout_s, poll_seconds=self.poll_seconds, FunctionName=name)
            if failed is not None:
                configuration = failed.get("Configuration", {})
                if configuration.get("State") == "Failed":
                    raise DeploymentFailedError(f"Lambda function {name} failed: "
                                                f"{configuration.get('StateReason', 'no reason given')}")
                raise DeploymentFailedError(f"Lambda function {name} update failed: "
                                            f"{configuration.get('LastUpdateStatusReason', 'no reason given')}")
        return self.client.get_function_configuration(FunctionName=name)

    def _wait_version(self, name: str, version: str) -> None:
        failed = wait_until(self.client, "published_version_active", what=f"version {version} of {name} to be Active",
                            timeout_s=self.timeout_s, poll_seconds=self.poll_seconds, FunctionName=name,
                            Qualifier=version)
        if failed is not None:
            raise DeploymentFailedError(f"version {version} of Lambda function {name} failed: "
                                        f"{failed.get('StateReason', 'no reason given')}")

    def _wait_provisioned(self, name: str, alias: str) -> dict:
        def probe():
            current = self.client.get_provisioned_concurrency_config(FunctionName=name, Qualifier=alias)
            if current.get("Status") == "FAILED":
                raise DeploymentFailedError(f"provisioned concurrency of {name}:{alias} failed: "
                                            f"{current.get('StatusReason', 'no reason given')}")
            return current if current.get("Status") == "READY" else None
        return wait_for(probe, what=f"provisioned concurrency of {name}:{alias} to become READY",
                        timeout_s=self.timeout_s, interval_s=self.poll_seconds, clock=self.clock)

    # -- steps ------------------------------------------------------------------------
    def _create(self, name: str, code_zip: bytes, desired: dict, tags: dict[str, str] | None) -> None:
        kwargs = {"FunctionName": name, "Code": {"ZipFile": code_zip}, "PackageType": "Zip", "Publish": False,
                  **desired}
        if tags:
            kwargs["Tags"] = dict(tags)
        # A role made moments ago may not be assumable by Lambda yet: retried within a budget.
        while_role_propagates(self.client.create_function, budget_s=self.role_budget_s, clock=self.clock, **kwargs)

    def _ensure_tags(self, arn: str, tags: dict[str, str] | None) -> None:
        if not tags:
            return
        have = self.client.list_tags(Resource=arn).get("Tags", {})
        missing = {k: v for k, v in tags.items() if have.get(k) != v}
        if missing:
            self.client.tag_resource(Resource=arn, Tags=missing)

    def _point_alias(self, name: str, alias: str, version: str) -> str:
        current = self._alias(name, alias)
        if current is None:
            return self.client.create_alias(FunctionName=name, Name=alias, FunctionVersion=version)["AliasArn"]
        if current["FunctionVersion"] != version:
            return self.client.update_alias(FunctionName=name, Name=alias, FunctionVersion=version)["AliasArn"]
        return current["AliasArn"]

    def _set_reserved(self, name: str, reserved: int | None) -> None:
        have = self.client.get_function_concurrency(FunctionName=name).get("ReservedConcurrentExecutions")
        if reserved is None:
            if have is not None:
                self.client.delete_function_concurrency(FunctionName=name)
        elif have != reserved:
            self.client.put_function_concurrency(FunctionName=name, ReservedConcurrentExecutions=reserved)

    def _set_provisioned(self, name: str, alias: str, provisioned: int, current: dict | None) -> None:
        if provisioned <= 0:
            if current is not None:
                if_exists(self.client.delete_provisioned_concurrency_config, FunctionName=name, Qualifier=alias)
            return
        if (current is None or current.get("RequestedProvisionedConcurrentExecutions") != provisioned
                or current.get("Status") == "FAILED"):
            self.client.put_provisioned_concurrency_config(
                FunctionName=name, Qualifier=alias, ProvisionedConcurrentExecutions=provisioned)
        self._wait_provisioned(name, alias)

    # -- public -----------------------------------------------------------------------
    def publish(self, name: str, role_arn: str, code_zip: bytes, environment: dict[str, str], config: FunctionConfig,
                alias: str = ALIAS, runtime: str = RUNTIME, handler: str = HANDLER,
                tags: dict[str, str] | None = None) -> FunctionState:
        """Create or update the function, publish a version unless one with this code and configuration
        exists, and serve it from `alias`."""
        sha = code_sha256(code_zip)
        desired = {"Role": role_arn, "Handler": handler, "Runtime": runtime, "MemorySize": config.memory_mb,
                   "Timeout": config.timeout_seconds, "Environment": {"Variables": dict(environment)}}
        if self._configuration(name) is None:
            self._create(name, code_zip, desired, tags)
            current = self._wait_ready(name, created=True)
        else:
            current = self._wait_ready(name)  # never update over an update still in progress
            if current.get("CodeSha256") != sha:
                self.client.update_function_code(FunctionName=name, ZipFile=code_zip, Publish=False)
                current = self._wait_ready(name)
            if _differs(current, desired):
                while_role_propagates(self.client.update_function_configuration, budget_s=self.role_budget_s,
                                      clock=self.clock, FunctionName=name, **desired)
                current = self._wait_ready(name)
            self._ensure_tags(current["FunctionArn"], tags)

        # A version published before with exactly this code and configuration is served again (a
        # rollback moves the alias back); otherwise one is published, also when an earlier run
        # updated $LATEST but stopped before publishing it.
        version = self._published_like(name, current["CodeSha256"], desired)
        if version is None:
            version = self.client.publish_version(FunctionName=name, CodeSha256=current["CodeSha256"])
        self._wait_version(name, version["Version"])  # also one an interrupted run published a moment ago
        alias_arn = self._point_alias(name, alias, version["Version"])

        # Provisioned concurrency must fit within reserved: shrink it first, grow it after.
        reserved, provisioned = config.reserved_concurrency, config.provisioned_concurrency
        current_provisioned = self._provisioned(name, alias)
        requested = (current_provisioned or {}).get("RequestedProvisionedConcurrentExecutions", 0)
        if provisioned < requested:
            self._set_provisioned(name, alias, provisioned, current_provisioned)
            self._set_reserved(name, reserved)
        else:
            self._set_reserved(name, reserved)
            self._set_provisioned(name, alias, provisioned, current_provisioned)

        region = self.client.meta.region_name
        return FunctionState(
            name=name, arn=alias_arn, reserved_concurrency=reserved, provisioned_concurrency=provisioned,
            invoke_url=f"https://lambda.{region}.amazonaws.com/2015-03-31/functions/{name}:{alias}/invocations",
            code_sha256=current["CodeSha256"], alias=alias, version=version["Version"])

    def delete_function(self, name: str) -> bool:
        """Delete the aliases' provisioned concurrency, the aliases and the function; False if there was none."""
        if self._configuration(name) is None:
            return False
        aliases = []
        for page in self.client.get_paginator("list_aliases").paginate(FunctionName=name):
            aliases += [a["Name"] for a in page.get("Aliases", [])]
        for alias in aliases:
            if_exists(self.client.delete_provisioned_concurrency_config, FunctionName=name, Qualifier=alias)
            if_exists(self.client.delete_alias, FunctionName=name, Name=alias)
        return if_exists(self.client.delete_function, FunctionName=name)
