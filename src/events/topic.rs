//! Topic names, subscription patterns, and the index that finds an event's subscribers.
//!
//! A topic is a dotted name (`orders.eu.created`); a pattern is a topic whose segments may be
//! `*` (exactly one segment) or end with `>` (one or more segments). The index is a trie on
//! segments, so matching an event walks the topic's segments once, branching only into `*`
//! children: its cost depends on the topic's length and on how many distinct wildcard paths
//! exist, never on how many subscriptions share them. Pure data, no IO; the property test
//! below checks it against a naive scan.

use std::collections::HashMap;

use crate::proto::ErrorCode;

/// Longest topic or pattern, in bytes (a persistent topic is stored as room `#<topic>`, and
/// room names are at most 128 bytes).
pub const MAX_TOPIC_LEN: usize = 127;

fn segment_ok(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"_:@=+-".contains(&b))
}

/// A validated topic name: 1-127 bytes, dot-separated non-empty segments of `[A-Za-z0-9_:@=+-]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TopicName(String);

impl TryFrom<String> for TopicName {
    type Error = String;

    fn try_from(name: String) -> Result<Self, String> {
        TopicName::parse(&name).map_err(|_| format!("invalid topic name {name:?}"))
    }
}

impl From<TopicName> for String {
    fn from(name: TopicName) -> String {
        name.0
    }
}

impl TopicName {
    pub fn parse(name: &str) -> Result<TopicName, ErrorCode> {
        if name.len() > MAX_TOPIC_LEN || !name.split('.').all(segment_ok) {
            return Err(ErrorCode::BAD_TOPIC);
        }
        Ok(TopicName(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn segments(&self) -> impl Iterator<Item = &str> {
        self.0.split('.')
    }
}

impl std::fmt::Display for TopicName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// One segment of a pattern.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Segment {
    Literal(Box<str>),
    /// `*`: exactly one segment.
    One,
    /// `>`: one or more segments; only last.
    Rest,
}

/// A validated subscription pattern.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Pattern {
    text: String,
    segments: Vec<Segment>,
}

impl Pattern {
    pub fn parse(text: &str) -> Result<Pattern, ErrorCode> {
        if text.is_empty() || text.len() > MAX_TOPIC_LEN {
            return Err(ErrorCode::BAD_TOPIC);
        }
        let parts: Vec<&str> = text.split('.').collect();
        let mut segments = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            segments.push(match *part {
                "*" => Segment::One,
                ">" if i + 1 == parts.len() => Segment::Rest,
                lit if segment_ok(lit) => Segment::Literal(lit.into()),
                _ => return Err(ErrorCode::BAD_TOPIC),
            });
        }
        Ok(Pattern { text: text.to_owned(), segments })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The topic itself when the pattern has no wildcard.
    pub fn exact(&self) -> Option<TopicName> {
        self.segments.iter().all(|s| matches!(s, Segment::Literal(_))).then(|| TopicName(self.text.clone()))
    }

    /// The naive matcher: segment by segment. The reference the index is tested against, and
    /// what config patterns (`events.persistent`, `events.latest`) use.
    pub fn matches(&self, topic: &TopicName) -> bool {
        let topic: Vec<&str> = topic.segments().collect();
        for (i, seg) in self.segments.iter().enumerate() {
            match seg {
                Segment::Rest => return topic.len() > i,
                Segment::One if i < topic.len() => {}
                Segment::Literal(lit) if topic.get(i) == Some(&&**lit) => {}
                _ => return false,
            }
        }
        topic.len() == self.segments.len()
    }
}

impl std::fmt::Display for Pattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

struct Node<T> {
    children: HashMap<Box<str>, Node<T>>,
    star: Option<Box<Node<T>>>,
    /// Subscriptions whose pattern ends here.
    here: Vec<(u64, T)>,
    /// Subscriptions whose pattern ends here with `>`.
    rest: Vec<(u64, T)>,
}

impl<T> Default for Node<T> {
    fn default() -> Self {
        Node { children: HashMap::new(), star: None, here: Vec::new(), rest: Vec::new() }
    }
}

impl<T> Node<T> {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.star.is_none() && self.here.is_empty() && self.rest.is_empty()
    }

    fn collect<'a>(&'a self, topic: &[&str], out: &mut impl FnMut(u64, &'a T)) {
        let Some((first, more)) = topic.split_first() else {
            self.here.iter().for_each(|(id, v)| out(*id, v));
            return;
        };
        self.rest.iter().for_each(|(id, v)| out(*id, v));
        if let Some(child) = self.children.get(*first) {
            child.collect(more, out);
        }
        if let Some(star) = &self.star {
            star.collect(more, out);
        }
    }

    /// Removes entry `id` under `segments`; true when found.
    fn remove(&mut self, segments: &[Segment], id: u64) -> bool {
        let Some((first, more)) = segments.split_first() else {
            let before = self.here.len();
            self.here.retain(|(i, _)| *i != id);
            return self.here.len() != before;
        };
        match first {
            Segment::Rest => {
                let before = self.rest.len();
                self.rest.retain(|(i, _)| *i != id);
                self.rest.len() != before
            }
            Segment::One => {
                let Some(star) = &mut self.star else { return false };
                let found = star.remove(more, id);
                if star.is_empty() {
                    self.star = None;
                }
                found
            }
            Segment::Literal(lit) => {
                let Some(child) = self.children.get_mut(lit) else { return false };
                let found = child.remove(more, id);
                if child.is_empty() {
                    self.children.remove(lit);
                }
                found
            }
        }
    }
}

