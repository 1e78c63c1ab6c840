//! The UDP proxy: one flow per client address, each with its own upstream socket (so the relay
//! sees one source address per client, as behind a NAT) and its own pair of link models.
//!
//! Rebinding swaps a flow's upstream socket for a new one on a fresh local port and stops
//! reading the old one, exactly what a NAT that forgot its mapping does: the client's packets
//! reach the relay from a new address, and whatever the relay still sends to the old one is lost
//! until it migrates the connection.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

use crate::delay;
use crate::model::{LinkConfig, LinkModel};
use crate::proxy::{Core, ProxyError, lock};

/// Largest datagram the proxy reads.
const MAX_DATAGRAM: usize = 65_535;
/// A flow with no client packet for this long is forgotten.
const FLOW_IDLE: Duration = Duration::from_secs(120);
const SWEEP_EVERY: Duration = Duration::from_secs(30);

/// The flow table and the client-facing socket.
pub(crate) struct Flows {
    listen: Arc<UdpSocket>,
    upstream: SocketAddr,
    map: Mutex<HashMap<SocketAddr, Arc<Flow>>>,
}

struct Flow {
    client: SocketAddr,
    /// The flow's number, which seeds its models.
    n: u64,
    /// The current upstream socket; replaced on rebind (the up line sends through it).
    upstream: Arc<Mutex<Arc<UdpSocket>>>,
    up: Mutex<LinkModel>,
    down: Mutex<LinkModel>,
    up_line: delay::Sender<Vec<u8>>,
    down_line: delay::Sender<Vec<u8>>,
    /// Stops the reader of the current upstream socket.
    reader: Mutex<CancellationToken>,
    cancel: CancellationToken,
    /// Simulation time of the last client packet, in milliseconds.
    last_seen_ms: AtomicU64,
}

/// A socket towards `upstream` on a fresh local port.
fn upstream_socket(upstream: SocketAddr) -> std::io::Result<UdpSocket> {
    let bind: SocketAddr =
        if upstream.is_ipv6() { SocketAddr::from(([0u16; 8], 0)) } else { SocketAddr::from(([0u8; 4], 0)) };
    let socket = std::net::UdpSocket::bind(bind)?;
    socket.connect(upstream)?;
    socket.set_nonblocking(true)?;
    UdpSocket::from_std(socket)
}

impl Flows {
    pub(crate) fn new(listen: UdpSocket, upstream: SocketAddr) -> Arc<Flows> {
        Arc::new(Flows { listen: Arc::new(listen), upstream, map: Mutex::new(HashMap::new()) })
    }

    pub(crate) fn addresses(&self) -> Vec<(SocketAddr, SocketAddr)> {
        lock(&self.map)
            .values()
            .filter_map(|flow| Some((flow.client, lock(&flow.upstream).local_addr().ok()?)))
            .collect()
    }

    /// The flow for `client`, created on its first packet.
    fn flow(&self, core: &Arc<Core>, client: SocketAddr) -> std::io::Result<Arc<Flow>> {
        let mut map = lock(&self.map);
        if let Some(flow) = map.get(&client) {
            return Ok(flow.clone());
        }
        let socket = Arc::new(upstream_socket(self.upstream)?);
        let n = core.counters.flows.fetch_add(1, Ordering::Relaxed);
        core.counters.active_flows.fetch_add(1, Ordering::Relaxed);
        let (up, down) = core.models(n);
        let cancel = core.cancel.child_token();
        let slot = Arc::new(Mutex::new(socket.clone()));

        let current = slot.clone();
        let (up_line, run_up) = delay::line(cancel.clone(), move |packet: Vec<u8>| {
            let socket = lock(&current).clone();
            async move {
                let _ = socket.send(&packet).await;
            }
        });
        let listen = self.listen.clone();
        let (down_line, run_down) = delay::line(cancel.clone(), move |packet: Vec<u8>| {
            let listen = listen.clone();
            async move {
                let _ = listen.send_to(&packet, client).await;
            }
        });
        core.tasks.spawn(run_up);
        core.tasks.spawn(run_down);

        let reader = cancel.child_token();
        let flow = Arc::new(Flow {
            client,
            n,
            upstream: slot,
            up: Mutex::new(up),
            down: Mutex::new(down),
            up_line,
            down_line,
            reader: Mutex::new(reader.clone()),
            cancel,
            last_seen_ms: AtomicU64::new(0),
        });
        core.tasks.spawn(read_upstream(core.clone(), flow.clone(), socket, reader));
        map.insert(client, flow.clone());
        tracing::debug!(%client, flow = n, "new flow");
        Ok(flow)
    }

