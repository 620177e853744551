"""The watched-file reloader against real files: change detection, debounce, the last good value
kept through a broken file, forced reads, one load at a time, and the polling task itself.

Polls are driven one at a time (``poll()``) wherever the order matters, so nothing depends on how
fast this machine is; the one test of ``watch()`` waits on conditions."""
from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.reloader import Reloader, file_signature

_clock = [1_700_000_000 * 10**9]


def publish(path: Path, text: str) -> None:
    """Replace ``path`` atomically (as the store and recipe writers do), with a later mtime than
    anything before: two writes within one filesystem clock tick would otherwise be told apart
    only by inode and size, and a freed inode may be reused."""
    staged = path.with_name(path.name + ".tmp")
    staged.write_text(text)
    _clock[0] += 10**9
    os.utime(staged, ns=(_clock[0], _clock[0]))
    os.replace(staged, path)


class JsonFile:
    """A loader that parses JSON and records every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[Path, bool]] = []

    async def __call__(self, path: Path, force: bool) -> Any:
        self.calls.append((path, force))
        return json.loads(path.read_text())  # noqa: ASYNC240 - a test's stand-in loader: a few bytes from tmp_path


async def wait_until(predicate: Any, timeout: float = 30.0) -> None:
    """Wait on a condition; ``timeout`` only ends a hung test, it is not what the test checks."""
    async def poll() -> None:
        while not predicate():  # noqa: ASYNC110 - polls a plain predicate over the reloader's state
            await asyncio.sleep(0.005)

    await asyncio.wait_for(poll(), timeout)


def test_the_signature_is_inode_mtime_and_size_and_none_while_missing(tmp_path):
    path = tmp_path / "f.json"
    assert file_signature(path) is None
    publish(path, "[1]")
    st = os.stat(path)
    assert file_signature(path) == (st.st_ino, st.st_mtime_ns, 3)


async def test_a_forced_first_load_serves_the_value(tmp_path):
    path = tmp_path / "f.json"
    publish(path, '{"v": 1}')
    loader, loaded = JsonFile(), []
    reloader = Reloader("test file", path, loader, poll_s=0.01, on_loaded=loaded.append)
    assert reloader.reason() == "test file not loaded yet"
    assert await reloader.load(force=True) is True
    assert reloader.value == {"v": 1} and loaded == [{"v": 1}] and reloader.loads == 1
    assert reloader.reason() is None and reloader.error is None
    assert loader.calls == [(path, True)]
    assert await reloader.poll() is False and await reloader.poll() is False  # unchanged: not read again
    assert len(loader.calls) == 1


async def test_a_changed_file_is_loaded_once_it_settled_for_one_poll(tmp_path):
    path = tmp_path / "f.json"
    publish(path, "1")
    reloader = Reloader("test file", path, JsonFile(), poll_s=0.01)
    await reloader.load(force=True)
    publish(path, "2")
    assert await reloader.poll() is False and reloader.value == 1  # first sight of the new signature
    publish(path, "3")  # still being written: the signature moved again
    assert await reloader.poll() is False and reloader.value == 1
    assert await reloader.poll() is True and reloader.value == 3  # the same on two polls: loaded
    assert reloader.loads == 2


async def test_without_debounce_a_change_is_loaded_at_the_first_poll(tmp_path):
    path = tmp_path / "f.json"
    publish(path, "1")
    reloader = Reloader("test file", path, JsonFile(), poll_s=0.01, debounce=False)
    await reloader.load(force=True)
    publish(path, "2")
    assert await reloader.poll() is True and reloader.value == 2


async def test_a_broken_file_is_counted_and_the_last_good_value_kept_until_a_good_one_comes(tmp_path):
    path = tmp_path / "f.json"
    publish(path, "[1, 2]")
    loader, failed = JsonFile(), []
    reloader = Reloader("test file", path, loader, poll_s=0.01, on_failed=failed.append)
    await reloader.load(force=True)
    publish(path, '{"half": ')
    await reloader.poll()
    assert await reloader.poll() is False
    assert reloader.value == [1, 2] and reloader.failures == 1 and len(failed) == 1
    assert isinstance(failed[0], json.JSONDecodeError) and reloader.error.startswith("JSONDecodeError: ")
    assert reloader.reason() is None  # a value is still served: the owner decides what that means
    calls = len(loader.calls)
    for _ in range(3):
        await reloader.poll()
    assert len(loader.calls) == calls  # the same bad file is not re-read every poll
    publish(path, "[3]")
    await reloader.poll()
    assert await reloader.poll() is True
    assert reloader.value == [3] and reloader.error is None and reloader.failures == 1


async def test_a_missing_file_at_start_is_a_failure_and_is_loaded_when_it_appears(tmp_path):
    path = tmp_path / "f.json"
    reloader = Reloader("test file", path, JsonFile(), poll_s=0.01)
    assert await reloader.load(force=True) is False
    assert reloader.value is None and reloader.failures == 1
    assert reloader.reason().startswith("FileNotFoundError: ")
    assert await reloader.poll() is False  # still missing: nothing to do, nothing counted
    assert reloader.failures == 1
    publish(path, '"here"')
    await reloader.poll()
    assert await reloader.poll() is True and reloader.value == "here" and reloader.reason() is None


async def test_a_file_missing_for_a_moment_keeps_the_value(tmp_path):
    path = tmp_path / "f.json"
    publish(path, "1")
    reloader = Reloader("test file", path, JsonFile(), poll_s=0.01)
    await reloader.load(force=True)
    path.unlink()
    assert await reloader.poll() is False and await reloader.poll() is False
    assert reloader.value == 1 and reloader.failures == 0


async def test_start_up_errors_are_raised_not_counted(tmp_path):
    reloader = Reloader("test file", tmp_path / "missing.json", JsonFile(), poll_s=0.01)
    with pytest.raises(FileNotFoundError):
        await reloader.load(force=True, raise_errors=True)
    assert reloader.failures == 0 and reloader.value is None
    assert reloader.reason().startswith("FileNotFoundError: ")


async def test_a_loader_that_finds_nothing_new_keeps_the_current_value(tmp_path):
    path = tmp_path / "f.json"
    publish(path, "1")

    async def same_unless_forced(p: Path, force: bool) -> Any:
        return json.loads(p.read_text()) if force else None  # noqa: ASYNC240 - a test's stand-in loader: a few bytes from tmp_path

    reloader = Reloader("test file", path, same_unless_forced, poll_s=0.01)
    await reloader.load(force=True)
    publish(path, "2")
    assert await reloader.load() is False and reloader.value == 1 and reloader.loads == 1
    assert await reloader.load() is False  # the signature was taken: not read again
    assert await reloader.load(force=True) is True and reloader.value == 2  # forced: read whatever is there


async def test_the_path_is_asked_again_at_every_look(tmp_path):
    """A directory given for a file (``moldwatch recipe --out DIR``) may appear later."""
    out = tmp_path / "out"

    def where() -> Path:
        return out / "recipes.json" if out.is_dir() else out

    reloader = Reloader("test file", where, JsonFile(), poll_s=0.01)
    await reloader.load(force=True)
    assert reloader.failures == 1
    out.mkdir()
    publish(out / "recipes.json", "[]")
    await reloader.poll()
    assert await reloader.poll() is True and reloader.value == [] and reloader.path == out / "recipes.json"


async def test_one_load_at_a_time(tmp_path):
    path = tmp_path / "f.json"
    publish(path, "1")
    gate, inside, most = asyncio.Event(), [0], [0]

    async def slow(p: Path, force: bool) -> Any:
        inside[0] += 1
        most[0] = max(most[0], inside[0])
        await gate.wait()
        inside[0] -= 1
        return json.loads(p.read_text())  # noqa: ASYNC240 - a test's stand-in loader: a few bytes from tmp_path

    reloader = Reloader("test file", path, slow, poll_s=0.01)
    loads = [asyncio.create_task(reloader.load(force=True)) for _ in range(3)]
    await wait_until(lambda: inside[0] == 1)
    gate.set()
    assert await asyncio.gather(*loads) == [True, True, True]
    assert most[0] == 1


async def test_the_watch_task_picks_up_a_new_file_and_survives_a_broken_one(tmp_path):
    path = tmp_path / "f.json"
    publish(path, "1")
    loaded: list[Any] = []
    reloader = Reloader("test file", path, JsonFile(), poll_s=0.005, on_loaded=loaded.append)
    await reloader.load(force=True)
    watching = asyncio.create_task(reloader.watch())
    try:
        publish(path, "{")
        await wait_until(lambda: reloader.failures == 1)
        publish(path, "2")
        await wait_until(lambda: reloader.value == 2)
    finally:
        watching.cancel()
        with pytest.raises(asyncio.CancelledError):
            await watching
    assert loaded == [1, 2] and reloader.failures == 1


# A model of the rules: after any sequence of publishes (good or broken) each followed by two
# polls, the value is the last good content published and every broken publish counted once.
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(contents=st.lists(st.one_of(st.integers(0, 99), st.none()), min_size=1, max_size=8))
def test_after_each_settled_publish_the_value_is_the_last_good_one(tmp_path, contents):
    path = tmp_path / "model.json"
    path.unlink(missing_ok=True)

    async def scenario() -> None:
        reloader = Reloader("test file", path, JsonFile(), poll_s=0.01)
        good, broken = None, 0
        for content in contents:
            publish(path, "{" if content is None else json.dumps(content))
            await reloader.poll()
            await reloader.poll()
            if content is None:
                broken += 1
            else:
                good = content
            assert reloader.value == good and reloader.failures == broken

    asyncio.run(scenario())


def test_the_tree_signature_changes_with_any_file_and_is_none_without_the_anchor(tmp_path):
    from service.reloader import tree_signature

    store = tmp_path / "store"
    (store / "groups" / "g1").mkdir(parents=True)
    (store / "groups" / "g1" / "model.npz").write_bytes(b"x")
    assert tree_signature(store, "manifest.json") is None  # no manifest yet: nothing to try
    (store / "manifest.json").write_text("{}")
    first = tree_signature(store, "manifest.json")
    assert first is not None and first[0] == 2 and tree_signature(store, "manifest.json") == first
    (store / "groups" / "g1" / "model.npz").write_bytes(b"xy")  # a nested file finished copying
    second = tree_signature(store, "manifest.json")
    assert second != first
    (store / "groups" / "g2").mkdir()
    (store / "groups" / "g2" / "forest.npz").write_bytes(b"")  # a new, empty file
    assert tree_signature(store, "manifest.json") not in (first, second)
    assert tree_signature(tmp_path / "nowhere", "manifest.json") is None


async def test_a_rejected_file_is_reported_while_the_last_good_value_serves(tmp_path):
    path = tmp_path / "value.txt"
    path.write_text("1")

    async def load(p, force):
        text = p.read_text()
        if not text.isdigit():
            raise ValueError(f"not a number: {text!r}")
        return int(text)

    reloader = Reloader("value", path, load, poll_s=0.01, debounce=False)
    assert reloader.rejected() is None
    path.write_text("oops")
    assert not await reloader.load(force=True)  # nothing served yet: a reason, not a rejection
    assert reloader.rejected() is None and "not a number" in reloader.reason()
    path.write_text("2")
    assert await reloader.load(force=True) and reloader.value == 2
    path.write_text("bad!")
    assert not await reloader.poll()
    assert reloader.value == 2 and "not a number: 'bad!'" in reloader.rejected()
    path.write_text("3")
    assert await reloader.poll() and reloader.rejected() is None
