//! Disk quotas for sandbox upper dirs (`docs/limits.md`).
//!
//! A quota is a filesystem of its own: [`DiskQuota::attach`] turns an empty directory into the
//! mount point of a filesystem of `size_mb`, so everything the sandbox writes below it (its
//! overlay upper and work dirs) stops with `ENOSPC` at the limit, and the host never loses
//! more than that. Which implementation is used is decided once, at backend start, by
//! [`choose`]:
//!
//! - [`LoopImageQuota`]: a sparse ext4 image file next to the mount point, attached to a loop
//!   device (`LOOP_CONFIGURE`, direct I/O, auto-clear) and mounted with `discard`, so deleted
//!   files give their space back to the host. Formatting costs 12–19 ms and mounting ~6 ms on
//!   the reference machine, so callers should attach ahead of time (the backend's slot pool).
//! - [`NoQuota`]: no enforcement; usage is measured by walking the directory.
//!
//! Project quotas (ext4 `project` feature, XFS `prjquota`) would be cheaper, but need a
//! kernel with `CONFIG_QFMT_V2` or `CONFIG_XFS_QUOTA`; the reference kernel has neither
//! (mounting an ext4 image with the quota feature fails with "The kernel was not built with
//! CONFIG_QUOTA and CONFIG_QFMT_V2"), so they are not implemented.

use crate::RuntimeError;
use std::fs::OpenOptions;
use std::io::ErrorKind;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

/// Usage of a quota'd directory, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskUsage {
    /// Bytes in use.
    pub used: u64,
    /// Size of the filesystem (`None` when nothing is enforced).
    pub total: Option<u64>,
}

/// A way to cap the disk use of a directory tree.
pub trait DiskQuota: Send + Sync + std::fmt::Debug {
    /// Short name for logs and docs (`loop-ext4`, `none`).
    fn kind(&self) -> &'static str;

    /// Make `dir` (created if missing, must be empty) a tree of at most `size_mb` MiB.
    /// `size_mb == 0` means no limit. On error nothing is left mounted.
    fn attach(&self, dir: &Path, size_mb: u64) -> Result<(), RuntimeError>;

    /// Current usage of `dir`.
    fn usage(&self, dir: &Path) -> Result<DiskUsage, RuntimeError>;

    /// Undo [`attach`](Self::attach): unmount and free the backing storage. Idempotent; the
    /// directory itself stays (the caller removes it).
    fn detach(&self, dir: &Path) -> Result<(), RuntimeError>;
}

fn qerr(message: String) -> RuntimeError {
    RuntimeError::Step {
        step: "disk quota",
        message,
    }
}

/// The image file that backs the filesystem mounted at `dir`: `<dir>.img`.
pub fn image_path(dir: &Path) -> PathBuf {
    let mut s = dir.as_os_str().to_owned();
    s.push(".img");
    PathBuf::from(s)
}

/// Whether `dir` is a mount point (its device differs from its parent's).
pub fn is_mount_point(dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let (Ok(m), Some(parent)) = (std::fs::symlink_metadata(dir), dir.parent()) else {
        return false;
    };
    std::fs::metadata(parent).is_ok_and(|p| p.dev() != m.dev())
}

/// No enforcement: usage is the allocated size of the tree.
#[derive(Debug, Default)]
pub struct NoQuota;

impl DiskQuota for NoQuota {
    fn kind(&self) -> &'static str {
        "none"
    }

    fn attach(&self, dir: &Path, _size_mb: u64) -> Result<(), RuntimeError> {
        std::fs::create_dir_all(dir).map_err(|e| qerr(format!("creating {}: {e}", dir.display())))
    }

    fn usage(&self, dir: &Path) -> Result<DiskUsage, RuntimeError> {
        Ok(DiskUsage {
            used: super::disk_usage::dir_usage(&[dir.to_path_buf()], super::disk_usage::MAX_WALK_ENTRIES),
            total: None,
        })
    }

    fn detach(&self, _dir: &Path) -> Result<(), RuntimeError> {
        Ok(())
    }
}

/// One sparse ext4 image per directory, loop-mounted on it.
#[derive(Debug, Clone)]
pub struct LoopImageQuota {
    /// `mkfs.ext4` to run.
    pub mkfs: PathBuf,
}

// <linux/loop.h>
const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
const LO_FLAGS_AUTOCLEAR: u32 = 4;
const LO_FLAGS_DIRECT_IO: u32 = 16;

#[repr(C)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; 64],
    lo_crypt_name: [u8; 64],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

/// Tries to find and configure a free loop device before giving up.
const ATTACH_ATTEMPTS: u32 = 32;

