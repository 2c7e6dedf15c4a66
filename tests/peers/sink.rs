//! Postfix's `smtp-sink` as the SMTP peer: it dumps each accepted
//! message to a file, and the tests read what arrived from there.

use std::net::TcpStream;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use chrono::{DateTime, Utc};

use super::{FIRST_NAME, POLL, SUBJECT, free_port, stop};

/// Where `smtp-sink` is installed, if it is (tests ask `smtp_sink()`).
pub(super) fn sink_binary() -> Option<PathBuf> {
    let fixed = Path::new("/usr/sbin/smtp-sink");
    if fixed.is_file() {
        return Some(fixed.to_owned());
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("smtp-sink"))
            .find(|p| p.is_file())
    })
}

pub fn is_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// A running `smtp-sink` that dumps each accepted message into `dir`.
pub struct Sink {
    pub child: Child,
    pub dir: tempfile::TempDir,
    pub port: u16,
}

impl Drop for Sink {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

impl Sink {
    pub async fn start(bin: &Path) -> Self {
        Self::start_with(bin, &[]).await
    }

    /// Started with extra flags, such as `-f RCPT` (a hard 5xx on RCPT).
    pub async fn start_with(bin: &Path, flags: &[&str]) -> Self {
        Self::start_on(bin, flags, free_port()).await
    }

    /// Started on `port` (a sink that comes back where the daemon expects
    /// it, after a fault).
    pub async fn start_on(bin: &Path, flags: &[&str], port: u16) -> Self {
        // smtp-sink drops to `nobody` before it writes; the dump dir sits
        // directly in the temp folder so `nobody` can reach it.
        let dir = tempfile::Builder::new()
            .prefix("tidings-sink-")
            .tempdir()
            .expect("sink dump dir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777))
            .expect("open the dump dir to nobody");
        let errors = tempfile::NamedTempFile::new().expect("sink stderr file");
        let mut cmd = Command::new(bin);
        if is_root() {
            cmd.args(["-u", "nobody"]);
        }
        let mut child = cmd
            .args(flags)
            .arg("-d")
            .arg(format!("{}/%M.", dir.path().display()))
            .arg(format!("127.0.0.1:{port}"))
            .arg("1000")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(errors.reopen().expect("sink stderr"))
            .spawn()
            .expect("start smtp-sink");
        let deadline = Instant::now() + Duration::from_secs(5);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            let exited = child.try_wait().ok().flatten();
            if exited.is_some() || Instant::now() > deadline {
                stop(&mut child);
                panic!(
                    "smtp-sink did not listen on {port} ({exited:?}): {}",
                    std::fs::read_to_string(errors.path()).unwrap_or_default()
                );
            }
            tokio::time::sleep(POLL).await;
        }
        Self { child, dir, port }
    }

    /// Every complete message in the dump dir, oldest first. smtp-sink
    /// creates the file at MAIL FROM and writes it when the message is
    /// complete (ending with the empty line it appends), so empty or
    /// unfinished files (a transaction cut by a kill) are not messages.
    pub fn mails(&self) -> Vec<Mail> {
        let mut out: Vec<Mail> = std::fs::read_dir(self.dir.path())
            .expect("read the dump dir")
            .filter_map(Result::ok)
            .filter_map(|e| Mail::read(&e.path()))
            .collect();
        out.sort_by(|a, b| (a.arrived, &a.file).cmp(&(b.arrived, &b.file)));
        out
    }

    /// Polls until `pred` holds for the messages, or `deadline` passes.
    /// Returns the last messages seen and whether `pred` held.
    pub async fn wait_for(
        &self,
        deadline: Instant,
        pred: impl Fn(&[Mail]) -> bool,
    ) -> (Vec<Mail>, bool) {
        loop {
            let mails = self.mails();
            if pred(&mails) {
                return (mails, true);
            }
            if Instant::now() >= deadline {
                return (mails, false);
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

// ---------------------------------------------------------------------------
// Messages as smtp-sink dumped them

/// One accepted message: headers unfolded, subject and text parts decoded.
#[derive(Debug, Clone)]
pub struct Mail {
    pub file: String,
    pub arrived: SystemTime,
    pub message_id: String,
    pub subject: String,
    /// The decoded text of every `text/*` part, whitespace collapsed.
    pub text: String,
}

impl Mail {
    pub fn read(path: &Path) -> Option<Self> {
        let bytes = std::fs::read(path).ok()?;
        // smtp-sink writes the file as the message arrives; wait for its end.
        if !bytes.ends_with(b"\r\n\r\n") && !bytes.ends_with(b"\n\n") {
            return None;
        }
        let msg = mail_parser::MessageParser::default().parse(&bytes[..])?;
        let text: Vec<String> = (0..msg.text_body.len())
            .filter_map(|i| msg.body_text(i).map(|t| t.into_owned()))
            .chain(
                (0..msg.html_body.len()).filter_map(|i| msg.body_html(i).map(|t| t.into_owned())),
            )
            .collect();
        Some(Self {
            file: path.file_name()?.to_string_lossy().into_owned(),
            arrived: std::fs::metadata(path).and_then(|m| m.modified()).ok()?,
            message_id: msg.message_id()?.to_owned(),
            subject: squash(msg.subject().unwrap_or("")),
            text: squash(&text.join("\n")),
        })
    }

    /// The local part of `Message-ID`, which is the message's id in the
    /// case history (`<uuid@example.com>`).
    pub fn id(&self) -> &str {
        let inner = self.message_id.trim_matches(['<', '>']);
        inner.split('@').next().unwrap_or(inner)
    }

    pub fn since(&self, t: SystemTime) -> f64 {
        match self.arrived.duration_since(t) {
            Ok(d) => d.as_secs_f64(),
            Err(e) => -e.duration().as_secs_f64(),
        }
    }

    /// The name and subject that make the message personal.
    pub fn assert_personal(&self) {
        assert!(
            self.subject.contains(SUBJECT),
            "{}: subject `{}` lacks the case subject",
            self.file,
            self.subject
        );
        assert!(
            self.text.contains(FIRST_NAME),
            "{}: body lacks the customer's first name: {}",
            self.file,
            self.text
        );
    }

    /// The body tells the customer `promised`, in New York time: the zone
    /// abbreviation (EST/EDT) and the hour and minute (12- or 24-hour).
    pub fn assert_promises(&self, promised: DateTime<Utc>) {
        let local = promised.with_timezone(&chrono_tz::America::New_York);
        let zone = format!(" {}", local.format("%Z"));
        let h12 = local.format("%-I:%M").to_string();
        let h24 = local.format("%H:%M").to_string();
        assert!(
            self.text.contains(&zone) && (self.text.contains(&h12) || self.text.contains(&h24)),
            "{}: body does not state the next update ({h12}/{h24}{zone}): {}",
            self.file,
            self.text
        );
    }
}

pub fn squash(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}
