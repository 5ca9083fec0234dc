"""What a search compares and how: the searched layers and modes, the budget, the storage, the trial schedule.

Plain dataclasses, validated on construction; the cost model they name is built once per process.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path

from cutlass_kernels.table import DEFAULT_ENCODING, check_encoding

from ..config import DEFAULT_T, LAYER_NAMES, LayerConfig
from .cost import CostModel

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
    t: float = DEFAULT_T  # the masking factor of every trial's QuantSpec
    augment: bool = False  # off: every config then sees the same batches (seeded), so Dice differences are the config's
    seed: int = 0
    accelerator: str = "auto"
    precision: str | None = None  # Lightning's precision flag, e.g. "bf16-mixed" (None: 32-true)
    num_workers: int = 0
    threads: int = 1  # torch CPU threads per worker: tiny trial nets run fastest on one, more contend
    #: a full-precision checkpoint: every trial starts from its weights and distils from it (the training
    #: recipe of ``lightning-mbu train``); None: every trial trains from random weights
    teacher: str | None = None
    kd_weight: float = 1.0
    sign_gradient: str = "approx"  # with a teacher; from random weights the hard-tanh STE ("ste")
    warmup_epochs: int = 0  # linear ramp of t from 0 over the trial's first epochs

    def __post_init__(self):
        if self.teacher is not None:
            from ..distill import read_fp_checkpoint

            base = read_fp_checkpoint(self.teacher).hparams.get("base", self.base)
            if base != self.base:
                raise ValueError(f"teacher {self.teacher} has base {base}, but the trials' base is {self.base}; "
                                 "trials start from the teacher's weights, so the widths must match")


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
    encoding: str = DEFAULT_ENCODING
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
        self.cost_size = tuple(self.cost_size)
        bad = [n for n in self.layers if n not in LAYER_NAMES]
        if bad or not self.layers:
            raise ValueError(f"search layers {bad or 'none'} invalid; valid layers: {', '.join(LAYER_NAMES)}")
        for c in self.choices:
            LayerConfig.uniform(c)  # validates the mode name
        if len(self.choices) < 2:
            raise ValueError(f"search needs at least two modes per layer, got {self.choices}")
        self.background = str(LayerConfig.parse(self.background))
        check_encoding(self.encoding, "search encoding")
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
        """The deployed net's cost model, shared by every caller in this process."""
        return _cost_model(self.cost_size, self.cost_base)

    def config_of(self, params: dict) -> LayerConfig:
        modes = LayerConfig.parse(self.background).as_dict()
        modes.update({n: params[n] for n in self.layers})
        return LayerConfig.parse(modes)

    def resume_signature(self) -> dict:
        d = asdict(self)
        return {k: (list(d[k]) if isinstance(d[k], tuple) else d[k]) for k in RESUME_KEYS}


@cache
def _cost_model(size: tuple[int, int], base: int) -> CostModel:
    # a meta-device forward of the full-size net: the search, each worker and the summary all need it
    return CostModel.measure(size, base=base)
