//! The relay's QUIC connection ids: 8 bytes, a 5-byte random nonce and a 3-byte keyed tag.
//!
//! Why not quinn's `HashedConnectionIdGenerator`: its nonce is 3 bytes, about 16.7 million
//! values. quinn checks a new connection's ids against the live ones, but not the id it puts in
//! a Retry (`Endpoint::retry`, quinn-proto 0.11.19). With 3,000 connections holding about
//! 20,000 ids, about one Retry in 800 named a live connection: the client's next Initial went
//! to that connection, which dropped it, and the client waited out its whole connect timeout
//! (docs/decisions.md, "Connection ids with room for a handshake storm"). A 5-byte nonce makes
//! that about one in 50 million at the same load.
//!
//! The tag still lets quinn drop most packets that name no id of this relay without answering,
//! and, because the key is kept in the data directory, a restarted relay recognises its
//! previous life's ids and answers them with a stateless reset.

use quinn_proto::{ConnectionId, ConnectionIdGenerator, InvalidCid};
use rand::Rng as _;

const NONCE_LEN: usize = 5;
const TAG_LEN: usize = 3;
/// The id's length on the wire, as quinn's own generators (8 bytes).
const CID_LEN: usize = NONCE_LEN + TAG_LEN;

/// Connection ids with a keyed tag (HMAC-SHA256 of the nonce, truncated).
pub struct KeyedCidGenerator {
    key: ring::hmac::Key,
}

impl KeyedCidGenerator {
    pub fn new(key: &[u8]) -> KeyedCidGenerator {
        KeyedCidGenerator { key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key) }
    }

    fn tag(&self, nonce: &[u8]) -> [u8; TAG_LEN] {
        let mut tag = [0; TAG_LEN];
        tag.copy_from_slice(&ring::hmac::sign(&self.key, nonce).as_ref()[..TAG_LEN]);
        tag
    }
}

impl ConnectionIdGenerator for KeyedCidGenerator {
    fn generate_cid(&mut self) -> ConnectionId {
        let mut id = [0; CID_LEN];
        rand::rng().fill(&mut id[..NONCE_LEN]);
        let tag = self.tag(&id[..NONCE_LEN]);
        id[NONCE_LEN..].copy_from_slice(&tag);
        ConnectionId::new(&id)
    }

    fn validate(&self, cid: &ConnectionId) -> Result<(), InvalidCid> {
        if cid.len() != CID_LEN {
            return Err(InvalidCid);
        }
        let (nonce, tag) = cid.split_at(NONCE_LEN);
        // Not a secret compared against an attacker's guess: a filter, so no constant time.
        if self.tag(nonce)[..] == tag[..] { Ok(()) } else { Err(InvalidCid) }
    }

    fn cid_len(&self) -> usize {
        CID_LEN
    }

    fn cid_lifetime(&self) -> Option<std::time::Duration> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_validate_with_their_key_only() {
        let mut relay = KeyedCidGenerator::new(b"relay key");
        let other = KeyedCidGenerator::new(b"another key");
        let id = relay.generate_cid();
        assert_eq!(id.len(), CID_LEN);
        assert!(relay.validate(&id).is_ok());
        // A restarted relay with the same key recognises it.
        assert!(KeyedCidGenerator::new(b"relay key").validate(&id).is_ok());
        assert!(other.validate(&id).is_err());
        let mut flipped = id.to_vec();
        flipped[0] ^= 1;
        assert!(relay.validate(&ConnectionId::new(&flipped)).is_err());
        assert!(relay.validate(&ConnectionId::new(&id[..4])).is_err());
    }

    /// What a handshake storm needs: ids that do not repeat among hundreds of thousands. quinn's
    /// hashed generator (3-byte nonce) repeats about 1,200 times in 200,000 ids; with a 5-byte
    /// nonce a repeat here has a chance of about 2 % (three, about one in a million).
    #[test]
    fn two_hundred_thousand_ids_hardly_ever_repeat() {
        let mut relay = KeyedCidGenerator::new(b"relay key");
        let mut seen = std::collections::HashSet::new();
        let repeats = (0..200_000).filter(|_| !seen.insert(relay.generate_cid())).count();
        assert!(repeats <= 2, "{repeats} repeated ids in 200,000");
    }
}
