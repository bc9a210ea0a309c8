"""Real model servers for tests: MLServer and KServe, each in its own virtual environment.

The venvs are built once under ``<repo>/.cache/modelservers/<name>/`` and reused; a venv
counts as built only when its marker file (written after a successful ``pip install``) names
the current package spec and interpreter, so a half-built or outdated venv is rebuilt.

Building takes minutes of ``pip install``, so ``tests/conftest.py`` calls ``start_build()``
as soon as collection shows a test marked ``modelservers``: a detached builder process
(``python tests/modelservers.py build``) installs both venvs while the other tests run, and
the fixtures block in ``wait_for()`` only for what is left. One builder at a time: it holds
an ``flock`` on ``build.lock`` (handed over from the starter, so there is no gap). Its log is
``build.log`` (and ``build-<name>.log`` per venv); ``MODELSERVERS_CACHE`` moves the whole
cache elsewhere (a CI cache directory, say). When a build fails (no package index
reachable, say) the tests skip with the log's tail; ``MODELSERVERS_REQUIRED=1`` makes that a
failure instead.

Each server serves one scikit-learn model named ``classifier``, trained at fixture set-up by
the server venv's own python on synthetic data (``make_classification``, random_state=0), so
the pickle matches that venv's scikit-learn and nothing is downloaded. The expected class of
each sample row is computed there too. Every server binds 127.0.0.1 only (checked from
/proc after start-up), runs in its own process group, and is stopped by its id at teardown.

Use: ``from modelservers import kserve_server, mlserver`` in a test module (the fixtures are
session scoped), and mark the tests ``modelservers``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("MODELSERVERS_CACHE") or ROOT / ".cache" / "modelservers")
LOCK = CACHE / "build.lock"
LOG = CACHE / "build.log"
MODEL = "classifier"

# What each venv gets. KServe is pinned (the brief's command was unpinned) because the tests
# assert the observed wire behaviour of this exact version. MLServer 1.7.1 needs uvloop<0.22.
SPECS: dict[str, list[str]] = {
    "mlserver": ["mlserver==1.7.1", "mlserver-sklearn==1.7.1", "uvloop<0.22", "scikit-learn"],
    "kserve": ["kserve==0.21.0", "scikit-learn"],
}
PIP_FLAGS = ["--no-compile", "-q", "--disable-pip-version-check", "--timeout", "20",
             "--retries", "2"]
BUILD_TIMEOUT = float(os.environ.get("MODELSERVERS_BUILD_TIMEOUT", "900"))
START_TIMEOUT = 90.0
STOP_TIMEOUT = 10.0

_builder: subprocess.Popen[bytes] | None = None  # kept so the detached builder is reaped


# --- venvs ------------------------------------------------------------------------------


def base_python() -> str:
    return getattr(sys, "_base_executable", None) or sys.executable


def venv_dir(name: str) -> Path:
    return CACHE / name


def venv_python(name: str) -> Path:
    return venv_dir(name) / "bin" / "python"


def _marker(name: str) -> Path:
    return venv_dir(name) / ".modelservers-ready"


def _failed(name: str) -> Path:
    return CACHE / f"{name}.failed"


def _venv_log(name: str) -> Path:
    return CACHE / f"build-{name}.log"


def _identity(name: str) -> dict[str, Any]:
    return {"spec": SPECS[name], "python": base_python(), "version": sys.version.split()[0]}


def is_ready(name: str) -> bool:
    try:
        return json.loads(_marker(name).read_text()) == _identity(name)
    except (OSError, ValueError):
        return False


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"({path} not found)"


def _log(message: str) -> None:
    CACHE.mkdir(parents=True, exist_ok=True)
    with LOG.open("a") as f:
        f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} [{os.getpid()}] {message}\n")


def _open_lock() -> int:
    CACHE.mkdir(parents=True, exist_ok=True)
    return os.open(LOCK, os.O_RDWR | os.O_CREAT, 0o644)


def building() -> bool:
    """Whether a builder holds the lock right now."""
    fd = _open_lock()
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops the lock if we took it
    return False


def start_build() -> bool:
    """Start a detached builder for the venvs that are not built; False if none is needed
    or a builder is already running. Stale failure notes are cleared, so each start retries."""
    global _builder
    if all(is_ready(name) for name in SPECS):
        return False
    fd = _open_lock()
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        for name in SPECS:
            _failed(name).unlink(missing_ok=True)
        _log("starting a builder")
        with LOG.open("ab") as log:
            # The child inherits the locked file description: the lock passes to it whole.
            _builder = subprocess.Popen(
                [base_python(), str(Path(__file__).resolve()), "build", "--lock-fd", str(fd)],
                cwd=ROOT, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                pass_fds=(fd,), start_new_session=True, env=_clean_env())
        return True
    finally:
        os.close(fd)


def _build_one(name: str) -> subprocess.Popen[bytes]:
    """Start (re)building one venv; returns the process doing it (venv, then pip)."""
    directory = venv_dir(name)
    shutil.rmtree(directory, ignore_errors=True)
    pip = [str(directory / "bin" / "python"), "-m", "pip", "install", *PIP_FLAGS, *SPECS[name]]
    script = (f"{_quote(base_python())} -m venv {_quote(str(directory))} && "
              + " ".join(_quote(part) for part in pip))
    with _venv_log(name).open("wb") as log:
        log.write(f"$ {script}\n".encode())
        log.flush()
        return subprocess.Popen(["/bin/sh", "-c", script], stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT, cwd=CACHE,
                                env=_clean_env())


def _quote(text: str) -> str:
    return "'" + text.replace("'", "'\"'\"'") + "'"


def build(lock_fd: int | None = None) -> int:
    """The builder: build the venvs that are not ready, in parallel, holding the lock."""
    if lock_fd is None:
        lock_fd = _open_lock()
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print("another builder is running", file=sys.stderr)
            return 0
    todo = [name for name in SPECS if not is_ready(name)]
    for name in todo:
        _failed(name).unlink(missing_ok=True)
    started = {name: (time.monotonic(), _build_one(name)) for name in todo}
    for name in todo:
        _log(f"building {name}: {' '.join(SPECS[name])}")
    status = 0
    for name, (t0, proc) in started.items():
        try:
            rc = proc.wait(timeout=max(1.0, BUILD_TIMEOUT - (time.monotonic() - t0)))
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait()
            _log(f"{name}: timed out after {BUILD_TIMEOUT:.0f} s")
        elapsed = time.monotonic() - t0
        if rc == 0:
            tmp = _marker(name).with_suffix(".tmp")
            tmp.write_text(json.dumps(_identity(name)))
            tmp.replace(_marker(name))
            _log(f"built {name} in {elapsed:.1f} s")
        else:
            status = 1
            tail = _tail(_venv_log(name))
            _failed(name).write_text(f"pip exited {rc} after {elapsed:.1f} s\n{tail}\n")
            _log(f"FAILED {name} (exit {rc}, {elapsed:.1f} s); last lines:\n{tail}")
    os.close(lock_fd)
    return status


def wait_for(name: str, timeout: float = BUILD_TIMEOUT) -> Path:
    """Block until venv ``name`` is built (starting a builder if none runs); returns its
    python. Skips (or fails, with MODELSERVERS_REQUIRED=1) with the log tail if it failed."""
    import pytest

    deadline = time.monotonic() + timeout
    started_here = False
    while True:
        if _builder is not None:
            _builder.poll()
        if is_ready(name):
            return venv_python(name)
        if _failed(name).exists():
            _unavailable(f"building the {name} venv failed ({CACHE}):\n"
                         + _failed(name).read_text(errors="replace"))
        if not building():
            if is_ready(name) or _failed(name).exists():
                continue  # the builder finished between the checks
            if started_here:
                pytest.fail(f"the builder stopped without building {name}:\n{_tail(LOG)}")
            start_build()
            started_here = True
        if time.monotonic() > deadline:
            pytest.fail(f"the {name} venv is not built after {timeout:.0f} s:\n"
                        f"{_tail(_venv_log(name))}")
        time.sleep(0.5)


def _unavailable(reason: str) -> None:
    import pytest

    if os.environ.get("MODELSERVERS_REQUIRED") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


def _clean_env() -> dict[str, str]:
    """The environment for builders and servers: no settings leaking in from the test run."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MLSERVER_", "KSERVE_", "PYTHON", "VIRTUAL_ENV", "PIP_REQUIRE"))}
    env["PYTHONUNBUFFERED"] = "1"
    return env


