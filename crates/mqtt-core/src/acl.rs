//! Access control lists in mosquitto's `acl_file` syntax (mosquitto.conf(5)), with mosquitto
//! 2.0.11's semantics, checked against that broker here:
//!
//! ```text
//! # comment (only in the first column)
//! topic [read|write|readwrite|deny] TOPIC     before any `user` line: anonymous clients
//! user NAME                                   the `topic` lines after it are NAME's
//! pattern [read|write|readwrite|deny] TOPIC   everyone; %c = client id, %u = user name
//! ```
//!
//! Without an access word the rule is `readwrite` (so `topic read` is readwrite on the topic
//! `read`, as in mosquitto). A TOPIC is a topic filter (`+`, `#`); it may contain spaces.
//!
//! **Deciding** (mosquitto 2.0.11 `acl_check`): the client's own list (its user's `topic`
//! lines, or the anonymous ones when it gave no user name) first, then the patterns; within
//! each, a matching `deny` wins over any allow, then a matching rule with the access asked for
//! allows; nothing matching denies. Consequences: a user's `deny` beats the patterns, a
//! pattern's `deny` does not undo the user's own allow. `%u` patterns do not apply to
//! anonymous clients. When a client's id or user name contains `+` or `#`, every pattern denies
//! it (mosquitto's guard against ids like `+` that would widen `clients/%c/#`); `/` in them is
//! not refused. A rule whose filter starts with a wildcard never matches a `$` topic, so
//! `topic read #` does not give `$SYS/#` (MQTT 3.1.1 §4.7.2-1).
//!
//! **Subscribing** (where quiclab differs): mosquitto 2.0.11 grants every SUBSCRIBE with 0x00
//! (its acl_file check for subscriptions is a "FIXME") and only checks each message for read as
//! it is delivered. quiclab checks each message the same way, and in addition refuses with 0x80
//! a filter through which the rules could never let a message pass
//! (`ClientAcl::may_subscribe`), so a client learns at once. The messages delivered are the
//! same on both brokers.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::topic::filter_matches;

/// What a rule grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    Read,
    Write,
    ReadWrite,
    /// Neither, whatever other rules say (checked before them).
    Deny,
}

impl Access {
    fn grants(self, op: Op) -> bool {
        matches!((self, op), (Access::ReadWrite, _) | (Access::Read, Op::Read) | (Access::Write, Op::Write))
    }
}

/// What a client wants to do with a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Receive a message published to it (checked per message, at delivery).
    Read,
    /// Publish to it (wills included).
    Write,
}

/// What is wrong with one line of an ACL file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AclLineProblem {
    /// `topic` or `pattern` with nothing after it.
    #[error("no topic")]
    NoTopic,
    /// The access word is not read, write, readwrite or deny.
    #[error("access {0:?} is not read, write, readwrite or deny")]
    BadAccess(String),
    /// The topic is not a valid topic filter (MQTT 3.1.1 §4.7.1).
    #[error("{0:?} is not a valid topic filter")]
    BadTopic(String),
    /// `user` with no name.
    #[error("no user name")]
    NoUser,
    /// The line starts with none of `topic`, `pattern`, `user`, `#`.
    #[error("not a topic, pattern or user line: {0:?}")]
    Unknown(String),
}

/// Errors of ACL files.
#[derive(Debug, thiserror::Error)]
pub enum AclError {
    /// The file could not be read.
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A line is malformed; the whole file is refused (mosquitto refuses to start too).
    #[error("{}:{line}: {problem}", path.display())]
    BadLine { path: PathBuf, line: usize, problem: AclLineProblem },
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    access: Access,
    topic: Box<str>,
}

/// Rules in checking order: every `deny` first, then the others in file order (mosquitto puts
/// deny rules at the front of each list as it reads the file).
#[derive(Debug, Default, Clone)]
struct RuleList {
    rules: Vec<Rule>,
    denies: usize,
}

impl RuleList {
    fn push(&mut self, r: Rule) {
        if r.access == Access::Deny {
            self.rules.insert(self.denies, r);
            self.denies += 1;
        } else {
            self.rules.push(r);
        }
    }

    fn deny(&self) -> &[Rule] {
        &self.rules[..self.denies]
    }

    fn allow(&self) -> &[Rule] {
        &self.rules[self.denies..]
    }

    /// `Some(allowed)` if a rule decides, `None` to go on.
    fn decide(&self, topic: &str, op: Op) -> Option<bool> {
        if self.deny().iter().any(|r| filter_matches(&r.topic, topic)) {
            return Some(false);
        }
        self.allow().iter().any(|r| r.access.grants(op) && filter_matches(&r.topic, topic)).then_some(true)
    }
}

