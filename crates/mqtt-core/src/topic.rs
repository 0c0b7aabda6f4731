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
//!
//! **No recursion.** Filters and topic names come from peers, and a trie is as deep as the
//! longest of them: every walk here (insert, match, remove with pruning, retained lookups) and
//! dropping a tree use loops and explicit stacks, never the call stack, so a filter of 30,000
//! levels costs time and memory in proportion, not a stack overflow. The broker additionally
//! refuses filters and names deeper than `max_topic_levels` (`MqttConfig`, default 128).

use std::collections::HashMap;

/// One subscriber of a filter: an opaque key, the options granted to it, and its MQTT 5
/// Subscription Identifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subscriber<K> {
    pub key: K,
    /// The subscription options as granted, laid out as the SUBSCRIBE's options byte (MQTT 5
    /// §3.8.3.1): the QoS in bits 0-1, No Local in bit 2, Retain As Published in bit 3. A 3.1.1
    /// subscription has the QoS alone.
    pub opts: u8,
    /// The Subscription Identifier (MQTT 5 §3.8.2.1.2); 0: none.
    pub id: u32,
}

impl<K> Subscriber<K> {
    /// The granted QoS (0-2).
    pub fn qos(&self) -> u8 {
        self.opts & 0x03
    }
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

    /// Whether the node holds nothing but its child at `level` (`+`: the wildcard child).
    fn only_child(&self, level: &str) -> bool {
        if !self.here.is_empty() || !self.hash.is_empty() {
            return false;
        }
        if level == "+" {
            self.children.is_empty()
        } else {
            self.plus.is_none() && self.children.len() == 1 && self.children.contains_key(level)
        }
    }

    #[cfg(test)]
    fn child(&self, level: &str) -> Option<&Node<K>> {
        if level == "+" {
            self.plus.as_deref()
        } else {
            self.children.get(level)
        }
    }

    fn child_mut(&mut self, level: &str) -> Option<&mut Node<K>> {
        if level == "+" {
            self.plus.as_deref_mut()
        } else {
            self.children.get_mut(level)
        }
    }

    /// Detach the child at `level` (dropped by the caller, iteratively).
    fn take_child(&mut self, level: &str) -> Option<Node<K>> {
        if level == "+" {
            return self.plus.take().map(|b| *b);
        }
        let child = self.children.remove(level);
        if self.children.is_empty() {
            self.children = HashMap::new();
        }
        child
    }
}

