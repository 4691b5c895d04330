//! One process attempts payments on a SQLite file: the worker lock.

use std::path::{Path, PathBuf};

use rusqlite::Connection;

/// Held by the process that attempts payments on a SQLite file (`worker`, `serve`,
/// `run`), until dropped. A SQLite store's card locks are the process's own, so two
/// such processes on one file could together overrun a card's network caps.
///
/// It is SQLite's own exclusive lock on a small file beside the database
/// (`<file>-worker.lock`), taken in a transaction that stays open: the operating
/// system releases it when the process ends, however it ends (kill -9 included).
#[derive(Debug)]
pub struct WorkerLock {
    _connection: Connection,
    path: PathBuf,
}

impl WorkerLock {
    /// Takes the worker lock of the database at `database`; `Err` says why not (held
    /// by another process: the message names the file).
    pub fn take(database: &Path) -> Result<WorkerLock, String> {
        let mut name = database.as_os_str().to_owned();
        name.push("-worker.lock");
        let path = PathBuf::from(name);
        let held = || {
            format!(
                "another process attempts payments on {} (it holds {}); a SQLite store serves one worker, `serve` or `run` at a time: stop it, or use Postgres (`[store] url = \"postgres://…\"`) for several",
                database.display(),
                path.display()
            )
        };
        let connection = Connection::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        // Refused at once, not after SQLite's default five seconds of waiting.
        connection
            .busy_timeout(std::time::Duration::ZERO)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        connection
            .execute_batch("PRAGMA locking_mode = EXCLUSIVE; BEGIN EXCLUSIVE;")
            .map_err(|e| match e.sqlite_error_code() {
                Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => {
                    held()
                }
                _ => format!("{}: {e}", path.display()),
            })?;
        Ok(WorkerLock {
            _connection: connection,
            path,
        })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_holder_at_a_time() {
        let dir = std::env::temp_dir().join(format!("offsession-lock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let db = dir.join("store.db");
        let first = WorkerLock::take(&db).unwrap();
        let refused = WorkerLock::take(&db).unwrap_err();
        assert!(refused.contains("serves one worker"), "{refused}");
        assert!(refused.contains(&db.display().to_string()), "{refused}");
        drop(first);
        drop(WorkerLock::take(&db).unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
