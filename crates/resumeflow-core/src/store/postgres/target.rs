//! A PostgreSQL store's address: `postgresql://user:password@host:port/dbname?schema=NAME`,
//! parsed into a connection config, and the name messages show (never the password).

use std::path::PathBuf;
use std::time::Duration;

use postgres::config::Host;

use crate::error::{Error, Result, StoreError};

/// The schema a store lives in unless the URL names another.
pub const DEFAULT_SCHEMA: &str = "resumeflow";

/// Where a PostgreSQL store lives.
#[derive(Clone)]
pub struct PgTarget {
    pub config: postgres::Config,
    /// The schema holding the store's tables.
    pub schema: String,
    pub host: String,
    pub port: u16,
    pub database: String,
    /// `postgresql://user@host:port/database?schema=NAME`: what messages call the store.
    pub display: String,
    password: Option<String>,
}

impl std::fmt::Debug for PgTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.display)
    }
}

/// True for a `postgresql://` or `postgres://` URL.
///
/// ```
/// use resumeflow_core::store::postgres::is_postgres_url;
/// assert!(is_postgres_url("postgresql://u@h/db"));
/// assert!(!is_postgres_url("/tmp/runs.db"));
/// ```
pub fn is_postgres_url(text: &str) -> bool {
    text.starts_with("postgresql://") || text.starts_with("postgres://")
}

fn invalid(shown: &str, message: impl std::fmt::Display) -> Error {
    StoreError::Unusable {
        path: PathBuf::from(shown),
        message: message.to_string(),
    }
    .into()
}

/// The URL with its password replaced by `***` (for messages about a URL that does not
/// parse).
fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (authority, tail) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            let tail = tail
                .split('&')
                .map(|p| {
                    if p.contains("password=") {
                        "password=***"
                    } else {
                        p
                    }
                })
                .collect::<Vec<_>>()
                .join("&");
            format!("{scheme}://{user}:***@{host}{tail}")
        }
        None => format!("{scheme}://{authority}{tail}"),
    }
}

fn valid_schema(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && name.len() <= 63
}

