//! The generated `base` template: a skeleton root filesystem used as the read-only lower
//! layer of every sandbox's `/` overlay (`/usr` comes from the host through its own overlay).
//!
//! It holds an allow-listed copy of the host's `/etc` (no secrets: no shadow files, ssh keys,
//! private TLS keys, registry credentials), regenerated `passwd`/`group`/`shadow`/`sudoers`
//! with `root` and `user` (uid/gid 1000, passwordless sudo), merged-usr links and the usual
//! top-level directories. Files are stored with sandbox ids (0 and 1000); the spawn helper
//! mounts the templates directory idmapped, so they appear with the same ids inside.

use crate::RuntimeError;
use std::io::ErrorKind;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};

/// Bump when the skeleton's content changes; an older `base` is set aside and regenerated.
pub const BASE_VERSION: u32 = 2;
/// Name of the generated template.
pub const BASE: &str = "base";
/// Marker file in a template directory.
pub const MARKER: &str = "template.json";
/// uid/gid of the unprivileged default user inside sandboxes.
pub const USER_ID: u32 = 1000;

/// Entries of the host's `/etc` copied into the skeleton (files, directories, symlinks).
/// Anything not listed is left out.
pub const ETC_ALLOW: &[&str] = &[
    "adduser.conf",
    "alternatives",
    "bash.bashrc",
    "bash_completion.d",
    "bindresvport.blacklist",
    "ca-certificates",
    "ca-certificates.conf",
    "debconf.conf",
    "debian_version",
    "default",
    "deluser.conf",
    "dpkg",
    "environment",
    "environment.d",
    "ethertypes",
    "fonts",
    "gai.conf",
    "host.conf",
    "inputrc",
    "issue",
    "issue.net",
    "java-17-openjdk",
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "locale.alias",
    "locale.gen",
    "localtime",
    "login.defs",
    "logrotate.d",
    "magic",
    "magic.mime",
    "mailcap",
    "manpath.config",
    "matplotlibrc",
    "mime.types",
    "nanorc",
    "networks",
    "os-release",
    "pam.conf",
    "pam.d",
    "perl",
    "profile",
    "profile.d",
    "protocols",
    "python3",
    "python3.11",
    "rpc",
    "security",
    "services",
    "shells",
    "skel",
    "ssl",
    "sudo.conf",
    "terminfo",
    "timezone",
    "vim",
    "wgetrc",
    "xdg",
];

/// Paths (relative to `/etc`) never copied even inside an allowed directory.
pub const ETC_DENY: &[&str] = &["ssl/private", "security/opasswd"];

fn step(message: String) -> RuntimeError {
    RuntimeError::Step {
        step: "template",
        message,
    }
}

fn io_ctx(what: &str, p: &Path) -> impl FnOnce(std::io::Error) -> RuntimeError {
    let m = format!("{what} {}", p.display());
    move |e| step(format!("{m}: {e}"))
}

/// Options of skeleton generation.
#[derive(Debug, Clone)]
pub struct SkeletonSource {
    /// The host root whose `etc/` and top-level merged-usr links are used (normally `/`).
    pub host_root: PathBuf,
    /// Set owners (0 or 1000). Off only in unprivileged unit tests.
    pub chown: bool,
    /// The egress proxy's CA certificate, added to the skeleton's trust store
    /// ([`super::trust`]); a different one regenerates the skeleton.
    pub egress_ca_pem: Option<String>,
}

impl Default for SkeletonSource {
    fn default() -> Self {
        Self {
            host_root: PathBuf::from("/"),
            chown: true,
            egress_ca_pem: None,
        }
    }
}

