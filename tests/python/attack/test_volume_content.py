"""The volume content API as an attacker who owns a volume, its token and a sandbox that mounts
it: links out of the volume (absolute, relative, through /proc), a link swapped with a
directory while the API works below it (a race), a FIFO. The daemon does this work as host
root, so every call must stay inside the volume.

Host-side checks: the host canary dir must not change, its secret must not come back in any
answer. A positive control shows the same calls work on the volume's own files.
"""

import uuid

from e2b import Sandbox, Volume


def _attempt(outs, what, fn):
    """Runs one API call; its answer or error text goes to `outs` for the secret check."""
    try:
        outs.append(f"{what}: {fn()!r}")
    except Exception as e:  # noqa: BLE001 - every refusal is fine; only what reaches the host counts
        outs.append(f"{what}: {type(e).__name__}: {e}")


def _calls_below(vol, outs, top):
    """Every content call, aimed at the host canary dir through `top`."""
    _attempt(outs, "read", lambda: vol.read_file(f"{top}/secret.txt"))
    _attempt(outs, "stat", lambda: vol.get_info(f"{top}/secret.txt"))
    _attempt(outs, "list", lambda: [e.path for e in vol.list(top, depth=2)])
    _attempt(outs, "write", lambda: vol.write_file(f"{top}/pwned", "pwned", force=True))
    _attempt(outs, "write over", lambda: vol.write_file(f"{top}/secret.txt", "pwned"))
    _attempt(outs, "mkdir", lambda: vol.make_dir(f"{top}/pwned-dir", force=True))
    _attempt(outs, "chmod", lambda: vol.update_metadata(f"{top}/secret.txt", mode=0o777, uid=0))
    _attempt(outs, "remove", lambda: vol.remove(f"{top}/secret.txt"))


def test_volume_content_links_out_and_swaps(daemon, canaries):
    d = str(canaries.dir)
    vol = Volume.create(f"attack-{uuid.uuid4().hex[:8]}")
    sbx = Sandbox.create("base", volume_mounts={"/data": vol}, timeout=300)
    outs = []
    try:
        sbx.commands.run(
            f"cd /data && ln -s {d} abs && ln -s ../../../../../../../..{d} rel"
            f" && ln -s /proc/self/root{d} viaproc && ln -s /proc/1/root{d} viaproc1"
            f" && ln -s {d}/secret.txt file-link && mkfifo fifo",
            user="root",
        )
        for top in ["/abs", "/rel", "/viaproc", "/viaproc1", f"/../../../..{d}", d]:
            _calls_below(vol, outs, top)
        _attempt(outs, "read file link", lambda: vol.read_file("/file-link"))
        _attempt(outs, "chmod file link", lambda: vol.update_metadata("/file-link", mode=0o777))
        _attempt(outs, "read fifo", lambda: vol.read_file("/fifo"))
        canaries.check("\n".join(outs), "volume content through links out of the volume")

        # the race: /data/race is a directory and a link to the host dir in turn
        sbx.commands.run(
            f"nohup sh -c 'while :; do rm -rf /data/race; mkdir /data/race; rm -rf /data/race;"
            f" ln -s {d} /data/race; done' >/dev/null 2>&1 & echo $! > /tmp/race.pid",
            user="root",
        )
        for _ in range(150):
            _calls_below(vol, outs, "/race")
        sbx.commands.run("kill $(cat /tmp/race.pid)", user="root")
        canaries.check("\n".join(outs), "volume content racing a link swap")

        # positive control: the same calls work on the volume's own files
        vol.write_file("/own/secret.txt", "own", force=True)
        assert vol.read_file("/own/secret.txt") == "own"
        assert vol.update_metadata("/own/secret.txt", mode=0o600).mode == 0o600
        vol.remove("/own")
        assert sbx.commands.run("ls /data/own 2>&1 || true").stdout.strip().endswith("No such file or directory")
    finally:
        sbx.kill()
        Volume.destroy(vol.volume_id)
