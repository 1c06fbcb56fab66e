//! Pulls and imports against a real registry on loopback (Debian's `docker-registry`) with
//! images this test makes with `umoci` and pushes with `skopeo`. Root is needed (the unpacker
//! sets owners and makes whiteout device nodes), so the tests are privileged.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use sandboxd_image::{ImageError, ImageStore, Progress, RegistryConfig, StoreLimits};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Registry {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_registry() -> Registry {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = dir.path().join("config.yml");
    std::fs::write(
        &cfg,
        format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let child = Command::new("docker-registry")
        .arg("serve")
        .arg(&cfg)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("docker-registry (Debian package docker-registry)");
    for _ in 0..100 {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    Registry {
        child,
        port,
        _dir: dir,
    }
}

/// A two-layer busybox image: layer 2 deletes `/etc/remove-me` and `/data/old/a` and adds
/// `/data/old/b`; config Env TINY=1, Cmd /bin/sh, WorkingDir /data.
fn make_tiny_image(dir: &Path) -> PathBuf {
    let layout = dir.join("oci");
    run(Command::new("umoci").args(["init", "--layout"]).arg(&layout));
    let image = format!("{}:tiny", layout.display());
    run(Command::new("umoci").args(["new", "--image", &image]));
    let b1 = dir.join("b1");
    run(Command::new("umoci").args(["unpack", "--image", &image]).arg(&b1));
    let root = b1.join("rootfs");
    for d in ["bin", "etc", "data/old"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    for c in [
        "sh", "ls", "cat", "echo", "id", "env", "mkdir", "rm", "sleep", "true", "stat",
    ] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(c)).unwrap();
    }
    std::fs::write(root.join("etc/remove-me"), "gone\n").unwrap();
    std::fs::write(root.join("data/old/a"), "old\n").unwrap();
    run(Command::new("umoci").args(["repack", "--image", &image]).arg(&b1));
    run(Command::new("umoci").args([
        "config",
        "--image",
        &image,
        "--config.env",
        "TINY=1",
        "--config.cmd",
        "/bin/sh",
        "--config.workingdir",
        "/data",
    ]));
    let b2 = dir.join("b2");
    run(Command::new("umoci").args(["unpack", "--image", &image]).arg(&b2));
    std::fs::remove_file(b2.join("rootfs/etc/remove-me")).unwrap();
    std::fs::remove_file(b2.join("rootfs/data/old/a")).unwrap();
    std::fs::write(b2.join("rootfs/data/old/b"), "new\n").unwrap();
    run(Command::new("umoci").args(["repack", "--image", &image]).arg(&b2));
    layout
}

fn push(layout: &Path, port: u16, name: &str) {
    run(Command::new("skopeo").args([
        "copy",
        "--dest-tls-verify=false",
        &format!("oci:{}:tiny", layout.display()),
        &format!("docker://127.0.0.1:{port}/{name}"),
    ]));
}

fn store(root: &Path, mirror_port: u16) -> ImageStore {
    let mut cfg = RegistryConfig::default();
    cfg.mirrors.insert(
        "docker.io".into(),
        vec![format!("http://127.0.0.1:{mirror_port}")],
    );
    cfg.docker_config = Some(root.join("no-docker-config.json"));
    ImageStore::open(
        &root.join("blobs"),
        &root.join("layers"),
        cfg,
        StoreLimits::default(),
    )
    .unwrap()
}

fn nothing_temporary_left(root: &Path) {
    for d in ["blobs", "layers"] {
        for e in std::fs::read_dir(root.join(d)).unwrap().flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            assert!(!n.starts_with(".tmp-"), "{d}/{n} left behind");
        }
    }
}

#[tokio::test]
#[ignore = "privileged: needs root (owners, whiteout device nodes), docker-registry, umoci, skopeo"]
async fn pull_through_a_mirror_with_a_docker_short_name() {
    let reg = start_registry();
    let work = tempfile::tempdir().unwrap();
    push(&make_tiny_image(work.path()), reg.port, "library/tiny:1");
    let s = store(work.path(), reg.port);
    let seen = Mutex::new(Vec::new());
    let progress = |p: Progress| seen.lock().unwrap().push(p);
    let img = s.pull("tiny:1", None, &progress).await.unwrap();
    assert_eq!(img.reference, "docker.io/library/tiny:1");
    assert_eq!(img.layers.len(), 2);
    assert_eq!(img.config.env.iter().filter(|e| *e == "TINY=1").count(), 1);
    assert_eq!(img.config.cmd, vec!["/bin/sh"]);
    assert_eq!(img.config.working_dir.as_deref(), Some("/data"));
    let (l1, l2) = (
        s.layer_dir(&img.layers[0].diff_id),
        s.layer_dir(&img.layers[1].diff_id),
    );
    assert!(std::fs::metadata(l1.join("bin/busybox")).unwrap().len() > 100_000);
    assert_eq!(
        std::fs::read_link(l1.join("bin/sh")).unwrap(),
        Path::new("busybox")
    );
    let wh = std::fs::symlink_metadata(l2.join("etc/remove-me")).unwrap();
    assert!(wh.file_type().is_char_device(), "a whiteout is a char device");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(wh.rdev(), 0);
    assert_eq!(std::fs::read(l2.join("data/old/b")).unwrap(), b"new\n");
    {
        let seen = seen.lock().unwrap();
        assert!(
            matches!(seen.first(), Some(Progress::Resolved { layers: 2, .. })),
            "{seen:?}"
        );
        assert_eq!(
            seen.iter()
                .filter(|p| matches!(p, Progress::Unpacked { .. }))
                .count(),
            2
        );
    }
    // a second pull fetches no layer
    seen.lock().unwrap().clear();
    let again = s.pull("docker.io/library/tiny:1", None, &progress).await.unwrap();
    assert_eq!(again, img);
    assert_eq!(
        seen.lock()
            .unwrap()
            .iter()
            .filter(|p| matches!(p, Progress::Cached { .. }))
            .count(),
        2
    );
    assert_eq!(s.local_image("docker.io/library/tiny:1").unwrap(), img);
    nothing_temporary_left(work.path());
    // unknown images are "not found"
    let e = s.pull("nope:1", None, &progress).await.unwrap_err();
    assert!(matches!(e, ImageError::NotFound(_)), "{e:?}");
}

