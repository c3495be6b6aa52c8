//! WireGuard keys: X25519 static key pairs and preshared keys, in wg's base64
//! format, and key files written atomically with mode 0600.
//!
//! Private and preshared keys never appear in `Debug` output or logs: their
//! `Debug` impls print `<redacted>`, and only `to_base64` reveals them.

use std::fmt;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use boringtun::x25519;

/// Length of every WireGuard key in bytes.
pub const KEY_LEN: usize = 32;

/// Why a key could not be read, parsed, made or written.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Not 32 bytes of standard base64. `what` names the key (private,
    /// public, preshared), `why` the decoder's complaint.
    #[error("{what}: not a WireGuard key: {why} (expected 44 characters of base64, as `wg genkey` prints)")]
    Malformed {
        /// Which key: "private key", "public key", "preshared key".
        what: &'static str,
        /// The decoder's complaint.
        why: String,
    },

    /// A key file could not be read.
    #[error("read key file {}: {source}", path.display())]
    Read {
        /// The key file.
        path: PathBuf,
        /// The read error.
        #[source]
        source: std::io::Error,
    },

    /// A secret key file that group or others may read (`mode` is its
    /// permission bits): refused, as `wg` warns.
    #[error("key file {} is readable by others (mode {mode:o}); chmod 600 it", path.display())]
    Exposed {
        /// The key file.
        path: PathBuf,
        /// Its permission bits (shown in octal).
        mode: u32,
    },

    /// A key file could not be written (atomically, mode 600).
    #[error("write key file {}: {source}", path.display())]
    Write {
        /// The key file.
        path: PathBuf,
        /// The write error.
        #[source]
        source: std::io::Error,
    },

    /// The kernel's random source (getrandom) failed.
    #[error("get random bytes for a new key: {0}")]
    Random(#[source] std::io::Error),
}

/// Our static private key. Cloning copies the secret; `Debug` redacts it.
#[derive(Clone)]
pub struct PrivateKey(x25519::StaticSecret);

/// A peer's (or our) static public key, shown as base64.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey([u8; KEY_LEN]);

/// An optional symmetric key mixed into one peer's handshake; `Debug` redacts it.
#[derive(Clone, PartialEq, Eq)]
pub struct PresharedKey([u8; KEY_LEN]);

impl PrivateKey {
    /// A fresh key from the kernel's random source, clamped as `wg genkey` does.
    pub fn generate() -> Result<PrivateKey, KeyError> {
        let mut bytes = random_bytes()?;
        bytes[0] &= 248;
        bytes[31] &= 127;
        bytes[31] |= 64;
        Ok(PrivateKey::from_bytes(bytes))
    }

    /// A private key from its 32 raw bytes.
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> PrivateKey {
        PrivateKey(x25519::StaticSecret::from(bytes))
    }

    /// A private key from wg's base64 (44 characters), as `wg genkey` prints.
    /// Errors with [`KeyError::Malformed`].
    pub fn from_base64(text: &str) -> Result<PrivateKey, KeyError> {
        decode("private key", text).map(PrivateKey::from_bytes)
    }

    /// The key in wg's format. Handle with care: this is the secret.
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0.to_bytes())
    }

    /// The public key peers configure for this private key (X25519 base point
    /// multiplication).
    pub fn public_key(&self) -> PublicKey {
        PublicKey(*x25519::PublicKey::from(&self.0).as_bytes())
    }

    pub(crate) fn secret(&self) -> &x25519::StaticSecret {
        &self.0
    }

    /// Reads a key file as `wg genkey` writes it, refusing one that group or
    /// others can read.
    pub fn read_file(path: &Path) -> Result<PrivateKey, KeyError> {
        let read = |source| KeyError::Read {
            path: path.to_path_buf(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(read)?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyError::Exposed {
                path: path.to_path_buf(),
                mode,
            });
        }
        let text = std::fs::read_to_string(path).map_err(read)?;
        PrivateKey::from_base64(text.trim())
    }

    /// Writes the key atomically (temporary file in the same directory, fsync,
    /// rename) with mode 0600 from the start, so it is never briefly exposed.
    pub fn write_file(&self, path: &Path) -> Result<(), KeyError> {
        write_secret_file(path, &self.to_base64())
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PrivateKey(<redacted>)")
    }
}

impl PublicKey {
    /// A public key from its 32 raw bytes.
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> PublicKey {
        PublicKey(bytes)
    }

    /// A public key from wg's base64 (44 characters), as `wg pubkey` prints.
    /// Errors with [`KeyError::Malformed`].
    pub fn from_base64(text: &str) -> Result<PublicKey, KeyError> {
        decode("public key", text).map(PublicKey)
    }

    /// The key in wg's base64, as `wg show` prints it.
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }

    /// The 32 raw bytes.
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    pub(crate) fn to_x25519(self) -> x25519::PublicKey {
        x25519::PublicKey::from(self.0)
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base64())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

impl FromStr for PublicKey {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PublicKey::from_base64(s)
    }
}

impl serde::Serialize for PublicKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_base64())
    }
}

impl<'de> serde::Deserialize<'de> for PublicKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        PublicKey::from_base64(&text).map_err(serde::de::Error::custom)
    }
}

impl PresharedKey {
    /// A fresh key from the kernel's random source, as `wg genpsk` makes.
    pub fn generate() -> Result<PresharedKey, KeyError> {
        random_bytes().map(PresharedKey)
    }

