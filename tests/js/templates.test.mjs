// Templates with the official JS SDK's Template builder (docs/templates.md): images from a
// loopback registry (tests/python/oci_images.py) that the daemon uses as its docker.io mirror.
import assert from 'node:assert/strict'
import { randomUUID } from 'node:crypto'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { describe, test } from 'node:test'

import { ROWS, useDaemon, useImageRegistry } from './harness.mjs'

const registry = useImageRegistry()
useDaemon(async () => ['--registry-mirror', `docker.io=${await registry.start()}`])

for (const { label, e2b } of ROWS) {
  const { Sandbox, Template, waitForFile } = e2b
  describe(label, { timeout: 120_000 }, () => {
    test('build from an image with files, env, users and a start command; cached rebuild', async () => {
      const ctx = fs.mkdtempSync(path.join(os.tmpdir(), 'sandboxd-js-ctx-'))
      fs.writeFileSync(path.join(ctx, 'note.txt'), 'from the JS context')
      fs.mkdirSync(path.join(ctx, 'app'))
      fs.writeFileSync(path.join(ctx, 'app', 'main.sh'), 'echo app')
      const name = `js-${randomUUID().slice(0, 8)}`
      const template = Template({ fileContextPath: ctx })
        .fromImage('tiny:1')
        .copy('note.txt', '/home/user/')
        .copy('app', '/opt/app', { user: 'root', mode: 0o755 })
        .setEnvs({ FROM_JS: 'yes' })
        .runCmd('echo "$FROM_JS" > /home/user/env.txt')
        .runCmd('id -un > /root-ran', { user: 'root' })
        .setStartCmd("sh -c 'touch /tmp/up; sleep 1000'", waitForFile('/tmp/up'))
      const logs = []
      await Template.build(template, name, { onBuildLogs: (l) => logs.push(l.message) })
      assert.ok(logs.some((l) => l.includes('Pulling docker.io/library/tiny:1') || l.includes('already in the store')), logs.join('\n'))
      const sbx = await Sandbox.create(name)
      try {
        assert.equal(await sbx.files.read('/home/user/note.txt'), 'from the JS context')
        assert.equal(await sbx.files.read('/opt/app/main.sh'), 'echo app')
        assert.equal(await sbx.files.read('/home/user/env.txt'), 'yes\n')
        assert.equal(await sbx.files.read('/root-ran'), 'root\n')
        assert.equal(await sbx.files.exists('/tmp/up'), true)
        const r = await sbx.commands.run('echo $FROM_JS; id -un; stat -c %a /opt/app/main.sh')
        assert.deepEqual(r.stdout.trim().split('\n'), ['yes', 'user', '755'])
      } finally {
        await sbx.kill()
      }
      const again = []
      await Template.build(template, name, { onBuildLogs: (l) => again.push(l.message) })
      assert.equal(again.filter((l) => l.startsWith('CACHED')).length, 4, again.join('\n'))
      assert.equal(await Template.exists(name), true)
      fs.rmSync(ctx, { recursive: true, force: true })
    })

    test('a failing step fails the build with its step and output', async () => {
      const t = Template().fromImage('tiny:1').runCmd('echo js-boom >&2; exit 5')
      await assert.rejects(Template.build(t, `js-fail-${randomUUID().slice(0, 8)}`), (e) => {
        assert.match(e.message, /step 1 failed/)
        assert.match(e.message, /js-boom/)
        return true
      })
    })
  })
}
