//! How each language's kernel is found and started: command lines, environment, user.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use jupyter_protocol::connection_info::Transport;

use crate::error::Error;
use crate::kernel::InterruptMode;
use crate::language::Language;

/// The user kernels run as (when the server runs as root).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// Numeric ids.
    pub ids: UserIds,
    /// Login name.
    pub name: String,
    /// Home directory.
    pub home: PathBuf,
}

/// Numeric user and group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserIds {
    /// uid.
    pub uid: u32,
    /// gid.
    pub gid: u32,
}

impl User {
    /// Resolves `spec` (a name or a numeric uid) from `/etc/passwd`. An unknown numeric uid
    /// still works, with home `/home/user` (the sandbox convention).
    pub fn resolve(spec: &str) -> Result<User, Error> {
        let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
        Self::resolve_in(&passwd, spec)
    }

    /// [`User::resolve`] against the text of a passwd file. The file is read directly, not
    /// through NSS: sandboxd is linked statically and runs in images whose libc is not its own.
    pub fn resolve_in(passwd: &str, spec: &str) -> Result<User, Error> {
        let numeric = spec.parse::<u32>().ok();
        let entry = passwd.lines().find_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() < 7 {
                return None;
            }
            let (uid, gid) = (f[2].parse::<u32>().ok()?, f[3].parse::<u32>().ok()?);
            let hit = match numeric {
                Some(n) => uid == n,
                None => f[0] == spec,
            };
            hit.then(|| User {
                ids: UserIds { uid, gid },
                name: f[0].to_string(),
                home: PathBuf::from(f[5]),
            })
        });
        match (entry, numeric) {
            (Some(u), _) => Ok(u),
            (None, Some(uid)) => Ok(User {
                ids: UserIds { uid, gid: uid },
                name: "user".into(),
                home: PathBuf::from("/home/user"),
            }),
            (None, None) => Err(Error::Config(format!("unknown user {spec:?}"))),
        }
    }
}

/// A kernel command line, with `{connection_file}` where the connection file goes.
#[derive(Debug, Clone)]
pub struct KernelCommand {
    /// Executable.
    pub program: PathBuf,
    /// Arguments.
    pub args: Vec<String>,
    /// Extra environment.
    pub env: Vec<(String, String)>,
    /// ZeroMQ transport the kernel supports.
    pub transport: Transport,
    /// How to interrupt it.
    pub interrupt_mode: InterruptMode,
}

impl KernelCommand {
    /// The process to spawn: its own process group, dies with the server, runs as `user`.
    pub fn to_command(&self, conn_file: &Path, cwd: &str, user: Option<UserIds>) -> tokio::process::Command {
        let conn = conn_file.to_string_lossy();
        let mut cmd = tokio::process::Command::new(&self.program);
        cmd.args(self.args.iter().map(|a| a.replace("{connection_file}", &conn)));
        // Our own settings (an envd access token among them) are not the user's business.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("SANDBOXD_") {
                cmd.env_remove(&k);
            }
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd.current_dir(cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .process_group(0);
        if let Some(u) = user {
            // std drops supplementary groups when it changes the uid as root.
            cmd.uid(u.uid).gid(u.gid);
        }
        // SAFETY: the closure runs in the child between fork and exec and only calls prctl(2),
        // which is async-signal-safe; it touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                // Kernels die with the server (after the uid change, which would clear it).
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd
    }
}

/// File name of our IPython extension module.
pub const EXTENSION_FILE: &str = "sandboxd_ipython.py";

/// Writes the IPython extension into `dir` (readable by the kernels' user).
pub fn write_extension(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    let file = dir.join(EXTENSION_FILE);
    let tmp = dir.join(format!(".{EXTENSION_FILE}.tmp"));
    std::fs::write(&tmp, crate::IPYTHON_EXTENSION)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644))?;
    std::fs::rename(tmp, file)
}

/// Finds kernels and builds their command lines.
#[derive(Debug, Clone)]
pub struct Launcher {
    /// The interpreter layer (`python/`, `bin/deno`, `kernels/`).
    pub layer: PathBuf,
    /// Directory of our own Python helper module (`sandboxd_ipython.py`).
    pub ext_dir: PathBuf,
    /// User kernels run as, or `None` for the server's own user.
    pub user: Option<User>,
    /// Directories searched for Jupyter kernelspecs (R, Java).
    pub kernelspec_dirs: Vec<PathBuf>,
}

