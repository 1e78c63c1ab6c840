//! A session's read marks, unread counts and receipts (docs/receipts.md): the `receipts` actions
//! and `publish_mentions`' check. The rules live in `crate::receipts`.

use super::{Failure, Job, Session};
use crate::outbox::{CONTROL, LaneId};
use crate::proto::{ErrorCode, ReceiptAction, RoomName, ServerFrame};
use crate::receipts::MAX_USER_ID_BYTES;

/// The async half of a `receipts` action, run as a connection job.
pub enum ReceiptsJob {
    Read {
        user: crate::hub::presence::UserKey,
        marks: Vec<crate::proto::ReadMark>,
        reply: crate::outbox::Reply,
    },
    Sync {
        user: crate::hub::presence::UserKey,
        device: u64,
        outbox: std::sync::Arc<crate::outbox::Outbox>,
        reply: crate::outbox::Reply,
    },
    Status {
        user: crate::hub::presence::UserKey,
        room: RoomName,
        reply: crate::outbox::Reply,
    },
}

impl Session {
    pub(super) fn receipts(
        &mut self,
        lane: LaneId,
        req: u64,
        action: ReceiptAction,
        now_ms: u64,
    ) -> Result<(), Failure> {
        if lane != CONTROL {
            return Err(Failure::Fatal(ErrorCode::WRONG_STREAM, "receipts belong on the control stream".into()));
        }
        if !self.receipts_bucket.try_take(now_ms) {
            return Err(Failure::reject(ErrorCode::RATE_LIMITED, "receipts frames above receipts.rate"));
        }
        let user = self.active()?.user.clone();
        let job = match action {
            ReceiptAction::Sync {} => ReceiptsJob::Sync {
                user,
                device: self.id,
                outbox: self.outbox.clone(),
                reply: self.outbox.reserve(lane, req),
            },
            ReceiptAction::Read { marks } => ReceiptsJob::Read { user, marks, reply: self.outbox.reserve(lane, req) },
            ReceiptAction::Status { room } => {
                let room = super::parse_room(&room)?;
                ReceiptsJob::Status { user, room, reply: self.outbox.reserve(lane, req) }
            }
            ReceiptAction::Privacy { share_read } => {
                self.ctx.receipts.set_share_read(&user, share_read, self.outbox.reserve(lane, req));
                return Ok(());
            }
        };
        self.jobs.push(Job::Receipts(job));
        Ok(())
    }

    /// Checks a `publish_mentions` list: its length and each user id.
    pub(super) fn check_mentions(&self, mentions: &[String]) -> Result<(), Failure> {
        let max = self.ctx.receipts.max_mentions();
        let bad = |m: &String| m.is_empty() || m.len() > MAX_USER_ID_BYTES || m.chars().any(char::is_control);
        if mentions.len() > max || mentions.iter().any(bad) {
            let message =
                format!("mentions: at most {max} user ids of 1-{MAX_USER_ID_BYTES} bytes without control characters");
            return Err(Failure::reject(ErrorCode::BAD_MENTIONS, message));
        }
        Ok(())
    }

    /// The user left a room for good: it no longer follows it.
    pub(super) fn receipts_unfollow(&self, room: &RoomName) {
        if let Some(active) = &self.active {
            self.ctx.receipts.unfollow(&active.key(room), &active.identity.user);
        }
    }
}

/// Runs the async half of a `receipts` action.
pub async fn run(ctx: &super::SessionContext, job: ReceiptsJob) {
    match job {
        ReceiptsJob::Read { user, marks, reply } => ctx.receipts.read(user, marks, reply).await,
        ReceiptsJob::Sync { user, device, outbox, reply } => ctx.receipts.sync(user, device, outbox, reply).await,
        ReceiptsJob::Status { user, room, mut reply } => {
            let req = reply.req();
            let frame = match ctx.receipts.status(&user, &room).await {
                Ok(event) => ServerFrame::Receipts { req, event },
                Err((code, message)) => ServerFrame::error(req, code, message),
            };
            let _ = reply.send(&frame);
        }
    }
}