/// A loaded ACL file.
#[derive(Debug)]
pub struct AclFile {
    path: PathBuf,
    anonymous: Arc<RuleList>,
    users: HashMap<String, Arc<RuleList>>,
    patterns: RuleList,
}

/// Whether `s` is a valid topic filter (MQTT 3.1.1 §4.7.1): `#` only last and alone in its
/// level, `+` alone in its level, no NUL, not empty.
fn valid_filter(s: &str) -> bool {
    if s.is_empty() || s.contains('\0') {
        return false;
    }
    let levels: Vec<&str> = s.split('/').collect();
    levels
        .iter()
        .enumerate()
        .all(|(i, l)| (!l.contains('#') || (*l == "#" && i + 1 == levels.len())) && (!l.contains('+') || *l == "+"))
}

impl AclFile {
    /// Read and check `path`; any bad line refuses the whole file.
    pub fn load(path: &Path) -> Result<AclFile, AclError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| AclError::Read { path: path.to_path_buf(), source })?;
        AclFile::parse(path, &text)
    }

    /// Parse `text` (`path` only names it in errors).
    pub fn parse(path: &Path, text: &str) -> Result<AclFile, AclError> {
        let mut anonymous = RuleList::default();
        let mut users: HashMap<String, RuleList> = HashMap::new();
        let mut patterns = RuleList::default();
        let mut user: Option<String> = None;
        for (i, raw) in text.lines().enumerate() {
            let bad = |problem| AclError::BadLine { path: path.to_path_buf(), line: i + 1, problem };
            // As mosquitto: trailing white space goes, `#` only in the first column starts a
            // comment, words are separated by spaces.
            let line = raw.trim_end();
            if line.starts_with('#') {
                continue;
            }
            let rest = line.trim_start_matches(' ');
            if rest.is_empty() {
                continue;
            }
            let (word, rest) = rest.split_once(' ').unwrap_or((rest, ""));
            let rest = rest.trim_start_matches(' ');
            match word {
                "topic" | "pattern" => {
                    if rest.is_empty() {
                        return Err(bad(AclLineProblem::NoTopic));
                    }
                    let (access, topic) = match rest.split_once(' ') {
                        None => (Access::ReadWrite, rest),
                        Some((a, t)) => {
                            let access = match a {
                                "read" => Access::Read,
                                "write" => Access::Write,
                                "readwrite" => Access::ReadWrite,
                                "deny" => Access::Deny,
                                other => return Err(bad(AclLineProblem::BadAccess(other.into()))),
                            };
                            (access, t.trim_matches([' ', '\t']))
                        }
                    };
                    if !valid_filter(topic) {
                        return Err(bad(AclLineProblem::BadTopic(topic.into())));
                    }
                    let rule = Rule { access, topic: topic.into() };
                    match (word, &user) {
                        ("pattern", _) => patterns.push(rule),
                        (_, None) => anonymous.push(rule),
                        (_, Some(u)) => users.entry(u.clone()).or_default().push(rule),
                    }
                }
                "user" => {
                    let name = rest.trim_matches([' ', '\t']);
                    if name.is_empty() {
                        return Err(bad(AclLineProblem::NoUser));
                    }
                    user = Some(name.to_string());
                }
                _ => return Err(bad(AclLineProblem::Unknown(line.chars().take(60).collect()))),
            }
        }
        Ok(AclFile {
            path: path.to_path_buf(),
            anonymous: Arc::new(anonymous),
            users: users.into_iter().map(|(k, v)| (k, Arc::new(v))).collect(),
            patterns,
        })
    }

    /// The file it was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Rules in the file (topic and pattern lines).
    pub fn rules(&self) -> usize {
        self.anonymous.rules.len()
            + self.users.values().map(|l| l.rules.len()).sum::<usize>()
            + self.patterns.rules.len()
    }

    /// The rules that apply to a client, with `%c` and `%u` filled in: computed once per
    /// connection, so checking a message allocates nothing.
    pub(crate) fn for_client(&self, user: Option<&str>, client_id: &str) -> ClientAcl {
        let own = match user {
            None => Some(self.anonymous.clone()),
            Some(u) => self.users.get(u).cloned(),
        };
        let dangerous = |s: &str| s.contains(['+', '#']);
        let patterns_deny_all =
            !self.patterns.rules.is_empty() && (dangerous(client_id) || user.is_some_and(dangerous));
        let mut patterns = RuleList::default();
        if !patterns_deny_all {
            for r in &self.patterns.rules {
                let topic = &*r.topic;
                // mosquitto 2.0.11: a pattern with %u does not apply to a client without a
                // user name.
                if user.is_none() && topic.contains("%u") {
                    continue;
                }
                patterns.push(Rule { access: r.access, topic: substitute(topic, client_id, user).into() });
            }
        }
        ClientAcl { own, patterns, patterns_deny_all }
    }
}

