//! A client that survives disconnections: it reconnects by itself (exponential backoff with full
//! jitter), rejoins every room from the last position it saw, and retries every unacknowledged
//! publish with its original id until the relay acknowledges it. The application sees each
//! room's messages once and in order, across any number of reconnects.
//!
//! Exactly-once on both sides rests on the relay: a retried id within the dedupe window returns
//! the original position and is not delivered again, and a rejoin with `since` replays exactly
//! the missed offsets. This client only has to keep ids and positions, and drop a message whose
//! offset it already has (one can arrive twice if a connection died mid-replay, and after a
//! network change, when a catch-up from history overtakes the room's stream).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::{Client, ClientError, ClientOptions, Event, HistoryPage, Message, Target};
use crate::proto::{ErrorCode, Payload, Position};

/// How to reconnect.
#[derive(Debug, Clone)]
pub struct Reconnect {
    /// First retry delay ceiling; doubles per failed attempt up to `max_delay`.
    pub base_delay: Duration,
    pub max_delay: Duration,
    /// On the first connection, also join every room the relay says this user follows, from
    /// the last position it knows they have (offline replay).
    pub follow_rooms: bool,
}

impl Default for Reconnect {
    fn default() -> Self {
        Reconnect { base_delay: Duration::from_millis(100), max_delay: Duration::from_secs(5), follow_rooms: false }
    }
}

impl Reconnect {
    /// The delay before attempt `attempt` (0-based): uniform in `[0, min(max, base * 2^attempt)]`
    /// ("full jitter"), so a crowd of clients does not come back in lockstep.
    pub fn delay(&self, attempt: u32) -> Duration {
        let ceiling = self.base_delay.saturating_mul(1u32 << attempt.min(16)).min(self.max_delay);
        ceiling.mul_f64(rand::random::<f64>())
    }
}

/// What the application sees.
#[derive(Debug, Clone, PartialEq)]
pub enum ResilientEvent {
    /// A room's next message (never a duplicate).
    Message(Message),
    /// A connection was established (`attempt` 0 is the first).
    Connected { attempt: u64 },
    /// The connection was lost; the client is reconnecting.
    Disconnected { code: Option<ErrorCode>, reason: String },
    /// The relay could not replay what this client missed in `room` (history no longer covers it,
    /// or it was lost, also while connected: a message of a new epoch arrived): messages continue
    /// after `position`; reload older state elsewhere.
    NotRecovered { room: String, position: Position },
}

struct Unacked {
    room: String,
    id: String,
    data: Payload,
    waiters: Vec<oneshot::Sender<Position>>,
}

/// State shared by the handle and the driver task.
#[derive(Default)]
struct State {
    /// Joined rooms and the last position the application received in each.
    rooms: BTreeMap<String, Option<Position>>,
    /// When each room last delivered a message: a catch-up asks the busiest rooms first.
    delivered_at: HashMap<String, Instant>,
    /// Publishes not yet acknowledged, in the order they were made.
    unacked: VecDeque<Unacked>,
}

enum Command {
    Join(String),
    /// The device's network changed or came back (see [`Resilient::network_changed`]).
    NetworkChanged,
    /// Send the unacked publish with this room and id.
    Publish {
        room: String,
        id: String,
    },
}

pub struct Resilient {
    state: Arc<Mutex<State>>,
    commands: mpsc::UnboundedSender<Command>,
    events: mpsc::Receiver<ResilientEvent>,
    /// Stops the driver when the handle is dropped.
    _stop: tokio_util::sync::DropGuard,
    driver: tokio::task::JoinHandle<()>,
}

impl State {
    /// The messages of a catch-up page the application does not have yet, recorded as
    /// delivered; none unless the page continues right after the last one it has, in the same
    /// epoch (what is not covered comes on the room's stream).
    fn accept_page(&mut self, room: &str, page: HistoryPage) -> Vec<Message> {
        let Some(Some(last)) = self.rooms.get_mut(room) else { return Vec::new() };
        let epoch = page.position.epoch;
        let missed: Vec<_> = page.messages.into_iter().filter(|m| m.offset > last.offset).collect();
        if epoch != last.epoch || missed.first().is_none_or(|m| m.offset != last.offset + 1) {
            return Vec::new();
        }
        let messages: Vec<Message> = missed
            .into_iter()
            .map(|m| Message {
                room: room.to_owned(),
                position: Position { epoch, offset: m.offset },
                from: m.from,
                time: m.time,
                id: m.id,
                data: m.data,
            })
            .collect();
        if let Some(newest) = messages.last() {
            *last = newest.position;
            self.delivered(room);
        }
        messages
    }