impl Launcher {
    /// The command for `language`, or a clear error when its kernel is not installed.
    pub fn command_for(&self, language: Language) -> Result<KernelCommand, Error> {
        let mut cmd = match language {
            Language::Python => {
                // Rewritten if something removed it since start.
                if !self.ext_dir.join(EXTENSION_FILE).exists() {
                    write_extension(&self.ext_dir).map_err(|e| Error::KernelStart {
                        language: language.to_string(),
                        reason: format!("writing {}: {e}", self.ext_dir.display()),
                    })?;
                }
                self.python_command()?
            }
            Language::Javascript | Language::Typescript => {
                let deno = self.find_program("deno").ok_or_else(|| Error::NotInstalled {
                    language: language.to_string(),
                    reason: format!(
                        "deno was not found in {} or PATH (scripts/setup-interpreter.sh installs it)",
                        self.layer.join("bin").display()
                    ),
                })?;
                KernelCommand {
                    program: deno,
                    args: vec![
                        "jupyter".into(),
                        "--kernel".into(),
                        "--conn".into(),
                        "{connection_file}".into(),
                    ],
                    env: vec![
                        ("DENO_NO_UPDATE_CHECK".into(), "1".into()),
                        ("DENO_NO_PROMPT".into(), "1".into()),
                    ],
                    // Deno's kernel listens with Deno.listen: TCP only.
                    transport: Transport::TCP,
                    interrupt_mode: InterruptMode::Message,
                }
            }
            Language::Bash => {
                if !self.python_module_exists("bash_kernel") {
                    return Err(Error::NotInstalled {
                        language: language.to_string(),
                        reason: format!(
                            "the bash_kernel Python package was not found in {} (scripts/setup-interpreter.sh installs it)",
                            self.layer.join("python").display()
                        ),
                    });
                }
                KernelCommand {
                    program: self.python()?,
                    args: vec![
                        "-m".into(),
                        "bash_kernel".into(),
                        "-f".into(),
                        "{connection_file}".into(),
                    ],
                    env: vec![("TERM".into(), "dumb".into())],
                    transport: Transport::IPC,
                    interrupt_mode: InterruptMode::Signal,
                }
            }
            Language::R => self.kernelspec_command(language, &["ir"], Transport::IPC)?,
            Language::Java => self.kernelspec_command(language, &["java"], Transport::TCP)?,
        };
        cmd.env.extend(self.common_env());
        Ok(cmd)
    }

    fn python_command(&self) -> Result<KernelCommand, Error> {
        Ok(KernelCommand {
            program: self.python()?,
            args: vec![
                "-m".into(),
                "ipykernel_launcher".into(),
                "-f".into(),
                "{connection_file}".into(),
                "--IPKernelApp.extra_extensions=sandboxd_ipython".into(),
                "--InteractiveShell.colors=NoColor".into(),
                "--HistoryManager.enabled=False".into(),
            ],
            env: vec![],
            transport: Transport::IPC,
            interrupt_mode: InterruptMode::Signal,
        })
    }

