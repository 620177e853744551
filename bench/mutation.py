"""Mutation testing of the decision-rule modules against their fast tests.

    .venv/bin/python bench/mutation.py                      # every rule module that exists
    .venv/bin/python bench/mutation.py --module imputation  # one (repeatable)
    .venv/bin/python bench/mutation.py --module mapping --recheck  # only its saved survivors, after new tests

Why mutmut 3.x: it is maintained, it can be pointed at exactly one file (``only_mutate``) and
exactly the test files that pin it (``pytest_add_cli_args_test_selection``), it runs each mutant
only against the tests that reach the mutated function, and its CPU-time limit turns a mutant that
loops into a "timeout" instead of a hung run. cosmic-ray would need a session database and a
config per module for the same result; a home-made AST mutator would be one more thing to trust.

Safety: mutmut writes ``mutants/`` next to the sources. Several agents edit the working tree at
once, so nothing runs there: the tree (tracked and untracked, not ignored files) is copied into a
temporary directory and mutmut runs in that copy, one module at a time, with one worker (the
machine has 2 shared cores).

Output: ``bench/results/mutation.json``, per module: killed / survived / timeout (and mutmut's
other outcomes), the kill rate over non-equivalent mutants, and every surviving mutant with its
file, line and the mutation (the line before and after). A run with ``--module`` updates only
that module's entry. Equivalent mutants (no test can tell them apart, e.g. ``-1`` -> ``-2``
for a value that is only ever compared with ``>= 0``) are listed, with the reason, in
``bench/mutation_equivalents.yaml`` by file, line and mutation; they are reported but not
counted. An entry that no longer matches a mutant is reported as stale.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench._common import write_result

EQUIVALENTS = ROOT / "bench" / "mutation_equivalents.yaml"
TARGET = 0.90  # kill rate asked of every module (issue 9)


@dataclass(frozen=True)
class RuleModule:
    """A module holding decision rules and the fast test files that pin it."""

    path: str
    tests: tuple[str, ...]


# Only fast tests (no servers, no TensorFlow training): each mutant reruns them.
MODULES: dict[str, RuleModule] = {
    "thresholds": RuleModule("model_store/serving/thresholds.py", ("tests/model_store/serving/test_thresholds.py",)),
    "resolution": RuleModule("model_store/serving/resolution.py", ("tests/model_store/serving/test_resolution.py",)),
    "imputation": RuleModule("model_store/serving/imputation.py", ("tests/model_store/serving/test_imputation.py",)),
    "excursions": RuleModule("model_store/serving/excursions.py", ("tests/model_store/serving/test_excursions.py",)),
    "calibration": RuleModule("model_store/calibration.py", ("tests/model_store/test_calibration.py",)),
    "probability": RuleModule("model_store/serving/probability.py", ("tests/model_store/test_calibration.py",)),
    "decode": RuleModule("service/decode.py", ("tests/service/test_decode*.py",)),
    "mapping": RuleModule("model_store/mapping.py", ("tests/model_store/test_mapping.py", "tests/service/test_decode*.py")),
    "ranking": RuleModule("model_store/recipe/ranking.py",
                          ("tests/model_store/test_recipe.py", "tests/model_store/test_recipe_ranking.py")),
    "intervals": RuleModule("model_store/recipe/intervals.py",
                            ("tests/model_store/test_recipe_intervals.py", "tests/model_store/test_recipe.py")),
    "recipe_gate": RuleModule("model_store/recipe/gate.py", ("tests/model_store/test_recipe_gate.py",)),
    "groups": RuleModule("model_store/groups.py", ("tests/model_store/test_groups*.py", "tests/model_store/test_part_groups.py")),
    "lots": RuleModule("model_store/lots.py", ("tests/model_store/test_lots.py",)),
    "http_auth": RuleModule("service/http_auth.py", ("tests/service/test_http_auth.py",)),
    "feedback": RuleModule("service/feedback.py", ("tests/service/test_feedback.py",)),
    "drift": RuleModule("model_store/serving/drift.py", ("tests/model_store/serving/test_drift.py",)),
    "canary": RuleModule("model_store/canary.py", ("tests/model_store/test_canary.py",)),
    "feedback_lines": RuleModule("model_store/serving/feedback_lines.py", ("tests/model_store/serving/test_feedback_lines.py",)),
    "line_book": RuleModule("model_store/serving/line_book.py", ("tests/model_store/serving/test_line_book.py",)),
    "lot_drift": RuleModule("model_store/serving/lot_drift.py", ("tests/model_store/serving/test_lot_drift.py",)),
    "baseline": RuleModule("model_store/serving/baseline.py", ("tests/model_store/serving/test_baseline.py",)),
}

# mutmut's exit-code vocabulary, folded into the outcomes reported here.
KILLED, SURVIVED, TIMEOUT, NO_TESTS, OTHER = "killed", "survived", "timeout", "no_tests", "other"
_OUTCOME_BY_STATUS = {"killed": KILLED, "survived": SURVIVED, "timeout": TIMEOUT, "no tests": NO_TESTS}

# Runs inside the copy (mutmut reads its config from the working directory): outcome and diff of
# every mutant of one file, as JSON on stdout.
_COLLECT = r"""
import json, sys
from mutmut.mutation.data import SourceFileMutationData
from mutmut.mutation.diff_apply import get_diff_for_mutant
from mutmut.stats import status_by_exit_code
path = sys.argv[1]
data = SourceFileMutationData(path=path)
data.load()
out = {}
for name, code in data.exit_code_by_key.items():
    status = status_by_exit_code[code]
    out[name] = {"status": status, "diff": None if status == "killed" else get_diff_for_mutant(name, path=path)}
