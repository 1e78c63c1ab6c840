//! The 1:1 call state machine: one [`Call`] per call, sans-IO. Every input carries `now_ms`;
//! every successful input returns an [`Output`]: the events to deliver (to a user's devices or to
//! one device) and the timers to arm. A refused input returns a [`CallError`] and changes nothing.
//! See the module docs (`super`) for the diagram and `docs/calls.md` for what clients see.

use super::types::{
    CallConfig, CallError, CallId, CallState, CallSummary, EndReason, Event, EventKind, Initiate, Media, Output,
    Recipient, Side, Timer, TimerKind,
};
use crate::hub::presence::{DeviceId, UserKey};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Ringing { until_ms: u64 },
    Answered,
    Ended(EndReason),
}

/// One side's presence in the call.
#[derive(Debug, Clone, Copy, Default)]
struct Leg {
    /// The device in the call; `None` while the side is away (and before the callee answers).
    device: Option<DeviceId>,
    /// The side's grace deadline while it is away.
    away_until_ms: Option<u64>,
}

/// One 1:1 call.
#[derive(Debug, Clone)]
pub struct Call {
    id: CallId,
    config: CallConfig,
    caller: UserKey,
    callee: UserKey,
    media: Media,
    phase: Phase,
    caller_leg: Leg,
    callee_leg: Leg,
    /// Callee devices ringing now, in the order they started.
    ringing: Vec<DeviceId>,
    placed_from: DeviceId,
    answered_on: Option<DeviceId>,
    started_ms: u64,
    answered_ms: Option<u64>,
    ended_ms: Option<u64>,
}

impl Call {
    /// Starts a call: it rings on each of `callee_devices`, or ends at once as `busy`. The
    /// returned call is kept (also when it ended) so its summary reaches the history.
    pub fn initiate(id: CallId, req: Initiate, config: CallConfig, now_ms: u64) -> Result<(Call, Output), CallError> {
        if req.caller.tenant != req.callee.tenant {
            return Err(CallError::CrossTenant);
        }
        if req.caller == req.callee {
            return Err(CallError::SelfCall);
        }
        let until_ms = now_ms.saturating_add(config.ring_timeout_ms);
        let mut call = Call {
            id,
            config,
            caller: req.caller,
            callee: req.callee,
            media: req.media,
            phase: Phase::Ringing { until_ms },
            caller_leg: Leg { device: Some(req.caller_device), away_until_ms: None },
            callee_leg: Leg::default(),
            ringing: Vec::new(),
            placed_from: req.caller_device,
            answered_on: None,
            started_ms: now_ms,
            answered_ms: None,
            ended_ms: None,
        };
        let mut out = Output::default();
        if req.callee_in_call && config.busy_when_in_call {
            call.end(EndReason::Busy, now_ms, &mut out);
            return Ok((call, out));
        }
        call.push_state(&mut out);
        for device in req.callee_devices {
            call.ring(device, &mut out);
        }
        out.timers.push(Timer { kind: TimerKind::Ring, at_ms: until_ms });
        Ok((call, out))
    }

    /// The callee answers on `device`, which must be ringing. The others stop ringing.
    pub fn answer(&mut self, user: &UserKey, device: DeviceId, now_ms: u64) -> Result<Output, CallError> {
        let side = self.live_side(user)?;
        if side != Side::Callee {
            return Err(CallError::OnlyCallee);
        }
        let Phase::Ringing { until_ms } = self.phase else { return Err(CallError::AlreadyAnswered) };
        if now_ms >= until_ms {
            return Err(CallError::TimedOut);
        }
        if !self.ringing.contains(&device) {
            return Err(CallError::NotRinging(device));
        }
        self.phase = Phase::Answered;
        self.answered_ms = Some(now_ms);
        self.answered_on = Some(device);
        self.callee_leg.device = Some(device);
        let others: Vec<DeviceId> = self.ringing.drain(..).filter(|d| *d != device).collect();
        let mut out = Output::default();
        self.push_state(&mut out);
        for other in others {
            out.events.push(Event { to: self.device(Side::Callee, other), kind: EventKind::AnsweredElsewhere });
        }
        Ok(out)
    }

    /// The callee declines (from any of their devices) while the call rings.
    pub fn reject(&mut self, user: &UserKey, now_ms: u64) -> Result<Output, CallError> {
        self.end_while_ringing(user, Side::Callee, EndReason::Rejected, now_ms)
    }

    /// The caller gives up (from any of their devices) while the call rings.
    pub fn cancel(&mut self, user: &UserKey, now_ms: u64) -> Result<Output, CallError> {
        self.end_while_ringing(user, Side::Caller, EndReason::Cancelled, now_ms)
    }

