"""Ray across nodes: two Ray nodes on this machine (ray.cluster_utils.Cluster), one CPU each.

A search joined to the cluster with `--address` puts one replica on each node and equals the
in-process search; `ray job submit` runs the same search on the cluster (the package installed
where the nodes run, as on a real cluster); losing the worker node mid-run changes nothing either.
The drivers are subprocesses (a process joins one Ray at most, and this one may hold the session's).
"""

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest
from search_helpers import cli, run_small, small_cfg, trajectory

from longrope.runs import Run

ray_cluster_utils = pytest.importorskip("ray.cluster_utils")
JOBS = importlib.util.find_spec("aiohttp") is not None  # the job server needs ray[default] (`cluster` extra)

COST = 0.03  # seconds per document, 5 per candidate: a run of 36 candidates takes a few seconds


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster():
    """A head (1 CPU, the job server) and a worker node (1 CPU): two replicas of one CPU each can
    only run one on each node, and once the worker node is gone its replica cannot come back.
    Its own RAY_TMPDIR: a Cluster writes its address to <RAY_TMPDIR>/ray/ray_current_cluster,
    where a plain `ray.init()` anywhere on this machine would find and join it; the nodes' temp_dir
    is that folder, where a job's supervisor looks for it: with the nodes' files one level up it
    found none and sent the job's driver to any Ray running here, another pytest worker's cluster
    in CI, whose node and then GCS that worker's tests removed. Its own ports: the head's
    dashboard agent defaults to 52365, which another Ray here may hold."""
    tmp = tempfile.mkdtemp(prefix="lr-ray-", dir="/tmp")  # short: Ray's Unix sockets live under it
    nodes = os.path.join(tmp, "ray")
    os.makedirs(nodes)
    c = None
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("RAY_TMPDIR", tmp)
            c = ray_cluster_utils.Cluster(initialize_head=True, connect=False, head_node_args={
                "num_cpus": 1, "temp_dir": nodes, "include_dashboard": JOBS, "dashboard_host": "127.0.0.1",
                "dashboard_port": free_port(), "dashboard_agent_listen_port": free_port()})
            c.worker_args = {"num_cpus": 1, "temp_dir": nodes}
            c.ray_tmpdir = tmp
            c.add_node(**c.worker_args)
            yield c
    finally:
        if c is not None:
            c.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The in-process search (synthetic scores do not depend on the cost)."""
    run, _ = run_small(tmp_path_factory.mktemp("ref"))
    return trajectory(run)


def nodes_with_workers(c) -> set[str]:
    """The nodes running a search worker (an actor's process is its node's raylet's child)."""
    found = set()
    nodes = [("head", c.head_node)] + [(f"worker-{i}", n) for i, n in enumerate(c.worker_nodes)]
    for name, node in nodes:
        for p in psutil.Process(node.all_processes["raylet"][0].process.pid).children():
            try:
                cmd = p.cmdline()  # once: a process that exits between two reads has none the second time
            except psutil.Error:
                continue
            if cmd[:1] and cmd[0].startswith("ray::_Worker"):
                found.add(name)
    return found


def cluster_report(c) -> str:
    """What a failed test needs to tell a dead cluster from a bug of ours: each node's dead
    processes, and the last lines of the head's GCS and raylet logs (the folder is removed after)."""
    lines = []
    nodes = [("head", c.head_node)] + [(f"worker-{i}", n) for i, n in enumerate(c.worker_nodes)]
    for name, node in nodes:
        if node is None:
            continue
        dead = [(kind, proc.returncode) for kind, proc in node.dead_processes()]
        lines.append(f"{name}: dead processes {dead or 'none'}")
    if c.head_node is not None:
        logs = Path(c.head_node.get_logs_dir_path())
        for f in sorted(logs.glob("gcs_server.*")) + sorted(logs.glob("raylet.*")):
            tail = f.read_text(errors="replace").splitlines()[-15:]
            lines += [f"--- {f.name}"] + tail
    return "\n".join(lines)


def write_config(tmp_path) -> Path:
    _, text = small_cfg(model=f"synthetic:{COST}", backend="ray", count=2)
    path = tmp_path / "run.toml"
    path.write_text(text)
    return path


def generations_done(run_dir: Path) -> int:
    events = run_dir / "events.log"
    return events.read_text().count(" gen ") if events.exists() else 0


def finish(p: subprocess.Popen, timeout: float = 60) -> str:
    """The driver's stderr once it exits 0; a hang fails the test instead of hanging it."""
    try:
        _, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        _, err = p.communicate()
        raise AssertionError(f"the driver hung:\n{err[-3000:]}") from None
    assert p.returncode == 0, err[-3000:]
    return err


def test_search_on_two_nodes_equals_in_process(tmp_path, cluster, reference):
    run_dir = tmp_path / "run"
    p = cli("search", str(write_config(tmp_path)), "--run-dir", str(run_dir), "--address", cluster.address,
            "--quiet")
    seen: set[str] = set()
    while p.poll() is None and seen != {"head", "worker-0"}:
        seen |= nodes_with_workers(cluster)
        time.sleep(0.05)
    finish(p)
    assert seen == {"head", "worker-0"}  # a replica on each node
    assert trajectory(Run.open(run_dir)) == reference


def test_ray_job_submit_runs_a_search(tmp_path, cluster, reference):
    """No --address: Ray gives a job's driver RAY_ADDRESS, the address of the cluster the job was
    submitted to (until session 42 the fixture's layout made it any Ray on this machine)."""
    if not JOBS:
        pytest.skip("`ray job submit` needs ray[default]: pip install 'longrope-search[cluster]'")
    run_dir = tmp_path / "run"
    ray = Path(sys.executable).parent / "ray"
    try:
        r = subprocess.run([str(ray), "job", "submit", "--address", f"http://{cluster.webui_url}", "--",
                            sys.executable, "-m", "longrope.search", "search", str(write_config(tmp_path)),
                            "--run-dir", str(run_dir), "--quiet"],
                           capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else e.stdout or ""
        raise AssertionError(f"the job ran past 120 s:\n{out[-3000:]}\n{cluster_report(cluster)}") from None
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:] + "\n" + cluster_report(cluster)
    assert f"Connecting to existing Ray cluster at address: {cluster.address}" in r.stdout, r.stdout[-3000:]
    assert "done: long-256" in r.stdout and "succeeded" in r.stdout
    assert trajectory(Run.open(run_dir)) == reference


def test_losing_a_node_mid_run_changes_nothing(tmp_path, cluster, reference):
    """The worker node goes after generation 0: its replica's candidate is re-run on the head's,
    and the replacement replica, with no CPU left to run on, never holds a candidate."""
    run_dir = tmp_path / "run"
    p = cli("search", str(write_config(tmp_path)), "--run-dir", str(run_dir), "--address", cluster.address,
            "--quiet")
    try:
        deadline = time.time() + 60
        while generations_done(run_dir) < 1 and p.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        assert p.poll() is None, "the run ended before the node could be removed"
        assert nodes_with_workers(cluster) == {"head", "worker-0"}
        (victim,) = cluster.worker_nodes
        cluster.remove_node(victim)  # its raylet and the replica on it are killed
        err = finish(p)
        # `longrope check --address` counts the live node alone (Ray lists the dead one too)
        probe = ("import json; from longrope.search.cli.check import ray_resources; "
                 f"print(json.dumps(ray_resources({cluster.address!r})))")
        env = dict(os.environ, RAY_AUTH_MODE="disabled")
        got = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
        assert got.returncode == 0, got.stderr[-2000:]
        r = json.loads(got.stdout.strip().splitlines()[-1])
        assert (r["nodes"], r["CPU"], [n["CPU"] for n in r["per_node"]]) == (1, 1, [1])
    finally:
        if p.poll() is None:
            p.kill()
        if not cluster.worker_nodes:
            cluster.add_node(**cluster.worker_args)
    assert generations_done(run_dir) == 5  # generations 0 .. 4: no stage cut short
    assert trajectory(Run.open(run_dir)) == reference
    assert "a worker died with its node" in err


def test_losing_the_head_ends_the_driver_and_a_resume_on_a_new_cluster_equals(tmp_path, reference):
    """A driver joined with --address lives off the head's GCS: once the head is gone for
    RAY_gcs_rpc_server_reconnect_timeout_s (60 s by default; 3 here) Ray ends the driver process
    itself, with no Python cleanup, like kill -9. What it leaves (run.lock, trials running in the
    journal) is what a kill -9 leaves, so `resume --address` on a new cluster continues the run
    to the uninterrupted result."""
    tmp = tempfile.mkdtemp(prefix="lr-rh-", dir="/tmp")
    os.makedirs(os.path.join(tmp, "ray"))
    run_dir, heads = tmp_path / "run", []
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("RAY_TMPDIR", tmp)
            mp.setenv("RAY_gcs_rpc_server_reconnect_timeout_s", "3")

            def head():
                heads.append(ray_cluster_utils.Cluster(initialize_head=True, connect=False, head_node_args={
                    "num_cpus": 2, "temp_dir": tmp, "include_dashboard": False}))
                return heads[-1]

            c = head()
            p = cli("search", str(write_config(tmp_path)), "--run-dir", str(run_dir), "--address", c.address,
                    "--quiet")
            deadline = time.time() + 60
            while generations_done(run_dir) < 1 and p.poll() is None and time.time() < deadline:
                time.sleep(0.02)
            assert p.poll() is None, "the run ended before the head could be lost"
            c.head_node.kill_all_processes(check_alive=False, allow_graceful=False)
            try:
                _, err = p.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
                raise AssertionError("the driver outlived its cluster's head") from None
            assert p.returncode != 0 and generations_done(run_dir) < 5, err[-2000:]
            assert (run_dir / "run.lock").exists()  # nothing released: as after kill -9
            err = finish(cli("resume", str(run_dir), "--address", head().address, "--quiet"))
    finally:
        for c in heads:
            c.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
    assert "taking over a stale lock of dead process" in err
    assert generations_done(run_dir) >= 5 and trajectory(Run.open(run_dir)) == reference


def test_gpus_asked_of_a_cluster_without_gpus_is_one_line(tmp_path, cluster):
    """The cluster's two nodes have no GPUs and workers.num_gpus = 1: an error, not a hang, and no
    run directory."""
    _, text = small_cfg(model="synthetic", backend="ray", count=2, num_gpus=1.0)
    (tmp_path / "gpu.toml").write_text(text)
    p = cli("search", str(tmp_path / "gpu.toml"), "--run-dir", str(tmp_path / "run"), "--address", cluster.address)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 2 and "the Ray cluster has no GPUs" in err
    assert "Traceback" not in err and not (tmp_path / "run").exists()
    assert [ln for ln in err.splitlines() if ln.startswith("error:")] == [err.strip().splitlines()[-1]]


def test_no_address_starts_its_own_ray_beside_a_ray_start_cluster(cluster):
    """A `ray start` cluster on this machine (its address in <RAY_TMPDIR>/ray/ray_current_cluster),
    no --address and no RAY_ADDRESS: a local Ray of our own starts, as the README says. A plain
    ray.init() would join that cluster, and refuse the bench's num_cpus there."""
    probe = ("import ray; from longrope.search.cluster import init_ray; init_ray('', num_cpus=1); "
             "print(ray.get_runtime_context().gcs_address); ray.shutdown()")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_TMPDIR=cluster.ray_tmpdir, RAY_AUTH_MODE="disabled")
    # what `ray start` leaves (a Cluster writes it too, but a driver's shutdown may have removed it)
    (Path(env["RAY_TMPDIR"]) / "ray" / "ray_current_cluster").write_text(cluster.address)
    p = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.strip() and p.stdout.strip() != cluster.address


