//! Password files in mosquitto's own format, so a file made by `mosquitto_passwd` works
//! unchanged and a file made by `quiclab mqtt passwd` works in mosquitto.
//!
//! One user per line, `USER:HASH`; blank lines and lines starting with `#` are skipped. Two hash
//! schemes, both checked against mosquitto 2.0.11 (Debian's package):
//!
//! - `$7$ITERATIONS$SALT$HASH`: PBKDF2-HMAC-SHA512 of the password with the salt, standard
//!   base64 with padding. `mosquitto_passwd` 2.0.11 writes 101 iterations, a 12-byte salt and a
//!   64-byte hash; any iteration count ≥ 1 is read, and (as mosquitto) only those lengths.
//! - `$6$SALT$HASH`: SHA-512 of the password followed by the salt (mosquitto 1.x). No tool of
//!   this machine writes it; a line made independently (Python's `hashlib`) was accepted by
//!   mosquitto 2.0.11 and is a unit test here.
//!
//! Every comparison is constant-time (`ring::pbkdf2::verify`, `ring::hmac::verify`), and an
//! unknown user costs the same PBKDF2 work as a known one, so timing tells neither whether a
//! user exists nor how much of a password matched.
//!
//! Unlike mosquitto, which logs a bad line and drops that user, a bad line is an error here
//! naming the file and line: the broker refuses to start rather than run with fewer users
//! than its operator wrote.

use std::collections::HashMap;
use std::fmt;
use std::io::Write;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ring::rand::SecureRandom;
use ring::{digest, hmac, pbkdf2};

/// Iterations `mosquitto_passwd` 2.0.11 writes (`PW_DEFAULT_ITERATIONS`); the same here so a
/// file is indistinguishable from one it made.
pub(crate) const DEFAULT_ITERATIONS: u32 = 101;

/// [`DEFAULT_ITERATIONS`] as the type PBKDF2 takes (checked at compile time).
const ITERATIONS: NonZeroU32 = match NonZeroU32::new(DEFAULT_ITERATIONS) {
    Some(n) => n,
    None => panic!("DEFAULT_ITERATIONS is 0"),
};
/// Salt bytes `mosquitto_passwd` 2.0.11 writes (16 base64 characters).
pub(crate) const SALT_LEN: usize = 12;
/// PBKDF2 output bytes `mosquitto_passwd` 2.0.11 writes (SHA-512's size; 88 base64 characters).
pub(crate) const HASH_LEN: usize = 64;

