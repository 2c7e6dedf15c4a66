//! Statements prepared once per connection. A statement sent as text is
//! parsed, analysed and planned by PostgreSQL on every call, in a round
//! trip of its own before the one that runs it; prepared once and kept
//! with its connection, it is only bound and run.

use std::collections::HashMap;

use tokio_postgres::types::ToSql;
use tokio_postgres::{Error, GenericClient, Row, Statement};

/// The statements one connection has prepared, by their text.
pub(super) type Statements = std::sync::Mutex<HashMap<&'static str, Statement>>;

/// A client or a transaction, with its connection's prepared statements.
pub(super) struct Db<'a, C> {
    client: &'a C,
    statements: &'a Statements,
}

impl<C> Clone for Db<'_, C> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<C> Copy for Db<'_, C> {}

impl<'a, C: GenericClient + Sync> Db<'a, C> {
    pub(super) fn new(client: &'a C, statements: &'a Statements) -> Self {
        Self { client, statements }
    }

    async fn statement(&self, sql: &'static str) -> Result<Statement, Error> {
        let known = self
            .statements
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(sql)
            .cloned();
        if let Some(s) = known {
            return Ok(s);
        }
        let s = self.client.prepare(sql).await?;
        self.statements
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(sql, s.clone());
        Ok(s)
    }

    pub(super) async fn execute(
        &self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, Error> {
        let s = self.statement(sql).await?;
        self.client.execute(&s, params).await
    }

    pub(super) async fn query(
        &self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, Error> {
        let s = self.statement(sql).await?;
        self.client.query(&s, params).await
    }

    pub(super) async fn query_opt(
        &self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>, Error> {
        let s = self.statement(sql).await?;
        self.client.query_opt(&s, params).await
    }

    pub(super) async fn query_one(
        &self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Row, Error> {
        let s = self.statement(sql).await?;
        self.client.query_one(&s, params).await
    }

    pub(super) async fn batch_execute(&self, sql: &str) -> Result<(), Error> {
        self.client.batch_execute(sql).await
    }
}