print(json.dumps(out))
"""


# Appended to the copy's tests/conftest.py (never the shared tree's): the same tests, property
# tests last, so that a mutant a hand-computed case kills dies before hundreds of examples run.
_ORDER_HOOK = """

def pytest_collection_modifyitems(items):  # added by bench/mutation.py in its private copy
    items.sort(key=lambda item: bool(getattr(getattr(item, "obj", None), "is_hypothesis_test", False)))
"""


def copy_tree(target: Path) -> None:
    """The working tree as it is now (tracked and untracked files git does not ignore)."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=ROOT, check=True, capture_output=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = ROOT / name
        if name.startswith(("bench/results/", "mutants/")) or not source.is_file():
            continue  # results are not needed; a file deleted but not yet staged is skipped
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target / name)


def configure(copy: Path, module: RuleModule, tests: list[str]) -> None:
    """Point mutmut at one module and its test files (appended to the copy's pyproject)."""
    source_paths = sorted({module.path.split("/")[0], "model_store", "service"})
    config = "\n".join([
        "",
        "[tool.mutmut]",
        f"source_paths = {json.dumps(source_paths)}",
        f"only_mutate = {json.dumps([module.path])}",
        # Fixed hypothesis seed: a mutant is killed or not, never by luck of the draw.
        'pytest_add_cli_args = ["-m", "not servers", "-p", "no:cacheprovider", "-q", "--hypothesis-seed=0"]',
        f"pytest_add_cli_args_test_selection = {json.dumps(tests)}",
        "use_git_change_detection = false",
        "",
    ])
    pyproject = copy / "pyproject.toml"
    pyproject.write_text(pyproject.read_text() + config)
    conftest = copy / "tests" / "conftest.py"
    if conftest.exists() and "def pytest_collection_modifyitems" not in conftest.read_text():
        conftest.write_text(conftest.read_text() + _ORDER_HOOK)
    for stale in ("mutants", "mutmut-stats.json", ".hypothesis"):
        target = copy / stale
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()


def function_lines(source: str) -> dict[str, int]:
    """First line of every function and method, by mutmut's mangled name (``x_f``, ``xǁCǁm``)."""
    import ast

    lines: dict[str, int] = {}
    for node in ast.parse(source).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            lines[f"x_{node.name}"] = node.lineno
        elif isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    lines[f"xǁ{node.name}ǁ{item.name}"] = item.lineno
    return lines


