"""Typed resources, read once from the environment; secrets stay EnvVar references, never values."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Optional

from dagster import ConfigurableResource, EnvVar

from frd_assets.core.models import DEFAULT_MODEL, model_cache_dir
from frd_assets.core.store import LocalStore, S3Store, Store, StoreError, default_local_root


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
        env = os.environ if env is None else env
        if env.get("MINIO_ENDPOINT", "").strip():
            missing = [k for k in ("MINIO_ACCESS_KEY", "MINIO_SECRET_KEY") if not env.get(k)]
            if missing:
                raise StoreError(f"MINIO_ENDPOINT is set but {', '.join(missing)} is not; set both keys or unset it")
            # EnvVar keeps the values out of the run config and the UI; Dagster reads them at run time.
            return cls(
                endpoint=EnvVar("MINIO_ENDPOINT"),
                access_key=EnvVar("MINIO_ACCESS_KEY"),
                secret_key=EnvVar("MINIO_SECRET_KEY"),
            )
        return cls(local_root=env.get("FRD_LOCAL_STORE") or str(default_local_root()))

    def get_store(self) -> Store:
        if self.endpoint:
            return S3Store.connect(
                resolved(self.endpoint), resolved(self.access_key) or "", resolved(self.secret_key) or ""
            )
        return LocalStore(self.local_root or default_local_root())


class TeacherResource(ConfigurableResource):
    """The teacher of generated_dataset: a local transformers model, or an OpenAI-compatible endpoint."""

    backend: str = "transformers"  # or "openai"
    model: str = DEFAULT_MODEL  # a model name or folder; for "openai", the served model's name
    base_url: Optional[str] = None  # for "openai": http://host:port/v1
    api_key: Optional[str] = None
    batch_size: int = 8  # prompts per forward pass (transformers)
    max_concurrency: int = 4  # requests in flight (openai)
    timeout: float = 120.0  # seconds per request (openai)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "TeacherResource":
        env = os.environ if env is None else env
        return cls(
            backend=env.get("TEACHER_BACKEND") or "transformers",
            model=env.get("TEACHER_MODEL") or DEFAULT_MODEL,
            base_url=env.get("TEACHER_BASE_URL") or None,
            api_key=EnvVar("TEACHER_API_KEY") if env.get("TEACHER_API_KEY") else None,
            batch_size=int(env.get("TEACHER_BATCH_SIZE") or 8),
            max_concurrency=int(env.get("TEACHER_MAX_CONCURRENCY") or 4),
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
    batch_size: int = 8  # prompts per forward pass (local model)
    max_concurrency: int = 4  # requests in flight (endpoint)
    timeout: float = 120.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "JudgeResource":
        env = os.environ if env is None else env
        return cls(
            base_url=env.get("JUDGE_BASE_URL") or None,
            model=env.get("JUDGE_MODEL") or None,
            api_key=EnvVar("JUDGE_API_KEY") if env.get("JUDGE_API_KEY") else None,
        )

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
    """Defaults of lora_adapter: base model, trial count, where the Optuna study and trial adapters live."""

    base_model: str = DEFAULT_MODEL
    n_trials: int = 3
    optuna_storage: str = ""  # an SQLAlchemy URL; empty means an SQLite file in the cache folder
    work_dir: str = ""  # trial adapters; empty means the cache folder

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "LoraResource":
        env = os.environ if env is None else env
        return cls(
            base_model=env.get("LORA_MODEL_NAME") or DEFAULT_MODEL,
            n_trials=int(env.get("LORA_N_TRIALS") or 3),
            # The URL may hold a database password: pass it by reference when it is set.
            optuna_storage=EnvVar("OPTUNA_STORAGE") if env.get("OPTUNA_STORAGE") else "",
            work_dir=env.get("FRD_TRIALS_DIR", ""),
        )

    def storage_url(self) -> str:
        if self.optuna_storage:
            return resolved(self.optuna_storage)
        path = model_cache_dir().parent / "optuna.db"
        path.parent.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{path}"

    def trials_dir(self) -> Path:
        return Path(self.work_dir) if self.work_dir else model_cache_dir().parent / "trials"


def build_resources(env: Mapping[str, str] | None = None) -> dict:
    env = os.environ if env is None else env
    store = StoreResource.from_env(env)
    from frd_assets.defs.io_managers import StoreIOManager

    return {
        "store": store,
        "io_manager": StoreIOManager(store=store),
        "teacher": TeacherResource.from_env(env),
        "judge": JudgeResource.from_env(env),
        "lora": LoraResource.from_env(env),
    }
