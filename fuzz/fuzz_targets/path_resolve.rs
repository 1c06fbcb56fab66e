//! Path resolution for every path-taking envd API (`sandboxd_envd::paths`): `resolve` for a
//! user, with and without a default workdir, and `clean`. A resolved path is absolute, within
//! the length and depth bounds, and clean when it was relative; each error has its cause in the
//! input; `clean` never keeps `.`/`..`/empty components and is idempotent.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sandboxd_envd::paths::{MAX_PATH_BYTES, MAX_PATH_DEPTH, PathError, clean, resolve};
use sandboxd_envd::users::UserInfo;

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    let user = UserInfo {
        name: "user".into(),
        uid: 1000,
        gid: 1000,
        home: "/home/user".into(),
        shell: "/bin/bash".into(),
        groups: vec![1000],
    };
    for workdir in [None, Some("/tmp/w"), Some("")] {
        match resolve(raw, &user, workdir) {
            Ok(p) => {
                assert!(p.starts_with('/'), "{raw:?} -> {p:?}");
                assert!(!p.contains('\0'));
                assert!(p.len() <= MAX_PATH_BYTES);
                assert!(p.split('/').filter(|c| !c.is_empty() && *c != ".").count() <= MAX_PATH_DEPTH);
                if !raw.starts_with('/') && !raw.is_empty() && raw != "~" && !raw.starts_with("~/") {
                    assert_eq!(p, clean(&p), "{raw:?} -> {p:?} is not clean");
                }
            }
            Err(PathError::Nul) => assert!(raw.contains('\0')),
            Err(PathError::OtherUserHome(_)) => assert!(raw.starts_with('~')),
            // the home dir ("/home/user") may be put in front of a relative path
            Err(PathError::TooLong) => assert!(raw.len() + user.home.len() + 1 > MAX_PATH_BYTES),
            Err(PathError::TooDeep) => {
                assert!(raw.split('/').filter(|c| !c.is_empty() && *c != ".").count() + 2 > MAX_PATH_DEPTH)
            }
        }
    }
    let c = clean(raw);
    assert!(c.starts_with('/'));
    assert!(
        c.split('/')
            .skip(1)
            .all(|s| s != "." && s != ".." && (s.is_empty() == (c == "/"))),
        "{c:?}"
    );
    assert_eq!(clean(&c), c);
});
