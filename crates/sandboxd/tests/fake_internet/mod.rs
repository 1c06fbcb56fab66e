//! A "fake internet" for network tests: a network namespace with test servers at
//! documentation addresses, routed from the host, so no test traffic ever leaves the machine.
//!
//! - transit link: host `fkinet0` 198.18.0.1/30 ↔ namespace `eth0` 198.18.0.2/30 (the
//!   benchmarking block: hosts here use 192.0.2.0/24 for their real network)
//! - the host routes 198.51.100.0/24 and 203.0.113.0/24 into the namespace
//! - HTTP on port 80 of [`WEB`] and [`OTHER`] (files of [`FakeInternet::docroot`]);
//!   `hello.txt` holds [`HELLO`], and `/headers` answers the request's headers as JSON, with
//!   `served-by` the server's own address
//! - a line echo server on port 9000 of both (for connections held open), and on port 2222 a
//!   server that speaks first (a greeting line, then close)
//! - a TLS server on port 443 of both (a certificate for `web.test` and `other.test` signed
//!   by a test CA, [`FakeInternet::ca_cert`]): after the handshake it answers each line with
//!   `tls <its address> <line>`, so a client sees which server it reached, or, when the first
//!   line is an HTTP request, answers each request with its headers as JSON (`served-by` its
//!   address, `path` the request's path)
//! - an `iperf3` server on port 5201 of [`WEB`] (rate tests)
//! - SOCKS5 proxies on [`OTHER`]: port 1080 without authentication, port 1081 with user `u`
//!   and password `p`, port 1443 over TLS (the TLS servers' certificate) without authentication;
//!   they resolve only the test names, and log each CONNECT target as a line
//!   `<port> <host>:<port>` to `socks.log` in the docroot
//! - DNS (dnsmasq) on [`DNS`]: `web.test` → [`WEB`], `other.test` → [`OTHER`]
//!
//! One at a time on a host (the routes are global): [`FakeInternet::up`] takes an exclusive
//! lock on `/run/sandboxd-fake-internet.lock` for its lifetime. Needs root, `ip`, `dnsmasq`,
//! `python3`, `openssl` and `iperf3`.
#![allow(dead_code)]

use std::os::fd::AsRawFd;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const NETNS: &str = "sbxtest-inet";
pub const WEB: &str = "198.51.100.10";
pub const DNS: &str = "198.51.100.53";
pub const OTHER: &str = "203.0.113.10";
/// The host's end of the transit link (a host address).
pub const HOST_TRANSIT: &str = "198.18.0.1";
pub const HELLO: &str = "hello from the fake internet";
const HOST_IF: &str = "fkinet0";

pub struct FakeInternet {
    servers: Vec<Child>,
    pub docroot: tempfile::TempDir,
    _lock: std::fs::File,
}

fn sh(cmd: &str) {
    let st = Command::new("sh").arg("-c").arg(cmd).status().expect("sh");
    assert!(st.success(), "fake internet set-up: `{cmd}` failed");
}

fn sh_quiet(cmd: &str) {
    let _ = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .stderr(Stdio::null())
        .stdout(Stdio::null())
        .status();
}

const ECHO_SERVER: &str = r#"
import socket, sys, threading
def serve(addr):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, 9000)); s.listen(64)
    while True:
        c, _ = s.accept()
        def h(c=c):
            f = c.makefile('rwb', buffering=0)
            for line in f:
                f.write(b'echo ' + line)
        threading.Thread(target=h, daemon=True).start()
def greet(addr):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, 2222)); s.listen(64)
    while True:
        c, _ = s.accept()
        try:
            c.sendall(b'hello from the server\n')
        except OSError:
            pass
        c.close()
for a in sys.argv[1:]:
    threading.Thread(target=serve, args=(a,), daemon=True).start()
    threading.Thread(target=greet, args=(a,), daemon=True).start()
threading.Event().wait()
"#;

