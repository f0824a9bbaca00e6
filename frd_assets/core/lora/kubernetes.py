"""Trial workers as Kubernetes pods: one Job per search, `parallelism` pods sharing the PostgreSQL study.

The Job is Kubernetes' work-queue pattern, with the study as the queue: no `completions`, each pod runs
`python -m frd_assets.core.lora.pool --workers 1` (trials one after another, each in a fresh process)
until the study holds its n_trials finished trials, then exits 0; the Job is complete once one pod has
succeeded and all have ended. A pod that dies is replaced by the Job controller (up to backoff_limit),
and its trial is failed by the heartbeat and queued again. A plain Job, not dagster-k8s's PipesK8sClient:
the workers report to the study, not to Dagster, and a Job gives parallelism and pod replacement as is.

The pods need the run's work folder (the spec and every trial's adapter, so that the best can be copied)
on a volume that the lora_adapter run pod mounts at the same path: the PersistentVolumeClaim
`trials_claim` at `trials_mount`, with FRD_TRIALS_DIR under it. Configured by one environment variable,
FRD_K8S_TRIAL_WORKERS, a JSON object of KubernetesWorkers' fields (deploy/helm/values.yaml sets it).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Mapping

from frd_assets.core import settings
from frd_assets.core.config_checks import Integer, Names, _Refused, check_fields, config_from_json
from frd_assets.core.lora import pool
from frd_assets.core.lora.job import SearchJob
from frd_assets.core.lora.study_storage import STORAGE_ENV

K8S_WORKERS_ENV = settings.FRD_K8S_TRIAL_WORKERS
WORKER_LABEL = "frd-trial-worker"


@dataclass(frozen=True)
class _Text:
    optional: bool = False

    def check(self, value: Any) -> Any:
        if value is None and self.optional:
            return None
        if not isinstance(value, str) or not value.strip():
            raise _Refused("a non-empty string" + (" or null" if self.optional else ""))
        return value


@dataclass(frozen=True)
class _StringMap:
    def check(self, value: Any) -> Any:
        strings = isinstance(value, Mapping) and all(isinstance(x, str) for item in value.items() for x in item)
        if not strings:
            raise _Refused('an object of strings such as {"nvidia.com/gpu.present": "true"}')
        return dict(value)


@dataclass(frozen=True)
class _Objects:
    def check(self, value: Any) -> Any:
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, Mapping) for v in value):
            raise _Refused('a list of objects such as [{"key": "nvidia.com/gpu", "operator": "Exists"}]')
        return tuple(dict(v) for v in value)


@dataclass(frozen=True)
class KubernetesWorkers:
    """Where and how the trial worker pods run."""

    image: str  # the project's image (the same as the code location's)
    trials_claim: str  # PersistentVolumeClaim of the trials folder; ReadWriteMany when pods span nodes
    trials_mount: str = "/trials"  # its mount path in the run pod and in every worker pod
    namespace: str = "dagster"
    service_account: str | None = None
    env_secrets: tuple[str, ...] = ("frd-assets-env",)  # Secrets whose keys become env, OPTUNA_STORAGE among them
    cpu: str = "4"  # per pod, request and limit: the worker's torch threads follow the limit
    memory: str = "24Gi"
    gpus: int = 1  # nvidia.com/gpu per pod; 0 for CPU pods
    node_selector: dict = field(default_factory=dict)
    tolerations: tuple = ()
    backoff_limit: int = 6  # pods that may fail before the Job gives up
    ttl_seconds_after_finished: int = 3600  # the finished Job and its pods' logs stay this long

    def __post_init__(self) -> None:
        check_fields(self, "Kubernetes trial workers", _RULES)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "KubernetesWorkers | None":
        """The workers FRD_K8S_TRIAL_WORKERS describes, or None (unset: local worker processes)."""
        return cls.from_json(settings.k8s_trial_workers(env) or "")

    @classmethod
    def from_json(cls, text: str) -> "KubernetesWorkers | None":
        """The workers a FRD_K8S_TRIAL_WORKERS value describes, or None when it is empty."""
        text = text.strip()
        if not text:
            return None
        try:
            return config_from_json(cls, text, source=K8S_WORKERS_ENV)
        except TypeError:  # the JSON is an object of known fields, so a required one is missing
            required = [f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING]
            raise ValueError(
                f"{K8S_WORKERS_ENV} must give {' and '.join(required)}: the worker pods' image and the "
                "PersistentVolumeClaim of the trials folder, as deploy/helm/values.yaml does"
            ) from None

    def run_trials(self, spec: Path, job: SearchJob, *, storage_url: str, print_fn: Callable[[str], None]) -> None:
        """Starts the Job (or joins the one an interrupted run left running) and waits until it has ended."""
        from kubernetes import client, config
        from kubernetes.client.exceptions import ApiException
        from kubernetes.config.config_exception import ConfigException

        if settings.optuna_storage() != storage_url:
            raise ValueError(
                f"Kubernetes trial workers read the study's storage URL from {STORAGE_ENV} in the Secret(s) "
                f"{', '.join(self.env_secrets)}, but this run uses another one; set {STORAGE_ENV} in the run's "
                "environment from the same Secret"
            )
        manifest = worker_job_manifest(self, study_name=job.study_name, spec=spec, n_workers=job.settings.n_workers,
                                       storage_url=storage_url)
        try:
            config.load_incluster_config()
        except ConfigException:  # outside the cluster: the user's kubeconfig
            config.load_kube_config()
        api = client.BatchV1Api()
        name, ns = manifest["metadata"]["name"], self.namespace
        try:
            api.create_namespaced_job(ns, manifest)
            print_fn(f"started Kubernetes Job {ns}/{name}: {job.settings.n_workers} trial worker pod(s)")
        except ApiException as exc:
            if exc.status != 409:
                raise
            if _job_state(api.read_namespaced_job_status(name, ns)) is None:
                print_fn(f"Kubernetes Job {ns}/{name} of an earlier run is still working on this study; waiting on it")
            else:  # an ended Job of an earlier run: replace it
                api.delete_namespaced_job(name, ns, propagation_policy="Foreground")
                _wait_gone(api, name, ns)
                api.create_namespaced_job(ns, manifest)
                print_fn(f"restarted Kubernetes Job {ns}/{name}: {job.settings.n_workers} trial worker pod(s)")
        while (state := _job_state(api.read_namespaced_job_status(name, ns))) is None:
            time.sleep(15)
        if state == "Failed":
            raise RuntimeError(
                f"Kubernetes Job {ns}/{name} of study {job.study_name} failed; see `kubectl -n {ns} logs job/{name}` "
                f"and `kubectl -n {ns} describe job/{name}`"
            )


_RULES = {
    "image": _Text(),
    "trials_claim": _Text(),
    "trials_mount": _Text(),
    "namespace": _Text(),
    "service_account": _Text(optional=True),
    "env_secrets": Names('["frd-assets-env"]'),
    "cpu": _Text(),
    "memory": _Text(),
    "gpus": Integer(0, 64),
    "node_selector": _StringMap(),
    "tolerations": _Objects(),
    "backoff_limit": Integer(0, 100),
    "ttl_seconds_after_finished": Integer(0, 30 * 86_400),
}


def job_name(study_name: str) -> str:
    """One Job per study: a rerun finds the Job of an interrupted run. A hash, since a study name (a UUID and
    a model name) may be longer than the 63 characters and the alphabet Kubernetes allows."""
    return f"frd-trials-{hashlib.sha256(study_name.encode()).hexdigest()[:12]}"


def worker_job_manifest(
    workers: KubernetesWorkers, *, study_name: str, spec: Path, n_workers: int, storage_url: str
) -> dict:
    """The batch/v1 Job that runs n_workers trial worker pods against the study described by spec."""
    if storage_url.startswith("sqlite"):
        raise ValueError(
            "Kubernetes trial workers need the study in a database server, not SQLite (SQLite on a volume shared "
            "by several pods corrupts); set OPTUNA_STORAGE to a PostgreSQL URL"
        )
    mount = Path(workers.trials_mount)
    if not Path(spec).is_relative_to(mount):
        raise ValueError(
            f"the search spec {spec} is not under {mount}, where the worker pods mount the claim "
            f"{workers.trials_claim}; set FRD_TRIALS_DIR to a folder under {mount}"
        )
    labels = {"app.kubernetes.io/name": WORKER_LABEL, "app.kubernetes.io/part-of": "frd-assets"}
    limits = {"cpu": workers.cpu, "memory": workers.memory}
    if workers.gpus:
        limits["nvidia.com/gpu"] = str(workers.gpus)
    pod_spec: dict = {
        "restartPolicy": "Never",  # a failed pod is replaced by a new one (Job backoff), not restarted in place
        "containers": [
            {
                "name": "trial-worker",
                "image": workers.image,
                "command": ["python", "-m", pool.__name__, "--spec", str(spec), "--workers", "1"],
                "env": [{"name": "PYTHONUNBUFFERED", "value": "1"}],
                "envFrom": [{"secretRef": {"name": name}} for name in workers.env_secrets],
                "resources": {"requests": {"cpu": workers.cpu, "memory": workers.memory}, "limits": limits},
                "volumeMounts": [{"name": "trials", "mountPath": str(mount)}],
            }
        ],
        "volumes": [{"name": "trials", "persistentVolumeClaim": {"claimName": workers.trials_claim}}],
    }
    if workers.service_account:
        pod_spec["serviceAccountName"] = workers.service_account
    if workers.node_selector:
        pod_spec["nodeSelector"] = dict(workers.node_selector)
    if workers.tolerations:
        pod_spec["tolerations"] = [dict(t) for t in workers.tolerations]
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": job_name(study_name),
            "namespace": workers.namespace,
            "labels": labels,
            "annotations": {"frd-assets/study": study_name},
        },
        "spec": {
            # Work queue: parallelism without completions; the study hands out the trials.
            "parallelism": n_workers,
            "backoffLimit": workers.backoff_limit,
            "ttlSecondsAfterFinished": workers.ttl_seconds_after_finished,
            "template": {"metadata": {"labels": labels}, "spec": pod_spec},
        },
    }


def _job_state(job) -> str | None:
    """'Complete' or 'Failed' once the Job has ended, else None."""
    for condition in (job.status.conditions or []) if job.status else []:
        if condition.type in ("Complete", "Failed") and condition.status == "True":
            return condition.type
    return None


def _wait_gone(api, name: str, namespace: str, timeout_s: float = 300) -> None:
    from kubernetes.client.exceptions import ApiException

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            api.read_namespaced_job_status(name, namespace)
        except ApiException as exc:
            if exc.status == 404:
                return
            raise
        time.sleep(2)
    raise RuntimeError(f"Kubernetes Job {namespace}/{name} was not deleted within {timeout_s:.0f} s")