    fn common_env(&self) -> Vec<(String, String)> {
        let mut env = Vec::new();
        let mut py = vec![self.ext_dir.to_string_lossy().into_owned()];
        py.push(self.layer.join("python").to_string_lossy().into_owned());
        if let Ok(existing) = std::env::var("PYTHONPATH")
            && !existing.is_empty()
        {
            py.push(existing);
        }
        env.push(("PYTHONPATH".into(), py.join(":")));
        let path = std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into());
        env.push((
            "PATH".into(),
            format!("{}:{path}", self.layer.join("bin").display()),
        ));
        env.push(("PYDEVD_DISABLE_FILE_VALIDATION".into(), "1".into()));
        if let Some(u) = &self.user {
            env.push(("HOME".into(), u.home.to_string_lossy().into_owned()));
            env.push(("USER".into(), u.name.clone()));
            env.push(("LOGNAME".into(), u.name.clone()));
        }
        if std::env::var_os("LANG").is_none() {
            env.push(("LANG".into(), "C.UTF-8".into()));
        }
        env
    }

    fn python(&self) -> Result<PathBuf, Error> {
        let system = PathBuf::from("/usr/bin/python3");
        if system.exists() {
            return Ok(system);
        }
        self.find_program("python3").ok_or_else(|| Error::NotInstalled {
            language: "python".into(),
            reason: "python3 was not found".into(),
        })
    }

    fn find_program(&self, name: &str) -> Option<PathBuf> {
        let in_layer = self.layer.join("bin").join(name);
        if is_executable(&in_layer) {
            return Some(in_layer);
        }
        std::env::var_os("PATH")
            .map(|p| {
                std::env::split_paths(&p)
                    .map(|d| d.join(name))
                    .find(|p| is_executable(p))
            })
            .unwrap_or(None)
    }

    fn python_module_exists(&self, module: &str) -> bool {
        let mut dirs = vec![
            self.layer.join("python"),
            PathBuf::from("/usr/lib/python3/dist-packages"),
        ];
        if let Ok(p) = std::env::var("PYTHONPATH") {
            dirs.extend(std::env::split_paths(&p));
        }
        dirs.iter().any(|d| d.join(module).join("__init__.py").exists())
    }

    fn kernelspec_command(
        &self,
        language: Language,
        names: &[&str],
        transport: Transport,
    ) -> Result<KernelCommand, Error> {
        for dir in &self.kernelspec_dirs {
            for name in names {
                let file = dir.join(name).join("kernel.json");
                let Ok(text) = std::fs::read_to_string(&file) else {
                    continue;
                };
                let spec: serde_json::Value = serde_json::from_str(&text)
                    .map_err(|e| Error::Config(format!("{}: {e}", file.display())))?;
                let argv: Vec<String> = spec["argv"]
                    .as_array()
                    .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
                    .unwrap_or_default();
                let Some((program, args)) = argv.split_first() else {
                    continue;
                };
                let program = if program.contains('/') {
                    PathBuf::from(program)
                } else {
                    match self.find_program(program) {
                        Some(p) => p,
                        None => continue,
                    }
                };
                let env = spec["env"]
                    .as_object()
                    .map(|m| {
                        m.iter()
                            .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
                            .collect()
                    })
                    .unwrap_or_default();
                let interrupt_mode = match spec["interrupt_mode"].as_str() {
                    Some("message") => InterruptMode::Message,
                    _ => InterruptMode::Signal,
                };
                return Ok(KernelCommand {
                    program,
                    args: args.to_vec(),
                    env,
                    transport,
                    interrupt_mode,
                });
            }
        }
        Err(Error::NotInstalled {
            language: language.to_string(),
            reason: format!(
                "no Jupyter kernelspec {} in {}",
                names.join("/"),
                self.kernelspec_dirs
                    .iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        })
    }
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn launcher(layer: &Path, specs: &Path) -> Launcher {
        Launcher {
            layer: layer.to_path_buf(),
            ext_dir: layer.join("ext"),
            user: None,
            kernelspec_dirs: vec![specs.to_path_buf()],
        }
    }

    #[test]
    fn missing_kernels_give_clear_errors() {
        let layer = tempfile::tempdir().unwrap();
        let specs = tempfile::tempdir().unwrap();
        let l = launcher(layer.path(), specs.path());
        let err = l.command_for(Language::R).unwrap_err().to_string();
        assert!(err.contains("r kernel is not installed"), "{err}");
        assert!(err.contains("kernelspec ir"), "{err}");
        let err = l.command_for(Language::Java).unwrap_err().to_string();
        assert!(err.contains("java kernel is not installed"), "{err}");
    }

    #[test]
    fn kernelspec_argv_env_and_interrupt_mode_are_used() {
        let layer = tempfile::tempdir().unwrap();
        let specs = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(specs.path().join("java")).unwrap();
        std::fs::write(
            specs.path().join("java/kernel.json"),
            r#"{"argv": ["/bin/sh", "-c", "x", "{connection_file}"], "env": {"A": "1"}, "interrupt_mode": "message"}"#,
        )
        .unwrap();
        let l = launcher(layer.path(), specs.path());
        let cmd = l.command_for(Language::Java).unwrap();
        assert_eq!(cmd.program, PathBuf::from("/bin/sh"));
        assert_eq!(cmd.args, vec!["-c", "x", "{connection_file}"]);
        assert!(cmd.env.contains(&("A".to_string(), "1".to_string())));
        assert_eq!(cmd.interrupt_mode, InterruptMode::Message);
        assert_eq!(cmd.transport, Transport::TCP);
        assert!(
            cmd.env.iter().any(
                |(k, v)| k == "PYTHONPATH" && v.starts_with(&*layer.path().join("ext").to_string_lossy())
            )
        );
    }

    #[test]
    fn deno_is_found_in_the_layer() {
        use std::os::unix::fs::PermissionsExt;
        let layer = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(layer.path().join("bin")).unwrap();
        let deno = layer.path().join("bin/deno");
        std::fs::write(&deno, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&deno, std::fs::Permissions::from_mode(0o755)).unwrap();
        let l = launcher(layer.path(), layer.path());
        let cmd = l.command_for(Language::Typescript).unwrap();
        assert_eq!(cmd.program, deno);
        assert_eq!(cmd.transport, Transport::TCP);
    }

    #[test]
    fn users_come_from_the_passwd_text() {
        let p = "root:x:0:0:root:/root:/bin/bash\nuser:x:1000:1000::/home/user:/bin/bash\nbad line\n";
        assert_eq!(User::resolve_in(p, "user").unwrap().ids.uid, 1000);
        assert_eq!(User::resolve_in(p, "0").unwrap().home, PathBuf::from("/root"));
        assert_eq!(
            User::resolve_in(p, "4242").unwrap().home,
            PathBuf::from("/home/user")
        );
        assert!(User::resolve_in(p, "nobody").is_err());
    }

    #[test]
    fn numeric_unknown_user_gets_sandbox_home() {
        let u = User::resolve("54321").unwrap();
        assert_eq!(
            u.ids,
            UserIds {
                uid: 54321,
                gid: 54321
            }
        );
        assert_eq!(u.home, PathBuf::from("/home/user"));
        assert!(User::resolve("no-such-user-xyz").is_err());
        assert_eq!(User::resolve("root").unwrap().ids.uid, 0);
    }
}
