"""Shared fixtures: this host (probed without TensorFlow) and the fake search space."""

from __future__ import annotations

from pathlib import Path

import pytest

from autotune.host import HostInfo, probe_host
from autotune.space import HostFacts, SearchSpace, load_space

DATA = Path(__file__).resolve().parent / "data"
FAKE_SPACE = DATA / "fake.toml"


@pytest.fixture(scope="session")
def host() -> HostInfo:
    """This machine, without the slow software-version probe."""
    return probe_host(software=False)


@pytest.fixture(scope="session")
def fake_space(host: HostInfo) -> SearchSpace:
    """``tests/data/fake.toml`` resolved for this host."""
    return load_space(FAKE_SPACE, HostFacts.of(host))


@pytest.fixture
def space_from_toml(tmp_path: Path, host: HostInfo):
    """Write a search-space file into ``tmp_path`` and load it for this host."""

    def load(text: str, name: str = "space.toml") -> SearchSpace:
        path = tmp_path / name
        path.write_text(text)
        return load_space(path, HostFacts.of(host))

    return load


@pytest.fixture(autouse=True)
def private_lock_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Core and set-up locks (``autotune.lock``) of this session's tests, apart from real runs on the host."""
    path = tmp_path_factory.getbasetemp() / "autotune-locks"
    path.mkdir(exist_ok=True)
    monkeypatch.setenv("AUTOTUNE_LOCK_DIR", str(path))
    return path
