from __future__ import annotations

import json
import shutil
import signal
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest
import torch

import densebench.devices
from densebench.environment import cpu_supports_bf16
from densebench.errors import StoreError
from densebench.results.store import ORIGINAL_COLUMNS, RunStore, load_run
from densebench.variants import expand

from .conftest import TINY_SIZE, blocked_at, run_cli_process, wait_for

FAST = ["-m", "densenet-tiny", "--image-size", TINY_SIZE, "--warmup", "1", "--iters", "5",
        "--repeats", "1", "--device", "cpu"]


def _run_json(cli, *args, fast=True):
    r = cli("run", "--device", "cpu", *(FAST if fast else []), *args, "--json")
    assert r.exit_code == 0, r.stderr
    return json.loads(r.stdout)


@pytest.mark.slow
def test_real_variants_isolated(cli, workdir):
    names = ["eager", "channels-last", "torchscript", "onnxruntime", "onnxruntime-int8"]
    if cpu_supports_bf16():
        names.append("amp-bf16")
    summary = _run_json(cli, "-v", ",".join(names), "-b", "1,3")
    cells = summary["cells"]
    assert summary["status"] == "complete" and summary["device"] == "cpu"
    assert len(cells) == len(names) * 2 * 2
    assert all(c["status"] == "ok" for c in cells), [c["error"] for c in cells]
    assert all(c["n"] == 5 for c in cells)
    by = {(c["variant"], c["batch_size"], c["mode"]): c for c in cells}
    assert by[("eager", 3, "model")]["parity_max_abs_error"] == 0
    assert by[("eager", 3, "model")]["speedup_vs_eager"] == pytest.approx(1.0)
    for v in ("channels-last", "torchscript", "onnxruntime"):
        assert by[(v, 3, "model")]["parity_max_abs_error"] < 1e-4
        assert by[(v, 3, "model")]["parity_top1_agreement"] == 1.0
    assert 0 < by[("onnxruntime-int8", 3, "model")]["parity_max_abs_error"] < 0.5
    if cpu_supports_bf16():
        assert 0 < by[("amp-bf16", 3, "model")]["parity_max_abs_error"] < 0.5
    assert by[("onnxruntime", 1, "e2e")]["p90_ms"] is None  # 5 samples do not support p90

    run = RunStore().load(summary["run"])
    d = run.data
    assert d["schema_version"] == 2 and d["kind"] == "benchmark"
    assert d["model"]["random_weights"] is True
    assert d["environment"]["cpu"]["logical_cores"] >= 1
    assert d["environment"]["settings"]["torch_threads"] >= 1
    for c in run.cells:
        assert len(c.samples_ms) == 5
        assert c.timer == "perf_counter_ns"
        assert c.memory["peak_rss_mb"] > 0
        assert c.cold_start["load_s"] >= 0 and "first_inference_s" in c.cold_start
        assert c.model == "densenet-tiny" and c.scenario == "closed-loop"
        assert c.host["hostname"] and c.host["machine_id"] and c.host["cpu_model"]
        assert c.scenario_settings["iters"] == 5
    assert d["variants"]["onnxruntime"]["options"]["providers"] == ["CPUExecutionProvider"]
    assert (run.path / "logs" / "eager.log").exists()
    csv = pd.read_csv(run.path / "results.csv")
    assert list(csv.columns[:len(ORIGINAL_COLUMNS)]) == ORIGINAL_COLUMNS
    assert len(csv) == len(cells)
    assert set(csv["mode"]) == {"model", "e2e"}
    assert any((run.path / "tb").iterdir())