/// What is wrong with one line of a password file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineProblem {
    /// No `:` between user name and hash.
    #[error("no ':' between user name and password hash")]
    NoColon,
    /// Nothing before the `:`.
    #[error("empty user name")]
    EmptyUser,
    /// Nothing after the `:` (mosquitto drops such a user: "Missing password hash").
    #[error("no password hash")]
    NoHash,
    /// The hash does not start with `$7$` or `$6$`.
    #[error("unknown hash scheme {0:?} (expected $7$ PBKDF2-SHA512 or $6$ SHA-512, as mosquitto_passwd writes)")]
    UnknownScheme(String),
    /// The hash has too few or too many `$`-separated fields.
    #[error("malformed hash: expected $7$ITERATIONS$SALT$HASH or $6$SALT$HASH")]
    Fields,
    /// The iteration count is not a number from 1 to 2^32-1.
    #[error("bad iteration count {0:?}")]
    Iterations(String),
    /// The salt or the hash is not standard base64.
    #[error("{0} is not valid base64")]
    Base64(&'static str),
    /// The salt or the hash decodes to another length than mosquitto 2.0.11 accepts (it drops
    /// such a user).
    #[error("{0} is {2} bytes; mosquitto accepts only {1}")]
    Length(&'static str, usize, usize),
    /// The user appears on an earlier line too.
    #[error("user {0:?} appears twice (first on line {1})")]
    Duplicate(String, usize),
}

/// Errors of password files.
#[derive(Debug, thiserror::Error)]
pub enum PasswordFileError {
    /// The file could not be read.
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The new file could not be written beside the old one or renamed into place.
    #[error("cannot write {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A line is malformed; the whole file is refused.
    #[error("{}:{line}: {problem}", path.display())]
    BadLine { path: PathBuf, line: usize, problem: LineProblem },
    /// `passwd -D` for a user the file does not hold.
    #[error("{}: user {user:?} not found", path.display())]
    NoSuchUser { path: PathBuf, user: String },
    /// A user name `mosquitto_passwd` refuses too: empty, or containing `:`.
    #[error("user name {0:?} cannot be stored: it is empty or contains ':'")]
    BadUserName(String),
    /// The system random generator failed.
    #[error("no random bytes for the salt")]
    Random,
}

/// An MQTT 5 enhanced authentication method (§4.12): the core runs the exchange of AUTH
/// packets, the method decides. `MqttConfig::auth_methods` lists the ones a broker offers;
/// [`crate::scram::ScramSha512`] is the one quiclab ships.
pub trait AuthMethod: Send + Sync + fmt::Debug {
    /// The Authentication Method name a CONNECT asks for (e.g. "SCRAM-SHA-512").
    fn name(&self) -> &str;
    /// A new exchange for a CONNECT that names this method, with its Authentication Data.
    fn start(&self, data: Option<&[u8]>) -> (Box<dyn AuthExchange>, AuthStep);
}

/// One client's exchange with an [`AuthMethod`].
pub trait AuthExchange: Send + fmt::Debug {
    /// The client's next AUTH, with its Authentication Data.
    fn next(&mut self, data: Option<&[u8]>) -> AuthStep;
}

/// What an authentication method answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthStep {
    /// Send this in an AUTH 0x18 (Continue authentication) and wait for the next.
    Continue(Vec<u8>),
    /// Authenticated as `user` (for the ACL); `data` goes in the CONNACK (or the AUTH 0x00 of
    /// a re-authentication).
    Success { user: Option<String>, data: Option<Vec<u8>> },
    /// Refused, and why (logged; the client gets 0x87 Not authorized).
    Failure(String),
}

/// One user's stored hash.
#[derive(Clone, PartialEq, Eq)]
enum Hash {
    /// `$7$`: PBKDF2-HMAC-SHA512.
    Pbkdf2 { iterations: NonZeroU32, salt: Vec<u8>, hash: Vec<u8> },
    /// `$6$`: SHA-512(password ‖ salt).
    Sha512 { salt: Vec<u8>, hash: Vec<u8> },
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Hashes stay out of logs.
        f.write_str(match self {
            Hash::Pbkdf2 { .. } => "$7$…",
            Hash::Sha512 { .. } => "$6$…",
        })
    }
}

/// The outcome of checking a user name and password.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Accepted,
    /// The file has no such user.
    UnknownUser,
    /// The user exists; the password is missing or does not match.
    WrongPassword,
}

/// A loaded password file.
#[derive(Debug)]
pub struct PasswordFile {
    path: PathBuf,
    users: HashMap<String, Hash>,
    /// Key for constant-time comparison of `$6$` digests (HMAC both, compare in constant time).
    cmp_key: hmac::Key,
    /// Checked against when the user is unknown, so the work is the same as for a known one.
    decoy: Hash,
}

fn parse_hash(s: &str) -> Result<Hash, LineProblem> {
    // mosquitto 2.0.11 (`unpwd__decode_passwords`) takes a user only with a 12-byte salt and
    // a 64-byte hash; the same here, so a file works on both brokers or on neither.
    let b64 = |what: &'static str, v: &str, len: usize| match B64.decode(v) {
        Ok(b) if b.len() == len => Ok(b),
        Ok(b) => Err(LineProblem::Length(what, len, b.len())),
        Err(_) => Err(LineProblem::Base64(what)),
    };
    let fields: Vec<&str> = s.split('$').collect();
    match fields.as_slice() {
        ["", "7", it, salt, hash] => {
            let iterations = it
                .parse::<u32>()
                .ok()
                .and_then(NonZeroU32::new)
                .ok_or_else(|| LineProblem::Iterations((*it).to_string()))?;
            Ok(Hash::Pbkdf2 { iterations, salt: b64("salt", salt, SALT_LEN)?, hash: b64("hash", hash, HASH_LEN)? })
        }
        ["", "6", salt, hash] => {
            Ok(Hash::Sha512 { salt: b64("salt", salt, SALT_LEN)?, hash: b64("hash", hash, HASH_LEN)? })
        }
        ["", "7", ..] | ["", "6", ..] => Err(LineProblem::Fields),
        ["", scheme, ..] => Err(LineProblem::UnknownScheme(format!("${scheme}$"))),
        _ => Err(LineProblem::UnknownScheme(s.chars().take(8).collect())),
    }
}