    /// Notes that `room` delivered a message now (no allocation once the room has an entry).
    fn delivered(&mut self, room: &str) {
        let now = Instant::now();
        match self.delivered_at.get_mut(room) {
            Some(at) => *at = now,
            None => {
                self.delivered_at.insert(room.to_owned(), now);
            }
        }
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

impl Resilient {
    /// Starts connecting in the background; events report when a connection is up.
    pub fn start(target: Target, options: ClientOptions, reconnect: Reconnect) -> Resilient {
        Self::start_any(vec![target], options, reconnect)
    }

    /// Like [`Resilient::start`] with several relays of one region (or one cluster): a failed
    /// attempt moves on to the next target, so the client resumes on another node when its
    /// node is gone. Rooms, positions and unacked publishes carry over; with a shared engine
    /// (Redis) the resume is exact on any node.
    pub fn start_any(targets: Vec<Target>, options: ClientOptions, reconnect: Reconnect) -> Resilient {
        let state = Arc::new(Mutex::new(State::default()));
        let (commands, commands_rx) = mpsc::unbounded_channel();
        let (events_tx, events) = mpsc::channel(options.event_buffer.max(1));
        let cancel = CancellationToken::new();
        let driver =
            Driver { targets, options, reconnect, state: state.clone(), events: events_tx, cancel: cancel.clone() };
        let driver = tokio::spawn(driver.run(commands_rx));
        Resilient { state, commands, events, _stop: cancel.drop_guard(), driver }
    }

    /// Joins a room (now if connected, else on connect) and keeps it joined across reconnects.
    pub fn join(&self, room: &str) {
        self.join_since(room, None)
    }

    /// Joins a room from a position the application kept (e.g. across app restarts).
    pub fn join_since(&self, room: &str, since: Option<Position>) {
        lock(&self.state).rooms.entry(room.to_owned()).or_insert(since);
        let _ = self.commands.send(Command::Join(room.to_owned()));
    }

    /// The last position received in each joined room.
    pub fn positions(&self) -> BTreeMap<String, Option<Position>> {
        lock(&self.state).rooms.clone()
    }

    /// Publishes and waits until the relay acknowledged it, however many reconnects that takes.
    /// The message is stored once even if it is sent several times. `Err` only after `close`.
    pub async fn publish(&self, room: &str, id: &str, data: impl Into<Payload>) -> Result<Position, ClientError> {
        let (tx, rx) = oneshot::channel();
        {
            let mut state = lock(&self.state);
            match state.unacked.iter_mut().find(|u| u.room == room && u.id == id) {
                Some(existing) => existing.waiters.push(tx),
                None => state.unacked.push_back(Unacked {
                    room: room.to_owned(),
                    id: id.to_owned(),
                    data: data.into(),
                    waiters: vec![tx],
                }),
            }
        }
        let _ = self.commands.send(Command::Publish { room: room.to_owned(), id: id.to_owned() });
        rx.await.map_err(|_| ClientError::Closed { code: None, reason: "client closed".into() })
    }

    /// Tells the client its network changed or came back: call it from the OS's path monitor
    /// (a new Wi-Fi or cellular path, the end of an outage). Connected over QUIC, the connection
    /// moves to a new socket and is probed at once ([`Client::network_changed`]), so what was
    /// sent during an outage moves on within two round trips instead of at the next backed-off
    /// probe timeout; and each room (the [`MAX_CATCH_UP_ROOMS`] most recently active) asks, on a
    /// stream of its own, for what it holds after the application's last message
    /// ([`Client::histories_after`]), so that arrives one round trip after the network returns.
    /// A connection that answers no ping within [`NETWORK_PROBE`] is replaced (a WebSocket dies
    /// with its path). Reconnecting, the client stops waiting out its backoff and tries at once,
    /// the backoff starting again from `base_delay`.
    pub fn network_changed(&self) {
        let _ = self.commands.send(Command::NetworkChanged);
    }

    pub async fn next_event(&mut self) -> Option<ResilientEvent> {
        self.events.recv().await
    }

    /// The next message, skipping connection events.
    pub async fn next_message(&mut self) -> Option<Message> {
        loop {
            match self.events.recv().await? {
                ResilientEvent::Message(m) => return Some(m),
                _ => continue,
            }
        }
    }

    /// Stops reconnecting and closes the connection.
    pub async fn close(self) {
        let Resilient { _stop, driver, .. } = self;
        drop(_stop);
        let _ = tokio::time::timeout(Duration::from_secs(3), driver).await;
    }
}

struct Driver {
    /// Tried in turn: the one that worked last first, the next after a failed attempt.
    targets: Vec<Target>,
    options: ClientOptions,
    reconnect: Reconnect,
    state: Arc<Mutex<State>>,
    events: mpsc::Sender<ResilientEvent>,
    cancel: CancellationToken,
}

/// What [`Driver::accept`] made of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Accepted {
    Next,
    /// The first of a new epoch: the relay lost the room's history.
    NewEpoch,
    /// The application has it already.
    Duplicate,
}

/// At most this many rooms are caught up after a network change (the most recently active).
pub const MAX_CATCH_UP_ROOMS: usize = 32;
/// Messages asked per room in a catch-up (the relay's largest history page).
const CATCH_UP_PAGE: u32 = 100;

/// How long a connection gets to answer a ping after the network changed before the client
/// gives it up and reconnects.
pub const NETWORK_PROBE: Duration = Duration::from_secs(3);

/// Waits for a network change among `commands`, dropping the others: joins and publishes made
/// while disconnected are in the state, which the next connection sends in full. `false` when
/// the handle is gone.
async fn network_change(commands: &mut mpsc::UnboundedReceiver<Command>) -> bool {
    loop {
        match commands.recv().await {
            Some(Command::NetworkChanged) => return true,
            Some(_) => {}
            None => return false,
        }
    }
}

/// Why one connection's session ended.
enum Ended {
    Lost { code: Option<ErrorCode>, reason: String, wait: Duration },
    Stopped,
}

impl Driver {
    async fn run(self, mut commands: mpsc::UnboundedReceiver<Command>) {
        let mut connections = 0u64;
        let mut failures = 0u32;
        let mut next = 0usize;
        let mut wait = Duration::ZERO;
        loop {
            // The network coming back (or changing) ends the wait, and resets the backoff.
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
                changed = network_change(&mut commands) => {
                    if !changed { return }
                    failures = 0;
                }
            }
            let Some(target) = self.targets.get(next % self.targets.len().max(1)).cloned() else { return };
            // An attempt under way on the old network (its handshake retransmissions backed off)
            // is given up for a fresh one.
            let client = tokio::select! {
                _ = self.cancel.cancelled() => return,
                connected = Client::connect(target, self.options.clone()) => connected,
                changed = network_change(&mut commands) => {
                    if !changed { return }
                    (failures, wait) = (0, Duration::ZERO);
                    continue;
                }
            };
            let client = match client {
                Ok(client) => client,
                Err(err) => {
                    tracing::debug!(%err, "reconnect attempt failed");
                    next = next.wrapping_add(1);
                    wait = self.reconnect.delay(failures);
                    failures = failures.saturating_add(1);
                    continue;
                }
            };
            failures = 0;
            let _ = self.events.send(ResilientEvent::Connected { attempt: connections }).await;
            let first = connections == 0;
            connections += 1;
            match self.session(client, &mut commands, first).await {
                Ended::Stopped => return,
                Ended::Lost { code, reason, wait: after } => {
                    let _ = self.events.send(ResilientEvent::Disconnected { code, reason }).await;
                    wait = after.max(self.reconnect.delay(0));
                }
            }
        }
    }

