"""Real local servers for tests, CI and the demo: Kafka, MongoDB protocol,
PostgreSQL and Prometheus, each on a free loopback port.

    with KafkaServer() as kafka, MongoServer() as mongo:
        ...  # kafka.bootstrap_servers, mongo.uri

Each server: start() waits for a real protocol call, stop() kills its whole
process group (idempotent; start() again reuses the port and files), close()
also deletes its temp dir; anything left open is closed at interpreter exit.
"""

from service.devservers._process import DevServer, DevServerError, free_port
from service.devservers.fetch import cache_dir, fetch_all
from service.devservers.kafka import KafkaSecurity, KafkaServer
from service.devservers.mongo import MongoServer
from service.devservers.postgres import PostgresServer
from service.devservers.prometheus import PrometheusServer, promtool_check_config, promtool_path, query

__all__ = [
    "DevServer",
    "DevServerError",
    "KafkaSecurity",
    "KafkaServer",
    "MongoServer",
    "PostgresServer",
    "PrometheusServer",
    "cache_dir",
    "fetch_all",
    "free_port",
    "promtool_check_config",
    "promtool_path",
    "query",
]
