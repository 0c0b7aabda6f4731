//! Topic matching (MQTT 3.1.1 §4.7): a trie of subscription filters and a trie of retained
//! messages, both with `+` and `#` and the `$` rule.
//!
//! * [`SubTree`] maps topic filters to subscribers. Matching a topic name walks one path per
//!   literal level plus the `+` branches, and collects the `#` subscribers of every node on the
//!   way, so its cost follows the topic's depth and the filters that match, not the number of
//!   subscriptions.
//! * [`RetainTree`] maps topic names to their retained message; a subscription's filter walks it
//!   to find the retained messages to send (§3.3.1-6).
//! * §4.7.2-1: filters starting with a wildcard do not match topic names starting with `$`.
//!
//! Levels are split on `/`; empty levels are levels (`/a` has levels `""` and `"a"`).

use std::collections::HashMap;

/// One subscriber of a filter: an opaque key and the QoS granted to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subscriber<K> {
    pub key: K,
    pub qos: u8,
}

#[derive(Debug)]
struct Node<K> {
    children: HashMap<Box<str>, Node<K>>,
    /// The `+` child.
    plus: Option<Box<Node<K>>>,
    /// Subscribers of the filter that ends at this node.
    here: Vec<Subscriber<K>>,
    /// Subscribers of `<this node>/#` (`#` itself at the root).
    hash: Vec<Subscriber<K>>,
}

impl<K> Default for Node<K> {
    fn default() -> Self {
        Node { children: HashMap::new(), plus: None, here: Vec::new(), hash: Vec::new() }
    }
}

impl<K> Node<K> {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.plus.is_none() && self.here.is_empty() && self.hash.is_empty()
    }
}

/// Topic filters and their subscribers.
#[derive(Debug)]
pub struct SubTree<K> {
    root: Node<K>,
    len: usize,
}

impl<K> Default for SubTree<K> {
    fn default() -> Self {
        SubTree { root: Node::default(), len: 0 }
    }
}

fn upsert<K: Copy + Eq>(list: &mut Vec<Subscriber<K>>, key: K, qos: u8) -> bool {
    match list.iter_mut().find(|s| s.key == key) {
        Some(s) => {
            s.qos = qos;
            true
        }
        None => {
            list.push(Subscriber { key, qos });
            false
        }
    }
}

fn remove_key<K: Copy + Eq>(list: &mut Vec<Subscriber<K>>, key: K) -> bool {
    match list.iter().position(|s| s.key == key) {
        Some(i) => {
            list.swap_remove(i);
            if list.is_empty() {
                *list = Vec::new();
            }
            true
        }
        None => false,
    }
}

impl<K: Copy + Eq> SubTree<K> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of (filter, subscriber) pairs.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Add or replace (MQTT 3.1.1 §3.8.4-3) `key`'s subscription to a valid `filter`.
    /// Returns true if it replaced an existing one.
    pub fn insert(&mut self, filter: &str, key: K, qos: u8) -> bool {
        let mut node = &mut self.root;
        let mut levels = filter.split('/').peekable();
        while let Some(level) = levels.next() {
            if level == "#" && levels.peek().is_none() {
                let replaced = upsert(&mut node.hash, key, qos);
                if !replaced {
                    self.len += 1;
                }
                return replaced;
            }
            node = if level == "+" {
                node.plus.get_or_insert_with(Default::default)
            } else {
                node.children.entry(level.into()).or_default()
            };
        }
        let replaced = upsert(&mut node.here, key, qos);
        if !replaced {
            self.len += 1;
        }
        replaced
    }

    /// Remove `key`'s subscription to `filter`; empty branches are pruned. True if it existed.
    pub fn remove(&mut self, filter: &str, key: K) -> bool {
        let levels: Vec<&str> = filter.split('/').collect();
        let removed = Self::remove_in(&mut self.root, &levels, key);
        if removed {
            self.len -= 1;
        }
        removed
    }

    fn remove_in(node: &mut Node<K>, levels: &[&str], key: K) -> bool {
        match levels {
            [] => remove_key(&mut node.here, key),
            ["#"] => remove_key(&mut node.hash, key),
            [level, rest @ ..] => {
                if *level == "+" {
                    let Some(child) = node.plus.as_deref_mut() else { return false };
                    let removed = Self::remove_in(child, rest, key);
                    if child.is_empty() {
                        node.plus = None;
                    }
                    removed
                } else {
                    let Some(child) = node.children.get_mut(*level) else { return false };
                    let removed = Self::remove_in(child, rest, key);
                    if child.is_empty() {
                        node.children.remove(*level);
                        if node.children.is_empty() {
                            node.children = HashMap::new();
                        }
                    }
                    removed
                }
            }
        }
    }

    /// Append every subscriber whose filter matches `topic` to `out`. A subscriber with
    /// several matching filters appears once per filter (the caller folds them, §3.3.5).
    pub fn matches(&self, topic: &str, out: &mut Vec<Subscriber<K>>) {
        let mut levels = topic.split('/');
        // MQTT 3.1.1 §4.7.2-1: no leading wildcard matches a topic that starts with '$'.
        if topic.starts_with('$') {
            if let Some(first) = levels.next() {
                if let Some(child) = self.root.children.get(first) {
                    Self::walk(child, levels, out);
                }
            }
            return;
        }
        Self::walk(&self.root, levels, out);
    }

    fn walk(node: &Node<K>, mut levels: std::str::Split<'_, char>, out: &mut Vec<Subscriber<K>>) {
        // MQTT 3.1.1 §4.7.1.2: `#` matches the parent level and any number of child levels.
        out.extend_from_slice(&node.hash);
        match levels.next() {
            None => out.extend_from_slice(&node.here),
            Some(level) => {
                if let Some(child) = node.children.get(level) {
                    Self::walk(child, levels.clone(), out);
                }
                // MQTT 3.1.1 §4.7.1.3: `+` matches exactly one level (an empty one too).
                if let Some(plus) = node.plus.as_deref() {
                    Self::walk(plus, levels, out);
                }
            }
        }
    }
}

