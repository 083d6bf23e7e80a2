"""Atalaya's Serve applications on a local Ray cluster: what `make run-ray`
(python -m services.ray) runs, and what the tests and the benchmark start.

One machine, kept small: Ray gets `num_cpus` CPUs (the replicas ask for
fractions of them), no GPU, a bounded object store and no dashboard; its
session files go under the state folder. Memory's replicas share one
PostgreSQL: unless ATALAYA_MEMORY_DSN is set, an embedded one is started here,
once, and stopped at the end."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

READY_LINE = "atalaya on ray serve: ready"


@dataclass(frozen=True)
class ClusterSettings:
    num_cpus: float = 2
    object_store_mb: int = 500
    state_dir: Path = Path(".state")
    start_timeout_s: float = 300.0


class LocalServe:
    """start() -> deploy the config -> wait for RUNNING; stop() undoes it all."""

    def __init__(self, config: Mapping[str, Any], cluster: ClusterSettings) -> None:
        self.config = dict(config)
        self.cluster = cluster
        self._embedded: Any = None
        self._started_ray = False
        self._owned_temp_dir: Path | None = None

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.config['grpc_options']['port']}"

    @property
    def app_names(self) -> list[str]:
        return [app["name"] for app in self.config["applications"]]

    def start(self) -> None:
        import ray
        from ray import serve
        from ray.serve.config import HTTPOptions, gRPCOptions
        from ray.serve.schema import ServeDeploySchema

        schema = ServeDeploySchema.model_validate(self.config)  # fail before starting anything
        self._ensure_memory_dsn()
        state = self.cluster.state_dir.resolve()
        # Ray's socket paths must stay short: its session folder (logs included) goes under
        # the state folder when that path is short enough, else under the system's temp folder.
        if len(str(state)) < 40:
            temp_dir = state / "ray"
            temp_dir.mkdir(parents=True, exist_ok=True)
        else:
            temp_dir = self._owned_temp_dir = Path(tempfile.mkdtemp(prefix="atalaya-ray-"))
        ray.init(
            address="local",
            num_cpus=self.cluster.num_cpus,  # type: ignore[arg-type]
            num_gpus=0,
            object_store_memory=self.cluster.object_store_mb * 1024 * 1024,
            include_dashboard=False,
            namespace="serve",
            logging_level=logging.WARNING,
            log_to_driver=False,
            _temp_dir=str(temp_dir),
        )
        self._started_ray = True
        serve.start(
            proxy_location=schema.proxy_location,
            http_options=HTTPOptions(**schema.http_options.model_dump()),
            grpc_options=gRPCOptions(**schema.grpc_options.model_dump()),
        )
        from ray.serve.context import _get_global_client

        client = _get_global_client()
        assert client is not None  # serve.start made it
        client.deploy_apps(schema)
        self._wait_running()

    def _ensure_memory_dsn(self) -> None:
        if "memory" not in self.app_names or os.environ.get("ATALAYA_MEMORY_DSN"):
            return
        from services.memory.embedded import EmbeddedPostgres

        self._embedded = EmbeddedPostgres(self.cluster.state_dir / "ray-memory")
        # Ray workers inherit this process's environment.
        os.environ["ATALAYA_MEMORY_DSN"] = self._embedded.start()

    def _wait_running(self) -> None:
        from ray import serve

        deadline = time.monotonic() + self.cluster.start_timeout_s
        while True:
            apps = serve.status().applications
            states = {
                name: apps[name].status if name in apps else "NOT_STARTED"
                for name in self.app_names
            }
            failed = {n: apps[n].message for n, s in states.items() if s == "DEPLOY_FAILED"}
            if failed:
                raise RuntimeError(f"deploy failed: {failed}")
            if all(s == "RUNNING" for s in states.values()):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"not RUNNING after {self.cluster.start_timeout_s}s: {states}")
            time.sleep(0.5)

    def stop(self) -> None:
        import ray
        from ray import serve

        if self._started_ray:
            try:
                serve.shutdown()  # type: ignore[no-untyped-call]
            finally:
                ray.shutdown()  # type: ignore[no-untyped-call]
                self._started_ray = False
        if self._owned_temp_dir is not None:
            shutil.rmtree(self._owned_temp_dir, ignore_errors=True)
            self._owned_temp_dir = None
        if self._embedded is not None:
            self._embedded.stop()
            self._embedded = None
            os.environ.pop("ATALAYA_MEMORY_DSN", None)
