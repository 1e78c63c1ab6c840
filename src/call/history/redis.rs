//! Call history in the region's Redis, so every relay lists the same calls:
//!
//! - `<prefix>:call:{<tenant>/<id>}`: the record (JSON), expiring `max_age_secs` after the
//!   call started (`PXAT`);
//! - `<prefix>:{<tenant>/<user>}:calls`: the user's list, a sorted set of call ids (16 hex
//!   digits) scored by start time; trimmed to `max_calls_per_user` and to the age on every
//!   write, and expiring `max_age_secs` after the user's last call was recorded.
//!
//! A record and the lists are different keys (different Redis Cluster slots), so a write is a
//! pipeline, not a script: every step is idempotent and the next write of the call repairs a
//! half-done one. A call trimmed from every participant's list by count stays readable by
//! nobody and is deleted by its expiry.

use fred::prelude::{Client, Error as FredError, Expiration, KeysInterface, SortedSetsInterface, Value};
use fred::types::sorted_sets::{ZRange, ZRangeBound, ZRangeKind};
use futures_util::FutureExt;
use futures_util::future::{BoxFuture, ready};

use super::{CallHistory, CallPage, CallRecord, HistoryCursor, HistoryError, HistoryRetention, MAX_PAGE, check_limit};
use crate::call::types::CallId;
use crate::hub::presence::UserKey;
use crate::store::StoreError;

fn unavailable(e: FredError) -> HistoryError {
    StoreError::Backend(format!("redis: {e}")).into()
}

pub struct RedisCallHistory {
    client: Client,
    prefix: String,
    retention: HistoryRetention,
}

impl RedisCallHistory {
    /// Uses a connected client (the Redis engine's: one connection per node).
    pub fn new(client: Client, prefix: &str, retention: HistoryRetention) -> Self {
        RedisCallHistory { client, prefix: prefix.to_owned(), retention }
    }

    fn record_key(&self, tenant: &str, id: CallId) -> String {
        format!("{}:call:{{{tenant}/{id}}}", self.prefix)
    }

    fn list_key(&self, tenant: &str, user: &str) -> String {
        format!("{}:{{{tenant}/{user}}}:calls", self.prefix)
    }

    async fn load(&self, tenant: &str, id: CallId) -> Result<Option<CallRecord>, HistoryError> {
        let bytes: Option<Vec<u8>> = self.client.get(self.record_key(tenant, id)).await.map_err(unavailable)?;
        Ok(bytes.map(|b| super::decode("redis call record", &b)).transpose()?)
    }

    async fn upsert(&self, call: CallRecord, now_ms: u64) -> Result<(), HistoryError> {
        let r = &self.retention;
        let old = self.load(&call.tenant, call.id).await?;
        let member = call.id.to_string();
        let cutoff = below(r.cutoff(now_ms));
        let keep = i64::try_from(r.max_calls_per_user).unwrap_or(i64::MAX);
        let ttl_ms = i64::try_from(r.max_age_ms).unwrap_or(i64::MAX);
        let expires = i64::try_from(call.started_ms.saturating_add(r.max_age_ms)).unwrap_or(i64::MAX);
        let pipeline = self.client.pipeline();
        let json = Value::Bytes(super::encode(&call).into());
        let () = pipeline
            .set(self.record_key(&call.tenant, call.id), json, Some(Expiration::PXAT(expires)), None, false)
            .await
            .map_err(unavailable)?;
        for gone in old.iter().flat_map(|o| &o.participants).filter(|p| !call.has(&p.user)) {
            let () =
                pipeline.zrem(self.list_key(&call.tenant, &gone.user), member.as_str()).await.map_err(unavailable)?;
        }
        for p in &call.participants {
            let list = self.list_key(&call.tenant, &p.user);
            let score = call.started_ms as f64;
            let () = pipeline
                .zadd(list.as_str(), None, None, false, false, (score, member.as_str()))
                .await
                .map_err(unavailable)?;
            let () = pipeline.zremrangebyscore(list.as_str(), "-inf", cutoff.clone()).await.map_err(unavailable)?;
            let () = pipeline.zremrangebyrank(list.as_str(), 0, -keep.saturating_add(1)).await.map_err(unavailable)?;
            let () = pipeline.pexpire(list.as_str(), ttl_ms, None).await.map_err(unavailable)?;
        }
        for result in pipeline.try_all::<Value>().await {
            result.map_err(unavailable)?;
        }
        Ok(())
    }

