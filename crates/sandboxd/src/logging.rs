//! Logging of `sandboxd serve`: text or JSON lines, to stderr (colours only on a terminal and
//! without `NO_COLOR`) or to a file rotated by size (`--log-file`).

use anyhow::Context;
use std::fs::{File, OpenOptions};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Where and how the daemon logs.
#[derive(Debug, Clone)]
pub struct LogOptions {
    pub format: LogFormat,
    /// `None`: stderr.
    pub file: Option<PathBuf>,
    /// Rotate the file once it would grow past this many bytes.
    pub max_bytes: u64,
    /// Rotated files kept next to the live one (`<file>.1` newest … `<file>.<keep>`).
    pub keep: usize,
}

/// A log file that is renamed to `<path>.1` (and older ones shifted up to `<path>.<keep>`,
/// the oldest dropped) once a write would take it past `max_bytes`. A single record larger
/// than `max_bytes` is still written whole.
#[derive(Debug)]
pub struct RotatingFile {
    path: PathBuf,
    file: File,
    size: u64,
    max_bytes: u64,
    keep: usize,
}

impl RotatingFile {
    /// Opens (appends to) `path`.
    pub fn open(path: &Path, max_bytes: u64, keep: usize) -> std::io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let size = file.metadata()?.len();
        Ok(Self {
            path: path.to_path_buf(),
            file,
            size,
            max_bytes: max_bytes.max(1),
            keep,
        })
    }

    fn rotated(&self, n: usize) -> PathBuf {
        let mut p = self.path.clone().into_os_string();
        p.push(format!(".{n}"));
        PathBuf::from(p)
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        self.file.flush()?;
        if self.keep == 0 {
            self.file.set_len(0)?;
        } else {
            let _ = std::fs::remove_file(self.rotated(self.keep));
            for n in (1..self.keep).rev() {
                let from = self.rotated(n);
                if from.exists() {
                    std::fs::rename(&from, self.rotated(n + 1))?;
                }
            }
            std::fs::rename(&self.path, self.rotated(1))?;
            self.file = OpenOptions::new().create(true).append(true).open(&self.path)?;
        }
        self.size = 0;
        Ok(())
    }
}

impl Write for RotatingFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.size > 0 && self.size + buf.len() as u64 > self.max_bytes {
            self.rotate()?;
        }
        let n = self.file.write(buf)?;
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// Installs the global subscriber. `RUST_LOG` sets the filter (default `info`).
pub fn init(opts: &LogOptions) -> anyhow::Result<()> {
    let filter = || {
        tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
    };
    let builder = tracing_subscriber::fmt().with_env_filter(filter());
    match &opts.file {
        Some(path) => {
            let file = RotatingFile::open(path, opts.max_bytes, opts.keep)
                .with_context(|| format!("opening the log file {}", path.display()))?;
            let builder = builder.with_ansi(false).with_writer(Mutex::new(file));
            match opts.format {
                LogFormat::Text => builder.init(),
                LogFormat::Json => builder.json().init(),
            }
        }
        None => {
            let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
            let builder = builder.with_ansi(colour).with_writer(std::io::stderr);
            match opts.format {
                LogFormat::Text => builder.init(),
                LogFormat::Json => builder.json().init(),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_by_size_and_keeps_a_few_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sandboxd.log");
        let mut f = RotatingFile::open(&path, 100, 2).unwrap();
        let line = [b'x'; 39];
        let mut write_line = |tag: u8| {
            let mut l = line.to_vec();
            l[0] = tag;
            l.push(b'\n');
            f.write_all(&l).unwrap();
        };
        // 40-byte lines, 100-byte files: two lines per file
        for tag in b'a'..=b'g' {
            write_line(tag);
        }
        let read = |p: PathBuf| std::fs::read_to_string(p).unwrap_or_default();
        let first = |s: String| s.lines().map(|l| l.chars().next().unwrap()).collect::<String>();
        assert_eq!(first(read(path.clone())), "g");
        assert_eq!(first(read(dir.path().join("sandboxd.log.1"))), "ef");
        assert_eq!(first(read(dir.path().join("sandboxd.log.2"))), "cd");
        // only `keep` rotated files: the oldest lines are gone
        assert!(!dir.path().join("sandboxd.log.3").exists());
        for p in [path.clone(), dir.path().join("sandboxd.log.1")] {
            assert!(std::fs::metadata(p).unwrap().len() <= 100);
        }
        // reopening appends and counts what is there
        drop(f);
        let mut f = RotatingFile::open(&path, 100, 2).unwrap();
        f.write_all(&[b'h'; 40]).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 80);
        f.write_all(&[b'i'; 40]).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 40);
        assert!(read(dir.path().join("sandboxd.log.1")).starts_with('g'));
    }

    #[test]
    fn a_record_larger_than_the_limit_is_written_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l");
        let mut f = RotatingFile::open(&path, 10, 1).unwrap();
        f.write_all(&[b'a'; 25]).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 25);
        f.write_all(b"b").unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 1);
        assert_eq!(std::fs::metadata(dir.path().join("l.1")).unwrap().len(), 25);
    }
}
