//! One database handle per service. The back end is chosen once, by URL scheme, when the
//! service starts: `postgres://…` (each service in its own schema, named after it) or
//! `sqlite://path` (a file per service). Domain code never branches on the back end; the few
//! statements that differ live in the kit (advisory locking in [`crate::outbox`]).

use std::path::Path;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::migrate::Migrator;
use sqlx::{AnyPool, ConnectOptions, Connection, Executor};

use crate::{Error, Result};

/// Which database engine is behind a [`Db`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// PostgreSQL (`serve`, production).
    Postgres,
    /// SQLite (`up`, embedded).
    Sqlite,
}

/// A service's database: a connection pool scoped to the service's own schema or file.
#[derive(Clone, Debug)]
pub struct Db {
    pool: AnyPool,
    writer: AnyPool,
    backend: Backend,
    service: String,
}

/// Redacts the password in a database URL for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            let user = creds.split(':').next().unwrap_or_default();
            format!("{}://{user}:***@{}", &url[..s], &url[at + 1..])
        }
        _ => url.to_string(),
    }
}

/// The SQLite URL for a service's file under a data directory.
pub fn sqlite_url(data_dir: &Path, service: &str) -> String {
    format!("sqlite://{}?mode=rwc", data_dir.join(format!("{service}.db")).display())
}

impl Db {
    /// Connects to `url` for `service`, creating the service's schema (Postgres) or file
    /// (SQLite) when missing. Fails fast (within `connect_timeout`) when unreachable, naming
    /// the database.
    pub async fn connect(url: &str, service: &str, max_connections: u32, connect_timeout: Duration) -> Result<Db> {
        sqlx::any::install_default_drivers();
        let what = format!("connect to {} for {service}", redact(url));
        let backend = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else {
            return Err(Error::Config(format!(
                "database url {:?}: expected postgres://… or sqlite://…",
                redact(url)
            )));
        };
        let valid_schema = service.bytes().next().is_some_and(|b| b.is_ascii_lowercase())
            && service
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !valid_schema {
            return Err(Error::Config(format!(
                "service name {service:?} is not a valid schema name"
            )));
        }
        let options: AnyConnectOptions = url.parse().map_err(Error::db(what.clone()))?;
        let options = options.disable_statement_logging();
        if backend == Backend::Postgres {
            let mut conn = tokio::time::timeout(connect_timeout, options.connect())
                .await
                .map_err(|_| Error::Database {
                    context: what.clone(),
                    source: sqlx::Error::PoolTimedOut,
                })?
                .map_err(Error::db(what.clone()))?;
            conn.execute(sqlx::AssertSqlSafe(format!("CREATE SCHEMA IF NOT EXISTS {service}")))
                .await
                .map_err(Error::db(format!("create schema {service}")))?;
            conn.close().await.map_err(Error::db(what.clone()))?;
        }
        let pool = Self::open_pool(backend, service, max_connections, connect_timeout, options.clone())
            .await
            .map_err(Error::db(what.clone()))?;
        // SQLite has one writer at a time; contending connections would sleep in its busy
        // handler. Writers therefore queue for a single connection in the async pool instead.
        let writer = match backend {
            Backend::Postgres => pool.clone(),
            Backend::Sqlite => Self::open_pool(backend, service, 1, connect_timeout, options)
                .await
                .map_err(Error::db(what))?,
        };
        Ok(Db {
            pool,
            writer,
            backend,
            service: service.to_string(),
        })
    }

    async fn open_pool(
        backend: Backend,
        service: &str,
        max_connections: u32,
        connect_timeout: Duration,
        options: AnyConnectOptions,
    ) -> Result<AnyPool, sqlx::Error> {
        let schema = service.to_string();
        AnyPoolOptions::new()
            .max_connections(max_connections)
            .min_connections(1)
            // A ping on every acquire is a round trip per query; a broken connection still
            // surfaces as an error on use, and the pool replaces it.
            .test_before_acquire(false)
            .acquire_timeout(connect_timeout)
            .after_connect(move |conn, _meta| {
                let sql = match backend {
                    Backend::Postgres => format!("SET search_path TO {schema}"),
                    Backend::Sqlite => "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; \
                         PRAGMA busy_timeout=10000; PRAGMA foreign_keys=ON;"
                        .to_string(),
                };
                Box::pin(async move {
                    conn.execute(sqlx::AssertSqlSafe(sql)).await?;
                    Ok(())
                })
            })
            .connect_with(options)
            .await
    }

