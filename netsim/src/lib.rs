//! netsim: lossy mobile networks for edgerelay's tests, benches and operators.
//!
//! The machines edgerelay is tested on have no `tc netem`, so the impairment is implemented here:
//! - [`model`]: what happens to each packet (loss, bursts, delay, jitter, reordering,
//!   duplication, a bandwidth cap with a bounded queue, MTU), pure and seeded;
//! - [`schedule`]: blackouts and NAT rebinding over time;
//! - [`profile`]: named profiles (wifi, 4g, satellite, train, ...) with documented figures;
//! - [`proxy`]: user-space UDP and TCP proxies applying a profile between a client and a relay;
//! - [`ns`]: the packet-level emulator (Linux, root): two network namespaces joined through TUN
//!   devices, every IP packet through the same model.

mod delay;
pub mod model;
pub mod ns;
pub mod profile;
pub mod proxy;
pub mod schedule;
pub mod stats;
mod tcp;
mod udp;

pub use model::{DropReason, Fate, LinkConfig, LinkModel, Loss};
pub use profile::Profile;
pub use proxy::{Protocol, Proxy, ProxyConfig, ProxyError};
pub use schedule::{Blackouts, Periodic, Rebinds, Window};
pub use stats::{DirectionStats, Stats};