/// Make sure `<templates>/base` exists and is current; returns its `rootfs` directory.
/// An outdated one is renamed to `.stale-base-<n>` (running sandboxes may still use it).
pub fn ensure_base(templates: &Path, src: &SkeletonSource) -> Result<PathBuf, RuntimeError> {
    let dir = templates.join(BASE);
    let marker = dir.join(MARKER);
    let want = marker_json(src.egress_ca_pem.as_deref());
    match std::fs::read_to_string(&marker) {
        Ok(s) if s == want => return Ok(dir.join("rootfs")),
        Ok(_) => {
            let stale = templates.join(format!(".stale-base-{}", unique()));
            std::fs::rename(&dir, &stale).map_err(io_ctx("setting aside", &dir))?;
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {
            if dir.exists() {
                // a half-made or foreign directory without a marker
                let stale = templates.join(format!(".stale-base-{}", unique()));
                std::fs::rename(&dir, &stale).map_err(io_ctx("setting aside", &dir))?;
            }
        }
        Err(e) => return Err(step(format!("reading {}: {e}", marker.display()))),
    }
    let tmp = templates.join(format!(".tmp-base-{}", unique()));
    let r = build(&tmp, src);
    if let Err(e) = r {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    match std::fs::rename(&tmp, &dir) {
        Ok(()) => Ok(dir.join("rootfs")),
        Err(_) if std::fs::read_to_string(&marker).is_ok_and(|s| s == want) => {
            // another process generated it at the same time
            let _ = std::fs::remove_dir_all(&tmp);
            Ok(dir.join("rootfs"))
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            Err(step(format!(
                "renaming {} to {}: {e}",
                tmp.display(),
                dir.display()
            )))
        }
    }
}

fn unique() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{}-{nanos}", std::process::id())
}

fn marker_json(egress_ca_pem: Option<&str>) -> String {
    match egress_ca_pem {
        None => format!("{{\"version\":{BASE_VERSION},\"kind\":\"generated-base\"}}\n"),
        Some(pem) => format!(
            "{{\"version\":{BASE_VERSION},\"kind\":\"generated-base\",\"egressCa\":\"{}\"}}\n",
            super::trust::fingerprint(pem)
        ),
    }
}

fn mkdir_mode(p: &Path, mode: u32) -> Result<(), RuntimeError> {
    match std::fs::create_dir(p) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
        Err(e) => return Err(step(format!("creating {}: {e}", p.display()))),
    }
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).map_err(io_ctx("chmod", p))
}

fn write_mode(p: &Path, content: &str, mode: u32) -> Result<(), RuntimeError> {
    std::fs::write(p, content).map_err(io_ctx("writing", p))?;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).map_err(io_ctx("chmod", p))
}

fn chown(p: &Path, uid: u32, gid: u32, enabled: bool) -> Result<(), RuntimeError> {
    if !enabled {
        return Ok(());
    }
    std::os::unix::fs::lchown(p, Some(uid), Some(gid)).map_err(io_ctx("chown", p))
}

/// Build the template into `dir` (which must not exist).
fn build(dir: &Path, src: &SkeletonSource) -> Result<(), RuntimeError> {
    mkdir_mode(dir, 0o755)?;
    let root = dir.join("rootfs");
    mkdir_mode(&root, 0o755)?;
    for (d, mode) in [
        ("dev", 0o755),
        ("proc", 0o555),
        ("sys", 0o555),
        ("usr", 0o755),
        ("etc", 0o755),
        ("home", 0o755),
        ("root", 0o700),
        ("tmp", 0o1777),
        ("run", 0o755),
        ("run/lock", 0o1777),
        ("var", 0o755),
        ("var/tmp", 0o1777),
        ("var/log", 0o755),
        ("var/cache", 0o755),
        ("var/lib", 0o755),
        ("var/spool", 0o755),
        ("var/mail", 0o2775),
        ("var/local", 0o2775),
        ("var/opt", 0o755),
        ("var/backups", 0o755),
        ("mnt", 0o755),
        ("opt", 0o755),
        ("srv", 0o755),
        ("media", 0o755),
    ] {
        mkdir_mode(&root.join(d), mode)?;
    }
    for (link, target) in [("var/run", "../run"), ("var/lock", "../run/lock")] {
        symlink(target, root.join(link)).map_err(io_ctx("symlink", &root.join(link)))?;
    }
    // merged-usr links, as on the host
    for name in ["bin", "sbin", "lib", "lib32", "lib64", "libx32"] {
        let host = src.host_root.join(name);
        match std::fs::read_link(&host) {
            Ok(target) => symlink(&target, root.join(name)).map_err(io_ctx("symlink", &root.join(name)))?,
            Err(_) if !host.exists() => {}
            Err(_) => {
                return Err(RuntimeError::Unsupported(format!(
                    "{} is a directory, not a link into /usr: the host is not merged-usr",
                    host.display()
                )));
            }
        }
    }
    let etc = root.join("etc");
    let host_etc = src.host_root.join("etc");
    for name in ETC_ALLOW {
        copy_tree(&host_etc.join(name), &etc.join(name), Path::new(name), src.chown)?;
    }
    write_etc(&etc, src.chown)?;
    if let Some(pem) = &src.egress_ca_pem {
        super::trust::install_in_root(&root, pem)?;
    }
    // home directories from /etc/skel
    let home = root.join("home/user");
    mkdir_mode(&home, 0o750)?;
    let skel = host_etc.join("skel");
    for (dest, uid) in [(&home, USER_ID), (&root.join("root"), 0)] {
        if let Ok(rd) = std::fs::read_dir(&skel) {
            for e in rd.flatten() {
                let to = dest.join(e.file_name());
                copy_tree(&e.path(), &to, Path::new("skel"), false)?;
                chown_tree(&to, uid, uid, src.chown)?;
            }
        }
    }
    chown(&home, USER_ID, USER_ID, src.chown)?;
    write_mode(
        &dir.join(MARKER),
        &marker_json(src.egress_ca_pem.as_deref()),
        0o644,
    )?;
    Ok(())
}

