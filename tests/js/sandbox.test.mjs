// Sandbox lifecycle with the official JS SDK: create, info, list by metadata, timeout, connect, kill.
import assert from 'node:assert/strict'
import { randomUUID } from 'node:crypto'
import { describe, test } from 'node:test'

import { ROWS, useDaemon } from './harness.mjs'

useDaemon()

for (const { label, e2b } of ROWS) {
  const { Sandbox } = e2b
  describe(label, { timeout: 120_000 }, () => {
    test('create, info, list by metadata, set timeout, kill', async () => {
      const tag = randomUUID()
      const sbx = await Sandbox.create({ metadata: { js_test: tag }, timeoutMs: 60_000 })
      try {
        assert.equal(await sbx.isRunning(), true)
        const info = await Sandbox.getInfo(sbx.sandboxId)
        assert.equal(info.sandboxId, sbx.sandboxId)
        assert.equal(info.templateId, 'base')
        assert.deepEqual(info.metadata, { js_test: tag })

        const page = await Sandbox.list({ query: { metadata: { js_test: tag } } }).nextItems()
        assert.deepEqual(
          page.map((s) => s.sandboxId),
          [sbx.sandboxId]
        )

        await sbx.setTimeout(120_000)
        const later = await Sandbox.getInfo(sbx.sandboxId)
        assert.ok(later.endAt.getTime() > info.endAt.getTime(), `${later.endAt} > ${info.endAt}`)
      } finally {
        await sbx.kill()
      }
      assert.equal(await sbx.isRunning(), false)
      const left = await Sandbox.list({ query: { metadata: { js_test: tag } } }).nextItems()
      assert.deepEqual(left, [])
    })

    test('connect by id reaches the same sandbox', async () => {
      const sbx = await Sandbox.create({ timeoutMs: 60_000 })
      try {
        await sbx.files.write('/home/user/marker', 'here')
        const same = await Sandbox.connect(sbx.sandboxId)
        assert.equal(same.sandboxId, sbx.sandboxId)
        assert.equal(await same.files.read('/home/user/marker'), 'here')
      } finally {
        await sbx.kill()
      }
    })

    test('kill of an unknown sandbox is false; connect to it fails', async () => {
      assert.equal(await Sandbox.kill('nonexistingsandbox'), false)
      await assert.rejects(Sandbox.connect('nonexistingsandbox'), e2b.NotFoundError)
    })
  })
}
