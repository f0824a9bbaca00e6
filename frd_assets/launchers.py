"""Queue routing: every run that will execute a step tagged `frd/queue: gpu` goes to GPU capacity.

The queue is read from the run itself (its execution plan and job snapshot), never from a tag the caller
must remember, so runs launched from the UI, a sensor, an automation condition or GraphQL route alike.

- `QueueTaggingRunCoordinator` (a QueuedRunCoordinator) writes the `frd/queue` run tag when a run is
  submitted, so `tag_concurrency_limits` on that tag (one GPU run per GPU) hold before anything launches.
  It also refuses, before anything runs, a run whose partition is not a dataset id: Dagster accepts any
  string as a dynamic partition key over GraphQL, and `<id>/` or `/<id>` would name another dataset's
  objects. (Each asset checks again at its first line, for runs that never pass a coordinator.) And it
  refuses a run config that sets resources or a value core refuses (defs/config.check_run_config), so
  such a run never queues.
- `QueueRoutingRunLauncher` delegates each run to the launcher configured for its queue (in-process,
  Celery queues, Kubernetes jobs with GPU resources...) and delegates termination and health checks to
  the launcher that started the run.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import yaml
from dagster import DagsterInstance, DagsterRun, Field, Noneable, Permissive, StringSource
from dagster import _check as check
from dagster._core.launcher import CheckRunHealthResult, LaunchRunContext, ResumeRunContext, RunLauncher
from dagster._core.run_coordinator import QueuedRunCoordinator, SubmitRunContext
from dagster._serdes import ConfigurableClass, ConfigurableClassData
from dagster_celery.launcher import CeleryRunLauncher

from frd_assets.core.datasets import check_dataset_id
from frd_assets.core.names import CPU_QUEUE as CPU
from frd_assets.core.names import GPU_QUEUE as GPU
from frd_assets.core.names import PARTITION_TAG, QUEUE_TAG
from frd_assets.defs.config import check_run_config

# Run tags that carry partition keys: one partition, or the two ends of a ranged (single-run) backfill.
PARTITION_TAGS = (PARTITION_TAG, "dagster/asset_partition_range_start", "dagster/asset_partition_range_end")


def queue_for_run(instance: DagsterInstance, run: DagsterRun) -> str:
    """'gpu' when any step this run will execute comes from an op tagged frd/queue: gpu, else 'cpu'."""
    job_snapshot = instance.get_job_snapshot(run.job_snapshot_id)
    op_tags = {op.name: op.tags for op in job_snapshot.node_defs_snapshot.op_def_snaps}
    # Node (invocation) name -> op definition name; for assets they are the same, for aliased ops not.
    node_to_def = {
        inv.node_name: inv.node_def_name for inv in job_snapshot.dep_structure_snapshot.node_invocation_snaps
    }
    plan = instance.get_execution_plan_snapshot(run.execution_plan_snapshot_id)
    to_execute = set(run.step_keys_to_execute) if run.step_keys_to_execute else None
    for step in plan.steps:
        if to_execute is not None and step.key not in to_execute:
            continue
        node_name = step.node_handle_id.split(".")[0]
        tags = op_tags.get(node_to_def.get(node_name, node_name), {})
        if tags.get(QUEUE_TAG) == GPU:
            return GPU
    return CPU


class QueueTaggingRunCoordinator(QueuedRunCoordinator):
    """The queued run coordinator, plus the frd/queue tag on every run it accepts."""

    def submit_run(self, context: SubmitRunContext) -> DagsterRun:
        run = context.dagster_run
        for tag in PARTITION_TAGS:
            if tag in run.tags:
                # Raising here makes Dagster mark the run failed with this message and answer the
                # GraphQL launch with the error; nothing has been written for it.
                check_dataset_id(run.tags[tag], what=f"run {run.run_id}: partition ({tag})")
        check_run_config(run.run_config, run=f"run {run.run_id}")
        if QUEUE_TAG not in run.tags:
            self._instance.add_run_tags(run.run_id, {QUEUE_TAG: queue_for_run(self._instance, run)})
        return super().submit_run(context)


class QueueRoutingRunLauncher(RunLauncher, ConfigurableClass):
    """Delegates each run to the launcher of its queue, configured by module, class and config."""

    def __init__(self, queues: Mapping[str, Mapping[str, Any]], inst_data: ConfigurableClassData | None = None):
        self._inst_data = inst_data
        missing = {CPU, GPU} - set(queues)
        if missing:
            raise check.CheckError(f"QueueRoutingRunLauncher: config.queues needs a launcher for {sorted(missing)}")
        self._queue_config = {name: dict(spec) for name, spec in queues.items()}
        self._launchers: dict[str, RunLauncher] = {
            name: ConfigurableClassData(
                spec["module"], spec["class"], yaml.safe_dump(dict(spec.get("config") or {}))
            ).rehydrate(as_type=RunLauncher)
            for name, spec in queues.items()
        }
        super().__init__()

    @property
    def inst_data(self) -> ConfigurableClassData | None:
        return self._inst_data

    @classmethod
    def config_type(cls):
        return {
            "queues": Field(
                Permissive(),
                description="queue name -> {module, class, config} of the launcher for that queue; "
                "needs 'cpu' and 'gpu'",
            )
        }

    @classmethod
    def from_config_value(cls, inst_data: ConfigurableClassData, config_value: Mapping[str, Any]):
        for name, spec in config_value["queues"].items():
            if not isinstance(spec, Mapping) or "module" not in spec or "class" not in spec:
                raise check.CheckError(
                    f"QueueRoutingRunLauncher: queues.{name} needs 'module' and 'class' (and optional 'config')"
                )
        return cls(queues=config_value["queues"], inst_data=inst_data)

    def register_instance(self, instance: DagsterInstance) -> None:
        super().register_instance(instance)
        for launcher in self._launchers.values():
            launcher.register_instance(instance)

    def launcher_for(self, queue: str) -> RunLauncher:
        return self._launchers[queue]

    def _queue_of(self, run: DagsterRun) -> str:
        queue = run.tags.get(QUEUE_TAG) or queue_for_run(self._instance, run)
        if queue not in self._launchers:
            raise check.CheckError(f"run {run.run_id} asks for queue {queue!r}; configured: {sorted(self._launchers)}")
        return queue

    def launch_run(self, context: LaunchRunContext) -> None:
        run = context.dagster_run
        queue = self._queue_of(run)
        if run.tags.get(QUEUE_TAG) != queue:
            self._instance.add_run_tags(run.run_id, {QUEUE_TAG: queue})
            run = self._instance.get_run_by_id(run.run_id)
        self._instance.report_engine_event(f"Routing run to the {queue} queue", run, cls=self.__class__)
        self._launchers[queue].launch_run(LaunchRunContext(dagster_run=run, workspace=context.workspace))

    def resume_run(self, context: ResumeRunContext) -> None:
        self._launchers[self._queue_of(context.dagster_run)].resume_run(context)

    @property
    def supports_resume_run(self) -> bool:
        return all(launcher.supports_resume_run for launcher in self._launchers.values())

    def terminate(self, run_id: str) -> bool:
        run = self._instance.get_run_by_id(run_id)
        if run is None:
            return False
        return self._launchers[self._queue_of(run)].terminate(run_id)

    @property
    def supports_check_run_worker_health(self) -> bool:
        return all(launcher.supports_check_run_worker_health for launcher in self._launchers.values())

    def check_run_worker_health(self, run: DagsterRun) -> CheckRunHealthResult:
        return self._launchers[self._queue_of(run)].check_run_worker_health(run)

    def get_run_worker_debug_info(self, run: DagsterRun, include_container_logs: bool | None = True) -> str | None:
        return self._launchers[self._queue_of(run)].get_run_worker_debug_info(run, include_container_logs)

    def dispose(self) -> None:
        for launcher in self._launchers.values():
            launcher.dispose()

    def join(self, timeout: int = 30) -> None:
        for launcher in self._launchers.values():
            launcher.join(timeout)


class CeleryQueueRunLauncher(CeleryRunLauncher):
    """dagster-celery's launcher bound to one queue, on the Redis the workers use (REDIS_HOST, REDIS_PORT)."""

    def __init__(self, queue: str, broker: str | None = None, inst_data: ConfigurableClassData | None = None):
        from frd_assets.celery_app import app_args

        args = app_args(queue, broker)
        super().__init__(
            default_queue=queue,
            broker=args["broker"],
            backend=args["backend"],
            config_source=args["config_source"],
            inst_data=inst_data,
        )

    @classmethod
    def config_type(cls):
        return {
            "queue": Field(StringSource, description="the Celery queue this launcher sends runs to"),
            "broker": Field(
                Noneable(StringSource),
                is_required=False,
                description="broker URL; default redis://REDIS_HOST:REDIS_PORT/REDIS_DB",
            ),
        }

    @classmethod
    def from_config_value(cls, inst_data: ConfigurableClassData, config_value: Mapping[str, Any]):
        return cls(inst_data=inst_data, **config_value)