    /// Serves one connection: rejoin, resend, then relay events and commands until it ends.
    async fn session(&self, mut client: Client, commands: &mut mpsc::UnboundedReceiver<Command>, first: bool) -> Ended {
        // Requests run as tasks sharing the client; this loop alone reads its events.
        let mut client_events = client.take_events();
        let client = Arc::new(client);
        let ended = self.serve(&client, &mut client_events, commands, first).await;
        client.abort();
        ended
    }

    async fn serve(
        &self,
        client: &Arc<Client>,
        client_events: &mut mpsc::Receiver<Event>,
        commands: &mut mpsc::UnboundedReceiver<Command>,
        first: bool,
    ) -> Ended {
        if first
            && self.reconnect.follow_rooms
            && let Ok(followed) = client.followed_rooms().await
        {
            let mut state = lock(&self.state);
            for f in followed {
                state.rooms.entry(f.room).or_insert(Some(f.position));
            }
        }
        let mut requests: JoinSet<Result<(), ClientError>> = JoinSet::new();
        // Each room is joined once per connection: a `join` queued before the connection came
        // up is already covered by the rejoin of every known room.
        let mut joined: HashSet<String> = lock(&self.state).rooms.keys().cloned().collect();
        let mut probing: Option<tokio::task::AbortHandle> = None;
        let (caught_up, mut caught_up_rx) = mpsc::unbounded_channel::<(String, HistoryPage)>();
        for room in joined.iter().cloned() {
            self.rejoin(&mut requests, client, room);
        }
        let unacked: Vec<(String, String)> =
            lock(&self.state).unacked.iter().map(|u| (u.room.clone(), u.id.clone())).collect();
        for (room, id) in unacked {
            self.resend(&mut requests, client, room, id);
        }
        loop {
            tokio::select! {
                _ = self.cancel.cancelled() => return Ended::Stopped,
                command = commands.recv() => match command {
                    Some(Command::Join(room)) => {
                        if joined.insert(room.clone()) {
                            self.rejoin(&mut requests, client, room);
                        }
                    }
                    Some(Command::Publish { room, id }) => self.resend(&mut requests, client, room, id),
                    Some(Command::NetworkChanged) => {
                        // The network changed again: the previous probe's answer no longer tells.
                        if let Some(previous) = probing.replace(Self::probe(&mut requests, client)) {
                            previous.abort();
                        }
                        if !client.is_websocket() {
                            self.catch_up(&mut requests, client, caught_up.clone());
                        }
                    }
                    None => return Ended::Stopped,
                },
                Some((room, page)) = caught_up_rx.recv() => {
                    let messages = lock(&self.state).accept_page(&room, page);
                    for m in messages {
                        if self.events.send(ResilientEvent::Message(m)).await.is_err() {
                            return Ended::Stopped;
                        }
                    }
                }
                Some(done) = requests.join_next(), if !requests.is_empty() => match done {
                    // No answer at all: the connection is not healthy, whatever it looks like.
                    // Reconnecting sends every join and unacked publish again.
                    Ok(Err(ClientError::Timeout(after))) => {
                        let reason = format!("a request got no answer within {after:?}");
                        return Ended::Lost { code: None, reason, wait: Duration::ZERO };
                    }
                    Ok(Err(err)) => tracing::debug!(%err, "request failed; retried after reconnecting"),
                    _ => {}
                },
                event = client_events.recv() => match event {
                    Some(Event::Message(m)) => {
                        let accepted = self.accept(&m);
                        if accepted == Accepted::NewEpoch {
                            // The relay lost the room's history while connected: say so first.
                            let position = Position { epoch: m.position.epoch, offset: m.position.offset.saturating_sub(1) };
                            let told = ResilientEvent::NotRecovered { room: m.room.clone(), position };
                            if self.events.send(told).await.is_err() {
                                return Ended::Stopped;
                            }
                        }
                        if accepted != Accepted::Duplicate && self.events.send(ResilientEvent::Message(m)).await.is_err() {
                            return Ended::Stopped;
                        }
                    }
                    Some(Event::GoAway { code, reason, reconnect_after }) => {
                        return Ended::Lost { code: Some(code), reason, wait: reconnect_after };
                    }
                    Some(Event::Closed { code, reason }) => return Ended::Lost { code, reason, wait: Duration::ZERO },
                    // The connection found an outage's end itself and moved, as after a
                    // network change: catch up the same way.
                    Some(Event::PathBack) => self.catch_up(&mut requests, client, caught_up.clone()),
                    None => return Ended::Lost { code: None, reason: "connection lost".into(), wait: Duration::ZERO },
                    Some(_) => {}
                },
            }
        }
    }

