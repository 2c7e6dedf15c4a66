//! A bounce produced live by a real Postfix: the daemon sends through a
//! Postfix instance this test starts (its own config, queue and loopback
//! port), whose relay (`smtp-sink -f RCPT`) refuses the customer for good;
//! Postfix writes its own delivery status notification to the message's
//! VERP sender, which a second smtp-sink catches; piped to `tidings
//! bounce` as an MTA's pipe transport would, it fails the email and sends
//! the same update by SMS, once.
//!
//! Postfix's master runs as root: the test skips when it is not (and
//! fails then under `TIDINGS_E2E_REQUIRED=1`).

mod peers;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use peers::{Setup, Sink, case_on, free_port, is_root, peer_or_skip, rules, smtp_sink};
use serde_json::Value;

const BOUNCE_DOMAIN: &str = "bounce.example.test";

/// A Postfix instance of its own: config, queue and data in a temp dir,
/// smtpd on a loopback port, every message relayed to `relay`, mail for
/// `BOUNCE_DOMAIN` to `bounces`.
struct Postfix {
    dir: tempfile::TempDir,
    port: u16,
}

impl Postfix {
    fn binary() -> Option<PathBuf> {
        let bin = Path::new("/usr/sbin/postfix");
        (bin.is_file() && Path::new("/etc/postfix/master.cf").is_file() && is_root())
            .then(|| bin.to_owned())
    }

    fn start(bin: &Path, relay: u16, bounces: u16) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("tidings-postfix-")
            .tempdir()
            .expect("postfix dir");
        let root = dir.path();
        for sub in ["etc", "queue", "data"] {
            std::fs::create_dir(root.join(sub)).expect("postfix subdir");
        }
        run(Command::new("chmod").arg("755").arg(root));
        run(Command::new("chown").arg("postfix").arg(root.join("data")));
        let port = free_port();
        // The stock services, unchrooted, with smtpd on our port only.
        let stock = std::fs::read_to_string("/etc/postfix/master.cf").expect("master.cf");
        let master: Vec<String> = stock
            .lines()
            .filter(|l| !l.starts_with("smtp      inet"))
            .map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                if !l.starts_with(['#', ' ', '\t']) && f.len() >= 8 && f[4] == "y" {
                    format!("{} {} {} {} n {}", f[0], f[1], f[2], f[3], f[5..].join(" "))
                } else {
                    l.to_owned()
                }
            })
            .chain([format!("127.0.0.1:{port} inet n - n - - smtpd")])
            .collect();
        std::fs::write(root.join("etc/master.cf"), master.join("\n") + "\n").expect("master.cf");
        let r = root.display();
        std::fs::write(
            root.join("etc/main.cf"),
            format!(
                "compatibility_level = 3.6
queue_directory = {r}/queue
data_directory = {r}/data
meta_directory = /etc/postfix
command_directory = /usr/sbin
daemon_directory = /usr/lib/postfix/sbin
mail_owner = postfix
setgid_group = postdrop
inet_interfaces = loopback-only
inet_protocols = ipv4
myhostname = mta.example.test
mydomain = example.test
mydestination =
alias_maps =
local_recipient_maps =
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
relayhost = [127.0.0.1]:{relay}
transport_maps = inline:{{{BOUNCE_DOMAIN}=smtp:[127.0.0.1]:{bounces}}}
smtp_dns_support_level = disabled
maillog_file_prefixes = {r}
maillog_file = {r}/maillog
"
            ),
        )
        .expect("main.cf");
        let pf = Self { dir, port };
        run(Command::new(bin).arg("-c").arg(pf.etc()).arg("start"));
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "postfix did not listen; its log:\n{}",
                pf.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        pf
    }

    fn etc(&self) -> PathBuf {
        self.dir.path().join("etc")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("maillog")).unwrap_or_default()
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        let _ = Command::new("/usr/sbin/postfix")
            .arg("-c")
            .arg(self.etc())
            .arg("stop")
            .output();
    }
}

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("run");
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bounce_written_by_postfix_sends_the_same_update_by_sms_once() {
    let (Some(sink), Some(postfix)) = (
        smtp_sink(),
        peer_or_skip(
            Postfix::binary(),
            "postfix (as root)",
            "apt-get install postfix",
        ),
    ) else {
        return;
    };
    let refusing = Sink::start_with(&sink, &["-f", "RCPT"]).await;
    let catcher = Sink::start(&sink).await;
    let pf = Postfix::start(&postfix, refusing.port, catcher.port);
    let d = Setup::new(rules("updates", &[("every", "1h")]))
        .smtp(pf.port)
        .email(&format!("bounce_address: bounces@{BOUNCE_DOMAIN}"))
        .admin()
        .extra("sms:\n  quiet_hours: off\n")
        .start()
        .await;
    d.put_case("PFX-1", &case_on(&["email", "sms"])).await;

    // Postfix's own report reaches the bounce address.
    let (mails, arrived) = catcher
        .wait_for(Instant::now() + Duration::from_secs(30), |m| !m.is_empty())
        .await;
    assert!(arrived, "no report from postfix; its log:\n{}", pf.log());
    let raw = std::fs::read(catcher.dir.path().join(&mails[0].file)).expect("report");
    let text = String::from_utf8_lossy(&raw);
    assert!(text.contains("multipart/report"), "{text}");
    assert!(text.contains("X-Postfix-Sender"), "{text}");
    assert!(text.contains("Action: failed"), "{text}");
    let email = d.messages("PFX-1").await[0]["id"]
        .as_str()
        .expect("id")
        .to_owned();

    // Piped as an MTA would: the email fails, the same update goes by SMS.
    let (code, err) = d.pipe_bounce(&raw);
    assert_eq!(code, 0, "{err}");
    let h = d
        .wait_messages("PFX-1", Duration::from_secs(10), "the SMS fallback", |m| {
            m.iter()
                .any(|m| m["fallback_for"] == email.as_str() && m["status"] == "sent")
        })
        .await;
    assert_eq!(h[0]["status"], "failed", "{h:?}");
    assert_eq!(h[0]["provider_status"], "bounced", "{h:?}");
    let sms: Vec<&Value> = h.iter().filter(|m| m["channel"] == "sms").collect();
    assert_eq!(sms.len(), 1, "{h:?}");
    assert_eq!(sms[0]["kind"], "created");
    let files = std::fs::read_dir(d.dir.path().join("data/sms"))
        .expect("sms dir")
        .count();
    assert_eq!(files, 1, "one SMS written");

    // Postfix retrying the pipe delivery: once is once.
    let (code, _) = d.pipe_bounce(&raw);
    assert_eq!(code, 0);
    let h = d.messages("PFX-1").await;
    assert_eq!(
        h.iter().filter(|m| m["channel"] == "sms").count(),
        1,
        "{h:?}"
    );
}