impl PgTarget {
    /// Parses a `postgresql://` URL; `?schema=NAME` picks the schema (lowercase letters,
    /// digits and `_`), other parameters are libpq's. A URL with no host is refused.
    ///
    /// ```
    /// use resumeflow_core::store::postgres::PgTarget;
    /// let t = PgTarget::parse("postgresql://rf:pw@127.0.0.1:5433/jobs?schema=team_a").unwrap();
    /// assert_eq!((t.host.as_str(), t.port, t.database.as_str()), ("127.0.0.1", 5433, "jobs"));
    /// assert_eq!(t.display, "postgresql://rf@127.0.0.1:5433/jobs?schema=team_a");
    /// assert!(PgTarget::parse("postgresql:///jobs").is_err());
    /// ```
    pub fn parse(url: &str) -> Result<Self> {
        let shown = redact_url(url);
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let mut schema = DEFAULT_SCHEMA.to_string();
        let mut passed = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("schema", value)) => schema = value.to_string(),
                _ => passed.push(pair),
            }
        }
        if !valid_schema(&schema) {
            return Err(invalid(
                &shown,
                format!("schema {schema:?} is not a plain lowercase SQL name (letters, digits, _; at most 63)"),
            ));
        }
        let libpq_url = if passed.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{}", passed.join("&"))
        };
        let mut config: postgres::Config = libpq_url.parse().map_err(|e: postgres::Error| {
            invalid(
                &shown,
                format!(
                    "not a usable PostgreSQL URL: {}",
                    scrub(&e.to_string(), None)
                ),
            )
        })?;
        let host =
            match config.get_hosts().first() {
                Some(Host::Tcp(h)) => h.clone(),
                #[cfg(unix)]
                Some(Host::Unix(p)) => p.display().to_string(),
                None => return Err(invalid(
                    &shown,
                    "the URL names no host: write postgresql://user:password@HOST:PORT/DATABASE",
                )),
            };
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let user = config.get_user().unwrap_or("postgres").to_string();
        let database = config.get_dbname().unwrap_or(&user).to_string();
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        config.keepalives(true);
        config.keepalives_idle(Duration::from_secs(30));
        config.application_name("resumeflow");
        let password = config
            .get_password()
            .map(|p| String::from_utf8_lossy(p).into_owned());
        let display = format!("postgresql://{user}@{host}:{port}/{database}?schema={schema}");
        Ok(Self {
            config,
            schema,
            host,
            port,
            database,
            display,
            password,
        })
    }

    /// `text` with the password (if it appears) replaced by `***`.
    pub fn scrub(&self, text: &str) -> String {
        scrub(text, self.password.as_deref())
    }

    /// A `StoreError` about this store.
    pub fn error(&self, message: impl std::fmt::Display) -> Error {
        StoreError::Unusable {
            path: PathBuf::from(&self.display),
            message: self.scrub(&message.to_string()),
        }
        .into()
    }

    /// The error for a failed database call: the server's own message and SQLSTATE, or
    /// for a lost connection one naming host, port and database; a full disk is `Full`.
    pub fn db_error(&self, what: &str, e: &postgres::Error) -> Error {
        if let Some(db) = e.as_db_error() {
            if db.code() == &postgres::error::SqlState::DISK_FULL {
                return StoreError::Full {
                    path: PathBuf::from(&self.display),
                    max_bytes: None,
                    used_bytes: 0,
                }
                .into();
            }
            return self.error(format!(
                "{what}: {} ({}: {})",
                db.message(),
                db.severity(),
                db.code().code()
            ));
        }
        self.error(format!(
            "{what}: cannot reach PostgreSQL at host {} port {} database {}: {e}",
            self.host, self.port, self.database
        ))
    }

    /// A new connection with the store's schema on its search path.
    pub fn connect(&self) -> Result<postgres::Client> {
        let mut client = self.config.connect(postgres::NoTls).map_err(|e| {
            let reason = e
                .as_db_error()
                .map_or_else(|| e.to_string(), |db| db.message().to_string());
            self.error(format!(
                "cannot connect to PostgreSQL at host {} port {} database {}: {reason}",
                self.host, self.port, self.database
            ))
        })?;
        client
            .batch_execute(&format!("SET search_path TO \"{}\"", self.schema))
            .map_err(|e| self.db_error("set search_path", &e))?;
        Ok(client)
    }
}

fn scrub(text: &str, password: Option<&str>) -> String {
    match password.filter(|p| !p.is_empty()) {
        Some(p) => text.replace(p, "***"),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_is_never_shown() {
        let t = PgTarget::parse("postgres://rf:hunter2@db.example:6000/prod").unwrap();
        assert_eq!(
            t.display,
            "postgresql://rf@db.example:6000/prod?schema=resumeflow"
        );
        assert!(!format!("{t:?}").contains("hunter2"));
        assert!(!t.error("x hunter2 y").to_string().contains("hunter2"));
        let bad = PgTarget::parse("postgresql://rf:hunter2@h/db?sslmode=bogus")
            .err()
            .unwrap()
            .to_string();
        assert!(!bad.contains("hunter2"), "{bad}");
        let schema = PgTarget::parse("postgresql://rf:hunter2@h/db?schema=Bad;drop")
            .err()
            .unwrap()
            .to_string();
        assert!(
            schema.contains("schema") && !schema.contains("hunter2"),
            "{schema}"
        );
    }

    #[test]
    fn defaults_and_no_host() {
        let t = PgTarget::parse("postgresql://rf@localhost/jobs").unwrap();
        assert_eq!((t.port, t.schema.as_str()), (5432, "resumeflow"));
        let e = PgTarget::parse("postgresql://rf:pw@/jobs").err().unwrap();
        assert!(e.to_string().contains("no host"), "{e}");
    }
}
