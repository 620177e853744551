"""CLI: `python -m service.devservers fetch | up`.

fetch   pre-fetch the Kafka and Mongo-server jars into the cache
up      start Kafka + the Mongo server (optionally PostgreSQL), print their
        addresses as KEY=value lines, run until Ctrl-C / SIGTERM
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from types import FrameType

from service.devservers._process import DevServer, DevServerError
from service.devservers.fetch import cache_dir, fetch_all
from service.devservers.kafka import KafkaServer
from service.devservers.mongo import MongoServer
from service.devservers.postgres import PostgresServer


def _cmd_fetch(_: argparse.Namespace) -> int:
    for path in fetch_all():
        print(path)
    return 0


def _cmd_up(args: argparse.Namespace) -> int:
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
        lines = [f"KAFKA_BOOTSTRAP_SERVERS={kafka.bootstrap_servers}", f"MONGO_URI={mongo.uri}"]
        if args.postgres:
            postgres = PostgresServer(port=args.postgres_port)
            servers.append(postgres)
            postgres.start()
            lines.append(f"POSTGRES_DSN={postgres.dsn}")
        print("\n".join(lines), flush=True)
        print("# logs: " + " ".join(str(s.log_path) for s in servers), flush=True)
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service.devservers", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("fetch", help=f"pre-fetch all jars (into {cache_dir()})").set_defaults(func=_cmd_fetch)
    up = sub.add_parser("up", help="start Kafka + Mongo and run until Ctrl-C")
    up.add_argument("--kafka-port", type=int, default=None, help="default: a free port")
    up.add_argument("--mongo-port", type=int, default=None, help="default: a free port")
    up.add_argument("--postgres", action="store_true", help="also start PostgreSQL")
    up.add_argument("--postgres-port", type=int, default=None, help="default: a free port")
    up.set_defaults(func=_cmd_up)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except DevServerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
