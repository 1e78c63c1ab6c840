//! A session's `notifications` frames (docs/notifications.md): checked for their stream and rate
//! here, done by `crate::notify` as a connection job.

use super::{Failure, Job, Session};
use crate::outbox::{CONTROL, LaneId};
use crate::proto::{ErrorCode, NotifyAction};

impl Session {
    pub(super) fn notifications(
        &mut self,
        lane: LaneId,
        req: u64,
        action: NotifyAction,
        now_ms: u64,
    ) -> Result<(), Failure> {
        if lane != CONTROL {
            return Err(Failure::Fatal(ErrorCode::WRONG_STREAM, "notifications belong on the control stream".into()));
        }
        if !self.notify_bucket.try_take(now_ms) {
            return Err(Failure::reject(ErrorCode::RATE_LIMITED, "notifications frames above notifications.rate"));
        }
        let user = self.active()?.user.clone();
        let reply = self.outbox.reserve(lane, req);
        self.jobs.push(Job::Notify { user, conn: self.id, action, reply });
        Ok(())
    }
}
