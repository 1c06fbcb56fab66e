"""Network settings through the API: stored, shown, replaced by updates, bad values refused
(enforcement is tested in test_network_egress.py)."""

import json

import pytest
from sandboxd_daemon import call_api as _api
from e2b import Sandbox
from e2b.exceptions import SandboxException



def test_update_network_replaces_egress_and_is_stored(sandbox: Sandbox):
    sandbox.update_network({"deny_out": ["8.8.8.8"], "allow_out": ["1.1.1.1"]})
    net = sandbox.get_info().network
    assert net["deny_out"] == ["8.8.8.8"] and net["allow_out"] == ["1.1.1.1"]
    # Omitted fields are cleared; {} clears everything.
    sandbox.update_network({"deny_out": ["0.0.0.0/0"]})
    net = sandbox.get_info().network or {}
    assert net.get("deny_out") == ["0.0.0.0/0"] and not net.get("allow_out")
    sandbox.update_network({})
    assert not (sandbox.get_info().network or {}).get("deny_out")


def test_update_network_bad_input_and_unknown_sandbox(sandbox: Sandbox):
    sid = sandbox.sandbox_id
    status, body = _api("PUT", f"/sandboxes/{sid}/network", {"denyOut": "not-a-list"})
    assert status == 400 and {"code", "message"} <= json.loads(body).keys()
    status, _ = _api("PUT", f"/sandboxes/{sid}/network", {"denyOut": ["has space"]})
    assert status == 400
    status, body = _api("PUT", f"/sandboxes/{sid}/network", {"dnsServers": ["not-an-ip"]})
    assert status == 400 and b"dnsServers" in body
    status, _ = _api("PUT", f"/sandboxes/{sid}/network", {"denyOut": ["example.com"]})
    assert status == 400  # domain names cannot be denied
    # keys of newer API versions are accepted, as upstream does
    status, _ = _api("PUT", f"/sandboxes/{sid}/network", {"unknownField": 1, "dnsServers": ["198.51.100.53"]})
    assert status == 204
    status, _ = _api("PUT", "/sandboxes/idonotexist0000000000/network", {})
    assert status == 404
    with pytest.raises(SandboxException):
        Sandbox.update_network("idonotexist0000000000", {})


def test_refreshes_extend_only(sandbox: Sandbox):
    sid = sandbox.sandbox_id
    before = sandbox.get_info().end_at
    assert _api("POST", f"/sandboxes/{sid}/refreshes", {"duration": 1})[0] == 204
    assert sandbox.get_info().end_at == before  # 1 s from now is earlier than the end: unchanged
    assert _api("POST", f"/sandboxes/{sid}/refreshes", {"duration": 3600})[0] == 204
    assert sandbox.get_info().end_at > before
    assert _api("POST", f"/sandboxes/{sid}/refreshes", {"duration": 3601})[0] == 400
    assert _api("POST", f"/sandboxes/{sid}/refreshes")[0] == 204
    assert _api("POST", "/sandboxes/idonotexist0000000000/refreshes", {})[0] == 404