@pytest.mark.slow
def test_variant_all_runs_what_the_cpu_can_and_records_the_rest(cli, workdir):
    """Every variant on pool-tiny (a pool and a linear layer: each runtime's compile and
    quantization is seconds, not a minute; test_real_variants_isolated and test_int8 run
    DenseNet through them)."""
    summary = _run_json(cli, "-m", "pool-tiny", "-v", "all", "-b", "2", "--mode", "model",
                        "--no-isolate", "--iters", "3", "--warmup", "1", "--repeats", "1",
                        "--device", "cpu", fast=False)
    ran = {c["variant"] for c in summary["cells"]}
    assert {"eager", "compile", "compile-bf16" if cpu_supports_bf16() else "compile", "aoti",
            "torchscript", "onnxruntime", "onnxruntime-fp16", "onnxruntime-int8",
            "compile-int8", "aoti-int8", "openvino", "openvino-int8"} <= ran
    assert all(c["status"] == "ok" for c in summary["cells"]), summary["cells"]
    skipped = {s["variant"]: s["reason"] for s in summary["skipped"]}
    assert "CUDA" in skipped["amp-fp16"] and "onnxruntime-trt" in skipped
    by = {c["variant"]: c for c in summary["cells"]}
    assert by["compile"]["parity_max_abs_error"] < 1e-3
    assert by["aoti"]["parity_max_abs_error"] < 1e-4
    data = RunStore().load(summary["run"]).data
    assert data["variants"]["compile"]["options"]["freezing"] is True
    assert data["variants"]["compile"]["cold_start"]["first_inference_s"] > 0
    # int8 by torchao PT2E: quantized, calibrated on the default data, compiled frozen
    assert by["compile-int8"]["precision"] == "int8" and by["compile-int8"]["parity_within"]
    opts = data["variants"]["compile-int8"]["options"]
    assert opts["freezing"] and "X86InductorQuantizer" in opts["quantizer"]
    assert opts["calibration"]["source"] == "synthetic"
    if not cpu_supports_bf16():  # OpenVINO's bf16 would quietly be f32 here: not offered
        assert "bf16" in skipped["openvino-bf16"] and "compile-int8-bf16" in skipped


def test_expand_rules():
    chosen, skipped = expand(["all"], ["default", "max-autotune"], "cpu")
    labels = [v.label for v in chosen]
    assert "compile" in labels and "compile:max-autotune" in labels
    assert labels.count("eager") == 1
    assert {s["variant"] for s in skipped} >= {"amp-fp16", "onnxruntime-trt"}


def test_the_quick_set_is_each_runtime_from_the_cache_and_names_what_it_leaves_out():
    from densebench.variants import left_out

    chosen, skipped = expand(["quick"], ["default"], "cpu")
    labels = [v.label for v in chosen]
    # the quick set, written out: the bf16 two where this CPU has native bf16 (its flags)
    flags = next((ln for ln in Path("/proc/cpuinfo").read_text().splitlines()
                  if ln.startswith(("flags", "Features"))), "").split()
    bf16 = bool({"avx512_bf16", "amx_bf16", "bf16"} & set(flags))  # bf16: Arm
    expected = ["eager", "amp-bf16", "aoti-int8", "onnxruntime", "onnxruntime-int8",
                "openvino", "openvino-bf16", "openvino-int8"]
    if not bf16:
        expected = [n for n in expected if "bf16" not in n]
    assert labels == expected
    assert {s["variant"] for s in skipped} == ({"amp-bf16", "openvino-bf16"} if not bf16
                                               else set())
    # nothing in it compiles again per run: every one but eager loads an artifact
    assert all(v.artifact for v in chosen if v.backend != "eager")
    rest = left_out(["quick"], chosen, "cpu")
    assert {"compile", "compile-int8", "torchscript", "aoti"} <= set(rest)
    assert not set(rest) & set(labels) and left_out(["all"], chosen, "cpu") == []
    assert [v.label for v in expand(["quick", "torchscript"], ["default"], "cpu")[0]] == [
        *labels, "torchscript"]


def test_show_renders_a_stored_run_from_its_files_alone(cli, workdir, tmp_path_factory):
    summary = _run_json(cli, "-v", "eager,onnxruntime", "-b", "2", "--no-isolate",
                        "--name", "baseline")
    src = workdir / "runs" / summary["run"]
    copy = tmp_path_factory.mktemp("elsewhere") / "copied-run"
    shutil.copytree(src, copy)
    r = cli("show", copy)
    assert r.exit_code == 0, r.stderr
    assert "onnxruntime" in r.stdout and "eager" in r.stdout and "random weights" in r.stdout
    assert cli("show", "baseline").exit_code == 0  # by name
    assert cli("show", summary["run"][:17]).exit_code == 0  # by id prefix
    j = json.loads(cli("show", copy, "--json").stdout)
    assert {c["variant"] for c in j["cells"]} == {"eager", "onnxruntime"}
    listing = cli("runs").stdout
    assert summary["run"] in listing and "baseline" in listing


def test_run_json_round_trip_and_schema_guard(cli, workdir):
    summary = _run_json(cli, "-v", "eager", "-b", "1", "--no-isolate")
    path = workdir / "runs" / summary["run"]
    rec = load_run(path)
    text = (path / "run.json").read_text()
    cells = (path / "cells.jsonl").read_text()
    rec.save()
    assert json.loads((path / "run.json").read_text()) == json.loads(text)
    assert (path / "cells.jsonl").read_text() == cells
    assert [c.to_dict() for c in load_run(path).cells] == [c.to_dict() for c in rec.cells]
    data = json.loads(text)
    data["schema_version"] = 99
    (path / "run.json").write_text(json.dumps(data))
    with pytest.raises(StoreError, match="schema version 99"):
        load_run(path)
    r = cli("show", path)
    assert r.exit_code == 1 and "schema version 99" in r.stderr
    (path / "run.json").write_text("{broken")
    assert "not valid JSON" in cli("show", path).stderr


