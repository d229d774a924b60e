//! One database handle per service. The back end is chosen once, by URL scheme, when the
//! service starts: `postgres://…` (each service in its own schema, named after it) or
//! `sqlite://path` (a file per service). Domain code never branches on the back end: what
//! differs (placeholders, multi-row inserts, `BEGIN IMMEDIATE`, which pool writes) is answered
//! by the [`Backend`] a [`Db`] or [`Tx`] carries.

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
/// A service's schema migrations.
pub enum Migrations {
    /// One folder whose SQL both back ends accept.
    Portable(Migrator),
    /// A portable folder plus a folder per back end for the migrations whose SQL cannot be
    /// shared (e.g. `BIGSERIAL` against `INTEGER PRIMARY KEY AUTOINCREMENT`); the shared and
    /// the back end's own are applied together, in version order.
    Split {
        /// Applied on both.
        shared: Migrator,
        /// Applied on Postgres only.
        postgres: Migrator,
        /// Applied on SQLite only.
        sqlite: Migrator,
    },
}

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
                         PRAGMA busy_timeout=10000; PRAGMA foreign_keys=ON; \
                         PRAGMA temp_store=MEMORY;"
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
    pub async fn migrate(&self, migrations: Migrations) -> Result<()> {
        self.migrate_kit().await?;
        self.run(match migrations {
            Migrations::Portable(m) => m,
            Migrations::Split {
                shared,
                postgres,
                sqlite,
            } => {
                let own = match self.backend {
                    Backend::Postgres => postgres,
                    Backend::Sqlite => sqlite,
                };
                // `with_migrations` puts them in version order.
                Migrator::with_migrations(shared.iter().chain(own.iter()).cloned().collect())
            }
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
    pub async fn begin_write(&self) -> Result<Tx, sqlx::Error> {
        let inner = match self.backend {
            Backend::Postgres => self.writer.begin().await?,
            Backend::Sqlite => self.writer.begin_with("BEGIN IMMEDIATE").await?,
        };
        Ok(Tx {
            inner,
            backend: self.backend,
        })
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

/// The SQL that differs between the back ends, in one place. Stores get it from
/// [`Db::backend`] or from the [`Tx`] they write in, and never compare back-end names.
/// Only placeholders are generated here; values are always bound.
impl Backend {
    /// The `n`th (from 1) bind placeholder: `$n` (Postgres) or `?` (SQLite, bound in order of
    /// appearance: SQLite looks numbered parameters up by name, quadratic in their count).
    pub fn placeholder(self, n: usize) -> String {
        let mut s = String::new();
        self.push_placeholder(&mut s, n);
        s
    }

    /// Appends the `n`th placeholder to `sql` (no allocation per placeholder: a batch insert
    /// writes thousands).
    fn push_placeholder(self, sql: &mut String, n: usize) {
        match self {
            Backend::Postgres => {
                use std::fmt::Write;
                // Writing to a String cannot fail.
                let _ = write!(sql, "${n}");
            }
            Backend::Sqlite => sql.push('?'),
        }
    }

    /// Appends `count` comma-separated placeholders numbered from `first` to `sql`.
    fn push_marks(self, sql: &mut String, first: usize, count: usize) {
        for n in first..first + count {
            if n > first {
                sql.push_str(", ");
            }
            self.push_placeholder(sql, n);
        }
    }

    /// `count` comma-separated placeholders numbered from `first` (`$3, $4` or `?, ?`), for an
    /// `IN (…)` list whose values are bound in order.
    pub fn marks(self, first: usize, count: usize) -> String {
        let mut s = String::with_capacity(count * 4);
        self.push_marks(&mut s, first, count);
        s
    }

    /// `INSERT INTO {table_and_columns} VALUES (…), (…) {suffix}` for `rows` rows of `columns`
    /// placeholders.
    pub fn insert_rows(self, table_and_columns: &str, columns: usize, rows: usize, suffix: &str) -> String {
        let mut sql = format!("INSERT INTO {table_and_columns} VALUES ");
        for r in 0..rows {
            if r > 0 {
                sql.push_str(", ");
            }
            sql.push('(');
            self.push_marks(&mut sql, r * columns + 1, columns);
            sql.push(')');
        }
        if !suffix.is_empty() {
            sql.push(' ');
            sql.push_str(suffix);
        }
        sql
    }

    /// Whether the engine has one writer at a time, so that writers need no advisory locks
    /// to be serialised (SQLite).
    pub fn single_writer(self) -> bool {
        self == Backend::Sqlite
    }
}

/// A write transaction begun by [`Db::begin_write`]: the connection (it dereferences to
/// `AnyConnection`, so it is an executor as `&mut *tx`) and the dialect it speaks.
pub struct Tx {
    inner: sqlx::Transaction<'static, sqlx::Any>,
    backend: Backend,
}

impl Tx {
    /// The dialect of the connection.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Commits the transaction.
    pub async fn commit(self) -> Result<(), sqlx::Error> {
        self.inner.commit().await
    }

    /// Rolls the transaction back (dropping it does the same, later).
    pub async fn rollback(self) -> Result<(), sqlx::Error> {
        self.inner.rollback().await
    }
}

impl std::ops::Deref for Tx {
    type Target = sqlx::AnyConnection;
    fn deref(&self) -> &Self::Target {
        &self.inner
    }
}

impl std::ops::DerefMut for Tx {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.inner
    }
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

#[cfg(test)]
mod tests {
    use super::Backend;

    #[test]
    fn each_back_end_numbers_or_orders_its_placeholders() {
        assert_eq!(Backend::Postgres.marks(3, 3), "$3, $4, $5");
        assert_eq!(Backend::Sqlite.marks(3, 3), "?, ?, ?");
        assert_eq!(
            Backend::Postgres.insert_rows("t (a, b)", 2, 2, "ON CONFLICT DO NOTHING"),
            "INSERT INTO t (a, b) VALUES ($1, $2), ($3, $4) ON CONFLICT DO NOTHING"
        );
        assert_eq!(
            Backend::Sqlite.insert_rows("t (a, b)", 2, 2, ""),
            "INSERT INTO t (a, b) VALUES (?, ?), (?, ?)"
        );
        assert!(Backend::Sqlite.single_writer() && !Backend::Postgres.single_writer());
    }
}
