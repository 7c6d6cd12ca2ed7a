"""A simulated two-node Ray cluster (``ray.cluster_utils.Cluster``): nodes with different
labels, and a CPU feature only one of them has. Cells go where ``[targets]`` says, each
records its node, and the same cells on both nodes compare side by side."""

from __future__ import annotations

import platform

import pytest

from densebench.report.tables import host_pivot
from densebench.results.store import RunStore
from densebench.sweep import parse_sweep, run_sweep

from .conftest import environment_kept

ray = pytest.importorskip("ray", reason="the ray extra is not installed")
pytestmark = pytest.mark.ray

FAST = {"warmup": 1, "min_time": 0.05, "min_iters": 3}


@pytest.fixture(scope="module")
def two_nodes():
    from ray.cluster_utils import Cluster

    with environment_kept():
        c = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 1, "resources": {"small": 1}, "include_dashboard": False})
        c.add_node(num_cpus=1, resources={"big": 1}, env_vars={"SLEEPY_FLAGS": "bf16"})
        ray.init(address=c.address, log_to_driver=False, logging_level="ERROR")
        c.wait_for_nodes()
        yield c
        ray.shutdown()
        c.shutdown()


def test_cells_go_where_the_targets_say_and_compare_across_nodes(two_nodes, workdir, cli):
    sw = parse_sweep({
        "name": "two", "models": ["pool-tiny"],
        "variants": ["sleep", "sleep-fast", "sleep-bf16"], "batch_sizes": [1, 2],
        "measure": FAST,
        "targets": {"variant": {"sleep-fast": ["big"]}},  # the rest: every node
        # the big node costs 100 times as much: the small one is cheaper per image for
        # every cell both run, whatever the measured throughputs (a loaded host moves
        # them by far less than 100x)
        "prices": {f"{platform.node()}#small": 0.1, f"{platform.node()}#big": 10.0},
    })
    rec = run_sweep(sw, executor="ray", cells_per_node=2)
    nodes = {n["node"]: n for n in rec.data["cluster"]["nodes"]}
    assert sorted(n["labels"] for n in nodes.values()) == [["big"], ["small"]]
    small = next(k for k, n in nodes.items() if n["labels"] == ["small"])
    big = next(k for k, n in nodes.items() if n["labels"] == ["big"])
    where = {(c.variant, c.batch_size, c.host["node"]): c for c in rec.cells}
    # each: sleep and sleep-bf16 on both nodes, sleep-fast only on the node labelled big
    assert sorted(where) == sorted(
        [(v, b, n) for v in ("sleep", "sleep-bf16") for b in (1, 2) for n in (small, big)]
        + [("sleep-fast", b, big) for b in (1, 2)])
    for (_, _, node), c in where.items():
        assert c.worker["ray_node_id"] == nodes[node]["node_id"]
    # the bf16 feature only the big node has: run there, skipped (with why) on the other
    assert where[("sleep-bf16", 1, big)].status == "ok"
    assert where[("sleep-bf16", 1, small)].status == "skipped"
    assert "lacks" in where[("sleep-bf16", 1, small)].error
    assert rec.status == "complete"

    r = cli("compare", "two", "--by", "host", "--format", "json")
    assert r.exit_code == 0, r.stderr
    comp = r.stdout
    assert small in comp and big in comp and '"variant": "sleep"' in comp
    r = cli("show", "two")
    assert r.exit_code == 0 and "across hosts" in r.stdout and f"host {big}" in r.stdout
    assert "$/M images" in r.stdout and "per million images at its highest" in r.stdout
    pivot = host_pivot([rec], prices=sw.prices)
    assert pivot["priced"]
    for row in pivot["rows"]:
        for host, usd in row["usd_per_million"].items():
            price = sw.prices[f"{platform.node()}#{nodes[host]['labels'][0]}"]
            assert usd == pytest.approx(price / (row["values"][host] * 3600) * 1e6)
        both = len(row["values"]) == 2
        assert row["cheapest_host"] == (small if both else big), row
    r = cli("report", "two", "--out", workdir / "rep")
    assert r.exit_code == 0 and (workdir / "rep" / "heatmap.png").exists()


