//! The node's WireGuard key pair: made once in the state directory, reused across restarts.
//!
//! The private key lives in one file, `wireguard.key` (base64, mode 0600, created with that
//! mode so it is never readable by others, not even for a moment). It is never logged, never
//! exported as a metric and never written to the store: only the public key leaves the node
//! (ARCHITECTURE.md, "WireGuard": private keys never leave their node). A lost state directory means a new key,
//! which the agent publishes; peers follow the record.

use std::fmt;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use wireguard_control::Key;

/// The key file's name in the state directory.
pub const FILE: &str = "wireguard.key";

/// The node's key pair. Its `Debug` shows the public key only.
pub struct KeyPair {
    private: Key,
    /// The public key.
    pub public: Key,
}

impl fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyPair")
            .field("public", &self.public.to_base64())
            .finish_non_exhaustive()
    }
}

impl KeyPair {
    /// The private key, for configuring the interface only.
    pub fn private(&self) -> &Key {
        &self.private
    }

    fn from_private(private: Key) -> KeyPair {
        KeyPair {
            public: private.get_public(),
            private,
        }
    }
}

/// Why the key could not be loaded or made.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing the file.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is readable or writable by others than its owner.
    #[error(
        "{path} has mode {mode:o}: a private key must be 0600 (chmod 600 it, or delete it to make a new key)"
    )]
    Mode {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The file does not hold a base64 Curve25519 key.
    #[error("{path} does not hold a WireGuard private key (base64, 32 bytes)")]
    Invalid {
        /// The file.
        path: PathBuf,
    },
}

/// Loads the key pair from `state_dir`, or makes one there. Returns it and whether it is new.
pub fn load_or_create(state_dir: &Path) -> Result<(KeyPair, bool), Error> {
    let path = state_dir.join(FILE);
    let io = |source| Error::Io {
        path: path.clone(),
        source,
    };
    match std::fs::metadata(&path) {
        Ok(meta) => {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(Error::Mode { path, mode });
            }
            let text = std::fs::read_to_string(&path).map_err(io)?;
            let private =
                Key::from_base64(text.trim()).map_err(|_| Error::Invalid { path: path.clone() })?;
            Ok((KeyPair::from_private(private), false))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(state_dir).map_err(io)?;
            let private = Key::generate_private();
            // Written to a temporary file made 0600 at creation, then renamed: a crash leaves
            // either no key or a whole one.
            let tmp = state_dir.join(format!("{FILE}.tmp"));
            let _ = std::fs::remove_file(&tmp);
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(io)?;
            writeln!(f, "{}", private.to_base64()).map_err(io)?;
            f.sync_all().map_err(io)?;
            std::fs::rename(&tmp, &path).map_err(io)?;
            Ok((KeyPair::from_private(private), true))
        }
        Err(e) => Err(io(e)),
    }
}

/// A base64 public key as published, if it is one.
pub fn decode(base64: &str) -> Option<[u8; 32]> {
    Key::from_base64(base64).ok().map(|k| k.0)
}

/// The published form of a key.
pub fn encode(key: &[u8; 32]) -> String {
    Key(*key).to_base64()
}

/// This boot's id (`/proc/sys/kernel/random/boot_id`), published for operators.
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_once_0600_then_reused() {
        let dir = tempfile::tempdir().unwrap();
        let (a, new) = load_or_create(dir.path()).unwrap();
        assert!(new);
        let mode = std::fs::metadata(dir.path().join(FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let (b, new) = load_or_create(dir.path()).unwrap();
        assert!(!new);
        assert_eq!(a.public, b.public);
        assert_eq!(a.private().0, b.private().0);
        assert!(!format!("{a:?}").contains(&a.private().to_base64()));
        assert!(format!("{a:?}").contains(&a.public.to_base64()));
    }

    #[test]
    fn refuses_a_key_others_can_read_or_garbage() {
        let dir = tempfile::tempdir().unwrap();
        load_or_create(dir.path()).unwrap();
        let path = dir.path().join(FILE);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = load_or_create(dir.path()).unwrap_err();
        assert!(matches!(err, Error::Mode { mode: 0o644, .. }), "{err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&path, "not a key\n").unwrap();
        assert!(matches!(
            load_or_create(dir.path()),
            Err(Error::Invalid { .. })
        ));
    }

    #[test]
    fn public_keys_round_trip() {
        let k = Key::generate_private().get_public();
        assert_eq!(decode(&encode(&k.0)), Some(k.0));
        assert_eq!(decode("nope"), None);
    }
}
