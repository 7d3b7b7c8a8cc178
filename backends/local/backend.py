"""The local backend: everything on this machine, offline.

Storage is the local store (s3:// URIs under the state folder), training and tuning run
training/train.py in subprocesses, the registry is a folder, and endpoints and functions
live in the local gateway: started on first need, left running after the flow so the user
can keep calling them.
"""
from __future__ import annotations

from backends.backend import Backend
from backends.local.functions import LocalFunctions
from backends.local.gateway.client import GatewayConnection
from backends.local.hosting import LocalHosting
from backends.local.planning import LocalPlanning
from backends.local.registry import LocalRegistry
from backends.local.state import LocalState
from backends.local.storage import LocalStorage
from backends.local.store import LocalStore
from backends.local.training import LocalTraining
from backends.session import local_session, make_client


class LocalBackend(Backend):
    name = "local"

    def __init__(self, home: str | None = None, cpus: int | None = None):
        self.state = LocalState.resolve(home)
        store = LocalStore(self.state.store)
        self.gateway = GatewayConnection(self.state)
        self.storage = LocalStorage(store)
        self.training = LocalTraining(self.state, store, cpus)
        self.registry = LocalRegistry(self.state.registry)
        self.hosting = LocalHosting(self.gateway, store)
        self.functions = LocalFunctions(self.gateway)
        self.planning = LocalPlanning(self.state, self.storage, self.registry, self.hosting, self.functions,
                                      self.gateway, cpus, training=self.training)

    @property
    def endpoint_url(self) -> str:
        return self.gateway.url

    def client(self, service: str):
        return make_client(local_session(), service, endpoint_url=self.gateway.url)

    def delete_support_resources(self) -> list[str]:
        """Stop the gateway when it hosts nothing (other pipelines' endpoints keep it running)."""
        from backends.local.gateway.server import stop_gateway

        if not self.gateway.running():
            return []
        hosted = self.gateway.client().status()
        if hosted["endpoints"] or hosted["functions"]:
            return []
        self.gateway.close()
        stop_gateway(self.state)
        return ["the local gateway (it hosted nothing else)"]

    def close(self) -> None:
        self.gateway.close()
