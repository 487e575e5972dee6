//! `meshctl pki`: make a cluster's CA and issue role certificates into a PKI directory.
//!
//! Every file is written with mode 0600 and atomically (see [`certs::pki::write_pem`]), and
//! every input is checked and every certificate made in memory before the first file is
//! written, so a refused command changes nothing.

use std::collections::BTreeSet;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use anyhow::anyhow;
use certs::pki::{self, CA_DAYS, CertificateAuthority, LEAF_DAYS, LeafSpec, Validity};
use certs::{Error, Identity, Role};
use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{Args, Subcommand};

use mesh_client::pki::PkiDir;

use crate::Failure;

/// The longest validity accepted, in days (X.509 dates end in the year 9999 anyway).
const MAX_DAYS: i64 = 36_500;

/// SANs of apiserver certificates when none are given: enough for a local cluster.
const DEFAULT_SANS: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// `meshctl pki` subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a cluster's CA, a certificate for each API server member and an admin
    /// certificate. Refuses if the directory already holds ca.crt or ca.key.
    Init(InitArgs),
    /// Issue one role certificate with the CA in a PKI directory.
    Issue(IssueArgs),
    /// Make and renew the PKI as Secrets of the cluster this runs in (the chart's Job and
    /// CronJob): the CA once, the apiserver and admin certificates when missing, stale or
    /// close to expiry. Agents get theirs from the API servers' bootstrap.
    SyncSecrets(crate::pkisync::SyncArgs),
}

/// Flags of `meshctl pki init`.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// The cluster the CA issues identities for.
    #[arg(long)]
    cluster: String,
    /// Directory to write ca.crt, ca.key and the certificates into (created if missing).
    #[arg(long)]
    out: PathBuf,
    /// An API server member to issue an apiserver certificate for (repeatable).
    #[arg(long = "member", default_values = ["n1", "n2", "n3"])]
    members: Vec<String>,
    /// A DNS name or IP address the apiserver certificates are valid for, besides the
    /// member's name (repeatable).
    #[arg(long = "san", default_values = DEFAULT_SANS)]
    sans: Vec<String>,
    /// Who the admin certificate is for.
    #[arg(long, default_value = "admin")]
    admin: String,
    /// Days the CA is valid for.
    #[arg(long, default_value_t = CA_DAYS, value_parser = clap::value_parser!(u32).range(1..=MAX_DAYS))]
    ca_days: u32,
    /// Days each certificate the CA issues is valid for.
    #[arg(long, default_value_t = LEAF_DAYS, value_parser = clap::value_parser!(u32).range(1..=MAX_DAYS))]
    days: u32,
}

/// Flags of `meshctl pki issue`.
#[derive(Debug, Args)]
pub struct IssueArgs {
    /// PKI directory holding ca.crt and ca.key.
    #[arg(long)]
    dir: PathBuf,
    /// What the holder is.
    #[arg(long, value_parser = role_parser())]
    role: Role,
    /// The member, node, person or tool; for role remote, the cluster that will read.
    #[arg(long)]
    name: String,
    /// A DNS name or IP address to add (repeatable). An apiserver certificate also gets its
    /// name, and localhost, 127.0.0.1 and ::1 when no --san is given.
    #[arg(long = "san")]
    sans: Vec<String>,
    /// Days the certificate is valid for.
    #[arg(long, default_value_t = LEAF_DAYS, value_parser = clap::value_parser!(u32).range(1..=MAX_DAYS))]
    days: u32,
    /// Directory to write <role>-<name>.crt and .key into [default: --dir].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Replace the certificate and key if they already exist.
    #[arg(long)]
    force: bool,
}

/// A PEM file to write.
#[derive(Debug)]
struct PemFile {
    path: PathBuf,
    contents: String,
}

/// Runs a `meshctl pki` subcommand.
pub fn run(command: Command) -> Result<(), Failure> {
    match command {
        Command::Init(args) => init(&args),
        Command::Issue(args) => issue(&args),
        Command::SyncSecrets(args) => crate::pkisync::run(args),
    }
}

fn init(args: &InitArgs) -> Result<(), Failure> {
    certs::identity::check_name("cluster", &args.cluster).map_err(classify)?;
    check_distinct("--member", &args.members)?;
    let out = PkiDir::new(&args.out);
    let ca_files = [out.ca_cert(), out.ca_key()];
    refuse_existing(&ca_files, "refusing to replace an existing CA")?;

    let ca = CertificateAuthority::generate(&args.cluster, Validity::days_from_now(args.ca_days))
        .map_err(classify)?;
    let validity = Validity::days_from_now(args.days);
    let mut files = Vec::new();
    for member in &args.members {
        let sans = apiserver_sans(member, &args.sans);
        let identity = Identity::new(&args.cluster, Role::Apiserver, member).map_err(classify)?;
        files.extend(leaf(&ca, &args.out, identity, sans, validity)?);
    }
    let admin = Identity::new(&args.cluster, Role::Admin, &args.admin).map_err(classify)?;
    files.extend(leaf(&ca, &args.out, admin, Vec::new(), validity)?);
    // The CA goes last: its files are what make a second init refuse, so a run that fails
    // half-way can simply be repeated.
    let [ca_crt, ca_key] = ca_files;
    files.push(PemFile {
        path: ca_crt,
        contents: ca.cert_pem().to_owned(),
    });
    files.push(PemFile {
        path: ca_key,
        contents: ca.key_pem(),
    });

    write_all(&files)?;
    println!(
        "initialized the PKI of cluster {} in {}: a CA, {} apiserver and 1 admin certificate(s), {} files",
        args.cluster,
        args.out.display(),
        args.members.len(),
        files.len()
    );
    Ok(())
}

