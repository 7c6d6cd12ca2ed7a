"""`densebench sweep` on this machine: the file, its grid, the run it stores, resuming,
and bad input. The Ray executor's tests are in test_ray.py."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

import densebench.devices
from densebench.results.store import RunStore
from densebench.sweep import load_sweep, parse_sweep

from .conftest import REPO, blocked_at, plain_sleep_ms, run_cli_process, wait_for

FAST = """
[measure]
warmup = 1
min_time = 0.05
min_iters = 3
"""


def _write(workdir: Path, text: str, name: str = "sweep.toml") -> Path:
    p = workdir / name
    p.write_text(text)
    return p


def _stored_run(**kw):
    from densebench.run import RunConfig, run_benchmark

    return run_benchmark(RunConfig(model="pool-tiny", variants=["sleep"], batch_sizes=[1],
                                   modes=["model"], warmup="0", iters=2, repeats=1,
                                   executor="inline", device="cpu", **kw))


def _stored(workdir: Path) -> dict:
    """Every file under the run store, with its content: what must not change."""
    root = workdir / "runs"
    return {str(p): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()} \
        if root.exists() else {}


def test_the_grid_takes_exclusions_inclusions_and_interleaves_repeats():
    sw = parse_sweep({
        "models": ["pool-tiny"], "variants": ["sleep", "sleep-fast"], "batch_sizes": [1, 2, 4],
        "image_sizes": [8, 16], "modes": ["model", "e2e"],
        "measure": {"repeats": 2},
        "exclude": [{"variant": "sleep-fast", "batch_size": [2, 4]}],
        "include": [{"variant": "sleep-fast", "batch_size": 8, "image_size": 16}],
    })
    cells = sw.cells()
    # 2 variants x 3 batches x 2 sizes x 2 modes = 24, less sleep-fast at 2 and 4 (8),
    # plus sleep-fast at batch 8 and 16 px (model mode: the modes' first value)
    assert len(cells) == 24 - 8 + 1
    assert not [c for c in cells if c.variant == "sleep-fast" and c.batch_size in (2, 4)]
    added = [c for c in cells if c.batch_size == 8]
    assert [(c.variant, c.image_size, c.mode) for c in added] == [("sleep-fast", 16, "model")]
    assert sw.varying() == ["image_size"]
    jobs = sw.jobs(Path("."), {"hostname": "h"})
    groups = len(sw.groups())
    assert groups == 4 and len(jobs) == 2 * groups
    # rounds interleaved: every group once (repeat 0), then every group again (repeat 1)
    assert [j.cells[0]["repeat"] for j in jobs] == [0] * groups + [1] * groups
    assert all(c["axes"] == {"image_size": c["axes"]["image_size"]} for j in jobs
               for c in j.cells)
    assert len({j.name for j in jobs}) == len(jobs)


def test_the_example_sweep_file_reads_and_plans(cli, workdir):
    sw = load_sweep(REPO / "examples" / "sweep.toml")
    assert len(sw.cells()) == 8 and sw.placement == "each"
    r = cli("sweep", REPO / "examples" / "sweep.toml", "--dry-run", "--json")
    assert r.exit_code == 0, r.stderr
    plan = json.loads(r.stdout)
    assert len(plan["cells"]) == 8 and plan["estimated_s"] > 0
    assert not (workdir / "runs").exists()  # a dry run stores nothing


@pytest.mark.slow
def test_a_local_sweep_is_one_run_shown_by_host_reported_and_resumed(cli, workdir,
                                                                     monkeypatch):
    f = _write(workdir, """