/// The rules of one client (see [`AclFile::for_client`]).
#[derive(Debug)]
pub(crate) struct ClientAcl {
    own: Option<Arc<RuleList>>,
    patterns: RuleList,
    /// The client id or user name contains `+` or `#` and the file has patterns.
    patterns_deny_all: bool,
}

impl ClientAcl {
    /// Whether the client may `op` the topic name `topic`.
    pub fn allows(&self, topic: &str, op: Op) -> bool {
        if let Some(allowed) = self.own.as_deref().and_then(|l| l.decide(topic, op)) {
            return allowed;
        }
        if self.patterns_deny_all {
            return false;
        }
        self.patterns.decide(topic, op).unwrap_or(false)
    }

    /// Whether a subscription to `filter` could ever deliver a message: some rule granting
    /// read has topics in common with `filter` that no single `deny` rule checked before it
    /// covers. `false` only when [`ClientAcl::allows`] would refuse read for every topic the
    /// filter matches (several deny rules that only together cover a filter leave it
    /// granted; its messages are still checked one by one).
    pub fn may_subscribe(&self, filter: &str) -> bool {
        let f = levels(filter);
        let own_denies: &[Rule] = self.own.as_deref().map_or(&[], |l| l.deny());
        let open = |allow: &[Rule], denies: &[&[Rule]]| {
            allow.iter().filter(|r| r.access.grants(Op::Read)).any(|r| match meet(&f, &levels(&r.topic)) {
                None => false,
                Some(common) => !denies.iter().flat_map(|d| d.iter()).any(|d| covers(&levels(&d.topic), &common)),
            })
        };
        if let Some(own) = self.own.as_deref() {
            if open(own.allow(), &[own_denies]) {
                return true;
            }
        }
        !self.patterns_deny_all && open(self.patterns.allow(), &[own_denies, self.patterns.deny()])
    }
}

/// `%c` → client id, `%u` → user name, in one pass (an id containing `%u` stays literal), as
/// mosquitto 2.0.11 does.
fn substitute(pattern: &str, client_id: &str, user: Option<&str>) -> String {
    let mut out = String::with_capacity(pattern.len() + client_id.len());
    let mut chars = pattern.chars().peekable();
    while let Some(ch) = chars.next() {
        match (ch, chars.peek(), user) {
            ('%', Some('c'), _) => {
                chars.next();
                out.push_str(client_id);
            }
            ('%', Some('u'), Some(u)) => {
                chars.next();
                out.push_str(u);
            }
            _ => out.push(ch),
        }
    }
    out
}

fn levels(s: &str) -> Vec<&str> {
    s.split('/').collect()
}

fn is_wild(l: &str) -> bool {
    l == "+" || l == "#"
}

