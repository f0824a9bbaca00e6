"""Typed resources, read once from the environment; secrets stay EnvVar references, never values."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Optional

from dagster import ConfigurableResource, EnvVar

from frd_assets.core import settings
from frd_assets.core.lora.kubernetes import KubernetesWorkers
from frd_assets.core.lora.study_storage import default_storage_url
from frd_assets.core.models import DEFAULT_MODEL
from frd_assets.core.store import LocalStore, S3Store, Store


def resolved(value):
    """A field's value: Dagster resolves EnvVar fields at run time; outside a run (the CLI) we do it here."""
    return value.get_value() if isinstance(value, EnvVar) else value


class StoreResource(ConfigurableResource):
    """S3 (MinIO or any S3 endpoint) when endpoint is set, else a local folder per bucket."""

    endpoint: Optional[str] = None
    access_key: Optional[str] = None
    secret_key: Optional[str] = None
    local_root: Optional[str] = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "StoreResource":
        s = settings.store_settings(env)
        if s.endpoint:
            # EnvVar keeps the values out of the run config and the UI; Dagster reads them at run time.
            return cls(
                endpoint=EnvVar(settings.MINIO_ENDPOINT),
                access_key=EnvVar(s.access_key_var),
                secret_key=EnvVar(s.secret_key_var),
            )
        return cls(local_root=str(s.local_root))

    def get_store(self) -> Store:
        if self.endpoint:
            return S3Store.connect(
                resolved(self.endpoint), resolved(self.access_key) or "", resolved(self.secret_key) or ""
            )
        return LocalStore(self.local_root or settings.local_store_root())


class TeacherResource(ConfigurableResource):
    """The teacher of generated_dataset: a local transformers model, or an OpenAI-compatible endpoint."""

    backend: str = "transformers"  # or "openai"
    model: str = DEFAULT_MODEL  # a model name or folder; for "openai", the served model's name
    base_url: Optional[str] = None  # for "openai": http://host:port/v1
    api_key: Optional[str] = None
    batch_size: int = settings.TEACHER_BATCH_SIZE  # prompts per forward pass (transformers)
    max_concurrency: int = settings.TEACHER_MAX_CONCURRENCY  # requests in flight (openai)
    timeout: float = settings.TEACHER_TIMEOUT_S  # seconds per request (openai)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "TeacherResource":
        s = settings.teacher_settings(env)
        return cls(
            backend=s.backend,
            model=s.model,
            base_url=s.base_url,
            api_key=EnvVar(s.api_key_var) if s.api_key_var else None,
            batch_size=s.batch_size,
            max_concurrency=s.max_concurrency,
            timeout=s.timeout,
        )

    def build(self):
        from frd_assets.core.generation.teachers import make_teacher

        return make_teacher(
            backend=self.backend,
            model=self.model,
            base_url=self.base_url,
            api_key=resolved(self.api_key),
            batch_size=self.batch_size,
            max_concurrency=self.max_concurrency,
            timeout=self.timeout,
        )


class JudgeResource(ConfigurableResource):
    """The pairwise judge of adapter_evaluation: an OpenAI-compatible endpoint (base_url + the model it
    serves), or a local model (model alone); neither: no judge, reference metrics only."""

    base_url: Optional[str] = None
    model: Optional[str] = None
    api_key: Optional[str] = None
    batch_size: int = settings.TEACHER_BATCH_SIZE  # prompts per forward pass (local model)
    max_concurrency: int = settings.TEACHER_MAX_CONCURRENCY  # requests in flight (endpoint)
    timeout: float = settings.TEACHER_TIMEOUT_S  # seconds per request (endpoint)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "JudgeResource":
        s = settings.judge_settings(env)
        return cls(base_url=s.base_url, model=s.model, api_key=EnvVar(s.api_key_var) if s.api_key_var else None)

    def build(self):
        from frd_assets.core.evaluation import make_judge

        return make_judge(
            base_url=self.base_url,
            model=self.model,
            api_key=resolved(self.api_key),
            batch_size=self.batch_size,
            max_concurrency=self.max_concurrency,
            timeout=self.timeout,
        )


class LoraResource(ConfigurableResource):
    """Defaults of lora_adapter: base model, trial count, trial workers, where the Optuna study and trial
    adapters live."""

    base_model: str = DEFAULT_MODEL
    n_trials: int = settings.DEFAULT_N_TRIALS
    optuna_storage: str = ""  # an SQLAlchemy URL; empty means an SQLite file in the cache folder
    work_dir: str = ""  # trial adapters; empty means the cache folder
    n_workers: int = 1  # trial processes at once (LORA_N_WORKERS; per-run override: n_workers)
    # FRD_K8S_TRIAL_WORKERS: the trial workers' Kubernetes pods (a JSON object of KubernetesWorkers' fields);
    # empty means local processes.
    k8s_trial_workers: str = ""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "LoraResource":
        s = settings.lora_settings(env)
        return cls(
            base_model=s.base_model,
            n_trials=s.n_trials,
            # The URL may hold a database password: pass it by reference when it is set.
            optuna_storage=EnvVar(s.storage_var) if s.storage_var else "",
            work_dir=str(s.trials_dir or ""),
            n_workers=s.n_workers,
            k8s_trial_workers=_checked_k8s_trial_workers(os.environ if env is None else env),
        )

    def storage_url(self) -> str:
        """The study storage: OPTUNA_STORAGE, else the SQLite file `frd tune` and `frd dashboard` use too."""
        return resolved(self.optuna_storage) if self.optuna_storage else default_storage_url()

    def trials_dir(self) -> Path:
        return Path(self.work_dir) if self.work_dir else settings.default_trials_dir()

    def trial_workers(self) -> KubernetesWorkers | None:
        """KubernetesWorkers when FRD_K8S_TRIAL_WORKERS configures pods, else None: local processes."""
        return KubernetesWorkers.from_json(self.k8s_trial_workers)


def _checked_k8s_trial_workers(env: Mapping[str, str]) -> str:
    """FRD_K8S_TRIAL_WORKERS as set, refused when the code location loads if it does not describe pods."""
    text = (settings.k8s_trial_workers(env) or "").strip()
    KubernetesWorkers.from_json(text)
    return text

