"""The worker process's collector settings (service/gc_tuning.py), in a fresh interpreter: the
test process's own collector is left alone."""
from __future__ import annotations

import json
import subprocess
import sys


def test_tuning_freezes_start_up_objects_and_collects_the_young_generation_less_often():
    code = ("import gc, json; before = gc.get_threshold(); import service.gc_tuning as t; t.tune_for_streaming(); "
            "print(json.dumps({'before': before, 'after': gc.get_threshold(), 'frozen': gc.get_freeze_count(), "
            "'want': [t.YOUNG_THRESHOLD, t.MIDDLE_THRESHOLD, t.OLD_THRESHOLD]}))")
    out = json.loads(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout)
    assert out["after"] == out["want"] and out["after"] != out["before"]
    assert out["after"][0] > out["before"][0]  # fewer young collections than CPython's default
    assert out["frozen"] > 1000  # the imports' objects are out of every later collection


def test_the_run_command_tunes_its_process_before_the_worker_starts():
    # The CLI's run() is the only caller in the package: the worker class itself never touches the
    # collector (tests and embedding processes keep theirs).
    import inspect

    import service.run_command as run_command
    import service.worker as worker

    assert "tune_for_streaming()" in inspect.getsource(run_command.run)
    assert "gc." not in inspect.getsource(worker)
