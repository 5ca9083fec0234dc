"""The Optuna study: storage, the per-trial objective, workers and the trial budget.

Two objectives per trial: maximise validation Dice (a short Lightning training of the
config with MBUCallback), minimise the config's binary-op cost (``cost.CostModel``).

Reliability, given several worker processes on one storage:
- RDB storages (SQLite by default) run Optuna's heartbeat: a worker killed mid-trial
  leaves a RUNNING trial that goes stale after ``grace_period`` seconds, is marked
  FAIL by the next worker that looks, and is queued again with the same config
  (``RetryHeartbeatStaleTrialCallback``). Finished trials are committed as they end.
- The budget counts COMPLETE + PRUNED trials and is met exactly: a worker starts a trial
  only while finished + running < budget and otherwise waits (a running trial may still
  die and need a replacement); two workers that ask at the same instant are settled by
  trial number, the later one ending as FAIL with the user attribute ``surplus``.
- Trial numbers come from the storage, so two workers never share one.
- Hosts that start together may queue the same cost-aware config twice; the copy with the
  higher number ends as FAIL (``surplus``) when it starts, so each config runs once.
- Journal storages have no heartbeat: a killed worker's trial stays RUNNING and does not
  count, and the budget may be exceeded by up to workers - 1 trials.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import re
import socket
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import optuna
import sqlalchemy
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.study import MaxTrialsCallback
from optuna.trial import TrialState

from ..config import LAYER_NAMES, LayerConfig
from .cost import CostModel
from .pruning import COST_ATTR, CheaperPercentileRule, DiceReporter
from .sampler import ShapleyCostSampler

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
DIRECTIONS = ("maximize", "minimize")  # (val Dice, binary ops)
SETTINGS_ATTR = "lightning_mbu"
SCHEMA_RETRIES = 5
log = logging.getLogger(__name__)
#: study settings that must match when a study is resumed, or its trials are not comparable
RESUME_KEYS = ("layers", "choices", "background", "grid", "cost_base", "cost_size", "encoding", "w_op")


@dataclass
class TrialSettings:
    """How every trial trains: the short schedule the search compares configs under."""

    data_root: str | None = None
    layout: str | None = None
    size: tuple[int, int] | None = None
    base: int = 8
    batch_size: int = 4
    epochs: int = 4
    limit_train_batches: int | float = 5
    limit_val_batches: int | float = 1.0
    lr: float = 3e-3  # short trials need a faster rate than the paper's 1e-5 to separate configs
    masked_t: float = 0.5
    augment: bool = False  # off: every config then sees the same batches (seeded), so Dice differences are the config's
    seed: int = 0
    accelerator: str = "auto"
    num_workers: int = 0
    threads: int = 1  # torch CPU threads per worker: tiny trial nets run fastest on one, more contend


@dataclass
class SearchSettings:
    """What is searched, where the study lives, and how workers share it."""

    budget: int = 50
    out_dir: str = "mbu_search"
    storage: str | None = None  # None: sqlite file in out_dir
    study_name: str = "mbu-search"
    layers: tuple[str, ...] = LAYER_NAMES  # searched layers; the others keep ``background``
    choices: tuple[str, ...] = ("binary", "masked")
    background: str = "B" * len(LAYER_NAMES)
    grid: bool = False  # exhaustive over ``layers`` (GridSampler) instead of the Shapley sampler
    cost_base: int = 64  # the deployed net whose cost is minimised; trials train a proxy
    cost_size: tuple[int, int] = (512, 512)
    encoding: str = "xor"
    w_op: float = 0.5
    prune: bool = True
    prune_percentile: float = 25.0
    prune_startup: int = 5
    workers: int = 1
    heartbeat_interval: int = 10
    grace_period: int = 30
    poll_interval: float = 1.0
    seed: int = 0
    trial: TrialSettings = field(default_factory=TrialSettings)

    def __post_init__(self):
        self.layers = tuple(self.layers)
        self.choices = tuple(self.choices)
        bad = [n for n in self.layers if n not in LAYER_NAMES]
        if bad or not self.layers:
            raise ValueError(f"search layers {bad or 'none'} invalid; valid layers: {', '.join(LAYER_NAMES)}")
        for c in self.choices:
            LayerConfig.uniform(c)  # validates the mode name
        if len(self.choices) < 2:
            raise ValueError(f"search needs at least two modes per layer, got {self.choices}")
        self.background = str(LayerConfig.parse(self.background))
        if self.budget < 1:
            raise ValueError(f"budget must be a positive number of trials, got {self.budget}")
        if self.workers < 1:
            raise ValueError(f"workers must be at least 1, got {self.workers}")
        if not 1 <= self.heartbeat_interval < self.grace_period:
            raise ValueError(f"need 1 <= heartbeat interval ({self.heartbeat_interval} s) < grace period "
                             f"({self.grace_period} s), or live trials would be declared stale")

    @property
    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{Path(self.out_dir).resolve() / 'study.db'}"

    @property
    def grid_size(self) -> int:
        return len(self.choices) ** len(self.layers)

    @property
    def effective_budget(self) -> int:
        """The grid is exhausted after grid_size trials; more would only repeat configs."""
        return min(self.budget, self.grid_size) if self.grid else self.budget

    def cost_model(self) -> CostModel:
        return CostModel.measure(self.cost_size, base=self.cost_base)

    def config_of(self, params: dict) -> LayerConfig:
        modes = LayerConfig.parse(self.background).as_dict()
        modes.update({n: params[n] for n in self.layers})
        return LayerConfig.parse(modes)

    def resume_signature(self) -> dict:
        d = asdict(self)
        return {k: (list(d[k]) if isinstance(d[k], tuple) else d[k]) for k in RESUME_KEYS}


# -- storage ---------------------------------------------------------------------------------
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
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return _WorkerSafeRDBStorage(
                url, engine_kwargs=kwargs, heartbeat_interval=heartbeat_interval, grace_period=grace_period,
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=3),
            )
    except Exception as e:  # SQLAlchemy, driver and file errors all mean "cannot use this storage"
        raise ValueError(f"cannot open study storage {_redact(url)!r}: {type(e).__name__}: {e}") from e


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


def _has_heartbeat(storage) -> bool:
    return isinstance(storage, RDBStorage) and storage.heartbeat_interval is not None


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


def cost_aware_params(settings: SearchSettings, cost_model: CostModel) -> list[dict[str, str]]:
    """Trial params of the cost-aware configs: mask the k cheapest searched layers, k = 0..len(layers)."""
    order = [n for n in cost_model.ranking(settings.w_op) if n in settings.layers]
    return [{n: ("masked" if n in order[:k] else "binary") for n in settings.layers} for k in range(len(order) + 1)]


def enqueue_cost_aware(study: optuna.Study, settings: SearchSettings, cost_model: CostModel) -> None:
    """Queue the cost-aware configs first, as many as the budget takes (none already queued or run)."""
    for k, params in enumerate(cost_aware_params(settings, cost_model)[: settings.effective_budget]):
        study.enqueue_trial(params, user_attrs={"cost_aware_k": k}, skip_if_exists=True)


# -- the objective ---------------------------------------------------------------------------
class SurplusTrial(Exception):
    """This trial was asked after the budget was already taken by other workers' trials."""