fn issue(args: &IssueArgs) -> Result<(), Failure> {
    // Check the name before the CA, so a bad name is reported as such.
    certs::identity::check_name("name", &args.name).map_err(classify)?;
    let dir = PkiDir::new(&args.dir);
    let ca = CertificateAuthority::load(&dir.ca_cert(), &dir.ca_key()).map_err(|e| match &e {
        Error::Io { source, .. } if source.kind() == ErrorKind::NotFound => {
            Failure::BadInput(anyhow!(e).context("--dir is not a PKI directory"))
        }
        _ => Failure::Other(e.into()),
    })?;
    let out = args.out.as_deref().unwrap_or(&args.dir);
    let sans = if args.role == Role::Apiserver {
        let defaults = DEFAULT_SANS.map(str::to_owned);
        let extra = if args.sans.is_empty() {
            &defaults[..]
        } else {
            &args.sans[..]
        };
        apiserver_sans(&args.name, extra)
    } else {
        args.sans.clone()
    };
    let identity = Identity::new(ca.cluster(), args.role, &args.name).map_err(classify)?;
    let validity = Validity::days_from_now(args.days);
    let files = leaf(&ca, out, identity.clone(), sans, validity)?;
    if !args.force {
        let paths: Vec<PathBuf> = files.iter().map(|f| f.path.clone()).collect();
        refuse_existing(&paths, "use --force to replace it")?;
    }
    write_all(&files)?;
    println!("issued {identity}, valid for {} days", args.days);
    Ok(())
}

/// The certificate and key of `identity`, as `<role>-<name>.crt|key` in `dir`.
fn leaf(
    ca: &CertificateAuthority,
    dir: &Path,
    identity: Identity,
    sans: Vec<String>,
    validity: Validity,
) -> Result<[PemFile; 2], Failure> {
    let (cert, key) = PkiDir::new(dir).pair(identity.role, &identity.name);
    let spec = LeafSpec {
        identity,
        sans,
        validity,
    };
    let issued = ca.issue(&spec).map_err(classify)?;
    Ok([
        PemFile {
            path: cert,
            contents: issued.cert_pem,
        },
        PemFile {
            path: key,
            contents: issued.key_pem,
        },
    ])
}

/// An apiserver's SANs: its member name, then `extra` (without repeating the name).
fn apiserver_sans(member: &str, extra: &[String]) -> Vec<String> {
    let mut sans = vec![member.to_owned()];
    sans.extend(extra.iter().filter(|s| *s != member).cloned());
    sans
}

/// Refuses a list of names that would write the same file twice.
fn check_distinct(flag: &str, names: &[String]) -> Result<(), Failure> {
    let mut seen = BTreeSet::new();
    match names.iter().find(|name| !seen.insert(*name)) {
        Some(name) => Err(Failure::BadInput(anyhow!("{flag} {name:?} is given twice"))),
        None => Ok(()),
    }
}

/// Refuses if any of `paths` exists (even as a dangling symlink).
fn refuse_existing(paths: &[PathBuf], advice: &str) -> Result<(), Failure> {
    match paths.iter().find(|p| p.symlink_metadata().is_ok()) {
        Some(path) => Err(Failure::BadInput(anyhow!(
            "{} already exists; {advice}",
            path.display()
        ))),
        None => Ok(()),
    }
}

/// Writes the files in order, printing each.
fn write_all(files: &[PemFile]) -> Result<(), Failure> {
    for file in files {
        pki::write_pem(&file.path, &file.contents).map_err(|e| Failure::Other(e.into()))?;
        println!("wrote {}", file.path.display());
    }
    Ok(())
}

/// A certs error as bad input (exit 64) or another failure (exit 1).
fn classify(e: Error) -> Failure {
    match e {
        Error::BadRole { .. }
        | Error::BadName { .. }
        | Error::BadSan { .. }
        | Error::BadValidity { .. }
        | Error::WrongCluster { .. } => Failure::BadInput(e.into()),
        _ => Failure::Other(e.into()),
    }
}

/// Parses a role, listing the roles in `--help` and in the error.
fn role_parser() -> impl TypedValueParser<Value = Role> {
    PossibleValuesParser::new(Role::ALL.map(Role::as_str)).try_map(|s| s.parse::<Role>())
}