    /// Either side leaves the call, in any live state: while it rings this is a cancel (caller)
    /// or a reject (callee); once answered, `hangup` by that side. Clients send this for "end
    /// call", so a hang-up that crosses an answer still ends the call.
    pub fn hang_up(&mut self, user: &UserKey, now_ms: u64) -> Result<Output, CallError> {
        let side = self.live_side(user)?;
        let reason = match (self.phase, side) {
            (Phase::Ringing { .. }, Side::Caller) => EndReason::Cancelled,
            (Phase::Ringing { .. }, Side::Callee) => EndReason::Rejected,
            _ => EndReason::Hangup { by: side },
        };
        let mut out = Output::default();
        self.end(reason, now_ms, &mut out);
        Ok(out)
    }

    /// A device of a side that is reconnecting takes the call back: the device that dropped
    /// (under its new id) or any other device of that user.
    pub fn rejoin(&mut self, user: &UserKey, device: DeviceId, now_ms: u64) -> Result<Output, CallError> {
        let side = self.live_side(user)?;
        let leg = self.leg_mut(side);
        let Some(until_ms) = leg.away_until_ms else { return Err(CallError::NotReconnecting) };
        if now_ms >= until_ms {
            return Err(CallError::TimedOut);
        }
        *leg = Leg { device: Some(device), away_until_ms: None };
        let mut out = Output::default();
        self.push_state(&mut out);
        Ok(out)
    }

    /// A device of a participant connected. A callee device that connects while the call rings
    /// starts ringing; anything else changes nothing (a returning side uses [`Call::rejoin`]).
    pub fn device_connected(&mut self, user: &UserKey, device: DeviceId, now_ms: u64) -> Result<Output, CallError> {
        let side = self.live_side(user)?;
        let mut out = Output::default();
        if let Phase::Ringing { until_ms } = self.phase
            && side == Side::Callee
            && now_ms < until_ms
            && !self.ringing.contains(&device)
        {
            self.ring(device, &mut out);
        }
        Ok(out)
    }

    /// A device of a participant disconnected. A ringing callee device stops ringing (nothing is
    /// sent: it is gone); the caller's device dropping while it rings ends the call; a device in
    /// an answered call dropping starts its side's grace period.
    pub fn device_disconnected(&mut self, user: &UserKey, device: DeviceId, now_ms: u64) -> Result<Output, CallError> {
        let side = self.live_side(user)?;
        let mut out = Output::default();
        let in_call = self.leg_mut(side).device == Some(device);
        match (self.phase, side) {
            (Phase::Ringing { .. }, Side::Callee) => self.ringing.retain(|d| *d != device),
            (Phase::Ringing { .. }, Side::Caller) if in_call => {
                self.end(EndReason::ConnectionLost { side }, now_ms, &mut out);
            }
            (Phase::Answered, _) if in_call => {
                let at_ms = now_ms.saturating_add(self.config.reconnect_grace_ms);
                *self.leg_mut(side) = Leg { device: None, away_until_ms: Some(at_ms) };
                self.push_state(&mut out);
                out.timers.push(Timer { kind: TimerKind::Grace(side), at_ms });
            }
            _ => {}
        }
        Ok(out)
    }

    /// Applies the deadlines that passed: the ring timeout (`missed`) or a side's grace
    /// (`connection_lost`). Call it when a [`Timer`] fires; a stale timer returns nothing.
    pub fn on_timeout(&mut self, now_ms: u64) -> Output {
        let mut out = Output::default();
        match self.phase {
            Phase::Ringing { until_ms } if now_ms >= until_ms => self.end(EndReason::Missed, now_ms, &mut out),
            Phase::Answered => {
                let due =
                    [(Side::Caller, self.caller_leg.away_until_ms), (Side::Callee, self.callee_leg.away_until_ms)]
                        .into_iter()
                        .filter_map(|(side, until)| until.filter(|u| *u <= now_ms).map(|u| (u, side)))
                        .min_by_key(|(until, _)| *until);
                if let Some((_, side)) = due {
                    self.end(EndReason::ConnectionLost { side }, now_ms, &mut out);
                }
            }
            _ => {}
        }
        out
    }

    /// When [`Call::on_timeout`] has something to do next, if ever.
    pub fn next_deadline(&self) -> Option<u64> {
        match self.phase {
            Phase::Ringing { until_ms } => Some(until_ms),
            Phase::Answered => {
                [self.caller_leg.away_until_ms, self.callee_leg.away_until_ms].into_iter().flatten().min()
            }
            Phase::Ended(_) => None,
        }
    }

    pub fn id(&self) -> CallId {
        self.id
    }

    pub fn caller(&self) -> &UserKey {
        &self.caller
    }

    pub fn callee(&self) -> &UserKey {
        &self.callee
    }

    pub fn media(&self) -> Media {
        self.media
    }

