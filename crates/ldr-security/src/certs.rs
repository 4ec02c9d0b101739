//! `ldr cert`: a cluster's certificate authority and the node and client certificates it
//! signs, in a certificates directory laid out as CockroachDB lays it out:
//!
//! | file | what |
//! |---|---|
//! | `ca.crt` | the CA certificate (every node and client trusts it) |
//! | `ca.key` | the CA key (kept where `--ca-key` says, often outside the certs dir) |
//! | `node.crt`, `node.key` | the node's certificate (CN `node`, the hosts as SANs); server and client auth |
//! | `client.<user>.crt`, `client.<user>.key` | a SQL user's client certificate (CN = user) |
//!
//! Keys are ECDSA P-256 (rcgen on ring), written PKCS#8 PEM with mode 0600. A certificate is
//! signed with the CA key and the CA's distinguished name, which [`ca_params`] fixes, so a CA
//! created by `ldr cert create-ca` can sign later certificates from its key alone.

use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType,
};
use time::{Duration, OffsetDateTime};

use crate::{Result, SecurityError};

pub const CA_CERT: &str = "ca.crt";
pub const CA_KEY: &str = "ca.key";
pub const NODE_CERT: &str = "node.crt";
pub const NODE_KEY: &str = "node.key";

/// `client.<user>.crt`.
pub fn client_cert_file(user: &str) -> String {
    format!("client.{user}.crt")
}

/// `client.<user>.key`.
pub fn client_key_file(user: &str) -> String {
    format!("client.{user}.key")
}

/// CockroachDB's default lifetimes: 10 years for the CA, 5 years for the rest.
const CA_LIFETIME_DAYS: i64 = 3660;
const CERT_LIFETIME_DAYS: i64 = 1830;
/// Certificates are valid from an hour ago: clocks of the machines differ a little.
const BACKDATE_HOURS: i64 = 1;

/// The CA's parameters. The distinguished name is fixed: certificates signed later name it as
/// their issuer, and clients match issuer to subject.
fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "ldr");
    dn.push(DnType::CommonName, "ldr CA");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

fn validity(params: &mut CertificateParams, days: i64) {
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::hours(BACKDATE_HOURS);
    params.not_after = now + Duration::days(days);
}

fn leaf_params(common_name: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "ldr");
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, CERT_LIFETIME_DAYS);
    params
}

fn generate_key() -> Result<KeyPair> {
    KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(SecurityError::certificate)
}

/// Creates `ca.crt` in `certs_dir` and the CA key at `ca_key`. Refuses to replace either
/// unless `overwrite`.
pub fn create_ca(certs_dir: &Path, ca_key: &Path, overwrite: bool) -> Result<()> {
    fs::create_dir_all(certs_dir).map_err(|e| SecurityError::io(certs_dir, e))?;
    let cert_path = certs_dir.join(CA_CERT);
    refuse_existing(&[&cert_path, ca_key], overwrite)?;
    let key = generate_key()?;
    let mut params = ca_params();
    validity(&mut params, CA_LIFETIME_DAYS);
    let cert = params
        .self_signed(&key)
        .map_err(SecurityError::certificate)?;
    write_private(ca_key, &key.serialize_pem())?;
    write_public(&cert_path, &cert.pem())
}

/// Creates `node.crt`/`node.key`: CN `node`, every host (a name or an IP address) as a
/// subject alternative name, usable as a server and as a client (node to node).
pub fn create_node(
    certs_dir: &Path,
    ca_key: &Path,
    hosts: &[String],
    overwrite: bool,
) -> Result<()> {
    if hosts.is_empty() {
        return Err(SecurityError::InvalidArgument(
            "create-node requires at least one host name or address".into(),
        ));
    }
    let mut params = leaf_params("node");
    for host in hosts {
        params.subject_alt_names.push(san(host)?);
    }
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    sign_into(certs_dir, ca_key, params, NODE_CERT, NODE_KEY, overwrite)
}

/// Creates `client.<user>.crt`/`.key`: CN = the user, client auth only.
pub fn create_client(certs_dir: &Path, ca_key: &Path, user: &str, overwrite: bool) -> Result<()> {
    check_user_name(user)?;
    let mut params = leaf_params(user);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    sign_into(
        certs_dir,
        ca_key,
        params,
        &client_cert_file(user),
        &client_key_file(user),
        overwrite,
    )
}

/// A user name usable in a file name and a certificate: what SQL accepts unquoted.
fn check_user_name(user: &str) -> Result<()> {
    let ok = !user.is_empty()
        && user.len() <= 63
        && user
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        && !user.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(SecurityError::InvalidArgument(format!(
            "invalid user name {user:?}: use letters, digits, '_', '-' and '.'"
        )))
    }
}

fn san(host: &str) -> Result<SanType> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let valid = !host.is_empty()
        && host.len() <= 253
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '*' | '_'));
    if !valid {
        return Err(SecurityError::InvalidArgument(format!(
            "invalid host name {host:?} for a certificate"
        )));
    }
    let name = host.try_into().map_err(|_| {
        SecurityError::InvalidArgument(format!("invalid host name {host:?} for a certificate"))
    })?;
    Ok(SanType::DnsName(name))
}

