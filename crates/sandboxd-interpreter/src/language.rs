//! Languages the API accepts, how their names are normalised, and the small code snippets the
//! server runs in their kernels (environment variables).

use std::fmt;

/// A language of a context. Each maps to one kind of Jupyter kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Language {
    /// ipykernel (Debian `python3-ipykernel`).
    Python,
    /// Deno's Jupyter kernel.
    Javascript,
    /// Deno's Jupyter kernel (TypeScript is native there).
    Typescript,
    /// IRkernel, when installed.
    R,
    /// IJava, when installed.
    Java,
    /// bash_kernel (PyPI), from the interpreter layer.
    Bash,
}

/// Every language name the API accepts, after normalisation.
pub const SUPPORTED: &[&str] = &["python", "javascript", "typescript", "r", "java", "bash"];

/// Normalises a language name the way the upstream server does: missing or empty means
/// `python`; lower-cased and trimmed; `js` becomes `javascript`, `ts` becomes `typescript`.
pub fn normalize(language: Option<&str>) -> String {
    let Some(raw) = language else {
        return "python".to_string();
    };
    let lang = raw.trim().to_lowercase();
    match lang.as_str() {
        "" => "python".to_string(),
        "js" => "javascript".to_string(),
        "ts" => "typescript".to_string(),
        _ => lang,
    }
}

impl Language {
    /// Parses a normalised name (see [`normalize`]).
    pub fn from_normalized(name: &str) -> Option<Language> {
        Some(match name {
            "python" => Language::Python,
            // Upstream's JavaScript contexts are Deno kernels and it accepts the kernel's name too.
            "javascript" | "deno" => Language::Javascript,
            "typescript" => Language::Typescript,
            "r" => Language::R,
            "java" => Language::Java,
            "bash" => Language::Bash,
            _ => return None,
        })
    }

    /// The normalised name, as the API reports it.
    pub fn as_str(self) -> &'static str {
        match self {
            Language::Python => "python",
            Language::Javascript => "javascript",
            Language::Typescript => "typescript",
            Language::R => "r",
            Language::Java => "java",
            Language::Bash => "bash",
        }
    }

    /// Code that sets environment variable `key` to `value` in this language's kernel.
    pub fn set_env_snippet(self, key: &str, value: &str) -> String {
        match self {
            Language::Python => {
                format!("__import__('os').environ[{}] = {}", py_str(key), py_str(value))
            }
            Language::Javascript | Language::Typescript => {
                format!("process.env[{}] = {}", js_str(key), js_str(value))
            }
            Language::R => format!("Sys.setenv({} = {})", r_name(key), r_str(value)),
            Language::Java => format!("System.setProperty({}, {});", js_str(key), js_str(value)),
            Language::Bash => format!("export {}={}", key, sh_str(value)),
        }
    }

    /// Code that removes environment variable `key` in this language's kernel.
    pub fn delete_env_snippet(self, key: &str) -> String {
        match self {
            Language::Python => format!("__import__('os').environ.pop({}, None)", py_str(key)),
            Language::Javascript | Language::Typescript => format!("delete process.env[{}]", js_str(key)),
            Language::R => format!("Sys.unsetenv({})", r_str(key)),
            Language::Java => format!("System.clearProperty({});", js_str(key)),
            Language::Bash => format!("unset {key}"),
        }
    }

    /// A whole cell that applies `set` (key, value) and `delete` (key) in order, or `None`
    /// when there is nothing to do. Keys that are not valid variable names are skipped for
    /// bash (where they cannot be exported).
    pub fn env_cell(self, set: &[(String, String)], delete: &[String]) -> Option<String> {
        let mut lines = Vec::new();
        for (k, v) in set {
            if self == Language::Bash && !is_shell_name(k) {
                continue;
            }
            lines.push(self.set_env_snippet(k, v));
        }
        for k in delete {
            if self == Language::Bash && !is_shell_name(k) {
                continue;
            }
            lines.push(self.delete_env_snippet(k));
        }
        if lines.is_empty() {
            return None;
        }
        Some(lines.join("\n"))
    }
}

impl fmt::Display for Language {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

fn is_shell_name(k: &str) -> bool {
    let mut chars = k.chars();
    matches!(chars.next(), Some(c) if c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
}

/// A Python string literal (JSON escapes are valid Python escapes).
fn py_str(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

/// A JavaScript / Java string literal. JSON leaves U+2028/U+2029 raw, which Java rejects.
fn js_str(s: &str) -> String {
    serde_json::Value::String(s.to_string())
        .to_string()
        .replace('\u{2028}', "\\u2028")
        .replace('\u{2029}', "\\u2029")
}

/// An R string literal.
fn r_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// An R argument name (backquoted so any key works).
fn r_name(s: &str) -> String {
    format!("`{}`", s.replace('\\', "\\\\").replace('`', "\\`"))
}

/// A single-quoted shell word.
fn sh_str(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_like_upstream() {
        assert_eq!(normalize(None), "python");
        assert_eq!(normalize(Some("")), "python");
        assert_eq!(normalize(Some("  JS ")), "javascript");
        assert_eq!(normalize(Some("ts")), "typescript");
        assert_eq!(normalize(Some("Python")), "python");
        assert_eq!(normalize(Some("cobol")), "cobol");
        assert_eq!(Language::from_normalized("cobol"), None);
        assert_eq!(Language::from_normalized("deno"), Some(Language::Javascript));
        for name in SUPPORTED {
            assert_eq!(Language::from_normalized(name).map(|l| l.as_str()), Some(*name));
        }
    }

    #[test]
    fn env_snippets_quote_values() {
        assert_eq!(
            Language::Python.set_env_snippet("A", "it's"),
            r#"__import__('os').environ["A"] = "it's""#
        );
        assert_eq!(
            Language::Javascript.set_env_snippet("A", "x\"y"),
            r#"process.env["A"] = "x\"y""#
        );
        assert_eq!(
            Language::Bash.set_env_snippet("A", "it's"),
            r#"export A='it'\''s'"#
        );
        assert_eq!(
            Language::R.set_env_snippet("A", "a\"b"),
            r#"Sys.setenv(`A` = "a\"b")"#
        );
        assert_eq!(
            Language::Java.delete_env_snippet("A"),
            r#"System.clearProperty("A");"#
        );
        assert_eq!(Language::Bash.delete_env_snippet("A"), "unset A");
    }

    #[test]
    fn env_cell_is_none_when_empty_and_skips_bad_shell_names() {
        assert_eq!(Language::Python.env_cell(&[], &[]), None);
        assert_eq!(Language::Bash.env_cell(&[("A-B".into(), "x".into())], &[]), None);
        let cell = Language::Python
            .env_cell(&[("A".into(), "1".into())], &["B".into()])
            .unwrap();
        assert_eq!(
            cell,
            "__import__('os').environ[\"A\"] = \"1\"\n__import__('os').environ.pop(\"B\", None)"
        );
    }
}
