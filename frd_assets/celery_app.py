"""The Celery app of the queue workers: dagster-celery's run tasks on Redis at REDIS_HOST:REDIS_PORT.

Start a worker for one queue, as `docker-compose up -d cpu-worker` does:
    celery -A frd_assets.celery_app worker -Q cpu_queue --pool solo --prefetch-multiplier=1
The run launcher (frd_assets.launchers.CeleryQueueRunLauncher) builds the same app from the same settings.
"""

from __future__ import annotations

from collections.abc import Mapping

from dagster_celery.config import DEFAULT_CONFIG
from dagster_celery.make_app import make_app
from dagster_celery.tasks import create_execute_job_task, create_resume_job_task

from frd_assets.core.names import CPU_QUEUE, GPU_QUEUE
from frd_assets.core.settings import service_settings

# The Celery queue of each frd/queue value; deploy/dagster.yaml and docker-compose.yml spell the same names.
QUEUES = {queue: f"{queue}_queue" for queue in (CPU_QUEUE, GPU_QUEUE)}


def broker_url(env: Mapping[str, str] | None = None) -> str:
    """redis://REDIS_HOST:REDIS_PORT/REDIS_DB (core/settings.py)."""
    return service_settings(env).redis_url


def app_args(default_queue: str, broker: str | None = None) -> dict:
    url = broker or broker_url()
    # Results on Redis too: the launcher's health checks read task states from the backend.
    return {
        "broker": url,
        "backend": url,
        "include": [],
        # Results never expire: run monitoring reads a run's task state for as long as the run lasts, and
        # Celery's default (one day) would make a long LoRA search look lost.
        "config_source": {**DEFAULT_CONFIG, "result_expires": None},
        "task_default_queue": default_queue,
    }


app = make_app(app_args=app_args(QUEUES[CPU_QUEUE]))
execute_job = create_execute_job_task(app)
resume_job = create_resume_job_task(app)
