//! The one database layer under the registry: a connection to SQLite or to PostgreSQL, one
//! [`Value`] type for parameters and results, rows read into typed values, and one transaction
//! API, so that every query of the registry is written once.
//!
//! Queries are written in the SQL both dialects share, with `?N` placeholders (rewritten to
//! `$N` for PostgreSQL). What the dialects cannot share lives here and nowhere else: opening a
//! connection, the schema version (`PRAGMA user_version` or the `kiln_schema` table), how a
//! transaction begins, and the locks that serialise writers (SQLite's database write lock, a
//! PostgreSQL transaction-scoped advisory lock).

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use postgres::types::{ToSql, Type};

use crate::Error;

/// What a database query failed with.
#[derive(Debug, thiserror::Error)]
pub enum DatabaseError {
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    /// What PostgreSQL said (the server's message, or why it could not be reached), whole:
    /// the client's own `Display` is only "db error".
    #[error("{}", postgres_message(.0))]
    Postgres(postgres::Error),
    /// A column did not hold the type the registry reads it as.
    #[error("column {column} holds {found}, where {expected} was expected")]
    Type {
        column: usize,
        found: &'static str,
        expected: &'static str,
    },
    /// A parameter or a column of a type the registry does not use.
    #[error("{0}")]
    Unsupported(String),
}

impl From<postgres::Error> for DatabaseError {
    fn from(error: postgres::Error) -> DatabaseError {
        DatabaseError::Postgres(error)
    }
}

/// A PostgreSQL error in one line: the server's message, or the client's with its causes.
fn postgres_message(error: &postgres::Error) -> String {
    if let Some(db) = error.as_db_error() {
        return db.message().to_string();
    }
    let mut text = error.to_string();
    let mut cause = std::error::Error::source(error);
    while let Some(error) = cause {
        text.push_str(&format!(": {error}"));
        cause = error.source();
    }
    text
}

/// Which SQL the connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    Sqlite,
    Postgres,
}

/// A PostgreSQL connection and the statements it has prepared, by query text.
pub(crate) struct PostgresConnection {
    client: postgres::Client,
    statements: HashMap<String, postgres::Statement>,
}

/// An open database. Every method takes `&self`: the PostgreSQL client is behind a `RefCell`,
/// borrowed for one call at a time (rows are read whole before the borrow ends).
pub(crate) enum Database {
    Sqlite(rusqlite::Connection),
    Postgres(Box<RefCell<PostgresConnection>>),
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Database::Sqlite(connection) => f
                .debug_tuple("Sqlite")
                .field(&connection.path().unwrap_or(""))
                .finish(),
            Database::Postgres(_) => f.write_str("Postgres"),
        }
    }
}

/// A parameter or a column value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    Null,
    Integer(i64),
    Real(f64),
    Text(String),
    Bool(bool),
}

impl Value {
    fn kind(&self) -> &'static str {
        match self {
            Value::Null => "NULL",
            Value::Integer(_) => "an integer",
            Value::Real(_) => "a real number",
            Value::Text(_) => "text",
            Value::Bool(_) => "a boolean",
        }
    }
}

/// A Rust value that can be a query parameter.
pub(crate) trait ToValue {
    fn to_value(&self) -> Value;
}

impl ToValue for Value {
    fn to_value(&self) -> Value {
        self.clone()
    }
}
impl ToValue for i64 {
    fn to_value(&self) -> Value {
        Value::Integer(*self)
    }
}
impl ToValue for i32 {
    fn to_value(&self) -> Value {
        Value::Integer(i64::from(*self))
    }
}
impl ToValue for u32 {
    fn to_value(&self) -> Value {
        Value::Integer(i64::from(*self))
    }
}
impl ToValue for f64 {
    fn to_value(&self) -> Value {
        Value::Real(*self)
    }
}
impl ToValue for bool {
    fn to_value(&self) -> Value {
        Value::Bool(*self)
    }
}
impl ToValue for str {
    fn to_value(&self) -> Value {
        Value::Text(self.to_string())
    }
}
impl ToValue for String {
    fn to_value(&self) -> Value {
        Value::Text(self.clone())
    }
}
impl<T: ToValue> ToValue for Option<T> {
    fn to_value(&self) -> Value {
        self.as_ref().map_or(Value::Null, ToValue::to_value)
    }
}
impl<T: ToValue + ?Sized> ToValue for &T {
    fn to_value(&self) -> Value {
        (**self).to_value()
    }
}

