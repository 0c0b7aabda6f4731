//! Where messages go: the plain subscriptions, and the shared ones (`$share/{group}/{filter}`,
//! MQTT 5 §4.8.2), which deliver each message to one member of their group.
//!
//! A shared subscription is kept as a member of its group, and the group once in a trie of its
//! inner filters, so matching a topic costs the same walk as for plain subscriptions plus one
//! pick per matching group. **Distribution policy:** round robin over the group's members in the
//! order they joined, skipping members whose session is offline while any member is online; if
//! all are offline, the next in turn gets it (queued in its session, within its bounds). Shared
//! subscriptions are accepted from 3.1.1 clients too, as mosquitto and EMQX do.

use std::collections::HashMap;

use crate::topic::{SubTree, Subscriber};

/// The prefix of a shared subscription's filter.
const SHARE: &str = "$share/";

/// `$share/{group}/{filter}` → (group, filter); `None` for a plain filter. (The codec has
/// checked the syntax: a group without wildcards and a filter after it.)
pub(crate) fn shared_parts(filter: &str) -> Option<(&str, &str)> {
    filter.strip_prefix(SHARE)?.split_once('/')
}

/// The filter a topic is matched against: the inner one of a shared subscription.
pub(crate) fn match_filter(filter: &str) -> &str {
    shared_parts(filter).map_or(filter, |(_, f)| f)
}

#[derive(Debug)]
struct Group<K> {
    /// In the order they joined.
    members: Vec<Subscriber<K>>,
    /// The member whose turn is next.
    next: usize,
}

/// Plain and shared subscriptions. `K` identifies a subscriber (the broker's session and
/// channel).
#[derive(Debug)]
pub(crate) struct Routes<K> {
    plain: SubTree<K>,
    /// Groups by index; `None`: a free slot (in `free`).
    groups: Vec<Option<Group<K>>>,
    free: Vec<u32>,
    by_name: HashMap<Box<str>, u32>,
    /// Inner filter → the groups subscribed to it (each group once, as its index).
    tree: SubTree<u32>,
    /// Members of all groups.
    shared: usize,
    /// The groups a topic matched (kept between calls: no allocation per message).
    found: Vec<Subscriber<u32>>,
}

impl<K: Copy + Eq + Ord> Routes<K> {
    pub fn new() -> Routes<K> {
        Routes {
            plain: SubTree::new(),
            groups: Vec::new(),
            free: Vec::new(),
            by_name: HashMap::new(),
            tree: SubTree::new(),
            shared: 0,
            found: Vec::new(),
        }
    }

    /// Subscriptions, plain and shared.
    pub fn len(&self) -> usize {
        self.plain.len() + self.shared
    }

    /// Add or replace `sub.key`'s subscription to `filter` (plain or shared).
    pub fn insert_sub(&mut self, filter: &str, sub: Subscriber<K>) {
        let Some((_, inner)) = shared_parts(filter) else {
            self.plain.insert_sub(filter, sub);
            return;
        };
        let idx = match self.by_name.get(filter) {
            Some(&i) => i,
            None => {
                let group = Group { members: Vec::new(), next: 0 };
                let i = match self.free.pop() {
                    Some(i) => {
                        self.groups[i as usize] = Some(group);
                        i
                    }
                    None => {
                        self.groups.push(Some(group));
                        (self.groups.len() - 1) as u32
                    }
                };
                self.by_name.insert(filter.into(), i);
                self.tree.insert(inner, i, 0);
                i
            }
        };
        let Some(g) = self.groups.get_mut(idx as usize).and_then(Option::as_mut) else { return };
        match g.members.iter_mut().find(|m| m.key == sub.key) {
            Some(m) => *m = sub,
            None => {
                g.members.push(sub);
                self.shared += 1;
            }
        }
    }

    /// Remove `key`'s subscription to `filter`; a group left empty goes. True if it existed.
    pub fn remove(&mut self, filter: &str, key: K) -> bool {
        let Some((_, inner)) = shared_parts(filter) else { return self.plain.remove(filter, key) };
        let Some(&idx) = self.by_name.get(filter) else { return false };
        let Some(g) = self.groups.get_mut(idx as usize).and_then(Option::as_mut) else { return false };
        let Some(at) = g.members.iter().position(|m| m.key == key) else { return false };
        g.members.remove(at);
        if g.next > at {
            g.next -= 1;
        }
        self.shared -= 1;
        if g.members.is_empty() {
            self.tree.remove(inner, idx);
            self.by_name.remove(filter);
            self.groups[idx as usize] = None;
            self.free.push(idx);
        }
        true
    }

