"""Write requirements.lock from a ``pip install --dry-run --report`` of ``.[test]``.

Every package pip would install, pinned to the exact version with the sha256 of the artifact pip
chose (so ``pip install --require-hashes -r requirements.lock`` refuses anything else). The report
describes one interpreter and platform; the header records them, and deploy/local/setup.sh uses the
lock only where they match (elsewhere it installs from pyproject.toml's ranges). Run through
deploy/local/lock.sh, not by hand.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def main(report_path: str, out_path: str) -> int:
    report = json.loads(Path(report_path).read_text())
    env = report["environment"]
    lines = [
        "# Exact versions and hashes of moldwatch's dependencies with the test extra (pyproject.toml keeps the ranges).",
        f"# platform: {env['implementation_name']} {env['python_version']} {env['sys_platform']} {env['platform_machine']}",
        "# Refresh: deploy/local/lock.sh   (setup.sh, .ci/run and the Dockerfile install this file)",
    ]
    for item in sorted(report["install"], key=lambda i: i["metadata"]["name"].lower()):
        name, version = item["metadata"]["name"], item["metadata"]["version"]
        hashes = item["download_info"].get("archive_info", {}).get("hashes", {})
        if name == "moldwatch":  # the project itself: installed from the tree, not pinned
            continue
        if "sha256" not in hashes:
            print(f"error: {name} {version}: pip's report has no sha256 (from {item['download_info'].get('url')})", file=sys.stderr)
            return 1
        lines.append(f"{name}=={version} \\\n    --hash=sha256:{hashes['sha256']}")
    Path(out_path).write_text("\n".join(lines) + "\n")
    print(f"{out_path}: {len(lines) - 3} packages")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