/// Subscriptions by pattern, each with a caller-chosen id (unique per index).
pub struct TopicIndex<T> {
    root: Node<T>,
    len: usize,
}

impl<T> Default for TopicIndex<T> {
    fn default() -> Self {
        TopicIndex { root: Node::default(), len: 0 }
    }
}

impl<T> TopicIndex<T> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn insert(&mut self, pattern: &Pattern, id: u64, value: T) {
        let mut node = &mut self.root;
        for seg in &pattern.segments {
            node = match seg {
                Segment::Literal(lit) => node.children.entry(lit.clone()).or_default(),
                Segment::One => node.star.get_or_insert_with(Default::default),
                Segment::Rest => {
                    node.rest.push((id, value));
                    self.len += 1;
                    return;
                }
            };
        }
        node.here.push((id, value));
        self.len += 1;
    }

    /// Removes the subscription `id` made with `pattern`; true when it was there.
    pub fn remove(&mut self, pattern: &Pattern, id: u64) -> bool {
        let found = self.root.remove(&pattern.segments, id);
        if found {
            self.len -= 1;
        }
        found
    }

    /// Calls `out` for every subscription whose pattern matches `topic`.
    pub fn for_each_match<'a>(&'a self, topic: &TopicName, mut out: impl FnMut(u64, &'a T)) {
        let segments: Vec<&str> = topic.segments().collect();
        self.root.collect(&segments, &mut out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn t(s: &str) -> TopicName {
        TopicName::parse(s).unwrap()
    }

    fn p(s: &str) -> Pattern {
        Pattern::parse(s).unwrap()
    }

    #[test]
    fn names_and_patterns() {
        assert!(TopicName::parse("orders.eu.created").is_ok());
        assert!(TopicName::parse("a").is_ok());
        for bad in ["", ".a", "a.", "a..b", "a.*", "a.>", "a b", &"x".repeat(128)] {
            assert_eq!(TopicName::parse(bad), Err(ErrorCode::BAD_TOPIC), "{bad:?}");
        }
        assert!(Pattern::parse("orders.*.created").is_ok());
        assert!(Pattern::parse(">").is_ok());
        for bad in ["", "a.>.b", "a.**", "a*", "a.>x", "a..b"] {
            assert_eq!(Pattern::parse(bad), Err(ErrorCode::BAD_TOPIC), "{bad:?}");
        }
        assert_eq!(p("a.b").exact(), Some(t("a.b")));
        assert_eq!(p("a.*").exact(), None);
    }

    #[test]
    fn wildcards_match_as_documented() {
        assert!(p("orders.*.created").matches(&t("orders.eu.created")));
        assert!(!p("orders.*.created").matches(&t("orders.eu.x.created")));
        assert!(p("orders.>").matches(&t("orders.eu")));
        assert!(p("orders.>").matches(&t("orders.eu.created")));
        assert!(!p("orders.>").matches(&t("orders")), "> needs at least one segment");
        assert!(!p("orders.*").matches(&t("orders")));
        assert!(p(">").matches(&t("anything.at.all")));
    }

    #[test]
    fn removal_prunes_and_counts() {
        let mut index = TopicIndex::default();
        index.insert(&p("a.*.c"), 1, ());
        index.insert(&p("a.>"), 2, ());
        assert_eq!(index.len(), 2);
        assert!(index.remove(&p("a.*.c"), 1));
        assert!(!index.remove(&p("a.*.c"), 1));
        assert!(index.root.children["a"].star.is_none(), "empty branch pruned");
        assert!(index.remove(&p("a.>"), 2));
        assert!(index.root.is_empty());
    }

    /// Random patterns and topics over a small alphabet (so that they collide often): the index
    /// finds exactly the subscriptions the naive matcher finds.
    #[test]
    fn index_agrees_with_the_naive_matcher() {
        let mut rng = StdRng::seed_from_u64(19);
        let words = ["a", "b", "c"];
        let topic = |rng: &mut StdRng| {
            let n = rng.random_range(1..=4);
            (0..n).map(|_| words[rng.random_range(0..3)]).collect::<Vec<_>>().join(".")
        };
        for round in 0..200 {
            let mut index = TopicIndex::default();
            let mut patterns = Vec::new();
            for id in 0..rng.random_range(1..40u64) {
                let n = rng.random_range(1..=4);
                let mut segs: Vec<String> = (0..n)
                    .map(|_| match rng.random_range(0..5) {
                        0 => "*".to_string(),
                        k => words[k % 3].to_string(),
                    })
                    .collect();
                if rng.random_bool(0.25) {
                    *segs.last_mut().unwrap() = ">".into();
                }
                let pattern = p(&segs.join("."));
                index.insert(&pattern, id, ());
                patterns.push((id, pattern));
            }
            // Remove some again, to exercise pruning.
            patterns.retain(|(id, pattern)| !(rng.random_bool(0.2) && index.remove(pattern, *id)));
            assert_eq!(index.len(), patterns.len());
            for _ in 0..50 {
                let topic = t(&topic(&mut rng));
                let mut got = Vec::new();
                index.for_each_match(&topic, |id, _| got.push(id));
                got.sort();
                let want: Vec<u64> = patterns.iter().filter(|(_, p)| p.matches(&topic)).map(|(id, _)| *id).collect();
                assert_eq!(got, want, "round {round}, topic {topic}");
            }
        }
    }
}
