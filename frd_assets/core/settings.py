"""Every setting the platform reads from the environment, read here and only here, with its default.

The Dagster resources (defs/resources.py), the CLI's standalone commands, the sensors and the queue
workers all build from these functions, so a default cannot differ between the UI and `frd tune` (it
did: LORA_N_TRIALS was 3 in one and 4 in the other). Secrets are returned as the *name* of the variable
that holds them, never as values: the resources pass them to Dagster as EnvVar references, so they stay
out of run config, the UI and logs; a standalone command resolves them with `secret()` at the moment of use.

Each function takes the environment as a mapping (default os.environ), so tests pass a dict instead of
patching the process. A malformed number is a ConfigError naming the variable and what it must be.
Dagster-free.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from frd_assets.core.config_checks import Integer, Number, OneOf, check_value

DEFAULT_MODEL = "SmolLM2-135M-Instruct"
# One default for the Dagster asset and the CLI: a few trials keep a CPU demo under ten minutes.
DEFAULT_N_TRIALS = 4
# `frd demo` on the bundled sample seed (118 tasks): sized so the whole chain runs in under 6 minutes on 2 CPU
# cores while its test part (half of the held-out half: 29 tasks) is large enough to show a difference. The
# assets' own defaults (held_out_fraction 0.2, 2 epochs, 128 new tokens, LORA_N_TRIALS) are for a user's seed.
DEMO_INSTRUCTIONS = 12  # generated instructions: the 59 seed tasks that train are the better data
DEMO_HELD_OUT_FRACTION = 0.5  # of the seed's tasks: validation and test, half each
DEMO_N_TRIALS = 3  # unless LORA_N_TRIALS is set
DEMO_EPOCHS = 2  # the trial keeps its best evaluation's weights (early stopping on the validation tasks)
# The median pruner judges from the second trial on: with 3 trials, 2 unjudged left only the third to prune
# (the demo's second, at learning rate 2.8e-3, ran all 34 steps: 22 s of 300 on an AMD EPYC 2-core machine).
DEMO_PRUNER_STARTUP_TRIALS = 1
DEMO_EVAL_MAX_NEW_TOKENS = 64  # the references are a sentence or shorter
# How the teacher and the judge (a teacher too) send prompts: the environment's and the resources' defaults,
# and make_teacher's, so a teacher built from code behaves as one built from settings.
TEACHER_BATCH_SIZE = 8  # prompts per forward pass of a local model
TEACHER_MAX_CONCURRENCY = 4  # requests in flight to an OpenAI-compatible endpoint
TEACHER_TIMEOUT_S = 120.0  # seconds per request to an endpoint
TEACHER_MAX_RETRIES = 4  # retries of a request that failed for a reason a retry can fix

# The store.
MINIO_ENDPOINT, MINIO_ACCESS_KEY, MINIO_SECRET_KEY = "MINIO_ENDPOINT", "MINIO_ACCESS_KEY", "MINIO_SECRET_KEY"
FRD_LOCAL_STORE = "FRD_LOCAL_STORE"
FRD_MODEL_CACHE = "FRD_MODEL_CACHE"
# The teacher and the judge.
TEACHER_API_KEY = "TEACHER_API_KEY"
JUDGE_BASE_URL, JUDGE_MODEL, JUDGE_API_KEY = "JUDGE_BASE_URL", "JUDGE_MODEL", "JUDGE_API_KEY"
# The LoRA search.
LORA_MODEL_NAME, LORA_N_TRIALS, LORA_N_WORKERS = "LORA_MODEL_NAME", "LORA_N_TRIALS", "LORA_N_WORKERS"
OPTUNA_STORAGE = "OPTUNA_STORAGE"  # an SQLAlchemy URL; it may hold a database password
FRD_TRIALS_DIR = "FRD_TRIALS_DIR"
FRD_K8S_TRIAL_WORKERS = "FRD_K8S_TRIAL_WORKERS"  # JSON of core/lora/kubernetes.py's KubernetesWorkers
# GiB one trial may use, overriding what the memory pre-flight measures (core/lora/memory.py): a GPU
# shared with other work, or trial pods whose memory limit the search process cannot see.
FRD_TRIAL_MEMORY_GIB = "FRD_TRIAL_MEMORY_GIB"
# The torch thread budget of a run or a trial worker (core/threads.py decides the default when unset).
FRD_TORCH_THREADS = "FRD_TORCH_THREADS"

_CHECKOUT = Path(__file__).resolve().parents[2]
_Env = Mapping[str, str]


class SettingsError(ValueError):
    """Settings that cannot work together; the message names the variables and the fix."""


def _env(env: _Env | None) -> _Env:
    return os.environ if env is None else env


def _text(env: _Env, name: str) -> str | None:
    """The variable's value, stripped; unset and empty are the same (compose files set empty values)."""
    value = env.get(name, "").strip()
    return value or None


