//! Key derivation and decryption for the stall analysis: TLS 1.3's HKDF-Expand-Label (RFC 8446
//! §7.1), the record protection of TLS 1.3 (RFC 8446 §5.2–5.3) and QUIC's packet and header
//! protection (RFC 9001 §5), on `ring` directly.
//!
//! Why not rustls's `quic::Algorithm`: its keys are built from `rustls::crypto::cipher::AeadKey`,
//! whose only public constructor makes a 32-byte key (the length setter is crate-private), and
//! the ring provider hands that whole buffer to `ring`, which refuses it for AES-128. The three
//! TLS 1.3 suites rustls negotiates with ring are spelled out here instead.

use ring::aead::{self, quic as hp, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::hkdf;

/// A TLS 1.3 cipher suite (the ones rustls offers with the ring provider).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Suite {
    Aes128Gcm,
    Aes256Gcm,
    ChaCha20Poly1305,
}

impl Suite {
    /// The IANA name.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Suite::Aes128Gcm => "TLS13_AES_128_GCM_SHA256",
            Suite::Aes256Gcm => "TLS13_AES_256_GCM_SHA384",
            Suite::ChaCha20Poly1305 => "TLS13_CHACHA20_POLY1305_SHA256",
        }
    }

    /// The suites whose hash makes secrets of `len` bytes.
    pub(crate) fn for_secret_len(len: usize) -> &'static [Suite] {
        match len {
            32 => &[Suite::Aes128Gcm, Suite::ChaCha20Poly1305],
            48 => &[Suite::Aes256Gcm],
            _ => &[],
        }
    }

    fn hkdf(self) -> hkdf::Algorithm {
        match self {
            Suite::Aes256Gcm => hkdf::HKDF_SHA384,
            _ => hkdf::HKDF_SHA256,
        }
    }

    fn aead(self) -> &'static aead::Algorithm {
        match self {
            Suite::Aes128Gcm => &aead::AES_128_GCM,
            Suite::Aes256Gcm => &aead::AES_256_GCM,
            Suite::ChaCha20Poly1305 => &aead::CHACHA20_POLY1305,
        }
    }

    fn hp(self) -> &'static hp::Algorithm {
        match self {
            Suite::Aes128Gcm => &hp::AES_128,
            Suite::Aes256Gcm => &hp::AES_256,
            Suite::ChaCha20Poly1305 => &hp::CHACHA20,
        }
    }

    fn key_len(self) -> usize {
        self.aead().key_len()
    }

    fn hash_len(self) -> usize {
        match self {
            Suite::Aes256Gcm => 48,
            _ => 32,
        }
    }
}

struct Len(usize);

impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

/// HKDF-Expand-Label(secret, label, "", len) (RFC 8446 §7.1). `None` only for lengths HKDF
/// refuses (more than 255 hash lengths), which no caller asks for.
pub(crate) fn expand_label(suite: Suite, secret: &[u8], label: &[u8], len: usize) -> Option<Vec<u8>> {
    let prk = hkdf::Prk::new_less_safe(suite.hkdf(), secret);
    let out_len = u16::try_from(len).ok()?.to_be_bytes();
    let label_len = [u8::try_from(6 + label.len()).ok()?];
    let info: [&[u8]; 5] = [&out_len, &label_len, b"tls13 ", label, &[0u8]];
    let okm = prk.expand(&info, Len(len)).ok()?;
    let mut out = vec![0u8; len];
    okm.fill(&mut out).ok()?;
    Some(out)
}

/// An AEAD key with its static IV: one direction of one key generation.
pub(crate) struct AeadKeys {
    key: LessSafeKey,
    iv: [u8; 12],
}