/// A TCP proxy to the registry that cuts every response after `cut` bytes once `armed`.
fn cutting_proxy(to: u16, cut: usize, armed: Arc<AtomicBool>) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            let armed = armed.clone();
            std::thread::spawn(move || {
                let up = TcpStream::connect(("127.0.0.1", to)).unwrap();
                let (mut c2, mut up2) = (c.try_clone().unwrap(), up.try_clone().unwrap());
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut c2, &mut up2);
                });
                let (mut up, mut c) = (up, c);
                let mut sent = 0;
                let mut buf = [0u8; 16384];
                loop {
                    let n = match up.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    let n = if armed.load(Ordering::Relaxed) {
                        n.min(cut.saturating_sub(sent))
                    } else {
                        n
                    };
                    if n == 0 || c.write_all(&buf[..n]).is_err() {
                        break;
                    }
                    sent += n;
                }
                let _ = c.shutdown(std::net::Shutdown::Both);
            });
        }
    });
    port
}

#[tokio::test]
#[ignore = "privileged: needs root (owners, whiteout device nodes), docker-registry, umoci, skopeo"]
async fn a_registry_that_dies_mid_pull_leaves_nothing_half_installed() {
    let reg = start_registry();
    let work = tempfile::tempdir().unwrap();
    push(&make_tiny_image(work.path()), reg.port, "library/tiny:1");
    let armed = Arc::new(AtomicBool::new(false));
    let proxy = cutting_proxy(reg.port, 64 * 1024, armed.clone());
    let mut cfg = RegistryConfig::default();
    cfg.insecure.push(format!("127.0.0.1:{proxy}"));
    cfg.docker_config = Some(work.path().join("none.json"));
    let s = ImageStore::open(
        &work.path().join("blobs"),
        &work.path().join("layers"),
        cfg,
        StoreLimits::default(),
    )
    .unwrap();
    let reference = format!("127.0.0.1:{proxy}/library/tiny:1");
    // manifests are small: arm the cut once they are through, so the 2 MB layer is cut
    let armed2 = armed.clone();
    let progress = move |p: Progress| {
        if matches!(p, Progress::Resolved { .. }) {
            armed2.store(true, Ordering::Relaxed);
        }
    };
    let e = s.pull(&reference, None, &progress).await.unwrap_err();
    assert!(matches!(e, ImageError::Registry(_)), "{e:?}");
    nothing_temporary_left(work.path());
    assert_eq!(
        std::fs::read_dir(work.path().join("layers")).unwrap().count(),
        0,
        "no layer installed"
    );
    assert!(s.local_image(&reference).is_none());
    // with the registry healthy again the same store pulls it
    armed.store(false, Ordering::Relaxed);
    let noop = |_p: Progress| {};
    s.pull(&reference, None, &noop).await.unwrap();
}

#[tokio::test]
#[ignore = "privileged: needs root (owners, whiteout device nodes), umoci, skopeo"]
async fn docker_save_and_oci_archives_import() {
    let work = tempfile::tempdir().unwrap();
    let layout = make_tiny_image(work.path());
    let docker = work.path().join("docker.tar");
    let oci = work.path().join("oci.tar");
    run(Command::new("skopeo").args([
        "copy",
        &format!("oci:{}:tiny", layout.display()),
        &format!("docker-archive:{}:example.com/team/tiny:2", docker.display()),
    ]));
    run(Command::new("skopeo").args([
        "copy",
        &format!("oci:{}:tiny", layout.display()),
        &format!("oci-archive:{}:tiny", oci.display()),
    ]));
    let s = store(work.path(), 1);
    let noop = |_p: Progress| {};
    let a = s.import_archive(&docker, &noop).await.unwrap();
    assert_eq!(a.reference, "example.com/team/tiny:2");
    assert_eq!(a.layers.len(), 2);
    let b = s.import_archive(&oci, &noop).await.unwrap();
    assert_eq!(b.layers, a.layers, "the same layers, stored once");
    assert_eq!(b.config.cmd, vec!["/bin/sh"]);
    // not an image archive
    let junk = work.path().join("junk.tar");
    std::fs::write(&junk, vec![0u8; 4096]).unwrap();
    assert!(matches!(
        s.import_archive(&junk, &noop).await,
        Err(ImageError::BadImage(_))
    ));
    nothing_temporary_left(work.path());
}