def env_int(env: _Env, name: str, default: int, low: int = 1) -> int:
    raw = _text(env, name)
    if raw is None:
        return default
    value = int(raw) if raw.lstrip("-").isdigit() else raw
    return check_value("environment", name, value, Integer(low))


def _float(env: _Env, name: str, default: float) -> float:
    raw = _text(env, name)
    if raw is None:
        return default
    try:
        value: object = float(raw)
    except ValueError:
        value = raw
    return check_value("environment", name, value, Number(0, low_open=True))


def user_dir(env: _Env, variable: str, in_checkout: str, in_home: str) -> Path:
    """$variable, else `in_checkout` inside a source checkout (where `make` puts things), else `in_home` under
    the user's home: the one lookup behind the model cache and the local store."""
    if _text(env, variable):
        return Path(env[variable].strip()).expanduser()
    if (_CHECKOUT / "pyproject.toml").exists():
        return _CHECKOUT / in_checkout
    return Path.home() / in_home


def secret(name: str | None, env: _Env | None = None) -> str | None:
    """The value of the secret variable `name` (as a settings object names it), read at the moment of use."""
    return _text(_env(env), name) if name else None


@dataclass(frozen=True)
class StoreSettings:
    """S3 (MinIO or any S3 endpoint) when endpoint is set, else a local folder per bucket."""

    endpoint: str | None
    access_key_var: str | None  # the variables holding the keys, when an endpoint is set
    secret_key_var: str | None
    local_root: Path


def local_store_root(env: _Env | None = None) -> Path:
    """$FRD_LOCAL_STORE, else .frd-store in a source checkout, else ~/.local/share/frd/store."""
    return user_dir(_env(env), FRD_LOCAL_STORE, ".frd-store", ".local/share/frd/store")


def store_settings(env: _Env | None = None) -> StoreSettings:
    env = _env(env)
    root = local_store_root(env)
    endpoint = _text(env, MINIO_ENDPOINT)
    if not endpoint:
        return StoreSettings(None, None, None, root)
    missing = [k for k in (MINIO_ACCESS_KEY, MINIO_SECRET_KEY) if not _text(env, k)]
    if missing:
        raise SettingsError(f"{MINIO_ENDPOINT} is set but {', '.join(missing)} is not; set both keys or unset it")
    return StoreSettings(endpoint, MINIO_ACCESS_KEY, MINIO_SECRET_KEY, root)


def model_cache_dir(env: _Env | None = None) -> Path:
    """Where prepared models live: $FRD_MODEL_CACHE, else .cache/models in a source checkout, else ~/.cache."""
    return user_dir(_env(env), FRD_MODEL_CACHE, ".cache/models", ".cache/frd/models")


@dataclass(frozen=True)
class TeacherSettings:
    """The teacher of generated_dataset: a local transformers model, or an OpenAI-compatible endpoint."""

    backend: str = "transformers"  # or "openai"
    model: str = DEFAULT_MODEL  # a model name or folder; for "openai", the served model's name
    base_url: str | None = None  # for "openai": http://host:port/v1
    api_key_var: str | None = None  # TEACHER_API_KEY when it is set
    batch_size: int = TEACHER_BATCH_SIZE
    max_concurrency: int = TEACHER_MAX_CONCURRENCY
    timeout: float = TEACHER_TIMEOUT_S