/// The parameters of a query, `?1` first: `args![model, version]`.
macro_rules! args {
    ($($value:expr),* $(,)?) => {
        &[$($crate::db::ToValue::to_value(&$value)),*][..]
    };
}
pub(crate) use args;

/// A value read from a column.
pub(crate) trait FromValue: Sized {
    const EXPECTED: &'static str;
    fn from_value(value: Value) -> Option<Self>;
}

impl FromValue for i64 {
    const EXPECTED: &'static str = "an integer";
    fn from_value(value: Value) -> Option<i64> {
        match value {
            Value::Integer(v) => Some(v),
            _ => None,
        }
    }
}
impl FromValue for i32 {
    const EXPECTED: &'static str = "a 32-bit integer";
    fn from_value(value: Value) -> Option<i32> {
        match value {
            Value::Integer(v) => i32::try_from(v).ok(),
            _ => None,
        }
    }
}
impl FromValue for f64 {
    const EXPECTED: &'static str = "a number";
    fn from_value(value: Value) -> Option<f64> {
        match value {
            Value::Real(v) => Some(v),
            // SQLite keeps a whole REAL such as 1.0 as written, an integer.
            Value::Integer(v) => Some(v as f64),
            _ => None,
        }
    }
}
impl FromValue for bool {
    const EXPECTED: &'static str = "a boolean";
    fn from_value(value: Value) -> Option<bool> {
        match value {
            Value::Bool(v) => Some(v),
            // SQLite's booleans are the integers 0 and 1.
            Value::Integer(0) => Some(false),
            Value::Integer(1) => Some(true),
            _ => None,
        }
    }
}
impl FromValue for String {
    const EXPECTED: &'static str = "text";
    fn from_value(value: Value) -> Option<String> {
        match value {
            Value::Text(v) => Some(v),
            _ => None,
        }
    }
}
impl<T: FromValue> FromValue for Option<T> {
    const EXPECTED: &'static str = T::EXPECTED;
    fn from_value(value: Value) -> Option<Option<T>> {
        match value {
            Value::Null => Some(None),
            value => T::from_value(value).map(Some),
        }
    }
}

/// A row of a result, read whole.
#[derive(Debug)]
pub(crate) struct Row(Vec<Value>);

impl Row {
    /// The value of column `column` (from 0) as a `T`; a value of another type is an error.
    pub(crate) fn get<T: FromValue>(&self, column: usize) -> Result<T, DatabaseError> {
        let value = self.0.get(column).cloned().unwrap_or(Value::Null);
        let found = value.kind();
        T::from_value(value).ok_or(DatabaseError::Type {
            column,
            found,
            expected: T::EXPECTED,
        })
    }
}

/// Rewrites `?N` placeholders to PostgreSQL's `$N`, leaving quoted text alone.
fn postgres_placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut quote: Option<char> = None;
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '\'' || c == '"' => quote = Some(c),
            None if c == '?' && chars.peek().is_some_and(char::is_ascii_digit) => {
                out.push('$');
                continue;
            }
            None => {}
        }
        out.push(c);
    }
    out
}