/// `user:hash` of a non-comment line, or `None` for a blank or comment line.
fn split_line(raw: &str) -> Result<Option<(&str, &str)>, LineProblem> {
    let line = raw.trim_end_matches(['\r', '\n', ' ', '\t']);
    if line.trim().is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    let (user, hash) = line.split_once(':').ok_or(LineProblem::NoColon)?;
    if user.is_empty() {
        return Err(LineProblem::EmptyUser);
    }
    if hash.is_empty() {
        return Err(LineProblem::NoHash);
    }
    Ok(Some((user, hash)))
}

fn random_bytes(n: usize) -> Result<Vec<u8>, PasswordFileError> {
    let mut v = vec![0u8; n];
    ring::rand::SystemRandom::new().fill(&mut v).map_err(|_| PasswordFileError::Random)?;
    Ok(v)
}

fn new_pbkdf2(password: &[u8], iterations: NonZeroU32) -> Result<Hash, PasswordFileError> {
    let salt = random_bytes(SALT_LEN)?;
    let mut hash = vec![0u8; HASH_LEN];
    pbkdf2::derive(pbkdf2::PBKDF2_HMAC_SHA512, iterations, &salt, password, &mut hash);
    Ok(Hash::Pbkdf2 { iterations, salt, hash })
}

fn encode(h: &Hash) -> String {
    match h {
        Hash::Pbkdf2 { iterations, salt, hash } => format!("$7${iterations}${}${}", B64.encode(salt), B64.encode(hash)),
        Hash::Sha512 { salt, hash } => format!("$6${}${}", B64.encode(salt), B64.encode(hash)),
    }
}

/// The line `user:$7$101$SALT$HASH` for a new password, exactly as `mosquitto_passwd` 2.0.11
/// writes it (fresh random salt).
pub(crate) fn hash_line(user: &str, password: &[u8]) -> Result<String, PasswordFileError> {
    check_user_name(user)?;
    Ok(format!("{user}:{}", encode(&new_pbkdf2(password, ITERATIONS)?)))
}

fn check_user_name(user: &str) -> Result<(), PasswordFileError> {
    if user.is_empty() || user.contains(':') || user.contains('\n') {
        return Err(PasswordFileError::BadUserName(user.to_string()));
    }
    Ok(())
}