def describe(name: str, diff: str, path: str, starts: dict[str, int]) -> dict[str, Any]:
    """File line and the mutation (lines before / after) of one mutant, from mutmut's diff.

    mutmut diffs the function alone, so line 1 of the diff is the function's ``def`` line.
    """
    function = name.rpartition(".")[2].rpartition("__mutmut_")[0]
    start = starts.get(function)
    before: list[str] = []
    after: list[str] = []
    first_changed: int | None = None
    old_line = 0
    for line in diff.splitlines():
        if line.startswith(("---", "+++")):
            continue
        if line.startswith("@@"):
            old_line = int(line.split()[1].split(",")[0].lstrip("-")) - 1
            continue
        if line.startswith("-"):
            old_line += 1
            first_changed = first_changed or old_line
            before.append(line[1:].strip())
        elif line.startswith("+"):
            first_changed = first_changed or old_line + 1
            after.append(line[1:].strip())
        else:
            old_line += 1
    line_no = start + first_changed - 1 if start is not None and first_changed is not None else None
    function_name = function[2:].replace("ǁ", ".") if function.startswith("x") else function
    return {"file": path, "line": line_no, "function": function_name.lstrip("."),
            "before": "\n".join(before), "after": "\n".join(after), "mutant": name}


def load_equivalents() -> list[dict[str, Any]]:
    """Entries of the equivalents file, one per (file, line, before, after)."""
    if not EQUIVALENTS.exists():
        return []
    raw = yaml.safe_load(EQUIVALENTS.read_text()) or {}
    entries = []
    for path, items in raw.items():
        for item in items or []:
            missing = {"line", "before", "after", "reason"} - set(item)
            if missing:
                raise SystemExit(f"{EQUIVALENTS.name}: an entry of {path} lacks {sorted(missing)}: {item}")
            afters = item["after"] if isinstance(item["after"], list) else [item["after"]]
            entries += [{"file": path, "line": item["line"], "before": item["before"], "after": a, "reason": item["reason"]}
                        for a in afters]
    return entries


def _key(entry: dict[str, Any]) -> tuple[str, int, str, str]:
    return entry["file"], int(entry["line"]), str(entry["before"]).strip(), str(entry["after"]).strip()