const HTTP_SERVER: &str = r#"
import functools, http.server, json, sys
class H(http.server.SimpleHTTPRequestHandler):
    def do_GET(self):
        if self.path == '/headers':
            h = {k.lower(): v for k, v in self.headers.items()}
            h['served-by'] = self.connection.getsockname()[0]
            body = json.dumps(h).encode()
            self.send_response(200)
            self.send_header('Content-Type', 'application/json')
            self.send_header('Content-Length', str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        else:
            super().do_GET()
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(('0.0.0.0', 80), functools.partial(H, directory=sys.argv[1])).serve_forever()
"#;

const SOCKS_SERVER: &str = r#"
import os, socket, ssl, struct, sys, threading
names = {'web.test': sys.argv[2], 'other.test': sys.argv[3]}
log = os.path.join(sys.argv[1], 'socks.log')
def pipe(a, b):
    try:
        while True:
            d = a.recv(65536)
            if not d:
                break
            b.sendall(d)
    except OSError:
        pass
    for s in (a, b):
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
def exact(c, n):
    b = b''
    while len(b) < n:
        d = c.recv(n - len(b))
        if not d:
            raise OSError('closed')
        b += d
    return b
def handle(c, port, auth):
    try:
        ver, n = exact(c, 2)
        methods = exact(c, n)
        want = 2 if auth else 0
        if want not in methods:
            c.sendall(b'\x05\xff'); return
        c.sendall(bytes([5, want]))
        if auth:
            exact(c, 1); u = exact(c, exact(c, 1)[0]); p = exact(c, exact(c, 1)[0])
            if (u, p) != (b'u', b'p'):
                c.sendall(b'\x01\x01'); return
            c.sendall(b'\x01\x00')
        ver, cmd, _, atyp = exact(c, 4)
        if atyp == 1:
            host = socket.inet_ntoa(exact(c, 4))
        elif atyp == 3:
            host = exact(c, exact(c, 1)[0]).decode()
        else:
            c.sendall(b'\x05\x08\x00\x01' + bytes(6)); return
        dport = struct.unpack('>H', exact(c, 2))[0]
        with open(log, 'a') as f:
            f.write(f'{port} {host}:{dport}\n')
        addr = names.get(host, host)
        try:
            socket.inet_aton(addr)
            up = socket.create_connection((addr, dport), timeout=5)
        except OSError:
            c.sendall(b'\x05\x04\x00\x01' + bytes(6)); return
        c.sendall(b'\x05\x00\x00\x01' + bytes(6))
        threading.Thread(target=pipe, args=(up, c), daemon=True).start()
        pipe(c, up)
    except OSError:
        pass
    finally:
        c.close()
def serve(port, auth, tls=None):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((sys.argv[3], port)); s.listen(64)
    while True:
        c, _ = s.accept()
        def start(c=c):
            if tls is not None:
                try:
                    c = tls.wrap_socket(c, server_side=True)
                except (OSError, ssl.SSLError):
                    c.close(); return
            handle(c, port, auth)
        threading.Thread(target=start, daemon=True).start()
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); ctx.load_cert_chain(sys.argv[4], sys.argv[5])
threading.Thread(target=serve, args=(1080, False), daemon=True).start()
threading.Thread(target=serve, args=(1081, True), daemon=True).start()
threading.Thread(target=serve, args=(1443, False, ctx), daemon=True).start()
threading.Event().wait()
"#;

const TLS_SERVER: &str = r#"
import json, socket, ssl, sys, threading
cert, key = sys.argv[1], sys.argv[2]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); ctx.load_cert_chain(cert, key)
def http(f, first, addr):
    while first:
        h = {}
        line = f.readline()
        while line not in (b'\r\n', b'\n', b''):
            k, _, v = line.decode().partition(':')
            h[k.strip().lower()] = v.strip()
            line = f.readline()
        h['served-by'] = addr
        h['path'] = first.split(b' ')[1].decode()
        body = json.dumps(h).encode()
        f.write(b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n' % len(body) + body)
        first = f.readline()
def serve(addr):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, 443)); s.listen(64)
    while True:
        c, _ = s.accept()
        def h(c=c):
            try:
                t = ctx.wrap_socket(c, server_side=True)
                f = t.makefile('rwb', buffering=0)
                line = f.readline()
                if line.split(b' ')[0] in (b'GET', b'POST', b'HEAD'):
                    return http(f, line, addr)
                while line:
                    f.write(b'tls ' + addr.encode() + b' ' + line)
                    line = f.readline()
            except Exception:
                pass
        threading.Thread(target=h, daemon=True).start()
for a in sys.argv[3:]:
    threading.Thread(target=serve, args=(a,), daemon=True).start()
threading.Event().wait()
"#;