name = "local"
models = ["pool-tiny"]
variants = ["sleep", "sleep-fast", "sleep-bf16"]
batch_sizes = [1, 2]
threads = [1]
""" + FAST)
    r = cli("sweep", f, "--dry-run")
    assert r.exit_code == 0 and "6 cells in 3 worker processes" in r.stdout, r.stdout
    assert "estimated time: about" in r.stdout
    monkeypatch.setenv("SLEEPY_FAIL", "sleep-fast")  # a runtime that breaks on this machine
    r = cli("sweep", f)
    # sleep-bf16 needs a feature this machine lacks: skipped, not failed
    assert r.exit_code == 1 and "2 of 6 cells failed" in r.stderr, r.stderr
    assert "densebench sweep --resume" in r.stderr
    rec = RunStore().load("local")
    assert rec.data["kind"] == "sweep" and rec.status == "incomplete"
    by = {(c.variant, c.batch_size): c for c in rec.cells}
    assert {k: c.status for k, c in by.items()} == {
        ("sleep", 1): "ok", ("sleep", 2): "ok", ("sleep-fast", 1): "failed",
        ("sleep-fast", 2): "failed", ("sleep-bf16", 1): "skipped",
        ("sleep-bf16", 2): "skipped"}
    assert "lacks" in by[("sleep-bf16", 1)].error and "SLEEPY_FAIL" in by[("sleep-fast", 1)].error
    w = by[("sleep", 1)].worker  # the sweep's threads, in the worker's environment too
    assert w["threads"] == 1 and w["torch_threads"] == 1
    assert w["env"]["OMP_NUM_THREADS"] == "1" and w["env"]["MKL_NUM_THREADS"] == "1"
    assert w["env"]["CUDA_VISIBLE_DEVICES"] == ""
    # sleep (4 ms + 1 ms per image) takes what it sleeps: never less, not twice that
    assert 6.0 <= by[("sleep", 2)].stats["p50_ms"] < 1.6 * plain_sleep_ms(6.0)

    monkeypatch.delenv("SLEEPY_FAIL")
    before = (rec.path / "cells.jsonl").read_text().splitlines()
    r = cli("sweep", "--resume", "local")
    assert r.exit_code == 0, r.stderr
    after = (rec.path / "cells.jsonl").read_text().splitlines()
    assert after[:len(before)] == before  # appended, nothing rewritten
    rerun = [json.loads(x) for x in after[len(before):]]
    assert sorted((c["variant"], c["batch_size"]) for c in rerun) == [
        ("sleep-fast", 1), ("sleep-fast", 2)]  # only what had failed; skipped stays skipped
    rec = RunStore().load("local")
    assert rec.status == "complete" and len(rec.cells) == 6
    assert sorted(c.status for c in rec.cells) == ["ok"] * 4 + ["skipped"] * 2
    assert len(rec.data["resumed"]) == 1

    r = cli("show", "local")
    assert r.exit_code == 0 and "host " in r.stdout and "sleep-fast" in r.stdout
    assert "skipped" in r.stdout
    r = cli("report", "local", "--out", workdir / "report")
    assert r.exit_code == 0, r.stderr
    assert (workdir / "report" / "heatmap.png").stat().st_size > 10_000
    assert (workdir / "report" / "pareto.png").stat().st_size > 10_000
    r = cli("compare", "local", "--by", "host")  # one machine: nothing side by side
    assert r.exit_code == 2 and "one host only" in r.stderr


def test_the_pareto_front_keeps_what_nothing_beats():
    from densebench.report.plots import pareto_front

    pts = [(1.0, 100.0), (2.0, 90.0), (2.0, 300.0), (5.0, 250.0), (9.0, 400.0)]
    assert pareto_front(pts) == [0, 2, 4]


@pytest.mark.parametrize("text,needle", [
    ("models = [\"pool-tiny\"\nvariants = 3", "not valid TOML: "),
    ("batchsizes = [1]", "unknown key 'batchsizes': the axes are models, variants, "
                         "batch_sizes"),
    ('variants = ["sleeep"]', "variants: unknown variant 'sleeep': did you mean sleep"),
    ('variants = ["all"]', "name the variants"),
    ('modes = ["fast"]', "unknown mode 'fast': choose from model, e2e"),
    ('devices = ["tpu"]', "unknown device 'tpu'"),
    ("batch_sizes = [0]", "batch_sizes must be positive integers, got 0"),
    ('models = ["pool-tiny"]\nvariants = ["sleep"]\n[[exclude]]\nvariant = "sleep"',
     "the grid is empty after the [[exclude]] tables"),
    ('[[exclude]]\nbatch = 1', "[[exclude]] has unknown key 'batch'"),
    ('[measure]\nmin_time = -1', "[measure] min_time -1 must be a positive duration"),
    ('[targets]\nplacement = "everywhere"', "placement must be one of each, any"),
    ('[prices]\nmyhost = "cheap"', "[prices] myhost = 'cheap' must be a positive number"),
    ('[prices]\nmyhost = -1', "[prices] myhost = -1 must be a positive number"),
    ('models = ["pool-tiny"]\nvariants = ["sleep"]\ndevices = ["cuda"]',
     "need a GPU and this machine has none"),
])
def test_bad_sweep_files_are_one_line_and_store_nothing(cli, workdir, text, needle):
    if "cuda" in text and densebench.devices.cuda_available():
        pytest.skip("this host has a GPU: a cuda cell is not bad input here")
    _stored_run()  # something stored already
    before = _stored(workdir)
    r = cli("sweep", _write(workdir, text))
    assert r.exit_code == 2, (r.exit_code, r.stderr)
    assert needle in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert _stored(workdir) == before


def test_a_parse_error_names_line_and_column(cli, workdir):
    r = cli("sweep", _write(workdir, 'models = ["pool-tiny"]\nvariants = ["sleep",, ]\n'))
    assert r.exit_code == 2 and "(at line 2, column" in r.stderr, r.stderr


@pytest.mark.slow
def test_a_sweep_stopped_by_sigterm_keeps_its_cells_and_resumes(workdir, tmp_path):
    """SIGTERM (a batch scheduler's stop) while the second cell group measures: the first
    group's cells stay, the sweep is incomplete and says how to resume, exit 143; the
    resume runs only what is missing, into the same run."""
    f = _write(workdir, 'name = "termed"\nmodels = ["pool-tiny"]\n'
                        'variants = ["sleep", "sleep-fast"]\nbatch_sizes = [1, 2]\n' + FAST)
    env, ready = blocked_at("sleep-fast", "call3", tmp_path)
    p = run_cli_process("sweep", f, env=env)
    wait_for(ready, p)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 143 and "densebench sweep --resume" in err, err
    rec = RunStore().load("termed")
    assert rec.status == "incomplete"
    kept = sorted((c.variant, c.batch_size) for c in rec.cells if c.ok)
    assert kept == [("sleep", 1), ("sleep", 2)]
    before = (rec.path / "cells.jsonl").read_text().splitlines()
    p = run_cli_process("sweep", "--resume", "termed")
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    assert (rec.path / "cells.jsonl").read_text().splitlines()[:len(before)] == before
    rec = RunStore().load("termed")
    assert rec.status == "complete" and len(list((workdir / "runs").iterdir())) == 1
    assert sorted((c.variant, c.batch_size) for c in rec.cells if c.ok) == [
        (v, b) for v in ("sleep", "sleep-fast") for b in (1, 2)]


def test_resume_takes_sweeps_only_and_a_missing_file_is_named(cli, workdir):
    _stored_run(name="plain")
    r = cli("sweep", "--resume", "plain")
    assert r.exit_code == 2 and "is a benchmark run, not a sweep" in r.stderr, r.stderr
    r = cli("sweep", workdir / "nope.toml")
    assert r.exit_code == 2 and "nope.toml does not exist" in r.stderr
    r = cli("sweep")
    assert r.exit_code == 2 and "sweep needs a sweep file" in r.stderr


def test_without_ray_the_ray_executor_says_how_to_get_it(workdir):
    """Run where `import ray` fails (a clean interpreter with ray hidden)."""
    import subprocess
    import sys

    f = _write(workdir, 'models = ["pool-tiny"]\nvariants = ["sleep"]\n')
    code = ("import sys; sys.modules['ray'] = None\n"
            "from densebench.cli import main\n"
            f"sys.argv = ['densebench', 'sweep', {str(f)!r}, '--executor', 'ray']\n"
            "main()")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 2, p.stderr
    assert "pip install 'densebench[ray]'" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr


def test_an_unreachable_cluster_is_one_line_naming_the_address(cli, workdir):
    f = workdir / "s.toml"
    f.write_text('models = ["pool-tiny"]\nvariants = ["sleep"]\n')
    import time

    t0 = time.monotonic()
    r = cli("sweep", f, "--executor", "ray", "--address", "127.0.0.1:9")
    assert r.exit_code == 2 and "no Ray cluster reachable at 127.0.0.1:9" in r.stderr
    assert "ray start --head" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert time.monotonic() - t0 < 60
    assert not (workdir / "runs").exists()


def test_cells_with_axes_measured_on_another_host_are_reported_once(workdir):
    """A sweep's planned cells carry the host they were planned for and the axes the sweep
    varies; the worker stamps the host it really ran on (a cluster node). Matching what the
    worker reported against the plan leaves the host out, and only the host: every cell is
    reported once and none is failed as missing."""
    from densebench.executors import get_executor

    sw = parse_sweep({"models": ["pool-tiny"], "variants": ["sleep"], "batch_sizes": [1, 2],
                      "image_sizes": [8, 16], "modes": ["model"], "devices": ["cpu"],
                      "measure": {"warmup": 0, "iters": 2, "repeats": 1}})
    run_dir = workdir / "runs" / "r"
    run_dir.mkdir(parents=True)
    planned_on = {"hostname": "planned-elsewhere", "machine_id": "not-this-machine"}
    jobs = sw.jobs(run_dir, planned_on)
    assert {c["axes"]["image_size"] for j in jobs for c in j.cells} == {8, 16}
    events = []
    executor = get_executor("subprocess", log_dir=run_dir / "logs")
    for job in jobs:
        executor.run(job, events.append)
    cells = [e["cell"] for e in events if e.get("event") == "cell"]
    assert len(cells) == sum(len(j.cells) for j in jobs) == 4
    assert all(c["status"] == "ok" for c in cells), [c["error"] for c in cells]
    assert all(c["host"]["hostname"] != "planned-elsewhere" for c in cells)


def test_cells_with_axes_compare_across_hosts_axis_by_axis(workdir):
    """compare --by host matches a sweep's cells by their key without the host: the same
    variant, batch size and image size on two hosts, each image size apart."""
    from densebench.compare import compare_runs
    from densebench.environment import fingerprint
    from densebench.measure.stats import summarize
    from densebench.report.tables import by_host
    from densebench.results.schema import Cell

    rec = RunStore().create("sweep", "two-hosts", {}, fingerprint())
    # host b is 2x slower at 8 px and as fast at 16 px
    for host, slow8 in (("a", 1.0), ("b", 2.0)):
        for size, ms in ((8, 5.0 * slow8), (16, 9.0)):
            samples = [ms * (1 + 0.01 * ((i * 7) % 5 - 2)) for i in range(60)]
            rec.add_cell(Cell(model="pool-tiny", variant="sleep", batch_size=1, mode="model",
                              device="cpu", host={"hostname": host, "machine_id": host},
                              axes={"image_size": size}, samples_ms=samples,
                              stats=summarize(samples, 1)))
    rec.finish("complete")
    comp = compare_runs(by_host([RunStore().load(rec.id)]))
    assert comp.runs == ["b"] and not comp.unmatched
    by_size = {c.ratio: c.verdict for c in comp.cells}
    assert len(comp.cells) == 2
    assert sorted(round(r, 2) for r in by_size) == [1.0, 2.0]
    assert by_size[max(by_size)] == "slower"