    /// Records a message's position, unless the application already has it.
    fn accept(&self, m: &Message) -> Accepted {
        let mut state = lock(&self.state);
        let Some(last) = state.rooms.get_mut(&m.room) else { return Accepted::Duplicate };
        let accepted = match last {
            Some(last) if last.epoch == m.position.epoch && m.position.offset <= last.offset => {
                return Accepted::Duplicate;
            }
            Some(last) if last.epoch != m.position.epoch => Accepted::NewEpoch,
            _ => Accepted::Next,
        };
        *last = Some(m.position);
        state.delivered(&m.room);
        accepted
    }

    /// After a network change on QUIC or WebTransport: asks for what each room (the
    /// [`MAX_CATCH_UP_ROOMS`] that delivered most recently) holds after the last message the
    /// application has, on a stream of its own ([`Client::histories_after`]). The relay
    /// answers from its store as soon as it hears the new path, while the rooms' streams wait
    /// a round trip more for QUIC to learn what the outage lost and resend it; those copies
    /// arrive later and are dropped as duplicates. Failures are ignored: the rooms' streams
    /// deliver everything anyway.
    fn catch_up(
        &self,
        requests: &mut JoinSet<Result<(), ClientError>>,
        client: &Arc<Client>,
        caught_up: mpsc::UnboundedSender<(String, HistoryPage)>,
    ) {
        let rooms: Vec<(String, u64)> = {
            let state = lock(&self.state);
            let mut rooms: Vec<(Option<Instant>, String, u64)> = state
                .rooms
                .iter()
                .filter_map(|(room, last)| {
                    Some((state.delivered_at.get(room).copied(), room.clone(), last.as_ref()?.offset))
                })
                .collect();
            rooms.sort_by_key(|(at, _, _)| std::cmp::Reverse(*at));
            rooms.into_iter().take(MAX_CATCH_UP_ROOMS).map(|(_, room, offset)| (room, offset)).collect()
        };
        if rooms.is_empty() {
            return;
        }
        let client = client.clone();
        requests.spawn(async move {
            let asked: Vec<(&str, u64)> = rooms.iter().map(|(room, after)| (room.as_str(), *after)).collect();
            let pages = client.histories_after(&asked, CATCH_UP_PAGE).await;
            for ((room, _), page) in rooms.into_iter().zip(pages) {
                match page {
                    Ok(page) => {
                        let _ = caught_up.send((room, page));
                    }
                    Err(err) => tracing::debug!(%err, room, "catch-up after a network change"),
                }
            }
            Ok(())
        });
    }

