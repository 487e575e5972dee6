//! A cluster's PKI directory, as `meshctl pki init` and `meshctl pki issue` write it:
//! `ca.crt` and `ca.key`, and `<role>-<name>.crt|key` for each certificate issued (e.g.
//! `admin-admin.crt`, `apiserver-m1.crt`, `agent-node-1.crt`).

use std::path::{Path, PathBuf};

use certs::Role;

use crate::Credentials;

/// A PKI directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PkiDir {
    dir: PathBuf,
}

impl PkiDir {
    /// The PKI directory `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> PkiDir {
        PkiDir { dir: dir.into() }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The CA certificate (`ca.crt`): the bundle clients trust.
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// The CA key (`ca.key`), which signs certificates.
    pub fn ca_key(&self) -> PathBuf {
        self.dir.join("ca.key")
    }

    /// The file stem of `role`'s certificate for `name` (`<role>-<name>`).
    pub fn stem(role: Role, name: &str) -> String {
        format!("{}-{name}", role.as_str())
    }

    /// The certificate and key of `role` for `name`.
    pub fn pair(&self, role: Role, name: &str) -> (PathBuf, PathBuf) {
        self.files(&Self::stem(role, name))
    }

    /// The certificate and key named `<stem>.crt|key` (a stem as [`PkiDir::stem`] makes).
    pub fn files(&self, stem: &str) -> (PathBuf, PathBuf) {
        (
            self.dir.join(format!("{stem}.crt")),
            self.dir.join(format!("{stem}.key")),
        )
    }

    /// Credentials of `role` for `name`, trusting this directory's CA.
    pub fn credentials(&self, role: Role, name: &str) -> Credentials {
        let (cert, key) = self.pair(role, name);
        Credentials::new(self.ca_cert(), cert, key)
    }

    /// The admin credentials `meshctl pki init` issues by default (`admin-admin`).
    pub fn admin(&self) -> Credentials {
        self.credentials(Role::Admin, "admin")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_named_as_meshctl_pki_writes_them() {
        let pki = PkiDir::new("/p");
        assert_eq!(pki.ca_cert(), Path::new("/p/ca.crt"));
        assert_eq!(pki.ca_key(), Path::new("/p/ca.key"));
        assert_eq!(
            pki.pair(Role::Apiserver, "m1"),
            ("/p/apiserver-m1.crt".into(), "/p/apiserver-m1.key".into())
        );
        let admin = pki.admin();
        assert_eq!(
            (
                admin.ca.as_path(),
                admin.cert.as_path(),
                admin.key.as_path()
            ),
            (
                Path::new("/p/ca.crt"),
                Path::new("/p/admin-admin.crt"),
                Path::new("/p/admin-admin.key")
            )
        );
        assert_eq!(PkiDir::stem(Role::Agent, "node-1"), "agent-node-1");
    }
}