def teacher_settings(env: _Env | None = None) -> TeacherSettings:
    env = _env(env)
    return TeacherSettings(
        backend=check_value("environment", "TEACHER_BACKEND", _text(env, "TEACHER_BACKEND") or "transformers",
                            OneOf(("transformers", "openai"))),
        model=_text(env, "TEACHER_MODEL") or DEFAULT_MODEL,
        base_url=_text(env, "TEACHER_BASE_URL"),
        api_key_var=TEACHER_API_KEY if _text(env, TEACHER_API_KEY) else None,
        batch_size=env_int(env, "TEACHER_BATCH_SIZE", TEACHER_BATCH_SIZE),
        max_concurrency=env_int(env, "TEACHER_MAX_CONCURRENCY", TEACHER_MAX_CONCURRENCY),
        timeout=_float(env, "TEACHER_TIMEOUT", TEACHER_TIMEOUT_S),
    )


@dataclass(frozen=True)
class JudgeSettings:
    """The judge of the gate and of adapter_evaluation: an OpenAI-compatible endpoint (base_url + the model
    it serves), or a local model (model alone); neither: no judge."""

    base_url: str | None = None
    model: str | None = None
    api_key_var: str | None = None  # JUDGE_API_KEY when it is set


def judge_settings(env: _Env | None = None) -> JudgeSettings:
    env = _env(env)
    return JudgeSettings(
        base_url=_text(env, JUDGE_BASE_URL),
        model=_text(env, JUDGE_MODEL),
        api_key_var=JUDGE_API_KEY if _text(env, JUDGE_API_KEY) else None,
    )


@dataclass(frozen=True)
class LoraSettings:
    """Defaults of lora_adapter and `frd tune`: base model, trials, trial workers, where the study and the
    trial adapters live."""

    base_model: str = DEFAULT_MODEL
    n_trials: int = DEFAULT_N_TRIALS
    n_workers: int = 1  # trial processes at once (see core/lora/pool.py)
    storage_var: str | None = None  # OPTUNA_STORAGE when it is set; else an SQLite file (study_storage.py)
    trials_dir: Path | None = None  # trial adapters; None means beside the model cache


def demo_n_trials(env: _Env | None = None) -> int:
    """`frd demo`'s trials: LORA_N_TRIALS when set, else DEMO_N_TRIALS."""
    return env_int(_env(env), LORA_N_TRIALS, DEMO_N_TRIALS)


def lora_settings(env: _Env | None = None) -> LoraSettings:
    env = _env(env)
    trials_dir = _text(env, FRD_TRIALS_DIR)
    return LoraSettings(
        base_model=_text(env, LORA_MODEL_NAME) or DEFAULT_MODEL,
        n_trials=env_int(env, LORA_N_TRIALS, DEFAULT_N_TRIALS),
        n_workers=env_int(env, LORA_N_WORKERS, 1),
        storage_var=OPTUNA_STORAGE if _text(env, OPTUNA_STORAGE) else None,
        trials_dir=Path(trials_dir).expanduser() if trials_dir else None,
    )


def optuna_storage(env: _Env | None = None) -> str | None:
    """$OPTUNA_STORAGE, or None when unset; a secret, so print it only through study_storage.redacted."""
    return secret(OPTUNA_STORAGE, env)


def k8s_trial_workers(env: _Env | None = None) -> str | None:
    """$FRD_K8S_TRIAL_WORKERS as set (KubernetesWorkers.from_json parses it), or None: local processes."""
    return _text(_env(env), FRD_K8S_TRIAL_WORKERS)


def torch_threads(env: _Env | None = None) -> int | None:
    """$FRD_TORCH_THREADS, or None when unset: core/threads.py then derives the budget from the cores."""
    env = _env(env)
    return env_int(env, FRD_TORCH_THREADS, default=1) if _text(env, FRD_TORCH_THREADS) else None