fn chown_tree(p: &Path, uid: u32, gid: u32, enabled: bool) -> Result<(), RuntimeError> {
    chown(p, uid, gid, enabled)?;
    let md = std::fs::symlink_metadata(p).map_err(io_ctx("stat", p))?;
    if md.is_dir() {
        for e in std::fs::read_dir(p).map_err(io_ctx("reading", p))?.flatten() {
            chown_tree(&e.path(), uid, gid, enabled)?;
        }
    }
    Ok(())
}

/// Copy a file, symlink or directory tree; owners become root (`chown`), modes are kept
/// without setuid/setgid bits. Missing sources are skipped; `rel` is the path relative to
/// `/etc`, checked against [`ETC_DENY`]. Special files (sockets, devices, fifos) are skipped.
fn copy_tree(from: &Path, to: &Path, rel: &Path, chown_root: bool) -> Result<(), RuntimeError> {
    if ETC_DENY.iter().any(|d| rel == Path::new(d)) {
        return Ok(());
    }
    let md = match std::fs::symlink_metadata(from) {
        Ok(m) => m,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(step(format!("stat {}: {e}", from.display()))),
    };
    let ft = md.file_type();
    let mode = md.permissions().mode() & 0o1777;
    if ft.is_symlink() {
        let target = std::fs::read_link(from).map_err(io_ctx("readlink", from))?;
        symlink(&target, to).map_err(io_ctx("symlink", to))?;
        chown(to, 0, 0, chown_root)?;
    } else if ft.is_dir() {
        // Directories closed to others on the host (such as ssl/private) may hold secrets.
        if mode & 0o005 != 0o005 {
            return Ok(());
        }
        mkdir_mode(to, mode)?;
        let mut entries: Vec<_> = std::fs::read_dir(from)
            .map_err(io_ctx("reading", from))?
            .flatten()
            .collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            copy_tree(
                &e.path(),
                &to.join(e.file_name()),
                &rel.join(e.file_name()),
                chown_root,
            )?;
        }
        chown(to, 0, 0, chown_root)?;
    } else if ft.is_file() {
        // Files unreadable to others on the host may hold secrets: leave them out.
        if mode & 0o004 == 0 {
            return Ok(());
        }
        std::fs::copy(from, to).map_err(io_ctx("copying", from))?;
        std::fs::set_permissions(to, std::fs::Permissions::from_mode(mode)).map_err(io_ctx("chmod", to))?;
        chown(to, 0, 0, chown_root)?;
    }
    Ok(())
}

