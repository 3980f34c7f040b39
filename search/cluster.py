"""Ray as a cluster: join it (or start one of our own), probe an address first, fetch a
result with our errors as one line, read why an actor died, and size the replicas to the nodes
that can hold them. The backends and the fine-tune stage use these; nothing here knows about
candidates."""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections import Counter
from typing import Any

from longrope.objectives.devices import out_of_memory
from longrope.runs.rundir import STORAGE_ERRORS
from longrope.spaces import UserError

from .stalls import WorkerStalled


def init_ray(address: str = "", num_cpus: int | None = None, num_gpus: int | None = None) -> None:
    """Join `address` (or RAY_ADDRESS) when given, else start a local Ray of our own.

    A plain ``ray.init()`` would join the cluster a ``ray start`` left on this machine (Ray finds it
    through /tmp/ray/ray_current_cluster), and then refuse num_cpus; "local" always starts one.
    ``auto`` joins that cluster on purpose."""
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    addr = address or os.environ.get("RAY_ADDRESS", "")
    if addr:
        probe_address(addr)
    # ray.init puts its own SIGTERM handler (sys.exit(15)) in place of the caller's, the driver's
    # that re-queues and exits 143: the caller's is put back, and given a SIGTERM that came during init
    main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGTERM) if main else None
    try:
        if addr:
            ray.init(address=addr, include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False,
                     log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise UserError(f"cannot start or join Ray{f' at {addr}' if addr else ''}: {e}") from None
    except SystemExit as e:
        if e.code == signal.SIGTERM and callable(previous):
            previous(signal.SIGTERM, None)
        raise
    finally:
        if main and previous is not None:  # None: a handler not set from Python, not ours to restore
            signal.signal(signal.SIGTERM, previous)


PROBE_SECONDS = 10.0  # a head that does not accept a connection by then is not there


def probe_address(addr: str, timeout: float = PROBE_SECONDS) -> None:
    """Refuse in one line an address whose head does not answer: ray.init retries a wrong
    HOST:PORT for many minutes (a typo in a batch script burns the allocation). Only a plain
    or ray:// HOST:PORT is probed; "auto", "local" and others go to Ray as they are."""
    import socket
    from urllib.parse import urlsplit

    hostport = addr.split("://", 1)[1] if addr.startswith("ray://") else addr
    if "://" in hostport or ":" not in hostport:  # "auto", "local"; [::1]:6379 is probed too
        return
    try:
        url = urlsplit(f"//{hostport}")
        host, port = url.hostname, url.port
    except ValueError:
        raise UserError(f"Ray address {addr!r} is not HOST:PORT") from None
    if not host or port is None:
        raise UserError(f"Ray address {addr!r} is not HOST:PORT")
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as e:
        why = f"no answer in {timeout:g} s" if isinstance(e, TimeoutError) else (e.strerror or str(e))
        raise UserError(f"cannot join Ray at {addr}: nothing answers there ({why}); check the head's "
                        "address and port (`ray start --head` prints them)") from None
    if not _speaks_grpc(hostport, timeout):  # another service (the dashboard's 8265): ray.init would retry on
        raise UserError(f"cannot join Ray at {addr}: something answers there, but not Ray (no gRPC); the "
                        "head's port is 6379 unless `ray start --head --port` said otherwise (8265 is the "
                        "dashboard's, for `ray job submit`; ray:// takes the client port, 10001)")


def _speaks_grpc(hostport: str, timeout: float) -> bool:
    """Whether a gRPC server answers at HOST:PORT, as Ray's head (GCS) and its client server do.
    True when grpcio (ray[default] and ray[client] bring it) is not installed, or the cluster
    uses TLS (RAY_USE_TLS): unchecked then."""
    if os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true"):  # a plaintext handshake would fail
        return True
    try:
        import grpc
    except ImportError:
        return True
    seen: list = []
    answered = threading.Event()

    def state(s) -> None:  # an HTTP/1 server fails the handshake at once: no need to wait it out
        if s in (grpc.ChannelConnectivity.READY, grpc.ChannelConnectivity.TRANSIENT_FAILURE):
            seen.append(s)
            answered.set()

    channel = grpc.insecure_channel(hostport)
    try:
        channel.subscribe(state, try_to_connect=True)
        answered.wait(timeout)
        return seen[:1] == [grpc.ChannelConnectivity.READY]
    finally:
        channel.close()


class DeviceFault(Exception):
    """A worker's accelerator failed under it (a CUDA error: an illegal memory access, an ECC
    error, a device-side assert). torch raises and the process lives on, its CUDA context broken
    for every later call, so the backends take it as the worker's death: killed, replaced, its
    candidate re-run on another worker and counted against it (a kernel it crashes twice)."""


# what torch's errors from a broken device say (torch >= 2.8 raises torch.AcceleratorError for them;
# before, a plain RuntimeError); "CUDA out of memory" is none of these: the scorer halves its batch
DEVICE_FAULTS = ("CUDA error", "CUBLAS_STATUS_", "CUDNN_STATUS_", "cuDNN error", "device-side assert",
                 "HIP error", "NCCL error", "CUDA driver error", "Triton Error [CUDA]")


def device_fault(error: BaseException | None) -> bool:
    """Whether an exception raised inside a worker says its device failed (DeviceFault); CUDA's own
    out of memory ("CUDA error: out of memory") is a full card, not a failed one (devices.out_of_memory)."""
    if out_of_memory(error):
        return False
    if type(error).__name__ == "AcceleratorError":
        return True
    return isinstance(error, RuntimeError) and any(m in str(error) for m in DEVICE_FAULTS)


def ray_get(ref):
    """ray.get, with a UserError raised inside a task or actor re-raised here as one line, a
    write the run's storage refused (a fine-tune's checkpoint on a full disk) as that OSError,
    which the driver turns into its one line (Run.write_failed), and a failed device as a
    DeviceFault."""
    import ray

    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as e:
        cause = getattr(e, "cause", None)
        if isinstance(cause, UserError):
            raise UserError(str(cause)) from None
        if isinstance(cause, OSError) and cause.errno in STORAGE_ERRORS:
            raise OSError(cause.errno, cause.strerror, cause.filename) from None
        if device_fault(cause):
            raise DeviceFault(f"{type(cause).__name__}: {str(cause).strip()}") from None
        raise
    except ray.exceptions.RuntimeEnvSetupError as e:  # `ray job submit --runtime-env`'s pip, a working_dir
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        raise UserError(f"Ray could not set up a worker's runtime_env (the job's or the cluster's): "
                        f"{lines[-1][:300]}; on a cluster whose nodes cannot install it, install "
                        "longrope-search on every node instead (README, GPU cluster)") from None


def node_lost(error: Exception) -> bool:
    """Whether an actor died with its node (preempted, removed, unreachable) rather than by what it
    ran; Ray says so in the error (ActorDiedErrorContext: "The actor died because its node has died")."""
    return bool(getattr(error, "preempted", False)) or "its node has died" in str(error)


def memory_kill(error: Exception) -> bool:
    """Whether Ray's memory monitor killed the worker, its node short of memory (Ray reports it as
    an OutOfMemoryError: "1 worker(s) were killed due to the node running low on memory"). The
    monitor kills the task that started last, and a candidate's λ does not change what scoring it
    holds in memory: such a kill says nothing against the candidate, and several in a row say the
    node holds more replicas than its memory does."""
    import ray

    return isinstance(error, ray.exceptions.OutOfMemoryError)


def death_kind(error: Exception) -> str:
    """How a worker's end is named in the note that says it was replaced."""
    if isinstance(error, DeviceFault):
        return "a worker's GPU failed"
    if isinstance(error, WorkerStalled):
        return "a worker hung"
    if memory_kill(error):
        return "Ray's memory monitor killed a worker"
    return f"a worker died{' with its node' if node_lost(error) else ''}"


def memory_shortage(kills: int, error: Exception) -> UserError:
    """The line that stops a search whose workers Ray's memory monitor keeps killing."""
    return UserError(f"Ray's memory monitor killed {kills} workers with nothing scored between them "
                     f"({death_reason(error)}): the replicas need more memory than their nodes have free; "
                     "run fewer on each (a higher workers.num_cpus, or fewer --workers) and resume")


MAX_IN_A_ROW = 3  # deaths (or memory-monitor kills) with no evaluation done between them, > replicas: stop


class DeathStreak:
    """Workers' deaths since an evaluation last finished, to stop a run whose every evaluation ends
    its worker rather than charge each candidate two deaths through the stage. A lost node's say
    nothing of what its workers run: not counted. The run stops at max(MAX_IN_A_ROW, replicas + 1)
    deaths (or as many memory-monitor kills) once every replica has died among them, each a slot its
    replacements inherit: one bad GPU or short node among healthy ones churns its own slot while
    the others score, whose evaluations may take far longer than its deaths, and stops nothing."""

    def __init__(self) -> None:
        self.deaths: Counter = Counter()  # "deaths", and "memory" kills among them
        self.slots: set = set()  # the replicas' slots that died

    def clear(self) -> None:
        self.deaths.clear()
        self.slots.clear()

    def stop(self, slot: Any, error: Exception, replicas: int) -> UserError | None:
        """Count a death of `slot`'s worker; the line that stops the run, when it should."""
        if not_its_fault(error):
            return None
        self.deaths.update(["deaths", "memory"] if memory_kill(error) else ["deaths"])
        self.slots.add(slot)
        limit = max(MAX_IN_A_ROW, replicas + 1)
        if len(self.slots) < replicas:
            return None
        if self.deaths["memory"] >= limit:
            return memory_shortage(self.deaths["memory"], error)
        return deaths_in_a_row(self.deaths["deaths"], error) if self.deaths["deaths"] >= limit else None


def deaths_in_a_row(deaths: int, error: Exception) -> UserError:
    """The line that stops a search whose every evaluation ends its worker: an error each one hits
    (a tokenizer's ids past the model's vocabulary: a device-side assert; a kernel this GPU lacks)
    or GPUs that keep failing or hanging. It went on, each candidate charged two deaths (two model
    loads) and recorded failed, through the whole stage."""
    return UserError(f"{deaths} workers in a row ended with nothing scored between them (the last: "
                     f"{death_kind(error)}: {death_reason(error)}): what every evaluation runs fails there, "
                     "or the GPUs do; the workers' logs say more (ray logs); fix it and resume")


def start_failure(failures: int, error: Exception) -> UserError:
    """The line that stops a search whose workers die before they start: a constructor's own error
    (a model it cannot read) names its cause, Ray's memory monitor's kills say what to do (loading
    is where memory peaks), other deaths (MAX_START_FAILURES: in a row for replacements, in all as
    the workers first load) name Ray's reason."""
    if memory_kill(error):
        return memory_shortage(failures, error)
    if getattr(error, "actor_init_failed", False):
        cause = getattr(error, "cause", None) or error
        return UserError(f"a worker failed to start: {str(cause).strip().splitlines()[-1][:300]}")
    return UserError(f"{failures} workers died before they started: {death_reason(error)}")


def not_its_fault(error: Exception) -> bool:
    """Whether a worker's death says nothing against what it ran: its node died, or Ray could
    not reach it (ActorUnavailableError: no word of its death within a second, as when a node
    goes down hard), which is no proof that the candidate killed it."""
    import ray

    return node_lost(error) or isinstance(error, ray.exceptions.ActorUnavailableError)


def death_reason(error: Exception) -> str:
    """The line of an actor's death error that says why (Ray's first line says only that it died)."""
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip() and not ln.startswith("\t")]
    why = [ln for ln in lines if "unexpectedly before finishing" not in ln]
    return (why or lines or [type(error).__name__])[0][:200]