# --- the model ------------------------------------------------------------------------------

TRAIN = r"""
import json, sys
import joblib, numpy as np, sklearn
from sklearn.datasets import make_classification
from sklearn.linear_model import LogisticRegression

X, y = make_classification(n_samples=400, n_features=4, n_informative=3, n_redundant=0,
                           n_classes=3, n_clusters_per_class=1, random_state=0)
model = LogisticRegression(max_iter=1000).fit(X, y)
joblib.dump(model, sys.argv[1])
# Rows as the tests send them (FP32); the expected classes from the same float32 values.
rows = X[[0, 1, 2, 3, 5, 8, 13, 21]].astype(np.float32)
expected = joblib.load(sys.argv[1]).predict(rows)
print(json.dumps({"rows": rows.tolist(), "expected": [int(c) for c in expected],
                  "sklearn": sklearn.__version__}))
"""


def train(python: Path, path: Path) -> dict[str, Any]:
    out = subprocess.run([str(python), "-c", TRAIN, str(path)], check=False,
                         capture_output=True, text=True, timeout=120, env=_clean_env())
    if out.returncode != 0:
        raise RuntimeError(f"training with {python} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# --- servers ----------------------------------------------------------------------------------


@dataclass
class ModelServer:
    kind: str
    http: str  # "127.0.0.1:PORT"
    grpc: str  # "127.0.0.1:PORT"
    rows: list[list[float]]  # FP32 feature rows, 4 features each
    expected: list[int]  # the class the model predicts for each row
    pid: int
    log: Path
    sklearn: str
    model: str = MODEL
    listening: list[tuple[str, int]] = field(default_factory=list)

    def log_tail(self, lines: int = 40) -> str:
        return _tail(self.log, lines)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as e:
        return e.code
    except (OSError, ValueError):
        return 0


def _connects(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    with contextlib.suppress(OSError), socket.create_connection((host, int(port)), timeout=1):
        return True
    return False


def _listening(pid: int) -> list[tuple[str, int]] | None:
    """The TCP addresses the processes of group ``pid`` listen on (Linux /proc), or None."""
    if not Path("/proc/net/tcp").exists():
        return None
    inodes: set[str] = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if os.getpgid(int(proc.name)) != pid:
                continue
            for fd in (proc / "fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            continue
    found = []
    for table, width in (("tcp", 8), ("tcp6", 32)):
        with contextlib.suppress(OSError), open(f"/proc/net/{table}") as f:
            for line in list(f)[1:]:
                cols = line.split()
                if cols[3] != "0A" or cols[9] not in inodes:  # 0A: LISTEN
                    continue
                hexaddr, hexport = cols[1].split(":")
                found.append((_ip(hexaddr, width), int(hexport, 16)))
    return sorted(found)


def _ip(hexaddr: str, width: int) -> str:
    raw = bytes.fromhex(hexaddr)
    # /proc prints each 32-bit word in host (little-endian) order.
    raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    if width == 8:
        return socket.inet_ntop(socket.AF_INET, raw)
    if raw[:12] == b"\0" * 10 + b"\xff\xff":  # IPv4-mapped (gRPC binds AF_INET6 sockets)
        return socket.inet_ntop(socket.AF_INET, raw[12:])
    return socket.inet_ntop(socket.AF_INET6, raw)


def _spawn(argv: list[str], cwd: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                env=_clean_env())


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server's process group (its id is the server's pid, signalled only while
    that process is unreaped), SIGKILL after a wait."""
    for sig, wait in ((signal.SIGTERM, STOP_TIMEOUT), (signal.SIGKILL, 5.0)):
        if proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=wait)


def _wait_ready(proc: subprocess.Popen[bytes], server: ModelServer) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    http = f"http://{server.http}"
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{server.kind} exited with {proc.returncode}:\n"
                               f"{server.log_tail()}")
        if (_get(f"{http}/v2/health/ready") == 200
                and _get(f"{http}/v2/models/{MODEL}/ready") == 200
                and _connects(server.grpc)):
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"{server.kind} not ready after {START_TIMEOUT:.0f} s:\n"
                               f"{server.log_tail()}")
        time.sleep(0.25)
    listening = _listening(proc.pid)
    if listening is not None:
        server.listening = listening
        wide = [a for a in listening if a[0] != "127.0.0.1"]
        if wide:
            raise RuntimeError(f"{server.kind} listens beyond 127.0.0.1: {wide}")


@contextlib.contextmanager
def run_mlserver(folder: Path) -> Iterator[ModelServer]:
    python = wait_for("mlserver")
    folder.mkdir(parents=True, exist_ok=True)
    trained = train(python, folder / "model.joblib")
    http, grpc = free_port(), free_port()
    # Names from mlserver 1.7.1's mlserver/settings.py (Settings, ModelSettings).
    (folder / "settings.json").write_text(json.dumps({
        "host": "127.0.0.1", "http_port": http, "grpc_port": grpc,
        "metrics_endpoint": None,  # no metrics server (else it binds metrics_port)
        "parallel_workers": 0,  # inference in the server process: no worker pool
        "debug": False, "load_models_at_startup": True,
    }, indent=2))
    (folder / "model-settings.json").write_text(json.dumps({
        "name": MODEL, "implementation": "mlserver_sklearn.SKLearnModel",
        "parameters": {"uri": str(folder / "model.joblib")},
    }, indent=2))
    server = ModelServer("mlserver", f"127.0.0.1:{http}", f"127.0.0.1:{grpc}",
                         trained["rows"], trained["expected"], 0, folder / "server.log",
                         trained["sklearn"])
    # cwd is the folder: mlserver reads ./.env and puts .envs/.metrics under the cwd.
    proc = _spawn([str(python.parent / "mlserver"), "start", str(folder)], folder, server.log)
    server.pid = proc.pid
    try:
        _wait_ready(proc, server)
        yield server
    finally:
        _stop(proc)


KSERVE_SERVER = r'''
"""KServe V2 server for one scikit-learn model on 127.0.0.1 (written by modelservers.py)."""
import json
import sys
import uuid

config = json.loads(open(sys.argv[1]).read())
sys.argv = sys.argv[:1]  # kserve parses the command line when imported

# kserve 0.21 hard-codes its listen addresses (uvicorn host "0.0.0.0", gRPC "[::]:port");
# rebind both to 127.0.0.1 in this process.
import grpc.aio
import uvicorn


class _LoopbackConfig(uvicorn.Config):
    def __init__(self, app, **kwargs):
        kwargs["host"] = "127.0.0.1"
        super().__init__(app, **kwargs)


uvicorn.Config = _LoopbackConfig
_aio_server = grpc.aio.server


def _loopback_aio_server(*args, **kwargs):
    server = _aio_server(*args, **kwargs)
    add = server.add_insecure_port
    server.add_insecure_port = lambda address: add("127.0.0.1:" + address.rsplit(":", 1)[1])
    return server


grpc.aio.server = _loopback_aio_server

import joblib
import kserve
import numpy as np
from kserve import InferOutput, InferRequest, InferResponse


class Classifier(kserve.Model):
    def __init__(self, name, path):
        super().__init__(name)
        self.path = path
        self.load()

    def load(self):
        self.model = joblib.load(self.path)
        self.ready = True
        return True

    async def predict(self, payload, headers=None, response_headers=None):
        # As kserve.utils.utils.get_predict_response (what kserve's sklearnserver answers),
        # with the output named "predict": binary out when the request asks for it (REST
        # binary_data_output / per-output binary_data; gRPC: raw inputs in -> raw outputs).
        assert isinstance(payload, InferRequest), type(payload)
        rows = payload.inputs[0].as_numpy()
        classes = self.model.predict(rows).astype(np.int64)
        output = InferOutput(name="predict", shape=list(classes.shape), datatype="INT64")
        output.set_data_from_numpy(classes, binary_data=payload.use_binary_outputs)
        return InferResponse(response_id=payload.id if payload.id else str(uuid.uuid4()),
                             model_name=self.name, infer_outputs=[output],
                             use_binary_outputs=payload.use_binary_outputs,
                             requested_outputs=payload.request_outputs)


model = Classifier(config["model"], config["path"])
kserve.ModelServer(http_port=config["http_port"], grpc_port=config["grpc_port"],
                   workers=1, grace_period=2).start([model])
'''


@contextlib.contextmanager
def run_kserve(folder: Path) -> Iterator[ModelServer]:
    python = wait_for("kserve")
    folder.mkdir(parents=True, exist_ok=True)
    trained = train(python, folder / "model.joblib")
    http, grpc = free_port(), free_port()
    (folder / "server.py").write_text(KSERVE_SERVER)
    (folder / "config.json").write_text(json.dumps({
        "model": MODEL, "path": str(folder / "model.joblib"),
        "http_port": http, "grpc_port": grpc}))
    server = ModelServer("kserve", f"127.0.0.1:{http}", f"127.0.0.1:{grpc}",
                         trained["rows"], trained["expected"], 0, folder / "server.log",
                         trained["sklearn"])
    proc = _spawn([str(python), str(folder / "server.py"), str(folder / "config.json")],
                  folder, server.log)
    server.pid = proc.pid
    try:
        _wait_ready(proc, server)
        yield server
    finally:
        _stop(proc)


# --- pytest fixtures ----------------------------------------------------------------------

try:
    import pytest
except ImportError:  # the builder runs without pytest
    pass
else:

    @pytest.fixture(scope="session")
    def mlserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModelServer]:
        with run_mlserver(tmp_path_factory.mktemp("mlserver")) as server:
            yield server

    @pytest.fixture(scope="session")
    def kserve_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModelServer]:
        with run_kserve(tmp_path_factory.mktemp("kserve")) as server:
            yield server


def main(argv: list[str]) -> int:
    if argv[:1] == ["build"]:
        lock_fd = int(argv[2]) if argv[1:2] == ["--lock-fd"] else None
        return build(lock_fd)
    if argv[:1] == ["status"]:
        for name in SPECS:
            print(name, "ready" if is_ready(name) else "not built", venv_dir(name))
        print("builder running" if building() else "no builder running")
        return 0
    print("usage: python tests/modelservers.py build|status", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