impl PasswordFile {
    /// Read and check `path`; any bad line refuses the whole file.
    pub fn load(path: &Path) -> Result<PasswordFile, PasswordFileError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| PasswordFileError::Read { path: path.to_path_buf(), source })?;
        PasswordFile::parse(path, &text)
    }

    /// Parse `text` (`path` only names it in errors).
    pub fn parse(path: &Path, text: &str) -> Result<PasswordFile, PasswordFileError> {
        let mut users: HashMap<String, Hash> = HashMap::new();
        let mut first_line: HashMap<String, usize> = HashMap::new();
        let bad = |line: usize, problem| PasswordFileError::BadLine { path: path.to_path_buf(), line, problem };
        for (i, raw) in text.lines().enumerate() {
            let n = i + 1;
            let Some((user, hash)) = split_line(raw).map_err(|p| bad(n, p))? else { continue };
            let hash = parse_hash(hash).map_err(|p| bad(n, p))?;
            if let Some(first) = first_line.get(user) {
                return Err(bad(n, LineProblem::Duplicate(user.to_string(), *first)));
            }
            first_line.insert(user.to_string(), n);
            users.insert(user.to_string(), hash);
        }
        let cmp_key = hmac::Key::new(hmac::HMAC_SHA512, &random_bytes(32)?);
        // The decoy costs what a mosquitto_passwd entry costs.
        let decoy = new_pbkdf2(&random_bytes(16)?, ITERATIONS)?;
        Ok(PasswordFile { path: path.to_path_buf(), users, cmp_key, decoy })
    }

    /// The file it was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Number of users.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// Whether the file holds no user at all.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Whether `user` is in the file.
    pub fn contains(&self, user: &str) -> bool {
        self.users.contains_key(user)
    }

    /// What SCRAM-SHA-512 needs of `user` (RFC 5802 §3): the iteration count, the salt and
    /// the salted password, which is what a `$7$` entry stores. `None` for an unknown user or a
    /// `$6$` entry (SCRAM cannot use it).
    pub(crate) fn scram_secret(&self, user: &str) -> Option<(u32, &[u8], &[u8])> {
        match self.users.get(user)? {
            Hash::Pbkdf2 { iterations, salt, hash } => Some((iterations.get(), salt, hash)),
            Hash::Sha512 { .. } => None,
        }
    }

    /// A salt for an unknown user that is the same at every attempt (so its absence does not
    /// show): an HMAC of the name under this file's secret key.
    pub(crate) fn decoy_salt(&self, user: &str) -> Vec<u8> {
        hmac::sign(&self.cmp_key, user.as_bytes()).as_ref()[..SALT_LEN].to_vec()
    }

    /// Check `user` and `password` (`None`: the CONNECT carried no password).
    pub(crate) fn check(&self, user: &str, password: Option<&[u8]>) -> Verdict {
        let (hash, known) = match self.users.get(user) {
            Some(h) => (h, true),
            None => (&self.decoy, false),
        };
        let pw = password.unwrap_or_default();
        let matches = match hash {
            Hash::Pbkdf2 { iterations, salt, hash } => {
                pbkdf2::verify(pbkdf2::PBKDF2_HMAC_SHA512, *iterations, salt, pw, hash).is_ok()
            }
            Hash::Sha512 { salt, hash } => {
                let mut ctx = digest::Context::new(&digest::SHA512);
                ctx.update(pw);
                ctx.update(salt);
                let got = ctx.finish();
                // Constant-time: compare MACs of both under a secret key with hmac::verify.
                let want = hmac::sign(&self.cmp_key, hash);
                hmac::verify(&self.cmp_key, got.as_ref(), want.as_ref()).is_ok()
            }
        };
        match (known, password.is_some() && matches) {
            (false, _) => Verdict::UnknownUser,
            (true, true) => Verdict::Accepted,
            (true, false) => Verdict::WrongPassword,
        }
    }
}

/// What `quiclab mqtt passwd` does to a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PasswdOp {
    /// Add the user or replace their password; `create` starts a new file (`-c`).
    Set { create: bool, password: Vec<u8> },
    /// Remove the user (`-D`).
    Delete,
}

/// Apply `op` for `user` to the password file at `path`, as `mosquitto_passwd` does: other
/// lines (comments included) are kept as they are, in order; a new user is appended. The file
/// is written to a temporary file beside it with mode 0600 and renamed into place.
pub fn update_file(path: &Path, user: &str, op: &PasswdOp) -> Result<(), PasswordFileError> {
    check_user_name(user)?;
    let old = match op {
        PasswdOp::Set { create: true, .. } => String::new(),
        _ => std::fs::read_to_string(path)
            .map_err(|source| PasswordFileError::Read { path: path.to_path_buf(), source })?,
    };
    // The existing file must be one we can read (a typo would otherwise be rewritten).
    PasswordFile::parse(path, &old)?;
    let mut lines: Vec<String> = Vec::new();
    let mut found = false;
    for raw in old.lines() {
        let is_user = matches!(split_line(raw), Ok(Some((u, _))) if u == user);
        if !is_user {
            lines.push(raw.to_string());
            continue;
        }
        found = true;
        if let PasswdOp::Set { password, .. } = op {
            lines.push(hash_line(user, password)?);
        }
    }
    match op {
        PasswdOp::Delete if !found => {
            return Err(PasswordFileError::NoSuchUser { path: path.to_path_buf(), user: user.to_string() })
        }
        PasswdOp::Set { password, .. } if !found => lines.push(hash_line(user, password)?),
        _ => {}
    }
    let mut text = lines.join("\n");
    text.push('\n');
    write_private(path, text.as_bytes()).map_err(|source| PasswordFileError::Write { path: path.to_path_buf(), source })
}