fn sign_into(
    certs_dir: &Path,
    ca_key: &Path,
    params: CertificateParams,
    cert_file: &str,
    key_file: &str,
    overwrite: bool,
) -> Result<()> {
    let cert_path = certs_dir.join(cert_file);
    let key_path = certs_dir.join(key_file);
    refuse_existing(&[&cert_path, &key_path], overwrite)?;
    if !certs_dir.join(CA_CERT).exists() {
        return Err(SecurityError::InvalidArgument(format!(
            "{} not found: run `ldr cert create-ca` first",
            certs_dir.join(CA_CERT).display()
        )));
    }
    let ca_key_pem = fs::read_to_string(ca_key).map_err(|e| SecurityError::io(ca_key, e))?;
    let ca_key_pair = KeyPair::from_pem(&ca_key_pem).map_err(|e| {
        SecurityError::InvalidArgument(format!("{} is not a CA key: {e}", ca_key.display()))
    })?;
    let issuer = Issuer::new(ca_params(), ca_key_pair);
    let key = generate_key()?;
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(SecurityError::certificate)?;
    write_private(&key_path, &key.serialize_pem())?;
    write_public(&cert_path, &cert.pem())
}

fn refuse_existing(paths: &[&Path], overwrite: bool) -> Result<()> {
    if overwrite {
        return Ok(());
    }
    for p in paths {
        if p.exists() {
            return Err(SecurityError::InvalidArgument(format!(
                "{} already exists: remove it or pass --overwrite",
                p.display()
            )));
        }
    }
    Ok(())
}

fn write_public(path: &Path, pem: &str) -> Result<()> {
    write_with_mode(path, pem, 0o644)
}

/// Private keys are readable by their owner only (libpq and CockroachDB refuse others).
fn write_private(path: &Path, pem: &str) -> Result<()> {
    write_with_mode(path, pem, 0o600)
}

fn write_with_mode(path: &Path, contents: &str, mode: u32) -> Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(|e| SecurityError::io(parent, e))?;
    }
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(|e| SecurityError::io(path, e))?;
    // An existing file keeps its old mode through `open`: set it.
    file.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(|e| SecurityError::io(path, e))?;
    file.write_all(contents.as_bytes())
        .map_err(|e| SecurityError::io(path, e))
}

/// One certificate of `ldr cert list`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// `CA`, `node`, `client`.
    pub usage: &'static str,
    pub file: PathBuf,
    pub common_name: String,
    /// RFC 3339, UTC.
    pub expires: String,
    /// The key file beside it (`None` for the CA, whose key may live elsewhere).
    pub key_file: Option<PathBuf>,
}

/// The certificates of `certs_dir` that ldr uses (`ca.crt`, `node.crt`, `client.*.crt`).
pub fn list(certs_dir: &Path) -> Result<Vec<CertInfo>> {
    let entries = fs::read_dir(certs_dir).map_err(|e| SecurityError::io(certs_dir, e))?;
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.ends_with(".crt"))
        .collect();
    names.sort();
    let mut out = Vec::new();
    for name in names {
        let (usage, key) = if name == CA_CERT {
            ("CA", None)
        } else if name == NODE_CERT {
            ("node", Some(NODE_KEY.to_string()))
        } else if let Some(user) = name
            .strip_prefix("client.")
            .and_then(|n| n.strip_suffix(".crt"))
        {
            ("client", Some(client_key_file(user)))
        } else {
            continue;
        };
        let path = certs_dir.join(&name);
        let pem = fs::read(&path).map_err(|e| SecurityError::io(&path, e))?;
        let cert = x509_certificate::X509Certificate::from_pem(&pem).map_err(|e| {
            SecurityError::InvalidArgument(format!("{} is not a certificate: {e}", path.display()))
        })?;
        out.push(CertInfo {
            usage,
            file: path,
            common_name: cert.subject_common_name().unwrap_or_default(),
            expires: cert
                .validity_not_after()
                .format("%Y-%m-%dT%H:%M:%SZ")
                .to_string(),
            key_file: key.map(|k| certs_dir.join(k)),
        });
    }
    Ok(out)
}

/// The common name of a DER certificate (a verified peer's), if it has one.
pub fn common_name(der: &[u8]) -> Option<String> {
    x509_certificate::X509Certificate::from_der(der)
        .ok()?
        .subject_common_name()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_cockroach_layout_with_private_keys() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let certs = dir.path().join("certs");
        let ca_key = dir.path().join("safe/ca.key");
        create_ca(&certs, &ca_key, false).expect("ca");
        create_node(
            &certs,
            &ca_key,
            &["localhost".into(), "127.0.0.1".into()],
            false,
        )
        .expect("node");
        create_client(&certs, &ca_key, "root", false).expect("client");
        for key in [
            ca_key.clone(),
            certs.join(NODE_KEY),
            certs.join("client.root.key"),
        ] {
            let mode = fs::metadata(&key).expect("key").permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", key.display());
        }
        let listed = list(&certs).expect("list");
        let summary: Vec<(&str, &str)> = listed
            .iter()
            .map(|c| (c.usage, c.common_name.as_str()))
            .collect();
        assert_eq!(
            summary,
            vec![("CA", "ldr CA"), ("client", "root"), ("node", "node")]
        );
        // Existing files are kept unless asked.
        let again = create_client(&certs, &ca_key, "root", false).expect_err("exists");
        assert!(again.to_string().contains("already exists"), "{again}");
        create_client(&certs, &ca_key, "root", true).expect("overwrite");
    }

    #[test]
    fn refuses_bad_names() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca_key = dir.path().join("ca.key");
        create_ca(dir.path(), &ca_key, false).expect("ca");
        assert!(create_client(dir.path(), &ca_key, "../x", false).is_err());
        assert!(create_client(dir.path(), &ca_key, "", false).is_err());
        assert!(create_node(dir.path(), &ca_key, &[], false).is_err());
        assert!(create_node(dir.path(), &ca_key, &["bad host".into()], false).is_err());
    }
}