const SYSTEM_USERS: &[(&str, u32, u32, &str, &str)] = &[
    ("root", 0, 0, "/root", "/bin/bash"),
    ("daemon", 1, 1, "/usr/sbin", "/usr/sbin/nologin"),
    ("bin", 2, 2, "/bin", "/usr/sbin/nologin"),
    ("sys", 3, 3, "/dev", "/usr/sbin/nologin"),
    ("sync", 4, 65534, "/bin", "/bin/sync"),
    ("games", 5, 60, "/usr/games", "/usr/sbin/nologin"),
    ("man", 6, 12, "/var/cache/man", "/usr/sbin/nologin"),
    ("lp", 7, 7, "/var/spool/lpd", "/usr/sbin/nologin"),
    ("mail", 8, 8, "/var/mail", "/usr/sbin/nologin"),
    ("news", 9, 9, "/var/spool/news", "/usr/sbin/nologin"),
    ("uucp", 10, 10, "/var/spool/uucp", "/usr/sbin/nologin"),
    ("proxy", 13, 13, "/bin", "/usr/sbin/nologin"),
    ("www-data", 33, 33, "/var/www", "/usr/sbin/nologin"),
    ("backup", 34, 34, "/var/backups", "/usr/sbin/nologin"),
    ("list", 38, 38, "/var/list", "/usr/sbin/nologin"),
    ("irc", 39, 39, "/run/ircd", "/usr/sbin/nologin"),
    ("_apt", 42, 65534, "/nonexistent", "/usr/sbin/nologin"),
    ("nobody", 65534, 65534, "/nonexistent", "/usr/sbin/nologin"),
    ("user", USER_ID, USER_ID, "/home/user", "/bin/bash"),
];

const GROUPS: &[(&str, u32, &str)] = &[
    ("root", 0, ""),
    ("daemon", 1, ""),
    ("bin", 2, ""),
    ("sys", 3, ""),
    ("adm", 4, ""),
    ("tty", 5, ""),
    ("disk", 6, ""),
    ("lp", 7, ""),
    ("mail", 8, ""),
    ("news", 9, ""),
    ("uucp", 10, ""),
    ("man", 12, ""),
    ("proxy", 13, ""),
    ("kmem", 15, ""),
    ("dialout", 20, ""),
    ("cdrom", 24, ""),
    ("floppy", 25, ""),
    ("tape", 26, ""),
    ("sudo", 27, "user"),
    ("audio", 29, ""),
    ("dip", 30, ""),
    ("www-data", 33, ""),
    ("backup", 34, ""),
    ("operator", 37, ""),
    ("list", 38, ""),
    ("irc", 39, ""),
    ("src", 40, ""),
    ("shadow", 42, ""),
    ("utmp", 43, ""),
    ("video", 44, ""),
    ("sasl", 45, ""),
    ("plugdev", 46, ""),
    ("staff", 50, ""),
    ("games", 60, ""),
    ("users", 100, "user"),
    ("nogroup", 65534, ""),
    ("user", USER_ID, ""),
];

const SHADOW_GID: u32 = 42;

