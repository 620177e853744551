"""Write a lock file from a ``pip install --dry-run --report`` of the project.

Every package pip would install, pinned to the exact version with the sha256 of the artifact pip
chose (so ``pip install --require-hashes -r <lock>`` refuses anything else). The report describes
one interpreter and platform; the header records them, and deploy/local/setup.sh uses the lock only
where they match (elsewhere it installs from pyproject.toml's ranges). Run through
deploy/local/lock.sh, not by hand: it writes both locks,

    requirements.lock        .[train,test,cluster]: setup.sh, .ci/run, the tests and the Dockerfile's train image
    requirements-serve.lock  . (the base install): the Dockerfile's worker image

    python deploy/local/lock.py REPORT OUT --what TEXT --used-by TEXT [--pins PINS]

``--pins`` also writes plain ``name==version`` lines, the constraints lock.sh resolves the serving
lock under, so that the worker image runs exactly the versions the tests ran.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HEADER_LINES = 3


def pinned(report: dict) -> list[tuple[str, str, str]] | str:
    """(name, version, sha256) of every package the report installs, sorted; or an error line."""
    rows = []
    for item in sorted(report["install"], key=lambda i: i["metadata"]["name"].lower()):
        name, version = item["metadata"]["name"], item["metadata"]["version"]
        hashes = item["download_info"].get("archive_info", {}).get("hashes", {})
        if name == "moldwatch":  # the project itself: installed from the tree, not pinned
            continue
        if "sha256" not in hashes:
            return f"error: {name} {version}: pip's report has no sha256 (from {item['download_info'].get('url')})"
        rows.append((name, version, hashes["sha256"]))
    return rows


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report")
    parser.add_argument("out")
    parser.add_argument("--what", required=True, help="what the lock holds, for its first line")
    parser.add_argument("--used-by", required=True, help="what installs it, for its third line")
    parser.add_argument("--pins", help="also write name==version lines (constraints) here")
    args = parser.parse_args(argv)

    report = json.loads(Path(args.report).read_text())
    rows = pinned(report)
    if isinstance(rows, str):
        print(rows, file=sys.stderr)
        return 1
    env = report["environment"]
    lines = [
        f"# Exact versions and hashes of moldwatch's dependencies {args.what} (pyproject.toml keeps the ranges).",
        f"# platform: {env['implementation_name']} {env['python_version']} {env['sys_platform']} {env['platform_machine']}",
        f"# Refresh: deploy/local/lock.sh   (installed by {args.used_by})",
    ]
    assert len(lines) == HEADER_LINES
    lines += [f"{name}=={version} \\\n    --hash=sha256:{sha}" for name, version, sha in rows]
    Path(args.out).write_text("\n".join(lines) + "\n")
    if args.pins:
        Path(args.pins).write_text("".join(f"{name}=={version}\n" for name, version, _ in rows))
    print(f"{args.out}: {len(rows)} packages")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
