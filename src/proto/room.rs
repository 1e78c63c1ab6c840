//! Room names as clients write them. Rooms are always scoped by tenant inside the relay; the
//! tenant never appears in a room name.

use super::codes::ErrorCode;

/// Longest room name, in bytes.
pub const MAX_ROOM_LEN: usize = 128;

/// A validated room name: 1 to 128 characters from `[A-Za-z0-9_:.@=+-]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoomName(String);

impl RoomName {
    pub fn parse(name: &str) -> Result<RoomName, ErrorCode> {
        let valid = !name.is_empty()
            && name.len() <= MAX_ROOM_LEN
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_:.@=+-".contains(&b));
        if valid { Ok(RoomName(name.to_owned())) } else { Err(ErrorCode::BAD_ROOM) }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The room that holds a persistent topic's log: `#<topic>`. `#` is outside the room
    /// alphabet, so no client can join or publish to it as a room.
    pub fn topic_log(topic: &crate::events::TopicName) -> RoomName {
        RoomName(format!("#{topic}"))
    }
}

impl std::fmt::Display for RoomName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_names() {
        assert!(RoomName::parse("chat:lobby").is_ok());
        assert!(RoomName::parse("user@x.y=+_-1").is_ok());
        assert_eq!(RoomName::parse(""), Err(ErrorCode::BAD_ROOM));
        assert_eq!(RoomName::parse("a/b"), Err(ErrorCode::BAD_ROOM));
        assert_eq!(RoomName::parse("a b"), Err(ErrorCode::BAD_ROOM));
        assert_eq!(RoomName::parse(&"x".repeat(129)), Err(ErrorCode::BAD_ROOM));
        assert!(RoomName::parse(&"x".repeat(128)).is_ok());
    }
}
