// Commands with the official JS SDK: run, exit codes, envs, cwd, streaming, stdin, background, kill.
import assert from 'node:assert/strict'
import { after, before, describe, test } from 'node:test'

import { ROWS, useDaemon, waitFor } from './harness.mjs'

const daemon = useDaemon()

for (const { label, e2b } of ROWS) {
  describe(label, { timeout: 120_000 }, () => {
    let sbx
    before(async () => {
      sbx = await e2b.Sandbox.create({ timeoutMs: 120_000, envs: { SBX_VAR: 'from-sandbox' } })
    })
    after(async () => sbx?.kill())

    test('run: stdout, stderr, exit code 0', async () => {
      const r = await sbx.commands.run('echo out; echo err >&2')
      assert.equal(r.stdout, 'out\n')
      assert.equal(r.stderr, 'err\n')
      assert.equal(r.exitCode, 0)
    })

    test('a non-zero exit raises CommandExitError with the result', async () => {
      await assert.rejects(sbx.commands.run('echo bad >&2; exit 3'), (e) => {
        assert.ok(e instanceof e2b.CommandExitError, String(e))
        assert.equal(e.exitCode, 3)
        assert.equal(e.stderr, 'bad\n')
        return true
      })
    })

    test('envs of the command and of the sandbox, cwd and user', async () => {
      const r = await sbx.commands.run('echo "$FOO $SBX_VAR"; pwd; whoami', {
        envs: { FOO: 'bar' },
        cwd: '/tmp',
      })
      assert.equal(r.stdout, 'bar from-sandbox\n/tmp\nuser\n')
      const root = await sbx.commands.run('whoami', { user: 'root' })
      assert.equal(root.stdout, 'root\n')
    })

    test('output streams to callbacks', async () => {
      const chunks = []
      const r = await sbx.commands.run('for i in 1 2 3; do echo line$i; sleep 0.05; done', {
        onStdout: (d) => chunks.push(d),
      })
      assert.equal(chunks.join(''), 'line1\nline2\nline3\n')
      assert.equal(r.stdout, 'line1\nline2\nline3\n')
    })

    test('stdin of a background command', async () => {
      const out = []
      const h = await sbx.commands.run('cat', { background: true, stdin: true, onStdout: (d) => out.push(d) })
      await sbx.commands.sendStdin(h.pid, 'hello stdin\n')
      await waitFor(() => out.join('').includes('hello stdin'), 10_000, 'the echo of cat')
      assert.equal(await sbx.commands.kill(h.pid), true)
    })

    test('background command: listed, connected to, killed', async () => {
      const h = await sbx.commands.run('sleep 60', { background: true })
      const listed = await sbx.commands.list()
      assert.ok(
        listed.some((p) => p.pid === h.pid),
        JSON.stringify(listed)
      )
      const again = await sbx.commands.connect(h.pid)
      assert.equal(again.pid, h.pid)
      assert.equal(await sbx.commands.kill(h.pid), true)
      await assert.rejects(h.wait(), e2b.CommandExitError)
      assert.equal(await sbx.commands.kill(h.pid), false)
    })

    test('a command over its timeout raises TimeoutError', async () => {
      await assert.rejects(sbx.commands.run('sleep 10', { timeoutMs: 1000 }), e2b.TimeoutError)
    })
  })
}

// allowedCommands is a sandboxd-only create field (docs/command-policy.md): created with the raw
// API, then used through the SDK, whose commands all run through bash.
for (const { label, e2b } of ROWS) {
  describe(`${label}: allowedCommands`, { timeout: 120_000 }, () => {
    let sbx
    before(async () => {
      const r = await fetch(daemon.url + '/sandboxes', {
        method: 'POST',
        headers: { 'X-API-Key': daemon.key, 'Content-Type': 'application/json' },
        body: JSON.stringify({ templateID: 'base', timeout: 120, allowedCommands: ['ls', 'node'] }),
      })
      assert.equal(r.status, 201, await r.clone().text())
      sbx = await e2b.Sandbox.connect((await r.json()).sandboxID)
    })
    after(async () => sbx?.kill())

    test('allowed programs run, others raise CommandExitError saying why', async () => {
      assert.equal((await sbx.commands.run("node -e 'console.log(6 * 7)'")).stdout, '42\n')
      assert.equal((await sbx.commands.run('ls / > /dev/null; echo ok')).stdout, 'ok\n')
      for (const user of ['user', 'root']) {
        await assert.rejects(sbx.commands.run('cat /etc/hostname', { user }), (e) => {
          assert.ok(e instanceof e2b.CommandExitError, String(e))
          assert.equal(e.exitCode, 126)
          assert.match(e.stderr, /\/usr\/bin\/cat: Permission denied/)
          assert.match(e.error, /^command not allowed: .*\(ls, node\)$/)
          return true
        })
      }
      // node may not start another program either
      await assert.rejects(
        sbx.commands.run(`node -e "require('child_process').execFileSync('/usr/bin/cat', ['/etc/hostname'])"`),
        (e) => e instanceof e2b.CommandExitError && /EACCES/.test(e.stderr)
      )
    })
  })
}
