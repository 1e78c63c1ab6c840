//! User-space proxies between a client and a relay that apply a [`Profile`]: UDP (for QUIC) and
//! TCP (for WebSocket). No privileges needed; tests start one in front of a relay on loopback
//! and point the client at [`Proxy::local_addr`].
//!
//! The proxy owns the simulation's clock (time zero is when it started, so scheduled blackouts
//! and rebinds line up across flows and directions) and its tasks: every task is in one
//! [`TaskTracker`] under one [`CancellationToken`], and [`Proxy::shutdown`] has a deadline.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::delay;
use crate::model::{DropReason, Fate, LinkConfig, LinkModel};
use crate::profile::Profile;
use crate::stats::{Counters, DirectionCounters, Stats};
use crate::{tcp, udp};

/// How long [`Proxy::shutdown`] waits for the proxy's tasks.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Udp,
    Tcp,
}

/// What to proxy, where, and how badly.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// Where clients connect; port 0 picks a free one.
    pub listen: SocketAddr,
    /// The relay.
    pub upstream: SocketAddr,
    pub protocol: Protocol,
    pub profile: Profile,
    /// Seeds every flow's models; the same seed and traffic replay the same decisions.
    pub seed: u64,
}

impl ProxyConfig {
    /// A UDP proxy on a free loopback port in front of `upstream`.
    pub fn udp(upstream: SocketAddr, profile: Profile) -> Self {
        ProxyConfig { listen: loopback_any(upstream), upstream, protocol: Protocol::Udp, profile, seed: 1 }
    }

    /// A TCP proxy on a free loopback port in front of `upstream`.
    pub fn tcp(upstream: SocketAddr, profile: Profile) -> Self {
        ProxyConfig { protocol: Protocol::Tcp, ..ProxyConfig::udp(upstream, profile) }
    }

    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }
}

