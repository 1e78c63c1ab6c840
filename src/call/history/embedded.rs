//! Call history in the relay's redb file, next to the room history ([`EmbeddedHistory`]):
//!
//! - `calls`: `(tenant, id)` → the record (JSON)
//! - `call_index`: `(tenant \0 user, started, id)` → `()`: each participant's list; a range read
//!   backwards is the list newest first
//! - `call_times`: `(started, tenant, id)` → `()`: every call by start, for age retention
//!
//! A record, its list entries and retention change in one write transaction.

use std::sync::Arc;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::{
    CallHistory, CallPage, CallRecord, HistoryCursor, HistoryError, HistoryRetention, ReadTables, Tables, check_limit,
};
use crate::call::types::CallId;
use crate::hub::presence::UserKey;
use crate::store::{EmbeddedHistory, StoreError, tenant_scoped};

type CallKey = (&'static [u8], u64);
type IndexKey = (&'static [u8], u64, u64);
type TimeKey = (u64, &'static [u8], u64);

const CALLS: TableDefinition<CallKey, &[u8]> = TableDefinition::new("calls");
const CALL_INDEX: TableDefinition<IndexKey, ()> = TableDefinition::new("call_index");
const CALL_TIMES: TableDefinition<TimeKey, ()> = TableDefinition::new("call_times");

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError::backend(e)
}

/// The three tables, open in a read or a write transaction.
struct Redb<C, I, T> {
    calls: C,
    index: I,
    times: T,
}

fn user_bytes(user: &UserKey) -> Vec<u8> {
    tenant_scoped(&user.tenant, &user.user)
}

fn cursors<'a>(
    range: impl Iterator<Item = Result<(redb::AccessGuard<'a, IndexKey>, redb::AccessGuard<'a, ()>), redb::StorageError>>,
    limit: usize,
) -> Result<Vec<HistoryCursor>, StoreError> {
    range
        .take(limit)
        .map(|entry| {
            let (k, _) = entry.map_err(err)?;
            let (_, started_ms, id) = k.value();
            Ok(HistoryCursor { started_ms, id: CallId(id) })
        })
        .collect()
}

impl<C, I, T> ReadTables for Redb<C, I, T>
where
    C: ReadableTable<CallKey, &'static [u8]>,
    I: ReadableTable<IndexKey, ()>,
    T: ReadableTable<TimeKey, ()>,
{
    fn call(&self, tenant: &str, id: CallId) -> Result<Option<CallRecord>, StoreError> {
        let Some(value) = self.calls.get((tenant.as_bytes(), id.0)).map_err(err)? else { return Ok(None) };
        super::decode("calls", value.value()).map(Some)
    }

    fn index_before(
        &self,
        user: &UserKey,
        before: Option<HistoryCursor>,
        limit: usize,
    ) -> Result<Vec<HistoryCursor>, StoreError> {
        let who = user_bytes(user);
        let from = (who.as_slice(), 0, 0);
        match before {
            Some(at) => {
                cursors(self.index.range(from..(who.as_slice(), at.started_ms, at.id.0)).map_err(err)?.rev(), limit)
            }
            None => cursors(self.index.range(from..=(who.as_slice(), u64::MAX, u64::MAX)).map_err(err)?.rev(), limit),
        }
    }

    fn index_has(&self, user: &UserKey, at: HistoryCursor) -> Result<bool, StoreError> {
        Ok(self.index.get((user_bytes(user).as_slice(), at.started_ms, at.id.0)).map_err(err)?.is_some())
    }

    fn index_beyond(&self, user: &UserKey, keep: u64) -> Result<Vec<HistoryCursor>, StoreError> {
        let all = self.index_before(user, None, usize::MAX)?;
        Ok(all.into_iter().skip(usize::try_from(keep).unwrap_or(usize::MAX)).collect())
    }

    fn started_before(&self, cutoff_ms: u64, limit: usize) -> Result<Vec<(String, HistoryCursor)>, StoreError> {
        let mut out = Vec::new();
        for entry in self.times.range(..(cutoff_ms, &[][..], 0)).map_err(err)?.take(limit) {
            let (k, _) = entry.map_err(err)?;
            let (started_ms, tenant, id) = k.value();
            let tenant = String::from_utf8(tenant.to_vec())
                .map_err(|_| StoreError::Corrupt { table: "call_times", detail: "tenant is not UTF-8".into() })?;
            out.push((tenant, HistoryCursor { started_ms, id: CallId(id) }));
        }
        Ok(out)
    }
}

type Table<'t, K, V> = redb::Table<'t, K, V>;

impl Tables for Redb<Table<'_, CallKey, &'static [u8]>, Table<'_, IndexKey, ()>, Table<'_, TimeKey, ()>> {
    fn put_call(&mut self, call: &CallRecord) -> Result<(), StoreError> {
        let tenant = call.tenant.as_bytes();
        self.calls.insert((tenant, call.id.0), super::encode(call).as_slice()).map_err(err)?;
        self.times.insert((call.started_ms, tenant, call.id.0), ()).map_err(err)?;
        Ok(())
    }

    fn delete_call(&mut self, tenant: &str, at: HistoryCursor) -> Result<(), StoreError> {
        self.calls.remove((tenant.as_bytes(), at.id.0)).map_err(err)?;
        self.times.remove((at.started_ms, tenant.as_bytes(), at.id.0)).map_err(err)?;
        Ok(())
    }

    fn index_add(&mut self, user: &UserKey, at: HistoryCursor) -> Result<bool, StoreError> {
        let old = self.index.insert((user_bytes(user).as_slice(), at.started_ms, at.id.0), ()).map_err(err)?;
        Ok(old.is_none())
    }

    fn index_remove(&mut self, user: &UserKey, at: HistoryCursor) -> Result<(), StoreError> {
        self.index.remove((user_bytes(user).as_slice(), at.started_ms, at.id.0)).map_err(err)?;
        Ok(())
    }
}

/// The call history in the embedded store's file.
pub struct EmbeddedCallHistory {
    store: Arc<EmbeddedHistory>,
    retention: HistoryRetention,
}

impl EmbeddedCallHistory {
    /// Adds the call tables to the store's file (if they are not there yet).
    pub fn new(store: Arc<EmbeddedHistory>, retention: HistoryRetention) -> Result<Self, StoreError> {
        let txn = store.database().begin_write().map_err(err)?;
        txn.open_table(CALLS).map_err(err)?;
        txn.open_table(CALL_INDEX).map_err(err)?;
        txn.open_table(CALL_TIMES).map_err(err)?;
        txn.commit().map_err(err)?;
        Ok(EmbeddedCallHistory { store, retention })
    }

    /// Runs `f` on tokio's blocking pool: a transaction may wait on the disk (and a write on the
    /// room history's writer).
    fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Database, &HistoryRetention) -> Result<T, StoreError> + Send + 'static,
    ) -> BoxFuture<'static, Result<T, HistoryError>> {
        let (store, retention) = (self.store.clone(), self.retention);
        async move {
            match tokio::task::spawn_blocking(move || f(store.database(), &retention)).await {
                Ok(result) => Ok(result?),
                Err(e) => Err(StoreError::Backend(format!("call history task did not finish: {e}")).into()),
            }
        }
        .boxed()
    }

    fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn ReadTables, &HistoryRetention) -> Result<T, StoreError> + Send + 'static,
    ) -> BoxFuture<'static, Result<T, HistoryError>> {
        self.blocking(move |db, retention| {
            let txn = db.begin_read().map_err(err)?;
            let tables = Redb {
                calls: txn.open_table(CALLS).map_err(err)?,
                index: txn.open_table(CALL_INDEX).map_err(err)?,
                times: txn.open_table(CALL_TIMES).map_err(err)?,
            };
            f(&tables, retention)
        })
    }
}