/// Generated account and host files of the skeleton's `/etc`.
fn write_etc(etc: &Path, chown_enabled: bool) -> Result<(), RuntimeError> {
    let mut passwd = String::new();
    let mut shadow = String::new();
    for (name, uid, gid, home, shell) in SYSTEM_USERS {
        let gecos = if *name == "user" { "" } else { name };
        passwd.push_str(&format!("{name}:x:{uid}:{gid}:{gecos}:{home}:{shell}\n"));
        shadow.push_str(&format!("{name}:*:19000:0:99999:7:::\n"));
    }
    let mut group = String::new();
    let mut gshadow = String::new();
    for (name, gid, members) in GROUPS {
        group.push_str(&format!("{name}:x:{gid}:{members}\n"));
        gshadow.push_str(&format!("{name}:*::{members}\n"));
    }
    write_mode(&etc.join("passwd"), &passwd, 0o644)?;
    write_mode(&etc.join("group"), &group, 0o644)?;
    write_mode(&etc.join("shadow"), &shadow, 0o640)?;
    write_mode(&etc.join("gshadow"), &gshadow, 0o640)?;
    chown(&etc.join("shadow"), 0, SHADOW_GID, chown_enabled)?;
    chown(&etc.join("gshadow"), 0, SHADOW_GID, chown_enabled)?;
    write_mode(
        &etc.join("sudoers"),
        "Defaults\tenv_reset\n\
         Defaults\tmail_badpass\n\
         Defaults\tsecure_path=\"/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\"\n\
         Defaults\tuse_pty\n\
         root\tALL=(ALL:ALL) ALL\n\
         %sudo\tALL=(ALL:ALL) ALL\n\
         @includedir /etc/sudoers.d\n",
        0o440,
    )?;
    mkdir_mode(&etc.join("sudoers.d"), 0o755)?;
    write_mode(
        &etc.join("sudoers.d/user"),
        "user ALL=(ALL:ALL) NOPASSWD: ALL\n",
        0o440,
    )?;
    let mut id = [0u8; 16];
    getrandom(&mut id);
    let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
    write_mode(&etc.join("machine-id"), &format!("{hex}\n"), 0o444)?;
    // per-sandbox files live in each sandbox's upper dir; these are fallbacks
    write_mode(&etc.join("hostname"), "sandbox\n", 0o644)?;
    write_mode(&etc.join("hosts"), &hosts_file("sandbox"), 0o644)?;
    write_mode(&etc.join("resolv.conf"), RESOLV_CONF, 0o644)?;
    write_mode(&etc.join("nsswitch.conf"), NSSWITCH_CONF, 0o644)?;
    if std::fs::symlink_metadata(etc.join("mtab")).is_err() {
        symlink("../proc/self/mounts", etc.join("mtab")).map_err(io_ctx("symlink", &etc.join("mtab")))?;
    }
    Ok(())
}

fn getrandom(buf: &mut [u8]) {
    use std::io::Read;
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = f.read_exact(buf);
    }
}

/// `/etc/nsswitch.conf` of the skeleton: files and DNS only, whatever the host's says (a host's
/// `myhostname`, `resolve` or `mymachines` would answer differently in a sandbox, or not at
/// all), so name lookups behave the same on every host.
pub const NSSWITCH_CONF: &str = "passwd:         files\ngroup:          files\nshadow:         files\n\
gshadow:        files\nhosts:          files dns\nnetworks:       files\nprotocols:      files\n\
services:       files\nethers:         files\nrpc:            files\n";

/// `/etc/resolv.conf` of a sandbox: the gateway of the default `--sandbox-cidr`. Every query to
/// port 53 reaches the daemon's resolver whatever the address (the packet filter redirects it;
/// `docs/network.md`).
pub const RESOLV_CONF: &str = "nameserver 10.213.0.1\noptions ndots:0\n";