def test_placement_any_runs_each_cell_once(two_nodes, workdir):
    sw = parse_sweep({"name": "once", "models": ["pool-tiny"], "variants": ["sleep-fast"],
                      "batch_sizes": [1, 2], "measure": FAST,
                      "targets": {"placement": "any"}})
    rec = run_sweep(sw, executor="ray")
    assert len(rec.cells) == 2 and {c.status for c in rec.cells} == {"ok"}
    assert len({c.host["node"] for c in rec.cells}) == 1  # one job, on one node


def test_a_target_no_node_satisfies_is_refused_before_anything_runs(two_nodes, workdir, cli):
    f = workdir / "s.toml"
    f.write_text('models = ["pool-tiny"]\nvariants = ["sleep"]\n'
                 '[targets]\nvariant.sleep = ["h200"]\n')
    r = cli("sweep", f, "--executor", "ray")
    assert r.exit_code == 2, r.stderr
    assert "can run on no node of the cluster" in r.stderr and "labelled h200" in r.stderr
    assert "labels big" in r.stderr and "labels small" in r.stderr  # the nodes listed
    assert len(r.stderr.strip().splitlines()) == 1
    assert not (workdir / "runs").exists() or not list((workdir / "runs").iterdir())
    assert RunStore().list() == []


def test_a_search_answers_per_node(two_nodes, workdir):
    """Two nodes, bf16 on one: each screens both variants (sleep-bf16 fails where the CPU
    lacks bf16, and is not admitted there), verifies its own best, and the answer names
    each node's configuration, the bf16 node's (2 ms a sample against 5) best overall. The
    budget is 20 times a sample: on a loaded 2-core host running two Ray nodes, 30 ms left
    the 5 ms node no VALID rate at all (CI with a burner)."""
    from densebench.search import SearchConfig, run_search

    rec = run_search(SearchConfig(
        latency_budget_ms=100.0, percentile=90, variants=["sleep", "sleep-bf16"],
        max_batch=[1], instances=[1], model="pool-tiny", device="cpu", samples=32,
        probe_duration=1.0, screen_time=0.1, precision=0.5, executor="ray",
        prices={f"{platform.node()}#small": 1.0, f"{platform.node()}#big": 1.0}))
    nodes = {n["node"]: n for n in rec.data["cluster"]["nodes"]}
    big = next(k for k, n in nodes.items() if n["labels"] == ["big"])
    small = next(k for k, n in nodes.items() if n["labels"] == ["small"])
    screened = {(c.variant, c.host["node"]): c for c in rec.cells
                if c.axes["search"] == "screen"}
    assert len(screened) == 4 and not screened[("sleep-bf16", small)].ok
    assert "lacks" in screened[("sleep-bf16", small)].error
    (refused,) = rec.data["not_admitted"]
    assert (refused["variant"], refused["host"]["node"]) == ("sleep-bf16", small)
    answer = rec.data["answer"]
    per = {h["host_name"]: h["variant"] for h in answer["hosts"]}
    assert per == {big: "sleep-bf16", small: "sleep"}
    assert answer["best"]["host_name"] == big  # same price, more QPS: cheaper per image
    assert answer["best"]["usd_per_million"] < answer["hosts"][1]["usd_per_million"]
    assert answer["prices_for_no_host"] == []
    # (what the bf16 node verified rules out its sleep configurations: they are skipped)
    verified = [c for c in rec.cells if c.axes["search"] == "verify" and not c.skipped]
    assert {c.host["node"] for c in verified} == {big, small}
    assert all(c.worker["ray_node_id"] == nodes[c.host["node"]]["node_id"] for c in verified)
