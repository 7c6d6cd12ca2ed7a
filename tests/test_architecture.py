"""The seams: registered backends and scenarios (a plugin's, through the real registries),
executors, typed cells with schema v2, the v1 migration, progress without a terminal, a
store linear in its cells, and the Python API."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import statistics
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

import densebench
from densebench.artifacts import ArtifactCache, artifact_row
from densebench.errors import ConfigError
from densebench.executors import Job, get_executor
from densebench.parity import within
from densebench.results.schema import SCHEMA_VERSION, Cell
from densebench.results.store import RunStore, load_run
from densebench.run import RunConfig, run_benchmark

from .conftest import SLEEPY, TINY_SIZE, plain_sleep_ms, run_cli_process

FIXTURES = Path(__file__).parent / "fixtures" / "v1"
V1_RUN = "20261201-011644-e4cc"  # densenet-tiny 32 px, eager + onnxruntime, batch 1 and 2
V1_EVAL = "20261201-011705-43d7"
V2 = Path(__file__).parent / "fixtures" / "v2"
V2_RUN = "20261203-174228-9aa7"  # densenet-tiny 32 px, eager + onnxruntime, batch 1, 2; 2 repeats
V2_EVAL = "20261203-174403-8756"


def _sleepy_run(**kw) -> object:
    settings = {"model": "pool-tiny", "variants": ["sleep"], "batch_sizes": [1],
                "modes": ["model"], "warmup": "1", "iters": 3, "executor": "inline",
                "repeats": 1, "device": "cpu", **kw}
    return run_benchmark(RunConfig(**settings))


def test_a_plugin_backend_is_listed_and_runs_in_a_worker(cli, workdir):
    rows = json.loads(cli("variants", "--device", "cpu", "--json").stdout)
    sleep = next(r for r in rows if r["variant"] == "sleep")
    assert sleep["backend"] == "sleep" and sleep["supported"] is True
    assert {"eager", "onnxruntime", "compile"} <= {r["backend"] for r in rows}
    assert "sleep" in cli("variants").stdout
    # the default executor: a worker process, which loads the plugin from the environment
    r = cli("run", "--device", "cpu", "-m", "pool-tiny", "-v", "sleep", "-b", "1,2", "--iters", "3",
            "--warmup", "1", "--repeats", "1", "--json")
    assert r.exit_code == 0, r.stderr
    cells = json.loads(r.stdout)["cells"]
    assert [c["status"] for c in cells] == ["ok"] * 4
    rec = RunStore().load(json.loads(r.stdout)["run"])
    assert {c.backend for c in rec.cells} == {"sleep"}
    assert rec.data["environment"]["libraries"]["sleepy"] == "1.0"  # Backend.versions()
    assert (rec.path / "logs" / "sleep.log").exists()


def test_closed_loop_arithmetic_with_a_known_service_time(workdir):
    """Each sample is one call of the known service time (4 ms + 1 ms per image): never
    less (sleep never returns early, so a batch of 4 is not timed as one image), and not
    two calls or the harness's own time: its median stays under 1.6x the same sleep timed
    plainly in this process just before and after (a loop timing two calls is 2x)."""
    before = {bs: plain_sleep_ms(4.0 + bs) for bs in (1, 4)}
    rec = _sleepy_run(batch_sizes=[1, 4], iters=20, warmup="2")
    after = {bs: plain_sleep_ms(4.0 + bs) for bs in (1, 4)}
    by = {c.batch_size: c for c in rec.cells}
    for bs, c in by.items():
        service = 4.0 + 1.0 * bs  # the sleep variant: 4 ms + 1 ms per image
        assert c.ok and len(c.samples_ms) == 20 and c.stats["n"] == 20
        assert c.warmup_iters == 2
        assert min(c.samples_ms) >= service  # sleep never returns early
        plain = max(before[bs], after[bs])
        assert statistics.median(c.samples_ms) < 1.6 * plain, (c.samples_ms, plain)
        assert c.stats["mean_ms"] == pytest.approx(statistics.fmean(c.samples_ms))
        assert c.stats["throughput"] == pytest.approx(bs * 20 / (sum(c.samples_ms) / 1e3))
        assert c.scenario == "closed-loop" and c.scenario_settings["iters"] == 20


def test_a_second_scenario_plugs_in_beside_closed_loop(cli, workdir):
    r = cli("run", "--device", "cpu", "-m", "pool-tiny", "-v", "sleep", "-b", "2", "--mode", "e2e",
            "--scenario", "one-call", "--no-isolate", "--name", "once", "--repeats", "1",
            "--json")
    assert r.exit_code == 0, r.stderr
    rec = RunStore().load("once")
    (c,) = rec.cells
    assert c.scenario == "one-call" and c.stats["n"] == 1 and c.samples_ms[0] >= 6.0
    _sleepy_run(batch_sizes=[2], modes=["e2e"], name="loop")
    r = cli("compare", "once", "loop")  # cells are matched by scenario too
    assert r.exit_code == 1 and "no cell in common" in r.stderr


def test_executors_fail_what_a_dead_job_did_not_report(workdir):
    planned = [Cell(model="pool-tiny", variant="x", batch_size=b, mode="model", device="cpu",
                    status="planned").to_dict() for b in (1, 2, 3)]
    events: list[dict] = []
    job = Job(name="x", target="densebench_plugin_sleepy:crash", payload={"cells": planned},
              cells=planned)
    get_executor("subprocess", log_dir=workdir / "logs").run(job, events.append)
    cells = [Cell.from_dict(e["cell"]) for e in events if e["event"] == "cell"]
    assert [c.status for c in cells] == ["ok", "failed", "failed"]
    assert "worker exited with code 3" in cells[1].error and "logs/x.log" in cells[1].error
    events.clear()
    bad = Job(name="y", target="densebench.no_such_module:f", payload={}, cells=planned)
    get_executor("inline").run(bad, events.append)
    assert [e["cell"]["status"] for e in events] == ["failed"] * 3
    assert "ModuleNotFoundError" in events[0]["cell"]["error"]
    assert json.loads(json.dumps(job.to_dict())) == job.to_dict()  # plain data


def _digest(d: Path) -> dict:
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(d.rglob("*")) if p.is_file()}


def test_v1_runs_load_show_compare_and_report(cli, workdir):
    runs = workdir / "runs"
    runs.mkdir()
    for name in (V1_RUN, V1_EVAL):
        shutil.copytree(FIXTURES / name, runs / name)
    before = _digest(runs)
    v1 = load_run(runs / V1_RUN)
    assert v1.data["migrated_from"] == 1 and v1.data["schema_version"] == SCHEMA_VERSION
    assert len(v1.cells) == 8 and all(c.ok for c in v1.cells)
    assert {c.model for c in v1.cells} == {"densenet-tiny"}
    assert {c.scenario for c in v1.cells} == {"closed-loop"}
    assert all(c.host["hostname"] and c.host["machine_id"] is None for c in v1.cells)
    assert {c.scenario for c in load_run(runs / V1_EVAL).cells} == {"eval"}

    r = cli("show", "v1-fixture")
    assert r.exit_code == 0 and "onnxruntime" in r.stdout and "schema-version-1" in r.stdout
    assert "v1-fixture" in cli("runs").stdout and "v1-eval" in cli("runs").stdout

    r = cli("run", "--device", "cpu",
            "-m", "densenet-tiny", "--image-size", TINY_SIZE, "-v", "eager", "-b", "1",
            "--mode", "model", "--iters", "40", "--warmup", "1", "--no-isolate",
            "--name", "v2", "--repeats", "1")
    assert r.exit_code == 0, r.stderr
    j = json.loads(cli("compare", "v1-fixture", "v2", "--format", "json").stdout)
    (row,) = j["rows"]
    assert (row["variant"], row["batch_size"], row["mode"], row["scenario"]) == \
        ("eager", 1, "model", "closed-loop")
    v1_cell = next(c for c in v1.cells if (c.variant, c.batch_size, c.mode) == (
        "eager", 1, "model"))
    (v2_cell,) = load_run(RunStore().resolve("v2")).cells
    assert row["ratio"] == pytest.approx(v2_cell.stats["p50_ms"] / v1_cell.stats["p50_ms"],
                                         rel=1e-3)
    lo, hi = row["ci_low"], row["ci_high"]
    assert lo <= row["ratio"] <= hi  # the interval holds the ratio it is around
    assert row["verdict"] == ("slower" if lo > 1 and row["ratio"] > 1.05 else
                              "faster" if hi < 1 and row["ratio"] < 0.95 else
                              "no significant change")  # the README's rule, threshold 5%
    assert len(j["unmatched"]) == 7

    r = cli("report", "v1-fixture", "v2", "v1-eval", "--out", workdir / "report")
    assert r.exit_code == 0, r.stderr
    assert (workdir / "report" / "throughput.png").stat().st_size > 5000
    assert "v1-fixture" in (workdir / "report" / "index.html").read_text()
    assert _digest(runs / V1_RUN) == {k[len(V1_RUN) + 1:]: v for k, v in before.items()
                                      if k.startswith(V1_RUN)}  # read, never rewritten


@pytest.mark.slow
def test_v2_runs_made_by_this_code_load_show_compare_and_report(cli, workdir):
    """Schema-2 runs as densebench wrote them (tests/fixtures/v2) stay readable as they are:
    a change to the stored format must come with its migration from 2."""
    runs = workdir / "runs"
    runs.mkdir()
    for name in (V2_RUN, V2_EVAL):
        shutil.copytree(V2 / name, runs / name)
    shutil.copytree(FIXTURES / V1_RUN, runs / V1_RUN)
    before = _digest(runs)
    v2 = load_run(runs / V2_RUN)
    assert v2.data["schema_version"] == SCHEMA_VERSION and "migrated_from" not in v2.data
    assert len(v2.cells) == 16 and all(c.ok and c.stats["n"] == 40 for c in v2.cells)
    assert sorted((c.variant, c.batch_size, c.mode, c.repeat) for c in v2.cells) == sorted(
        (v, b, m, r) for v in ("eager", "onnxruntime") for b in (1, 2)
        for m in ("e2e", "model") for r in (0, 1))
    assert all(c.host["machine_id"] and c.worker for c in v2.cells)
    ev = load_run(runs / V2_EVAL)
    assert {c.scenario for c in ev.cells} == {"eval"} and ev.data["data"]["images"] == 16
    assert all(c.accuracy is None and c.parity["images"] == 16 for c in ev.cells)  # synthetic
    assert {c.variant: bool(within(c.precision, c.parity)) for c in ev.cells} == {
        "eager": True, "onnxruntime": True}

    r = cli("show", "v2-fixture")
    assert r.exit_code == 0 and "onnxruntime" in r.stdout and "v2-fixture" in r.stdout
    r = cli("show", "v2-eval")
    assert r.exit_code == 0 and "onnxruntime" in r.stdout
    j = json.loads(cli("compare", "v1-fixture", "v2-fixture", "--format", "json").stdout)
    assert len(j["rows"]) == 8 and not j["unmatched"]
    assert {(row["variant"], row["batch_size"], row["mode"]) for row in j["rows"]} == {
        (v, b, m) for v in ("eager", "onnxruntime") for b in (1, 2) for m in ("e2e", "model")}
    r = cli("report", "v2-fixture", "v2-eval", "--out", workdir / "report")
    assert r.exit_code == 0, r.stderr
    assert "v2-fixture" in (workdir / "report" / "index.html").read_text()
    assert _digest(runs) == before  # read, never rewritten


@pytest.mark.slow
def test_progress_lines_when_stderr_is_a_pipe(workdir):
    p = run_cli_process("run", "--device", "cpu",
                        "-m", "pool-tiny", "-v", "sleep", "-b", "1,2", "--iters", "3",
                        "--warmup", "1", "--mode", "model", "--repeats", "1")
    _, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    lines = [ln for ln in err.splitlines() if ln.startswith("densebench: ")]
    assert any(ln.endswith(": 2 cells of 1 variant(s)") for ln in lines)
    assert "densebench: sleep: load" in lines
    assert "densebench: sleep: measure batch 2 model" in lines
    assert any(ln.startswith("densebench: [1/2] sleep batch 1 model: ok, p50 ") and
               "img/s" in ln for ln in lines)
    assert any(ln.startswith("densebench: [2/2] sleep batch 2 model: ok") for ln in lines)
    assert lines[-1].endswith("finished")

    p = run_cli_process("eval", "--device", "cpu",
                        "-m", "pool-tiny", "-v", "eager", "--limit", "8", "-b", "4",
                        "--no-isolate")
    _, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    assert "densebench: eager: evaluate" in err and "eager batch 4 e2e: ok" in err
    p = run_cli_process("profile", "--device", "cpu",
                        "-m", "pool-tiny", "-v", "eager", "--iters", "2",
                        "--no-isolate")
    _, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    assert "densebench: eager: profile" in err and "densebench: eager: time breakdown" in err


@pytest.mark.slow
def test_a_sweep_sized_run_stores_in_time_linear_in_its_cells(workdir):
    # 300 cells from the test backend: 150 batch sizes x 2 modes
    rec = _sleepy_run(variants=["sleep-fast"], batch_sizes=list(range(1, 151)),
                      modes=["model", "e2e"], iters=2, min_iters=1, warmup="0")
    assert len(rec.cells) == 300 and all(c.ok for c in rec.cells)
    on_disk = sum((rec.path / f).stat().st_size
                  for f in ("run.json", "cells.jsonl", "results.csv"))
    # each cell is written once (a rewrite-everything store would write ~150x this)
    assert rec.bytes_written < 1.5 * on_disk
    again = load_run(rec.path)
    assert [c.to_dict() for c in again.cells] == [c.to_dict() for c in rec.cells]
    assert len(pd.read_csv(rec.path / "results.csv")) == 300
    # a crash mid-write leaves the finished cells readable
    text = (rec.path / "cells.jsonl").read_text()
    (rec.path / "cells.jsonl").write_text(text[: len(text) - 40])
    damaged = load_run(rec.path)
    assert len(damaged.cells) == 299 and "line 300 is damaged" in damaged.load_warnings[0]


def test_the_python_api(workdir):
    rec = densebench.benchmark(model="pool-tiny", variants=["sleep", "eager"],
                               batch_sizes=[1, 2], modes=["model"], iters=3,
                               executor="inline", name="api", repeats=1, device="cpu")
    df = densebench.load_run("api").frame()
    assert list(df["model_variant"]) == [c.variant for c in rec.cells]
    assert len(df) == 4 and df["p50_ms"].notna().all()
    csv = pd.read_csv(rec.path / "results.csv")
    assert list(csv.columns) == list(df.columns)
    assert csv["latency_ms"].tolist() == pytest.approx(df["latency_ms"].tolist())
    assert [r.id for r in densebench.list_runs()] == [rec.id]
    comp = densebench.compare_runs("api", rec)
    assert {c.verdict for c in comp.cells} == {"no significant change"}
    with pytest.raises(ConfigError) as e:
        densebench.RunConfig(threads=0)
    assert str(e.value) == "threads must be at least 1, got 0" and e.value.setting == "threads"


@pytest.mark.parametrize("args,needle", [
    (["--threads", "0"], "--threads must be at least 1, got 0"),
    (["-b", "0"], "--batch-size must be positive integers"),
    (["--scenario", "warp"], "--scenario 'warp' is unknown: choose from "),
    (["--executor", "cloud"], "--executor 'cloud' is unknown: choose from inline"),
    (["--min-time", "nan"], "--min-time 'nan' is not a duration"),
])
def test_core_errors_name_the_setting_and_the_cli_its_flag(cli, workdir, args, needle):
    r = cli("run", "--device", "cpu", "-m", "pool-tiny", "-v", "sleep", *args)
    assert r.exit_code == 2 and needle in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_a_plugin_that_cannot_be_imported_is_one_clear_error(cli, workdir, monkeypatch):
    monkeypatch.setenv("DENSEBENCH_PLUGINS", f"{SLEEPY},{workdir / 'missing.py'}")
    r = cli("variants")
    assert r.exit_code == 2 and "DENSEBENCH_PLUGINS names" in r.stderr
    assert "missing.py" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_a_plugin_scenario_owns_its_settings_from_the_cli_and_a_sweep(cli, workdir):
    """The test plugin's one-call scenario declares its own settings (calls, pause_ms) and
    default repeats; `--set` and a sweep's [settings] reach them with no edit inside
    densebench/, and a wrong or unknown setting is one clear line that stores nothing."""
    base = ["run", "-m", "pool-tiny", "-v", "sleep", "-b", "1,2", "--scenario", "one-call",
            "--device", "cpu", "--no-isolate", "--json"]
    r = cli(*base, "--set", "calls=3", "--set", "pause_ms=1", "--name", "three")
    assert r.exit_code == 0, r.stderr
    rec = load_run(RunStore().resolve("three"))
    assert rec.data["repeats"]["processes_per_cell"] == 1  # the scenario's own default
    assert [len(c.samples_ms) for c in rec.cells] == [3, 3]
    assert all(c.scenario_settings == {"calls": 3, "pause_ms": 1.0} for c in rec.cells)
    assert all(min(c.samples_ms) >= 4.0 + c.batch_size for c in rec.cells)  # sleep's time
    for args, needle in (
            (["--set", "calls=many"], "--set calls takes a whole number, got 'many'"),
            (["--set", "calls=0"], "--set calls must be at least 1, got 0"),
            (["--set", "nope=1"], "--set nope is not a setting of the one-call scenario: its "
                                  "settings are calls, pause_ms"),
            (["--set", "calls"], "--set 'calls': write NAME=VALUE"),
            (["--set", "target_qps=5"], "--set target_qps is a setting of the server "
                                        "scenario, not of one-call"),
            (["--max-batch", "2"], "--max-batch is a setting of the LoadGen scenarios "
                                   "(single-stream, multi-stream, server, offline), not of "
                                   "one-call")):
        before = sorted(p.name for p in (workdir / "runs").iterdir())
        r = cli(*base, *args)
        assert r.exit_code == 2 and needle in r.stderr, (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1
        assert sorted(p.name for p in (workdir / "runs").iterdir()) == before
    r = cli("run", "-m", "pool-tiny", "-v", "sleep", "--device", "cpu", "--set", "calls=2")
    assert r.exit_code == 2 and "--set calls is a setting of the one-call scenario, not of " \
        "closed-loop" in r.stderr
    sweep = workdir / "sweep.toml"
    sweep.write_text('name = "calls"\nmodels = ["pool-tiny"]\nvariants = ["sleep"]\n'
                     'scenarios = ["one-call", "closed-loop"]\n'
                     '[measure]\nwarmup = 0\niters = 2\n[settings]\ncalls = 4\n')
    r = cli("sweep", sweep)
    assert r.exit_code == 0, r.stderr
    by = {c.scenario: c for c in load_run(RunStore().resolve("calls")).cells}
    assert len(by["one-call"].samples_ms) == 4 and len(by["closed-loop"].samples_ms) == 2
    sweep.write_text(sweep.read_text().replace("calls = 4", "call = 4"))
    r = cli("sweep", sweep, "--dry-run")
    assert r.exit_code == 2 and "[settings] call is not a setting of the one-call" in r.stderr
    sweep.write_text(sweep.read_text().replace("call = 4", 'calls = "x"'))
    r = cli("sweep", sweep, "--dry-run")
    assert r.exit_code == 2 and "calls takes a whole number, got 'x'" in r.stderr


NUMPY_HEAD = Path(__file__).parent / "plugins" / "numpy_head.py"


@pytest.mark.slow
def test_a_plugin_adds_a_format_its_exporter_a_runtime_and_variants(workdir):
    """tests/plugins/numpy_head.py registers an artifact format (npz) with its exporter, a
    runtime that loads it and two variants over it; with sleepy.py's one-call scenario they
    export, run in worker processes, sweep and show their parity with no edit inside
    densebench/ (which never names the format). The real command, in processes of its own:
    the plugin is never registered in the test process, where `-v all` would find it."""
    plugins = {"DENSEBENCH_PLUGINS": f"{SLEEPY},{NUMPY_HEAD}"}

    def cli(*args):
        p = run_cli_process(*args, env=plugins)
        out, err = p.communicate(timeout=300)
        return SimpleNamespace(exit_code=p.returncode, stdout=out, stderr=err)

    package = Path(densebench.__file__).parent
    assert not [p for p in package.rglob("*.py") if "npz" in p.read_text()]
    r = cli("export", "-m", "pool-tiny", "--format", "npz", "--json")
    assert r.exit_code == 0, r.stderr
    art = json.loads(r.stdout)
    assert art["fields"]["format"] == "npz" and art["main"] == "head.npz"
    assert art["fields"]["versions"]["numpy"] and art["fields"]["layout"]
    assert art["parity"]["max_abs_error"] < 1e-5 and art["parity"]["top1_agreement"] == 1.0
    r = cli("export", "-m", "pool-tiny", "--format", "npz", "--precision", "int8")
    assert r.exit_code == 2 and "format npz does not support precision 'int8': it " \
        "supports fp32, fp16" in r.stderr
    r = cli("run", "-m", "pool-tiny", "-v", "numpy,numpy-fp16", "-b", "1,4", "--device",
            "cpu", "--repeats", "1", "--iters", "3", "--warmup", "1", "--name", "npz")
    assert r.exit_code == 0, r.stderr
    rec = load_run(RunStore().resolve("npz"))
    cells = {(c.variant, c.batch_size): c for c in rec.cells}
    assert set(cells) == {(v, b) for v in ("numpy", "numpy-fp16") for b in (1, 4)}
    assert all(c.status == "ok" and len(c.samples_ms) == 3 for c in cells.values())
    keys = {c.variant: rec.data["variants"][c.variant]["artifact"] for c in rec.cells}
    assert keys["numpy"] == art["key"][:12] and keys["numpy-fp16"] != keys["numpy"]
    assert all(within(c.precision, c.parity) for c in rec.cells), [c.parity for c in rec.cells]
    assert max(c.parity["max_abs_error"] for c in rec.cells if c.variant == "numpy") < 1e-5
    r = cli("run", "-m", "pool-tiny", "-v", "numpy", "-b", "2", "--device", "cpu",
            "--scenario", "one-call", "--set", "calls=3", "--name", "npz-once")
    assert r.exit_code == 0, r.stderr
    (once,) = load_run(RunStore().resolve("npz-once")).cells
    assert once.mode == "e2e" and len(once.samples_ms) == 3 and once.status == "ok"
    sweep = workdir / "npz.toml"
    sweep.write_text('name = "npz-sweep"\nmodels = ["pool-tiny"]\n'
                     'variants = ["numpy", "numpy-fp16"]\nscenarios = ["one-call"]\n'
                     'batch_sizes = [1, 4]\n[settings]\ncalls = 2\n')
    r = cli("sweep", sweep)
    assert r.exit_code == 0, r.stderr
    swept = load_run(RunStore().resolve("npz-sweep")).cells
    assert sorted((c.variant, c.batch_size) for c in swept) == sorted(cells)
    assert all(c.status == "ok" and len(c.samples_ms) == 2 for c in swept)
    rows = [artifact_row(a) for a in ArtifactCache().entries()]  # the cache needs no plugin
    assert sorted(r["precision"] for r in rows if r["format"] == "npz") == ["fp16", "fp32"]


@pytest.mark.slow
def test_a_plugin_installed_with_an_entry_point_is_loaded_everywhere(workdir, tmp_path):
    """A package that declares a `densebench.plugins` entry point (here a real dist-info on
    the path, as pip writes it) is loaded by the CLI and by every worker process, with no
    DENSEBENCH_PLUGINS."""
    site = tmp_path / "site"
    info = site / "ep_plugin-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: ep-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[densebench.plugins]\nep = ep_plugin\n")
    (site / "ep_plugin.py").write_text(
        "from densebench.variants import Variant, register_variant\n"
        "register_variant(Variant('eager-ep', 'eager', 'entry-point plugin: eager'))\n")
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(site),
                                                      os.environ.get("PYTHONPATH")]))}
    p = run_cli_process("variants", "--device", "cpu", "--json", env=env,
                        unset=("DENSEBENCH_PLUGINS",))
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    row = next(r for r in json.loads(out) if r["variant"] == "eager-ep")
    assert row["backend"] == "eager" and row["supported"] is True
    p = run_cli_process("run", "-m", "densenet-tiny", "--image-size", TINY_SIZE, "-v",
                        "eager-ep", "-b", "1", "--mode", "model", "--iters", "2", "--warmup",
                        "1", "--repeats", "1", "--device", "cpu", "--json", env=env,
                        unset=("DENSEBENCH_PLUGINS",))
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    (cell,) = json.loads(out)["cells"]
    assert cell["variant"] == "eager-ep" and cell["status"] == "ok"  # in its worker process