impl<K> Drop for Node<K> {
    /// Children are moved onto a heap stack and dropped one level at a time, so a deep chain
    /// does not recurse through the generated drop code.
    fn drop(&mut self) {
        let mut stack: Vec<Node<K>> = self.children.drain().map(|(_, n)| n).collect();
        stack.extend(self.plus.take().map(|b| *b));
        while let Some(mut n) = stack.pop() {
            stack.extend(n.children.drain().map(|(_, c)| c));
            stack.extend(n.plus.take().map(|b| *b));
        }
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

fn upsert<K: Copy + Eq>(list: &mut Vec<Subscriber<K>>, sub: Subscriber<K>) -> bool {
    match list.iter_mut().find(|s| s.key == sub.key) {
        Some(s) => {
            *s = sub;
            true
        }
        None => {
            list.push(sub);
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

    /// Add or replace (MQTT 3.1.1 §3.8.4-3) `key`'s subscription to a valid `filter`, with
    /// options byte `opts` (a 3.1.1 subscription: its QoS) and no Subscription Identifier.
    /// Returns true if it replaced an existing one.
    pub fn insert(&mut self, filter: &str, key: K, opts: u8) -> bool {
        self.insert_sub(filter, Subscriber { key, opts, id: 0 })
    }

    /// [`SubTree::insert`] with every field of the subscriber given.
    pub fn insert_sub(&mut self, filter: &str, sub: Subscriber<K>) -> bool {
        let mut node = &mut self.root;
        let mut levels = filter.split('/').peekable();
        while let Some(level) = levels.next() {
            if level == "#" && levels.peek().is_none() {
                let replaced = upsert(&mut node.hash, sub);
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
        let replaced = upsert(&mut node.here, sub);
        if !replaced {
            self.len += 1;
        }
        replaced
    }

    /// Remove `key`'s subscription to `filter`; empty branches are pruned. True if it existed.
    pub fn remove(&mut self, filter: &str, key: K) -> bool {
        let levels: Vec<&str> = filter.split('/').collect();
        let (path, last_hash) = match levels.split_last() {
            Some((&"#", path)) => (path, true),
            _ => (&levels[..], false),
        };
        // Walk down; remember the deepest node that keeps something besides the path: below it
        // everything on the path is pruned if the removal leaves the end node empty.
        let mut node = &mut self.root;
        let mut cut = 0; // depth of the node to prune below
        for (depth, level) in path.iter().enumerate() {
            if depth == 0 || !node.only_child(level) {
                cut = depth;
            }
            let Some(child) = node.child_mut(level) else { return false };
            node = child;
        }
        let removed = if last_hash { remove_key(&mut node.hash, key) } else { remove_key(&mut node.here, key) };
        if !removed {
            return false;
        }
        self.len -= 1;
        if node.is_empty() && !path.is_empty() {
            let mut parent = &mut self.root;
            for level in &path[..cut] {
                match parent.child_mut(level) {
                    Some(c) => parent = c,
                    None => return true,
                }
            }
            drop(parent.take_child(path[cut]));
        }
        true
    }

    /// Append every subscriber whose filter matches `topic` to `out`. A subscriber with
    /// several matching filters appears once per filter (the caller folds them, §3.3.5).
    pub fn matches(&self, topic: &str, out: &mut Vec<Subscriber<K>>) {
        let mut levels = topic.split('/');
        // A stack of (node, the levels still to match below it): one entry per `+` branch
        // taken, instead of a recursive call.
        let mut stack = Vec::new();
        // MQTT 3.1.1 §4.7.2-1: no leading wildcard matches a topic that starts with '$'.
        if topic.starts_with('$') {
            if let Some(child) = levels.next().and_then(|first| self.root.children.get(first)) {
                stack.push((child, levels));
            }
        } else {
            stack.push((&self.root, levels));
        }
        while let Some((mut node, mut levels)) = stack.pop() {
            loop {
                // MQTT 3.1.1 §4.7.1.2: `#` matches the parent level and any number of child levels.
                out.extend_from_slice(&node.hash);
                let Some(level) = levels.next() else {
                    out.extend_from_slice(&node.here);
                    break;
                };
                // MQTT 3.1.1 §4.7.1.3: `+` matches exactly one level (an empty one too).
                if let Some(plus) = node.plus.as_deref() {
                    stack.push((plus, levels.clone()));
                }
                match node.children.get(level) {
                    Some(child) => node = child,
                    None => break,
                }
            }
        }
    }

    /// Whether `filter`'s node exists (tests: pruning).
    #[cfg(test)]
    fn has_path(&self, filter: &str) -> bool {
        let mut node = &self.root;
        for level in filter.split('/') {
            match node.child(level) {
                Some(n) => node = n,
                None => return false,
            }
        }
        true
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

impl<M> Drop for RNode<M> {
    /// Iterative, as for the subscription trie's nodes.
    fn drop(&mut self) {
        let mut stack: Vec<RNode<M>> = self.children.drain().map(|(_, n)| n).collect();
        while let Some(mut n) = stack.pop() {
            stack.extend(n.children.drain().map(|(_, c)| c));
        }
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

    /// The retained message of `topic`, if any.
    pub fn get(&self, topic: &str) -> Option<&M> {
        let mut node = &self.root;
        for level in topic.split('/') {
            node = node.children.get(level)?;
        }
        node.msg.as_ref()
    }

    /// Whether `topic` has a retained message.
    pub fn contains(&self, topic: &str) -> bool {
        self.get(topic).is_some()
    }

    /// Store `msg` as the retained message of `topic`; returns the one it replaced.
    pub fn set(&mut self, topic: &str, msg: M) -> Option<M> {
        let mut node = &mut self.root;
        for level in topic.split('/') {
            node = node.children.entry(level.into()).or_default();
        }
        let old = node.msg.replace(msg);
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    /// Remove and return the retained message of `topic` (MQTT 3.1.1 §3.3.1-10); prunes empty
    /// branches.
    pub fn clear(&mut self, topic: &str) -> Option<M> {
        let levels: Vec<&str> = topic.split('/').collect();
        let mut node = &mut self.root;
        let mut cut = 0;
        for (depth, level) in levels.iter().enumerate() {
            if depth == 0 || node.msg.is_some() || node.children.len() > 1 {
                cut = depth;
            }
            node = node.children.get_mut(*level)?;
        }
        let removed = node.msg.take()?;
        self.len -= 1;
        if node.children.is_empty() {
            let mut parent = &mut self.root;
            for level in &levels[..cut] {
                match parent.children.get_mut(*level) {
                    Some(c) => parent = c,
                    None => return Some(removed),
                }
            }
            drop(parent.children.remove(levels[cut]));
        }
        Some(removed)
    }

    /// Every retained message whose topic matches the (valid) `filter`.
    pub fn matching(&self, filter: &str, out: &mut Vec<M>) {
        let levels: Vec<&str> = filter.split('/').collect();
        // (node, index of the next filter level, whether node is the root): one entry per
        // branch still to visit, instead of a recursive call.
        let mut stack = vec![(&self.root, 0usize, true)];
        while let Some((node, i, root)) = stack.pop() {
            match levels.get(i).copied() {
                None => out.extend(node.msg.iter().cloned()),
                Some("#") => {
                    // §4.7.1.2: the parent level too ("sport/#" matches "sport").
                    if !root {
                        out.extend(node.msg.iter().cloned());
                    }
                    // §4.7.2-1: a leading wildcard does not reach '$' topics.
                    let mut below: Vec<&RNode<M>> = node
                        .children
                        .iter()
                        .filter(|(name, _)| !(root && name.starts_with('$')))
                        .map(|(_, c)| c)
                        .collect();
                    while let Some(n) = below.pop() {
                        out.extend(n.msg.iter().cloned());
                        below.extend(n.children.values());
                    }
                }
                Some("+") => {
                    for (name, child) in &node.children {
                        if !(root && name.starts_with('$')) {
                            stack.push((child, i + 1, false));
                        }
                    }
                }
                Some(level) => {
                    if let Some(child) = node.children.get(level) {
                        stack.push((child, i + 1, false));
                    }
                }
            }
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
        let mut v: Vec<_> = out.into_iter().map(|s| (s.key, s.opts)).collect();
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
        assert_eq!(r.clear("sport/tennis").as_deref(), Some("sport/tennis"));
        assert!(r.clear("sport/tennis").is_none());
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

    /// Issue 13: a filter of 30,000 levels through every walk, on the 2 MiB stack of a test
    /// thread (the recursive walks overflowed it at ~8,300 levels).
    #[test]
    fn thirty_thousand_levels_do_not_recurse() {
        let deep = "+/".repeat(30_000); // 30,001 levels, the last one empty
        let topic = "a/".repeat(30_000);
        let mut t = SubTree::new();
        assert!(!t.insert(&deep, 1u32, 1));
        t.insert("a/#", 2, 0);
        let hash_deep = format!("{deep}#");
        t.insert(&hash_deep, 3, 2);
        assert_eq!(matched(&t, &topic), vec![(1, 1), (2, 0), (3, 2)]);
        assert_eq!(matched(&t, "a/b"), vec![(2, 0)]);
        assert!(t.remove(&deep, 1));
        assert!(t.has_path(&hash_deep[..hash_deep.len() - 2]), "a sibling's path stays");
        assert!(t.remove(&hash_deep, 3));
        assert!(!t.has_path("+"), "the deep chain is pruned");
        assert!(t.remove("a/#", 2));
        assert!(t.root.is_empty());
        // Dropping a deep tree is iterative too.
        let mut t = SubTree::new();
        t.insert(&deep, 1u32, 0);
        drop(t);

        let mut r = RetainTree::new();
        let long = "x/".repeat(30_000);
        r.set(&long, 7u32);
        r.set("x", 1);
        let mut got = Vec::new();
        r.matching(&deep, &mut got);
        assert_eq!(got, vec![7], "30,001 levels of + match the 30,001-level topic only");
        got.clear();
        r.matching(&format!("{deep}#"), &mut got);
        assert_eq!(got, vec![7]);
        got.clear();
        r.matching("#", &mut got);
        got.sort();
        assert_eq!(got, vec![1, 7]);
        assert_eq!(r.clear(&long), Some(7));
        assert!(r.contains("x"));
        assert_eq!(r.len(), 1);
        assert!(r.root.children.get("x").is_some_and(|x| x.children.is_empty()), "pruned below x");
        r.set(&long, 8);
        drop(r);
    }

    proptest::proptest! {
        /// Removing every filter again leaves an empty trie (pruning is complete), and removing
        /// some leaves the others matching as before.
        #[test]
        fn remove_prunes_exactly(
            filters in proptest::collection::vec(proptest::collection::vec(proptest::sample::select(vec!["a", "b", "", "+", "#"]), 1..5), 1..10),
            keep in proptest::collection::vec(proptest::bool::ANY, 10),
        ) {
            // '#' only as the last level (a valid filter).
            let fs: Vec<String> = filters.iter().map(|l| {
                let mut v: Vec<&str> = l.iter().copied().filter(|x| *x != "#").collect();
                if l.last() == Some(&"#") { v.push("#"); }
                if v.is_empty() { v.push("a"); }
                v.join("/")
            }).collect();
            let mut t = SubTree::new();
            for (i, f) in fs.iter().enumerate() {
                t.insert(f, i as u32, 0);
            }
            for (i, f) in fs.iter().enumerate() {
                if !keep[i] {
                    proptest::prop_assert!(t.remove(f, i as u32));
                }
            }
            for topic in ["a", "a/b", "/a", "a//b", "b/a/a", ""] {
                let want: Vec<(u32, u8)> = {
                    let mut v: Vec<(u32, u8)> = fs.iter().enumerate()
                        .filter(|(i, f)| keep[*i] && filter_matches(f, topic))
                        .map(|(i, _)| (i as u32, 0)).collect();
                    v.sort();
                    v
                };
                proptest::prop_assert_eq!(matched(&t, topic), want, "topic {:?} filters {:?}", topic, fs);
            }
            for (i, f) in fs.iter().enumerate() {
                if keep[i] {
                    proptest::prop_assert!(t.remove(f, i as u32));
                }
            }
            proptest::prop_assert!(t.root.is_empty(), "all removed, trie pruned: {:?}", fs);
            proptest::prop_assert_eq!(t.len(), 0);
        }

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
