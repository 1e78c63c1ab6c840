//! The packet-level emulator (Linux, root): two network namespaces, "client" and "server", each
//! with one TUN device (`netsim0`), joined by this process, which reads every IP packet from one
//! side's TUN, applies the profile's model and writes it into the other side's. TCP and UDP
//! alike suffer the same loss, delay and blackouts, and the kernel's own TCP retransmits, so
//! QUIC and WebSocket can be compared fairly.
//!
//! ```text
//!  client namespace            netsim process                 server namespace
//!  10.77.0.1 ─ netsim0 ══ fd ──▶ up model ─▶ delay line ── fd ══ netsim0 ─ 10.77.0.2
//!                         fd ◀── delay line ◀─ down model ◀── fd
//! ```
//!
//! The namespaces are held open by descriptors only, so they vanish with the emulator (and with
//! any process still running inside them). Code enters a side with [`Emulator::enter`] (this
//! thread only: sockets it creates stay in that namespace) or runs a program there with
//! [`Emulator::command`].

mod sys;

use std::fs::File;
use std::io::{self, Read, Write};
use std::marker::PhantomData;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::sync::{Arc, Mutex};

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

pub use self::sys::can_emulate;
use crate::delay;
use crate::profile::Profile;
use crate::proxy::Core;
use crate::stats::{DirectionCounters, Stats};

/// The client side's address; the server's is [`SERVER_ADDR`]. A handover moves the client
/// to the next one (`.3`, `.4`, ...), as a phone gets a new address on the new network.
const CLIENT_ADDR: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
const SERVER_ADDR: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
const NETMASK: Ipv4Addr = Ipv4Addr::new(255, 255, 255, 0);
/// The TUN device's name in each namespace.
const DEVICE: &str = "netsim0";
/// The devices' MTU when the profile sets none. With one, the devices get the profile's (the
/// smaller direction's): the hosts then know the link's MTU, as on a real link, instead of
/// meeting a black hole that TCP without PMTU probing never gets through.
const DEVICE_MTU: usize = 1500;
const MAX_PACKET: usize = 65_535;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Server,
}

#[derive(Debug, thiserror::Error)]
pub enum EmulatorError {
    #[error("the namespace emulator {0}")]
    Unsupported(String),
    #[error("setting up the {side:?} namespace: {source}")]
    Setup { side: Side, source: io::Error },
}

/// One side: its namespace and its TUN device.
struct Netns {
    ns: OwnedFd,
    tun: Arc<AsyncFd<File>>,
}

/// Creates a namespace with the TUN device up at `addr`, on a thread of its own (unshare moves
/// only the calling thread, and this one is thrown away).
fn create_side(side: Side, addr: Ipv4Addr, mtu: u32) -> Result<Netns, EmulatorError> {
    let setup = || -> io::Result<(OwnedFd, OwnedFd)> {
        sys::unshare_net()?;
        let tun = sys::open_tun(DEVICE)?;
        sys::set_ipv4(DEVICE, addr, NETMASK)?;
        sys::set_mtu(DEVICE, mtu)?;
        sys::set_up(DEVICE)?;
        sys::set_up("lo")?;
        Ok((sys::current_net_ns()?, tun))
    };
    let (ns, tun) = std::thread::scope(|s| s.spawn(setup).join())
        .unwrap_or_else(|_| Err(io::Error::other("namespace setup thread panicked")))
        .map_err(|source| EmulatorError::Setup { side, source })?;
    // SAFETY: the `File` is owned by the `AsyncFd` and never replaced or closed while it lives, so
    // its descriptor stays the same open TUN device.
    let tun = unsafe { AsyncFd::register(File::from(tun)) }
        .map_err(|e| EmulatorError::Setup { side, source: e.into_parts().1 })?;
    Ok(Netns { ns, tun: Arc::new(tun) })
}

/// A running emulator.
pub struct Emulator {
    client: Netns,
    server: Netns,
    core: Arc<Core>,
    /// Each direction's model (up, down), replaced by a handover.
    models: [Arc<Mutex<crate::model::LinkModel>>; 2],
    /// The client's address now.
    client_addr: Mutex<Ipv4Addr>,
}

impl Emulator {
    /// Creates both namespaces and starts moving packets between them through `profile`
    /// (`up` is client → server). Must run inside a tokio runtime.
    pub fn start(profile: Profile, seed: u64) -> Result<Emulator, EmulatorError> {
        can_emulate().map_err(EmulatorError::Unsupported)?;
        let mtu = [profile.up.mtu, profile.down.mtu].into_iter().flatten().min().unwrap_or(DEVICE_MTU);
        let mtu = u32::try_from(mtu.clamp(1280, 65_535)).unwrap_or(1500);
        let client = create_side(Side::Client, CLIENT_ADDR, mtu)?;
        let server = create_side(Side::Server, SERVER_ADDR, mtu)?;
        let core = Arc::new(Core::new(profile, seed));
        let (up, down) = core.models(0);
        let models = [Arc::new(Mutex::new(up)), Arc::new(Mutex::new(down))];
        let directions = [
            (client.tun.clone(), server.tun.clone(), models[0].clone(), true),
            (server.tun.clone(), client.tun.clone(), models[1].clone(), false),
        ];
        for (from, to, model, is_up) in directions {
            let (line, run_line) = delay::line(core.cancel.clone(), move |packet: Vec<u8>| {
                let to = to.clone();
                async move {
                    let _ = write_packet(&to, &packet).await;
                }
            });
            core.tasks.spawn(run_line);
            core.tasks.spawn(pump(core.clone(), from, model, line, is_up));
        }
        tracing::info!(profile = %core.profile.name, seed, "namespace emulator started");
        Ok(Emulator { client, server, core, models, client_addr: Mutex::new(CLIENT_ADDR) })
    }