/// A parameter as PostgreSQL takes it for a placeholder of type `ty`: the integer a `BIGINT`
/// or an `INTEGER` wants, NULL typed as its column.
fn postgres_parameter(value: &Value, ty: &Type) -> Result<Box<dyn ToSql + Sync>, DatabaseError> {
    let mismatch = || {
        DatabaseError::Unsupported(format!(
            "a parameter of type `{ty}` cannot take {}",
            value.kind()
        ))
    };
    Ok(match (value, ty) {
        (Value::Null, &Type::INT8) => Box::new(None::<i64>),
        (Value::Null, &Type::INT4) => Box::new(None::<i32>),
        (Value::Null, &Type::INT2) => Box::new(None::<i16>),
        (Value::Null, &Type::FLOAT8) => Box::new(None::<f64>),
        (Value::Null, &Type::BOOL) => Box::new(None::<bool>),
        (Value::Null, _) => Box::new(None::<String>),
        (Value::Integer(v), &Type::INT8) => Box::new(*v),
        (Value::Integer(v), &Type::INT4) => Box::new(i32::try_from(*v).map_err(|_| mismatch())?),
        (Value::Integer(v), &Type::INT2) => Box::new(i16::try_from(*v).map_err(|_| mismatch())?),
        (Value::Integer(v), &Type::FLOAT8) => Box::new(*v as f64),
        (Value::Real(v), &Type::FLOAT8) => Box::new(*v),
        (Value::Bool(v), &Type::BOOL) => Box::new(*v),
        (Value::Text(v), &Type::TEXT | &Type::VARCHAR | &Type::BPCHAR | &Type::NAME) => {
            Box::new(v.clone())
        }
        _ => return Err(mismatch()),
    })
}

/// Column `index` of a PostgreSQL row as a [`Value`].
fn postgres_column(row: &postgres::Row, index: usize) -> Result<Value, DatabaseError> {
    let ty = row.columns()[index].type_();
    let value = match *ty {
        Type::INT8 => row.try_get::<_, Option<i64>>(index)?.map(Value::Integer),
        Type::INT4 => row
            .try_get::<_, Option<i32>>(index)?
            .map(|v| Value::Integer(v.into())),
        Type::INT2 => row
            .try_get::<_, Option<i16>>(index)?
            .map(|v| Value::Integer(v.into())),
        Type::FLOAT8 => row.try_get::<_, Option<f64>>(index)?.map(Value::Real),
        Type::FLOAT4 => row
            .try_get::<_, Option<f32>>(index)?
            .map(|v| Value::Real(v.into())),
        Type::BOOL => row.try_get::<_, Option<bool>>(index)?.map(Value::Bool),
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => {
            row.try_get::<_, Option<String>>(index)?.map(Value::Text)
        }
        _ => {
            return Err(DatabaseError::Unsupported(format!(
                "column {index} has type `{ty}`, which the registry does not read"
            )));
        }
    };
    Ok(value.unwrap_or(Value::Null))
}

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(match self {
            Value::Null => ToSqlOutput::Borrowed(ValueRef::Null),
            Value::Integer(v) => ToSqlOutput::Borrowed(ValueRef::Integer(*v)),
            Value::Real(v) => ToSqlOutput::Borrowed(ValueRef::Real(*v)),
            Value::Text(v) => ToSqlOutput::Borrowed(ValueRef::Text(v.as_bytes())),
            Value::Bool(v) => ToSqlOutput::Borrowed(ValueRef::Integer(i64::from(*v))),
        })
    }
}

fn sqlite_column(value: rusqlite::types::ValueRef<'_>) -> Value {
    use rusqlite::types::ValueRef;
    match value {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(v) => Value::Integer(v),
        ValueRef::Real(v) => Value::Real(v),
        // Text that is not UTF-8, or a blob, is read as text where it can be: the column's
        // reader then finds it is not what it should be.
        ValueRef::Text(v) | ValueRef::Blob(v) => Value::Text(String::from_utf8_lossy(v).into()),
    }
}

/// The advisory lock key that serialises schema migrations on a PostgreSQL database (an
/// arbitrary constant: `kiln` in ASCII, then `schema`).
const SCHEMA_LOCK: i64 = 0x6b69_6c6e_0000_0001;

/// How long a SQLite connection waits for another process's lock.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a PostgreSQL connection attempt may take when the URL does not say.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

impl Database {
    /// Opens (creating if needed) a SQLite database file, in WAL mode, with foreign keys on.
    pub(crate) fn open_sqlite(path: &Path) -> Result<Database, rusqlite::Error> {
        let connection = rusqlite::Connection::open(path)?;
        connection.busy_timeout(SQLITE_BUSY_TIMEOUT)?;
        // Switching a new file to WAL takes a lock that another process opening the same new
        // registry may hold for a moment, and SQLite answers "busy" there without waiting: try
        // again for as long as the busy timeout.
        let started = std::time::Instant::now();
        loop {
            match connection.execute_batch(
                "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;",
            ) {
                Err(rusqlite::Error::SqliteFailure(error, _))
                    if error.code == rusqlite::ErrorCode::DatabaseBusy
                        && started.elapsed() < SQLITE_BUSY_TIMEOUT =>
                {
                    std::thread::sleep(Duration::from_millis(10));
                }
                result => break result?,
            }
        }
        Ok(Database::Sqlite(connection))
    }

