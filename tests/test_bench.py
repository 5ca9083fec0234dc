import json
import sys
import time
import types

import pytest
import torch

from lightning_mbu import MBUNet
from lightning_mbu.bench import energy, presets, report
from lightning_mbu.bench.baselines import baseline_forward, inference_net
from lightning_mbu.bench.timing import Measurement
from lightning_mbu.cli import main
from lightning_mbu.config import LayerConfig

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


# -- presets ------------------------------------------------------------------------------------
def test_presets_follow_table_a2_h100_row():
    assert presets.resolve("carvana").size == (640, 959)
    isic = presets.resolve("isic")
    assert isic.size == (480, 640) and isic.batch("fp32") == 128 and isic.batch("fp16") == isic.batch("packed") == 256
    assert presets.resolve("nuclei").batches == {"fp32": 128, "fp16": 256, "packed": 256}


def test_preset_overrides_and_errors():
    w = presets.resolve("isic", size="100x60", batch=7)
    assert w.size == (100, 60) and w.name == "100x60" and set(w.batches.values()) == {7}
    assert presets.resolve("nuclei", size="512x512").name == "nuclei"  # same size: still the preset
    assert presets.resolve(None, size="32").size == (32, 32)
    with pytest.raises(ValueError, match="unknown preset 'kitti'"):
        presets.resolve("kitti")
    with pytest.raises(ValueError, match="HEIGHTxWIDTH"):
        presets.parse_size("12by4")
    with pytest.raises(ValueError, match="two positive"):
        presets.parse_size("0x5")
    with pytest.raises(ValueError, match="--batch"):
        presets.resolve("carvana", batch=0)
    with pytest.raises(ValueError, match="unknown model kind"):
        presets.resolve("carvana").batch("int8")


# -- energy -------------------------------------------------------------------------------------
def test_energy_is_none_without_nvml(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml -> ImportError
    meter = energy.EnergyMeter(0)
    assert not meter.supported and meter.method is None
    meter.start()
    assert meter.stop() is None
    assert energy.driver_version() is None


class FakeNVML(types.SimpleNamespace):
    """pynvml stand-in: an energy counter (mJ) rising at ``watts``, or only a power reading."""

    def __init__(self, watts, counter=True):
        super().__init__(t0=time.perf_counter(), watts=watts, counter=counter)

    def nvmlInit(self):
        pass

    def nvmlDeviceGetHandleByIndex(self, i):
        return i

    def nvmlDeviceGetTotalEnergyConsumption(self, h):
        if not self.counter:
            raise RuntimeError("NVML_ERROR_NOT_SUPPORTED")
        return int((time.perf_counter() - self.t0) * self.watts * 1000)

    def nvmlDeviceGetPowerUsage(self, h):
        return int(self.watts * 1000)

    def nvmlSystemGetDriverVersion(self):
        return b"580.1"


@pytest.mark.parametrize("counter, method", [(True, "nvml-energy-counter"), (False, "nvml-power-sampling")])
def test_energy_meter_reads_counter_or_integrates_power(monkeypatch, counter, method):
    monkeypatch.setitem(sys.modules, "pynvml", FakeNVML(watts=250.0, counter=counter))
    meter = energy.EnergyMeter(0, interval_s=0.002)
    assert meter.method == method
    meter.start()
    t0 = time.perf_counter()
    time.sleep(0.2)
    joules = meter.stop()
    elapsed = time.perf_counter() - t0
    assert joules == pytest.approx(250.0 * elapsed, rel=0.15)
    assert energy.driver_version() == "580.1"


def test_integrate_power_is_the_trapezoid_rule():
    assert energy.integrate_power([(0.0, 100.0), (1.0, 200.0), (3.0, 200.0)]) == pytest.approx(150 + 400)
    assert energy.integrate_power([(0.0, 100.0)]) is None


# -- timing arithmetic --------------------------------------------------------------------------
def test_measurement_reports_median_per_image_and_energy_per_image():
    m = Measurement(batch=4, times_ms=[10.0, 8.0, 30.0], joules=6.0, energy_method="x", peak_memory_bytes=0)
    assert m.ms_per_batch == 10.0 and m.ms_per_image == 2.5 and m.images_per_s == 400.0
    assert m.joules_per_image == pytest.approx(0.5)  # 6 J over 3 batches of 4
    assert m.spread == pytest.approx(2.2)
    assert Measurement(4, [1.0], None, None, 0).joules_per_image is None


# -- baselines ----------------------------------------------------------------------------------
def _random_bn(net):
    torch.manual_seed(1)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.normal_()
            m.bias.data.normal_()
    return net.eval()


def test_inference_net_folds_batchnorm_and_padding_without_changing_outputs():
    torch.manual_seed(0)
    net = _random_bn(MBUNet(base=4))
    fast = inference_net(net)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules())
    x = torch.randn(2, 3, 37, 45)
    with torch.no_grad():
        assert torch.allclose(fast(x), net(x), atol=1e-5, rtol=1e-4)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())  # the original is untouched


