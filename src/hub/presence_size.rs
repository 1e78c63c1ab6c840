//! Room-size-aware presence: a room with more than `presence.list_max_members` users is
//! counted, not listed, as a quiet room is (Ably caps a channel's presence set, Discord stops
//! sending member lists of large guilds). Listing every member of a room of N costs N² in a
//! join storm (each joiner's snapshot lists everyone, each member hears of each joiner) and a
//! list of hundreds is not something a chat user reads; the count is what they see.
//!
//! Hysteresis: a counted room is listed again only once it has fallen to three quarters of the
//! limit, so that a room hovering at the limit does not switch (and resend every member a
//! snapshot) on every join and leave.

/// Whether a room of `members` users is listed, given whether it was. `list_max` 0: always.
pub fn listed(was_listed: bool, members: usize, list_max: usize) -> bool {
    if list_max == 0 {
        return true;
    }
    if was_listed { members <= list_max } else { members <= list_max - list_max / 4 }
}

#[cfg(test)]
mod tests {
    use super::listed;

    #[test]
    fn a_room_is_counted_above_the_limit_and_listed_again_at_three_quarters() {
        assert!(listed(true, 200, 200));
        assert!(!listed(true, 201, 200), "one above the limit: counted");
        assert!(!listed(false, 151, 200), "not listed again just below the limit");
        assert!(listed(false, 150, 200), "listed again at three quarters");
        assert!(listed(true, 1_000_000, 0), "0: no limit");
    }
}