fn loopback_any(like: SocketAddr) -> SocketAddr {
    if like.is_ipv6() {
        SocketAddr::from(([0u16, 0, 0, 0, 0, 0, 0, 1], 0))
    } else {
        SocketAddr::from(([127, 0, 0, 1], 0))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("cannot bind {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("rebinding needs a new upstream socket: {0}")]
    Rebind(std::io::Error),
    #[error("only a UDP proxy can rebind or change its links")]
    NotUdp,
}

/// State every proxy task shares: the clock, the manual blackout switch, counters, tasks.
pub(crate) struct Core {
    /// The profile it started with (its name and rebinding schedule).
    pub(crate) profile: Profile,
    /// The links new flows get: the starting profile's until a [`Proxy::handover`] or
    /// [`Proxy::set_links`].
    links: std::sync::Mutex<Profile>,
    /// Cancelled by a handover: TCP connections made on the old path end with it.
    path: std::sync::Mutex<CancellationToken>,
    pub(crate) seed: u64,
    start: Instant,
    blackout: watch::Sender<bool>,
    pub(crate) counters: Counters,
    pub(crate) tasks: TaskTracker,
    pub(crate) cancel: CancellationToken,
}

impl Core {
    pub(crate) fn new(profile: Profile, seed: u64) -> Core {
        Core {
            links: std::sync::Mutex::new(profile.clone()),
            path: std::sync::Mutex::new(CancellationToken::new()),
            profile,
            seed,
            start: Instant::now(),
            blackout: watch::channel(false).0,
            counters: Counters::default(),
            tasks: TaskTracker::new(),
            cancel: CancellationToken::new(),
        }
    }

    pub(crate) fn set_blackout(&self, on: bool) {
        self.blackout.send_replace(on);
    }

    /// Cancels every task and waits for them, with a deadline.
    pub(crate) async fn shutdown(&self) {
        self.cancel.cancel();
        self.tasks.close();
        let _ = tokio::time::timeout(SHUTDOWN_DEADLINE, self.tasks.wait()).await;
    }

    /// Simulation time: how long since the proxy started.
    pub(crate) fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// The instant a simulation time stands for.
    pub(crate) fn instant(&self, at: Duration) -> Instant {
        self.start + at
    }

    pub(crate) fn blackout_on(&self) -> bool {
        *self.blackout.borrow()
    }

    /// Resolves when no manual blackout is on.
    pub(crate) async fn blackout_clear(&self) {
        let mut rx = self.blackout.subscribe();
        let _ = rx.wait_for(|on| !on).await;
    }

    /// The models for flow number `n`: (up, down), each with its own seed derived from the
    /// proxy's.
    pub(crate) fn models(&self, n: u64) -> (LinkModel, LinkModel) {
        let p = lock(&self.links);
        let blackouts = &self.profile.blackouts;
        (
            LinkModel::new(p.up.clone(), blackouts.clone(), splitmix(self.seed ^ (2 * n))),
            LinkModel::new(p.down.clone(), blackouts.clone(), splitmix(self.seed ^ (2 * n + 1))),
        )
    }

    /// A token for a connection made on the current path: cancelled with the proxy, or by the
    /// next handover.
    pub(crate) fn path_token(&self) -> CancellationToken {
        let path = lock(&self.path);
        let token = self.cancel.child_token();
        let on_path = path.clone();
        let child = token.clone();
        self.tasks.spawn(async move {
            tokio::select! {
                _ = on_path.cancelled() => child.cancel(),
                _ = child.cancelled() => {}
            }
        });
        token
    }

    /// Switches to `profile` for new flows, and ends the current path.
    pub(crate) fn switch_path(&self, profile: Profile) {
        *lock(&self.links) = profile;
        std::mem::replace(&mut *lock(&self.path), CancellationToken::new()).cancel();
    }

    /// Passes one packet through `model` and puts what survives on `line`.
    pub(crate) fn forward(
        &self,
        model: &std::sync::Mutex<LinkModel>,
        counters: &DirectionCounters,
        line: &delay::Sender<Vec<u8>>,
        packet: &[u8],
    ) {
        let fate = if self.blackout_on() {
            Fate::Drop(DropReason::Blackout)
        } else {
            lock(model).decide(self.elapsed(), packet.len())
        };
        // A full delay line is a full queue: the packet counts as dropped, not delivered (a
        // duplicate that does not fit is simply not made).
        let fate = match fate {
            Fate::Deliver { at, duplicate } => {
                if line.try_send((self.instant(at), packet.to_vec())).is_err() {
                    Fate::Drop(DropReason::Queue)
                } else {
                    let duplicate =
                        duplicate.filter(|again| line.try_send((self.instant(*again), packet.to_vec())).is_ok());
                    Fate::Deliver { at, duplicate }
                }
            }
            dropped => dropped,
        };
        counters.record(packet.len(), &fate);
    }
}

/// Locks a mutex; a panic elsewhere while it was held leaves state that is still usable here.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// SplitMix64: spreads a seed so neighbouring flows get unrelated streams.
fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A running proxy.
pub struct Proxy {
    local_addr: SocketAddr,
    core: Arc<Core>,
    udp: Option<Arc<udp::Flows>>,
}

impl Proxy {
    /// Binds the listening socket and starts proxying.
    pub async fn start(config: ProxyConfig) -> Result<Proxy, ProxyError> {
        let core = Arc::new(Core::new(config.profile, config.seed));
        let bind_error = |source| ProxyError::Bind { addr: config.listen, source };
        let (local_addr, udp) = match config.protocol {
            Protocol::Udp => {
                let socket = tokio::net::UdpSocket::bind(config.listen).await.map_err(bind_error)?;
                let local_addr = socket.local_addr().map_err(bind_error)?;
                let flows = udp::Flows::new(socket, config.upstream);
                core.tasks.spawn(udp::serve(core.clone(), flows.clone()));
                if core.profile.rebinds != crate::schedule::Rebinds::none() {
                    core.tasks.spawn(udp::scheduled_rebinds(core.clone(), flows.clone()));
                }
                (local_addr, Some(flows))
            }
            Protocol::Tcp => {
                let listener = tokio::net::TcpListener::bind(config.listen).await.map_err(bind_error)?;
                let local_addr = listener.local_addr().map_err(bind_error)?;
                core.tasks.spawn(tcp::serve(core.clone(), listener, config.upstream));
                (local_addr, None)
            }
        };
        tracing::info!(%local_addr, upstream = %config.upstream, profile = %core.profile.name, seed = core.seed, "proxy started");
        Ok(Proxy { local_addr, core, udp })
    }

    /// Where clients connect.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Moves every UDP flow to a new source port towards the relay, as a NAT rebinding does;
    /// replies to the old port are no longer forwarded. Returns how many flows moved.
    pub fn rebind(&self) -> Result<usize, ProxyError> {
        let flows = self.udp.as_ref().ok_or(ProxyError::NotUdp)?;
        flows.rebind_all(&self.core)
    }

    /// Changes both directions of every UDP flow, and of flows to come, from now on: a path
    /// that gets congested or frees up in the middle of a run (the profile's blackouts and
    /// rebinds stay). Returns how many flows changed.
    pub fn set_links(&self, up: LinkConfig, down: LinkConfig) -> Result<usize, ProxyError> {
        let flows = self.udp.as_ref().ok_or(ProxyError::NotUdp)?;
        {
            let mut links = lock(&self.core.links);
            (links.up, links.down) = (up.clone(), down.clone());
        }
        Ok(flows.set_links(&up, &down))
    }

    /// Starts or ends a blackout on top of the profile's schedule. UDP packets are dropped;
    /// TCP bytes are held until it ends.
    pub fn set_blackout(&self, on: bool) {
        self.core.set_blackout(on);
    }

    /// A handover (Wi-Fi to cellular, say): from now on every link has `profile`'s parameters.
    /// UDP flows keep going with new models (a client that moves to a new socket, as QUIC
    /// migration does, becomes a new flow, seen by the relay from a new address); TCP
    /// connections are cut, both ends closed, since a TCP connection cannot outlive its
    /// address: the client must reconnect. Scheduled blackouts and rebinds stay the starting
    /// profile's.
    pub fn handover(&self, profile: Profile) {
        tracing::info!(from = %self.core.profile.name, to = %profile.name, "handover");
        self.core.switch_path(profile);
        if let Some(flows) = &self.udp {
            flows.renew_models(&self.core);
        }
    }

    pub fn stats(&self) -> Stats {
        self.core.counters.snapshot()
    }

    /// For each UDP flow: the client's address and the proxy's current source address towards
    /// the relay (the address the relay sees).
    pub fn flows(&self) -> Vec<(SocketAddr, SocketAddr)> {
        self.udp.as_ref().map(|flows| flows.addresses()).unwrap_or_default()
    }

    /// Stops proxying and waits (with a deadline) for every task.
    pub async fn shutdown(self) {
        self.core.shutdown().await;
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.core.cancel.cancel();
    }
}
