"""Fork through the E2B SDK (api/openapi.yaml)."""

import pytest
from e2b import Sandbox
from e2b.exceptions import SandboxException, SandboxNotFoundException


def test_fork_one(sandbox: Sandbox):
    sandbox.files.write("/home/user/f.txt", "source")
    info = sandbox.get_info()
    forks = sandbox.fork()
    assert len(forks) == 1
    f = forks[0]
    assert isinstance(f, Sandbox), f
    try:
        assert f.sandbox_id != sandbox.sandbox_id
        assert f.files.read("/home/user/f.txt") == "source"
        f.files.write("/home/user/f.txt", "fork")
        assert sandbox.files.read("/home/user/f.txt") == "source"
        assert sandbox.get_info().end_at == info.end_at
        assert sandbox.is_running()
    finally:
        f.kill()


def test_fork_two_and_class_method(sandbox: Sandbox):
    sandbox.files.write("/home/user/f.txt", "source")
    forks = sandbox.fork(count=2, timeout=60)
    assert len(forks) == 2 and all(isinstance(f, Sandbox) for f in forks), forks
    try:
        forks[0].files.write("/home/user/f.txt", "zero")
        assert forks[1].files.read("/home/user/f.txt") == "source"
    finally:
        for f in forks:
            f.kill()
    more = Sandbox.fork(sandbox.sandbox_id)
    assert len(more) == 1 and isinstance(more[0], Sandbox)
    assert more[0].files.read("/home/user/f.txt") == "source"
    more[0].kill()


def test_fork_killed_raises(sandbox: Sandbox):
    sandbox.kill()
    with pytest.raises(SandboxNotFoundException):
        Sandbox.fork(sandbox.sandbox_id)


def test_fork_count_zero_rejected(sandbox: Sandbox):
    with pytest.raises((SandboxException, ValueError, Exception)):
        sandbox.fork(count=0)