    /// The user's entries strictly before `before`, newest first, none older than the cutoff.
    async fn entries(
        &self,
        list: &str,
        before: Option<HistoryCursor>,
        limit: usize,
        cutoff: u64,
    ) -> Result<Vec<HistoryCursor>, HistoryError> {
        let count = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut out = Vec::new();
        let max = match before {
            Some(at) if at.started_ms < cutoff => return Ok(out),
            // Calls that started in the cursor's millisecond sort by id.
            Some(at) => {
                let ties: Vec<String> = self
                    .client
                    .zrangebyscore(list, at.started_ms as f64, at.started_ms as f64, false, None)
                    .await
                    .map_err(unavailable)?;
                let mut ties: Vec<HistoryCursor> = ties
                    .iter()
                    .filter_map(|m| u64::from_str_radix(m, 16).ok())
                    .map(|id| HistoryCursor { started_ms: at.started_ms, id: CallId(id) })
                    .filter(|c| *c < at)
                    .collect();
                ties.sort_unstable_by(|a, b| b.cmp(a));
                out.extend(ties);
                below(at.started_ms)
            }
            None => ZRange::from("+inf"),
        };
        if out.len() >= limit {
            out.truncate(limit);
            return Ok(out);
        }
        let rest: Vec<(String, f64)> = self
            .client
            .zrevrangebyscore(list, max, cutoff as f64, true, Some((0, count)))
            .await
            .map_err(unavailable)?;
        out.extend(rest.into_iter().filter_map(|(m, score)| {
            let id = u64::from_str_radix(&m, 16).ok()?;
            Some(HistoryCursor { started_ms: score as u64, id: CallId(id) })
        }));
        out.truncate(limit);
        Ok(out)
    }

    async fn page(
        &self,
        user: UserKey,
        before: Option<HistoryCursor>,
        limit: usize,
        now_ms: u64,
    ) -> Result<CallPage, HistoryError> {
        let cutoff = self.retention.cutoff(now_ms);
        let list = self.list_key(&user.tenant, &user.user);
        let entries = self.entries(&list, before, limit + 1, cutoff).await?;
        let more = entries.len() > limit;
        let pipeline = self.client.pipeline();
        for at in entries.iter().take(limit) {
            let () = pipeline.get(self.record_key(&user.tenant, at.id)).await.map_err(unavailable)?;
        }
        let mut calls = Vec::with_capacity(limit.min(MAX_PAGE));
        for result in pipeline.try_all::<Option<Vec<u8>>>().await {
            // A record gone from under its entry (evicted, deleted by hand) is skipped.
            if let Some(bytes) = result.map_err(unavailable)? {
                let call = super::decode("redis call record", &bytes)?;
                if call.has(&user.user) && call.started_ms >= cutoff {
                    calls.push(call);
                }
            }
        }
        let next = if more && calls.len() == limit { calls.last().map(CallRecord::cursor) } else { None };
        Ok(CallPage { calls, next })
    }
}

/// The score bound "strictly below `ms`".
fn below(ms: u64) -> ZRange {
    ZRange { kind: ZRangeKind::Exclusive, range: ZRangeBound::Score(ms as f64) }
}

impl CallHistory for RedisCallHistory {
    fn record(&self, call: CallRecord, now_ms: u64) -> BoxFuture<'_, Result<(), HistoryError>> {
        match call.check() {
            Ok(()) => self.upsert(call, now_ms).boxed(),
            Err(e) => ready(Err(e)).boxed(),
        }
    }

    fn list(
        &self,
        user: &UserKey,
        before: Option<HistoryCursor>,
        limit: usize,
        now_ms: u64,
    ) -> BoxFuture<'_, Result<CallPage, HistoryError>> {
        match check_limit(limit) {
            Ok(()) => self.page(user.clone(), before, limit, now_ms).boxed(),
            Err(e) => ready(Err(e)).boxed(),
        }
    }

    fn get(&self, user: &UserKey, id: CallId, now_ms: u64) -> BoxFuture<'_, Result<Option<CallRecord>, HistoryError>> {
        let user = user.clone();
        let cutoff = self.retention.cutoff(now_ms);
        async move {
            let Some(call) = self.load(&user.tenant, id).await? else { return Ok(None) };
            let list = self.list_key(&user.tenant, &user.user);
            let score: Option<f64> = self.client.zscore(list, id.to_string()).await.map_err(unavailable)?;
            Ok((score.is_some() && call.started_ms >= cutoff).then_some(call))
        }
        .boxed()
    }
}