def run_module(name: str, module: RuleModule, copy: Path, timeout_s: float, equivalents: list[dict[str, Any]]) -> dict[str, Any]:
    if not (copy / module.path).exists():
        return {"module": module.path, "skipped": "the module does not exist (yet)"}
    # a pattern picks up test files other agents add for the same module (test_decode_*.py)
    tests = sorted({str(p.relative_to(copy)) for t in module.tests for p in copy.glob(t)})
    if not tests:
        return {"module": module.path, "skipped": f"none of its fast test files exist: {list(module.tests)}"}
    configure(copy, module, tests)
    log = copy / f"mutmut-{name}.log"
    started = time.monotonic()
    print(f"== {name}: mutating {module.path} against {' '.join(tests)}", flush=True)
    code = _run_mutmut(copy, log, ["--max-children", "1"], timeout_s)
    seconds = round(time.monotonic() - started, 1)
    meta = copy / "mutants" / (module.path + ".meta")
    if not meta.exists():
        tail = log.read_text(errors="replace")[-1500:]
        return {"module": module.path, "tests": tests, "error": f"mutmut produced no results (exit {code})", "log_tail": tail}
    collected = subprocess.run([sys.executable, "-c", _COLLECT, module.path], cwd=copy, check=True,
                               capture_output=True, text=True)
    mutants: dict[str, dict[str, Any]] = json.loads(collected.stdout)
    starts = function_lines((copy / module.path).read_text())
    known = {_key(e): e for e in equivalents if e["file"] == module.path}
    counts = {KILLED: 0, SURVIVED: 0, TIMEOUT: 0, NO_TESTS: 0, OTHER: 0, "equivalent": 0}
    survivors, equivalent, others, used = [], [], [], set()
    for mutant, result in sorted(mutants.items(), key=lambda kv: kv[0]):
        outcome = _OUTCOME_BY_STATUS.get(result["status"], OTHER)
        if outcome in (KILLED, TIMEOUT):
            counts[outcome] += 1
            continue
        described = describe(mutant, result["diff"] or "", module.path, starts)
        match = known.get(_key(described)) if described["line"] is not None else None
        if match is not None:
            counts["equivalent"] += 1
            used.add(_key(match))
            equivalent.append({**described, "reason": match["reason"]})
            continue
        counts[outcome] += 1
        described["outcome"] = result["status"]
        (survivors if outcome in (SURVIVED, NO_TESTS) else others).append(described)
    judged = sum(counts[k] for k in (KILLED, TIMEOUT, SURVIVED, NO_TESTS, OTHER))
    detected = counts[KILLED] + counts[TIMEOUT]
    rate = round(detected / judged, 4) if judged else None
    survivors.sort(key=lambda s: (s["line"] or 0, s["mutant"]))
    return {
        "module": module.path,
        "ran_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "head": _head(),
        "source_sha256": _sha256(copy / module.path),
        "tests": tests,
        "mutants": len(mutants),
        **counts,
        "kill_rate": rate,  # (killed + timeout) / all mutants not marked equivalent
        "meets_target": rate is not None and rate >= TARGET,
        "seconds": seconds,
        "mutmut_exit": code,
        "survivors": survivors,  # survived, and mutants no selected test reaches ("no tests")
        "other_outcomes": others,  # suspicious / segfault / not checked: look at these by hand
        "equivalent_mutants": equivalent,
        "stale_equivalents": [e for k, e in known.items() if k not in used],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--module", action="append", choices=sorted(MODULES), help="a rule module (repeatable; default: all)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds allowed per module (default 1800)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary copy (its path is printed)")
    parser.add_argument("--out", default="mutation", help="results name under bench/results/ (default: mutation)")
    parser.add_argument("--relabel", action="store_true",
                        help="only re-apply the equivalents file to the saved results (after marking a mutant equivalent)")
    parser.add_argument("--recheck", action="store_true",
                        help="run again only the saved survivors and unchecked mutants (after adding tests; the "
                             "module's source must be the one the saved run mutated)")
    parser.add_argument("--children", type=int, default=1, help="mutmut workers (default 1: the machine is shared)")
    args = parser.parse_args(argv)
    names = args.module or list(MODULES)
    equivalents = load_equivalents()
    if args.relabel:
        return relabel(args.out, names, equivalents)
    if args.recheck:
        return recheck(args.out, names, equivalents, args.timeout, args.children)
    copy = Path(tempfile.mkdtemp(prefix="moldwatch-mutation-"))
    try:
        for name in names:
            copy_root = copy / name
            copy_root.mkdir()
            copy_tree(copy_root)
            r = run_module(name, MODULES[name], copy_root, args.timeout, equivalents)
            if "kill_rate" in r:
                print(f"   {name}: {r['killed']} killed, {r['timeout']} timeout, {r['survived']} survived, "
                      f"{r['no_tests']} no tests, {r['equivalent']} equivalent -> kill rate {r['kill_rate']:.1%} "
                      f"({r['seconds']} s)", flush=True)
                for s in r["survivors"]:
                    print(f"     {s['file']}:{s['line']} [{s['function']}] {s['before']!r} -> {s['after']!r}")
            else:
                print(f"   {name}: {r.get('skipped') or r.get('error')}", flush=True)
            path = _save(args.out, name, r, args.module)  # after each module: a long run keeps what it finished
            if not args.keep:
                shutil.rmtree(copy_root, ignore_errors=True)
    finally:
        if args.keep:
            print(f"copy kept in {copy}")
        else:
            shutil.rmtree(copy, ignore_errors=True)
    print(f"wrote {path.relative_to(ROOT)}")
    return 0


def _save(out: str, name: str, result: dict[str, Any], asked: list[str] | None) -> Path:
    """Merge one module's result into the results file, re-read now (another run may have written)."""
    existing = ROOT / "bench" / "results" / f"{out}.json"
    modules = json.loads(existing.read_text()).get("modules", {}) if existing.exists() else {}
    modules[name] = result
    return write_result(out, {
        "command": "bench/mutation.py" + "".join(f" --module {n}" for n in (asked or [])),
        "tool": "mutmut " + _mutmut_version(),
        "note": "each module ran on a copy of the working tree at its 'head' commit, with the uncommitted edits then present",
        "target_kill_rate": TARGET,
        "kill_rates": {n: r.get("kill_rate") for n, r in sorted(modules.items())},
        "modules": dict(sorted(modules.items())),
    })


def relabel(out: str, names: list[str], equivalents: list[dict[str, Any]]) -> int:
    """Move saved survivors that the equivalents file now lists into the equivalent ones (and back)."""
    path = ROOT / "bench" / "results" / f"{out}.json"
    saved = json.loads(path.read_text())["modules"]
    for name in names:
        r = saved.get(name)
        if not r or "kill_rate" not in r:
            continue
        known = {_key(e): e for e in equivalents if e["file"] == r["module"]}
        pool = r["survivors"] + [{k: v for k, v in e.items() if k != "reason"} | {"outcome": "survived"}
                                 for e in r["equivalent_mutants"]]
        r["survivors"], r["equivalent_mutants"] = [], []
        for mutant in pool:
            match = known.get(_key(mutant)) if mutant.get("line") is not None else None
            if match is None:
                r["survivors"].append(mutant)
            else:
                r["equivalent_mutants"].append({k: v for k, v in mutant.items() if k != "outcome"} | {"reason": match["reason"]})
        used = {_key(e) for e in r["equivalent_mutants"]}
        r["stale_equivalents"] = [e for k, e in known.items() if k not in used]
        r["equivalent"] = len(r["equivalent_mutants"])
        r["survived"] = sum(1 for m in r["survivors"] if m.get("outcome") == "survived")
        r["no_tests"] = sum(1 for m in r["survivors"] if m.get("outcome") == "no tests")
        judged = r["killed"] + r["timeout"] + r["survived"] + r["no_tests"] + r["other"]
        r["kill_rate"] = round((r["killed"] + r["timeout"]) / judged, 4) if judged else None
        r["meets_target"] = r["kill_rate"] is not None and r["kill_rate"] >= TARGET
        r["relabelled_at"] = datetime.now(UTC).isoformat(timespec="seconds")
        _save(out, name, r, None)
        print(f"   {name}: kill rate {r['kill_rate']:.1%} ({r['survived'] + r['no_tests']} survivors, {r['equivalent']} equivalent)")
    return 0


def recheck(out: str, names: list[str], equivalents: list[dict[str, Any]], timeout_s: float, children: int) -> int:
    """Run again, with today's tests, only the mutants a saved run left alive or never checked.

    Tests only grow between the runs and the module's source must be byte for byte the one the
    saved run mutated (same mutant names, same mutations), so a mutant killed then is killed now:
    the saved kills stand and only the rest is run.
    """
    path = ROOT / "bench" / "results" / f"{out}.json"
    saved = json.loads(path.read_text())["modules"]
    for name in names:
        r, module = saved.get(name), MODULES[name]
        if not r or "survivors" not in r:
            print(f"   {name}: no saved run to recheck")
            continue
        source = ROOT / module.path
        recorded = r.get("source_sha256") or _sha256_at(r["head"], module.path)
        if recorded != _sha256(source):
            print(f"   {name}: {module.path} changed since the saved run ({r['head']}): run it whole instead", flush=True)
            return 2
        known = {_key(e) for e in equivalents if e["file"] == module.path}
        candidates = [m for m in r["survivors"] + r.get("other_outcomes", []) if m.get("mutant")]
        equivalent_now = [m for m in candidates if m.get("line") is not None and _key(m) in known]  # nothing to kill
        pending = [m for m in candidates if m not in equivalent_now]
        copy = Path(tempfile.mkdtemp(prefix="moldwatch-mutation-"))
        try:
            copy_tree(copy)
            tests = sorted({str(p.relative_to(copy)) for t in module.tests for p in copy.glob(t)})
            configure(copy, module, tests)
            started = time.monotonic()
            print(f"== {name}: rechecking {len(pending)} mutants of {module.path} against {' '.join(tests)}", flush=True)
            code = _run_mutmut(copy, copy / f"mutmut-{name}.log",
                               ["--max-children", str(children), *[m["mutant"] for m in pending]], timeout_s)
            collected = subprocess.run([sys.executable, "-c", _COLLECT, module.path], cwd=copy, check=True,
                                       capture_output=True, text=True)
            mutants: dict[str, dict[str, Any]] = json.loads(collected.stdout)
        finally:
            shutil.rmtree(copy, ignore_errors=True)
        survivors, others, newly = [], [], {KILLED: 0, TIMEOUT: 0}
        for mutant in pending:
            outcome = _OUTCOME_BY_STATUS.get(mutants.get(mutant["mutant"], {}).get("status", ""), OTHER)
            if outcome in (KILLED, TIMEOUT):
                newly[outcome] += 1
            elif outcome in (SURVIVED, NO_TESTS):
                survivors.append({**mutant, "outcome": mutants[mutant["mutant"]]["status"]})
            else:
                others.append({**mutant, "outcome": mutants.get(mutant["mutant"], {}).get("status", "not checked")})
        r["killed"] += newly[KILLED]
        r["timeout"] += newly[TIMEOUT]
        # the equivalents stay survivors here; relabel() below files them as equivalent, with reasons
        r["survivors"], r["other_outcomes"] = survivors + [{**m, "outcome": "survived"} for m in equivalent_now], others
        r["survived"] = sum(1 for m in survivors if m["outcome"] == "survived")
        r["no_tests"] = sum(1 for m in survivors if m["outcome"] == "no tests")
        r["other"] = len(others)
        r.pop("incomplete", None)
        r.pop("kill_rate_of_checked", None)
        r.pop("not_checked", None)
        r["rechecked"] = {"at": datetime.now(UTC).isoformat(timespec="seconds"), "head": _head(),
                          "mutants": len(pending), "killed_now": newly[KILLED] + newly[TIMEOUT],
                          "seconds": round(time.monotonic() - started, 1), "mutmut_exit": code,
                          "tests": tests}
        _save(out, name, r, None)
        relabel(out, [name], equivalents)
        print(f"   {name}: {newly[KILLED] + newly[TIMEOUT]} of {len(pending)} rechecked mutants killed now; "
              f"{len(survivors)} survive, {len(others)} not checked", flush=True)
    return 0


def _run_mutmut(copy: Path, log: Path, arguments: list[str], timeout_s: float) -> int | None:
    """``mutmut run ARGUMENTS`` in ``copy``; its exit code, or None when stopped at ``timeout_s``
    (what it finished stays in its results)."""
    mutmut = Path(sys.executable).with_name("mutmut")
    with log.open("w") as out:
        process = subprocess.Popen([str(mutmut), "run", *arguments], cwd=copy, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        try:
            return process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait()
            return None


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def _sha256_at(commit: str, path: str) -> str | None:
    import hashlib

    shown = subprocess.run(["git", "show", f"{commit}:{path}"], cwd=ROOT, capture_output=True)
    return hashlib.sha256(shown.stdout).hexdigest() if shown.returncode == 0 else None


def _head() -> str:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()


def _mutmut_version() -> str:
    from importlib.metadata import version

    return version("mutmut")


if __name__ == "__main__":
    raise SystemExit(main())
