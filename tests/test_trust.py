"""Numbers that hold from one run to the next (worker processes as the unit of repetition,
interleaved rounds), and the faults found by a careless or hostile user."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import psutil
import pytest

from densebench.artifacts import ArtifactCache
from densebench.exporters import ExportSpec, export_artifact
from densebench.measure.stats import bootstrap_ci
from densebench.results.repeats import merged
from densebench.results.store import RunStore, load_run

from .conftest import TINY_SIZE, run_cli_process

SLEEPY_RUN = ["run", "-m", "pool-tiny", "-b", "1", "--mode", "model", "--iters", "15",
              "--warmup", "2", "--device", "cpu"]


def _run(cli, *args, env=None, monkeypatch=None):
    if env:
        for k, v in env.items():
            monkeypatch.setenv(k, v)
    r = cli(*args, "--json")
    for k in env or {}:
        monkeypatch.delenv(k)
    assert r.exit_code == 0, r.stderr
    return RunStore().load(json.loads(r.stdout)["run"])


@pytest.mark.slow
def test_repeats_are_worker_processes_in_interleaved_rounds(cli, workdir):
    rec = _run(cli, *SLEEPY_RUN, "-v", "sleep,sleep-fast", "--repeats", "2")
    order = [(c.variant, c.repeat) for c in rec.cells]
    assert order == [("sleep", 0), ("sleep-fast", 0), ("sleep", 1), ("sleep-fast", 1)]
    assert rec.data["repeats"] == {"processes_per_cell": 2, "interleaved": True,
                                   "independent": True}
    logs = {p.name for p in (rec.path / "logs").iterdir()}
    assert logs == {f"{v}.{i}.log" for v in ("sleep", "sleep-fast") for i in (1, 2)}
    (sleep,) = [c for c in merged(rec.cells) if c.variant == "sleep"]
    assert sleep.stats["processes"] == 2 and len(sleep.process_samples) == 2
    assert sleep.stats["n"] == 30 and len(sleep.stats["process_p50_ms"]) == 2
    assert "2 worker processes per cell" in " ".join(cli("show", rec.id).stdout.split())


def test_the_interval_widens_with_the_spread_between_processes(cli, workdir, monkeypatch):
    rec = _run(cli, *SLEEPY_RUN, "-v", "sleep", "--repeats", "3",
               env={"SLEEPY_PROCESS_FACTORS": "0.6,1.0,1.4",
                    "SLEEPY_PROCESS_COUNTER": str(workdir / "processes")},
               monkeypatch=monkeypatch)
    (c,) = merged(rec.cells)
    st = c.stats
    assert st["processes_disagree"] is True
    assert st["between_process_spread"] > 5 * st["within_process_halfwidth"]
    pooled = bootstrap_ci(np.asarray(c.samples_ms), lambda m: np.median(m, axis=1))
    process_level = st["p50_ci_ms"]
    assert process_level[1] - process_level[0] > 2 * (pooled[1] - pooled[0])
    shown = cli("show", rec.id).stdout
    # '!' comes before '~' when the host was busy during the cell (a loaded CI host)
    assert re.search(r"\bsleep!?~", shown) and "worker processes disagree" in shown


def test_compare_calls_a_real_2x_slowdown_and_not_the_noise(cli, workdir, monkeypatch):
    inline = [*SLEEPY_RUN, "-v", "sleep", "--repeats", "3", "--no-isolate"]
    _run(cli, *inline, "--name", "a")
    _run(cli, *inline, "--name", "b")
    _run(cli, *inline, "--name", "slow", env={"SLEEPY_SCALE": "2"}, monkeypatch=monkeypatch)
    rows = json.loads(cli("compare", "a", "b", "--format", "json").stdout)["rows"]
    assert [r["verdict"] for r in rows] == ["no significant change"]
    j = json.loads(cli("compare", "a", "slow", "--format", "json").stdout)
    (row,) = j["rows"]
    assert row["verdict"] == "slower" and row["ci_low"] > 1.5 and row["ratio"] > 1.8
    assert not any("one worker process" in w for w in j["environment_warnings"])


def test_compare_says_when_a_run_had_one_process(cli, workdir):
    _run(cli, *SLEEPY_RUN, "-v", "sleep", "--repeats", "1", "--name", "one", "--no-isolate")
    _run(cli, *SLEEPY_RUN, "-v", "sleep", "--repeats", "3", "--name", "three", "--no-isolate")
    r = cli("compare", "one", "three")
    assert r.exit_code == 0
    assert "one worker process: its intervals know only the noise between iterations" \
        in " ".join(r.stderr.split())


def _split_by_repeat(rec, repeats: set[int], name: str):
    """A copy of ``rec`` holding only the worker processes whose repeat is in ``repeats``:
    a run whose processes were interleaved in time with the rest's."""
    import shutil

    dst = rec.path.parent / f"{rec.id}-{name}"
    shutil.copytree(rec.path, dst)
    data = json.loads((dst / "run.json").read_text())
    (dst / "run.json").write_text(json.dumps({**data, "id": dst.name, "name": name}))
    lines = (dst / "cells.jsonl").read_text().splitlines()
    keep = [ln for ln in lines if json.loads(ln)["repeat"] in repeats]
    (dst / "cells.jsonl").write_text("\n".join(keep) + "\n")


