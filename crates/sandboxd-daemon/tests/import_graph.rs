//! The file-level import graphs of the daemon's crates have no cycles (issue 10): a module
//! names another through `crate::…` or `super::…` paths outside its tests; `mod x;`
//! declarations are not imports. A cycle fails with the modules on it.
#![allow(clippy::unwrap_used, reason = "test code: a failed unwrap is a failed test")]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Module path (`pool::claim`, `` for the crate root) → source file.
fn modules(root: &Path) -> BTreeMap<String, PathBuf> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let rel = p.strip_prefix(root).unwrap().with_extension("");
                let mut m = rel.to_string_lossy().replace('/', "::");
                if m == "lib" || m == "main" {
                    m.clear();
                } else if let Some(s) = m.strip_suffix("::mod") {
                    m = s.to_string();
                }
                out.insert(m, p);
            }
        }
    }
    out
}

/// Identifier-path segments following `prefix` at each occurrence in `src`.
fn paths_after<'a>(src: &'a str, prefix: &str) -> Vec<Vec<&'a str>> {
    src.match_indices(prefix)
        .filter(|(i, _)| !src[..*i].ends_with(|c: char| c.is_alphanumeric() || c == '_'))
        .map(|(i, _)| {
            let rest = &src[i + prefix.len()..];
            let end = rest
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(rest.len());
            rest[..end].split("::").filter(|s| !s.is_empty()).collect()
        })
        .collect()
}

fn edges(root: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mods = modules(root);
    let mut out = BTreeMap::new();
    for (m, file) in &mods {
        let text = std::fs::read_to_string(file).unwrap();
        let code: String = text
            .split("#[cfg(test)]")
            .next()
            .unwrap_or_default()
            .lines()
            .map(|l| l.split("//").next().unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n");
        let parent = m.rsplit_once("::").map_or("", |(p, _)| p).to_string();
        let mut deps = BTreeSet::new();
        let mut resolve = |base: &str, segs: &[&str]| {
            // the longest prefix that is a module; a bare `base` when none is
            for n in (0..=segs.len()).rev() {
                let mut c = base.to_string();
                for s in &segs[..n] {
                    if !c.is_empty() {
                        c.push_str("::");
                    }
                    c.push_str(s);
                }
                if mods.contains_key(&c) {
                    deps.insert(c);
                    return;
                }
            }
        };
        for segs in paths_after(&code, "crate::") {
            resolve("", &segs);
        }
        for segs in paths_after(&code, "super::") {
            resolve(&parent, &segs);
        }
        deps.remove(m);
        out.insert(m.clone(), deps);
    }
    out
}

fn find_cycle(g: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        u: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(u.to_string(), 1);
        stack.push(u.to_string());
        for v in g.get(u).into_iter().flatten() {
            match state.get(v) {
                Some(1) => {
                    let i = stack.iter().position(|s| s == v).unwrap();
                    let mut c = stack[i..].to_vec();
                    c.push(v.clone());
                    return Some(c);
                }
                Some(_) => {}
                None => {
                    if let Some(c) = visit(v, g, state, stack) {
                        return Some(c);
                    }
                }
            }
        }
        stack.pop();
        state.insert(u.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for u in g.keys() {
        if !state.contains_key(u)
            && let Some(c) = visit(u, g, &mut state, &mut Vec::new())
        {
            return Some(c);
        }
    }
    None
}

#[test]
fn daemon_and_server_modules_import_no_cycle() {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    for src in [here.join("src"), here.join("../sandboxd-server/src")] {
        let g = edges(&src);
        assert!(g.len() > 10, "{} has too few modules: {g:?}", src.display());
        if let Some(c) = find_cycle(&g) {
            panic!("import cycle in {}: {}", src.display(), c.join(" -> "));
        }
    }
}

#[test]
fn the_checker_sees_a_cycle() {
    let g: BTreeMap<String, BTreeSet<String>> = [("a", vec!["b"]), ("b", vec!["c"]), ("c", vec!["a"])]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.into_iter().map(String::from).collect()))
        .collect();
    assert_eq!(find_cycle(&g).unwrap(), ["a", "b", "c", "a"]);
    assert_eq!(
        paths_after("use crate::pool::spec::PoolSpec; xcrate::no", "crate::"),
        [vec!["pool", "spec", "PoolSpec"]]
    );
    // on files: a -> pool (through a re-export path) -> a, and a test-only import ignored
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("pool")).unwrap();
    for (f, text) in [
        ("lib.rs", "mod a;\nmod pool;\n"),
        ("a.rs", "use crate::pool::Pool;\n"),
        (
            "pool/mod.rs",
            "mod claim;\npub struct Pool;\n#[cfg(test)]\nuse crate::a::X;\n",
        ),
        (
            "pool/claim.rs",
            "use super::Pool;\nuse crate::a::A; // crate::b\n",
        ),
    ] {
        std::fs::write(dir.path().join(f), text).unwrap();
    }
    let g = edges(dir.path());
    assert_eq!(g["pool::claim"], ["a", "pool"].map(String::from).into());
    assert!(find_cycle(&g).is_none(), "{g:?}");
    std::fs::write(
        dir.path().join("pool/mod.rs"),
        "pub struct Pool;\nuse crate::a::X;\n",
    )
    .unwrap();
    assert_eq!(find_cycle(&edges(dir.path())).unwrap(), ["a", "pool", "a"]);
}