/// The filter matching exactly the topics both `a` and `b` match, if there are any.
fn meet<'a>(a: &[&'a str], b: &[&'a str]) -> Option<Vec<&'a str>> {
    // §4.7.2-1: a filter starting with a wildcard matches no `$` topic.
    let dollar =
        |x: &[&str], y: &[&str]| x.first().is_some_and(|l| l.starts_with('$')) && y.first().is_some_and(|l| is_wild(l));
    if dollar(a, b) || dollar(b, a) {
        return None;
    }
    let mut out = Vec::new();
    let mut i = 0;
    loop {
        match (a.get(i).copied(), b.get(i).copied()) {
            // `x/#` also matches `x`: what is left of the other filter, possibly nothing.
            (Some("#"), _) => {
                out.extend_from_slice(&b[i..]);
                return Some(out);
            }
            (_, Some("#")) => {
                out.extend_from_slice(&a[i..]);
                return Some(out);
            }
            (None, None) => return Some(out),
            (None, Some(_)) | (Some(_), None) => return None,
            (Some("+"), Some(y)) => out.push(y),
            (Some(x), Some("+")) => out.push(x),
            (Some(x), Some(y)) if x == y => out.push(x),
            _ => return None,
        }
        i += 1;
    }
}

/// Whether every topic `inner` matches is matched by `outer`.
fn covers(outer: &[&str], inner: &[&str]) -> bool {
    // A wildcard-first `outer` matches no `$` topic; `inner` may match some only if its first
    // level is a `$` name.
    if outer.first().is_some_and(|l| is_wild(l)) && inner.first().is_some_and(|l| l.starts_with('$')) {
        return false;
    }
    let mut i = 0;
    loop {
        match (outer.get(i).copied(), inner.get(i).copied()) {
            (Some("#"), _) => return true,
            (None, None) => return true,
            (Some("+"), Some(x)) if x != "#" => {}
            (Some(x), Some(y)) if x == y && !is_wild(x) => {}
            _ => return false,
        }
        i += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The file of the interop tests (tests/interop/test_mqtt_auth.py), whose outcomes were
    /// checked against mosquitto 2.0.11.
    const ACL: &str = "\
# anonymous clients
topic read public/#
topic write anon/in
topic deny public/hidden

user alice
topic readwrite alice/#
topic deny alice/secret/#
topic read public/#
topic write public/alice

user bob
topic read #
topic read $SYS/#
topic deny alice/secret/#

pattern readwrite clients/%c/#
pattern read users/%u/#
pattern write outbox/%u
";

    fn acl() -> AclFile {
        AclFile::parse(Path::new("acl"), ACL).unwrap()
    }

    #[test]
    fn topic_rules_deny_first_then_patterns() {
        let a = acl();
        let alice = a.for_client(Some("alice"), "a1");
        assert!(alice.allows("alice/x", Op::Write));
        assert!(alice.allows("alice/x", Op::Read));
        assert!(!alice.allows("alice/secret/x", Op::Write), "deny beats the earlier readwrite");
        assert!(!alice.allows("alice/secret/x", Op::Read));
        assert!(alice.allows("public/alice", Op::Write));
        assert!(!alice.allows("public/x", Op::Write));
        assert!(alice.allows("clients/a1/x", Op::Write), "pattern %c");
        assert!(!alice.allows("clients/a2/x", Op::Write));
        assert!(alice.allows("users/alice/x", Op::Read), "pattern %u");
        assert!(!alice.allows("users/alice/x", Op::Write));
        assert!(alice.allows("outbox/alice", Op::Write));
        assert!(!alice.allows("nothing", Op::Read));

        let bob = a.for_client(Some("bob"), "b");
        assert!(bob.allows("anything/at/all", Op::Read));
        assert!(!bob.allows("anything", Op::Write));
        assert!(!bob.allows("alice/secret/x", Op::Read));
        assert!(bob.allows("$SYS/broker/version", Op::Read), "needs its own $SYS rule");
        let bob_no_sys = AclFile::parse(Path::new("acl"), "user bob\ntopic read #\n").unwrap();
        assert!(!bob_no_sys.for_client(Some("bob"), "b").allows("$SYS/x", Op::Read), "§4.7.2-1");
    }

    #[test]
    fn anonymous_and_unlisted_users() {
        let a = acl();
        let anon = a.for_client(None, "anon1");
        assert!(anon.allows("public/x", Op::Read));
        assert!(!anon.allows("public/x", Op::Write));
        assert!(!anon.allows("public/hidden", Op::Read));
        assert!(anon.allows("anon/in", Op::Write));
        assert!(anon.allows("clients/anon1/x", Op::Write), "%c patterns apply to anonymous clients");
        assert!(!anon.allows("outbox/", Op::Write), "%u patterns do not");
        assert!(!anon.allows("outbox/%u", Op::Write));
        // A user with no `user` block: patterns only, not the anonymous rules.
        let carol = a.for_client(Some("carol"), "c1");
        assert!(!carol.allows("public/x", Op::Read));
        assert!(carol.allows("clients/c1/x", Op::Read));
        assert!(carol.allows("outbox/carol", Op::Write));
    }

    #[test]
    fn wildcards_in_id_or_user_deny_every_pattern() {
        let a = acl();
        for (user, id) in [(None, "+"), (None, "#"), (None, "a+b"), (Some("x#"), "c"), (Some("alice"), "+")] {
            let c = a.for_client(user, id);
            assert!(!c.allows("clients/zzz/x", Op::Read), "{user:?} {id}");
            assert!(!c.allows(&format!("clients/{id}/x"), Op::Read), "{user:?} {id}");
        }
        // ...but the client's own topic rules still apply.
        assert!(a.for_client(Some("alice"), "+").allows("alice/x", Op::Write));
        // A `/` in the id is not refused (mosquitto 2.0.11 lets it widen the pattern).
        assert!(a.for_client(None, "z/y").allows("clients/z/y/x", Op::Write));
    }

    #[test]
    fn subscribe_refused_only_when_nothing_could_pass() {
        let a = acl();
        let alice = a.for_client(Some("alice"), "a1");
        for f in ["alice/#", "alice/x", "#", "+/x", "public/+", "clients/a1/#", "users/alice/x"] {
            assert!(alice.may_subscribe(f), "{f}");
        }
        for f in
            ["alice/secret", "alice/secret/#", "alice/secret/x", "nothing/#", "clients/a2/#", "outbox/alice", "$SYS/#"]
        {
            assert!(!alice.may_subscribe(f), "{f}");
        }
        let anon = a.for_client(None, "n");
        assert!(anon.may_subscribe("public/#"));
        assert!(!anon.may_subscribe("public/hidden"));
        assert!(!anon.may_subscribe("anon/in"), "write only");
        assert!(anon.may_subscribe("clients/n/+"));
        let bob = a.for_client(Some("bob"), "b");
        assert!(bob.may_subscribe("$SYS/#"));
        assert!(bob.may_subscribe("#"));
        assert!(!bob.may_subscribe("alice/secret/#"));
        assert!(a.for_client(None, "+").may_subscribe("public/#"));
        assert!(!a.for_client(None, "+").may_subscribe("clients/#"));
    }

    #[test]
    fn substitution_is_one_pass() {
        assert_eq!(substitute("a/%c/%u/%x%", "id", Some("bob")), "a/id/bob/%x%");
        assert_eq!(substitute("a/%c/#", "%u", Some("bob")), "a/%u/#");
        assert_eq!(substitute("a/%u%c", "c", Some("%c")), "a/%cc");
    }

    #[test]
    fn meet_and_covers() {
        let m = |a: &str, b: &str| meet(&levels(a), &levels(b)).map(|v| v.join("/"));
        assert_eq!(m("a/#", "a").as_deref(), Some("a"));
        assert_eq!(m("a/#", "+/b/#").as_deref(), Some("a/b/#"));
        assert_eq!(m("+/+", "a/#").as_deref(), Some("a/+"));
        assert_eq!(m("a/b", "a/c"), None);
        assert_eq!(m("#", "$SYS/x"), None);
        assert_eq!(m("$SYS/#", "$SYS/+").as_deref(), Some("$SYS/+"));
        assert_eq!(m("a/+", "a"), None);
        let c = |o: &str, i: &str| covers(&levels(o), &levels(i));
        assert!(c("a/#", "a/b/+"));
        assert!(c("a/#", "a"));
        assert!(c("+/b", "x/b"));
        assert!(!c("a/+", "a/#"));
        assert!(!c("a/b", "a/+"));
        assert!(!c("#", "$SYS/x"));
    }

    #[test]
    fn syntax_as_mosquitto() {
        let a = AclFile::parse(Path::new("acl"), "topic read\n  topic  write  bar/baz \nuser  spaced name \ntopic x\n")
            .unwrap();
        // `topic read`: readwrite on the topic "read".
        assert!(a.for_client(None, "c").allows("read", Op::Write));
        assert!(a.for_client(None, "c").allows("bar/baz", Op::Write));
        assert!(!a.for_client(None, "c").allows("bar/baz", Op::Read));
        assert!(a.for_client(Some("spaced name"), "c").allows("x", Op::Write));
        let bad = |text: &str| match AclFile::parse(Path::new("f.acl"), text) {
            Err(AclError::BadLine { line, problem, .. }) => (line, problem),
            other => panic!("{text:?}: {other:?}"),
        };
        assert_eq!(bad("# c\ntopic\n"), (2, AclLineProblem::NoTopic));
        assert_eq!(bad("topic rw a\n"), (1, AclLineProblem::BadAccess("rw".into())));
        assert_eq!(bad("topic read a/#/b\n"), (1, AclLineProblem::BadTopic("a/#/b".into())));
        assert_eq!(bad("topic read a+\n"), (1, AclLineProblem::BadTopic("a+".into())));
        assert_eq!(bad("\n\nuser\n"), (3, AclLineProblem::NoUser));
        assert_eq!(bad("users alice\n"), (1, AclLineProblem::Unknown("users alice".into())));
        assert_eq!(bad(" # indented comment\n"), (1, AclLineProblem::Unknown(" # indented comment".into())));
        let e = AclFile::parse(Path::new("f.acl"), "bogus\n").unwrap_err().to_string();
        assert_eq!(e, "f.acl:1: not a topic, pattern or user line: \"bogus\"");
    }
}