/// `/etc/hosts` of a sandbox with this hostname.
pub fn hosts_file(hostname: &str) -> String {
    format!(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n\
         ff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n127.0.1.1\t{hostname}\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn fake_host() -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        std::fs::create_dir_all(r.join("usr/bin")).unwrap();
        symlink("usr/bin", r.join("bin")).unwrap();
        symlink("usr/lib", r.join("lib")).unwrap();
        let etc = r.join("etc");
        for d in [
            "ssh",
            "ssl/private",
            "ssl/certs",
            "alternatives",
            "skel",
            "pam.d",
            "apt",
        ] {
            std::fs::create_dir_all(etc.join(d)).unwrap();
        }
        std::fs::write(
            etc.join("passwd"),
            "root:x:0:0::/root:/bin/bash\nadmin:x:1000:1000::/home/admin:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(etc.join("shadow"), "root:$6$secret:1::::::\n").unwrap();
        std::fs::write(etc.join("ssh/ssh_host_ed25519_key"), "PRIVATE").unwrap();
        std::fs::write(etc.join("ssl/private/server.key"), "PRIVATE").unwrap();
        std::fs::write(etc.join("ssl/certs/ca.pem"), "CERT").unwrap();
        std::fs::write(etc.join("pam.d/sudo"), "@include common-auth\n").unwrap();
        std::fs::write(etc.join("pam.d/secret-conf"), "x").unwrap();
        std::fs::set_permissions(
            etc.join("pam.d/secret-conf"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        std::fs::write(etc.join("skel/.bashrc"), "# bashrc\n").unwrap();
        std::fs::write(etc.join("profile"), "# profile\n").unwrap();
        std::fs::write(
            etc.join("pip.conf"),
            "[global]\nindex-url = https://token@proxy\n",
        )
        .unwrap();
        std::fs::write(etc.join("hostname"), "hostbox\n").unwrap();
        symlink("/usr/bin/python3.11", etc.join("alternatives/python")).unwrap();
        symlink("../usr/lib/os-release", etc.join("os-release")).unwrap();
        t
    }

    fn is_root() -> bool {
        nix::unistd::geteuid().is_root()
    }

    #[test]
    fn skeleton_has_no_host_secrets_and_has_accounts() {
        let host = fake_host();
        let out = tempfile::tempdir().unwrap();
        let src = SkeletonSource {
            host_root: host.path().to_path_buf(),
            chown: is_root(),
            egress_ca_pem: None,
        };
        std::fs::write(
            host.path().join("etc/nsswitch.conf"),
            "hosts: files myhostname resolve [!UNAVAIL=return] dns\n",
        )
        .unwrap();
        let root = ensure_base(out.path(), &src).unwrap();
        assert_eq!(root, out.path().join("base/rootfs"));
        let etc = root.join("etc");
        // name lookups do not depend on the host's NSS modules
        let nss = std::fs::read_to_string(etc.join("nsswitch.conf")).unwrap();
        assert!(
            nss.contains("hosts:          files dns\n") && !nss.contains("myhostname"),
            "{nss}"
        );
        // secrets and non-allow-listed files are absent
        assert!(!etc.join("ssh").exists());
        assert!(!etc.join("ssl/private").exists());
        assert!(!etc.join("pip.conf").exists());
        assert!(!etc.join("pam.d/secret-conf").exists());
        assert!(etc.join("ssl/certs/ca.pem").exists());
        assert!(etc.join("pam.d/sudo").exists());
        let shadow = std::fs::read_to_string(etc.join("shadow")).unwrap();
        assert!(!shadow.contains("secret"));
        assert!(shadow.contains("user:*:"));
        // regenerated accounts, not the host's
        let passwd = std::fs::read_to_string(etc.join("passwd")).unwrap();
        assert!(passwd.contains("user:x:1000:1000::/home/user:/bin/bash\n"));
        assert!(passwd.starts_with("root:x:0:0:root:/root:/bin/bash\n"));
        assert!(!passwd.contains("admin"));
        let group = std::fs::read_to_string(etc.join("group")).unwrap();
        assert!(group.contains("sudo:x:27:user\n"));
        assert!(group.contains("user:x:1000:\n"));
        let sudoers_d = std::fs::read_to_string(etc.join("sudoers.d/user")).unwrap();
        assert_eq!(sudoers_d, "user ALL=(ALL:ALL) NOPASSWD: ALL\n");
        assert_eq!(
            std::fs::metadata(etc.join("sudoers")).unwrap().mode() & 0o7777,
            0o440
        );
        assert_eq!(
            std::fs::metadata(etc.join("sudoers.d/user")).unwrap().mode() & 0o7777,
            0o440
        );
        assert_eq!(
            std::fs::read_to_string(etc.join("hostname")).unwrap(),
            "sandbox\n"
        );
        // symlinks are kept as links
        assert_eq!(
            std::fs::read_link(etc.join("alternatives/python")).unwrap(),
            Path::new("/usr/bin/python3.11")
        );
        assert_eq!(
            std::fs::read_link(etc.join("os-release")).unwrap(),
            Path::new("../usr/lib/os-release")
        );
        // merged-usr links mirror the host, missing ones are not invented
        assert_eq!(
            std::fs::read_link(root.join("bin")).unwrap(),
            Path::new("usr/bin")
        );
        assert_eq!(
            std::fs::read_link(root.join("lib")).unwrap(),
            Path::new("usr/lib")
        );
        assert!(std::fs::symlink_metadata(root.join("lib64")).is_err());
        // directories
        assert_eq!(
            std::fs::metadata(root.join("tmp")).unwrap().mode() & 0o7777,
            0o1777
        );
        assert_eq!(
            std::fs::metadata(root.join("root")).unwrap().mode() & 0o7777,
            0o700
        );
        assert!(root.join("usr").is_dir() && root.join("proc").is_dir() && root.join("dev").is_dir());
        assert_eq!(
            std::fs::read_to_string(root.join("home/user/.bashrc")).unwrap(),
            "# bashrc\n"
        );
        if is_root() {
            let md = std::fs::metadata(root.join("home/user")).unwrap();
            assert_eq!((md.uid(), md.gid()), (1000, 1000));
            assert_eq!(
                std::fs::metadata(root.join("home/user/.bashrc")).unwrap().uid(),
                1000
            );
            assert_eq!(std::fs::metadata(etc.join("shadow")).unwrap().gid(), 42);
            assert_eq!(std::fs::metadata(root.join("root/.bashrc")).unwrap().uid(), 0);
        }
    }

    #[test]
    fn ensure_is_idempotent_and_regenerates_old_versions() {
        let host = fake_host();
        let out = tempfile::tempdir().unwrap();
        let src = SkeletonSource {
            host_root: host.path().to_path_buf(),
            chown: is_root(),
            egress_ca_pem: None,
        };
        let root = ensure_base(out.path(), &src).unwrap();
        let id1 = std::fs::read_to_string(root.join("etc/machine-id")).unwrap();
        ensure_base(out.path(), &src).unwrap();
        assert_eq!(
            std::fs::read_to_string(root.join("etc/machine-id")).unwrap(),
            id1,
            "kept"
        );
        std::fs::write(out.path().join("base").join(MARKER), "{\"version\":0}").unwrap();
        ensure_base(out.path(), &src).unwrap();
        assert_ne!(
            std::fs::read_to_string(root.join("etc/machine-id")).unwrap(),
            id1,
            "regenerated"
        );
        // a CA is added to the trust store; another CA regenerates the skeleton
        std::fs::write(
            host.path().join("etc/ssl/certs/ca-certificates.crt"),
            "HOST ROOTS\n",
        )
        .unwrap();
        let with_ca = |pem: &str| SkeletonSource {
            egress_ca_pem: Some(pem.to_string()),
            ..src.clone()
        };
        ensure_base(out.path(), &with_ca("CA ONE")).unwrap();
        let bundle = std::fs::read_to_string(root.join("etc/ssl/certs/ca-certificates.crt")).unwrap();
        assert!(
            bundle.starts_with("HOST ROOTS\n") && bundle.ends_with("CA ONE\n"),
            "{bundle}"
        );
        assert_eq!(
            std::fs::read_to_string(root.join("etc/sandboxd/egress-ca.pem")).unwrap(),
            "CA ONE\n"
        );
        ensure_base(out.path(), &with_ca("CA TWO")).unwrap();
        let bundle = std::fs::read_to_string(root.join("etc/ssl/certs/ca-certificates.crt")).unwrap();
        assert!(
            bundle.ends_with("CA TWO\n") && !bundle.contains("CA ONE"),
            "{bundle}"
        );
        // the host's own bundle is untouched
        assert_eq!(
            std::fs::read_to_string(host.path().join("etc/ssl/certs/ca-certificates.crt")).unwrap(),
            "HOST ROOTS\n"
        );
        let stale: Vec<_> = std::fs::read_dir(out.path())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(".stale-base-"))
            .collect();
        assert_eq!(stale.len(), 3);
        assert!(
            !out.path()
                .read_dir()
                .unwrap()
                .flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with(".tmp"))
        );
    }

    #[test]
    fn non_merged_usr_host_is_rejected() {
        let host = fake_host();
        std::fs::remove_file(host.path().join("bin")).unwrap();
        std::fs::create_dir(host.path().join("bin")).unwrap();
        let out = tempfile::tempdir().unwrap();
        let src = SkeletonSource {
            host_root: host.path().to_path_buf(),
            chown: false,
            egress_ca_pem: None,
        };
        assert!(matches!(
            ensure_base(out.path(), &src),
            Err(RuntimeError::Unsupported(_))
        ));
        assert!(!out.path().join("base").exists());
    }

    #[test]
    fn hosts_file_names_the_host() {
        assert!(hosts_file("sbx1").contains("127.0.1.1\tsbx1\n"));
        assert!(hosts_file("sbx1").starts_with("127.0.0.1\tlocalhost\n"));
    }
}