/// Write `bytes` to `path` atomically: a 0600 temporary file in the same directory, synced,
/// then renamed over `path`.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let suffix = B64.encode(random_bytes(6).map_err(std::io::Error::other)?).replace('/', "_");
    let tmp = dir.join(format!(".{name}.{suffix}.tmp"));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Made here with Debian's `mosquitto_passwd -c -b FILE alice secret` (mosquitto 2.0.11)
    /// and `mosquitto_passwd -b FILE bob 'p@ss:w0rd'`.
    const MOSQUITTO_FILE: &str = "\
alice:$7$101$MuO2Fm6HrzkAJjvy$TaGs0vf11YIWmwYTi7IP5Z2KW8Wt8UtLx1hjT85qbFiTmADu71nxXZ8ZrX/4wey9BwMqRo7tS7mk6rMCkNmhnw==
bob:$7$101$zU1B8nBHC9PWLC5R$8+30DMmqC2R1WwdNwC2CZLZXUrhH0suFHMGDlZWY6XONNB0w7qwluAUrzxKxVDT+wnp0mry0vigAEMOPrSysRg==
";
    /// SHA-512("sixpass" ‖ salt 01..0c), made with Python's hashlib; mosquitto 2.0.11 accepted
    /// `six`/`sixpass` with it and refused `sixpasX`.
    const SIX: &str =
        "six:$6$AQIDBAUGBwgJCgsM$nmecvFG9gYsl6X7Ew0s4hqBtZ3c51lHC/LA3WSUJ/Bx/Mk1/8EshPuhuw7KwEiizyKc0A3TeVtvbuSZQCcqTMw==";

    fn parse(text: &str) -> Result<PasswordFile, PasswordFileError> {
        PasswordFile::parse(Path::new("pw"), text)
    }

    #[test]
    fn mosquitto_passwd_file_verifies() {
        let f = parse(MOSQUITTO_FILE).unwrap();
        assert_eq!(f.len(), 2);
        assert_eq!(f.check("alice", Some(b"secret")), Verdict::Accepted);
        assert_eq!(f.check("alice", Some(b"Secret")), Verdict::WrongPassword);
        assert_eq!(f.check("alice", None), Verdict::WrongPassword);
        assert_eq!(f.check("alice", Some(b"")), Verdict::WrongPassword);
        assert_eq!(f.check("bob", Some(b"p@ss:w0rd")), Verdict::Accepted);
        assert_eq!(f.check("bob", Some(b"secret")), Verdict::WrongPassword);
        assert_eq!(f.check("carol", Some(b"secret")), Verdict::UnknownUser);
        assert_eq!(f.check("Alice", Some(b"secret")), Verdict::UnknownUser);
    }

    #[test]
    fn sha512_scheme_verifies() {
        let f = parse(SIX).unwrap();
        assert_eq!(f.check("six", Some(b"sixpass")), Verdict::Accepted);
        assert_eq!(f.check("six", Some(b"sixpasX")), Verdict::WrongPassword);
    }

    #[test]
    fn written_line_has_mosquittos_shape_and_verifies() {
        let line = hash_line("carol", b"pw 1").unwrap();
        let (user, hash) = line.split_once(':').unwrap();
        assert_eq!(user, "carol");
        let parts: Vec<&str> = hash.split('$').collect();
        assert_eq!(parts[..3], ["", "7", "101"]);
        assert_eq!(parts[3].len(), 16, "12-byte salt, base64");
        assert_eq!(parts[4].len(), 88, "64-byte hash, base64");
        let f = parse(&format!("# comment\n\n{line}\r\n")).unwrap();
        assert_eq!(f.check("carol", Some(b"pw 1")), Verdict::Accepted);
        assert_eq!(f.check("carol", Some(b"pw 2")), Verdict::WrongPassword);
        // A fresh salt every time.
        assert_ne!(hash_line("carol", b"pw 1").unwrap(), line);
        assert!(matches!(hash_line("a:b", b"x"), Err(PasswordFileError::BadUserName(_))));
    }

    #[test]
    fn bad_lines_name_file_and_line() {
        let cases: [(&str, LineProblem); 9] = [
            ("alice", LineProblem::NoColon),
            (":$7$101$AAAA$AAAA", LineProblem::EmptyUser),
            ("alice:", LineProblem::NoHash),
            ("alice:secret", LineProblem::UnknownScheme("secret".into())),
            ("alice:$5$x$y", LineProblem::UnknownScheme("$5$".into())),
            ("alice:$7$101$AAAA", LineProblem::Fields),
            ("alice:$7$0$AAAA$AAAA", LineProblem::Iterations("0".into())),
            ("alice:$7$101$AA!A$AAAA", LineProblem::Base64("salt")),
            ("alice:$7$101$AAAA$AAAA", LineProblem::Length("salt", 12, 3)),
        ];
        for (line, want) in cases {
            let text = format!("# users\n{line}\n");
            match parse(&text) {
                Err(PasswordFileError::BadLine { line: 2, problem, .. }) => assert_eq!(problem, want, "{line}"),
                other => panic!("{line}: {other:?}"),
            }
        }
        let dup = format!("{SIX}\n{SIX}\n");
        let e = parse(&dup).unwrap_err();
        assert_eq!(e.to_string(), "pw:2: user \"six\" appears twice (first on line 1)");
    }

    #[test]
    fn update_file_adds_replaces_deletes_keeping_other_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw");
        update_file(&path, "alice", &PasswdOp::Set { create: true, password: b"a".to_vec() }).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        std::fs::write(&path, format!("# keep me\n{}\n{SIX}\n", std::fs::read_to_string(&path).unwrap().trim()))
            .unwrap();
        update_file(&path, "bob", &PasswdOp::Set { create: false, password: b"b".to_vec() }).unwrap();
        update_file(&path, "alice", &PasswdOp::Set { create: false, password: b"a2".to_vec() }).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let users: Vec<&str> = text.lines().map(|l| l.split(':').next().unwrap()).collect();
        assert_eq!(users, ["# keep me", "alice", "six", "bob"]);
        let f = PasswordFile::load(&path).unwrap();
        assert_eq!(f.check("alice", Some(b"a2")), Verdict::Accepted);
        assert_eq!(f.check("bob", Some(b"b")), Verdict::Accepted);
        assert_eq!(f.check("six", Some(b"sixpass")), Verdict::Accepted);
        update_file(&path, "six", &PasswdOp::Delete).unwrap();
        assert!(!PasswordFile::load(&path).unwrap().contains("six"));
        assert!(matches!(update_file(&path, "six", &PasswdOp::Delete), Err(PasswordFileError::NoSuchUser { .. })));
        // -c starts over.
        update_file(&path, "carol", &PasswdOp::Set { create: true, password: b"c".to_vec() }).unwrap();
        assert_eq!(PasswordFile::load(&path).unwrap().len(), 1);
        // Without -c the file must exist; a broken file is not rewritten.
        let missing = dir.path().join("none");
        assert!(matches!(
            update_file(&missing, "x", &PasswdOp::Set { create: false, password: b"x".to_vec() }),
            Err(PasswordFileError::Read { .. })
        ));
        std::fs::write(&path, "garbage\n").unwrap();
        assert!(matches!(
            update_file(&path, "x", &PasswdOp::Set { create: false, password: b"x".to_vec() }),
            Err(PasswordFileError::BadLine { line: 1, .. })
        ));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "garbage\n");
        // No temporary files left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