    /// Connects to a PostgreSQL database.
    pub(crate) fn connect_postgres(
        mut config: postgres::Config,
    ) -> Result<Database, postgres::Error> {
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("kiln");
        }
        let client = config.connect(postgres::NoTls)?;
        Ok(Database::Postgres(Box::new(RefCell::new(
            PostgresConnection {
                client,
                statements: HashMap::new(),
            },
        ))))
    }

    pub(crate) fn dialect(&self) -> Dialect {
        match self {
            Database::Sqlite(_) => Dialect::Sqlite,
            Database::Postgres(_) => Dialect::Postgres,
        }
    }

    /// Runs a statement; returns how many rows it changed.
    pub(crate) fn execute(&self, sql: &str, args: &[Value]) -> Result<u64, DatabaseError> {
        match self {
            Database::Sqlite(connection) => {
                let mut statement = connection.prepare_cached(sql)?;
                let changed = statement.execute(rusqlite::params_from_iter(args))?;
                Ok(changed as u64)
            }
            Database::Postgres(connection) => {
                let mut connection = connection.borrow_mut();
                let (statement, params) = connection.bind(sql, args)?;
                let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(AsRef::as_ref).collect();
                Ok(connection.client.execute(&statement, &refs)?)
            }
        }
    }

    /// Every row a query returns.
    pub(crate) fn query(&self, sql: &str, args: &[Value]) -> Result<Vec<Row>, DatabaseError> {
        match self {
            Database::Sqlite(connection) => {
                let mut statement = connection.prepare_cached(sql)?;
                let columns = statement.column_count();
                let mut rows = statement.query(rusqlite::params_from_iter(args))?;
                let mut read = Vec::new();
                while let Some(row) = rows.next()? {
                    let values = (0..columns)
                        .map(|index| row.get_ref(index).map(sqlite_column))
                        .collect::<Result<_, _>>()?;
                    read.push(Row(values));
                }
                Ok(read)
            }
            Database::Postgres(connection) => {
                let mut connection = connection.borrow_mut();
                let (statement, params) = connection.bind(sql, args)?;
                let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(AsRef::as_ref).collect();
                let rows = connection.client.query(&statement, &refs)?;
                rows.iter()
                    .map(|row| {
                        let values = (0..row.len())
                            .map(|index| postgres_column(row, index))
                            .collect::<Result<_, _>>()?;
                        Ok(Row(values))
                    })
                    .collect()
            }
        }
    }

    /// The first row a query returns, if any.
    pub(crate) fn query_opt(
        &self,
        sql: &str,
        args: &[Value],
    ) -> Result<Option<Row>, DatabaseError> {
        Ok(self.query(sql, args)?.into_iter().next())
    }

    /// The first row of a query that always returns one (an aggregate, `EXISTS`).
    pub(crate) fn query_one(&self, sql: &str, args: &[Value]) -> Result<Row, DatabaseError> {
        self.query_opt(sql, args)?
            .ok_or_else(|| DatabaseError::Unsupported(format!("the query returned no row: {sql}")))
    }

    /// Runs several statements without parameters (a migration file).
    pub(crate) fn execute_batch(&self, sql: &str) -> Result<(), DatabaseError> {
        match self {
            Database::Sqlite(connection) => Ok(connection.execute_batch(sql)?),
            Database::Postgres(connection) => {
                Ok(connection.borrow_mut().client.batch_execute(sql)?)
            }
        }
    }

    /// Runs `work` in a transaction: committed when it returns `Ok`, rolled back when it
    /// returns an error. On SQLite the transaction takes the write lock as it begins
    /// (`BEGIN IMMEDIATE`): one that reads before it writes would otherwise fail at once,
    /// rather than wait, when another process wrote in between. On PostgreSQL, writers that
    /// must not interleave take a lock inside it ([`Database::lock`]).
    pub(crate) fn transaction<T>(
        &self,
        work: impl FnOnce(&Database) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let begin = match self.dialect() {
            Dialect::Sqlite => "BEGIN IMMEDIATE",
            Dialect::Postgres => "BEGIN",
        };
        self.execute_batch(begin)?;
        let result = work(self).and_then(|value| {
            self.execute_batch("COMMIT")?;
            Ok(value)
        });
        if result.is_err() {
            // Whatever failed is the error to report; a connection too broken to roll back
            // is closed with the registry, which rolls back.
            let _ = self.execute_batch("ROLLBACK");
        }
        result
    }

    /// Inside a transaction, waits until no other transaction holds the lock on `name` (a
    /// model, whose version numbers and aliases are being written), and holds it until this
    /// one ends. SQLite's transactions already hold the database's write lock.
    pub(crate) fn lock(&self, name: &str) -> Result<(), DatabaseError> {
        if self.dialect() == Dialect::Postgres {
            let key = Database::lock_key(name);
            self.execute("SELECT pg_advisory_xact_lock(?1)", args![key])?;
        }
        Ok(())
    }

    /// The advisory lock key of `name`, the same in every process.
    fn lock_key(name: &str) -> i64 {
        let digest = blake3::hash(format!("kiln-lock\0{name}").as_bytes());
        i64::from_le_bytes(digest.as_bytes()[..8].try_into().expect("8 bytes"))
    }

    /// PostgreSQL: holds a lock on run `id` for as long as this connection lives (or until
    /// [`Database::release_run`]), which tells other machines that the run's process is alive.
    /// SQLite: nothing (the run's process id tells it, on the one machine).
    pub(crate) fn hold_run(&self, id: i64) -> Result<(), DatabaseError> {
        if self.dialect() == Dialect::Postgres {
            let key = Database::lock_key(&format!("run\0{id}"));
            self.execute("SELECT pg_advisory_lock(?1)", args![key])?;
        }
        Ok(())
    }

    /// Releases the lock [`Database::hold_run`] took.
    pub(crate) fn release_run(&self, id: i64) -> Result<(), DatabaseError> {
        if self.dialect() == Dialect::Postgres {
            let key = Database::lock_key(&format!("run\0{id}"));
            self.execute("SELECT pg_advisory_unlock(?1)", args![key])?;
        }
        Ok(())
    }

    /// Whether the process of run `id` still holds it, as far as the database can tell:
    /// `None` on SQLite (ask about the process id), on PostgreSQL whether any connection
    /// holds the run's lock.
    pub(crate) fn run_is_held(&self, id: i64) -> Result<Option<bool>, DatabaseError> {
        if self.dialect() == Dialect::Sqlite {
            return Ok(None);
        }
        let key = Database::lock_key(&format!("run\0{id}"));
        let free: bool = self
            .query_one("SELECT pg_try_advisory_lock(?1)", args![key])?
            .get(0)?;
        if free {
            self.execute("SELECT pg_advisory_unlock(?1)", args![key])?;
        }
        Ok(Some(!free))
    }

    /// The schema version, outside any transaction (0: an empty database).
    pub(crate) fn schema_version(&self) -> Result<i64, DatabaseError> {
        match self.dialect() {
            Dialect::Sqlite => self.query_one("PRAGMA user_version", &[])?.get(0),
            Dialect::Postgres => {
                let exists: bool = self
                    .query_one("SELECT to_regclass('kiln_schema') IS NOT NULL", &[])?
                    .get(0)?;
                if !exists {
                    return Ok(0);
                }
                Ok(self
                    .query_opt("SELECT version FROM kiln_schema", &[])?
                    .map(|row| row.get(0))
                    .transpose()?
                    .unwrap_or(0))
            }
        }
    }

    /// Inside a migration's transaction: waits for any other process migrating the same
    /// database (PostgreSQL; SQLite's transaction holds the write lock already) and makes sure
    /// the schema version has a place to be kept.
    pub(crate) fn lock_schema(&self) -> Result<(), DatabaseError> {
        if self.dialect() == Dialect::Postgres {
            self.execute("SELECT pg_advisory_xact_lock(?1)", args![SCHEMA_LOCK])?;
            self.execute_batch("CREATE TABLE IF NOT EXISTS kiln_schema (version BIGINT NOT NULL)")?;
        }
        Ok(())
    }

    /// Runs `work` (migrations) with SQLite's foreign keys off, so that a migration can
    /// rebuild a table; the pragma has no effect inside a transaction, so it is set around
    /// them. PostgreSQL alters tables in place and keeps its keys on.
    pub(crate) fn without_foreign_keys<T>(
        &self,
        work: impl FnOnce() -> Result<T, Error>,
    ) -> Result<T, Error> {
        if self.dialect() == Dialect::Postgres {
            return work();
        }
        let enforced: bool = self.query_one("PRAGMA foreign_keys", &[])?.get(0)?;
        self.execute_batch("PRAGMA foreign_keys = OFF")?;
        let result = work();
        let on = if enforced { "ON" } else { "OFF" };
        self.execute_batch(&format!("PRAGMA foreign_keys = {on}"))?;
        result
    }

    /// Inside a migration's transaction: a table with a row naming a row that does not exist,
    /// if any (SQLite, whose keys are off during migrations; PostgreSQL checks every change).
    pub(crate) fn broken_foreign_key(&self) -> Result<Option<String>, DatabaseError> {
        match self.dialect() {
            Dialect::Sqlite => self
                .query_opt("PRAGMA foreign_key_check", &[])?
                .map(|row| row.get(0))
                .transpose(),
            Dialect::Postgres => Ok(None),
        }
    }

    /// Inside a migration's transaction: records the schema version.
    pub(crate) fn set_schema_version(&self, version: i64) -> Result<(), DatabaseError> {
        match self.dialect() {
            // A pragma takes no parameter.
            Dialect::Sqlite => self.execute_batch(&format!("PRAGMA user_version = {version}")),
            Dialect::Postgres => {
                self.execute("DELETE FROM kiln_schema", &[])?;
                self.execute(
                    "INSERT INTO kiln_schema (version) VALUES (?1)",
                    args![version],
                )?;
                Ok(())
            }
        }
    }
}

