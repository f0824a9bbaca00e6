"""Where the Optuna studies live and how they are opened: one answer for lora_adapter, `frd tune`, the trial
workers and `frd dashboard`.

A dashboard opened on another storage than the search writes to shows an empty list and no error, so
the fallback lives here, once, beside the variable core/settings.py reads. The URL may hold a
database password: whatever prints or logs it uses `redacted`. The search, its pool and every trial worker
open the storage with `rdb_storage`, so they agree on the engine options, the heartbeat and the retry.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

from frd_assets.core import settings

STORAGE_ENV = settings.OPTUNA_STORAGE  # the pool passes the URL to its trial workers in it (pool.py)


def default_storage_url(env: Mapping[str, str] | None = None) -> str:
    """An SQLite file beside the model cache, for a machine without a database server."""
    path = settings.model_cache_dir(env).parent / "optuna.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def study_storage_url(env: Mapping[str, str] | None = None) -> str:
    """$OPTUNA_STORAGE (read as core/settings.py reads every variable), else the SQLite file of
    `default_storage_url`. The value is a secret: print `redacted(url)`, never the URL."""
    return settings.optuna_storage(env) or default_storage_url(env)


def engine_kwargs(url: str) -> dict:
    """SQLAlchemy engine options for a study storage, the same for the search, its workers and the dashboard:
    several trial processes write one SQLite file, so a connection waits up to a minute for its lock
    instead of failing with "database is locked" at once."""
    kwargs: dict = {"pool_pre_ping": True}
    if url.startswith("sqlite"):
        kwargs["connect_args"] = {"timeout": 60}
    return kwargs


def rdb_storage(url: str, *, heartbeat_interval: int, grace_period: int):
    """The study's RDB storage: a RUNNING trial whose heartbeat stops for grace_period is failed and queued
    again once (`requeue_once`)."""
    from optuna.storages import RDBStorage

    if url.startswith("sqlite"):
        _use_wal(url)  # readers go on while one trial process writes
    return RDBStorage(
        url,
        heartbeat_interval=heartbeat_interval,
        grace_period=grace_period,
        heartbeat_stale_trial_callback=_retry_once(),
        engine_kwargs=engine_kwargs(url),
    )


def _retry_once():
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    return RetryHeartbeatStaleTrialCallback(max_retry=1)


def requeue_once(study, trial) -> None:
    """Queues a FAILED trial again with the same parameters, unless it was a retry already: what the storage
    does for a trial whose heartbeat went stale, for a trial whose process the pool saw die."""
    _retry_once()(study, trial)


def _use_wal(url: str) -> None:
    """Switches an SQLite file to write-ahead logging. The mode is kept in the file, so after the first call
    this only confirms it; every process that opens the storage calls it, whoever created the file."""
    import sqlite3
    from contextlib import closing

    from sqlalchemy.engine import make_url

    database = make_url(url).database
    if not database or database == ":memory:":
        return
    Path(database).parent.mkdir(parents=True, exist_ok=True)
    with closing(sqlite3.connect(database, timeout=60)) as conn:
        conn.execute("PRAGMA journal_mode=WAL")


def redacted(url: str) -> str:
    """The URL with its password, if any, replaced by ***: safe to print."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:  # not an SQLAlchemy URL: say nothing of it rather than risk printing a secret
        return "<storage URL that is not an SQLAlchemy URL>"


def hide_password(text: str, url: str) -> str:
    """text (an error message, say) with the URL's password replaced by ***, as typed or percent-encoded."""
    from urllib.parse import quote, quote_plus

    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        password = make_url(url).password
    except ArgumentError:
        return text.replace(url, redacted(url))
    for form in sorted({password, quote(password, safe=""), quote_plus(password)} if password else (), key=len,
                       reverse=True):
        text = text.replace(form, "***")
    return text
