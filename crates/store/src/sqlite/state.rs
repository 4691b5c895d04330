//! The SQLite store's engine state (`engine_state`: named values the engine, the
//! server and the worker keep), as SQL; the `Store` methods call these.

use super::*;

impl SqliteStore {
    pub(super) async fn sql_load_state(&self, key: &str) -> Result<Option<String>, StoreError> {
        let key = key.to_owned();
        self.call(move |tx| {
            tx.prepare_cached("SELECT value FROM engine_state WHERE key = ?1")
                .and_then(|mut s| s.query_row([key], |r| r.get(0)).optional())
                .map_err(sql_error("reading engine state"))
        })
        .await
    }

    pub(super) async fn sql_save_state(&self, key: &str, value: &str) -> Result<(), StoreError> {
        let (key, value) = (key.to_owned(), value.to_owned());
        self.call(move |tx| {
            tx.prepare_cached(
                "INSERT INTO engine_state (key, value) VALUES (?1, ?2)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            )
            .and_then(|mut s| s.execute(params![key, value]))
            .map(|_| ())
            .map_err(sql_error("writing engine state"))
        })
        .await
    }

    pub(super) async fn sql_swap_state(
        &self,
        key: &str,
        expected: Option<&str>,
        value: &str,
    ) -> Result<bool, StoreError> {
        let (key, expected, value) = (
            key.to_owned(),
            expected.map(str::to_owned),
            value.to_owned(),
        );
        self.call(move |tx| {
            let written = match &expected {
                None => tx
                    .prepare_cached(
                        "INSERT OR IGNORE INTO engine_state (key, value) VALUES (?1, ?2)",
                    )
                    .and_then(|mut s| s.execute(params![key, value])),
                Some(expected) => tx
                    .prepare_cached(
                        "UPDATE engine_state SET value = ?3 WHERE key = ?1 AND value = ?2",
                    )
                    .and_then(|mut s| s.execute(params![key, expected, value])),
            }
            .map_err(sql_error("swapping engine state"))?;
            Ok(written == 1)
        })
        .await
    }

    pub(super) async fn sql_delete_state(&self, key: &str) -> Result<(), StoreError> {
        let key = key.to_owned();
        self.call(move |tx| {
            tx.prepare_cached("DELETE FROM engine_state WHERE key = ?1")
                .and_then(|mut s| s.execute([key]))
                .map(|_| ())
                .map_err(sql_error("deleting engine state"))
        })
        .await
    }

    pub(super) async fn sql_remove_state_if(
        &self,
        key: &str,
        expected: &str,
    ) -> Result<bool, StoreError> {
        let (key, expected) = (key.to_owned(), expected.to_owned());
        self.call(move |tx| {
            tx.prepare_cached("DELETE FROM engine_state WHERE key = ?1 AND value = ?2")
                .and_then(|mut s| s.execute([key, expected]))
                .map(|removed| removed == 1)
                .map_err(sql_error("deleting engine state"))
        })
        .await
    }

    pub(super) async fn sql_list_state(
        &self,
        prefix: &str,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let prefix = prefix.to_owned();
        self.call(move |tx| {
            let mut statement = tx
                .prepare_cached(
                    "SELECT key, value FROM engine_state
                     WHERE substr(key, 1, length(?1)) = ?1 ORDER BY key",
                )
                .map_err(sql_error("listing engine state"))?;
            let rows = statement
                .query_map([prefix], |r| Ok((r.get(0)?, r.get(1)?)))
                .map_err(sql_error("listing engine state"))?;
            rows.collect::<Result<Vec<_>, _>>()
                .map_err(sql_error("listing engine state"))
        })
        .await
    }
}