impl PostgresConnection {
    /// The prepared statement of `sql` (prepared once per connection) and `args` as the
    /// types of its placeholders.
    fn bind(
        &mut self,
        sql: &str,
        args: &[Value],
    ) -> Result<(postgres::Statement, Vec<Box<dyn ToSql + Sync>>), DatabaseError> {
        let statement = match self.statements.get(sql) {
            Some(statement) => statement.clone(),
            None => {
                let statement = self.client.prepare(&postgres_placeholders(sql))?;
                self.statements.insert(sql.to_string(), statement.clone());
                statement
            }
        };
        let types = statement.params();
        if types.len() != args.len() {
            return Err(DatabaseError::Unsupported(format!(
                "the query takes {} parameters, {} were given",
                types.len(),
                args.len()
            )));
        }
        let params = args
            .iter()
            .zip(types)
            .map(|(value, ty)| postgres_parameter(value, ty))
            .collect::<Result<_, _>>()?;
        Ok((statement, params))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_rewritten_outside_quotes() {
        assert_eq!(
            postgres_placeholders("SELECT a FROM t WHERE b = ?1 AND c = '?2' AND \"?3\" = ?12"),
            "SELECT a FROM t WHERE b = $1 AND c = '?2' AND \"?3\" = $12"
        );
        assert_eq!(
            postgres_placeholders("SELECT '?' || ?1"),
            "SELECT '?' || $1"
        );
    }

    #[test]
    fn values_read_as_their_type_or_fail() {
        let row = Row(vec![
            Value::Integer(1),
            Value::Text("x".into()),
            Value::Null,
            Value::Integer(2),
        ]);
        assert!(row.get::<bool>(0).unwrap());
        assert_eq!(row.get::<f64>(0).unwrap(), 1.0);
        assert_eq!(row.get::<Option<String>>(2).unwrap(), None);
        assert!(matches!(
            row.get::<i64>(1),
            Err(DatabaseError::Type { column: 1, .. })
        ));
        assert!(row.get::<bool>(3).is_err());
        assert!(row.get::<String>(2).is_err());
    }
}
