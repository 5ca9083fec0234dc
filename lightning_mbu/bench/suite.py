"""One benchmark run: resolve the models, time each on the GPU, collect records.

Baselines (``fp32``, ``fp16``) are timed in each requested variant (eager cuDNN and
``torch.compile``, both replayed as CUDA graphs); the fastest is marked ``best``.
Packed models (``binary``, ``cost-aware``, 12-letter configs, ``.mbu`` files) run on the
CUDA packed backend, each checked bit for bit against the CPU reference engine.
A model that runs out of GPU memory is reported in ``skipped`` with its batch, and the
run goes on with the next one.
"""

from __future__ import annotations

import gc
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..config import LayerConfig
from ..model import MBUNet
from .baselines import DTYPES, VARIANTS, baseline_forward
from .breakdown import stage_breakdown
from .energy import EnergyMeter
from .packed import PackedSpec, bit_exact, export_random, load, packed_spec
from .presets import Workload
from .report import environment, model_name
from .timing import Measurement, eager_runners, graph_runners, measure, random_inputs


class NeedsCUDA(RuntimeError):
    """The benchmark was asked to run where no CUDA GPU is visible."""


@dataclass
class Settings:
    workload: Workload
    models: tuple[str, ...] = ("fp32", "fp16", "binary", "cost-aware")
    variants: tuple[str, ...] = VARIANTS
    base: int = 64
    in_channels: int = 3
    num_classes: int = 1
    warmup: int = 3
    repeats: int = 20
    inputs: int = 3  # rotating input buffers
    min_energy_seconds: float = 3.0
    cuda_graphs: bool = True
    cudnn_benchmark: bool = True  # autotune conv algorithms (slow to start at large FP32 shapes)
    compile_mode: str | None = None
    tf32: bool = False
    exact_size: tuple[int, int] = (128, 128)  # crop of one image for the CPU bit-exactness check
    w_op: float = 0.5  # cost-aware ranking weight (eq. 2)
    breakdown: bool = False
    hand_written: bool = False  # the CUDA backend's issue-13 stage kernels (CUDAPackedNet(hand_written=))
    device: str = "cuda"
    workdir: Path | None = None  # where random-weight models are exported (default: a temporary folder)
    extra: dict = field(default_factory=dict)


def resolve_models(tokens, workload: Workload, base: int = 64, w_op: float = 0.5) -> tuple[list[str], list[PackedSpec]]:
    """Split ``--models`` entries into baseline precisions and packed specs (duplicates dropped)."""
    baselines: list[str] = []
    packed: dict[str, PackedSpec] = {}
    for token in (t.strip() for t in tokens):
        if not token:
            continue
        if token in DTYPES:
            baselines.append(token)
        elif token == "binary":
            spec = PackedSpec(LayerConfig.uniform("binary"))
            packed.setdefault(spec.name, spec)
        elif token == "cost-aware":
            from ..search.cost import CostModel

            for config in CostModel.measure(workload.size, base=base).cost_aware_configs(w_op=w_op):
                packed.setdefault(model_name(config), PackedSpec(config))
        else:
            spec = packed_spec(token)
            packed[spec.name if spec.path is None else str(spec.path)] = spec
    return list(dict.fromkeys(baselines)), list(packed.values())


def _record(model: str, variant: str, work: Workload, m: Measurement, **extra) -> dict:
    return {
        "model": model, "variant": variant, "height": work.height, "width": work.width, "batch": m.batch,
        "ms_per_image": m.ms_per_image, "images_per_s": m.images_per_s, "ms_per_batch": m.ms_per_batch,
        "spread": m.spread, "timed_batches": len(m.times_ms), "joules_per_image": m.joules_per_image,
        "energy_method": m.energy_method, "peak_memory_gb": m.peak_memory_bytes / 1e9, **extra,
    }


def _free() -> None:
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()


def _oom_reason(model: str, variant: str, batch: int, work: Workload) -> str:
    total = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory / 2**30
    return (f"out of GPU memory running {model} ({variant}) at batch {batch}, {work.height}x{work.width} "
            f"on a {total:.0f} GiB card; try a smaller --batch")