    /// A preshared key from its 32 raw bytes.
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> PresharedKey {
        PresharedKey(bytes)
    }

    /// A preshared key from wg's base64 (44 characters), as `wg genpsk` prints.
    /// Errors with [`KeyError::Malformed`].
    pub fn from_base64(text: &str) -> Result<PresharedKey, KeyError> {
        decode("preshared key", text).map(PresharedKey)
    }

    /// The key in wg's format. Handle with care: this is a secret.
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }

    pub(crate) fn bytes(&self) -> [u8; KEY_LEN] {
        self.0
    }

    /// Writes the key in wg's base64 to `path`, readable by its owner only
    /// (mode 600), replacing the file atomically.
    pub fn write_file(&self, path: &Path) -> Result<(), KeyError> {
        write_secret_file(path, &self.to_base64())
    }
}

impl fmt::Debug for PresharedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PresharedKey(<redacted>)")
    }
}

fn decode(what: &'static str, text: &str) -> Result<[u8; KEY_LEN], KeyError> {
    let malformed = |why: String| KeyError::Malformed { what, why };
    let text = text.trim();
    if text.len() != 44 {
        return Err(malformed(format!("{} characters", text.len())));
    }
    let mut out = [0u8; KEY_LEN];
    // 44 base64 characters with one '=' decode to exactly 32 bytes; the slice
    // is 33 long because the decoder wants room for a would-be partial block.
    let mut buf = [0u8; KEY_LEN + 1];
    let n = STANDARD
        .decode_slice(text.as_bytes(), &mut buf)
        .map_err(|e| malformed(e.to_string()))?;
    if n != KEY_LEN {
        return Err(malformed(format!("decodes to {n} bytes, not {KEY_LEN}")));
    }
    out.copy_from_slice(&buf[..KEY_LEN]);
    Ok(out)
}

fn random_bytes() -> Result<[u8; KEY_LEN], KeyError> {
    let mut bytes = [0u8; KEY_LEN];
    let mut filled = 0;
    while filled < KEY_LEN {
        // SAFETY: the pointer and length describe the unfilled tail of `bytes`,
        // which lives for the whole call.
        let n =
            unsafe { libc::getrandom(bytes[filled..].as_mut_ptr().cast(), KEY_LEN - filled, 0) };
        if n < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(KeyError::Random(err));
        }
        filled += n as usize;
    }
    Ok(bytes)
}

fn write_secret_file(path: &Path, contents: &str) -> Result<(), KeyError> {
    let write = |source| KeyError::Write {
        path: path.to_path_buf(),
        source,
    };
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let file_name = path
        .file_name()
        .ok_or_else(|| write(std::io::Error::other("the path names no file")))?;
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        file_name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| -> std::io::Result<()> {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(contents.as_bytes())?;
        file.write_all(b"\n")?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(write)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips_in_wg_format() {
        // Alice's key pair from RFC 7748 section 6.1, in base64.
        let private =
            PrivateKey::from_base64("dwdtCnMYpX08FsFyUbJmRd9ML4frwJkqsXf7pR25LCo=").unwrap();
        assert_eq!(
            private.public_key().to_base64(),
            "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo="
        );
        assert_eq!(
            private.to_base64(),
            "dwdtCnMYpX08FsFyUbJmRd9ML4frwJkqsXf7pR25LCo="
        );
        let public: PublicKey = "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo="
            .parse()
            .unwrap();
        assert_eq!(public, private.public_key());
    }

    #[test]
    fn malformed_keys_are_refused_with_a_reason() {
        for bad in [
            "",
            "abc",
            "dwdtCnMYpX08FsFyUbJmRd9ML4frwJkqsXf7pR25LC!=",
            &"A".repeat(44),
        ] {
            let err = PublicKey::from_base64(bad).unwrap_err().to_string();
            assert!(
                err.starts_with("public key: not a WireGuard key"),
                "{bad:?}: {err}"
            );
        }
    }

    #[test]
    fn debug_never_shows_secrets() {
        let private = PrivateKey::generate().unwrap();
        let psk = PresharedKey::generate().unwrap();
        let shown = format!("{private:?} {psk:?}");
        assert!(!shown.contains(&private.to_base64()));
        assert!(!shown.contains(&psk.to_base64()));
        assert!(shown.contains("<redacted>"));
        let public = private.public_key();
        assert!(format!("{public:?}").contains(&public.to_base64()));
    }

    #[test]
    fn generated_keys_are_clamped_and_distinct() {
        let a = PrivateKey::generate().unwrap();
        let b = PrivateKey::generate().unwrap();
        assert_ne!(a.to_base64(), b.to_base64());
        let bytes = a.0.to_bytes();
        assert_eq!(bytes[0] & 7, 0);
        assert_eq!(bytes[31] & 0xc0, 0x40);
    }

    #[test]
    fn key_files_are_private_and_atomic() {
        let dir = std::env::temp_dir().join(format!("weft-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("private.key");
        let key = PrivateKey::generate().unwrap();
        key.write_file(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(
            PrivateKey::read_file(&path).unwrap().public_key(),
            key.public_key()
        );
        // Overwriting replaces the whole file and leaves no temporary behind.
        let other = PrivateKey::generate().unwrap();
        other.write_file(&path).unwrap();
        assert_eq!(
            PrivateKey::read_file(&path).unwrap().public_key(),
            other.public_key()
        );
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["private.key"]);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            PrivateKey::read_file(&path),
            Err(KeyError::Exposed { mode: 0o644, .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
