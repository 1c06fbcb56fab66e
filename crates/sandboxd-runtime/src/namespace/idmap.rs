//! The user-namespace id mapping shared by every sandbox: sandbox ids `0..count` map to host
//! ids `base..base+count` (one unprivileged host range, never host root).

use crate::RuntimeError;

/// Number of ids every sandbox gets (`0..65535` inside).
pub const DEFAULT_COUNT: u32 = 65536;
/// Default first host id of the range.
pub const DEFAULT_BASE: u32 = 100_000;

/// One contiguous mapping of sandbox ids to host ids, used for both uids and gids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdMap {
    /// Host id of the sandbox's root (uid/gid 0 inside).
    pub base: u32,
    /// Number of mapped ids.
    pub count: u32,
}

impl Default for IdMap {
    fn default() -> Self {
        Self {
            base: DEFAULT_BASE,
            count: DEFAULT_COUNT,
        }
    }
}

impl IdMap {
    /// A validated mapping: the range must not contain host id 0, must cover at least uid
    /// 65534 (`nobody`) inside, and must not overflow.
    pub fn new(base: u32, count: u32) -> Result<Self, RuntimeError> {
        if base == 0 {
            return Err(RuntimeError::InvalidSpec(
                "uid/gid map base must not be 0: sandboxes never map host root".into(),
            ));
        }
        if count < DEFAULT_COUNT {
            return Err(RuntimeError::InvalidSpec(format!(
                "uid/gid map must cover at least {DEFAULT_COUNT} ids, got {count}"
            )));
        }
        if base.checked_add(count).is_none() || base + count == u32::MAX {
            return Err(RuntimeError::InvalidSpec(format!(
                "uid/gid map {base}+{count} overflows the id space"
            )));
        }
        Ok(Self { base, count })
    }

    /// The line written to `/proc/<pid>/uid_map` and `gid_map`.
    pub fn proc_map_line(&self) -> String {
        format!("0 {} {}\n", self.base, self.count)
    }

    /// Host id of sandbox id `inner`, if mapped.
    pub fn to_host(&self, inner: u32) -> Option<u32> {
        (inner < self.count).then(|| self.base + inner)
    }

    /// Sandbox id of host id `host`, if it is inside the range.
    pub fn to_inner(&self, host: u32) -> Option<u32> {
        host.checked_sub(self.base).filter(|i| *i < self.count)
    }

    /// Host uid/gid of the sandbox's root.
    pub fn root(&self) -> u32 {
        self.base
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_maps_root_to_100000() {
        let m = IdMap::default();
        assert_eq!(m.proc_map_line(), "0 100000 65536\n");
        assert_eq!(m.to_host(0), Some(100_000));
        assert_eq!(m.to_host(1000), Some(101_000));
        assert_eq!(m.to_host(65535), Some(165_535));
        assert_eq!(m.to_host(65536), None);
        assert_eq!(m.to_inner(101_000), Some(1000));
        assert_eq!(m.to_inner(99_999), None);
        assert_eq!(m.to_inner(165_536), None);
        assert_eq!(m.to_inner(0), None);
    }

    #[test]
    fn rejects_host_root_and_small_or_overflowing_ranges() {
        assert!(IdMap::new(0, 65536).is_err());
        assert!(IdMap::new(100_000, 1000).is_err());
        assert!(IdMap::new(u32::MAX - 10, 65536).is_err());
        assert!(IdMap::new(u32::MAX - 65536, 65536).is_err());
        let m = IdMap::new(200_000, 65536).unwrap();
        assert_eq!(m.proc_map_line(), "0 200000 65536\n");
        assert_eq!(m.root(), 200_000);
    }
}
