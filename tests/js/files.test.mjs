// Files with the official JS SDK: write and read (text, bytes, many), info, list, make_dir,
// rename, remove, exists, missing paths.
import assert from 'node:assert/strict'
import { createHash, randomBytes } from 'node:crypto'
import { after, before, describe, test } from 'node:test'

import { ROWS, useDaemon } from './harness.mjs'

useDaemon()

for (const { label, e2b } of ROWS) {
  describe(label, { timeout: 120_000 }, () => {
    let sbx
    before(async () => {
      sbx = await e2b.Sandbox.create({ timeoutMs: 120_000 })
    })
    after(async () => sbx?.kill())

    test('write and read text; relative paths are under /home/user', async () => {
      const info = await sbx.files.write('notes.txt', 'hello files')
      assert.equal(info.path, '/home/user/notes.txt')
      assert.equal(info.name, 'notes.txt')
      assert.equal(await sbx.files.read('/home/user/notes.txt'), 'hello files')
    })

    test('binary content round-trips byte for byte (2 MiB)', async () => {
      const data = randomBytes(2 * 1024 * 1024)
      await sbx.files.write('/tmp/blob.bin', data.buffer.slice(data.byteOffset, data.byteOffset + data.length))
      const back = await sbx.files.read('/tmp/blob.bin', { format: 'bytes' })
      assert.equal(Buffer.compare(Buffer.from(back), data), 0)
      const sum = await sbx.commands.run('sha256sum /tmp/blob.bin | cut -d" " -f1')
      assert.equal(sum.stdout.trim(), createHash('sha256').update(data).digest('hex'))
    })

    test('write many files at once, parents created; list', async () => {
      await sbx.files.write([
        { path: '/home/user/many/a.txt', data: 'A' },
        { path: '/home/user/many/sub/b.txt', data: 'B' },
      ])
      const entries = await sbx.files.list('/home/user/many')
      assert.deepEqual(
        entries.map((e) => [e.name, e.type, e.path]),
        [
          ['a.txt', e2b.FileType.FILE, '/home/user/many/a.txt'],
          ['sub', e2b.FileType.DIR, '/home/user/many/sub'],
        ]
      )
      assert.equal(await sbx.files.read('/home/user/many/sub/b.txt'), 'B')
    })

    test('getInfo, makeDir, exists, rename, remove', async () => {
      assert.equal(await sbx.files.makeDir('/home/user/d'), true)
      assert.equal(await sbx.files.makeDir('/home/user/d'), false)
      await sbx.files.write('/home/user/d/f', 'four')
      const info = await sbx.files.getInfo('/home/user/d/f')
      assert.equal(info.type, e2b.FileType.FILE)
      assert.equal(info.size, 4)
      assert.equal(info.owner, 'user')
      assert.equal(info.permissions, '-rw-r--r--')
      const moved = await sbx.files.rename('/home/user/d/f', '/home/user/d/g')
      assert.equal(moved.path, '/home/user/d/g')
      assert.equal(await sbx.files.exists('/home/user/d/f'), false)
      assert.equal(await sbx.files.exists('/home/user/d/g'), true)
      await sbx.files.remove('/home/user/d')
      assert.equal(await sbx.files.exists('/home/user/d'), false)
    })

    test('a symlink shows its target type and resolved target (neither JS row reads isSymlink)', async () => {
      await sbx.files.write('/home/user/ln/target.txt', 't')
      await sbx.commands.run('ln -s target.txt link', { cwd: '/home/user/ln' })
      const info = await sbx.files.getInfo('/home/user/ln/link')
      assert.equal(info.type, e2b.FileType.FILE)
      assert.equal(info.symlinkTarget, '/home/user/ln/target.txt')
      const listed = await sbx.files.list('/home/user/ln')
      assert.deepEqual(
        listed.map((e) => [e.name, e.type]),
        [
          ['link', e2b.FileType.FILE],
          ['target.txt', e2b.FileType.FILE],
        ]
      )
    })

    test('missing paths raise NotFoundError', async () => {
      await assert.rejects(sbx.files.read('/home/user/nope'), e2b.NotFoundError)
      await assert.rejects(sbx.files.getInfo('/home/user/nope'), e2b.NotFoundError)
      await assert.rejects(sbx.files.list('/home/user/nope'), e2b.NotFoundError)
    })

    test('a file written by a command is read back', async () => {
      await sbx.commands.run('printf "from bash" > /home/user/by-cmd')
      assert.equal(await sbx.files.read('/home/user/by-cmd'), 'from bash')
    })
  })
}