impl FakeInternet {
    /// Builds the namespace and starts its servers; waits until they answer.
    pub fn up() -> Self {
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open("/run/sandboxd-fake-internet.lock")
            .expect("lock file");
        // SAFETY: flock on an open fd we own.
        let locked = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) };
        assert_eq!(locked, 0, "flock");
        Self::teardown_namespace();
        sh(&format!(
            "ip netns add {NETNS} && ip link add {HOST_IF} type veth peer name eth0 netns {NETNS} && \
             ip addr add 198.18.0.1/30 dev {HOST_IF} && ip link set {HOST_IF} up && \
             ip -n {NETNS} link set lo up && ip -n {NETNS} addr add 198.18.0.2/30 dev eth0 && \
             ip -n {NETNS} link set eth0 up && \
             ip -n {NETNS} addr add {WEB}/32 dev lo && ip -n {NETNS} addr add {DNS}/32 dev lo && \
             ip -n {NETNS} addr add {OTHER}/32 dev lo && \
             ip -n {NETNS} route add default via 198.18.0.1 && \
             ip route replace 198.51.100.0/24 via 198.18.0.2 && ip route replace 203.0.113.0/24 via 198.18.0.2"
        ));
        let docroot = tempfile::tempdir().unwrap();
        std::fs::write(docroot.path().join("hello.txt"), HELLO).unwrap();
        let netns = |args: &[&str]| {
            Command::new("ip")
                .args(["netns", "exec", NETNS])
                .args(args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn in the fake internet")
        };
        let http = netns(&["python3", "-c", HTTP_SERVER, docroot.path().to_str().unwrap()]);
        let echo = netns(&["python3", "-c", ECHO_SERVER, WEB, OTHER]);
        let (cert, key) = (docroot.path().join("tls.crt"), docroot.path().join("tls.key"));
        // a test CA and a leaf for both names, signed by it (the file holds the chain)
        sh(&format!(
            "cd {dir} && openssl req -x509 -newkey rsa:2048 -nodes -days 2 \
             -subj '/CN=fake internet test CA' -keyout ca.key -out ca.crt 2>/dev/null && \
             openssl req -newkey rsa:2048 -nodes -subj /CN=web.test -keyout tls.key -out tls.csr 2>/dev/null && \
             printf 'subjectAltName=DNS:web.test,DNS:other.test\\nbasicConstraints=CA:FALSE\\nextendedKeyUsage=serverAuth\\n' > leaf.ext && \
             openssl x509 -req -in tls.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 \
             -extfile leaf.ext -out leaf.crt 2>/dev/null && cat leaf.crt ca.crt > tls.crt",
            dir = docroot.path().display()
        ));
        let tls = netns(&[
            "python3",
            "-c",
            TLS_SERVER,
            cert.to_str().unwrap(),
            key.to_str().unwrap(),
            WEB,
            OTHER,
        ]);
        let iperf = netns(&["iperf3", "--server", "--bind", WEB, "--port", "5201"]);
        let socks = netns(&[
            "python3",
            "-c",
            SOCKS_SERVER,
            docroot.path().to_str().unwrap(),
            WEB,
            OTHER,
            cert.to_str().unwrap(),
            key.to_str().unwrap(),
        ]);
        let dns = netns(&[
            "dnsmasq",
            "--keep-in-foreground",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            &format!("--listen-address={DNS}"),
            &format!("--address=/web.test/{WEB}"),
            &format!("--address=/other.test/{OTHER}"),
            "--pid-file=",
            "--user=root",
        ]);
        let me = Self {
            servers: vec![http, echo, tls, iperf, socks, dns],
            docroot,
            _lock: lock,
        };
        me.wait_ready();
        me
    }

    /// The test CA that signed the TLS servers' certificate (PEM file).
    pub fn ca_cert(&self) -> std::path::PathBuf {
        self.docroot.path().join("ca.crt")
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ok = [WEB, OTHER].iter().all(|a| {
                std::net::TcpStream::connect_timeout(
                    &format!("{a}:80").parse().unwrap(),
                    Duration::from_millis(200),
                )
                .is_ok()
                    && std::net::TcpStream::connect_timeout(
                        &format!("{a}:9000").parse().unwrap(),
                        Duration::from_millis(200),
                    )
                    .is_ok()
                    && std::net::TcpStream::connect_timeout(
                        &format!("{a}:443").parse().unwrap(),
                        Duration::from_millis(200),
                    )
                    .is_ok()
            });
            let dns = Command::new("ip")
                .args(["netns", "exec", NETNS, "bash", "-c"])
                .arg(format!("exec 3<>/dev/tcp/{DNS}/53"))
                .status()
                .is_ok_and(|s| s.success());
            let iperf = std::net::TcpStream::connect_timeout(
                &format!("{WEB}:5201").parse().unwrap(),
                Duration::from_millis(200),
            )
            .is_ok();
            let socks = [1080, 1081].iter().all(|p| {
                std::net::TcpStream::connect_timeout(
                    &format!("{OTHER}:{p}").parse().unwrap(),
                    Duration::from_millis(200),
                )
                .is_ok()
            });
            if ok && dns && iperf && socks {
                return;
            }
            assert!(Instant::now() < deadline, "fake internet servers did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn teardown_namespace() {
        sh_quiet("ip route del 198.51.100.0/24 via 198.18.0.2");
        sh_quiet("ip route del 203.0.113.0/24 via 198.18.0.2");
        sh_quiet(&format!("ip link del {HOST_IF}"));
        // processes left in it by a killed run
        sh_quiet(&format!("ip netns pids {NETNS} | xargs -r kill -9"));
        sh_quiet(&format!("ip netns del {NETNS}"));
    }
}

impl Drop for FakeInternet {
    fn drop(&mut self) {
        for c in &mut self.servers {
            let _ = c.kill();
            let _ = c.wait();
        }
        Self::teardown_namespace();
    }
}
