// Pause and resume with the official JS SDK: memory pause keeps processes and the boot id, a
// filesystem-only pause keeps the files and boots afresh; snapshots make new sandboxes.
import assert from 'node:assert/strict'
import { describe, test } from 'node:test'

import { ROWS, useDaemon, withSandbox } from './harness.mjs'

useDaemon()

const BOOT_ID = 'cat /proc/sys/kernel/random/boot_id'

for (const { label, e2b } of ROWS) {
  const { Sandbox } = e2b
  describe(label, { timeout: 120_000 }, () => {
    test('pause keeps memory: connect resumes the same processes', async () => {
      await withSandbox(Sandbox, { timeoutMs: 60_000 }, async (sbx) => {
        const boot = (await sbx.commands.run(BOOT_ID)).stdout
        const bg = await sbx.commands.run('sleep 600', { background: true })
        await sbx.files.write('/home/user/marker', 'kept')
        assert.equal(await sbx.pause(), true)
        assert.equal(await sbx.isRunning(), false)
        assert.equal((await Sandbox.getInfo(sbx.sandboxId)).state, 'paused')
        assert.equal(await Sandbox.pause(sbx.sandboxId), false, 'a second pause reports already paused')

        const resumed = await Sandbox.connect(sbx.sandboxId)
        assert.equal(resumed.sandboxId, sbx.sandboxId)
        assert.equal(await resumed.isRunning(), true)
        assert.equal((await Sandbox.getInfo(sbx.sandboxId)).state, 'running')
        assert.equal(await resumed.files.read('/home/user/marker'), 'kept')
        assert.equal((await resumed.commands.run(BOOT_ID)).stdout, boot)
        const ps = await resumed.commands.list()
        assert.ok(
          ps.some((p) => p.pid === bg.pid),
          JSON.stringify(ps)
        )
        // the handle from before the pause keeps working
        assert.equal((await sbx.commands.run('echo ok')).stdout, 'ok\n')
      })
    })

    test('filesystem-only pause keeps files and boots afresh', async () => {
      await withSandbox(Sandbox, { timeoutMs: 60_000 }, async (sbx) => {
        const boot = (await sbx.commands.run(BOOT_ID)).stdout
        await sbx.files.write('/home/user/marker', 'kept')
        assert.equal(await sbx.pause({ keepMemory: false }), true)
        await sbx.connect()
        assert.equal(await sbx.files.read('/home/user/marker'), 'kept')
        assert.notEqual((await sbx.commands.run(BOOT_ID)).stdout, boot)
      })
    })

    test('a snapshot creates independent sandboxes with the files', async () => {
      await withSandbox(Sandbox, { timeoutMs: 60_000 }, async (sbx) => {
        await sbx.files.write('/home/user/marker', 'from source')
        const snap = await sbx.createSnapshot()
        assert.equal(await sbx.isRunning(), true)
        try {
          await withSandbox(Sandbox, { template: snap.snapshotId, timeoutMs: 60_000 }, async (copy) => {
            assert.equal(await copy.files.read('/home/user/marker'), 'from source')
            await copy.files.write('/home/user/marker', 'changed')
            assert.equal(await sbx.files.read('/home/user/marker'), 'from source')
          })
        } finally {
          assert.equal(await Sandbox.deleteSnapshot(snap.snapshotId), true)
        }
      })
    })

    test('pause of an unknown sandbox raises SandboxNotFoundError', async () => {
      await assert.rejects(Sandbox.pause('nonexistingsandbox'), e2b.SandboxNotFoundError)
    })
  })
}
