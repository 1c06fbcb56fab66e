//! Disk usage of a directory tree: bytes allocated, each inode once, bounded walk.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

/// Stop a disk walk after this many entries (a sandbox with millions of files must not make
/// every sample expensive); the usage is then a lower bound.
pub const MAX_WALK_ENTRIES: usize = 500_000;

/// Bytes allocated (`st_blocks * 512`) by everything under `dirs`, each inode counted once;
/// does not follow symlinks or cross into other filesystems. Missing dirs count as 0. Stops
/// after `max_entries` entries (the result is then a lower bound).
pub fn dir_usage(dirs: &[PathBuf], max_entries: usize) -> u64 {
    let mut seen: HashSet<(u64, u64)> = HashSet::new();
    let mut total = 0u64;
    let mut entries = 0usize;
    let mut stack: Vec<PathBuf> = Vec::new();
    for d in dirs {
        let Ok(m) = std::fs::symlink_metadata(d) else {
            continue;
        };
        let dev = m.dev();
        total += m.blocks() * 512;
        stack.push(d.clone());
        while let Some(dir) = stack.pop() {
            let Ok(rd) = std::fs::read_dir(&dir) else { continue };
            for e in rd.flatten() {
                entries += 1;
                if entries > max_entries {
                    return total;
                }
                let Ok(m) = e.metadata() else { continue };
                if m.dev() != dev {
                    continue;
                }
                if m.nlink() > 1 && !m.is_dir() && !seen.insert((m.dev(), m.ino())) {
                    continue;
                }
                total += m.blocks() * 512;
                if m.is_dir() {
                    stack.push(e.path());
                }
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_usage_walk() {
        let t = tempfile::tempdir().unwrap();
        let a = t.path().join("a");
        std::fs::create_dir_all(a.join("x/y")).unwrap();
        std::fs::write(a.join("x/y/big"), vec![1u8; 256 << 10]).unwrap();
        std::fs::hard_link(a.join("x/y/big"), a.join("x/link")).unwrap();
        std::os::unix::fs::symlink("/usr", a.join("sym")).unwrap();
        let used = dir_usage(&[a.clone(), t.path().join("missing")], MAX_WALK_ENTRIES);
        assert!(used >= 256 << 10, "{used}");
        assert!(
            used < (256 << 10) * 2,
            "hard link counted once, symlink not followed: {used}"
        );
        // A sparse file counts by its allocated blocks, not its size.
        let f = std::fs::File::create(a.join("sparse")).unwrap();
        f.set_len(1 << 30).unwrap();
        assert!(dir_usage(std::slice::from_ref(&a), MAX_WALK_ENTRIES) < (1 << 20));
        // The entry cap bounds the walk.
        assert!(dir_usage(&[a], 1) < 256 << 10);
    }
}
