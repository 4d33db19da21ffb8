//! Opening the trace database and applying the numbered migrations in `migrations/`, recorded in
//! `schema_version`, so a database created by an older build upgrades in place.

use rusqlite::Connection;
use std::path::Path;

/// Every migration, in order. Version N is the file `migrations/000N_*.sql`.
pub const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../../migrations/0001_init.sql")),
    (
        2,
        include_str!("../../migrations/0002_truncation_hedging.sql"),
    ),
];

/// Opens (creating if needed) the database with WAL and `synchronous=NORMAL`, and migrates it.
pub fn open(path: &Path) -> rusqlite::Result<Connection> {
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let conn = Connection::open(path)?;
    configure(&conn)?;
    migrate(&conn)?;
    Ok(conn)
}

/// Opens a second connection for reads (admin queries), without migrating.
pub fn open_reader(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    Ok(conn)
}

fn configure(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(())
}

/// The schema version the database is at (0 for a new one).
pub fn version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)",
    )?;
    conn.query_row(
        "SELECT COALESCE(MAX(version), 0) FROM schema_version",
        [],
        |r| r.get(0),
    )
}

/// Applies every migration newer than the database, each in its own transaction.
pub fn migrate(conn: &Connection) -> rusqlite::Result<i64> {
    let mut current = version(conn)?;
    if let Some((latest, _)) = MIGRATIONS.last() {
        if current > *latest {
            tracing::warn!(
                database = current,
                build = latest,
                "the trace database was written by a newer Stockyard; continuing with its schema"
            );
        }
    }
    for (v, sql) in MIGRATIONS {
        if *v <= current {
            continue;
        }
        let tx = conn.unchecked_transaction()?;
        tx.execute_batch(sql)?;
        tx.execute(
            "INSERT INTO schema_version (version, applied_at) VALUES (?1, ?2)",
            rusqlite::params![v, super::now_ms() as i64],
        )?;
        tx.commit()?;
        tracing::info!(version = v, "trace database migrated");
        current = *v;
    }
    Ok(current)
}
