"""A real Prometheus server (Debian's `prometheus` package) scraping given targets."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from service.devservers._process import DevServer, DevServerError, require_tool, run_checked

PROMETHEUS_HINT = "install Prometheus (Debian: apt-get install -y prometheus, or run .ci/install-system.sh)"

Sample = dict[str, Any]  # one entry of /api/v1/query's data.result


def promtool_path() -> str:
    """Path of `promtool` (checks configs, unit-tests alert rules)."""
    return require_tool("promtool", PROMETHEUS_HINT)


def prometheus_path() -> str:
    return require_tool("prometheus", PROMETHEUS_HINT)


def _duration(seconds: float) -> str:
    """Prometheus duration text; whole milliseconds, e.g. 1.0 -> '1000ms'."""
    return f"{round(seconds * 1000)}ms"


class PrometheusServer(DevServer):
    """Prometheus on a free loopback port scraping `targets` every `scrape_interval_s`.

    `targets` are `host:port` strings served at `metrics_path`; `rule_files`
    are loaded and evaluated every `evaluation_interval_s`.
    """

    name = "prometheus"

    def __init__(
        self,
        targets: Sequence[str],
        *,
        port: int | None = None,
        job_name: str = "moldwatch",
        metrics_path: str = "/metrics",
        scrape_interval_s: float = 1.0,
        evaluation_interval_s: float = 1.0,
        rule_files: Sequence[Path] = (),
        workdir: Path | None = None,
        start_timeout_s: float = 60.0,
    ) -> None:
        self._binary = prometheus_path()
        super().__init__(port=port, workdir=workdir, start_timeout_s=start_timeout_s)
        self.targets = list(targets)
        self.job_name = job_name
        self.metrics_path = metrics_path
        self.scrape_interval_s = scrape_interval_s
        self.evaluation_interval_s = evaluation_interval_s
        self.rule_files = [Path(p).resolve() for p in rule_files]
        self.config_path = self.workdir / "prometheus.yml"
        self.storage_dir = self.workdir / "tsdb"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def config(self) -> dict[str, Any]:
        interval = _duration(self.scrape_interval_s)
        return {
            "global": {
                "scrape_interval": interval,
                # Must not exceed the interval; the 10 s default would.
                "scrape_timeout": interval,
                "evaluation_interval": _duration(self.evaluation_interval_s),
            },
            "rule_files": [str(p) for p in self.rule_files],
            "scrape_configs": [
                {
                    "job_name": self.job_name,
                    "metrics_path": self.metrics_path,
                    "static_configs": [{"targets": self.targets}],
                }
            ],
        }

    def prepare(self) -> None:
        # JSON is valid YAML, and needs no YAML writer.
        self.config_path.write_text(json.dumps(self.config(), indent=2) + "\n")

    def command(self) -> list[str]:
        return [
            self._binary,
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.storage_dir}",
            f"--web.listen-address={self.host}:{self.port}",
            "--storage.tsdb.retention.time=1h",  # throwaway data
            "--log.level=info",
        ]

    def probe(self) -> bool:
        with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as resp:
            return resp.status == 200

    def query(self, expr: str) -> list[Sample]:
        """Instant query via /api/v1/query; returns data.result."""
        return query(self.url, expr)

    def wait_for(
        self,
        expr: str,
        predicate: Callable[[list[Sample]], bool] = bool,
        timeout_s: float = 30.0,
        interval_s: float = 0.5,
    ) -> list[Sample]:
        """Poll `expr` until `predicate(result)` holds (default: non-empty)."""
        deadline = time.monotonic() + timeout_s
        result: list[Sample] = []
        while True:
            result = self.query(expr)
            if predicate(result):
                return result
            if time.monotonic() > deadline:
                raise DevServerError(
                    f"Prometheus query {expr!r} did not match within {timeout_s:.0f}s; last result {result!r}; "
                    f"targets: {self.target_health()!r}"
                )
            time.sleep(interval_s)

    def target_health(self) -> list[dict[str, Any]]:
        """Scrape state of each target (`health`, `lastError`), for diagnostics."""
        data = _get_json(f"{self.url}/api/v1/targets")
        return [
            {"scrapeUrl": t.get("scrapeUrl"), "health": t.get("health"), "lastError": t.get("lastError")}
            for t in data.get("activeTargets", [])
        ]


def query(base_url: str, expr: str, timeout_s: float = 5.0) -> list[Sample]:
    """Instant query against any Prometheus at `base_url`; returns data.result."""
    url = f"{base_url.rstrip('/')}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"
    data = _get_json(url, timeout_s)
    result = data.get("result")
    if not isinstance(result, list):
        raise DevServerError(f"Prometheus query {expr!r} gave a {data.get('resultType')!r}, not a vector")
    return result


def _get_json(url: str, timeout_s: float = 5.0) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            body = json.load(resp)
    except urllib.error.HTTPError as exc:  # 400/422 carry the error in JSON
        body = json.loads(exc.read() or b"{}")
    if body.get("status") != "success":
        raise DevServerError(f"Prometheus API error for {url}: {body.get('errorType')}: {body.get('error')}")
    data = body.get("data")
    return data if isinstance(data, dict) else {}


def promtool_check_config(config_path: Path) -> str:
    """`promtool check config FILE`; returns its output, raises on a bad config."""
    return run_checked([promtool_path(), "check", "config", str(config_path)], "promtool check config", timeout_s=60)


__all__ = [
    "PrometheusServer",
    "prometheus_path",
    "promtool_check_config",
    "promtool_path",
    "query",
]