class DuplicateTrial(SurplusTrial):
    """A second copy of a queued cost-aware config: hosts that start together may both enqueue it."""


class MBUObjective:
    """Train one config briefly through Lightning and return (validation Dice, binary-op cost)."""

    def __init__(self, settings: SearchSettings, cost_model: CostModel, count_running: bool = True):
        self.settings = settings
        self.cost_model = cost_model
        # running trials only hold budget where a heartbeat tells live ones from dead ones
        self.count_running = count_running
        # no pruning in a grid: exact Shapley values need every config's final Dice
        self.rule = (CheaperPercentileRule(settings.prune_percentile, settings.prune_startup,
                                           n_warmup_epochs=max(1, settings.trial.epochs // 2))
                     if settings.prune and not settings.grid else None)

    def _is_surplus(self, trial: optuna.Trial) -> bool:
        others = trial.study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.RUNNING))
        taken = [t for t in others if t.state in FINISHED or (self.count_running and t.number < trial.number)]
        return len(taken) >= self.settings.effective_budget

    @staticmethod
    def _duplicate_of(trial: optuna.Trial) -> int | None:
        """The lower-numbered live copy of this queued config, if any (the lowest number runs it)."""
        k = trial.user_attrs.get("cost_aware_k")
        if k is None:
            return None
        live = (TrialState.WAITING, TrialState.RUNNING, *FINISHED)  # a FAIL copy's retry must run
        return next((t.number for t in trial.study.get_trials(deepcopy=False, states=live)
                     if t.number < trial.number and t.user_attrs.get("cost_aware_k") == k), None)

    def __call__(self, trial: optuna.Trial) -> tuple[float, float]:
        import lightning.pytorch as pl  # heavy: loaded in the process that trains

        from ..callbacks import MBUCallback
        from ..data import SegmentationDataModule
        from ..module import SegmentationModule

        if self._is_surplus(trial):
            trial.set_user_attr("surplus", True)
            trial.study.stop()  # back to run_worker, which waits while the budget is in flight
            raise SurplusTrial(f"trial {trial.number} is beyond the budget of {self.settings.effective_budget}")
        if (first := self._duplicate_of(trial)) is not None:
            trial.set_user_attr("surplus", True)
            raise DuplicateTrial(f"trial {trial.number} repeats the queued config of trial {first}")
        s, ts = self.settings, self.settings.trial
        config = s.config_of({n: trial.suggest_categorical(n, s.choices) for n in s.layers})
        cost = float(self.cost_model.config_binary_ops(config, s.encoding))
        trial.set_user_attr("config", str(config))
        trial.set_user_attr(COST_ATTR, cost)
        trial.set_user_attr("n_masked", len(config.layers_with("masked")))
        trial.set_user_attr("val_dice", [])  # a retried trial must not inherit the dead one's curve
        trial.set_user_attr("worker", _worker_label())

        pl.seed_everything(ts.seed, workers=True, verbose=False)  # same init and data order for every config
        data_kwargs = {"layout": ts.layout} if ts.layout else {}
        datamodule = SegmentationDataModule(data_root=ts.data_root, size=ts.size, batch_size=ts.batch_size,
                                            num_workers=ts.num_workers, seed=ts.seed, augment=ts.augment,
                                            **data_kwargs)
        module = SegmentationModule(config=str(config), base=ts.base, masked_t=ts.masked_t, lr=ts.lr)
        reporter = DiceReporter(trial, cost, None if trial.user_attrs.get("cost_aware_k") is not None else self.rule)
        trainer = pl.Trainer(
            max_epochs=ts.epochs, accelerator=ts.accelerator, devices=1, logger=False,
            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
            num_sanity_val_steps=0, limit_train_batches=ts.limit_train_batches,
            limit_val_batches=ts.limit_val_batches,
            callbacks=[MBUCallback(config, target_t=ts.masked_t, log_weight_stats=False), reporter],
        )
        start = time.perf_counter()
        trainer.fit(module, datamodule=datamodule)
        trial.set_user_attr("train_seconds", time.perf_counter() - start)
        if reporter.pruned_at is not None:
            raise optuna.TrialPruned(f"val/dice {reporter.curve[-1]:.4f} at epoch {reporter.pruned_at} is in the "
                                     f"bottom {self.rule.percentile:g}% of cheaper trials")
        if not reporter.curve:
            raise ValueError("search: training ran no validation epoch; check limit_val_batches and the data")
        return reporter.curve[-1], cost