impl AeadKeys {
    /// `prefix` is "" for TLS records ("key"/"iv"), "quic " for QUIC packets.
    fn derive(suite: Suite, secret: &[u8], quic: bool) -> Option<AeadKeys> {
        let (kl, il): (&[u8], &[u8]) = if quic { (b"quic key", b"quic iv") } else { (b"key", b"iv") };
        let key = expand_label(suite, secret, kl, suite.key_len())?;
        let iv = expand_label(suite, secret, il, 12)?;
        let key = LessSafeKey::new(UnboundKey::new(suite.aead(), &key).ok()?);
        let mut ivb = [0u8; 12];
        ivb.copy_from_slice(&iv);
        Some(AeadKeys { key, iv: ivb })
    }

    fn nonce(&self, seq: u64) -> Nonce {
        let mut n = self.iv;
        for (b, s) in n[4..].iter_mut().zip(seq.to_be_bytes()) {
            *b ^= s;
        }
        Nonce::assume_unique_for_key(n)
    }

    /// Open `payload` (ciphertext + tag) in place; the plaintext length on success.
    pub(crate) fn open(&self, seq: u64, aad: &[u8], payload: &mut [u8]) -> Option<usize> {
        self.key.open_in_place(self.nonce(seq), Aad::from(aad), payload).ok().map(|p| p.len())
    }
}

/// One TLS 1.3 traffic secret's record keys, with the secret for a KeyUpdate.
pub(crate) struct TlsKeys {
    pub(crate) suite: Suite,
    secret: Vec<u8>,
    pub(crate) aead: AeadKeys,
}

impl TlsKeys {
    pub(crate) fn new(suite: Suite, secret: &[u8]) -> Option<TlsKeys> {
        if secret.len() != suite.hash_len() {
            return None;
        }
        Some(TlsKeys { suite, secret: secret.to_vec(), aead: AeadKeys::derive(suite, secret, false)? })
    }

    /// The keys after a KeyUpdate ("traffic upd", RFC 8446 §7.2).
    pub(crate) fn next(&self) -> Option<TlsKeys> {
        let s = expand_label(self.suite, &self.secret, b"traffic upd", self.suite.hash_len())?;
        TlsKeys::new(self.suite, &s)
    }
}

/// One QUIC 1-RTT key generation of one direction.
pub(crate) struct QuicKeys {
    pub(crate) suite: Suite,
    secret: Vec<u8>,
    pub(crate) aead: AeadKeys,
}

impl QuicKeys {
    pub(crate) fn new(suite: Suite, secret: &[u8]) -> Option<QuicKeys> {
        if secret.len() != suite.hash_len() {
            return None;
        }
        Some(QuicKeys { suite, secret: secret.to_vec(), aead: AeadKeys::derive(suite, secret, true)? })
    }

    /// The next generation ("quic ku", RFC 9001 §6.1); the header protection key stays.
    pub(crate) fn next(&self) -> Option<QuicKeys> {
        let s = expand_label(self.suite, &self.secret, b"quic ku", self.suite.hash_len())?;
        QuicKeys::new(self.suite, &s)
    }
}

/// A QUIC header protection key ("quic hp").
pub(crate) struct HpKey(hp::HeaderProtectionKey);

impl HpKey {
    pub(crate) fn new(suite: Suite, secret: &[u8]) -> Option<HpKey> {
        let k = expand_label(suite, secret, b"quic hp", suite.key_len())?;
        hp::HeaderProtectionKey::new(suite.hp(), &k).ok().map(HpKey)
    }

    /// The 5-byte mask for a 16-byte sample.
    pub(crate) fn mask(&self, sample: &[u8]) -> Option<[u8; 5]> {
        self.0.new_mask(sample).ok()
    }
}

impl AeadKeys {
    /// Seal `buf` in place (appends the tag; nothing is sealed if the AEAD refuses the length):
    /// the tests and the fuzz target build packets with it.
    pub(crate) fn seal(&self, seq: u64, aad: &[u8], buf: &mut Vec<u8>) {
        let _ = self.key.seal_in_place_append_tag(self.nonce(seq), Aad::from(aad), buf);
    }
}
