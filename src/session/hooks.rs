//! Backend hooks on a session's requests (docs/events.md, "Backend hooks"): which frames ask
//! the operator's backend first (`hello`: connect; `join`, `subscribe`: subscribe; `publish`:
//! publish), and what its answer does to them. The connection loop makes the call between the
//! two (`connection::handle`), so the session itself stays free of IO.

use bytes::Bytes;
use serde_json::json;

use super::{Failure, Fatal, Session};
use crate::hooks::{Hook, Outcome, call_body};
use crate::outbox::{CONTROL, LaneId};
use crate::proto::ClientFrame;

impl Session {
    /// The hook `frame` needs before it is handled, and the call's body; `None` when no
    /// configured hook covers it (or it will be refused anyway: a bad token, no `hello` yet).
    pub fn hook_call(&self, frame: &ClientFrame, now_ms: u64) -> Option<(Hook, Bytes)> {
        let hook = match frame {
            ClientFrame::Hello { .. } => Hook::Connect,
            ClientFrame::Join { .. } | ClientFrame::Subscribe { .. } => Hook::Subscribe,
            ClientFrame::Publish { .. } => Hook::Publish,
            _ => return None,
        };
        if !self.ctx.hooks.has(hook) {
            return None;
        }
        let (tenant, user) = match (frame, &self.active) {
            (ClientFrame::Hello { token, .. }, None) => {
                let identity = self.ctx.authenticate(token, now_ms / 1000).ok()?;
                (identity.tenant, identity.user)
            }
            (ClientFrame::Hello { .. }, Some(_)) | (_, None) => return None,
            (_, Some(active)) => (active.identity.tenant.clone(), active.identity.user.clone()),
        };
        let what = match frame {
            ClientFrame::Hello { client, .. } => json!({"client": client}),
            ClientFrame::Join { room, .. } => json!({"room": room}),
            ClientFrame::Subscribe { pattern, filter, .. } => json!({"topic": pattern, "filter": filter}),
            ClientFrame::Publish { room, id, data, .. } => json!({"room": room, "id": id, "data": data}),
            _ => return None,
        };
        Some((hook, call_body(hook, &tenant, &user, now_ms, what)))
    }

    /// Applies the backend's answer to the frame it was asked about: the frame to handle
    /// (rewritten if the backend said so), or `None` when it was refused (the error is queued;
    /// a refused `hello` closes the connection).
    pub fn settle_hook(
        &mut self,
        lane: LaneId,
        frame: ClientFrame,
        outcome: Outcome,
    ) -> Result<Option<ClientFrame>, Fatal> {
        match outcome {
            Outcome::Allow => Ok(Some(frame)),
            Outcome::Rewrite { data, filter } => Ok(Some(match frame {
                ClientFrame::Publish { req, room, id, data: old } => {
                    ClientFrame::Publish { req, room, id, data: data.unwrap_or(old) }
                }
                ClientFrame::Subscribe { req, pattern, filter: old, since } => {
                    ClientFrame::Subscribe { req, pattern, filter: filter.or(old), since }
                }
                other => other,
            })),
            Outcome::Deny { code, message } => {
                let req = match &frame {
                    ClientFrame::Join { req, .. }
                    | ClientFrame::Subscribe { req, .. }
                    | ClientFrame::Publish { req, .. } => *req,
                    _ => return Err(self.fatal(0, code, message)),
                };
                let outcome = self.answer(lane, req, Err(Failure::reject(code, message)));
                // As for any failed join: a room stream that carries nothing else is finished.
                if matches!(frame, ClientFrame::Join { .. }) && lane != CONTROL && !self.lanes.contains_key(&lane) {
                    self.outbox.close_lane(lane);
                }
                outcome.map(|()| None)
            }
        }
    }
}