    fn rejoin(&self, requests: &mut JoinSet<Result<(), ClientError>>, client: &Arc<Client>, room: String) {
        let since = lock(&self.state).rooms.get(&room).copied().flatten();
        let (client, state, events) = (client.clone(), self.state.clone(), self.events.clone());
        let reconnect = self.reconnect.clone();
        requests.spawn(async move {
            let joined = retrying(&reconnect, || client.join_since(&room, since)).await?;
            if !joined.recovered && since.is_some() {
                // Continue from the top; say so, so the application can reload older state.
                if let Some(last) = lock(&state).rooms.get_mut(&room) {
                    *last = Some(joined.position);
                }
                let _ = events.send(ResilientEvent::NotRecovered { room, position: joined.position }).await;
            } else if since.is_none()
                && let Some(last) = lock(&state).rooms.get_mut(&room)
            {
                last.get_or_insert(joined.position);
            }
            Ok(())
        });
    }

    /// After a network change: moves a QUIC connection to the new path and probes it from new
    /// sockets until the relay is heard ([`Client::probe_path`]): the OS may report the network
    /// before packets flow, and a lost probe would leave the connection to its backed-off probe
    /// timeout. A WebSocket is pinged. A connection not heard from within [`NETWORK_PROBE`] is
    /// given up (a timeout ends the session): a WebSocket died with the old path, and a QUIC
    /// connection that cannot reach the relay over a working network is stuck in its backoff; a
    /// new one resumes from the last positions.
    fn probe(requests: &mut JoinSet<Result<(), ClientError>>, client: &Arc<Client>) -> tokio::task::AbortHandle {
        let client = client.clone();
        requests.spawn(async move {
            if let Err(err) = client.network_changed() {
                tracing::debug!(%err, "could not move to the new network");
            }
            match client.probe_path(NETWORK_PROBE).await {
                // Answered, or the connection ended (which its events report).
                Err(ClientError::Timeout(after)) => Err(ClientError::Timeout(after)),
                _ => Ok(()),
            }
        })
    }