def test_a_replica_no_node_can_hold_is_one_line(tmp_path, cluster):
    """2 CPUs a replica on two nodes of one CPU: 2 in all, none on one node; Ray would wait forever."""
    _, text = small_cfg(model="synthetic", backend="ray", count=1)
    (tmp_path / "big.toml").write_text(text.replace("[workers]", "[workers]\nnum_cpus = 2"))
    p = cli("search", str(tmp_path / "big.toml"), "--run-dir", str(tmp_path / "run"), "--address", cluster.address)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 2 and "on one node, but no node of the cluster has that" in err, err[-2000:]
    assert "Traceback" not in err and not (tmp_path / "run").exists()


def test_an_address_where_nothing_answers_is_one_line_not_a_long_wait(tmp_path):
    """ray.init retries a wrong HOST:PORT for many minutes; the driver asks the port first."""
    _, text = small_cfg(model="synthetic", backend="ray", count=1)
    (tmp_path / "run.toml").write_text(text)
    port = free_port()  # bound a moment ago and closed: nothing listens there
    for args in (("search", str(tmp_path / "run.toml"), "--run-dir", str(tmp_path / "run")), ("check", "--json")):
        p = cli(*args, "--address", f"127.0.0.1:{port}")
        _, err = p.communicate(timeout=60)
        assert p.returncode == 2 and f"cannot join Ray at 127.0.0.1:{port}: nothing answers there" in err, err
        assert "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_an_address_where_another_service_answers_is_one_line(tmp_path):
    """The dashboard's port (8265, the one `ray job submit` takes) given as --address: the TCP
    probe passed and ray.init retried for minutes; IPv6 addresses were not probed at all."""
    import http.server
    import threading

    server = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        p = cli("check", "--json", "--address", f"127.0.0.1:{server.server_port}")
        _, err = p.communicate(timeout=60)
    finally:
        server.shutdown()
    assert p.returncode == 2 and "something answers there, but not Ray" in err and "Traceback" not in err, err
    p = cli("check", "--json", "--address", f"[::1]:{free_port()}")
    _, err = p.communicate(timeout=60)
    assert p.returncode == 2 and "cannot join Ray at [::1]:" in err and "Traceback" not in err, err


def test_the_grpc_probe_tells_ray_from_another_service_and_stands_aside_under_tls(ray_session, monkeypatch):
    """Ray's GCS completes a plaintext gRPC handshake, an HTTP server does not; a TLS cluster
    (RAY_USE_TLS) would fail a plaintext one, so the probe passes it to ray.init unchecked."""
    import http.server
    import threading

    from longrope.search.cluster import _speaks_grpc

    pytest.importorskip("grpc")
    assert _speaks_grpc(ray_session.get_runtime_context().gcs_address, 10)
    server = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        assert not _speaks_grpc(f"127.0.0.1:{server.server_port}", 10)
        monkeypatch.setenv("RAY_USE_TLS", "1")
        assert _speaks_grpc(f"127.0.0.1:{server.server_port}", 10)
    finally:
        server.shutdown()