    /// Applies the kit's migrations and then the service's own for this back end.
    /// Kit migrations are numbered from 90000000000001 so the two sets never collide; each
    /// migrator ignores the other's applied versions.
    pub async fn migrate(&self, postgres: Migrator, sqlite: Migrator) -> Result<()> {
        self.migrate_kit().await?;
        self.run(match self.backend {
            Backend::Postgres => postgres,
            Backend::Sqlite => sqlite,
        })
        .await
    }

    /// Applies only the kit's own tables (outbox, inbox).
    pub async fn migrate_kit(&self) -> Result<()> {
        self.run(match self.backend {
            Backend::Postgres => sqlx::migrate!("./migrations/postgres"),
            Backend::Sqlite => sqlx::migrate!("./migrations/sqlite"),
        })
        .await
    }

    async fn run(&self, mut migrator: Migrator) -> Result<()> {
        migrator.set_ignore_missing(true);
        migrator.run(&self.writer).await.map_err(|source| Error::Migrate {
            service: self.service.clone(),
            source,
        })
    }

    /// The pool for reads (and, on Postgres, writes).
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// The pool for statements that write outside [`Db::begin_write`] (one connection on
    /// SQLite, the shared pool on Postgres).
    pub fn writer(&self) -> &AnyPool {
        &self.writer
    }

    /// Begins a transaction that will write. On SQLite it takes the write lock up front
    /// (`BEGIN IMMEDIATE`), so concurrent writers queue on the busy timeout instead of failing
    /// when a read lock cannot be upgraded.
    pub async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>, sqlx::Error> {
        match self.backend {
            Backend::Postgres => self.writer.begin().await,
            Backend::Sqlite => self.writer.begin_with("BEGIN IMMEDIATE").await,
        }
    }

    /// The engine behind this handle.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The owning service's name (also its Postgres schema).
    pub fn service(&self) -> &str {
        &self.service
    }

    /// Cheap liveness check for `/readyz`.
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map(|_| ())
            .map_err(Error::db(format!("ping {} database", self.service)))
    }

    /// Closes the pool, waiting for connections to be returned.
    pub async fn close(&self) {
        self.pool.close().await;
        self.writer.close().await;
    }
}

/// Most rows one multi-row INSERT carries (keeps binds under SQLite's and Postgres' limits).
pub const MAX_ROWS_PER_INSERT: usize = 200;

/// `INSERT INTO {table_and_columns} VALUES (…), (…) {suffix}` for `rows` rows of `columns`
/// placeholders in `conn`'s dialect: `$n` for Postgres, anonymous `?` for SQLite (whose
/// numbered parameters are looked up by name, quadratic in their count). Only placeholders
/// are generated; values are always bound.
pub fn insert_rows(
    conn: &sqlx::AnyConnection,
    table_and_columns: &str,
    columns: usize,
    rows: usize,
    suffix: &str,
) -> String {
    let numbered = conn.backend_name() != "SQLite";
    let mut sql = format!("INSERT INTO {table_and_columns} VALUES ");
    for r in 0..rows {
        if r > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        for c in 0..columns {
            if c > 0 {
                sql.push_str(", ");
            }
            if numbered {
                sql.push_str(&format!("${}", r * columns + c + 1));
            } else {
                sql.push('?');
            }
        }
        sql.push(')');
    }
    if !suffix.is_empty() {
        sql.push(' ');
        sql.push_str(suffix);
    }
    sql
}

/// The `n`th (from 1) bind placeholder in `conn`'s dialect: `$n` (Postgres) or `?` (SQLite,
/// bound in order of appearance).
pub fn placeholder(conn: &sqlx::AnyConnection, n: usize) -> String {
    if conn.backend_name() == "SQLite" {
        "?".to_string()
    } else {
        format!("${n}")
    }
}

/// `count` comma-separated bind placeholders for `backend` (`$1, $2, …` or `?, ?, …`), for an
/// `IN (…)` list whose values are bound in order.
pub fn marks(backend: Backend, count: usize) -> String {
    let one = |n: usize| match backend {
        Backend::Postgres => format!("${n}"),
        Backend::Sqlite => "?".to_string(),
    };
    (1..=count).map(one).collect::<Vec<_>>().join(", ")
}

/// Microseconds since the Unix epoch, the time representation every table uses.
pub fn now_us() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

/// Converts microseconds since the epoch to a protobuf timestamp.
pub fn timestamp(us: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: us.div_euclid(1_000_000),
        nanos: (us.rem_euclid(1_000_000) * 1000) as i32,
    }
}

/// Converts a protobuf timestamp to microseconds since the epoch.
pub fn micros(ts: &prost_types::Timestamp) -> i64 {
    ts.seconds * 1_000_000 + i64::from(ts.nanos) / 1000
}