def check_resources(nodes: list[dict], count: int, num_gpus: float, num_cpus: float) -> int:
    """Refuse a request the cluster cannot ever satisfy (Ray would wait forever), and cap the
    replica count at what fits at once: a replica that can never be placed would hold its
    candidate, and with it the generation, forever. `nodes`: each live node's resources (a
    replica is one actor, so it must fit on one node: two 1-GPU nodes do not hold a 2-GPU one)."""
    gpus = sum(n.get("GPU", 0.0) for n in nodes)
    cpus = sum(n.get("CPU", 0.0) for n in nodes)
    if num_gpus > 0 and gpus <= 0:
        raise UserError(f"workers.num_gpus = {num_gpus} but the Ray cluster has no GPUs; "
                        "set workers.num_gpus = 0 to run on CPU, or join a GPU cluster (--address)")
    if num_gpus == 0 and gpus > 0:  # `--workers N` alone, on a GPU machine: a slow run, said
        print(f"note: the Ray cluster has {gpus:g} GPUs but workers.num_gpus = 0: the replicas run on "
              f"the CPU; set workers.num_gpus = 1, or a share of one ({1 / count:g} for {count} a GPU)",
              file=sys.stderr)

    def on(node: dict) -> int:  # replicas that fit on this node, counted as Ray places them:
        n = count  # in units of 1e-4, and a GPU fraction inside one GPU (0.6 fits once on each)
        if num_gpus > 0:
            gpus, need = int(node.get("GPU", 0.0) + 1e-9), _units(num_gpus)
            n = min(n, gpus * (_units(1) // need) if need < _units(1) else gpus // round(num_gpus))
        if num_cpus > 0:
            n = min(n, _units(node.get("CPU", 0.0)) // _units(num_cpus))
        return n

    fits = min(count, sum(on(n) for n in nodes))
    if fits == 0:
        big_g = max((n.get("GPU", 0.0) for n in nodes), default=0.0)
        big_c = max((n.get("CPU", 0.0) for n in nodes), default=0.0)
        raise UserError(f"one replica needs {num_gpus:g} GPUs and {num_cpus:g} CPUs on one node, but no "
                        f"node of the cluster has that (the most on a node: {big_g:g} GPUs, {big_c:g} CPUs; "
                        f"in all: {gpus:g} GPUs, {cpus:g} CPUs); lower workers.num_gpus / num_cpus")
    if fits < count:
        print(f"note: the cluster fits {fits} of the {count} replicas asked for "
              f"({gpus:g} GPUs, {cpus:g} CPUs in all); running {fits}", file=sys.stderr)
    return fits


def _units(x: float) -> int:
    """A resource quantity in Ray's units of 1e-4 (its fractions are exact only there)."""
    return round(x * 10_000)


def node_resources(ray) -> list[dict]:
    """Each live node's declared resources (CPU, GPU, ...), as Ray reports them."""
    return [n["Resources"] for n in ray.nodes() if n.get("Alive")]
