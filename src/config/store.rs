//! `store:` in the config file: which backend keeps the daemon's state.
//!
//! ```yaml
//! store: sled                 # the default: a sled database in data_dir/db
//! store:
//!   postgres:
//!     url_env: DATABASE_URL   # the variable holding the connection string
//!     pool_size: 16           # connections (1 to 512; 16 by default)
//!     lease: 30s              # how long a due case or message a replica
//!                             # claimed is its own (1s to 10m; 30s by default)
//! ```
//!
//! The connection string is read from the environment when the config is
//! loaded (a missing variable is a `file:line:column` error then), and is
//! never printed.

use std::path::Path;

use serde::Deserialize;
use serde_saphyr::Spanned;

use crate::domain::Diagnostic;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub(super) enum RawStore {
    Sled,
    Postgres(Box<RawPostgres>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPostgres {
    url_env: Option<Spanned<String>>,
    pool_size: Option<Spanned<i64>>,
    lease: Option<Spanned<String>>,
}

/// The backend the daemon opens.
#[derive(Clone, PartialEq, Eq)]
pub enum StoreChoice {
    /// sled, in `data_dir/db`.
    Sled,
    /// PostgreSQL at `url` (from the environment), with `pool_size`
    /// connections; work a replica claims is its own for `lease`.
    Postgres {
        url: String,
        pool_size: usize,
        lease: std::time::Duration,
    },
}

impl std::fmt::Debug for StoreChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Sled => f.write_str("Sled"),
            // The connection string may hold a password.
            Self::Postgres {
                pool_size, lease, ..
            } => f
                .debug_struct("Postgres")
                .field("pool_size", pool_size)
                .field("lease", lease)
                .finish_non_exhaustive(),
        }
    }
}

/// The environment variable read when `url_env` is not given.
const DEFAULT_URL_ENV: &str = "DATABASE_URL";
const DEFAULT_POOL: usize = 16;
const MAX_POOL: i64 = 512;
const DEFAULT_LEASE: std::time::Duration = std::time::Duration::from_secs(30);
const LEASE_RANGE: std::ops::RangeInclusive<std::time::Duration> =
    std::time::Duration::from_secs(1)..=std::time::Duration::from_secs(600);

/// Validates `store:`; problems go to `errors` with their position.
pub(super) fn resolve(
    file: &Path,
    raw: Option<&Spanned<RawStore>>,
    errors: &mut Vec<Diagnostic>,
) -> StoreChoice {
    let Some(raw) = raw else {
        return StoreChoice::Sled;
    };
    let pg = match &raw.value {
        RawStore::Sled => return StoreChoice::Sled,
        RawStore::Postgres(pg) => pg,
    };
    let pool_size = match &pg.pool_size {
        None => DEFAULT_POOL,
        Some(s) if (1..=MAX_POOL).contains(&s.value) => {
            usize::try_from(s.value).unwrap_or(DEFAULT_POOL)
        }
        Some(s) => {
            errors.push(Diagnostic::at(
                file,
                s,
                format!(
                    "store.postgres.pool_size: {} is not a pool size (1 to {MAX_POOL})",
                    s.value
                ),
            ));
            DEFAULT_POOL
        }
    };
    let var = pg
        .url_env
        .as_ref()
        .map_or(DEFAULT_URL_ENV, |s| s.value.as_str());
    let url = match std::env::var(var) {
        Ok(v) if !v.trim().is_empty() => v,
        _ => {
            let message = format!("store.postgres.url_env: environment variable {var} is not set");
            errors.push(match &pg.url_env {
                Some(s) => Diagnostic::at(file, s, message),
                None => Diagnostic::at(file, raw, message),
            });
            String::new()
        }
    };
    let lease = match &pg.lease {
        None => DEFAULT_LEASE,
        Some(s) => match crate::domain::parse_duration("store.postgres.lease", &s.value) {
            Ok(d) if LEASE_RANGE.contains(&d) => d,
            Ok(_) => {
                errors.push(Diagnostic::at(
                    file,
                    s,
                    format!(
                        "store.postgres.lease: `{}` is out of range (1s to 10m)",
                        s.value
                    ),
                ));
                DEFAULT_LEASE
            }
            Err(e) => {
                errors.push(Diagnostic::at(file, s, e));
                DEFAULT_LEASE
            }
        },
    };
    StoreChoice::Postgres {
        url,
        pool_size,
        lease,
    }
}

#[cfg(test)]
mod tests {
    use super::super::Config;
    use super::*;

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(Path::new("t.yaml"), text).map_err(|d| d.to_string())
    }

    #[test]
    fn sled_is_the_default_and_may_be_named() {
        assert_eq!(parse("{}").expect("valid").store, StoreChoice::Sled);
        assert_eq!(
            parse("store: sled\n").expect("valid").store,
            StoreChoice::Sled
        );
    }

    #[test]
    fn postgres_takes_its_url_from_the_environment() {
        // A variable every test process has (this crate forbids the
        // unsafe `set_var`).
        let path = std::env::var("PATH").expect("PATH is set");
        let cfg =
            parse("store:\n  postgres:\n    url_env: PATH\n    pool_size: 4\n").expect("valid");
        assert_eq!(
            cfg.store,
            StoreChoice::Postgres {
                url: path.clone(),
                pool_size: 4,
                lease: std::time::Duration::from_secs(30),
            }
        );
        assert!(!format!("{cfg:?}").contains(&path), "the URL is not shown");
    }

    #[test]
    fn bad_store_values_are_named_with_their_position() {
        let err = parse("store: mysql\n").expect_err("unknown backend");
        assert!(err.starts_with("t.yaml:1:"), "{err}");
        assert!(err.contains("mysql"), "{err}");

        let err = parse("store:\n  postgres:\n    url_env: TIDINGS_TEST_PG_UNSET_VAR\n")
            .expect_err("missing variable");
        assert!(err.starts_with("t.yaml:3:14:"), "{err}");
        assert!(
            err.contains("TIDINGS_TEST_PG_UNSET_VAR is not set"),
            "{err}"
        );

        let err = parse("store:\n  postgres:\n    url_env: PATH\n    pool_size: 0\n")
            .expect_err("bad pool size");
        assert!(err.starts_with("t.yaml:4:16:"), "{err}");
        assert!(err.contains("pool_size: 0 is not a pool size"), "{err}");

        let err = parse("store:\n  postgres:\n    url_env: PATH\n    lease: 0s\n")
            .expect_err("bad lease");
        assert!(err.starts_with("t.yaml:4:12:"), "{err}");
        assert!(err.contains("store.postgres.lease"), "{err}");
        let err = parse("store:\n  postgres:\n    url_env: PATH\n    lease: soon\n")
            .expect_err("bad lease");
        assert!(err.starts_with("t.yaml:4:12:"), "{err}");
    }
}