def _workers_of(pid):
    try:
        return [p for p in psutil.Process(pid).children(recursive=True)
                if "densebench.worker" in " ".join(p.cmdline())]
    except psutil.NoSuchProcess:
        return []


@pytest.mark.slow
def test_a_crashing_variant_is_recorded_and_the_run_goes_on(workdir, tmp_path):
    """A worker killed inside its timed loop (the test runtime blocks at its fifth call,
    after the one warm-up call, and says so), as the kernel's OOM killer would: its cell
    fails with the reason, the next variant still runs."""
    env, ready = blocked_at("sleep", "call5", tmp_path)
    p = run_cli_process("run", "-m", "pool-tiny", "-v", "sleep,sleep-fast", "-b", "1",
                        "--warmup", "1", "--min-iters", "10", "--mode", "model",
                        "--repeats", "1", "--device", "cpu", "--json", env=env)
    wait_for(ready, p)
    worker = psutil.Process(int(ready.read_text()))
    assert "densebench.worker" in " ".join(worker.cmdline())  # the worker, not the run
    worker.kill()
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    assert "sleep: measure batch 1 model" in err  # it was in the timed loop
    cells = {c["variant"]: c for c in json.loads(out)["cells"]}
    assert cells["sleep"]["status"] == "failed"
    assert "killed by SIGKILL" in cells["sleep"]["error"]
    assert cells["sleep-fast"]["status"] == "ok"


@pytest.mark.slow
def test_a_hanging_variant_times_out(cli, workdir):
    r = cli("run", "--device", "cpu",
            *FAST, "-v", "eager", "-b", "1", "--iters", "100000000", "--timeout", "8",
            "--json")
    assert r.exit_code == 1 and "every cell of run" in r.stderr  # nothing worked
    summary = json.loads(r.stdout)
    c = summary["cells"][0]
    assert c["status"] == "failed" and "timed out after 8 s" in c["error"]
    assert summary["status"] == "complete"


def test_a_batch_that_does_not_fit_fails_its_cell_only(cli, workdir):
    # 100000 x 3 x 256 x 256 fp32 is 78 GB: more than this machine has
    summary = _run_json(cli, "-v", "eager", "-b", "100000,1", "--image-size", "256",
                        "--iters", "2", "--mode", "model")
    cells = {c["batch_size"]: c for c in summary["cells"]}
    assert cells[100000]["status"] == "failed"
    assert "out of memory" in cells[100000]["error"]
    assert cells[1]["status"] == "ok"


@pytest.mark.slow
def test_ctrl_c_keeps_finished_cells_and_marks_the_run_incomplete(workdir, tmp_path):
    """SIGINT while the second variant's worker is known to be preparing (the test runtime
    blocks there and says so): the first variant's cells are kept, the run is incomplete,
    the exit code is 130, and no worker is left behind. An exit 0 here is a lost Ctrl-C."""
    env, ready = blocked_at("sleep-fast", "prepare", tmp_path)
    p = run_cli_process("run", "-m", "pool-tiny", "-v", "sleep,sleep-fast", "-b", "1,2",
                        "--warmup", "1", "--iters", "3", "--repeats", "1", "--device", "cpu",
                        "--name", "stopped", env=env)
    wait_for(ready, p)
    workers = _workers_of(p.pid)
    assert workers  # the blocked worker, which the run must take down with it
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    assert "interrupted" in err and "incomplete" in err
    rec = RunStore().load("stopped")
    assert rec.status == "incomplete"
    assert sorted((c.variant, c.batch_size, c.mode) for c in rec.cells if c.ok) == [
        ("sleep", b, m) for b in (1, 2) for m in ("e2e", "model")]
    time.sleep(0.5)
    assert not [w for w in workers if w.is_running() and w.status() != psutil.STATUS_ZOMBIE]