    pub(crate) fn rebind_all(&self, core: &Arc<Core>) -> Result<usize, ProxyError> {
        let flows: Vec<Arc<Flow>> = lock(&self.map).values().cloned().collect();
        for flow in &flows {
            flow.rebind(core, self.upstream).map_err(ProxyError::Rebind)?;
        }
        Ok(flows.len())
    }

    /// Gives every flow new links (see [`crate::Proxy::set_links`]); returns how many.
    pub(crate) fn set_links(&self, up: &LinkConfig, down: &LinkConfig) -> usize {
        let flows: Vec<Arc<Flow>> = lock(&self.map).values().cloned().collect();
        for flow in &flows {
            lock(&flow.up).set_config(up.clone());
            lock(&flow.down).set_config(down.clone());
        }
        flows.len()
    }

    /// Gives every flow fresh models of the current links (after a handover).
    pub(crate) fn renew_models(&self, core: &Core) {
        for flow in lock(&self.map).values() {
            let (up, down) = core.models(flow.n);
            (*lock(&flow.up), *lock(&flow.down)) = (up, down);
        }
    }

    /// Forgets flows idle for longer than [`FLOW_IDLE`].
    fn sweep(&self, core: &Core) {
        let now = core.elapsed().as_millis() as u64;
        lock(&self.map).retain(|_, flow| {
            let idle = now.saturating_sub(flow.last_seen_ms.load(Ordering::Relaxed)) > FLOW_IDLE.as_millis() as u64;
            if idle {
                flow.cancel.cancel();
                core.counters.active_flows.fetch_sub(1, Ordering::Relaxed);
            }
            !idle
        });
    }
}

impl Flow {
    fn rebind(self: &Arc<Self>, core: &Arc<Core>, upstream: SocketAddr) -> std::io::Result<()> {
        let socket = Arc::new(upstream_socket(upstream)?);
        *lock(&self.upstream) = socket.clone();
        let reader = self.cancel.child_token();
        std::mem::replace(&mut *lock(&self.reader), reader.clone()).cancel();
        core.tasks.spawn(read_upstream(core.clone(), self.clone(), socket, reader));
        core.counters.rebinds.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(client = %self.client, "flow rebound");
        Ok(())
    }
}

/// Client packets: to their flow's up model and line.
pub(crate) async fn serve(core: Arc<Core>, flows: Arc<Flows>) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut sweep = tokio::time::interval(SWEEP_EVERY);
    loop {
        tokio::select! {
            _ = core.cancel.cancelled() => return,
            _ = sweep.tick() => flows.sweep(&core),
            received = flows.listen.recv_from(&mut buf) => {
                // Errors here are ICMP reports about earlier sends; nothing to do but go on.
                let Ok((len, client)) = received else { continue };
                let flow = match flows.flow(&core, client) {
                    Ok(flow) => flow,
                    Err(err) => {
                        tracing::warn!(%client, %err, "cannot open an upstream socket");
                        continue;
                    }
                };
                flow.last_seen_ms.store(core.elapsed().as_millis() as u64, Ordering::Relaxed);
                if let Some(packet) = buf.get(..len) {
                    core.forward(&flow.up, &core.counters.up, &flow.up_line, packet);
                }
            }
        }
    }
}

/// Relay packets on one upstream socket: to the flow's down model and line, until rebound.
async fn read_upstream(core: Arc<Core>, flow: Arc<Flow>, socket: Arc<UdpSocket>, cancel: CancellationToken) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            received = socket.recv(&mut buf) => {
                let Ok(len) = received else { continue };
                if let Some(packet) = buf.get(..len) {
                    core.forward(&flow.down, &core.counters.down, &flow.down_line, packet);
                }
            }
        }
    }
}

/// Rebinds every flow on the profile's schedule.
pub(crate) async fn scheduled_rebinds(core: Arc<Core>, flows: Arc<Flows>) {
    while let Some(next) = core.profile.rebinds.next_after(core.elapsed()) {
        tokio::select! {
            _ = core.cancel.cancelled() => return,
            _ = tokio::time::sleep_until(core.instant(next)) => {
                if let Err(err) = flows.rebind_all(&core) {
                    tracing::warn!(%err, "scheduled rebind failed");
                }
            }
        }
    }
}