    fn resend(&self, requests: &mut JoinSet<Result<(), ClientError>>, client: &Arc<Client>, room: String, id: String) {
        let Some(data) =
            lock(&self.state).unacked.iter().find(|u| u.room == room && u.id == id).map(|u| u.data.clone())
        else {
            return;
        };
        let (client, state) = (client.clone(), self.state.clone());
        let reconnect = self.reconnect.clone();
        requests.spawn(async move {
            let position = retrying(&reconnect, || client.publish(&room, &id, data.clone())).await?;
            let mut state = lock(&state);
            if let Some(i) = state.unacked.iter().position(|u| u.room == room && u.id == id)
                && let Some(done) = state.unacked.remove(i)
            {
                for waiter in done.waiters {
                    let _ = waiter.send(position);
                }
            }
            Ok(())
        });
    }
}

/// Sends a request again, with the reconnect backoff, while the relay refuses it with a
/// retryable code (its store briefly unavailable, a rate limit); anything else ends it. A
/// connection that ends cancels it; the next connection sends it again.
async fn retrying<T, Fut>(reconnect: &Reconnect, mut request: impl FnMut() -> Fut) -> Result<T, ClientError>
where
    Fut: std::future::Future<Output = Result<T, ClientError>>,
{
    let mut attempt = 0;
    loop {
        match request().await {
            Err(ClientError::Rejected { code, message }) if code.is_retryable() => {
                tracing::debug!(%code, %message, attempt, "refused for now; trying again");
                tokio::time::sleep(reconnect.delay(attempt).max(Duration::from_millis(10))).await;
                attempt = attempt.saturating_add(1);
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::HistoryEntry;

    fn page(epoch: u64, offsets: std::ops::Range<u64>) -> HistoryPage {
        let messages = offsets
            .map(|offset| HistoryEntry {
                offset,
                from: "bob".into(),
                time: 0,
                id: format!("m{offset}"),
                data: Payload::from("x"),
            })
            .collect();
        HistoryPage { position: Position { epoch, offset: 99 }, first: 1, messages }
    }

    fn holding(offset: u64) -> State {
        let mut state = State::default();
        state.rooms.insert("a".into(), Some(Position { epoch: 7, offset }));
        state
    }

    fn offsets(messages: &[Message]) -> Vec<u64> {
        messages.iter().map(|m| m.position.offset).collect()
    }

    #[test]
    fn a_catch_up_page_delivers_only_the_unbroken_run_after_what_the_application_holds() {
        // What the room's stream delivered meanwhile is not delivered again.
        let mut state = holding(12);
        assert_eq!(offsets(&state.accept_page("a", page(7, 11..16))), vec![13, 14, 15]);
        assert_eq!(state.rooms["a"], Some(Position { epoch: 7, offset: 15 }));
        assert!(state.accept_page("a", page(7, 11..16)).is_empty(), "a second copy is a duplicate");
        // A page that leaves a gap after the last offset held would lose the gap: none of it.
        assert!(holding(12).accept_page("a", page(7, 14..16)).is_empty());
        // Offsets of another epoch are not the ones held; an unjoined room has nothing to continue.
        assert!(holding(12).accept_page("a", page(8, 13..16)).is_empty());
        assert!(holding(12).accept_page("b", page(7, 13..16)).is_empty());
        let mut nothing_missed = holding(15);
        assert!(nothing_missed.accept_page("a", page(7, 16..16)).is_empty());
        assert_eq!(nothing_missed.rooms["a"], Some(Position { epoch: 7, offset: 15 }));
    }
}