# -- workers ---------------------------------------------------------------------------------
def make_sampler(settings: SearchSettings, cost_model: CostModel, worker: int = 0) -> optuna.samplers.BaseSampler:
    seed = settings.seed + 1000 * worker
    if settings.grid:
        return optuna.samplers.GridSampler({n: list(settings.choices) for n in settings.layers}, seed=seed)
    masking = cost_model.masking_cost(settings.encoding)
    return ShapleyCostSampler({n: masking[n] for n in settings.layers}, choices=settings.choices, seed=seed,
                              fallback=optuna.samplers.NSGAIISampler(seed=seed))


def _quiet() -> None:
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # a surplus trial is expected, not worth a traceback
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")  # lightning vs torch 2.13


def run_worker(settings: SearchSettings, worker: int = 0) -> None:
    """Run trials until the study holds ``effective_budget`` finished ones."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(settings.trial.threads)
    try:
        _run_trials(settings, worker)
    finally:
        torch.set_num_threads(threads)


def _run_trials(settings: SearchSettings, worker: int) -> None:
    _quiet()
    storage = make_storage(settings.storage_url, settings.heartbeat_interval, settings.grace_period)
    cost_model = settings.cost_model()
    study = open_study(settings, storage=storage, sampler=make_sampler(settings, cost_model, worker))
    budget = settings.effective_budget
    heartbeat = _has_heartbeat(storage)
    objective = MBUObjective(settings, cost_model, count_running=heartbeat)
    stop_at_budget = MaxTrialsCallback(budget, states=FINISHED)
    while True:
        if heartbeat:
            optuna.storages.fail_stale_trials(study)
        done = len(study.get_trials(deepcopy=False, states=FINISHED))
        running = len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))) if heartbeat else 0
        if done >= budget:
            return
        if done + running >= budget:  # the rest is in flight; stay in case one of them dies
            time.sleep(settings.poll_interval)
            continue
        study.optimize(objective, n_trials=budget - done - running, catch=(SurplusTrial,),
                       callbacks=[stop_at_budget, _log_trial], gc_after_trial=False)


def _log_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    if trial.user_attrs.get("surplus"):
        return
    dice = f"dice {trial.values[0]:.4f}" if trial.values else trial.state.name.lower()
    log.info("trial %d %s %s, cost %.2f G binary ops", trial.number, trial.user_attrs.get("config", "?"), dice,
             trial.user_attrs.get(COST_ATTR, float("nan")) / 1e9)


def _worker_label() -> str:
    """Which host, process and GPU ran a trial: several hosts may share one study."""
    gpu = os.environ.get("CUDA_VISIBLE_DEVICES")
    return f"{socket.gethostname()} pid {os.getpid()}" + (f" gpu {gpu}" if gpu else "")


def _worker_process(settings: SearchSettings, worker: int, gpu: int | None, log_level: int) -> None:
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)  # before CUDA starts in this process
    logging.basicConfig(level=log_level, format=f"[worker {worker}] %(message)s")
    run_worker(settings, worker)


def _gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def run_search(settings: SearchSettings) -> optuna.Study:
    """Create or resume the study, queue the cost-aware configs, and run ``settings.workers`` workers.

    One worker runs in this process; several run as spawned processes on the same
    storage, one per GPU (round-robin) when GPUs exist, else sharing the CPU cores.
    """
    _quiet()
    Path(settings.out_dir).mkdir(parents=True, exist_ok=True)
    storage = make_storage(settings.storage_url, settings.heartbeat_interval, settings.grace_period)
    study = open_study(settings, storage=storage, create=True)
    if not settings.grid:
        enqueue_cost_aware(study, settings, settings.cost_model())
    if settings.workers == 1:
        run_worker(settings)
        return study
    gpus = _gpu_count()
    ctx = multiprocessing.get_context("spawn")  # CUDA and SQLite connections do not survive fork
    procs = [ctx.Process(target=_worker_process, name=f"mbu-search-worker-{i}",
                         args=(settings, i, i % gpus if gpus else None, log.getEffectiveLevel()))
             for i in range(settings.workers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    failed = [p.name for p in procs if p.exitcode != 0]
    if failed:
        raise RuntimeError(f"search workers {', '.join(failed)} exited with an error; see their output above. "
                           "Finished trials are kept: re-run the same command to resume")
    return study