def test_baselines_refuse_quantized_nets_and_unknown_choices():
    with pytest.raises(ValueError, match="quantized"):
        inference_net(MBUNet("BBBBMMMMBBBB", base=4))
    with pytest.raises(ValueError, match="precision 'int8'"):
        baseline_forward(MBUNet(base=4), "int8", device="cpu")
    with pytest.raises(ValueError, match="variant 'jit'"):
        baseline_forward(MBUNet(base=4), "fp32", "jit", device="cpu")


def test_fp32_eager_baseline_is_channels_last_and_matches():
    torch.manual_seed(0)
    net = _random_bn(MBUNet(base=4))
    fn = baseline_forward(net, "fp32", "eager", device="cpu")
    assert fn.inc.conv1.conv.weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(1, 3, 32, 48)
    with torch.no_grad():
        assert torch.allclose(fn(x.to(memory_format=torch.channels_last)), net(x), atol=1e-5, rtol=1e-4)


# -- reports ------------------------------------------------------------------------------------
ENV = {"gpu": "Test GPU", "driver": "1.0", "cuda": "13.0", "torch": "2.x", "commit": "abc", "date": "2026-01-01"}


def _rec(model, ms, joules=0.5, **extra):
    rec = {"model": model, "variant": extra.pop("variant", "x"), "height": 64, "width": 96, "batch": 8,
           "ms_per_image": ms, "images_per_s": 1000.0 / ms, "joules_per_image": joules, **extra}
    if report.masked_count(model) is not None:
        rec.setdefault("bit_exact", True)
    return rec


def _result(records):
    return {**ENV, "workload": {"name": "test", "height": 64, "width": 96}, "records": records, "skipped": []}


def test_model_names_and_masked_counts():
    assert report.model_name("BBBBBBBBBBBB") == "binary"
    assert report.model_name(LayerConfig.masking(["up_ct1"])) == "mbu:BBBBMBBBBBBB"
    assert report.masked_count("binary") == 0
    assert report.masked_count("mbu:BBBBMMMMBBBB") == 4
    assert report.masked_count("fp16") is None


