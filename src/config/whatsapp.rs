//! The `whatsapp:` section: WhatsApp through Twilio's Messages API, with
//! the account, credentials, base URL and transport of the `sms:` section.
//!
//! ```yaml
//! whatsapp:
//!   from: "whatsapp:+14155238886"   # or messaging_service_sid: MG…
//!   quiet_hours: { start: "21:00", end: "08:00" }   # default: sms's
//!   min_gap: 60s                                    # default: sms's
//! ```
//!
//! Without the section WhatsApp is off: rules and customers may name it,
//! and their updates go on their other channels.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use serde_saphyr::Spanned;

use super::{RawQuiet, SmsConfig, resolve_path, resolve_quiet, spanned_duration};
use crate::channels::sms::{SmsSender, SmsTransport};
use crate::domain::Diagnostic;
use crate::engine::schedule::QuietHours;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWhatsApp {
    from: Option<Spanned<String>>,
    messaging_service_sid: Option<Spanned<String>>,
    file_dir: Option<String>,
    quiet_hours: Option<Spanned<RawQuiet>>,
    min_gap: Option<Spanned<String>>,
}

/// WhatsApp, resolved.
#[derive(Debug, Clone)]
pub struct WhatsAppConfig {
    /// Twilio with the WhatsApp sender, or `.json` files.
    pub transport: SmsTransport,
    /// Recipient-local hours with no WhatsApp message (SMS's unless set).
    pub quiet_hours: Option<QuietHours>,
    pub min_gap: Duration,
}

/// Whether `v` is a WhatsApp sender address: `whatsapp:` and an E.164 number.
fn is_whatsapp_address(v: &str) -> bool {
    v.strip_prefix("whatsapp:+").is_some_and(|digits| {
        (2..=15).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit())
    })
}

pub(super) fn resolve(
    file: &Path,
    base: &Path,
    data_dir: &Path,
    raw: RawWhatsApp,
    sms: &SmsConfig,
    errors: &mut Vec<Diagnostic>,
) -> WhatsAppConfig {
    let quiet_hours = match &raw.quiet_hours {
        None => sms.quiet_hours,
        q => resolve_quiet(
            file,
            "whatsapp.quiet_hours",
            q.as_ref(),
            sms.quiet_hours,
            errors,
        ),
    };
    let min_gap = spanned_duration(
        file,
        "whatsapp.min_gap",
        raw.min_gap.as_ref(),
        sms.min_gap,
        errors,
    );
    let transport = match &sms.transport {
        SmsTransport::File { .. } => SmsTransport::File {
            dir: raw
                .file_dir
                .as_deref()
                .map_or_else(|| data_dir.join("whatsapp"), |d| resolve_path(base, d)),
        },
        SmsTransport::Twilio {
            base_url, timeout, ..
        } => {
            let sender = match (&raw.from, &raw.messaging_service_sid) {
                (Some(f), None) => {
                    if !is_whatsapp_address(&f.value) {
                        errors.push(Diagnostic::at(
                            file,
                            f,
                            "whatsapp.from: expected whatsapp: and a number in E.164 form such as whatsapp:+14155238886",
                        ));
                    }
                    SmsSender::From(f.value.clone())
                }
                (None, Some(m)) => {
                    if !crate::domain::is_twilio_sid(&m.value, "MG") {
                        errors.push(Diagnostic::at(
                            file,
                            m,
                            "whatsapp.messaging_service_sid: expected MG followed by 32 hexadecimal digits",
                        ));
                    }
                    SmsSender::MessagingService(m.value.clone())
                }
                _ => {
                    errors.push(Diagnostic::new(
                        file,
                        1,
                        1,
                        "whatsapp: needs exactly one of from and messaging_service_sid (sms.transport is twilio)",
                    ));
                    SmsSender::From(String::new())
                }
            };
            SmsTransport::Twilio {
                base_url: base_url.clone(),
                sender,
                timeout: *timeout,
            }
        }
    };
    WhatsAppConfig {
        transport,
        quiet_hours,
        min_gap,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    /// A config with SMS through Twilio (its token in a file) and `whatsapp`.
    fn twilio(whatsapp: &str) -> Result<Config, crate::domain::Diagnostics> {
        let dir = tempfile::tempdir().expect("dir");
        let token = dir.path().join("token");
        std::fs::write(&token, "secret").expect("token");
        let text = format!(
            "sms:\n  transport: twilio\n  account_sid: AC0123456789abcdef0123456789abcdef\n  auth_token_file: {token:?}\n  from: \"+15005550006\"\n  min_gap: 30s\nwhatsapp:\n{whatsapp}"
        );
        Config::parse(&dir.path().join("t.yaml"), &text)
    }

    #[test]
    fn whatsapp_takes_twilio_from_sms_and_its_own_sender() {
        let c = twilio("  from: \"whatsapp:+14155238886\"\n").expect("valid");
        let w = c.whatsapp.expect("on");
        let SmsTransport::Twilio {
            base_url, sender, ..
        } = &w.transport
        else {
            panic!("{:?}", w.transport);
        };
        assert_eq!(base_url, "https://api.twilio.com");
        assert_eq!(sender, &SmsSender::From("whatsapp:+14155238886".into()));
        // SMS's gap and quiet hours unless set.
        assert_eq!(w.min_gap, Duration::from_secs(30));
        assert_eq!(w.quiet_hours, c.sms.quiet_hours);
    }

    #[test]
    fn a_bad_sender_is_named_with_its_position() {
        let err = twilio("  from: \"+14155238886\"\n").expect_err("no prefix");
        let line = err.to_string();
        assert!(
            line.contains("t.yaml:8:9: whatsapp.from: expected whatsapp:"),
            "{line}"
        );
        let err = twilio("  quiet_hours: off\n").expect_err("no sender");
        assert!(
            err.to_string()
                .contains("whatsapp: needs exactly one of from"),
            "{err}"
        );
        let err = twilio("  messaging_service_sid: MG1\n").expect_err("bad sid");
        assert!(
            err.to_string()
                .contains("t.yaml:8:26: whatsapp.messaging_service_sid"),
            "{err}"
        );
    }

    #[test]
    fn with_file_transport_messages_go_to_files_and_without_the_section_whatsapp_is_off() {
        let path = std::path::Path::new("/srv/tidings/t.yaml");
        let c =
            Config::parse(path, "whatsapp:\n  min_gap: 5m\n  quiet_hours: off\n").expect("valid");
        let w = c.whatsapp.expect("on");
        assert!(
            matches!(&w.transport, SmsTransport::File { dir } if dir.ends_with("whatsapp")),
            "{:?}",
            w.transport
        );
        assert_eq!((w.min_gap, w.quiet_hours), (Duration::from_secs(300), None));
        assert!(
            Config::parse(path, "listen: 127.0.0.1:1\n")
                .expect("valid")
                .whatsapp
                .is_none()
        );
    }

    #[test]
    fn sender_addresses() {
        assert!(is_whatsapp_address("whatsapp:+14155238886"));
        assert!(!is_whatsapp_address("+14155238886"));
        assert!(!is_whatsapp_address("whatsapp:14155238886"));
        assert!(!is_whatsapp_address("whatsapp:+1415 523"));
    }
}