@pytest.mark.slow
def test_self_compare_of_real_densenet_tiny_processes_calls_no_change(cli, workdir):
    """Two sets of four worker processes of real densenet-tiny, measured in interleaved
    rounds, compared as two runs: what differs between them is what differs between
    processes, and the intervals know it. (Two runs started minutes apart on this shared
    machine also differ by the host's drift, which is a real change and is called.)

    The processes are dealt A B B A A B B A, so that a steady drift of the host and an
    effect that alternates from one process to the next fall on both sets alike: split
    into even and odd processes, a CI host once called such a pair faster."""
    rec = _run(cli, "run", "--device", "cpu",
               "-m", "densenet-tiny", "--image-size", TINY_SIZE, "-v", "eager",
               "-b", "2", "--mode", "model", "--iters", "30", "--warmup", "5", "--repeats", "8")
    _split_by_repeat(rec, {0, 3, 4, 7}, "a")
    _split_by_repeat(rec, {1, 2, 5, 6}, "b")
    j = json.loads(cli("compare", "a", "b", "--format", "json").stdout)
    (row,) = j["rows"]
    assert row["verdict"] == "no significant change", row
    assert row["ci_low"] < 1 < row["ci_high"] or abs(row["ratio"] - 1) <= 0.05


# ------------------------------------------------------------------ faults


def _workers(pid):
    try:
        return [p for p in psutil.Process(pid).children(recursive=True)
                if "densebench.worker" in " ".join(p.cmdline())]
    except psutil.NoSuchProcess:
        return []


def _wait_for_worker(p, timeout=90):
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = _workers(p.pid)
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError("no worker started")


def _long_run():
    return run_cli_process(*SLEEPY_RUN[:1], "-m", "pool-tiny", "-v", "sleep", "-b", "1",
                           "--mode", "model", "--warmup", "60s", "--repeats", "1",
                           "--device", "cpu")