impl CallHistory for EmbeddedCallHistory {
    fn record(&self, call: CallRecord, now_ms: u64) -> BoxFuture<'_, Result<(), HistoryError>> {
        if let Err(e) = call.check() {
            return futures_util::future::ready(Err(e)).boxed();
        }
        self.blocking(move |db, retention| {
            let txn = db.begin_write().map_err(err)?;
            {
                let mut tables = Redb {
                    calls: txn.open_table(CALLS).map_err(err)?,
                    index: txn.open_table(CALL_INDEX).map_err(err)?,
                    times: txn.open_table(CALL_TIMES).map_err(err)?,
                };
                super::upsert(&mut tables, &call, retention, now_ms)?;
            }
            txn.commit().map_err(err)
        })
    }

    fn list(
        &self,
        user: &UserKey,
        before: Option<HistoryCursor>,
        limit: usize,
        now_ms: u64,
    ) -> BoxFuture<'_, Result<CallPage, HistoryError>> {
        if let Err(e) = check_limit(limit) {
            return futures_util::future::ready(Err(e)).boxed();
        }
        let user = user.clone();
        self.read(move |t, retention| super::page(t, &user, before, limit, retention, now_ms))
    }

    fn get(&self, user: &UserKey, id: CallId, now_ms: u64) -> BoxFuture<'_, Result<Option<CallRecord>, HistoryError>> {
        let user = user.clone();
        self.read(move |t, retention| super::get(t, &user, id, retention, now_ms))
    }
}