@pytest.mark.parametrize("args,needle", [
    (["-v", "egaer"], "did you mean eager"),
    (["-v", "amp-fp16"], "needs a CUDA GPU"),
    (["--device", "cuda"], "has none visible"),
    (["--device", "tpu"], "not a device name"),
    (["-b", "0"], "--batch-size must be positive"),
    (["-b", "x"], "--batch-size takes integers"),
    (["--iters", "0"], "--iters must be at least 1"),
    (["--min-time", "-1"], "--min-time '-1' must be a positive duration"),
    (["--min-iters", "0"], "--min-iters must be at least 1"),
    (["--warmup", "-3"], "--warmup"),
    (["--threads", "0"], "--threads must be at least 1"),
    (["--mode", "fast"], "unknown mode 'fast'"),
    (["--compile-mode", "turbo", "-v", "compile"], "unknown compile mode"),
    (["--timeout", "0"], "--timeout '0' must be a positive duration"),
    (["-m", "densenet-tiny", "--image-size", "8"], "too small"),
])
def test_run_bad_input(cli, workdir, args, needle):
    if needle == "has none visible" and densebench.devices.cuda_available():
        pytest.skip("this host has a GPU: --device cuda is not bad input here")
    r = cli("run", "--device", "cpu", "-m", "densenet-tiny", *args)
    assert r.exit_code != 0
    assert needle in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (workdir / "runs").exists() or not any((workdir / "runs").iterdir())


def test_unwritable_runs_directory(cli, workdir, monkeypatch):
    (workdir / "blocker").write_text("")
    monkeypatch.setenv("DENSEBENCH_RUNS", str(workdir / "blocker" / "runs"))
    r = cli("run", "--device", "cpu", *FAST, "-v", "eager")
    assert r.exit_code == 1 and "not writable" in r.stderr and "DENSEBENCH_RUNS" in r.stderr


def test_show_missing_run(cli, workdir):
    r = cli("show", "nope")
    assert r.exit_code == 1 and "no run 'nope'" in r.stderr


@pytest.mark.gpu
def test_cuda_variants_on_gpu(cli, workdir):
    summary = _run_json(cli, "-v", "eager,amp-fp16,onnxruntime", "-b", "2", "--device", "cuda")
    assert all(c["status"] == "ok" for c in summary["cells"])
    run = RunStore().load(summary["run"])
    assert any(c.timer == "cuda-events" for c in run.cells)


@pytest.mark.slow
def test_densenet121_at_224(cli, workdir):
    summary = _run_json(cli, "-m", "densenet121", "-v", "eager,onnxruntime", "-b", "1",
                        "--iters", "3", "--warmup", "1", "--mode", "model", "--no-isolate",
                        fast=False)
    cells = {c["variant"]: c for c in summary["cells"]}
    assert all(c["status"] == "ok" for c in cells.values())
    assert cells["onnxruntime"]["parity_max_abs_error"] < 1e-4
    data = RunStore().load(summary["run"]).data
    assert data["model"]["image_size"] == 224 and data["model"]["params"] == 7_978_856


# ------------------------------------------------------------------ the export phase


@pytest.mark.slow
def test_missing_artifacts_are_exported_first_side_by_side(cli, workdir):
    """Two artifacts missing: both are exported before anything is measured, each in its
    own worker, and the run says so; the variants then load them from the cache (a second
    run finding them in the cache: test_int8's OpenVINO test)."""
    if (psutil.cpu_count() or 1) < 2:
        pytest.skip("exports run side by side only with two cores or more")
    args = ("-m", "pool-tiny", "-v", "onnxruntime,openvino", "-b", "2", "--mode", "model",
            "--iters", "3", "--warmup", "1", "--repeats", "1")
    summary = _run_json(cli, *args, fast=False)
    assert all(c["status"] == "ok" for c in summary["cells"]), summary["cells"]
    run = RunStore().load(summary["run"])
    ahead = {tuple(e["variants"]): e for e in run.data["exports_ahead"]}
    assert set(ahead) == {("onnxruntime",), ("openvino",)}
    assert all(e["export_s"] > 0 and e["key"] for e in ahead.values())
    for v in ("onnxruntime", "openvino"):
        cold = run.data["variants"][v]["cold_start"]
        assert cold["exported_ahead"] is True and cold["artifact_cached"] is False
        assert cold["export_s"] == ahead[(v,)]["export_s"]
        assert run.data["variants"][v]["artifact"] == ahead[(v,)]["key"]
        assert (run.path / "logs" / f"export-{v}.log").exists()  # its own worker


