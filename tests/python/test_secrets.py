"""The Secrets API (docs/secrets.md) through the newest SDK's `Secret` module: create, get by
id and by name, list with pages, update (a new version), exists, destroy; values never come
back and are not stored in clear; bad input gets 4xx. The oldest SDK row has no `Secret`."""

import json
import os
import sqlite3
import uuid

import pytest
from sandboxd_daemon import call_api as _api

pytestmark = pytest.mark.sdk(min="2.63.0")


def test_secret_lifecycle_with_the_sdk():
    from e2b import Secret, SecretException, SecretNotFoundException

    name = f"Test-Key-{uuid.uuid4().hex[:8]}"
    value = f"sk-{uuid.uuid4().hex}"
    s = Secret.create(name, value, metadata={"team": "a"})
    try:
        assert s.secret_id.startswith("sec_")
        assert s.name == name.lower()
        assert s.version == 1 and s.metadata == {"team": "a"}
        by_id, by_name = Secret.get_info(s.secret_id), Secret.get_info(name)
        assert by_id == by_name and by_id.created_at == s.created_at
        assert Secret.exists(name) and not Secret.exists("no-such-secret")
        with pytest.raises(SecretException):
            Secret.create(name, "again")
        up = Secret.update(name, value + "-2")
        assert up.version == 2 and up.metadata == {"team": "a"} and up.updated_at >= s.updated_at
        up = Secret.update(s.secret_id, value + "-3", metadata={})
        assert up.version == 3 and up.metadata == {}
        with pytest.raises(SecretNotFoundException):
            Secret.update("no-such-secret", "x")
        # no read surface carries a value
        for path in ("/secrets", f"/secrets/{s.secret_id}", f"/secrets/{name.lower()}"):
            status, body = _api("GET", path)
            assert status == 200 and value.encode() not in body, path
    finally:
        assert Secret.destroy(s.secret_id)
    assert not Secret.destroy(s.secret_id)
    with pytest.raises(SecretNotFoundException):
        Secret.get_info(s.secret_id)


def test_listing_pages():
    from e2b import Secret

    made = [Secret.create(f"page-{uuid.uuid4().hex[:8]}-{i}", "v") for i in range(3)]
    try:
        seen = []
        pages = Secret.list(limit=2)
        while pages.has_next:
            items = pages.next_items()
            assert len(items) <= 2
            seen += [i.secret_id for i in items]
        assert {m.secret_id for m in made} <= set(seen)
        assert len(seen) == len(set(seen))
    finally:
        for m in made:
            Secret.destroy(m.secret_id)


def test_values_are_sealed_at_rest(sandboxd):
    from e2b import Secret

    value = f"plain-{uuid.uuid4().hex}"
    s = Secret.create(f"rest-{uuid.uuid4().hex[:8]}", value)
    try:
        data_dir = os.environ.get("SANDBOXD_TEST_DATA_DIR")
        if not data_dir:
            pytest.skip("the test daemon's data dir is not known (SANDBOXD_TEST_URL)")
        raw = b""
        for f in ("sandboxd.db", "sandboxd.db-wal"):
            p = os.path.join(data_dir, f)
            if os.path.exists(p):
                raw += open(p, "rb").read()
        assert raw and value.encode() not in raw
        key = os.path.join(data_dir, "secrets.key")
        assert os.stat(key).st_mode & 0o777 == 0o600
        con = sqlite3.connect(f"file:{os.path.join(data_dir, 'sandboxd.db')}?mode=ro", uri=True)
        assert con.execute("SELECT count(*) FROM secrets WHERE id = ?", (s.secret_id,)).fetchone()[0] == 1
        con.close()
    finally:
        Secret.destroy(s.secret_id)


@pytest.mark.parametrize(
    "body",
    [
        {"name": "", "value": "x"},
        {"name": "a{b}", "value": "x"},
        {"name": "sec_reserved", "value": "x"},
        {"name": "ok-name", "value": ""},
        {"name": "ok-name", "value": "x", "metadata": {str(i): "v" for i in range(33)}},
        {"name": "ok-name", "value": "x", "unknown": 1},
        {"name": 5, "value": "x"},
    ],
)
def test_bad_secrets_are_refused(body):
    status, resp = _api("POST", "/secrets", body)
    assert status == 400, resp
    assert {"code", "message"} <= json.loads(resp).keys()
    status, _ = _api("GET", "/secrets?limit=0")
    assert status == 400
    status, _ = _api("GET", "/secrets?nextToken=zz")
    assert status == 400


def test_rules_must_name_existing_secrets():
    from e2b import Secret

    name = f"ref-{uuid.uuid4().hex[:8]}"
    rules = lambda secret: {"rules": {"api.test": [{"transform": {"headers": {"Authorization": "Bearer " + Secret.fill(secret)}}}]}}  # noqa: E731
    status, body = _api("POST", "/sandboxes", {"templateID": "base", "timeout": 30, "network": rules(name)})
    assert status == 400 and name.encode() in body, body
    s = Secret.create(name, "v")
    sid = None
    try:
        status, body = _api("POST", "/sandboxes", {"templateID": "base", "timeout": 30, "network": rules(name)})
        assert status == 201, body
        sid = json.loads(body)["sandboxID"]
        status, body = _api("PUT", f"/sandboxes/{sid}/network", rules("missing-" + name))
        assert status == 400 and b"missing-" in body, body
        status, _ = _api("PUT", f"/sandboxes/{sid}/network", rules(name.upper()))
        assert status == 204
    finally:
        if sid:
            _api("DELETE", f"/sandboxes/{sid}")
        Secret.destroy(s.secret_id)