def test_report_writes_schema_table_and_figures(tmp_path):
    result = _result([_rec("fp32", 20.0, variant="eager"), _rec("fp16", 4.0, 2.0, variant="eager"),
                      _rec("fp16", 2.0, 1.5, variant="compile"), _rec("binary", 1.0, 0.2),
                      _rec("mbu:BBBBMMMMBBBB", 0.5, 0.1, bit_exact=False)])
    result["skipped"] = [{"model": "mbu:MMMMMMMMMMMM", "variant": "packed-cuda", "reason": "out of GPU memory"}]
    written = report.write_report(result, tmp_path / "run", accuracy={"fp16": 0.99, "binary": 0.6,
                                                                      "mbu:BBBBMMMMBBBB": 0.95})
    names = sorted(p.name for p in written)
    assert names == ["run-energy.png", "run-latency.png", "run-pareto.png", "run.json", "run.md"]
    assert all(p.stat().st_size > 1000 for p in written if p.suffix == ".png")
    back = report.read_json(tmp_path / "run.json")
    assert back["records"] == result["records"] and back["gpu"] == "Test GPU"
    md = (tmp_path / "run.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("| `")]
    assert len(rows) == 5
    # speed-up is against the fastest FP16 variant (2.0 ms): the MBU row shows 4.00, the fp32 row 0.10
    assert rows[-1].endswith("| 4.00 |") and rows[0].endswith("| 0.10 |")
    assert "| NO |" in rows[-1]  # a failed bit-exactness check is visible
    assert "out of GPU memory" in md


def test_markdown_shows_the_per_stage_breakdown():
    result = _result([_rec("binary", 1.0)])
    result["breakdown"] = {"binary": [
        {"stage": "inc.conv1", "kind": "first_conv", "mode": None, "ms": 1.0, "tops": None, "kernel": None},
        {"stage": "down1.conv1", "kind": "binary_conv", "mode": "binary", "ms": 3.0, "tops": 4321.0,
         "kernel": "and_128x128"}]}
    md = report.markdown_table(result)
    assert "| down1.conv1 | binary_conv | binary | 3.000 | 75.0 | 4321 | and_128x128 |" in md
    assert "| inc.conv1 | first_conv |  | 1.000 | 25.0 | n/a |  |" in md


def test_energy_figure_is_skipped_when_no_record_has_energy(tmp_path):
    written = report.write_report(_result([_rec("fp16", 4.0, None), _rec("binary", 1.0, None)]), tmp_path / "r")
    assert sorted(p.name for p in written) == ["r-latency.png", "r.json", "r.md"]
    assert "| n/a |" in (tmp_path / "r.md").read_text()


def test_report_validation_names_what_is_missing(tmp_path):
    with pytest.raises(ValueError, match="'commit'"):
        report.validate({k: v for k, v in _result([]).items() if k != "commit"})
    bad = _rec("fp16", 1.0)
    del bad["joules_per_image"]
    with pytest.raises(ValueError, match="joules_per_image"):
        report.validate(_result([bad]))
    packed = _rec("binary", 1.0)
    del packed["bit_exact"]
    with pytest.raises(ValueError, match="bit_exact"):
        report.validate(_result([packed]))
    (tmp_path / "x.json").write_text("{")
    with pytest.raises(ValueError, match="not JSON"):
        report.read_json(tmp_path / "x.json")


def test_merge_joins_runs_on_one_gpu_and_refuses_two_gpus():
    a = _result([_rec("fp16", 4.0)])
    b = {**_result([_rec("fp32", 20.0)]), "date": "2026-01-02"}
    b["skipped"] = [{"model": "fp32", "variant": "compile", "reason": "timeout"}]
    merged = report.merge([a, b])
    assert [r["model"] for r in merged["records"]] == ["fp16", "fp32"]
    assert merged["skipped"] == b["skipped"] and [r["date"] for r in merged["runs"]] == ["2026-01-01", "2026-01-02"]
    report.validate(merged)
    with pytest.raises(ValueError, match="different GPUs"):
        report.merge([a, {**b, "gpu": "Other GPU"}])


def test_accuracy_is_found_in_eval_and_search_json():
    eval_doc = {"config": "BBBBMMMMBBBB", "test/dice": 0.91, "val/dice": 0.95}
    search_doc = {"pareto_front": [{"params": {n: "binary" for n in LayerConfig.uniform("binary").as_dict()},
                                    "dice": 0.55},
                                   {"config": "mbu:MMMMMMMMMMMM", "val/dice": 0.97}],
                  "trials": [{"config": "BBBBMMMMBBBB", "dice": 0.93}, {"config": None, "dice": 0.99},
                             {"config": "nonsense", "dice": 1.0}]}
    acc = report.accuracy_by_model([eval_doc, search_doc])
    assert acc == {"mbu:BBBBMMMMBBBB": 0.93, "binary": 0.55, "mbu:MMMMMMMMMMMM": 0.97, "fp32": 0.99, "fp16": 0.99}


def test_pareto_front_keeps_only_undominated_points():
    pts = [(10, 0.5), (5, 0.9), (8, 0.4), (1, 0.95), (5, 0.8)]
    assert report.pareto_front(pts) == [3, 1, 0]


# -- packed models ------------------------------------------------------------------------------
def test_models_resolve_to_baselines_and_packed_specs(tmp_path):
    from lightning_mbu.bench.packed import random_mbunet
    from lightning_mbu.bench.suite import resolve_models
    from lightning_mbu.export import export_model

    work = presets.resolve("nuclei")
    base, packed = resolve_models(["fp16", "fp32", "fp16", "binary", "cost-aware", "MMMMMMMMMMMM"], work, base=8)
    assert base == ["fp16", "fp32"]
    names = [s.name for s in packed]
    assert len(names) == 13 and names[0] == "binary" and names[-1] == "mbu:MMMMMMMMMMMM"
    assert [report.masked_count(n) for n in names] == list(range(13))  # k cheapest layers masked, k = 0..12
    path = tmp_path / "m.mbu"
    export_model(random_mbunet("MBMBMBMBMBMB", base=4), path)
    (spec,) = resolve_models([str(path)], work)[1]
    assert spec.name == "mbu:MBMBMBMBMBMB" and spec.path == path
    with pytest.raises(ValueError, match="int4"):
        resolve_models(["BBBB4BBBBBBB"], work)
    with pytest.raises(ValueError, match="12 letters|needs 12"):
        resolve_models(["fp64"], work)


def test_random_mbunet_thresholds_fall_inside_the_accumulator_range(tmp_path):
    from lightning_mbu.bench.packed import random_mbunet
    from lightning_mbu.export import export_model
    from lightning_mbu.ops.bits import unpack_bits
    from lightning_mbu.ops.cpu import CPUPackedNet

    net = export_model(random_mbunet("BBBBMMMMBBBB", base=8), tmp_path / "m.mbu")
    env = CPUPackedNet(net, threads=1).run(torch.randn(2, 3, 32, 32))
    segs = net.segments()
    for st in net.threshold_layers:
        bits = unpack_bits(env[st.name], segs[st.name])
        ones = bits.mean()
        assert 0.05 < ones < 0.95, f"{st.name}: {ones:.2f} of its output bits are set"


def test_stage_shapes_count_the_same_bit_ops_as_the_cost_model(tmp_path):
    from lightning_mbu.bench.breakdown import stage_shapes
    from lightning_mbu.bench.packed import random_mbunet
    from lightning_mbu.export import export_model
    from lightning_mbu.search.cost import CostModel

    config = "BBBBMMMMBBBB"
    net = export_model(random_mbunet(config, base=32), tmp_path / "m.mbu")
    cost = CostModel.measure((32, 48), base=32)
    for encoding in ("xor", "and"):
        shapes = {s.stage: s for s in stage_shapes(net, batch=2, size=(30, 47), encoding=encoding)}
        assert (shapes["inc.conv1"].height, shapes["inc.conv1"].width) == (32, 48)  # padded to 16
        assert (shapes["down4.conv2"].height, shapes["down4.conv2"].width) == (2, 3)
        assert shapes["up_ct4"].gemm == (2 * 16 * 24, 4 * 32 * 2, 64)  # masked: two planes, 2x2 taps; K = 2 x 32 ch
        # binary: one plane, and in the AND form the column of ones counting each window's +1 inputs
        assert shapes["up1.conv1"].gemm == (2 * 4 * 6, 256 + (encoding == "and"), 9 * 512)
        total = sum(s.bit_ops for s in shapes.values() if s.bit_ops)
        assert total == 2 * cost.config_binary_ops(config, encoding=encoding)  # cost model counts one image


# -- CLI ----------------------------------------------------------------------------------------
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on machines without CUDA")
def test_cli_says_it_needs_cuda(capsys, tmp_path):
    assert main(["bench", "--models", "fp16", "--output-dir", str(tmp_path)]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_cli_rerenders_results_with_accuracy_without_gpu(tmp_path, capsys):
    src = tmp_path / "in.json"
    report.write_json(_result([_rec("fp16", 4.0), _rec("mbu:BBBBMMMMBBBB", 0.5)]), src)
    acc = tmp_path / "acc.json"
    acc.write_text(json.dumps([{"config": "BBBBMMMMBBBB", "dice": 0.9}, {"config": "fp", "dice": 0.99}]))
    out = tmp_path / "out"
    assert main(["bench", "--from-json", str(src), "--accuracy", str(acc), "--output-dir", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["in-energy.png", "in-latency.png", "in-pareto.png", "in.json",
                                                     "in.md"]
    assert "mbu:BBBBMMMMBBBB" in capsys.readouterr().out
    assert main(["bench", "--from-json", str(tmp_path / "missing.json")]) == 2
    second = tmp_path / "second.json"
    report.write_json(_result([_rec("fp32", 20.0)]), second)
    assert main(["bench", "--from-json", str(src), str(second), "--name", "both", "--output-dir", str(out)]) == 0
    assert [r["model"] for r in report.read_json(out / "both.json")["records"]] == ["fp16", "mbu:BBBBMMMMBBBB", "fp32"]


# -- GPU ----------------------------------------------------------------------------------------
@pytest.mark.gpu
@cuda
def test_measure_times_graph_replays_with_rotating_inputs():
    from lightning_mbu.bench.timing import eager_runners, graph_runners, measure, random_inputs

    xs = random_inputs(2, 4, 3, (64, 64), device="cuda")
    assert not torch.equal(xs[0], xs[1])
    m = measure(graph_runners(lambda x: x * 2 + 1, xs), batch=4, warmup=1, repeats=5)
    assert len(m.times_ms) == 5 and m.ms_per_image > 0 and m.peak_memory_bytes > 0
    seen = []
    measure(eager_runners(lambda x: seen.append(x.data_ptr()), xs), batch=4, warmup=2, repeats=4)
    assert seen == [x.data_ptr() for x in xs] * 3  # warm-up and timed runs alternate the inputs


@pytest.mark.gpu
@cuda
def test_tiny_bench_run_records_baselines(tmp_path):
    from lightning_mbu.bench.suite import Bench, Settings

    work = presets.resolve(None, size="64x48", batch=2)
    s = Settings(work, models=("fp32", "fp16"), variants=("eager",), base=4, repeats=3, inputs=2,
                 min_energy_seconds=0.0)
    result = Bench(s, log=lambda m: None).run()
    report.validate(result)
    assert [r["model"] for r in result["records"]] == ["fp32", "fp16"]
    assert all(r["ms_per_image"] > 0 and r["best"] for r in result["records"])
    assert result["gpu"] == torch.cuda.get_device_name(0)


@pytest.mark.gpu
@cuda
def test_tiny_packed_run_is_bit_exact_and_breaks_down_by_stage():
    from lightning_mbu.bench.suite import Bench, Settings

    work = presets.resolve(None, size="40x56", batch=3)
    s = Settings(work, models=("BBBBMMMMBBBB",), base=32, repeats=3, inputs=2, min_energy_seconds=0.0,
                 exact_size=(40, 56), breakdown=True)
    result = Bench(s, log=lambda m: None).run()
    report.validate(result)
    (rec,) = result["records"]
    assert rec["model"] == "mbu:BBBBMMMMBBBB" and rec["bit_exact"] is True
    rows = result["breakdown"]["mbu:BBBBMMMMBBBB"]
    assert [r["stage"] for r in rows][:3] == ["inc.conv1", "inc.conv2", "down1.pool"]
    assert all(r["ms"] > 0 for r in rows)
    assert all((r["tops"] is None) == (r["gemm"] is None) for r in rows)
