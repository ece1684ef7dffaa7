//! Processes the benchmarks run and watch: Millrace itself ([`Millrace`])
//! and any other program with a log file ([`App`]), such as the Kafka
//! Streams peer on the JVM or a pass-through loop. [`Engine`] is what the
//! benchmarks need from either: its pid for `/proc` figures, SIGKILL,
//! restart, a clean stop and the log.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::Millrace;

/// A process under benchmark.
pub trait Engine {
    /// The process id, while running.
    fn pid(&self) -> Option<u32>;
    /// Whether the process is still running.
    fn is_running(&mut self) -> bool;
    /// SIGKILL: no chance to commit or leave the group.
    fn kill(&mut self) -> anyhow::Result<()>;
    /// Starts the process again with the same command.
    fn restart(&mut self) -> anyhow::Result<()>;
    /// SIGTERM and a clean exit within 60 s, or an error with the log.
    fn stop(&mut self) -> anyhow::Result<()>;
    /// The last lines of its log.
    fn log_tail(&self, lines: usize) -> String;
    /// Waits until the process (since its last start) says it is running:
    /// Millrace's `/readyz` answers 200; an [`App`] logs `state RUNNING`.
    fn wait_running(&mut self, within: Duration) -> anyhow::Result<()>;
    /// Its log file, which every restart appends to.
    fn log_file(&self) -> &Path;
    /// Whether it says, right now, that it is running (see
    /// [`Engine::wait_running`]); never blocks for long.
    fn is_ready(&mut self) -> bool;
}

/// The log written after byte `from` of `log` (its length when a restart
/// began, say).
pub fn log_since(log: &Path, from: u64) -> String {
    let bytes = std::fs::read(log).unwrap_or_default();
    String::from_utf8_lossy(bytes.get(from as usize..).unwrap_or_default()).into_owned()
}

/// The current length of a log file.
pub fn log_len(log: &Path) -> u64 {
    std::fs::metadata(log).map_or(0, |m| m.len())
}

impl Engine for Millrace {
    fn pid(&self) -> Option<u32> {
        Millrace::pid(self)
    }
    fn is_running(&mut self) -> bool {
        Millrace::is_running(self)
    }
    fn kill(&mut self) -> anyhow::Result<()> {
        Millrace::kill(self)
    }
    fn restart(&mut self) -> anyhow::Result<()> {
        Millrace::restart(self)
    }
    fn stop(&mut self) -> anyhow::Result<()> {
        self.stop_cleanly()
    }
    fn log_tail(&self, lines: usize) -> String {
        Millrace::log_tail(self, lines)
    }
    fn wait_running(&mut self, within: Duration) -> anyhow::Result<()> {
        self.wait_ready(within)
    }
    fn log_file(&self) -> &Path {
        self.log_path()
    }
    fn is_ready(&mut self) -> bool {
        matches!(self.get("/readyz"), Ok((200, _)))
    }
}

/// A program started with fixed arguments, its stdout and stderr appended
/// to one log file. Killed on drop.
pub struct App {
    program: PathBuf,
    args: Vec<String>,
    log: PathBuf,
    /// Length of the log when the process was last started.
    started_at: u64,
    child: Option<Child>,
}

impl App {
    /// Starts `program args`, logging to `log` (appended).
    pub fn start(program: &Path, args: Vec<String>, log: PathBuf) -> anyhow::Result<App> {
        let mut app = App {
            program: program.to_path_buf(),
            args,
            log,
            started_at: 0,
            child: None,
        };
        app.restart()?;
        Ok(app)
    }

    /// Waits until the log, since the last start, contains `text`.
    pub fn wait_log(&mut self, text: &str, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        loop {
            let log = std::fs::read(&self.log).unwrap_or_default();
            let tail = log.get(self.started_at as usize..).unwrap_or_default();
            if String::from_utf8_lossy(tail).contains(text) {
                return Ok(());
            }
            if !self.is_running() {
                bail!(
                    "{} exited before logging {text:?}; log:\n{}",
                    self.program.display(),
                    self.log_tail(40)
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "{} did not log {text:?} within {within:?}; log:\n{}",
                    self.program.display(),
                    self.log_tail(40)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Engine for App {
    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    fn restart(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        self.started_at = log.metadata().map_or(0, |m| m.len());
        let child = Command::new(&self.program)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", self.program.display()))?;
        self.child = Some(child);
        Ok(())
    }

    fn stop(&mut self) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else {
            bail!("{} is not running", self.program.display());
        };
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait()? {
                // The JVM exits with 143 (128 + SIGTERM) after its shutdown
                // hooks ran; that is a clean stop too.
                if status.success() || status.code() == Some(143) {
                    return Ok(());
                }
                bail!(
                    "{} exited with {status} after SIGTERM; log:\n{}",
                    self.program.display(),
                    self.log_tail(40)
                );
            }
            if Instant::now() > deadline {
                child.kill()?;
                bail!(
                    "{} did not exit within 60 s of SIGTERM; log:\n{}",
                    self.program.display(),
                    self.log_tail(40)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    fn wait_running(&mut self, within: Duration) -> anyhow::Result<()> {
        self.wait_log("state RUNNING", within)
    }

    fn log_file(&self) -> &Path {
        &self.log
    }

    fn is_ready(&mut self) -> bool {
        log_since(&self.log, self.started_at).contains("state RUNNING")
    }
}

impl Drop for App {
    fn drop(&mut self) {
        let _ = Engine::kill(self);
    }
}
