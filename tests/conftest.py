"""Shared test helpers.

Real parts (GStreamer's RTSP server, Xvfb, Chromium) are installed by ``tools/test.sh``. Where one is
missing, a test that needs it is skipped on a developer machine but **fails** in CI (``CI`` set), so a
skipped real-part test can never pass as green there.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = Path(__file__).resolve().parent / "data"


_SHORT_BASETEMP = pytest.StashKey[Path]()


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    """A short folder for the session's tmp paths. Tests make run directories under them, and a zmq
    ipc socket path may have 107 bytes at most: pytest's own (``/tmp/pytest-of-USER/pytest-N/
    popen-gwK/<test name>0/``) leave a run directory 2 bytes of room as root under xdist, none with a
    longer user name or a ten-thousandth session. Removed after a run that passed; kept (and named)
    after one that failed. Not in xdist's workers (they get a folder below this one) nor when
    ``--basetemp`` is given."""
    if config.option.basetemp is None and not hasattr(config, "workerinput"):
        folder = Path(tempfile.mkdtemp(prefix="vnt-"))
        config.option.basetemp = str(folder)
        config.stash[_SHORT_BASETEMP] = folder


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    folder = session.config.stash.get(_SHORT_BASETEMP, None)
    if folder is not None and exitstatus == 0:
        shutil.rmtree(folder, ignore_errors=True)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    folder = config.stash.get(_SHORT_BASETEMP, None)
    if folder is not None and exitstatus != 0:
        terminalreporter.write_line(f"the tests' temporary files are kept in {folder}")


def require_real_part(ok: bool, what: str) -> None:
    """Skip (locally) or fail (in CI) when a real part the test drives is not installed."""
    if ok:
        return
    message = f"{what} is not installed here; run tools/install_test_system_deps.sh"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def require_executable(name: str) -> str:
    path = shutil.which(name)
    require_real_part(path is not None, name)
    assert path is not None
    return path


@pytest.fixture(scope="session", autouse=True)
def data_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """``$XDG_DATA_HOME`` in a temporary folder for the whole session (the processes tests start
    inherit it): a ``vidnarrate run`` records into ``$XDG_DATA_HOME/vidnarrate/vidnarrate.db`` by
    default, and no test may write into the user's own store."""
    folder = tmp_path_factory.mktemp("data-home")
    before = os.environ.get("XDG_DATA_HOME")
    os.environ["XDG_DATA_HOME"] = str(folder)
    yield folder
    if before is None:
        del os.environ["XDG_DATA_HOME"]
    else:
        os.environ["XDG_DATA_HOME"] = before


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """The tiny model gains nothing from threads, and on a busy 2-core box spinning threads cost 10x.
    Model test modules opt in with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
