//! Call history in memory: for tests, and for a relay run with `store.engine = "memory"` (the
//! history is lost on restart, like the rooms').

use std::collections::{BTreeSet, HashMap};
use std::ops::Bound;
use std::sync::Mutex;

use futures_util::FutureExt;
use futures_util::future::{BoxFuture, ready};

use super::{
    CallHistory, CallPage, CallRecord, HistoryCursor, HistoryError, HistoryRetention, ReadTables, Tables, check_limit,
};
use crate::call::types::CallId;
use crate::hub::presence::UserKey;
use crate::store::StoreError;

#[derive(Default)]
struct Maps {
    calls: HashMap<(String, CallId), CallRecord>,
    /// `(tenant, user, cursor)`.
    index: BTreeSet<(String, String, HistoryCursor)>,
    /// `(started, tenant, id)`.
    times: BTreeSet<(u64, String, CallId)>,
}

pub struct MemoryCallHistory {
    maps: Mutex<Maps>,
    retention: HistoryRetention,
}

impl MemoryCallHistory {
    pub fn new(retention: HistoryRetention) -> Self {
        MemoryCallHistory { maps: Mutex::new(Maps::default()), retention }
    }

    fn with<T>(&self, f: impl FnOnce(&mut Maps) -> Result<T, StoreError>) -> Result<T, HistoryError> {
        Ok(f(&mut self.maps.lock().unwrap_or_else(|e| e.into_inner()))?)
    }
}

fn index_key(user: &UserKey, at: HistoryCursor) -> (String, String, HistoryCursor) {
    (user.tenant.to_string(), user.user.to_string(), at)
}

impl ReadTables for Maps {
    fn call(&self, tenant: &str, id: CallId) -> Result<Option<CallRecord>, StoreError> {
        Ok(self.calls.get(&(tenant.to_owned(), id)).cloned())
    }

    fn index_before(
        &self,
        user: &UserKey,
        before: Option<HistoryCursor>,
        limit: usize,
    ) -> Result<Vec<HistoryCursor>, StoreError> {
        let lowest = index_key(user, HistoryCursor { started_ms: 0, id: CallId(0) });
        let upper = match before {
            Some(at) => Bound::Excluded(index_key(user, at)),
            None => Bound::Included(index_key(user, HistoryCursor { started_ms: u64::MAX, id: CallId(u64::MAX) })),
        };
        Ok(self.index.range((Bound::Included(lowest), upper)).rev().take(limit).map(|(_, _, at)| *at).collect())
    }

    fn index_has(&self, user: &UserKey, at: HistoryCursor) -> Result<bool, StoreError> {
        Ok(self.index.contains(&index_key(user, at)))
    }

    fn index_beyond(&self, user: &UserKey, keep: u64) -> Result<Vec<HistoryCursor>, StoreError> {
        let all = self.index_before(user, None, usize::MAX)?;
        Ok(all.into_iter().skip(usize::try_from(keep).unwrap_or(usize::MAX)).collect())
    }

    fn started_before(&self, cutoff_ms: u64, limit: usize) -> Result<Vec<(String, HistoryCursor)>, StoreError> {
        Ok(self
            .times
            .iter()
            .take_while(|(started, _, _)| *started < cutoff_ms)
            .take(limit)
            .map(|(started_ms, tenant, id)| (tenant.clone(), HistoryCursor { started_ms: *started_ms, id: *id }))
            .collect())
    }
}

impl Tables for Maps {
    fn put_call(&mut self, call: &CallRecord) -> Result<(), StoreError> {
        self.times.insert((call.started_ms, call.tenant.clone(), call.id));
        self.calls.insert((call.tenant.clone(), call.id), call.clone());
        Ok(())
    }

    fn delete_call(&mut self, tenant: &str, at: HistoryCursor) -> Result<(), StoreError> {
        self.times.remove(&(at.started_ms, tenant.to_owned(), at.id));
        self.calls.remove(&(tenant.to_owned(), at.id));
        Ok(())
    }

    fn index_add(&mut self, user: &UserKey, at: HistoryCursor) -> Result<bool, StoreError> {
        Ok(self.index.insert(index_key(user, at)))
    }

    fn index_remove(&mut self, user: &UserKey, at: HistoryCursor) -> Result<(), StoreError> {
        self.index.remove(&index_key(user, at));
        Ok(())
    }
}

impl CallHistory for MemoryCallHistory {
    fn record(&self, call: CallRecord, now_ms: u64) -> BoxFuture<'_, Result<(), HistoryError>> {
        let result = call.check().and_then(|()| self.with(|m| super::upsert(m, &call, &self.retention, now_ms)));
        ready(result).boxed()
    }

    fn list(
        &self,
        user: &UserKey,
        before: Option<HistoryCursor>,
        limit: usize,
        now_ms: u64,
    ) -> BoxFuture<'_, Result<CallPage, HistoryError>> {
        let result = check_limit(limit)
            .and_then(|()| self.with(|m| super::page(m, user, before, limit, &self.retention, now_ms)));
        ready(result).boxed()
    }

    fn get(&self, user: &UserKey, id: CallId, now_ms: u64) -> BoxFuture<'_, Result<Option<CallRecord>, HistoryError>> {
        ready(self.with(|m| super::get(m, user, id, &self.retention, now_ms))).boxed()
    }
}
