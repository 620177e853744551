"""Training on a real Dask cluster: two worker processes (processes=True, a memory limit each), not a
loop in disguise. The fits run in both workers (neither is this process), the store is the one an
in-process run writes, a worker killed mid-run has its fits retried, an interrupted run leaves the
previous store, and a dead scheduler or a missing Dask is one line.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from model_store.config import TrainingConfig
from model_store.dispatch import INSTALL_CLUSTER, ClusterError, DaskCluster, check_cluster, open_dispatcher, parse_cluster
from model_store.serving.store import MANIFEST, open_store

# Forests and the makers' units (five groups, three units) in a few seconds: the point is where the
# fits run and what comes back, not quality. No Keras nets: a MemAE fitted on a Dask worker from
# the same rows and seed comes out of TensorFlow differently now and then (threshold 2.030 or 2.065
# against 2.101 in the driver and in a process pool); not yet tracked down: model_store/dispatch.py.
TRAINING = {"model.autoencoder_min_rows": str(10**9), "model.memae_min_rows": str(10**9),
            "grouping.min_group_rows": "300", "model.iforest_trees": "25", "workers": "1"}
# What may differ between two runs of the same data: when and where a fit ran.
RUN_FIELDS = ("seconds", "pid")


@pytest.fixture(scope="session")
def dask_cluster() -> Iterator[DaskCluster]:
    """What ``--cluster local:2`` opens: 2 worker processes of one thread, 1.5 GB each."""
    with open_dispatcher("local:2", memory_limit="1.5GB") as dispatcher:
        assert isinstance(dispatcher, DaskCluster)
        dispatcher.client.wait_for_workers(2, timeout=120)
        yield dispatcher


@pytest.fixture(scope="module")
def plant_csv(forest_plant, tmp_path_factory) -> dict[str, Path]:
    from model_store.simulate import write_plant

    return write_plant(forest_plant, tmp_path_factory.mktemp("dispatch_plant"), fmt="csv")


def _cli_train(files: dict[str, Path], store: Path, *extra: str) -> None:
    from typer.testing import CliRunner

    from service.cli import app

    sets = [arg for name, value in TRAINING.items() if name != "workers" for arg in ("--set", f"{name}={value}")]
    result = CliRunner().invoke(app, ["train", "--schema", str(files["schema"]), "--records", str(files["records"]),
                                      "--lots", str(files["lots"]), "--store", str(store), *sets, *extra])
    assert result.exit_code == 0, result.output


@pytest.fixture(scope="module")
def in_process_store(plant_csv, tmp_path_factory) -> Path:
    store = tmp_path_factory.mktemp("dispatch_stores") / "in_process"
    _cli_train(plant_csv, store, "--workers", "1")
    return store


def _manifest(store: Path) -> dict[str, Any]:
    return json.loads((store / MANIFEST).read_text())


def _without_run_fields(entry: dict[str, Any]) -> dict[str, Any]:
    return {**entry, "training": {k: v for k, v in entry["training"].items() if k not in RUN_FIELDS}}


def assert_same_models(store: Path, reference: Path) -> None:
    """Same groups, entries (thresholds, scalers, loss summaries), units, calibration and history
    scores; the forward arrays equal bit for bit. Zip-based artifacts (.keras, .skops, .npz) carry
    write times, so their hashes differ and their arrays are compared instead."""
    got, want = _manifest(store), _manifest(reference)
    assert [g["id"] for g in got["groups"]] == [g["id"] for g in want["groups"]]
    for mine, theirs in zip(got["groups"], want["groups"]):
        assert _without_run_fields(mine) == _without_run_fields(theirs), mine["id"]
    for key in ("conditional", "calibration", "history", "drift", "group_table", "setting_models", "setting_profiles"):
        assert got[key] == want[key], key
    assert set(got["artifacts"]) - {"report.html"} == set(want["artifacts"]) - {"report.html"}
    for relative in got["artifacts"]:
        if relative.endswith(".npz"):
            with np.load(store / relative) as mine, np.load(reference / relative) as theirs:
                assert mine.files == theirs.files
                for name in mine.files:
                    assert np.array_equal(mine[name], theirs[name], equal_nan=mine[name].dtype.kind in "fc"), (relative, name)
    open_store(store)  # every artifact present and matching its hash


def _worker_pids(dispatcher: DaskCluster) -> dict[str, int]:
    return dispatcher.client.run(os.getpid)


def test_the_cli_trains_on_the_cluster_and_writes_the_in_process_store(dask_cluster, plant_csv, in_process_store,
                                                                       tmp_path) -> None:
    store = tmp_path / "cluster"
    _cli_train(plant_csv, store, "--cluster", dask_cluster.client.cluster.scheduler_address)
    pids = {g["training"]["pid"] for g in _manifest(store)["groups"]}
    assert pids == set(_worker_pids(dask_cluster).values())  # both workers fitted groups...
    assert os.getpid() not in pids and len(pids) == 2  # ...and this process none
    assert {g["training"]["pid"] for g in _manifest(in_process_store)["groups"]} == {os.getpid()}
    assert_same_models(store, in_process_store)


def _training_inputs(files: dict[str, Path]) -> tuple[Any, Any, Any, TrainingConfig]:
    from model_store.canonical import canonical_lots, canonical_records
    from model_store.loaders import read_table
    from model_store.schema import load_schema

    schema = load_schema(files["schema"])
    records = canonical_records(read_table(str(files["records"]), None), schema)
    lots = canonical_lots(read_table(str(files["lots"]), None), schema)
    return records, lots, schema, TrainingConfig().with_overrides(TRAINING)


def test_a_worker_killed_mid_run_has_its_fits_retried(dask_cluster, plant_csv, in_process_store, tmp_path) -> None:
    from model_store.store_training import _tasks, prepare, train_store

    records, lots, schema, config = _training_inputs(plant_csv)
    store = tmp_path / "store"
    shutil.copytree(in_process_store, store)  # a previous store: replaced only by a complete one
    tasks = _tasks(prepare(records, lots, schema, config), schema, config, tmp_path)
    killed: dict[str, Any] = {}

    def kill_a_busy_worker(stage: str, done: int, total: int) -> None:
        if stage != "train" or done != 1 or killed:
            return
        busy = {address: keys for address, keys in dask_cluster.client.processing().items() if keys}
        if not busy:
            return
        address, keys = next(iter(busy.items()))
        killed["pid"] = _worker_pids(dask_cluster)[address]
        killed["groups"] = {tasks[int(str(key).rsplit("-", 1)[1])].group_id for key in keys}
        os.kill(killed["pid"], signal.SIGKILL)

    train_store(records, lots, schema, store, config, progress=kill_a_busy_worker, report=False, dispatcher=dask_cluster)
    assert killed, "every fit had finished before the first result came back: nothing to kill"
    entries = {g["id"]: g for g in _manifest(store)["groups"]}
    for group in killed["groups"]:  # what the dead worker held was fitted again, by a live one
        assert entries[group]["training"]["pid"] != killed["pid"], group
    assert_same_models(store, in_process_store)
    dask_cluster.client.wait_for_workers(2, timeout=120)  # the nanny restarted it, for the next tests


def test_an_interrupted_run_leaves_the_previous_store(dask_cluster, plant_csv, in_process_store, tmp_path) -> None:
    from model_store.store_training import train_store

    records, lots, schema, config = _training_inputs(plant_csv)
    store = tmp_path / "store"
    shutil.copytree(in_process_store, store)
    before = (store / MANIFEST).read_bytes()

    def interrupt(stage: str, done: int, total: int) -> None:
        if stage == "train" and done == 2:
            raise KeyboardInterrupt  # Ctrl-C with fits still running on the cluster

    with pytest.raises(KeyboardInterrupt):
        train_store(records, lots, schema, store, config, progress=interrupt, report=False, dispatcher=dask_cluster)
    assert (store / MANIFEST).read_bytes() == before
    open_store(store)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]  # no staging folder left beside it


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_dead_scheduler_is_named_with_its_address() -> None:
    address = f"tcp://127.0.0.1:{_free_port()}"
    with pytest.raises(ClusterError) as caught, open_dispatcher(address, connect_timeout=2):
        pass
    assert str(caught.value) == (f"--cluster {address}: no Dask scheduler answered there within 2 s (OSError); "
                                 f"is it running, and is the address right?")


@pytest.mark.parametrize("value", ["local:0", "local:two", "local:", "scheduler"])
def test_a_bad_cluster_value_says_what_is_expected(value) -> None:
    with pytest.raises(ClusterError, match=f"--cluster {value}: expected"):
        check_cluster(value)


def test_cluster_values() -> None:
    assert parse_cluster("local:3") == ("local", 3)
    assert parse_cluster("tcp://10.0.0.5:8786") == ("address", "tcp://10.0.0.5:8786")
    assert parse_cluster("scheduler:8786") == ("address", "scheduler:8786")


def test_without_dask_the_cli_says_how_to_install_it_before_reading_input(tmp_path) -> None:
    from tests.service.test_cli_train_extra import base_install

    result = base_install("train", "--cluster", "local:2", "--schema", str(tmp_path / "none.yaml"), "--records", "r.csv",
                          "--lots", "l.csv", "--store", str(tmp_path / "store"), blocked=("dask", "distributed"))
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and INSTALL_CLUSTER in lines[0] and "Traceback" not in result.stderr, result.stderr


def test_ctrl_c_ends_a_process_pool_train_at_once_without_a_worker_traceback(plant_csv, tmp_path) -> None:
    """Ctrl-C reaches the whole process group. Before, each pool worker printed its own
    KeyboardInterrupt traceback, and the driver waited for the running fits (39 s after a
    `kill -INT` of a 150k-shot train). Fits here take minutes, so waiting for them fails the test."""
    import subprocess
    import sys

    store = tmp_path / "store"
    slow_fits = ["--set", "model.autoencoder_min_rows=300", "--set", "model.memae_min_rows=1000000000",
                 "--set", "model.epochs=5000", "--set", "grouping.min_group_rows=300"]
    process = subprocess.Popen(
        [sys.executable, "-m", "service", "train", "--schema", str(plant_csv["schema"]), "--records", str(plant_csv["records"]),
         "--lots", str(plant_csv["lots"]), "--store", str(store), "--workers", "2", *slow_fits],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True,
        # as a terminal's foreground job has it: a test run started in the background (`cmd &` in a
        # script) ignores SIGINT, and a child inherits that ignore
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        seen = []
        for line in process.stderr:  # piped: progress comes as lines
            seen.append(line)
            if "Training group models: started" in line:
                break
        assert any("Training group models: started" in line for line in seen), "".join(seen)
        import psutil

        # both pool workers started and fitting: an interrupt while they are being started is
        # ignored with them (model_store.dispatch._children_ignore_interrupts)
        while len([c for c in psutil.Process(process.pid).children() if "spawn_main" in " ".join(c.cmdline())
                   and c.cpu_times().user > 3]) < 2:
            assert process.poll() is None, process.stderr.read()
            time.sleep(0.2)
        workers = psutil.Process(process.pid).children(recursive=True)
        os.killpg(process.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
        rest = process.stderr.read()
        assert process.wait(timeout=120) == 130, rest
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert "Traceback" not in rest and rest.strip().splitlines()[-1] == "error: interrupted", rest
    assert not store.exists()
    _, alive = psutil.wait_procs(workers, timeout=30)
    assert not alive, [p.cmdline() for p in alive]


@pytest.mark.timeout(240)
def test_an_interrupted_run_on_its_own_pool_ends_its_fits_at_once(plant_csv, in_process_store, tmp_path) -> None:
    """train_store without a dispatcher (the demo, the tests) opens its own pool. Ctrl-C (a real
    SIGINT to this process) while its fits run ends them with the run, and the previous store
    stays. Before, the dropped pool waited for the running fits, which here would take many
    minutes (no early stopping): the test's timeout fails it."""
    import threading

    import psutil

    from model_store.store_training import train_store

    records, lots, schema, _ = _training_inputs(plant_csv)
    slow = {**TRAINING, "workers": "2", "model.autoencoder_min_rows": "300", "model.epochs": "100000",
            "model.patience": "100000"}
    store = tmp_path / "store"
    shutil.copytree(in_process_store, store)
    before = (store / MANIFEST).read_bytes()

    others = {c.pid for c in psutil.Process().children()}  # e.g. the session's Dask workers

    def pool_workers() -> list[psutil.Process]:
        return [c for c in psutil.Process().children() if c.pid not in others and "spawn_main" in " ".join(c.cmdline())]

    def interrupt_once_fitting() -> None:
        while True:  # both workers busy fitting (seconds of CPU each), then Ctrl-C
            workers = pool_workers()
            if len(workers) == 2 and all(w.cpu_times().user > 5 for w in workers):
                os.kill(os.getpid(), signal.SIGINT)
                return
            threading.Event().wait(0.2)

    watcher = threading.Thread(target=interrupt_once_fitting, daemon=True)
    # Python's own handler, as in a terminal: a test run started in the background ignores SIGINT
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        watcher.start()
        with pytest.raises(KeyboardInterrupt):
            train_store(records, lots, schema, store, TrainingConfig().with_overrides(slow), report=False)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert not pool_workers()  # terminated and joined by the run itself
    assert (store / MANIFEST).read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]
