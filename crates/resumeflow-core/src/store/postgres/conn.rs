//! One PostgreSQL connection with its prepared statements, reconnecting after the server
//! went away; the write connection of the group-commit writer (its clock is the
//! database's: every lease expiry is computed and compared on one clock for all hosts).

use std::collections::HashMap;
use std::sync::Arc;

use postgres::types::ToSql;
use postgres::{Client, Row, Statement};

use super::target::PgTarget;
use crate::error::Result;
use crate::store::writer::GroupConnection;
use crate::store::Durability;

/// Parameters of a statement.
pub type Params<'a> = [&'a (dyn ToSql + Sync)];

/// A connection, its statement cache and the settings it was opened with.
pub struct PgConn {
    client: Option<Client>,
    statements: HashMap<String, Statement>,
    pub target: Arc<PgTarget>,
    /// `Batched`/`Off` commit without waiting for the WAL flush (`synchronous_commit=off`).
    durability: Durability,
    read_only: bool,
    /// Inside a group transaction: a lost connection is not replaced until it ends (a new
    /// one would run the group's remaining statements outside its transaction).
    in_transaction: bool,
}

impl PgConn {
    /// Connects now (an unreachable server is an error here, not at the first write).
    pub fn open(target: Arc<PgTarget>, durability: Durability, read_only: bool) -> Result<Self> {
        let mut conn = Self {
            client: None,
            statements: HashMap::new(),
            target,
            durability,
            read_only,
            in_transaction: false,
        };
        conn.client()?;
        Ok(conn)
    }

    /// The live client, connecting again if the last one was lost.
    pub fn client(&mut self) -> Result<&mut Client> {
        if self.client.as_ref().is_some_and(Client::is_closed) {
            if self.in_transaction {
                return Err(self.target.error(format!(
                    "lost the connection to PostgreSQL at host {} port {} database {} in the middle of a transaction (nothing of it was committed)",
                    self.target.host, self.target.port, self.target.database
                )));
            }
            self.client = None;
        }
        if self.client.is_none() {
            self.statements.clear();
            let mut client = self.target.connect()?;
            // A session that stops in the middle of a transaction (its process frozen,
            // SIGSTOPped, swapped out) would hold its run's row lock for as long as it is
            // stopped, and block every other host's takeover past the lease: the server ends
            // such a transaction after this long (a group never waits between statements).
            let mut settings = vec!["SET idle_in_transaction_session_timeout = '1s'"];
            if self.durability != Durability::Sync {
                settings.push("SET synchronous_commit = off");
            }
            if self.read_only {
                settings.push("SET default_transaction_read_only = on");
            }
            client
                .batch_execute(&settings.join("; "))
                .map_err(|e| self.target.db_error("configure the session", &e))?;
            self.client = Some(client);
        }
        Ok(self.client.as_mut().expect("connected"))
    }

    /// True if the connection was lost (the next call connects again).
    pub fn is_broken(&self) -> bool {
        self.client.as_ref().is_none_or(Client::is_closed)
    }

    fn prepared(&mut self, sql: &str) -> Result<Statement> {
        if let Some(st) = self.statements.get(sql) {
            return Ok(st.clone());
        }
        let target = self.target.clone();
        let st = self
            .client()?
            .prepare(sql)
            .map_err(|e| target.db_error("prepare a statement", &e))?;
        self.statements.insert(sql.to_string(), st.clone());
        Ok(st)
    }

    /// Runs a statement; returns the rows it changed.
    pub fn exec(&mut self, sql: &str, params: &Params<'_>) -> Result<u64> {
        let st = self.prepared(sql)?;
        let target = self.target.clone();
        self.client()?
            .execute(&st, params)
            .map_err(|e| target.db_error("write", &e))
    }

    /// Runs a query; returns its rows.
    pub fn rows(&mut self, sql: &str, params: &Params<'_>) -> Result<Vec<Row>> {
        let st = self.prepared(sql)?;
        let target = self.target.clone();
        self.client()?
            .query(&st, params)
            .map_err(|e| target.db_error("read", &e))
    }

    /// Runs a query expected to return at most one row.
    pub fn row(&mut self, sql: &str, params: &Params<'_>) -> Result<Option<Row>> {
        Ok(self.rows(sql, params)?.into_iter().next())
    }

    /// Runs statements given as text (no parameters).
    pub fn batch(&mut self, what: &str, sql: &str) -> Result<()> {
        let target = self.target.clone();
        self.client()?
            .batch_execute(sql)
            .map_err(|e| target.db_error(what, &e))
    }
}

impl GroupConnection for PgConn {
    fn begin(&mut self, durable: bool) -> Result<f64> {
        let target = self.target.clone();
        self.in_transaction = false;
        self.client()?;
        self.in_transaction = true;
        let begin = if durable {
            "BEGIN; SELECT extract(epoch FROM clock_timestamp())::float8"
        } else {
            // A lazy group: WAL written, its flush left to the next durable commit.
            "BEGIN; SET LOCAL synchronous_commit = off; \
             SELECT extract(epoch FROM clock_timestamp())::float8"
        };
        let mut sent = self.client()?.simple_query(begin);
        if sent.is_err() && self.is_broken() {
            // The connection was lost since the last group (a server restart, say): nothing of
            // this group ran yet, so it begins again on a new connection.
            self.in_transaction = false;
            self.client()?;
            self.in_transaction = true;
            sent = self.client()?.simple_query(begin);
        }
        let messages = sent.map_err(|e| target.db_error("begin a write transaction", &e))?;
        messages
            .iter()
            .find_map(|m| match m {
                postgres::SimpleQueryMessage::Row(row) => row.get(0).and_then(|t| t.parse().ok()),
                _ => None,
            })
            .ok_or_else(|| target.error("the server sent no clock reading"))
    }
    fn savepoint(&mut self) -> Result<()> {
        self.batch("savepoint", "SAVEPOINT rf_op")
    }
    fn release_savepoint(&mut self) -> Result<()> {
        self.batch("release savepoint", "RELEASE SAVEPOINT rf_op")
    }
    fn rollback_to_savepoint(&mut self) -> Result<()> {
        self.batch(
            "rollback to savepoint",
            "ROLLBACK TO SAVEPOINT rf_op; RELEASE SAVEPOINT rf_op",
        )
    }
    fn commit(&mut self) -> Result<()> {
        // The change marker moves once the commit is visible (same round trip).
        let result = self.batch("commit failed", "COMMIT; SELECT nextval('changes')");
        self.in_transaction = false;
        result
    }
    fn rollback(&mut self) {
        self.in_transaction = false;
        if let Some(client) = self.client.as_mut().filter(|c| !c.is_closed()) {
            let _ = client.batch_execute("ROLLBACK");
        }
    }
}