class Bench:
    def __init__(self, settings: Settings, log: Callable[[str], None] = print):
        if not torch.cuda.is_available():
            raise NeedsCUDA("this benchmark needs a CUDA GPU (torch.cuda.is_available() is False here); "
                            "run it on a GPU machine, or re-render existing results with --from-json")
        self.s, self.log = settings, log
        device = torch.device(settings.device)
        if device.type != "cuda":
            raise ValueError(f"--device {settings.device!r} is not a CUDA device")
        self.device = torch.device("cuda", torch.cuda.current_device() if device.index is None else device.index)
        torch.cuda.set_device(self.device)
        props = torch.cuda.get_device_properties(self.device)
        self.meter = EnergyMeter(self.device.index, uuid=str(getattr(props, "uuid", "") or "") or None)
        self.env = environment(self.device.index)
        self.records: list[dict] = []
        self.skipped: list[dict] = []
        self.breakdown: dict[str, list[dict]] = {}

    # -- one measurement --------------------------------------------------------------------
    def _time(self, fn, batch: int, dtype, channels_last: bool, graphs: bool) -> Measurement:
        s, work = self.s, self.s.workload
        xs = random_inputs(s.inputs, batch, s.in_channels, work.size, dtype=dtype, device=self.device,
                           channels_last=channels_last)
        t0 = time.perf_counter()
        runners = graph_runners(fn, xs) if graphs else eager_runners(fn, xs)
        t1 = time.perf_counter()
        m = measure(runners, batch, warmup=s.warmup, repeats=s.repeats,
                    min_seconds=s.min_energy_seconds, meter=self.meter if self.meter.supported else None)
        self.log(f"[bench]   {'autotune+compile+capture' if graphs else 'setup'} {t1 - t0:.1f} s, "
                 f"warm-up + {len(m.times_ms)} timed batches {time.perf_counter() - t1:.1f} s")
        return m

    def baseline(self, precision: str, variant: str) -> None:
        s, work = self.s, self.s.workload
        batch = work.batch(precision)
        name = variant + ("+cudagraph" if s.cuda_graphs else "") + ("" if s.cudnn_benchmark else "+heuristic-algos")
        self.log(f"[bench] {precision} {name}: batch {batch}, {work.height}x{work.width}")
        try:
            net = MBUNet(None, in_channels=s.in_channels, num_classes=s.num_classes, base=s.base)
            fn = baseline_forward(net, precision, variant, self.device, s.compile_mode)
            m = self._time(fn, batch, DTYPES[precision], channels_last=True, graphs=s.cuda_graphs)
        except torch.OutOfMemoryError:
            self._skip(precision, name, _oom_reason(precision, name, batch, work))
        except Exception as e:  # noqa: BLE001 - a compiler failure loses one variant, not the run
            if variant != "compile":
                raise
            self._skip(precision, name, f"torch.compile failed: {type(e).__name__}: {str(e).splitlines()[0]}")
        else:
            self._add(_record(precision, name, work, m, tf32=s.tf32 if precision == "fp32" else None))
        finally:
            if variant == "compile":
                import torch._dynamo

                torch._dynamo.reset()  # drop the compiled graph and its memory before the next model
            _free()

    def packed(self, spec: PackedSpec, workdir: Path) -> None:
        s, work = self.s, self.s.workload
        batch = work.batch("packed")
        self.log(f"[bench] {spec.name}: batch {batch}, {work.height}x{work.width}")
        path = spec.path or export_random(spec, workdir / f"{spec.config}.mbu", s.base, s.in_channels, s.num_classes)
        try:
            net = load(path, "cuda", hand_written=s.hand_written)
            m = self._time(net, batch, torch.float32, channels_last=False, graphs=False)
            crop = torch.randn(1, s.in_channels, *(min(a, b) for a, b in zip(s.exact_size, work.size)),
                               device=self.device)
            exact = bit_exact(net, load(path, "cpu"), crop)
            if s.breakdown:
                self.breakdown[spec.name] = stage_breakdown(net, random_inputs(
                    1, batch, s.in_channels, work.size, device=self.device, seed=1)[0])
        except torch.OutOfMemoryError:
            self._skip(spec.name, "packed-cuda", _oom_reason(spec.name, "packed", batch, work))
        else:
            self._add(_record(spec.name, "packed-cuda", work, m, config=str(spec.config), bit_exact=exact,
                              encoding=getattr(net, "encoding", None), hand_written=net.hand_written,
                              source=str(spec.path) if spec.path else "random weights"))
        finally:
            _free()

    def _add(self, rec: dict) -> None:
        self.records.append(rec)
        joules = rec["joules_per_image"]
        self.log(f"[bench]   {rec['ms_per_image']:.4g} ms/image, {rec['images_per_s']:.4g} images/s, "
                 f"{'n/a' if joules is None else f'{joules:.4g}'} J/image, peak {rec['peak_memory_gb']:.3g} GB")

    def _skip(self, model: str, variant: str, reason: str) -> None:
        self.log(f"[bench]   skipped: {reason}")
        self.skipped.append({"model": model, "variant": variant, "reason": reason})

    # -- the whole run ----------------------------------------------------------------------
    def run(self, on_update: Callable[[dict], None] | None = None) -> dict:
        """Measure every model; ``on_update`` gets the results so far after each one (a killed run keeps them)."""
        s = self.s
        baselines, packed = resolve_models(s.models, s.workload, s.base, s.w_op)
        torch.backends.cudnn.benchmark = s.cudnn_benchmark  # autotuned conv algorithms for the fixed shapes
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = s.tf32
        update = on_update or (lambda result: None)
        with torch.inference_mode():
            for precision in baselines:
                for variant in s.variants:
                    self.baseline(precision, variant)
                    update(self.result())
            if packed:
                with tempfile.TemporaryDirectory(dir=s.workdir) as tmp:
                    for spec in packed:
                        self.packed(spec, Path(tmp))
                        update(self.result())
        return self.result()

    def result(self) -> dict:
        for precision in DTYPES:  # the fastest variant of each precision is its figure
            runs = [r for r in self.records if r["model"] == precision]
            for r in runs:
                r["best"] = r is min(runs, key=lambda q: q["ms_per_image"])
        settings = {k: v for k, v in asdict(self.s).items() if k not in ("workload", "workdir", "extra", "device")}
        return {
            **self.env,
            "energy_method": self.meter.method,
            "workload": asdict(self.s.workload),
            "settings": settings | self.s.extra,
            "records": self.records,
            "skipped": self.skipped,
            **({"breakdown": self.breakdown} if self.breakdown else {}),
        }
