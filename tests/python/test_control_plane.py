"""Control plane through the official SDK: create, info, list filters and paging, kill, timeout,
connect, secure tokens, sandbox env vars (api/openapi.yaml)."""

import time
import uuid
from datetime import timedelta

import pytest
from e2b import Sandbox, SandboxQuery, SandboxState
from e2b.exceptions import NotFoundException, SandboxException


def _ids(paginator):
    out = []
    while paginator.has_next:
        out.extend(s.sandbox_id for s in paginator.next_items())
    return out


def test_create_and_info(sandbox: Sandbox, sandbox_test_id):
    info = sandbox.get_info()
    assert info.sandbox_id == sandbox.sandbox_id
    assert info.template_id == "base"
    assert info.state == SandboxState.RUNNING
    assert info.metadata == {"sandbox_test_id": sandbox_test_id}
    assert info.cpu_count >= 1 and info.memory_mb >= 128
    assert info.started_at.tzinfo is not None and info.end_at > info.started_at
    assert Sandbox.get_info(sandbox.sandbox_id).sandbox_id == sandbox.sandbox_id


def test_get_info_unknown():
    with pytest.raises(NotFoundException):
        Sandbox.get_info("idonotexist0000000000")


def test_secure_token_returned(sandbox: Sandbox):
    # Sandbox.create() is secure by default: the connect response carries the same token.
    token = sandbox._envd_access_token
    assert token
    again = Sandbox.connect(sandbox.sandbox_id)
    assert again._envd_access_token == token
    assert again.commands.run("echo ok").stdout == "ok\n"


def test_list_by_metadata_and_kill(sandbox_test_id):
    sbx = Sandbox.create(metadata={"sandbox_test_id": sandbox_test_id, "k=": "v&"})
    try:
        query = SandboxQuery(metadata={"sandbox_test_id": sandbox_test_id, "k=": "v&"})
        assert _ids(Sandbox.list(query=query)) == [sbx.sandbox_id]
        running = SandboxQuery(metadata={"sandbox_test_id": sandbox_test_id}, state=[SandboxState.RUNNING])
        assert _ids(Sandbox.list(query=running)) == [sbx.sandbox_id]
        paused = SandboxQuery(metadata={"sandbox_test_id": sandbox_test_id}, state=[SandboxState.PAUSED])
        assert _ids(Sandbox.list(query=paused)) == []
    finally:
        assert Sandbox.kill(sbx.sandbox_id) is True
    assert _ids(Sandbox.list(query=SandboxQuery(metadata={"sandbox_test_id": sandbox_test_id}))) == []
    assert Sandbox.kill(sbx.sandbox_id) is False
    assert sbx.is_running() is False


def test_list_paging_order_and_filters():
    tag = f"paging_{uuid.uuid4().hex[:8]}"
    first = Sandbox.create(metadata={"paging": tag})
    second = Sandbox.create(metadata={"paging": tag})
    try:
        query = SandboxQuery(metadata={"paging": tag})
        pages = Sandbox.list(query=query, limit=1)
        page1 = pages.next_items()
        assert [s.sandbox_id for s in page1] == [second.sandbox_id]  # newest first
        assert pages.has_next and pages.next_token
        page2 = pages.next_items()
        assert [s.sandbox_id for s in page2] == [first.sandbox_id]
        assert not pages.has_next

        asc = _ids(Sandbox.list(query=query, order="asc"))
        assert asc == [first.sandbox_id, second.sandbox_id]

        started = second.get_info().started_at
        after = SandboxQuery(metadata={"paging": tag}, started_after=started)
        assert _ids(Sandbox.list(query=after)) == [second.sandbox_id]
        later = SandboxQuery(metadata={"paging": tag}, started_after=started + timedelta(seconds=1))
        assert _ids(Sandbox.list(query=later)) == []

        by_template = SandboxQuery(metadata={"paging": tag}, template="base")
        assert sorted(_ids(Sandbox.list(query=by_template))) == sorted([first.sandbox_id, second.sandbox_id])
        unknown = SandboxQuery(metadata={"paging": tag}, template="no-such-template")
        assert _ids(Sandbox.list(query=unknown)) == []
    finally:
        first.kill()
        second.kill()


def test_set_timeout_expires(sandbox: Sandbox):
    sandbox.set_timeout(2)
    end = sandbox.get_info().end_at
    assert end > sandbox.get_info().started_at
    deadline = time.monotonic() + 10
    while sandbox.is_running() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert sandbox.is_running() is False
    with pytest.raises(NotFoundException):
        sandbox.get_info()


def test_set_timeout_shorten_then_extend(sandbox: Sandbox):
    sandbox.set_timeout(100)
    short = sandbox.get_info().end_at
    sandbox.set_timeout(200)
    assert sandbox.get_info().end_at > short


def test_connect_extends_never_shortens(sandbox: Sandbox):
    before = sandbox.get_info().end_at
    Sandbox.connect(sandbox.sandbox_id, timeout=10)
    assert sandbox.get_info().end_at == before
    Sandbox.connect(sandbox.sandbox_id, timeout=600)
    assert sandbox.get_info().end_at > before


def test_connect_unknown_sandbox():
    with pytest.raises(NotFoundException):
        Sandbox.connect("idonotexist0000000000")


def test_sandbox_env_vars():
    sbx = Sandbox.create(envs={"SBX_VAR": "from-create"})
    try:
        assert sbx.commands.run("echo $SBX_VAR").stdout == "from-create\n"
        out = sbx.commands.run("echo $E2B_SANDBOX $E2B_SANDBOX_ID").stdout.split()
        assert out == ["true", sbx.sandbox_id]
    finally:
        sbx.kill()


def test_create_rejects_bad_timeout():
    with pytest.raises(SandboxException):
        Sandbox.create(timeout=-5)


def test_create_unknown_template():
    with pytest.raises(SandboxException) as e:
        Sandbox.create("no-such-template")
    assert "404" in str(e.value)
