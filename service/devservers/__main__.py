"""CLI: `python -m service.devservers fetch | up | down`.

fetch   pre-fetch the Kafka and Mongo-server jars into the cache
up      start Kafka + the Mongo server (optionally PostgreSQL) and print the
        MOLDWATCH_* variables that `moldwatch run` reads, as `export` lines;
        run until Ctrl-C / SIGTERM. With --detach the servers run in the
        background and `up` returns, so a shell can take the variables:
            eval "$(python -m service.devservers up --detach)"
            moldwatch run --store runs/demo/store
            python -m service.devservers down
down    stop the servers a detached `up` started
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import FrameType

from service.devservers._process import DevServer, DevServerError
from service.devservers.fetch import cache_dir, fetch_all
from service.devservers.kafka import KafkaServer
from service.devservers.mongo import MongoServer
from service.devservers.postgres import PostgresServer
from service.processes import pid_alive


def _cmd_fetch(_: argparse.Namespace) -> int:
    for path in fetch_all():
        print(path)
    return 0


DETACH_START_S = 180.0  # first start fetches jars and formats Kafka storage; later starts take seconds


def _state_dir() -> Path:
    return cache_dir() / "devservers-up"


def exports(kafka_bootstrap: str, mongo_uri: str, postgres_dsn: str | None = None) -> list[str]:
    """Shell lines that set what `moldwatch run` reads (service/config.py: MOLDWATCH_ + field name)."""
    from service.config import env_name

    lines = [f"export {env_name('kafka_bootstrap_servers')}={shlex.quote(kafka_bootstrap)}",
             f"export {env_name('mongo_uri')}={shlex.quote(mongo_uri)}"]
    if postgres_dsn:  # for `moldwatch train --records postgresql://...`, not read by `run`
        lines.append(f"export MOLDWATCH_POSTGRES_DSN={shlex.quote(postgres_dsn)}")
    return lines


def _cmd_up(args: argparse.Namespace) -> int:
    if args.detach:
        return _detach(args)
    servers: list[DevServer] = []
    stop = threading.Event()

    def _on_signal(signum: int, _frame: FrameType | None) -> None:
        stop.set()

    try:
        kafka = KafkaServer(port=args.kafka_port)
        servers.append(kafka)
        mongo = MongoServer(port=args.mongo_port)
        servers.append(mongo)
        for server in servers:
            server.start()
        dsn = None
        if args.postgres:
            postgres = PostgresServer(port=args.postgres_port)
            servers.append(postgres)
            postgres.start()
            dsn = postgres.dsn
        lines = exports(kafka.bootstrap_servers, mongo.uri, dsn)
        lines.append("# logs: " + " ".join(str(s.log_path) for s in servers))
        if args.env_out:  # written last and renamed: a detached parent waits for a complete file
            tmp = Path(args.env_out).with_suffix(".partial")
            tmp.write_text("\n".join(lines) + "\n")
            tmp.replace(args.env_out)
        print("\n".join(lines), flush=True)
        # Only now: Ctrl-C during start-up is a plain KeyboardInterrupt.
        signal.signal(signal.SIGINT, _on_signal)
        signal.signal(signal.SIGTERM, _on_signal)
        print("# running; Ctrl-C to stop", file=sys.stderr, flush=True)
        # Also notice a server dying by itself, instead of hanging forever.
        while not stop.wait(1.0):
            dead = [s for s in servers if not s.is_running]
            if dead:
                print(f"# {dead[0].name} exited; log tail:\n{dead[0].log_tail()}", file=sys.stderr)
                return 1
        return 0
    finally:
        for server in reversed(servers):
            server.close()


def _detach(args: argparse.Namespace) -> int:
    """Start `up` in its own session, wait for its variables, print them, return (servers keep running)."""
    state = _state_dir()
    state.mkdir(parents=True, exist_ok=True)
    pid_file, env_file, log_file = state / "pid", state / "env.sh", state / "up.log"
    if pid_file.is_file() and pid_alive(int(pid_file.read_text() or 0)) and env_file.is_file():
        # already up: the same variables again (idempotent)
        print(env_file.read_text(), end="", flush=True)
        return 0
    env_file.unlink(missing_ok=True)
    command = [sys.executable, "-m", "service.devservers", "up", "--env-out", str(env_file)]
    for flag, value in (("--kafka-port", args.kafka_port), ("--mongo-port", args.mongo_port), ("--postgres-port", args.postgres_port)):
        if value is not None:
            command += [flag, str(value)]
    if args.postgres:
        command.append("--postgres")
    with open(log_file, "ab") as log:
        child = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
    pid_file.write_text(str(child.pid))
    deadline = time.monotonic() + DETACH_START_S
    while not env_file.is_file():
        if child.poll() is not None:
            print(f"error: the dev servers did not start (exit code {child.returncode}); see {log_file}", file=sys.stderr)
            return 1
        if time.monotonic() > deadline:
            child.terminate()
            print(f"error: the dev servers did not start within {DETACH_START_S:.0f} s; see {log_file}", file=sys.stderr)
            return 1
        time.sleep(0.2)  # polling a file another process writes: no event to wait on
    print(env_file.read_text(), end="", flush=True)
    print(f"# stop them with: {shlex.quote(sys.executable)} -m service.devservers down", flush=True)
    return 0


def _cmd_down(_: argparse.Namespace) -> int:
    pid_file = _state_dir() / "pid"
    pid = int(pid_file.read_text() or 0) if pid_file.is_file() else 0
    if not pid_alive(pid):
        print("# no detached dev servers running", file=sys.stderr)
        pid_file.unlink(missing_ok=True)
        return 0
    os.kill(pid, signal.SIGTERM)  # `up` closes its servers on SIGTERM
    deadline = time.monotonic() + 60
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if pid_alive(pid):
        print(f"error: dev servers (pid {pid}) did not stop within 60 s", file=sys.stderr)
        return 1
    pid_file.unlink(missing_ok=True)
    (_state_dir() / "env.sh").unlink(missing_ok=True)
    print("# dev servers stopped", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service.devservers", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("fetch", help=f"pre-fetch all jars (into {cache_dir()})").set_defaults(func=_cmd_fetch)
    up = sub.add_parser("up", help="start Kafka + Mongo and run until Ctrl-C")
    up.add_argument("--kafka-port", type=int, default=None, help="default: a free port")
    up.add_argument("--mongo-port", type=int, default=None, help="default: a free port")
    up.add_argument("--postgres", action="store_true", help="also start PostgreSQL")
    up.add_argument("--postgres-port", type=int, default=None, help="default: a free port")
    up.add_argument("--detach", action="store_true",
                    help='run in the background and return: eval "$(python -m service.devservers up --detach)"')
    up.add_argument("--env-out", default=None, help=argparse.SUPPRESS)
    up.set_defaults(func=_cmd_up)
    sub.add_parser("down", help="stop the servers of a detached `up`").set_defaults(func=_cmd_down)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except DevServerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