def test_an_export_that_fails_ahead_fails_its_cells_once(cli, workdir, monkeypatch):
    """The export fails in the export phase: its variants' cells fail with the exporter's
    reason, and no worker tries the export again; eager is measured as usual."""
    if (psutil.cpu_count() or 1) < 2:
        pytest.skip("exports run side by side only with two cores or more")
    monkeypatch.setenv("EXPORT_PROBE", "fail")
    r = cli("run", "--device", "cpu",
            "-m", "export-probe", "-v", "eager,onnxruntime,openvino", "-b", "2",
            "--mode", "model", "--iters", "3", "--warmup", "1", "--repeats", "1", "--json")
    assert r.exit_code == 0, r.stderr  # eager worked: cells failed among cells that worked
    cells = {c["variant"]: c for c in json.loads(r.stdout)["cells"]}
    assert cells["eager"]["status"] == "ok"
    for v in ("onnxruntime", "openvino"):
        assert cells[v]["status"] == "failed"
        assert "EXPORT_PROBE: this model cannot be exported" in cells[v]["error"], cells[v]
    run = RunStore().list()[-1]
    logs = {p.name for p in (run.path / "logs").iterdir()}
    assert logs == {"eager.log", "export-onnxruntime.log", "export-openvino.log"}
    assert "export failed" in r.stderr and "EXPORT_PROBE" in r.stderr


def test_eager_reference_is_computed_once_and_kept(workdir):
    """The fp32 reference is computed by the first worker that needs it and read by the
    others; a damaged or wrong-shaped file is computed again and replaced."""

    from densebench.models import load_model
    from densebench.parity import fixed_input, kept_reference

    loaded = load_model("densenet-tiny", "random", None)
    x = fixed_input(2, TINY_SIZE)
    calls = []

    def eager(inp):
        def compute():
            calls.append(1)
            with torch.inference_mode():
                return loaded.module(inp)
        return compute

    where = workdir / "refs"
    first = kept_reference(where, loaded, x, eager(x))
    again = kept_reference(where, loaded, x, eager(x))
    assert len(calls) == 1 and torch.equal(first, again)
    (kept,) = where.iterdir()
    x3 = fixed_input(3, TINY_SIZE)
    other = kept_reference(where, loaded, x3, eager(x3))
    assert len(calls) == 2 and other.shape == (3, loaded.num_classes)  # its own entry
    kept.write_bytes(b"not a tensor")
    assert torch.equal(kept_reference(where, loaded, x, eager(x)), first) and len(calls) == 3
    torch.save(torch.zeros(5, 7), kept)
    assert torch.equal(kept_reference(where, loaded, x, eager(x)), first) and len(calls) == 4
    assert torch.equal(kept_reference(where, loaded, x, eager(x)), first) and len(calls) == 4


@pytest.mark.slow
def test_a_worker_running_a_cached_artifact_neither_builds_the_model_nor_imports_torchvision(
        cli, workdir, monkeypatch):
    """ONNX Runtime from the cache, checked against kept reference logits, needs neither the
    PyTorch model nor torchvision (1.6 s a worker to import): the second run's worker, asked
    by Python to log its imports, imports no torchvision, and parity is still measured."""
    import re

    args = ["-m", "densenet-tiny", "-v", "onnxruntime", "-b", "2", "--mode", "model",
            "--warmup", "1", "--iters", "3", "--repeats", "1", "--json"]
    first = cli("run", "--device", "cpu", *args)
    assert first.exit_code == 0, first.stderr
    monkeypatch.setenv("PYTHONPROFILEIMPORTTIME", "1")
    second = cli("run", "--device", "cpu", *args)
    assert second.exit_code == 0, second.stderr
    summary = json.loads(second.stdout)
    (cell,) = summary["cells"]
    assert cell["status"] == "ok" and cell["parity_max_abs_error"] < 1e-4
    log = (RunStore().load(summary["run"]).path / "logs" / "onnxruntime.log").read_text()
    assert re.search(r"\| onnxruntime$", log, re.M), "the worker's imports were not logged"
    assert not re.search(r"\|\s+torchvision(\.\w+)*$", log, re.M)
    # and its progress does not claim an export it did not do
    assert re.search(r"onnxruntime: export$", first.stderr, re.M)
    assert not re.search(r": export$", second.stderr, re.M)
    assert "onnxruntime: ready (load" in second.stderr and "artifact cached" in second.stderr


def test_the_export_phase_starts_the_compiles_and_fp32_first():
    """aoti's packages first (their compile is the longest), fp32 before int8 (ONNX's and
    OpenVINO's int8 are quantized from their fp32 artifact), the rest in the order the run
    names them."""
    from densebench.pipeline import export_order
    from densebench.variants import get_variant

    names = ["onnxruntime-int8", "openvino-int8", "onnxruntime", "aoti-int8", "openvino",
             "torchscript", "aoti"]
    order = export_order([[get_variant(n)] for n in names])
    assert [g[0].name for g in order] == [
        "aoti", "aoti-int8", "onnxruntime", "openvino", "torchscript", "onnxruntime-int8",
        "openvino-int8"]
