// PTY with the official JS SDK: an interactive bash, input, output, resize, kill, reconnect.
import assert from 'node:assert/strict'
import { after, before, describe, test } from 'node:test'

import { ROWS, useDaemon, waitFor } from './harness.mjs'

useDaemon()

const enc = new TextEncoder()

for (const { label, e2b } of ROWS) {
  describe(label, { timeout: 120_000 }, () => {
    let sbx
    before(async () => {
      sbx = await e2b.Sandbox.create({ timeoutMs: 120_000 })
    })
    after(async () => sbx?.kill())

    test('bash in a PTY: envs, cwd, input and exit code', async () => {
      const dec = new TextDecoder()
      let out = ''
      const t = await sbx.pty.create({
        cols: 80,
        rows: 24,
        envs: { ABC: '123' },
        cwd: '/tmp',
        onData: (d) => (out += dec.decode(d, { stream: true })),
      })
      await sbx.pty.sendInput(t.pid, enc.encode('echo "v=$ABC"; pwd; tty\nexit 0\n'))
      const r = await t.wait()
      assert.equal(r.exitCode, 0)
      assert.match(out, /v=123/)
      assert.match(out, /\/tmp\r\n/)
      assert.match(out, /\/dev\/pts\/\d+/)
    })

    test('resize changes what tput sees', async () => {
      const dec = new TextDecoder()
      let out = ''
      const t = await sbx.pty.create({ cols: 80, rows: 24, onData: (d) => (out += dec.decode(d, { stream: true })) })
      await sbx.pty.sendInput(t.pid, enc.encode('echo "cols=$(tput cols)"\n'))
      await waitFor(() => out.includes('cols=80'), 10_000, 'cols=80')
      await sbx.pty.resize(t.pid, { cols: 123, rows: 40 })
      await sbx.pty.sendInput(t.pid, enc.encode('echo "cols=$(tput cols) lines=$(tput lines)"\n'))
      await waitFor(() => out.includes('cols=123 lines=40'), 10_000, 'cols=123 lines=40')
      assert.equal(await sbx.pty.kill(t.pid), true)
      await assert.rejects(t.wait(), e2b.CommandExitError)
      assert.equal(await sbx.pty.kill(t.pid), false)
    })

    test('a disconnected PTY keeps running and can be connected to', async () => {
      const t = await sbx.pty.create({ cols: 80, rows: 24, onData: () => {} })
      await sbx.pty.sendInput(t.pid, enc.encode('export FOO=bar\n'))
      await t.disconnect()
      const dec = new TextDecoder()
      let out = ''
      const again = await sbx.pty.connect(t.pid, { onData: (d) => (out += dec.decode(d, { stream: true })) })
      assert.equal(again.pid, t.pid)
      await sbx.pty.sendInput(t.pid, enc.encode('echo "foo=$FOO"\nexit\n'))
      const r = await again.wait()
      assert.equal(r.exitCode, 0)
      assert.match(out, /foo=bar/)
    })
  })
}