    /// Append the plain subscribers whose filter matches `topic` to `out` (see
    /// [`SubTree::matches`]).
    pub fn matches(&self, topic: &str, out: &mut Vec<Subscriber<K>>) {
        self.plain.matches(topic, out);
    }

    /// Append one member of every group whose filter matches `topic`, chosen by the policy of
    /// the module documentation (`online`: whether a member's session is connected).
    pub fn pick_shared(&mut self, topic: &str, online: impl Fn(K) -> bool, out: &mut Vec<Subscriber<K>>) {
        if self.by_name.is_empty() {
            return;
        }
        let mut found = std::mem::take(&mut self.found);
        found.clear();
        self.tree.matches(topic, &mut found);
        for f in &found {
            let Some(g) = self.groups.get_mut(f.key as usize).and_then(Option::as_mut) else { continue };
            let n = g.members.len();
            if n == 0 {
                continue;
            }
            let start = g.next % n;
            let pick = (0..n).map(|k| (start + k) % n).find(|&i| online(g.members[i].key)).unwrap_or(start);
            out.push(g.members[pick]);
            g.next = (pick + 1) % n;
        }
        self.found = found;
    }

    /// The full filters of the groups (tests).
    #[cfg(test)]
    pub fn group_names(&self) -> Vec<&str> {
        self.by_name.keys().map(|k| &**k).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(key: u32) -> Subscriber<u32> {
        Subscriber { key, opts: 1, id: 0 }
    }

    #[test]
    fn members_take_turns_and_offline_ones_are_skipped() {
        let mut r: Routes<u32> = Routes::new();
        for k in [1, 2, 3] {
            r.insert_sub("$share/g/a/+", sub(k));
        }
        r.insert_sub("a/b", sub(9));
        assert_eq!(r.len(), 4);
        let mut picks = Vec::new();
        for _ in 0..6 {
            let mut out = Vec::new();
            r.pick_shared("a/b", |_| true, &mut out);
            picks.extend(out.iter().map(|s| s.key));
        }
        assert_eq!(picks, [1, 2, 3, 1, 2, 3]);
        // 2 offline: 1 and 3 alternate.
        let mut picks = Vec::new();
        for _ in 0..4 {
            let mut out = Vec::new();
            r.pick_shared("a/b", |k| k != 2, &mut out);
            picks.extend(out.iter().map(|s| s.key));
        }
        assert_eq!(picks, [1, 3, 1, 3]);
        // Nobody online: still one each time.
        let mut out = Vec::new();
        r.pick_shared("a/b", |_| false, &mut out);
        assert_eq!(out.len(), 1);
        // The plain subscription is matched apart.
        let mut out = Vec::new();
        r.matches("a/b", &mut out);
        assert_eq!(out.iter().map(|s| s.key).collect::<Vec<_>>(), [9]);
    }

    #[test]
    fn an_empty_group_goes_and_its_slot_is_reused() {
        let mut r: Routes<u32> = Routes::new();
        r.insert_sub("$share/g/x", sub(1));
        r.insert_sub("$share/h/x", sub(1));
        assert_eq!(r.group_names().len(), 2);
        assert!(r.remove("$share/g/x", 1));
        assert!(!r.remove("$share/g/x", 1));
        assert_eq!(r.group_names(), ["$share/h/x"]);
        let mut out = Vec::new();
        r.pick_shared("x", |_| true, &mut out);
        assert_eq!(out.len(), 1, "only h is left");
        r.insert_sub("$share/k/y", sub(2));
        assert_eq!(r.group_names().len(), 2);
        let mut out = Vec::new();
        r.pick_shared("x", |_| true, &mut out);
        assert_eq!(out.len(), 1, "the reused slot does not answer for x");
        assert_eq!(r.len(), 2);
    }

    #[test]
    fn parts() {
        assert_eq!(shared_parts("$share/g/a/#"), Some(("g", "a/#")));
        assert_eq!(shared_parts("a/#"), None);
        assert_eq!(match_filter("$share/g/a/+"), "a/+");
    }
}