/// Retained messages by topic name.
#[derive(Debug)]
pub struct RetainTree<M> {
    root: RNode<M>,
    len: usize,
}

#[derive(Debug)]
struct RNode<M> {
    children: HashMap<Box<str>, RNode<M>>,
    msg: Option<M>,
}

impl<M> Default for RNode<M> {
    fn default() -> Self {
        RNode { children: HashMap::new(), msg: None }
    }
}

impl<M> Default for RetainTree<M> {
    fn default() -> Self {
        RetainTree { root: RNode::default(), len: 0 }
    }
}

impl<M: Clone> RetainTree<M> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of retained messages.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether `topic` has a retained message.
    pub fn contains(&self, topic: &str) -> bool {
        let mut node = &self.root;
        for level in topic.split('/') {
            match node.children.get(level) {
                Some(n) => node = n,
                None => return false,
            }
        }
        node.msg.is_some()
    }

    /// Store (replacing) `msg` as the retained message of `topic`.
    pub fn set(&mut self, topic: &str, msg: M) {
        let mut node = &mut self.root;
        for level in topic.split('/') {
            node = node.children.entry(level.into()).or_default();
        }
        if node.msg.replace(msg).is_none() {
            self.len += 1;
        }
    }

    /// Remove the retained message of `topic` (MQTT 3.1.1 §3.3.1-10); prunes empty branches.
    pub fn clear(&mut self, topic: &str) -> bool {
        let levels: Vec<&str> = topic.split('/').collect();
        let removed = Self::clear_in(&mut self.root, &levels);
        if removed {
            self.len -= 1;
        }
        removed
    }

    fn clear_in(node: &mut RNode<M>, levels: &[&str]) -> bool {
        match levels {
            [] => node.msg.take().is_some(),
            [level, rest @ ..] => {
                let Some(child) = node.children.get_mut(*level) else { return false };
                let removed = Self::clear_in(child, rest);
                if child.msg.is_none() && child.children.is_empty() {
                    node.children.remove(*level);
                }
                removed
            }
        }
    }

    /// Every retained message whose topic matches the (valid) `filter`.
    pub fn matching(&self, filter: &str, out: &mut Vec<M>) {
        let levels: Vec<&str> = filter.split('/').collect();
        Self::collect(&self.root, &levels, true, out);
    }

    fn collect(node: &RNode<M>, levels: &[&str], root: bool, out: &mut Vec<M>) {
        match levels {
            [] => out.extend(node.msg.iter().cloned()),
            ["#", ..] => {
                // §4.7.1.2: the parent level too ("sport/#" matches "sport").
                if !root {
                    out.extend(node.msg.iter().cloned());
                }
                for (name, child) in &node.children {
                    // §4.7.2-1: a leading wildcard does not reach '$' topics.
                    if root && name.starts_with('$') {
                        continue;
                    }
                    Self::all(child, out);
                }
            }
            ["+", rest @ ..] => {
                for (name, child) in &node.children {
                    if root && name.starts_with('$') {
                        continue;
                    }
                    Self::collect(child, rest, false, out);
                }
            }
            [level, rest @ ..] => {
                if let Some(child) = node.children.get(*level) {
                    Self::collect(child, rest, false, out);
                }
            }
        }
    }

    fn all(node: &RNode<M>, out: &mut Vec<M>) {
        out.extend(node.msg.iter().cloned());
        for child in node.children.values() {
            Self::all(child, out);
        }
    }
}

