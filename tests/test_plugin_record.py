"""The plugin record, inside the one discovery function (``installed_plugins``
with a cache directory): used while the environment is unchanged, discovery
again as soon as a distribution is installed, edited or removed, and never
trusted when it is not the agent's own file."""

from __future__ import annotations

import json
import os
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

from agent import Agent, AgentConfig
from agent.core.plugin_record import RECORD_NAME
from agent.core.plugins import ENTRY_POINT_GROUP, PluginEntry, installed_plugins

HELLO = "tests.test_plugins:HELLO"


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory on sys.path, for distributions the test installs by hand."""
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.setattr(sys, "path", [*sys.path, str(site)])
    return site


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    """The cache directory (``--cache-dir``)."""
    cache = tmp_path / "cache"
    cache.mkdir()
    return cache


@pytest.fixture
def discoveries(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Each discovery through importlib.metadata, as it happens."""
    found: list[object] = []
    entry_points = metadata.entry_points

    def counted(**selection: Any) -> Any:
        found.append(entry_points(**selection))
        return found[-1]

    monkeypatch.setattr(metadata, "entry_points", counted)
    return found


def install(site: Path, name: str, entry_points: dict[str, str]) -> Path:
    """A distribution ``name`` 1.0 declaring ``entry_points`` in the agent's group."""
    dist = site / f"{name}-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    lines = "".join(f"{key} = {value}\n" for key, value in entry_points.items())
    (dist / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\n{lines}")
    return dist


def names(entries: list[PluginEntry]) -> set[str]:
    return {entry.name for entry in entries}


def test_the_record_is_used_while_nothing_changes(
    site: Path, cache: Path, discoveries: list[object]
) -> None:
    install(site, "hello-plugin", {"hello": HELLO})
    first = installed_plugins(str(cache))
    assert "hello" in names(first)
    assert len(discoveries) == 1
    assert installed_plugins(str(cache)) == first
    assert len(discoveries) == 1  # from the record
    [hello] = [entry for entry in first if entry.name == "hello"]
    assert hello.distribution == "hello-plugin 1.0"
    assert hello.value == HELLO


def test_installing_editing_or_removing_a_distribution_means_discovery(
    site: Path, cache: Path, discoveries: list[object]
) -> None:
    installed_plugins(str(cache))
    dist = install(site, "hello-plugin", {"hello": HELLO})  # installed
    assert "hello" in names(installed_plugins(str(cache)))
    with open(dist / "entry_points.txt", "a") as edited:  # edited in place
        edited.write(f"again = {HELLO}\n")
    assert {"hello", "again"} <= names(installed_plugins(str(cache)))
    for item in dist.iterdir():  # removed
        item.unlink()
    dist.rmdir()
    assert not {"hello", "again"} & names(installed_plugins(str(cache)))
    assert len(discoveries) == 4
    installed_plugins(str(cache))
    assert len(discoveries) == 4


def test_a_changed_sys_path_means_discovery(
    site: Path, cache: Path, discoveries: list[object], tmp_path: Path
) -> None:
    installed_plugins(str(cache))
    sys.path.append(str(tmp_path / "not-there-yet"))
    installed_plugins(str(cache))
    assert len(discoveries) == 2


@pytest.mark.parametrize("damage", ["not json", "{}", '{"version": 1}', "[]"])
def test_a_damaged_record_is_ignored_and_replaced(
    site: Path, cache: Path, discoveries: list[object], damage: str
) -> None:
    install(site, "hello-plugin", {"hello": HELLO})
    (cache / RECORD_NAME).write_text(damage)
    assert "hello" in names(installed_plugins(str(cache)))
    assert len(discoveries) == 1
    assert json.loads((cache / RECORD_NAME).read_text())["version"] == 1


def test_a_record_with_malformed_entries_is_ignored(
    site: Path, cache: Path, discoveries: list[object]
) -> None:
    installed_plugins(str(cache))
    record = json.loads((cache / RECORD_NAME).read_text())
    record["entry_points"] = [{"name": "evil", "value": 42}]
    (cache / RECORD_NAME).write_text(json.dumps(record))
    assert "evil" not in names(installed_plugins(str(cache)))
    assert len(discoveries) == 2


def test_a_planted_link_is_neither_followed_nor_written_through(
    site: Path, cache: Path, discoveries: list[object], tmp_path: Path
) -> None:
    installed_plugins(str(cache))
    record = (cache / RECORD_NAME).read_text()
    target = tmp_path / "elsewhere.json"
    target.write_text(record)  # a record that would match, behind a link
    (cache / RECORD_NAME).unlink()
    (cache / RECORD_NAME).symlink_to(target)
    installed_plugins(str(cache))
    assert len(discoveries) == 2  # not read through the link
    assert (cache / RECORD_NAME).is_symlink() is False  # replaced by our own file
    assert target.read_text() == record  # and the link's target untouched


def test_a_record_a_user_planted_is_not_trusted(
    site: Path, cache: Path, discoveries: list[object]
) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to give the file to another user (the suite runs as root)")
    installed_plugins(str(cache))
    record = json.loads((cache / RECORD_NAME).read_text())
    record["entry_points"] = [{"name": "evil", "value": HELLO, "distribution": "evil 1"}]
    (cache / RECORD_NAME).write_text(json.dumps(record))
    os.chown(cache / RECORD_NAME, 65534, 65534)
    assert "evil" not in names(installed_plugins(str(cache)))
    assert len(discoveries) == 2


def test_a_missing_cache_directory_is_made(
    site: Path, discoveries: list[object], tmp_path: Path
) -> None:
    missing = tmp_path / "var" / "cache" / "trio-qga"
    installed_plugins(str(missing))
    assert (missing / RECORD_NAME).is_file()
    assert missing.stat().st_mode & 0o777 == 0o755


def test_an_unwritable_cache_directory_means_discovery_every_time(
    site: Path, discoveries: list[object], tmp_path: Path
) -> None:
    blocked = tmp_path / "a-file"  # a directory cannot be made under a file
    blocked.write_text("")
    install(site, "hello-plugin", {"hello": HELLO})
    assert "hello" in names(installed_plugins(str(blocked / "cache")))
    assert "hello" in names(installed_plugins(str(blocked / "cache")))
    assert len(discoveries) == 2


async def test_an_agent_loads_a_recorded_plugin(
    site: Path, cache: Path, discoveries: list[object]
) -> None:
    install(site, "hello-plugin", {"hello": HELLO})
    for _ in range(2):
        async with Agent(AgentConfig(cache_dir=str(cache), plugins=True)) as agent:
            [hello] = [plugin for plugin in agent.plugins if plugin.name == "hello"]
            assert hello.status == "loaded"
            assert hello.distribution == "hello-plugin 1.0"
            assert agent.context.registry.get("guest-x-hello") is not None
    assert len(discoveries) == 1
    assert (cache / RECORD_NAME).is_file()


def test_without_a_cache_directory_nothing_is_recorded(
    site: Path, discoveries: list[object], tmp_path: Path
) -> None:
    install(site, "hello-plugin", {"hello": HELLO})
    before = sorted(tmp_path.rglob("*"))
    for cache_dir in (None, ""):
        assert "hello" in names(installed_plugins(cache_dir))
    assert len(discoveries) == 2
    assert sorted(tmp_path.rglob("*")) == before


@pytest.mark.parametrize(
    "value", [HELLO, "os.path", "os:path.join", "os : path.join [extra1, extra2]"]
)
def test_a_recorded_entry_loads_as_importlib_metadata_loads_it(value: str) -> None:
    from importlib import metadata

    recorded = PluginEntry("x", value, "d 1").load()
    assert recorded is metadata.EntryPoint("x", value, ENTRY_POINT_GROUP).load()


def test_a_recorded_entry_that_is_no_entry_point_value_fails_to_load() -> None:
    with pytest.raises(ValueError, match="not an entry point value"):
        PluginEntry("x", "not a value!", "d 1").load()


def test_other_files_in_a_path_directory_change_nothing(
    site: Path, cache: Path, discoveries: list[object]
) -> None:
    """``python -m agent`` has its working directory, often /tmp, on sys.path."""
    installed_plugins(str(cache))
    (site / "some.sock").write_text("")
    (site / "some.pid").write_text("1")
    installed_plugins(str(cache))
    assert len(discoveries) == 1


def test_a_distribution_reinstalled_under_the_same_name_means_discovery(
    site: Path, cache: Path, discoveries: list[object]
) -> None:
    """pip removes the old .dist-info and writes a new one; here the new
    entry_points.txt even has the old one's size."""
    dist = install(site, "hello-plugin", {"hello": HELLO})
    assert "hello" in names(installed_plugins(str(cache)))
    old = dist.with_name("old")
    dist.rename(old)
    install(site, "hello-plugin", {"hallo": HELLO})
    for item in old.iterdir():
        item.unlink()
    old.rmdir()
    assert "hallo" in names(installed_plugins(str(cache)))
    assert len(discoveries) == 2
