//! All terminal output: stdout for results, stderr for messages. Commands
//! write through [`Ui`] so output can be captured in tests; nothing else
//! prints.

use std::io::{self, Write};

/// Where output goes.
pub struct Ui {
    out: Box<dyn Write>,
    err: Box<dyn Write>,
}

impl Ui {
    /// The process's stdout and stderr.
    pub fn terminal() -> Self {
        Self { out: Box::new(io::BufWriter::new(io::stdout())), err: Box::new(io::stderr()) }
    }

    /// Results, for scripts and pipes.
    pub fn out(&mut self) -> &mut dyn Write {
        &mut *self.out
    }

    /// Writes a line of results. Control characters (which a file name or
    /// a member's message could use to drive the terminal) are shown
    /// escaped.
    pub fn line(&mut self, text: impl AsRef<str>) -> io::Result<()> {
        writeln!(self.out, "{}", printable(text.as_ref()))
    }

    /// Writes a message line to stderr.
    pub fn note(&mut self, text: impl AsRef<str>) -> io::Result<()> {
        // Keep results and messages in order on a shared terminal.
        self.out.flush()?;
        writeln!(self.err, "{}", printable(text.as_ref()))
    }

    /// Writes a JSON value as one line.
    pub fn json(&mut self, value: &serde_json::Value) -> io::Result<()> {
        serde_json::to_writer_pretty(&mut *self.out, value).map_err(io::Error::other)?;
        writeln!(self.out)
    }

    /// Flushes stdout.
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()?;
        self.err.flush()
    }
}

/// Says on stderr that a command waits for the writer lock another
/// process holds. Installed with `dbox::repo::set_lock_notice`; the waiting
/// itself is the library's.
pub fn lock_notice(pid: Option<u32>) {
    let who =
        pid.map_or_else(|| "another dbox process".to_string(), |p| format!("another dbox process (pid {p})"));
    let secs = dbox::repo::LOCK_WAIT.as_secs();
    let _ = writeln!(io::stderr(), "waiting for {who} to release the repository lock (at most {secs} s)");
}

/// `text` with control characters other than tab escaped as `\u{..}`.
pub fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(|c| c.is_control() && c != '\t') {
        return std::borrow::Cow::Borrowed(text);
    }
    std::borrow::Cow::Owned(
        text.chars()
            .map(|c| if c.is_control() && c != '\t' { c.escape_unicode().to_string() } else { c.to_string() })
            .collect(),
    )
}
