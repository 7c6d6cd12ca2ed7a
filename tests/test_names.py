"""A run's name means its latest run; NAME~N the N-th before it (issue 24)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import densebench
from densebench.errors import StoreError
from densebench.results.store import RunStore
from densebench.run import RunConfig, run_benchmark


def _bench_run(name: str = "bench"):
    """A real run of the test runtime (the sleep variant), stored under ``name``."""
    return run_benchmark(RunConfig(model="pool-tiny", variants=["sleep"], batch_sizes=[1],
                                   modes=["model"], warmup="1", iters=3, device="cpu",
                                   executor="inline", repeats=1, name=name))


@pytest.fixture
def three(workdir):
    """Three runs named bench, oldest first (all within a second or two: their order comes
    from when each was created, not from the ids' random part)."""
    return [_bench_run().id for _ in range(3)]


def _shown(cli, ref):
    r = cli("show", ref, "--json")
    return r, (json.loads(r.stdout)["run"] if r.exit_code == 0 else None)


def test_a_name_is_its_latest_run_and_tilde_counts_back(cli, three):
    old, middle, new = three
    r, shown = _shown(cli, "bench")
    assert shown == new
    assert r.stderr.strip() == f"bench: the latest of 3 runs named bench, {new}"
    assert _shown(cli, "bench~0")[1] == new
    r, shown = _shown(cli, "bench~1")
    assert shown == middle and f"1 before the latest of 3 runs named bench, {middle}" in r.stderr
    assert _shown(cli, "bench~2")[1] == old
    assert _shown(cli, f"{new}~2")[1] == old  # an id counts back among the runs of its name
    assert _shown(cli, new)[0].stderr == ""  # an exact id needs no note
    for bad, says in (("bench~3", "only 3 runs are named 'bench' (bench~0 to bench~2)"),
                      ("bench~-1", "N a whole number of 0 or more"),
                      ("bench~x", "N a whole number of 0 or more"),
                      ("nothing~1", "no run 'nothing'")):
        r = cli("show", bad)
        assert r.exit_code == 1, bad
        assert says in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    # the Python API resolves the same way
    assert densebench.load_run("bench~1").id == middle
    assert densebench.load_run("bench").id == new
    with pytest.raises(StoreError, match="only 3 runs"):
        densebench.load_run("bench~5")


def test_compare_the_last_two_runs_of_a_name(cli, three):
    _, middle, new = three
    for args in (("bench~1", "bench"), ("bench",)):
        r = cli("compare", *args, "--format", "json")
        assert r.exit_code == 0, r.stderr
        comp = json.loads(r.stdout)
        assert comp["baseline"] == middle and comp["runs"] == [new], args
        assert len(comp["cells"]) == 1  # the one sleep cell, matched
    r = cli("compare", "bench~1", "--format", "json")  # one run: the one of its name before
    assert json.loads(r.stdout)["baseline"] == three[0]
    r = cli("compare", "bench~2")
    assert r.exit_code == 1 and "only 3 runs are named 'bench'" in r.stderr
    lone = _bench_run("lone").id
    r = cli("compare", "lone")
    assert r.exit_code == 1 and "only 1 run is named 'lone'" in r.stderr
    rec = RunStore().create("benchmark", None, {}, {})
    r = cli("compare", rec.id)
    assert r.exit_code == 2 and "has no name" in r.stderr  # a usage error
    assert cli("compare", lone, "bench", "--format", "json").exit_code == 0


def test_runs_name_lists_its_runs_newest_first_with_their_references(cli, three):
    listed = json.loads(cli("runs", "bench", "--json").stdout)
    assert [r["ref"] for r in listed] == ["bench", "bench~1", "bench~2"]
    assert [r["id"] for r in listed] == three[::-1]
    table = cli("runs", "bench").stdout
    assert "runs named bench" in table and "bench~2" in table
    assert all(i in table for i in three)
    r = cli("runs", "nobody")
    assert r.exit_code == 1 and "no run is named 'nobody'" in r.stderr


def test_a_damaged_run_keeps_its_place_and_says_what_is_wrong(cli, three):
    old, middle, new = three
    f = RunStore().root / middle / "run.json"
    f.write_text(f.read_text()[:300])  # cut short, as a crash while writing would
    listed = json.loads(cli("runs", "bench", "--json").stdout)
    assert [(r["ref"], r["id"], r["status"]) for r in listed] == [
        ("bench", new, listed[0]["status"]), ("bench~1", middle, "damaged"),
        ("bench~2", old, listed[2]["status"])]
    r = cli("show", "bench~1")
    assert r.exit_code == 1
    assert f"bench~1 is run {middle}, which cannot be read" in r.stderr
    assert "not valid JSON" in r.stderr
    assert _shown(cli, "bench~2")[1] == old  # the damaged run still counts
    assert f.read_text()  # naming it changed nothing


def test_an_abandoned_run_resolves_and_says_so(cli, three):
    f = RunStore().root / three[-1] / "run.json"
    data = json.loads(f.read_text())
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    data.update(status="running", owner={**data["owner"], "pid": dead.pid})
    f.write_text(json.dumps(data))
    r, shown = _shown(cli, "bench")
    assert shown == three[-1]
    assert "is abandoned" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert os.path.exists(f)


def test_a_name_that_is_also_an_id_prefix_the_id_wins(cli, three):
    store = RunStore()
    other = store.create("benchmark", "placeholder", {}, {})
    ids = [*three, other.id]
    # the shortest prefix of the oldest id that no other id has
    prefix = next(three[0][:k] for k in range(1, len(three[0]) + 1)
                  if sum(i.startswith(three[0][:k]) for i in ids) == 1)
    f = other.path / "run.json"
    f.write_text(f.read_text().replace('"name": "placeholder"', f'"name": "{prefix}"'))
    r, shown = _shown(cli, prefix)
    assert shown == three[0]
    assert f"the id prefix of run {three[0]}" in r.stderr
    assert f"{prefix}~0 is the latest" in r.stderr
    assert _shown(cli, f"{prefix}~0")[1] == other.id
    # a prefix of several ids stays refused, with the candidates
    shared = next(three[0][:k] for k in range(len(three[0]), 0, -1)
                  if sum(i.startswith(three[0][:k]) for i in ids) > 1)
    r = cli("show", shared)
    assert r.exit_code == 1 and f"matches {sum(i.startswith(shared) for i in ids)}" \
        in r.stderr
