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
        // A range of the primary key (its order is SQLite's binary one, code points),
        // so the read is a search of the index, not a scan of the table.
        let end = row::prefix_end(&prefix);
        self.call(move |tx| {
            let row = |r: &rusqlite::Row<'_>| Ok((r.get(0)?, r.get(1)?));
            let rows = match &end {
                Some(end) => tx
                    .prepare_cached(LIST_STATE_RANGE)
                    .and_then(|mut s| s.query_map(params![prefix, end], row)?.collect()),
                None => tx
                    .prepare_cached(
                        "SELECT key, value FROM engine_state WHERE key >= ?1 ORDER BY key",
                    )
                    .and_then(|mut s| s.query_map(params![prefix], row)?.collect()),
            };
            rows.map_err(sql_error("listing engine state"))
        })
        .await
    }

    pub(super) async fn sql_list_state_page(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let prefix = prefix.to_owned();
        // Past `after`: every key under a non-empty prefix sorts after "".
        let after = after.unwrap_or("").to_owned();
        let end = row::prefix_end(&prefix);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.call(move |tx| {
            let row = |r: &rusqlite::Row<'_>| Ok((r.get(0)?, r.get(1)?));
            let rows = match &end {
                Some(end) => tx
                    .prepare_cached(
                        "SELECT key, value FROM engine_state
                         WHERE key >= ?1 AND key < ?2 AND key > ?3 ORDER BY key LIMIT ?4",
                    )
                    .and_then(|mut s| {
                        s.query_map(params![prefix, end, after, limit], row)?
                            .collect()
                    }),
                None => tx
                    .prepare_cached(
                        "SELECT key, value FROM engine_state
                         WHERE key >= ?1 AND key > ?2 ORDER BY key LIMIT ?3",
                    )
                    .and_then(|mut s| s.query_map(params![prefix, after, limit], row)?.collect()),
            };
            rows.map_err(sql_error("listing engine state"))
        })
        .await
    }
}

/// Engine state under a prefix: the range `[?1, ?2)` of the primary key.
const LIST_STATE_RANGE: &str =
    "SELECT key, value FROM engine_state WHERE key >= ?1 AND key < ?2 ORDER BY key";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listing_by_prefix_searches_the_primary_key() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn).unwrap();
        let plan: Vec<String> = conn
            .prepare(&format!("EXPLAIN QUERY PLAN {LIST_STATE_RANGE}"))
            .unwrap()
            .query_map(params!["destination/", "destination0"], |r| r.get(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(
            plan.iter().all(|step| step.starts_with("SEARCH")),
            "{plan:?}"
        );
    }
}
