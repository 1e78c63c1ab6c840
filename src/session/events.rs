//! A session's topic subscriptions (docs/events.md): `subscribe` and `unsubscribe`.

use std::sync::Arc;

use super::{Failure, Job, Session};
use crate::outbox::{CONTROL, LaneId};
use crate::proto::{ErrorCode, Position, ServerFrame};

impl Session {
    pub(super) fn subscribe(
        &mut self,
        lane: LaneId,
        req: u64,
        pattern: &str,
        filter: Option<String>,
        since: Option<Position>,
    ) -> Result<(), Failure> {
        if lane != CONTROL {
            return Err(Failure::Fatal(ErrorCode::WRONG_STREAM, "subscribe belongs on the control stream".into()));
        }
        let active = self.active()?;
        let events = self.ctx.events.clone();
        let checked = events
            .check(&active.identity, pattern, filter.as_deref(), since)
            .map_err(|(code, message)| Failure::reject(code, message))?;
        if self.subscriptions.contains_key(checked.pattern.as_str()) {
            return Err(Failure::reject(ErrorCode::ALREADY_SUBSCRIBED, format!("{pattern} is already subscribed")));
        }
        if self.subscriptions.len() >= events.max_subscriptions {
            let message = format!("at most {} subscriptions per connection", events.max_subscriptions);
            return Err(Failure::reject(ErrorCode::TOO_MANY_SUBSCRIPTIONS, message));
        }
        let tenant = active.tenant.clone();
        let key = checked.pattern.to_string();
        let (sub, resume) = events.subscribe(&tenant, &self.event_owner, checked, self.outbox.clone(), lane);
        self.subscriptions.insert(key.clone(), sub.clone());
        match resume {
            Some((topic, since)) => {
                let reply = self.outbox.reserve(lane, req);
                self.jobs.push(Job::Resume { tenant, sub, topic, since, reply });
                Ok(())
            }
            None => {
                let frame = ServerFrame::Subscribed { req, pattern: key, position: None, recovered: since.is_none() };
                Ok(self.outbox.reply(lane, &frame)?)
            }
        }
    }

    pub(super) fn unsubscribe(&mut self, lane: LaneId, req: u64, pattern: &str) -> Result<(), Failure> {
        let Some(sub) = self.subscriptions.remove(pattern) else {
            return Err(Failure::reject(ErrorCode::NOT_SUBSCRIBED, format!("{pattern} is not subscribed")));
        };
        let active = self.active()?;
        self.ctx.events.unsubscribe(&active.tenant, &sub);
        Ok(self.outbox.reply(lane, &ServerFrame::Unsubscribed { req, pattern: pattern.to_owned() })?)
    }

    /// Ends every subscription; when the connection closes.
    pub(super) fn unsubscribe_all(&mut self) {
        let subs: Vec<Arc<crate::events::Subscription>> = self.subscriptions.drain().map(|(_, s)| s).collect();
        if let Some(active) = &self.active {
            for sub in subs {
                self.ctx.events.unsubscribe(&active.tenant, &sub);
            }
        }
    }
}
