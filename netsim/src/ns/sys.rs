//! The Linux system calls the namespace emulator needs, and nothing else: open a TUN device,
//! give an interface an IPv4 address, bring it up, and move the calling thread between network
//! namespaces. Raw `libc` calls, each wrapped so the rest of the crate stays safe code.

use std::ffi::CStr;
use std::fs::File;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// `struct ifreq`: the interface name, then a 24-byte union of which we use a flags word, an
/// `int` (MTU) or a `sockaddr_in`.
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    data: [u8; 24],
}

impl IfReq {
    fn new(name: &str) -> io::Result<IfReq> {
        let bytes = name.as_bytes();
        if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ || bytes.contains(&0) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("bad interface name {name:?}")));
        }
        let mut req = IfReq { name: [0; libc::IFNAMSIZ], data: [0; 24] };
        req.name[..bytes.len()].copy_from_slice(bytes);
        Ok(req)
    }

    fn set_short(&mut self, value: i16) {
        self.data[..2].copy_from_slice(&value.to_ne_bytes());
    }

    fn set_int(&mut self, value: i32) {
        self.data[..4].copy_from_slice(&value.to_ne_bytes());
    }

    /// A `sockaddr_in` with `addr` and port 0.
    fn set_ipv4(&mut self, addr: Ipv4Addr) {
        self.data = [0; 24];
        self.data[..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
        self.data[4..8].copy_from_slice(&addr.octets());
    }
}

fn check(ret: libc::c_int) -> io::Result<()> {
    if ret < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

fn ioctl(fd: &impl AsRawFd, request: libc::c_ulong, req: &mut IfReq) -> io::Result<()> {
    // SAFETY: `req` is a valid, writable `struct ifreq` for the duration of the call, and every
    // request used here reads or writes only within it.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), request as _, req as *mut IfReq) })
}

/// Opens a TUN device (IP packets, no extra header) called `name`, non-blocking.
pub(crate) fn open_tun(name: &str) -> io::Result<OwnedFd> {
    let file = File::options().read(true).write(true).open("/dev/net/tun")?;
    let mut req = IfReq::new(name)?;
    req.set_short((libc::IFF_TUN | libc::IFF_NO_PI) as i16);
    ioctl(&file, libc::TUNSETIFF as libc::c_ulong, &mut req)?;
    let fd = OwnedFd::from(file);
    // SAFETY: plain fcntl calls on a descriptor we own.
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    check(flags)?;
    check(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) })?;
    Ok(fd)
}

/// A datagram socket to configure interfaces with, in the calling thread's namespace.
fn control_socket() -> io::Result<OwnedFd> {
    // SAFETY: socket(2) with constant arguments; the result is checked before it is owned.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    check(fd)?;
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Gives interface `name` an address and netmask (in the calling thread's namespace).
pub(crate) fn set_ipv4(name: &str, addr: Ipv4Addr, netmask: Ipv4Addr) -> io::Result<()> {
    let socket = control_socket()?;
    let mut req = IfReq::new(name)?;
    req.set_ipv4(addr);
    ioctl(&socket, libc::SIOCSIFADDR, &mut req)?;
    let mut req = IfReq::new(name)?;
    req.set_ipv4(netmask);
    ioctl(&socket, libc::SIOCSIFNETMASK, &mut req)
}

pub(crate) fn set_mtu(name: &str, mtu: u32) -> io::Result<()> {
    let mut req = IfReq::new(name)?;
    req.set_int(i32::try_from(mtu).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "mtu"))?);
    ioctl(&control_socket()?, libc::SIOCSIFMTU, &mut req)
}

/// Brings interface `name` up.
pub(crate) fn set_up(name: &str) -> io::Result<()> {
    let socket = control_socket()?;
    let mut req = IfReq::new(name)?;
    ioctl(&socket, libc::SIOCGIFFLAGS, &mut req)?;
    let flags = i16::from_ne_bytes([req.data[0], req.data[1]]);
    req.set_short(flags | (libc::IFF_UP | libc::IFF_RUNNING) as i16);
    ioctl(&socket, libc::SIOCSIFFLAGS, &mut req)
}

/// Moves the calling thread into a new network namespace.
pub(crate) fn unshare_net() -> io::Result<()> {
    // SAFETY: unshare(2) affects only the calling thread's namespace membership.
    check(unsafe { libc::unshare(libc::CLONE_NEWNET) })
}

/// The calling thread's network namespace, as a descriptor that keeps it alive.
pub(crate) fn current_net_ns() -> io::Result<OwnedFd> {
    let path: &CStr = c"/proc/thread-self/ns/net";
    // SAFETY: open(2) on a NUL-terminated path; the result is checked before it is owned.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    check(fd)?;
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Moves the calling thread into the network namespace `ns` refers to. Async-signal-safe, so it
/// can run between fork and exec.
pub(crate) fn enter_net_ns(ns: libc::c_int) -> io::Result<()> {
    // SAFETY: setns(2) on a descriptor the caller keeps open.
    check(unsafe { libc::setns(ns, libc::CLONE_NEWNET) })
}

/// Whether this process can run the emulator: root, `/dev/net/tun`, and a kernel (or container)
/// that lets it create a network namespace and a TUN device in it. Probes on a throw-away thread.
pub fn can_emulate() -> Result<(), String> {
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("needs root (network namespaces and TUN devices)".into());
    }
    if !std::path::Path::new("/dev/net/tun").exists() {
        return Err("needs /dev/net/tun".into());
    }
    let probe = || -> Result<(), String> {
        unshare_net().map_err(|e| format!("cannot create a network namespace here: {e}"))?;
        open_tun("netsim-probe").map(drop).map_err(|e| format!("cannot create a TUN device here: {e}"))
    };
    std::thread::scope(|s| s.spawn(probe).join()).unwrap_or_else(|_| Err("probe thread panicked".into()))
}