/// Attach `image` to a free loop device; returns the device path and an open fd of it. With
/// auto-clear, the device frees itself at its last close once unmounted, so the fd must stay
/// open until the mount holds the device.
fn loop_attach(image: &Path) -> Result<(PathBuf, std::fs::File), RuntimeError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(image)
        .map_err(|e| qerr(format!("opening {}: {e}", image.display())))?;
    let ctl = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/loop-control")
        .map_err(|e| qerr(format!("opening /dev/loop-control: {e}")))?;
    // Concurrent creates of this daemon would all be handed the same free device and race for
    // it: take turns here. Other processes can still take a device first: retry on EBUSY.
    static ATTACH: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _turn = ATTACH.lock().unwrap_or_else(|p| p.into_inner());
    for attempt in 0..ATTACH_ATTEMPTS {
        if attempt > 0 {
            std::thread::sleep(std::time::Duration::from_micros(200 * attempt as u64));
        }
        // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a device number or -1.
        let n = unsafe { libc::ioctl(ctl.as_raw_fd(), LOOP_CTL_GET_FREE) };
        if n < 0 {
            return Err(qerr(format!(
                "no free loop device: {}",
                std::io::Error::last_os_error()
            )));
        }
        let dev = PathBuf::from(format!("/dev/loop{n}"));
        let loopdev = match OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(&dev)
        {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => continue,
            Err(e) => return Err(qerr(format!("opening {}: {e}", dev.display()))),
        };
        let cfg = LoopConfig {
            fd: file.as_raw_fd() as u32,
            block_size: 0,
            info: LoopInfo64 {
                lo_device: 0,
                lo_inode: 0,
                lo_rdevice: 0,
                lo_offset: 0,
                lo_sizelimit: 0,
                lo_number: 0,
                lo_encrypt_type: 0,
                lo_encrypt_key_size: 0,
                lo_flags: LO_FLAGS_AUTOCLEAR | LO_FLAGS_DIRECT_IO,
                lo_file_name: [0; 64],
                lo_crypt_name: [0; 64],
                lo_encrypt_key: [0; 32],
                lo_init: [0; 2],
            },
            reserved: [0; 8],
        };
        // SAFETY: LOOP_CONFIGURE reads a `struct loop_config` that lives for the call.
        let rc = unsafe { libc::ioctl(loopdev.as_raw_fd(), LOOP_CONFIGURE, &cfg as *const LoopConfig) };
        if rc == 0 {
            return Ok((dev, loopdev));
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EBUSY) {
            continue; // another process took this device first
        }
        return Err(qerr(format!("LOOP_CONFIGURE {}: {e}", dev.display())));
    }
    Err(qerr(format!(
        "no free loop device after {ATTACH_ATTEMPTS} attempts"
    )))
}

