"""Where the Optuna studies live: one answer for lora_adapter, `frd tune`, the trial workers and `frd dashboard`.

A dashboard opened on another storage than the search writes to shows an empty list and no error, so
the fallback lives here, once, beside the variable core/settings.py names. The URL may hold a
database password: whatever prints or logs it uses `redacted`.
"""

from __future__ import annotations

from typing import Mapping

from frd_assets.core import settings

STORAGE_ENV = settings.OPTUNA_STORAGE  # the trial workers read the URL from it too (worker.py)


def default_storage_url(env: Mapping[str, str] | None = None) -> str:
    """An SQLite file beside the model cache, for a machine without a database server."""
    path = settings.model_cache_dir(env).parent / "optuna.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def study_storage_url(env: Mapping[str, str] | None = None) -> str:
    """$OPTUNA_STORAGE (read as core/settings.py reads every variable), else the SQLite file of
    `default_storage_url`. The value is a secret: print `redacted(url)`, never the URL."""
    return settings.secret(STORAGE_ENV, env) or default_storage_url(env)


def engine_kwargs(url: str) -> dict:
    """SQLAlchemy engine options for a study storage, the same for the search, its workers and the dashboard:
    several trial processes write one SQLite file, so a connection waits up to a minute for its lock
    instead of failing with "database is locked" at once."""
    kwargs: dict = {"pool_pre_ping": True}
    if url.startswith("sqlite"):
        kwargs["connect_args"] = {"timeout": 60}
    return kwargs


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