/// Whether a topic name matches a filter (reference implementation for tests and the client).
pub fn filter_matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false; // §4.7.2-1
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matched(t: &SubTree<u32>, topic: &str) -> Vec<(u32, u8)> {
        let mut out = Vec::new();
        t.matches(topic, &mut out);
        let mut v: Vec<_> = out.into_iter().map(|s| (s.key, s.qos)).collect();
        v.sort();
        v
    }

    #[test]
    fn spec_examples() {
        // §4.7.1.2 and §4.7.1.3.
        let cases: &[(&str, &str, bool)] = &[
            ("sport/tennis/player1/#", "sport/tennis/player1", true),
            ("sport/tennis/player1/#", "sport/tennis/player1/ranking", true),
            ("sport/tennis/player1/#", "sport/tennis/player1/score/wimbledon", true),
            ("sport/#", "sport", true),
            ("#", "sport/tennis", true),
            ("sport/tennis/+", "sport/tennis/player1", true),
            ("sport/tennis/+", "sport/tennis/player1/tracking", false),
            ("sport/+", "sport", false),
            ("sport/+", "sport/", true),
            ("+/+", "/finance", true),
            ("/+", "/finance", true),
            ("+", "/finance", false),
            ("#", "$SYS/x", false),
            ("+/monitor/Clients", "$SYS/monitor/Clients", false),
            ("$SYS/#", "$SYS/monitor/Clients", true),
            ("$SYS/monitor/+", "$SYS/monitor/Clients", true),
            ("a/b", "a/b", true),
            ("a/b", "a/b/c", false),
            ("a/+/c", "a//c", true),
        ];
        for &(filter, topic, want) in cases {
            assert_eq!(filter_matches(filter, topic), want, "reference: {filter} vs {topic}");
            let mut t = SubTree::new();
            t.insert(filter, 1u32, 1);
            assert_eq!(!matched(&t, topic).is_empty(), want, "trie: {filter} vs {topic}");
        }
    }

    #[test]
    fn insert_replace_remove_prune() {
        let mut t = SubTree::new();
        assert!(!t.insert("a/+/c", 1u32, 0));
        assert!(t.insert("a/+/c", 1, 2), "same filter and key replaces");
        t.insert("a/#", 2, 1);
        t.insert("#", 3, 0);
        assert_eq!(t.len(), 3);
        assert_eq!(matched(&t, "a/b/c"), vec![(1, 2), (2, 1), (3, 0)]);
        assert!(t.remove("a/+/c", 1));
        assert!(!t.remove("a/+/c", 1));
        assert!(!t.remove("x/y", 1));
        assert!(t.remove("a/#", 2));
        assert!(t.remove("#", 3));
        assert!(t.is_empty());
        assert!(t.root.is_empty(), "branches pruned");
    }

    #[test]
    fn retained_walks() {
        let mut r = RetainTree::new();
        for topic in ["sport", "sport/tennis", "sport/tennis/p1", "$SYS/load", "/lead", "news"] {
            r.set(topic, topic.to_string());
        }
        fn get(r: &RetainTree<String>, f: &str) -> Vec<String> {
            let mut v = Vec::new();
            r.matching(f, &mut v);
            v.sort();
            v
        }
        assert_eq!(get(&r, "sport/#"), vec!["sport", "sport/tennis", "sport/tennis/p1"]);
        assert_eq!(get(&r, "#"), vec!["/lead", "news", "sport", "sport/tennis", "sport/tennis/p1"]);
        assert_eq!(get(&r, "+"), vec!["news", "sport"]);
        assert_eq!(get(&r, "+/+"), vec!["/lead", "sport/tennis"]);
        assert_eq!(get(&r, "$SYS/#"), vec!["$SYS/load"]);
        assert_eq!(get(&r, "sport/tennis"), vec!["sport/tennis"]);
        assert!(r.clear("sport/tennis"));
        assert!(!r.clear("sport/tennis"));
        assert_eq!(get(&r, "sport/#"), vec!["sport", "sport/tennis/p1"]);
        assert_eq!(r.len(), 5);
        // Every retained set is consistent with the reference matcher.
        for f in ["#", "+", "+/#", "sport/+", "sport/+/+", "/+", "news/#", "$SYS/+"] {
            let mut want: Vec<String> = ["sport", "sport/tennis/p1", "$SYS/load", "/lead", "news"]
                .iter()
                .filter(|t| filter_matches(f, t))
                .map(|t| t.to_string())
                .collect();
            want.sort();
            assert_eq!(get(&r, f), want, "{f}");
        }
    }

    proptest::proptest! {
        #[test]
        fn trie_agrees_with_reference(
            filters in proptest::collection::vec(proptest::collection::vec(proptest::sample::select(vec!["a", "b", "", "+", "$s"]), 1..4), 1..8),
            hashes in proptest::collection::vec(proptest::bool::ANY, 8),
            topic in proptest::collection::vec(proptest::sample::select(vec!["a", "b", "", "$s"]), 1..5),
        ) {
            let topic = topic.join("/");
            let mut t = SubTree::new();
            let mut fs = Vec::new();
            for (i, levels) in filters.iter().enumerate() {
                let mut f = levels.join("/");
                if hashes[i] { f.push_str("/#"); }
                t.insert(&f, i as u32, 0);
                fs.push(f);
            }
            let mut got: Vec<u32> = { let mut o = Vec::new(); t.matches(&topic, &mut o); o.into_iter().map(|s| s.key).collect() };
            got.sort();
            got.dedup();
            let mut want: Vec<u32> = fs.iter().enumerate().filter(|(_, f)| filter_matches(f, &topic)).map(|(i, _)| i as u32).collect();
            want.sort();
            want.dedup();
            proptest::prop_assert_eq!(got, want, "topic {:?} filters {:?}", topic, fs);
        }
    }
}