def trial_memory_gib(env: _Env | None = None) -> float | None:
    """$FRD_TRIAL_MEMORY_GIB, or None when unset: the pre-flight then reads the device's free memory."""
    env = _env(env)
    return _float(env, FRD_TRIAL_MEMORY_GIB, 0.0) if _text(env, FRD_TRIAL_MEMORY_GIB) else None


def default_trials_dir(env: _Env | None = None) -> Path:
    return model_cache_dir(env).parent / "trials"


@dataclass(frozen=True)
class ServiceSettings:
    """The long-running side: sensor cadence, the webserver the CLI talks to, the Celery broker."""

    sensor_interval: int = 30  # seconds between sensor evaluations
    # The seed sensor's sweep of the seeds bucket: one full pass, a shard (first hex digit of the key) every
    # this many seconds / 16, takes this long. Each tick reads the upload journal (core/datasets.py); the sweep
    # finds uploads made with another S3 tool, which write no journal entry, within this time (or 16 sensor
    # intervals, if longer). 0: every tick lists the whole bucket (the cost grows with the bucket).
    seed_sweep_seconds: int = 600
    webserver_host: str = "127.0.0.1"
    webserver_port: int = 3000
    redis_url: str = "redis://localhost:6379/0"


def service_settings(env: _Env | None = None) -> ServiceSettings:
    env = _env(env)
    host, port = _text(env, "REDIS_HOST") or "localhost", env_int(env, "REDIS_PORT", 6379)
    return ServiceSettings(
        sensor_interval=env_int(env, "FRD_SENSOR_INTERVAL_SECONDS", 30),
        seed_sweep_seconds=env_int(env, "FRD_SEED_SWEEP_SECONDS", 600, low=0),
        webserver_host=_text(env, "DAGSTER_WEBSERVER_HOST") or "127.0.0.1",
        webserver_port=env_int(env, "DAGSTER_WEBSERVER_PORT", 3000),
        redis_url=f"redis://{host}:{port}/{env_int(env, 'REDIS_DB', 0, low=0)}",
    )


# Retirement of datasets (core/retirement.py): which are retired, and what of them is deleted then.
FRD_RETENTION_IDLE_DAYS = "FRD_RETENTION_IDLE_DAYS"
FRD_RETENTION_DELETED = "FRD_RETENTION_DELETED"
FRD_RETENTION_OBJECTS = "FRD_RETENTION_OBJECTS"
FRD_RETENTION_RUNS = "FRD_RETENTION_RUNS"
FRD_RETENTION_CRON = "FRD_RETENTION_CRON"
KEEP, DELETE = "keep", "delete"


@dataclass(frozen=True)
class RetentionSettings:
    """The retirement policy. A retired dataset loses its partition always; its store objects and its runs
    only when objects/runs say `delete`. A tombstone of it stays either way (core/retirement.py)."""

    idle_days: int = 90  # no run and no upload for this many days: retired; 0 turns idle retirement off
    retire_deleted: bool = True  # the latest verdict is DELETED: retired
    objects: str = KEEP  # the dataset's seed, versions, adapters and evaluations: keep or delete
    runs: str = KEEP  # the dataset's Dagster run history (runs and their event logs): keep or delete
    cron: str = "0 3 * * *"  # when the retire_datasets schedule runs (daily, 03:00 in the daemon's time zone)


def retention_settings(env: _Env | None = None) -> RetentionSettings:
    env = _env(env)
    default = RetentionSettings()

    def choice(name: str, options: tuple[str, ...], fallback: str) -> str:
        raw = _text(env, name)
        return fallback if raw is None else check_value("environment", name, raw.lower(), OneOf(options))

    return RetentionSettings(
        idle_days=env_int(env, FRD_RETENTION_IDLE_DAYS, default.idle_days, low=0),
        retire_deleted=choice(FRD_RETENTION_DELETED, ("true", "false"), "true") == "true",
        objects=choice(FRD_RETENTION_OBJECTS, (KEEP, DELETE), default.objects),
        runs=choice(FRD_RETENTION_RUNS, (KEEP, DELETE), default.runs),
        cron=_text(env, FRD_RETENTION_CRON) or default.cron,
    )
