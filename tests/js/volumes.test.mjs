// Volumes with the official JS SDK (docs/volumes.md): the Volume class, a volume mounted in a
// sandbox, and the volume content API (readFile, writeFile, list, makeDir, getInfo, exists,
// updateMetadata, remove) without a sandbox, authorized by the volume's token.
import assert from 'node:assert/strict'
import { randomBytes, randomUUID } from 'node:crypto'
import { describe, test } from 'node:test'

import { ROWS, useDaemon } from './harness.mjs'

useDaemon()

for (const { label, e2b } of ROWS) {
  const { Sandbox, Volume } = e2b
  describe(label, { timeout: 120_000 }, () => {
    test('the content API reads and writes what sandboxes see', async () => {
      const volume = await Volume.create(`js-vol-${randomUUID().slice(0, 8)}`)
      try {
        const written = await volume.writeFile('/docs/a.txt', 'from js', { force: true })
        assert.equal(written.path, '/docs/a.txt')
        assert.equal(written.size, 7)
        assert.equal(written.mode, 0o644)
        assert.equal(written.uid, 1000)
        assert.equal(await volume.readFile('/docs/a.txt'), 'from js')
        const bytes = randomBytes(1 << 20)
        await volume.writeFile('/bin.dat', bytes)
        assert.deepEqual(Buffer.from(await volume.readFile('/bin.dat', { format: 'bytes' })), bytes)
        const dir = await volume.makeDir('/x/y', { force: true, mode: 0o700 })
        assert.equal(dir.type, 'directory')
        assert.equal(dir.mode, 0o700)
        assert.deepEqual(
          (await volume.list('/', { depth: 2 })).map((e) => e.path),
          ['/bin.dat', '/docs', '/docs/a.txt', '/x', '/x/y'],
        )
        assert.equal((await volume.getInfo('/docs')).type, 'directory')
        assert.equal((await volume.updateMetadata('/docs/a.txt', { mode: 0o600 })).mode, 0o600)
        assert.equal(await volume.exists('/nope'), false)
        await assert.rejects(volume.readFile('/nope'), (e) => e.name === 'VolumePathNotFoundError' || /not found/.test(e.message))
        const sbx = await Sandbox.create('base', { volumeMounts: { '/data': volume }, timeoutMs: 120_000 })
        try {
          assert.equal(await sbx.files.read('/data/docs/a.txt'), 'from js')
          await sbx.files.write('/data/from-sandbox.txt', 'hi')
        } finally {
          await sbx.kill()
        }
        assert.equal(await volume.readFile('/from-sandbox.txt'), 'hi')
        await volume.remove('/x')
        assert.equal(await volume.exists('/x/y'), false)
        const stranger = new Volume(volume.volumeId, volume.name, 'wrong-token')
        await assert.rejects(stranger.readFile('/docs/a.txt'), /401|auth|token/i)
      } finally {
        await Volume.destroy(volume.volumeId)
      }
    })
  })
}
