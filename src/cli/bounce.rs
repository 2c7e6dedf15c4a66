//! `tidings bounce`: one returned mail on standard input, handed to the
//! running daemon (`POST /v1/email/bounce` with the admin token from
//! `TIDINGS_ADMIN_TOKEN`). Made for an MTA's pipe transport or an alias
//! (`bounces: "|/usr/bin/tidings bounce --config /etc/tidings/tidings.yaml"`),
//! so its exit codes are sysexits(3)'s, which MTAs understand: 0 when the
//! report was filed or is not one of ours (nothing to bounce back), 65
//! (`EX_DATAERR`) when the mail is no delivery status notification, 75
//! (`EX_TEMPFAIL`) when the daemon cannot take it now, so the MTA tries
//! again later.

use std::io::Read;

use crate::config::Locations;

/// The MTA should keep the mail and try again later.
pub const EX_TEMPFAIL: u8 = 75;
/// The mail is not what a bounce address takes.
pub const EX_DATAERR: u8 = 65;
/// Where the admin token is read.
pub const ADMIN_TOKEN_ENV: &str = super::backup::ADMIN_TOKEN_ENV;
/// The most of standard input read: a report with its returned headers is
/// small; a returned message with attachments is cut here.
const MAX_REPORT: u64 = 4 * 1024 * 1024;

/// What became of the report: the exit code and a line for standard error.
pub fn run(config: &Locations, input: impl Read) -> (u8, String) {
    let mut raw = Vec::new();
    if let Err(e) = input.take(MAX_REPORT).read_to_end(&mut raw) {
        return (EX_TEMPFAIL, format!("reading standard input: {e}"));
    }
    let Some(token) = super::admin_token() else {
        return (
            EX_TEMPFAIL,
            format!("the admin token is needed in {ADMIN_TOKEN_ENV}"),
        );
    };
    let url = super::daemon_url(config, "/v1/email/bounce");
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return (EX_TEMPFAIL, format!("runtime: {e}")),
    };
    let _ = rustls::crypto::ring::default_provider().install_default();
    let answer = rt.block_on(async {
        let resp = reqwest::Client::new()
            .post(&url)
            .bearer_auth(token)
            .header("content-type", "message/rfc822")
            .body(raw)
            .send()
            .await?;
        let status = resp.status().as_u16();
        Ok::<_, reqwest::Error>((status, resp.text().await.unwrap_or_default()))
    });
    match answer {
        Err(e) => (
            EX_TEMPFAIL,
            format!("the daemon at {url} cannot be reached: {e}"),
        ),
        Ok((200, body)) => (0, format!("filed: {}", body.trim())),
        Ok((422 | 404, body)) => (0, format!("not filed: {}", body.trim())),
        Ok((400, body)) => (EX_DATAERR, format!("refused: {}", body.trim())),
        Ok((status, body)) => (
            EX_TEMPFAIL,
            format!("the daemon answered {status}: {}", body.trim()),
        ),
    }
}