    /// The side's address (the client's changes with a [`Emulator::handover`]).
    pub fn addr(&self, side: Side) -> Ipv4Addr {
        match side {
            Side::Client => *crate::proxy::lock(&self.client_addr),
            Side::Server => SERVER_ADDR,
        }
    }

    /// A handover (Wi-Fi to cellular, say): from now on both directions have `profile`'s
    /// parameters, and the client's device gets a new address, the old one gone. Sockets bound
    /// to the old address (a TCP connection) no longer receive anything; a UDP socket bound to
    /// the wildcard address sends from the new one, so the relay sees the client at a new
    /// address. Scheduled blackouts stay the starting profile's. Runs on a thread of its own
    /// (the address is set inside the client namespace).
    pub fn handover(&self, profile: Profile) -> Result<Ipv4Addr, EmulatorError> {
        tracing::info!(from = %self.core.profile.name, to = %profile.name, "handover");
        self.core.switch_path(profile);
        let mut addr = crate::proxy::lock(&self.client_addr);
        let [a, b, c, d] = addr.octets();
        // .2 is the server's.
        let next = Ipv4Addr::new(a, b, c, if d == 1 { 3 } else { d.wrapping_add(1).max(3) });
        // Models of their own (seeded by the address), as for a new flow through the proxy.
        let (up, down) = self.core.models(u64::from(next.octets()[3]));
        *crate::proxy::lock(&self.models[0]) = up;
        *crate::proxy::lock(&self.models[1]) = down;
        let ns = self.client.ns.as_raw_fd();
        let set = || -> io::Result<()> {
            sys::enter_net_ns(ns)?;
            sys::set_ipv4(DEVICE, next, NETMASK)
        };
        std::thread::scope(|s| s.spawn(set).join())
            .unwrap_or_else(|_| Err(io::Error::other("handover thread panicked")))
            .map_err(|source| EmulatorError::Setup { side: Side::Client, source })?;
        *addr = next;
        Ok(next)
    }

    fn side(&self, side: Side) -> &Netns {
        match side {
            Side::Client => &self.client,
            Side::Server => &self.server,
        }
    }

    /// Moves the calling thread into `side`'s namespace until the guard drops. Sockets created
    /// meanwhile belong to that namespace for good. The guard cannot leave the thread; in async
    /// code use a current-thread runtime, or the task may resume on another thread.
    pub fn enter(&self, side: Side) -> io::Result<NsGuard> {
        let back = sys::current_net_ns()?;
        sys::enter_net_ns(self.side(side).ns.as_raw_fd())?;
        Ok(NsGuard { back, _not_send: PhantomData })
    }

    /// A command that runs `program` inside `side`'s namespace.
    pub fn command(&self, side: Side, program: impl AsRef<std::ffi::OsStr>) -> std::process::Command {
        let mut command = std::process::Command::new(program);
        let ns = self.side(side).ns.as_raw_fd();
        // SAFETY: the closure only calls setns(2), which is async-signal-safe, on a descriptor
        // this emulator keeps open until after the child has been spawned.
        unsafe {
            command.pre_exec(move || sys::enter_net_ns(ns));
        }
        command
    }

    /// Starts or ends a blackout on top of the profile's schedule: packets are dropped.
    pub fn set_blackout(&self, on: bool) {
        self.core.set_blackout(on);
    }

    pub fn stats(&self) -> Stats {
        self.core.counters.snapshot()
    }

    /// Stops moving packets; the namespaces go when the emulator is dropped.
    pub async fn shutdown(self) {
        self.core.shutdown().await;
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        self.core.cancel.cancel();
    }
}

/// Returns the thread to the namespace it was in; see [`Emulator::enter`].
pub struct NsGuard {
    back: OwnedFd,
    _not_send: PhantomData<*const ()>,
}

impl Drop for NsGuard {
    fn drop(&mut self) {
        if let Err(err) = sys::enter_net_ns(self.back.as_raw_fd()) {
            tracing::error!(%err, "cannot return to the original network namespace");
        }
    }
}

/// Packets read on one side: through the direction's model onto the line to the other side.
async fn pump(
    core: Arc<Core>,
    from: Arc<AsyncFd<File>>,
    model: Arc<Mutex<crate::model::LinkModel>>,
    line: delay::Sender<Vec<u8>>,
    is_up: bool,
) {
    let counters: &DirectionCounters = if is_up { &core.counters.up } else { &core.counters.down };
    let mut buf = vec![0u8; MAX_PACKET];
    loop {
        let read = tokio::select! {
            _ = core.cancel.cancelled() => return,
            read = read_packet(&from, &mut buf) => read,
        };
        match read {
            Ok(len) => {
                if let Some(packet) = buf.get(..len) {
                    core.forward(&model, counters, &line, packet);
                }
            }
            Err(err) => {
                tracing::warn!(%err, "TUN read failed");
                return;
            }
        }
    }
}

async fn read_packet(fd: &AsyncFd<File>, buf: &mut [u8]) -> io::Result<usize> {
    fd.async_io(Interest::READABLE, |mut tun| tun.read(buf)).await
}

async fn write_packet(fd: &AsyncFd<File>, packet: &[u8]) -> io::Result<usize> {
    fd.async_io(Interest::WRITABLE, |mut tun| tun.write(packet)).await
}