impl LoopImageQuota {
    /// Uses `mkfs.ext4` from `PATH` (or `/sbin`, `/usr/sbin`).
    pub fn new() -> Result<Self, RuntimeError> {
        let mkfs = ["/usr/sbin/mkfs.ext4", "/sbin/mkfs.ext4", "/usr/bin/mkfs.ext4"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .ok_or_else(|| RuntimeError::Unsupported("mkfs.ext4 not found (install e2fsprogs)".into()))?;
        if !Path::new("/dev/loop-control").exists() {
            return Err(RuntimeError::Unsupported("/dev/loop-control is missing".into()));
        }
        Ok(Self { mkfs })
    }

    /// Create a sparse image of `size_mb` MiB and format it (no journal: the tree is scratch
    /// space of one sandbox; one inode per 8 KiB so package installs do not run out).
    pub fn format(&self, image: &Path, size_mb: u64) -> Result<(), RuntimeError> {
        let f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(image)
            .map_err(|e| qerr(format!("creating {}: {e}", image.display())))?;
        f.set_len(size_mb << 20)
            .map_err(|e| qerr(format!("sizing {}: {e}", image.display())))?;
        drop(f);
        let out = Command::new(&self.mkfs)
            .args(["-q", "-F", "-m", "0", "-i", "8192", "-O", "^has_journal"])
            .args(["-E", "lazy_itable_init=1,nodiscard"])
            .arg(image)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| qerr(format!("running {}: {e}", self.mkfs.display())))?;
        if !out.status.success() {
            let _ = std::fs::remove_file(image);
            return Err(qerr(format!(
                "mkfs.ext4 {} failed: {}",
                image.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(())
    }

    /// Usage of the filesystem mounted at `dir` (`statvfs`).
    pub fn statvfs_usage(dir: &Path) -> Result<DiskUsage, RuntimeError> {
        let s =
            nix::sys::statvfs::statvfs(dir).map_err(|e| qerr(format!("statvfs {}: {e}", dir.display())))?;
        let frsize = s.fragment_size();
        let blocks = s.blocks();
        Ok(DiskUsage {
            used: (blocks.saturating_sub(s.blocks_free())).saturating_mul(frsize),
            total: Some(blocks.saturating_mul(frsize)),
        })
    }

    /// Mount an already formatted image on `dir` (the cheap part of [`DiskQuota::attach`]).
    pub fn mount_image(&self, image: &Path, dir: &Path) -> Result<(), RuntimeError> {
        use nix::mount::{MsFlags, mount};
        let (dev, loopdev) = loop_attach(image)?;
        let r = mount(
            Some(&dev),
            dir,
            Some("ext4"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOATIME,
            // noinit_itable: no background zeroing of the lazily initialised inode tables
            // (host I/O for nothing: the image is sparse and private to one sandbox)
            Some("discard,noinit_itable"),
        );
        // Closing our fd lets auto-clear free the device when (or, on error, now that) nothing
        // mounts it.
        drop(loopdev);
        if let Err(e) = r {
            return Err(qerr(format!(
                "mounting {} ({}) on {}: {e}",
                dev.display(),
                image.display(),
                dir.display()
            )));
        }
        Ok(())
    }
}

impl DiskQuota for LoopImageQuota {
    fn kind(&self) -> &'static str {
        "loop-ext4"
    }

    fn attach(&self, dir: &Path, size_mb: u64) -> Result<(), RuntimeError> {
        std::fs::create_dir_all(dir).map_err(|e| qerr(format!("creating {}: {e}", dir.display())))?;
        if size_mb == 0 {
            return Ok(());
        }
        if size_mb < 8 {
            return Err(RuntimeError::InvalidSpec(format!(
                "disk size {size_mb} MiB is below the minimum of 8 MiB"
            )));
        }
        let image = image_path(dir);
        let t0 = Instant::now();
        self.format(&image, size_mb)?;
        let t1 = Instant::now();
        if let Err(e) = self.mount_image(&image, dir) {
            let _ = std::fs::remove_file(&image);
            return Err(e);
        }
        tracing::debug!(
            dir = %dir.display(),
            size_mb,
            format_us = (t1 - t0).as_micros() as u64,
            mount_us = t1.elapsed().as_micros() as u64,
            "disk quota attached"
        );
        Ok(())
    }

    fn usage(&self, dir: &Path) -> Result<DiskUsage, RuntimeError> {
        if !is_mount_point(dir) {
            return NoQuota.usage(dir);
        }
        Self::statvfs_usage(dir)
    }

    fn detach(&self, dir: &Path) -> Result<(), RuntimeError> {
        if is_mount_point(dir) {
            nix::mount::umount2(dir, nix::mount::MntFlags::MNT_DETACH)
                .map_err(|e| qerr(format!("unmounting {}: {e}", dir.display())))?;
        }
        match std::fs::remove_file(image_path(dir)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(qerr(format!("removing {}: {e}", image_path(dir).display()))),
        }
    }
}

/// Pick the quota implementation at backend start: `SANDBOXD_DISK_QUOTA=none` disables it;
/// otherwise a loop-mounted ext4 image when this host can do it (root, `mkfs.ext4`, loop
/// devices, and a trial attach in `scratch` succeeds), else [`NoQuota`] with a warning.
pub fn choose(scratch: &Path) -> Box<dyn DiskQuota> {
    if std::env::var("SANDBOXD_DISK_QUOTA").as_deref() == Ok("none") {
        return Box::new(NoQuota);
    }
    let q = match LoopImageQuota::new() {
        Ok(q) => q,
        Err(e) => {
            tracing::warn!("disk quotas disabled: {e}");
            return Box::new(NoQuota);
        }
    };
    let probe = scratch.join(format!(".quota-probe-{}", std::process::id()));
    let r = q.attach(&probe, 8).and_then(|()| q.detach(&probe));
    let _ = q.detach(&probe);
    let _ = std::fs::remove_dir(&probe);
    match r {
        Ok(()) => Box::new(q),
        Err(e) => {
            tracing::warn!("disk quotas disabled (loop-mounted ext4 images do not work here): {e}");
            Box::new(NoQuota)
        }
    }
}

/// Name of the quota filesystem's mount point inside a sandbox dir (`<sbx>/disk`, image
/// `<sbx>/disk.img`); the overlay upper and work dirs live in it, reached through the
/// relative symlinks `<sbx>/upper -> disk/upper` and `<sbx>/work -> disk/work`.
pub const DISK_DIR: &str = "disk";

/// Smallest enforced disk size; `0` means no limit.
pub const MIN_DISK_MB: u64 = 8;

/// Check a requested disk size (`0` = no limit, else at least [`MIN_DISK_MB`]).
pub fn validate_size(size_mb: u64) -> Result<(), RuntimeError> {
    if size_mb != 0 && size_mb < MIN_DISK_MB {
        return Err(RuntimeError::InvalidSpec(format!(
            "diskSizeMB {size_mb} is below the minimum of {MIN_DISK_MB} (0 = no limit)"
        )));
    }
    Ok(())
}

/// Whether a prepared slot whose disk was attached with `slot_mb` can serve a sandbox that
/// wants `want_mb`: always without enforcement, else only the same size.
pub fn slot_fits(quota: &dyn DiskQuota, slot_mb: u64, want_mb: u64) -> bool {
    quota.kind() == "none" || slot_mb == want_mb
}

/// Make the writable-layer layout of a new sandbox dir `sbx` (which exists and is empty):
/// the quota filesystem at `<sbx>/disk` (`size_mb`, 0 = unlimited), `disk/upper` and
/// `disk/work` (0711, host root), and the relative symlinks `upper` and `work` pointing into
/// it, so every existing path (`upper/root`, `work/usr`, ...) keeps working and overlayfs
/// finds each upper dir and its work dir on the same filesystem. On error nothing stays
/// mounted.
pub fn prepare_layout(quota: &dyn DiskQuota, sbx: &Path, size_mb: u64) -> Result<(), RuntimeError> {
    validate_size(size_mb)?;
    let disk = sbx.join(DISK_DIR);
    let t0 = Instant::now();
    quota.attach(&disk, size_mb)?;
    let r = (|| -> std::io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        for d in ["upper", "work"] {
            let p = disk.join(d);
            match std::fs::create_dir(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o711))?;
            std::os::unix::fs::symlink(format!("{DISK_DIR}/{d}"), sbx.join(d))?;
        }
        Ok(())
    })();
    if let Err(e) = r {
        let _ = quota.detach(&disk);
        return Err(qerr(format!("layout in {}: {e}", disk.display())));
    }
    if size_mb == 0 {
        tracing::info!(dir = %sbx.display(), "diskSizeMB 0: this sandbox has no disk quota");
    } else if quota.kind() == "none" {
        tracing::debug!(dir = %sbx.display(), size_mb, "disk quotas are disabled on this host: not enforced");
    } else {
        tracing::debug!(dir = %sbx.display(), size_mb, us = t0.elapsed().as_micros() as u64, "disk quota ready");
    }
    Ok(())
}

/// Release the quota filesystem of a sandbox dir that is about to be deleted (any
/// implementation): lazily unmount `<sbx>/disk` if it is a mount point and delete the image.
/// The loop device frees itself (auto-clear) once the sandbox's own mount namespace is gone.
/// Idempotent; best effort (a failure is logged: `remove_dir_all` would then stop at the
/// mount point instead of descending into it).
pub fn release(sbx: &Path) {
    let disk = sbx.join(DISK_DIR);
    if is_mount_point(&disk)
        && let Err(e) = nix::mount::umount2(&disk, nix::mount::MntFlags::MNT_DETACH)
    {
        tracing::warn!("unmounting the disk quota at {}: {e}", disk.display());
    }
    match std::fs::remove_file(image_path(&disk)) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => tracing::warn!("removing {}: {e}", image_path(&disk).display()),
    }
}

/// Empty the trash at start: sandbox dirs of interrupted destroys (their quota released) and
/// what a start-up killed during its quota probe left (`.quota-probe-<pid>` mounted on its
/// image, `.quota-probe-<pid>.img`). Best effort.
pub fn sweep_trash(trash: &Path) {
    let Ok(rd) = std::fs::read_dir(trash) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if is_mount_point(&p)
            && let Err(err) = nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH)
        {
            tracing::warn!("unmounting {}: {err}", p.display());
            continue;
        }
        let r = match e.file_type() {
            Ok(t) if t.is_dir() => {
                release(&p);
                std::fs::remove_dir_all(&p)
            }
            _ => std::fs::remove_file(&p),
        };
        if let Err(err) = r {
            tracing::warn!("emptying the trash: removing {}: {err}", p.display());
        }
    }
}

