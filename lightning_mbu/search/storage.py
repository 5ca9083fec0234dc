"""Where the study lives: an Optuna storage from a URL, fixed for several workers, and the study opened from it.

Any SQLAlchemy URL gives an RDB storage with Optuna's heartbeat (SQLite by default); ``journal:PATH``
gives a journal file, which has none. ``open_study`` checks that a resumed study was run with the
same settings, so its trials stay comparable.
"""

from __future__ import annotations

import re
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

import optuna
import sqlalchemy
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.trial import TrialState

from .settings import SearchSettings

DIRECTIONS = ("maximize", "minimize")  # (val Dice, binary ops)
SETTINGS_ATTR = "lightning_mbu"
SCHEMA_RETRIES = 5


def _redact(url: str) -> str:
    return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", url)


def make_storage(url: str, heartbeat_interval: int | None = 10, grace_period: int | None = 30):
    """An Optuna storage from a URL: any SQLAlchemy URL (RDB, with heartbeat) or a journal file.

    Journal files are written ``journal:PATH`` or given as a path ending in ``.log``.
    """
    try:
        if url.startswith("journal:") or (url.endswith(".log") and "://" not in url):
            path = Path(url.removeprefix("journal:"))
            if not path.parent.is_dir():
                raise FileNotFoundError(f"folder {path.parent} does not exist")
            return JournalStorage(JournalFileBackend(str(path)))
        if "://" not in url:
            raise ValueError("not a URL (expected e.g. sqlite:///study.db, postgresql+psycopg2://..., "
                             "journal:study.log)")
        kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
        with _experimental_features():
            return _WorkerSafeRDBStorage(
                url, engine_kwargs=kwargs, heartbeat_interval=heartbeat_interval, grace_period=grace_period,
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=3),
            )
    except Exception as e:  # SQLAlchemy, driver and file errors all mean "cannot use this storage"
        raise ValueError(f"cannot open study storage {_redact(url)!r}: {type(e).__name__}: {e}") from e


def has_heartbeat(storage) -> bool:
    return isinstance(storage, RDBStorage) and storage.heartbeat_interval is not None


def fail_stale_trials(study: optuna.Study) -> None:
    """Optuna's ``fail_stale_trials``: marks trials whose heartbeat stopped FAIL and queues their retry."""
    with _experimental_features():
        optuna.storages.fail_stale_trials(study)


@contextmanager
def _experimental_features():
    # the heartbeat and its retry callback are experimental in Optuna; the search relies on them knowingly
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


class _WorkerSafeRDBStorage(RDBStorage):
    """RDBStorage fixed for several worker processes on one database.

    - SQLite ignores SELECT ... FOR UPDATE, so two workers can both see a queued trial
      WAITING and both take it (optuna/optuna#4002, #4621): here every SQLite transaction
      starts with BEGIN IMMEDIATE, which serialises them (the pysqlite recipe in the
      SQLAlchemy docs); MySQL and PostgreSQL lock rows already.
    - Several hosts started at once on an empty PostgreSQL or MySQL database collide while
      creating the schema: construction is retried.
    - Optuna starts the heartbeat thread only after ``study.ask`` has made the trial
      RUNNING and run the sampler; a worker killed in between leaves a RUNNING trial with
      no heartbeat, which Optuna never declares stale, so the budget would wait for it
      forever. Here the first heartbeat is written before a trial turns RUNNING, and new
      trials are created WAITING and then taken like queued ones.
    """

    def __init__(self, url: str, **kwargs):
        for attempt in range(SCHEMA_RETRIES):
            try:
                super().__init__(url, **kwargs)
                break
            except sqlalchemy.exc.DBAPIError as e:
                # hosts that start together on an empty database race to create Optuna's tables and
                # types; the losers see "already exists" and find the winner's schema on a retry
                if "already exists" not in str(e) or attempt == SCHEMA_RETRIES - 1:
                    raise
                self.engine.dispose()
                time.sleep(0.2 * (attempt + 1))
        if self.engine.dialect.name == "sqlite":
            sqlalchemy.event.listen(self.engine, "connect", _sqlite_manual_transactions)
            sqlalchemy.event.listen(self.engine, "begin", _sqlite_begin_immediate)
            self.engine.dispose()  # connections opened during set-up predate the listeners

    def set_trial_state_values(self, trial_id, state, values=None):
        if state == TrialState.RUNNING and self.heartbeat_interval:
            self.record_heartbeat(trial_id)
        return super().set_trial_state_values(trial_id, state, values)

    def create_new_trial(self, study_id, template_trial=None):
        if template_trial is not None or not self.heartbeat_interval:
            return super().create_new_trial(study_id, template_trial)
        while True:  # another worker may take the waiting trial first; it then runs it
            trial_id = super().create_new_trial(study_id, optuna.trial.create_trial(state=TrialState.WAITING))
            if self.set_trial_state_values(trial_id, TrialState.RUNNING):
                return trial_id


def _sqlite_manual_transactions(dbapi_connection, connection_record) -> None:
    dbapi_connection.isolation_level = None  # pysqlite must not issue its own (deferred) BEGIN


def _sqlite_begin_immediate(connection) -> None:
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def open_study(settings: SearchSettings, storage=None, sampler=None, create: bool = False) -> optuna.Study:
    """Load the study (or create it, with ``create``) and check it belongs to this search."""
    storage = storage or make_storage(settings.storage_url, settings.heartbeat_interval, settings.grace_period)
    name = settings.study_name
    try:
        if create:
            study = optuna.create_study(storage=storage, study_name=name, directions=list(DIRECTIONS),
                                        sampler=sampler, load_if_exists=True)
        else:
            study = optuna.load_study(storage=storage, study_name=name, sampler=sampler)
    except KeyError as e:
        raise ValueError(f"no study {name!r} in {_redact(settings.storage_url)}") from e
    except Exception as e:
        raise ValueError(f"cannot read study {name!r} from {_redact(settings.storage_url)}: "
                         f"{type(e).__name__}: {e}") from e
    if [d.name.lower() for d in study.directions] != list(DIRECTIONS):
        raise ValueError(f"study {name!r} in {_redact(settings.storage_url)} is not a lightning-mbu search "
                         f"(directions {[d.name for d in study.directions]}); pick another --study-name")
    signature = settings.resume_signature()
    saved = study.user_attrs.get(SETTINGS_ATTR)
    if saved is None:
        study.set_user_attr(SETTINGS_ATTR, signature)
    elif saved != signature:
        diff = {k: (saved.get(k), signature[k]) for k in signature if saved.get(k) != signature[k]}
        raise ValueError(f"study {name!r} was run with other settings (saved, now): {diff}; "
                         "resume it with the same ones or pick another --study-name")
    return study