def _gone(procs, timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if not [w for w in procs if w.is_running() and w.status() != psutil.STATUS_ZOMBIE]:
            return True
        time.sleep(0.1)
    return False


def test_a_worker_dies_with_its_parent_and_the_run_shows_abandoned(cli, workdir):
    p = _long_run()
    workers = _wait_for_worker(p)  # in its 60 s warm-up
    p.kill()  # SIGKILL: no handler runs in the parent
    p.wait()
    assert _gone(workers), "the worker outlived its parent"
    rows = json.loads(cli("runs", "--json").stdout)
    assert [r["status"] for r in rows] == ["abandoned"]
    assert "abandoned" in cli("runs").stdout


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_and_sighup_are_handled_like_ctrl_c(workdir, sig):
    p = _long_run()
    workers = _wait_for_worker(p)
    p.send_signal(sig)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 128 + sig
    assert f"interrupted ({signal.Signals(sig).name})" in err and "incomplete" in err
    assert _gone(workers)
    (run_dir,) = (workdir / "runs").iterdir()
    assert load_run(run_dir).status == "incomplete"


def test_sigterm_during_the_export_phase_kills_the_exports(workdir, monkeypatch):
    """Two exports side by side (each a minute long), SIGTERM: both export workers are
    killed, the run is marked incomplete, nothing half-built is left as an entry."""
    if (psutil.cpu_count() or 1) < 2:
        pytest.skip("exports run side by side only with two cores or more")
    monkeypatch.setenv("EXPORT_PROBE", "slow")
    p = run_cli_process("run", "--device", "cpu",
                        "-m", "export-probe", "-v", "onnxruntime,openvino", "-b", "1",
                        "--mode", "model", "--repeats", "1")
    deadline = time.time() + 90
    while len(_workers(p.pid)) < 2 and time.time() < deadline:
        time.sleep(0.1)
    workers = _workers(p.pid)
    assert len(workers) == 2, "the two exports did not start side by side"
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 128 + signal.SIGTERM, err
    assert "interrupted (SIGTERM)" in err and "incomplete" in err
    assert _gone(workers)
    (run_dir,) = (workdir / "runs").iterdir()
    assert load_run(run_dir).status == "incomplete"
    assert ArtifactCache().entries() == []


def test_a_manifest_path_outside_its_entry_makes_the_entry_corrupt(cli, workdir, tmp_path):
    spec = ExportSpec("densenet-tiny", "onnx", "fp32", image_size=TINY_SIZE)
    art, _ = export_artifact(spec, ArtifactCache())
    outside = tmp_path / "elsewhere.onnx"
    outside.write_bytes(art.main_file.read_bytes())
    manifest = json.loads((art.path / "manifest.json").read_text())
    for bad in ("../../elsewhere.onnx", str(outside)):
        m = dict(manifest, main=bad, files={bad: manifest["files"][manifest["main"]]})
        (art.path / "manifest.json").write_text(json.dumps(m))
        r = cli("artifacts", "verify")
        text = " ".join((r.stdout + r.stderr).split())
        assert r.exit_code == 1 and "not a file inside the entry" in text
        r = cli("export", "-m", "densenet-tiny", "--image-size", TINY_SIZE, "--format", "onnx")
        assert r.exit_code != 0 and "not a file inside the entry" in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1


def test_damaged_and_unusual_runs_give_one_line_not_a_traceback(cli, workdir):
    good = _run(cli, *SLEEPY_RUN, "-v", "sleep", "--repeats", "1", "--name", "good")
    bad = workdir / "runs" / "20000101-000000-dead"
    bad.mkdir()
    (bad / "run.json").write_text(json.dumps({"schema": "densebench.run", "schema_version": 1,
                                              "id": bad.name, "name": "old"}))
    listing = json.loads(cli("runs", "--json").stdout)
    assert {r["status"] for r in listing} == {"complete", "damaged"}
    assert "no list of cells" in next(r["reason"] for r in listing if r["status"] == "damaged")
    assert "damaged" in cli("runs").stdout and good.id in cli("runs").stdout
    for args in (["show", "old"], ["compare", "old", "good"], ["report", "old"]):
        r = cli(*args)
        assert r.exit_code == 1 and "no list of cells" in r.stderr, (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1
    # an eval with fewer images than its batch: no timing, and nothing crashes on it
    r = cli("eval", "--device", "cpu",
            "-m", "pool-tiny", "-v", "eager", "--limit", "8", "--name", "short")
    assert r.exit_code == 0, r.stderr
    assert load_run(RunStore().resolve("short")).cells[0].stats is None
    assert cli("show", "short").exit_code == 0
    r = cli("compare", "short", "short")
    assert "nan" not in r.stdout + r.stderr and r.exit_code == 1
    assert "no cell in common" in r.stderr
    r = cli("report", "short", "--out", workdir / "rep")
    assert r.exit_code == 1 and "nothing to plot" in r.stderr


def test_a_reused_name_is_its_latest_run_and_a_shared_prefix_is_refused(cli, workdir):
    first = _run(cli, *SLEEPY_RUN, "-v", "sleep", "--repeats", "1", "--name", "dup")
    second = _run(cli, *SLEEPY_RUN, "-v", "sleep", "--repeats", "1", "--name", "dup")
    r = cli("show", "dup", "--json")  # a name is not ambiguous: its newest run, said so
    assert r.exit_code == 0 and json.loads(r.stdout)["run"] == second.id
    assert f"the latest of 2 runs named dup, {second.id}" in r.stderr
    r = cli("show", first.id[:4])
    assert r.exit_code == 1 and "id prefix" in r.stderr and "matches 2 runs" in r.stderr
    assert cli("show", first.id).exit_code == 0


@pytest.mark.parametrize("args,needle", [
    (["--threads", "100000"], "--threads 100000 is more than densebench allows"),
    (["--warmup", "1e9s"], "--warmup '1e9s'"),
    (["--min-time", "inf"], "--min-time 'inf' is not a duration"),
    (["-b", "1,1"], "--batch-size names 1 more than once"),
    (["--name", "two\nlines"], "--name 'two\\nlines'"),
    (["--repeats", "0"], "--repeats must be between 1 and 100"),
])
def test_limits(cli, workdir, args, needle):
    r = cli("run", "--device", "cpu", "-m", "pool-tiny", "-v", "sleep", "--iters", "2", *args)
    assert r.exit_code == 2 and needle in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_more_threads_than_cores_is_warned_and_recorded(cli, workdir):
    threads = (os.cpu_count() or 1) * 4
    r = cli("run", "--device", "cpu",
            *SLEEPY_RUN[1:], "-v", "sleep", "--repeats", "1", "--threads", threads)
    assert r.exit_code == 0
    assert f"warning: threads {threads} is more than the" in r.stderr
    (run_dir,) = (workdir / "runs").iterdir()
    assert "logical cores" in load_run(run_dir).data["warnings"][0]


def test_runs_directory_that_is_a_file(cli, workdir, monkeypatch):
    (workdir / "afile").write_text("")
    monkeypatch.setenv("DENSEBENCH_RUNS", str(workdir / "afile"))
    for args in (["run", "--device", "cpu",
                  "-m", "pool-tiny", "-v", "sleep", "--iters", "2"], ["runs"]):
        r = cli(*args)
        assert r.exit_code == 1 and "is a file, not a directory" in r.stderr


def test_a_run_whose_every_cell_failed_exits_non_zero(cli, workdir):
    r = cli("run", "--device", "cpu",
            "-m", "pool-tiny", "-v", "sleep", "-b", "1", "--iters", "100000000",
            "--timeout", "4", "--repeats", "1", "--mode", "model", "--json")
    assert r.exit_code == 1 and "every cell of run" in r.stderr
    (c,) = json.loads(r.stdout)["cells"]
    assert c["status"] == "failed" and "timed out after 4 s" in c["error"]


@pytest.mark.slow
def test_a_busy_host_is_flagged(cli, workdir):
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        rec = _run(cli, "run", "--device", "cpu",
                   "-m", "pool-tiny", "-v", "eager", "-b", "8", "--mode", "model",
                   "--min-time", "2", "--repeats", "1", "--threads", "1")
    finally:
        burner.kill()
        burner.wait()
    (c,) = rec.cells
    assert c.busy and c.host_load["others_cores"] > 0.5
    assert "eager!" in cli("show", rec.id).stdout and "busy host" in cli("show", rec.id).stdout
    r = cli("compare", rec.id, rec.id)
    assert "busy host" in r.stderr