/// Mount a sandbox dir's image again if it exists but is not mounted (after a host reboot:
/// the kernel forgot the mount, the image file is kept). `Ok(false)`: nothing to do.
pub fn ensure_mounted(sbx: &Path) -> Result<bool, RuntimeError> {
    let disk = sbx.join(DISK_DIR);
    let image = image_path(&disk);
    if !image.exists() || is_mount_point(&disk) {
        return Ok(false);
    }
    let q = LoopImageQuota::new()?;
    q.mount_image(&image, &disk)?;
    tracing::info!(dir = %sbx.display(), "disk quota image mounted again");
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn image_paths_and_mount_points() {
        assert_eq!(
            image_path(Path::new("/d/sbx/disk")),
            PathBuf::from("/d/sbx/disk.img")
        );
        let t = tempfile::tempdir().unwrap();
        assert!(!is_mount_point(t.path()) || t.path().parent().is_none());
        assert!(is_mount_point(Path::new("/proc")));
        assert!(!is_mount_point(&t.path().join("missing")));
    }

    #[test]
    fn no_quota_measures_by_walking() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("disk");
        let q = NoQuota;
        q.attach(&d, 100).unwrap();
        std::fs::write(d.join("f"), vec![7u8; 64 << 10]).unwrap();
        let u = q.usage(&d).unwrap();
        assert!(u.used >= 64 << 10, "{u:?}");
        assert_eq!(u.total, None);
        q.detach(&d).unwrap();
    }

    fn root() -> bool {
        if nix::unistd::geteuid().is_root() {
            return true;
        }
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("loop quota tests need root (CI=true)");
        }
        eprintln!("SKIP: needs root");
        false
    }

    /// A writer fills the quota'd tree: it stops with ENOSPC near the limit, the host file
    /// stays within the image size, deleting gives the space back, and detach cleans up.
    #[test]
    fn loop_image_enforces_size() {
        if !root() {
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("disk");
        let q = LoopImageQuota::new().unwrap();
        assert!(q.attach(&d, 4).is_err(), "below the minimum");
        q.attach(&d, 32).unwrap();
        assert!(is_mount_point(&d));
        let before = q.usage(&d).unwrap();
        let total = before.total.unwrap();
        assert!(total > 28 << 20 && total <= 32 << 20, "{before:?}");

        let mut f = std::fs::File::create(d.join("filler")).unwrap();
        let chunk = vec![0xabu8; 1 << 20];
        let mut written = 0u64;
        let err = loop {
            match f.write_all(&chunk).and_then(|()| f.sync_data()) {
                Ok(()) => written += chunk.len() as u64,
                Err(e) => break e,
            }
            assert!(written <= 64 << 20, "writes never stopped");
        };
        assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
        assert!(written >= 24 << 20, "stopped too early: {written}");
        drop(f);
        let full = q.usage(&d).unwrap();
        assert!(full.used >= written, "{full:?}");
        let host = std::fs::metadata(image_path(&d)).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert!(
            host.blocks() * 512 <= 33 << 20,
            "host usage bounded: {}",
            host.blocks() * 512
        );

        std::fs::remove_file(d.join("filler")).unwrap();
        nix::unistd::sync();
        let after = q.usage(&d).unwrap();
        assert!(after.used < 4 << 20, "{after:?}");

        q.detach(&d).unwrap();
        assert!(!is_mount_point(&d));
        assert!(!image_path(&d).exists());
        q.detach(&d).unwrap(); // idempotent
        q.attach(&d, 0).unwrap();
        assert!(!is_mount_point(&d), "0 means no limit");
    }

    #[test]
    fn sweep_removes_an_interrupted_quota_probe() {
        if !root() {
            return;
        }
        // What a start-up killed between the probe's attach and detach leaves behind.
        let t = tempfile::tempdir().unwrap();
        let probe = t.path().join(".quota-probe-1");
        LoopImageQuota::new().unwrap().attach(&probe, 8).unwrap();
        assert!(is_mount_point(&probe) && image_path(&probe).exists());
        let sbx = t.path().join("isbx-1");
        std::fs::create_dir_all(sbx.join("upper")).unwrap();
        sweep_trash(t.path());
        assert!(!is_mount_point(&probe));
        assert_eq!(std::fs::read_dir(t.path()).unwrap().count(), 0, "trash emptied");
    }

    #[test]
    fn choose_picks_loop_images_as_root() {
        if !root() {
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let q = choose(t.path());
        assert_eq!(q.kind(), "loop-ext4");
        assert_eq!(
            std::fs::read_dir(t.path()).unwrap().count(),
            0,
            "probe cleaned up"
        );
    }
}
