// Directory watching with the official JS SDK (Filesystem.WatchDir stream).
import assert from 'node:assert/strict'
import { after, before, describe, test } from 'node:test'

import { ROWS, useDaemon, waitFor } from './harness.mjs'

useDaemon()

for (const { label, e2b } of ROWS) {
  const { FilesystemEventType: Ev } = e2b
  describe(label, { timeout: 120_000 }, () => {
    let sbx
    before(async () => {
      sbx = await e2b.Sandbox.create({ timeoutMs: 120_000 })
    })
    after(async () => sbx?.kill())

    test('a new file gives create then write; remove and rename are seen', async () => {
      await sbx.files.makeDir('/home/user/w')
      const events = []
      const h = await sbx.files.watchDir('/home/user/w', (e) => events.push(e))
      try {
        await sbx.files.write('/home/user/w/a.txt', 'hello')
        await waitFor(
          () => events.some((e) => e.name === 'a.txt' && e.type === Ev.WRITE),
          10_000,
          'write of a.txt'
        )
        const forA = events.filter((e) => e.name === 'a.txt').map((e) => e.type)
        assert.equal(forA[0], Ev.CREATE, JSON.stringify(forA))
        await sbx.files.rename('/home/user/w/a.txt', '/home/user/w/b.txt')
        await sbx.files.remove('/home/user/w/b.txt')
        await waitFor(
          () => events.some((e) => e.name === 'b.txt' && e.type === Ev.REMOVE),
          10_000,
          'remove of b.txt'
        )
        assert.ok(
          events.some((e) => e.name === 'a.txt' && e.type === Ev.RENAME),
          JSON.stringify(events)
        )
      } finally {
        await h.stop()
      }
    })

    test('recursive watch names nested paths', async () => {
      await sbx.files.makeDir('/home/user/r/nested')
      const events = []
      const h = await sbx.files.watchDir('/home/user/r', (e) => events.push(e), { recursive: true })
      try {
        await sbx.files.write('/home/user/r/nested/file', 'x')
        await waitFor(
          () => events.some((e) => e.name === 'nested/file' && e.type === Ev.WRITE),
          10_000,
          'write of nested/file'
        )
      } finally {
        await h.stop()
      }
    })

    test('events stop after stop(); a missing dir raises NotFoundError', async () => {
      await sbx.files.makeDir('/home/user/s')
      const events = []
      const h = await sbx.files.watchDir('/home/user/s', (e) => events.push(e))
      await h.stop()
      await sbx.files.write('/home/user/s/late', 'x')
      await new Promise((r) => setTimeout(r, 300))
      assert.deepEqual(events, [])
      await assert.rejects(sbx.files.watchDir('/home/user/missing', () => {}), e2b.NotFoundError)
    })
  })
}