    /// Which side `user` is, if a participant.
    pub fn side_of(&self, user: &UserKey) -> Option<Side> {
        if *user == self.caller {
            Some(Side::Caller)
        } else if *user == self.callee {
            Some(Side::Callee)
        } else {
            None
        }
    }

    /// The callee devices ringing now, in the order they started.
    pub fn ringing(&self) -> &[DeviceId] {
        &self.ringing
    }

    /// Answered and not ended: the callee counts as in a call for `busy`.
    pub fn is_answered(&self) -> bool {
        self.phase == Phase::Answered
    }

    pub fn is_ended(&self) -> bool {
        matches!(self.phase, Phase::Ended(_))
    }

    /// The state (as the callee sees it; the caller sees `NoAnswer` for `Missed`).
    pub fn state(&self) -> CallState {
        match self.phase {
            Phase::Ringing { .. } => CallState::Ringing,
            Phase::Ended(reason) => CallState::Ended { reason },
            Phase::Answered => match (self.caller_leg, self.callee_leg) {
                (Leg { device: Some(caller_device), .. }, Leg { device: Some(callee_device), .. }) => {
                    CallState::Connected { caller_device, callee_device }
                }
                (caller, callee) => CallState::Reconnecting {
                    caller_until_ms: caller.away_until_ms,
                    callee_until_ms: callee.away_until_ms,
                },
            },
        }
    }

    /// The state as one side is told it (a state sync for a device that connects mid-call).
    pub fn state_for(&self, side: Side) -> CallState {
        match (self.state(), side) {
            (CallState::Ended { reason: EndReason::Missed }, Side::Caller) => {
                CallState::Ended { reason: EndReason::NoAnswer }
            }
            (state, _) => state,
        }
    }

    pub fn summary(&self) -> CallSummary {
        let reason = match self.phase {
            Phase::Ended(reason) => Some(reason),
            _ => None,
        };
        let duration_ms = self.ended_ms.map(|end| self.answered_ms.map_or(0, |answered| end.saturating_sub(answered)));
        CallSummary {
            id: self.id,
            caller: self.caller.clone(),
            callee: self.callee.clone(),
            media: self.media,
            caller_device: self.placed_from,
            callee_device: self.answered_on,
            started_ms: self.started_ms,
            answered_ms: self.answered_ms,
            ended_ms: self.ended_ms,
            reason,
            duration_ms,
        }
    }

    /// The side of a participant of a call that has not ended. Non-participants are refused
    /// first, so they learn nothing about the call.
    fn live_side(&self, user: &UserKey) -> Result<Side, CallError> {
        let side = self.side_of(user).ok_or(CallError::NotParticipant)?;
        match self.phase {
            Phase::Ended(reason) => Err(CallError::Ended(reason)),
            _ => Ok(side),
        }
    }

    fn end_while_ringing(
        &mut self,
        user: &UserKey,
        who: Side,
        reason: EndReason,
        now_ms: u64,
    ) -> Result<Output, CallError> {
        let side = self.live_side(user)?;
        if side != who {
            return Err(if who == Side::Caller { CallError::OnlyCaller } else { CallError::OnlyCallee });
        }
        if !matches!(self.phase, Phase::Ringing { .. }) {
            return Err(CallError::AlreadyAnswered);
        }
        let mut out = Output::default();
        self.end(reason, now_ms, &mut out);
        Ok(out)
    }

    fn end(&mut self, reason: EndReason, now_ms: u64, out: &mut Output) {
        self.phase = Phase::Ended(reason);
        self.ended_ms = Some(now_ms);
        self.ringing.clear();
        self.caller_leg.away_until_ms = None;
        self.callee_leg.away_until_ms = None;
        self.push_state(out);
    }

    fn ring(&mut self, device: DeviceId, out: &mut Output) {
        if self.ringing.contains(&device) {
            return;
        }
        self.ringing.push(device);
        let kind = EventKind::Ring { caller: self.caller.clone(), media: self.media };
        out.events.push(Event { to: self.device(Side::Callee, device), kind });
    }

    /// The state to both users, the caller first.
    fn push_state(&self, out: &mut Output) {
        for side in [Side::Caller, Side::Callee] {
            out.events.push(Event {
                to: Recipient::User(self.user(side).clone()),
                kind: EventKind::State(self.state_for(side)),
            });
        }
    }

    fn user(&self, side: Side) -> &UserKey {
        match side {
            Side::Caller => &self.caller,
            Side::Callee => &self.callee,
        }
    }

    fn device(&self, side: Side, device: DeviceId) -> Recipient {
        Recipient::Device { user: self.user(side).clone(), device }
    }

    fn leg_mut(&mut self, side: Side) -> &mut Leg {
        match side {
            Side::Caller => &mut self.caller_leg,
            Side::Callee => &mut self.callee_leg,
        }
    }
}
