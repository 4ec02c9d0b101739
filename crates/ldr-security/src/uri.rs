//! Connection URIs with TLS parameters: `ldr encode-uri` builds them (CockroachDB's form, the
//! CA inline), [`ConnectionUri`] parses them (the one parser of `postgresql://` URIs: user,
//! password, host, port and query parameters, percent-decoded), and [`TlsParams`] reads their
//! TLS parameters back (`sslmode`, `sslrootcert`, `sslcert`, `sslkey`, `sslinline`) for
//! `ldr sql --url`, the testbed's SQL clients and external connections. [`plain_url`] turns
//! such a URL into one tokio-postgres accepts.

use std::path::Path;
use std::sync::Arc;

use crate::{Result, SecurityError};

/// What `ldr encode-uri` puts in a URI.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EncodeUri {
    /// `USER[:PASSWORD]@HOST[:PORT]` (a leading `postgresql://` is accepted).
    pub target: String,
    pub database: Option<String>,
    /// The CA certificate PEM (`--ca-cert`), with its path for the non-inline form.
    pub ca_cert: Option<(String, String)>,
    pub cert: Option<(String, String)>,
    pub key: Option<(String, String)>,
    /// `--inline`: certificates go in the URI, not their paths.
    pub inline: bool,
    /// `options=-ccluster=<name>` (CockroachDB's virtual cluster; `system` by default).
    pub cluster: String,
}

/// Go's `url.QueryEscape`, which CockroachDB's `encode-uri` uses: unreserved characters stay,
/// a space becomes `+`, everything else `%XX`.
pub fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3 / 2);
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Escapes a user name or password for the userinfo part of a URI.
fn userinfo_escape(s: &str) -> String {
    query_escape(s).replace('+', "%20")
}

/// Builds the URI: `postgresql://user:password@host:port/[db]?options=…&sslinline=true&
/// sslmode=verify-full&sslrootcert=…`, parameters sorted by name as Go's `Values.Encode`
/// sorts them.
pub fn encode_uri(spec: &EncodeUri) -> Result<String> {
    let target = spec
        .target
        .strip_prefix("postgresql://")
        .or_else(|| spec.target.strip_prefix("postgres://"))
        .unwrap_or(&spec.target);
    let (userinfo, hostport) = target.rsplit_once('@').ok_or_else(|| {
        SecurityError::InvalidArgument(format!(
            "invalid target {:?}: expected USER[:PASSWORD]@HOST[:PORT]",
            spec.target
        ))
    })?;
    let (user, password) = match userinfo.split_once(':') {
        Some((u, p)) => (u, Some(p)),
        None => (userinfo, None),
    };
    if user.is_empty() || hostport.is_empty() || hostport.contains('/') {
        return Err(SecurityError::InvalidArgument(format!(
            "invalid target {:?}: expected USER[:PASSWORD]@HOST[:PORT]",
            spec.target
        )));
    }
    let hostport = with_port(hostport)?;
    let mut params: Vec<(&str, String)> = vec![("options", format!("-ccluster={}", spec.cluster))];
    let mut file_param = |name: &'static str, value: &Option<(String, String)>| {
        if let Some((path, pem)) = value {
            params.push((
                name,
                if spec.inline {
                    pem.clone()
                } else {
                    path.clone()
                },
            ));
        }
    };
    file_param("sslrootcert", &spec.ca_cert);
    file_param("sslcert", &spec.cert);
    file_param("sslkey", &spec.key);
    if spec.inline {
        params.push(("sslinline", "true".into()));
    }
    params.push(("sslmode", "verify-full".into()));
    params.sort_by(|a, b| a.0.cmp(b.0));
    let query: Vec<String> = params
        .iter()
        .map(|(k, v)| format!("{k}={}", query_escape(v)))
        .collect();
    let mut out = format!("postgresql://{}", userinfo_escape(user));
    if let Some(p) = password {
        out.push(':');
        out.push_str(&userinfo_escape(p));
    }
    out.push('@');
    out.push_str(&hostport);
    out.push('/');
    if let Some(db) = &spec.database {
        out.push_str(&userinfo_escape(db));
    }
    out.push('?');
    out.push_str(&query.join("&"));
    Ok(out)
}

/// `HOST:PORT` with CockroachDB's default port when there is none; the port must be a number.
fn with_port(hostport: &str) -> Result<String> {
    let bad = || SecurityError::InvalidArgument(format!("invalid port in {hostport:?}"));
    let (host, port) = if let Some(rest) = hostport.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or_else(bad)?;
        (format!("[{host}]"), after.strip_prefix(':'))
    } else {
        match hostport.split_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (hostport.to_string(), None),
        }
    };
    if host.is_empty() || host == "[]" {
        return Err(SecurityError::InvalidArgument(format!(
            "missing host in {hostport:?}"
        )));
    }
    match port {
        None => Ok(format!("{host}:26257")),
        Some(p) => {
            p.parse::<u16>().map_err(|_| bad())?;
            Ok(format!("{host}:{p}"))
        }
    }
}

/// `sslmode` values (libpq's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Allow,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    pub fn parse(s: &str) -> Result<SslMode> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(SecurityError::InvalidArgument(format!(
                    "invalid sslmode {other:?}: use disable, allow, prefer, require, verify-ca or verify-full"
                )));
            }
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// Whether TLS is mandatory.
    pub fn requires_tls(self) -> bool {
        matches!(
            self,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull
        )
    }
}

/// The TLS parameters of a connection URI, certificates resolved (inline or read from files).
#[derive(Clone, PartialEq, Eq)]
pub struct TlsParams {
    pub mode: SslMode,
    /// PEM of the CA to trust.
    pub root_cert: Option<String>,
    /// PEM of the client certificate and key.
    pub client_cert: Option<String>,
    pub client_key: Option<String>,
}

impl std::fmt::Debug for TlsParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsParams")
            .field("mode", &self.mode)
            .field("root_cert", &self.root_cert.is_some())
            .field("client_cert", &self.client_cert.is_some())
            .finish_non_exhaustive()
    }
}

/// The URI parameters that configure TLS.
pub const TLS_PARAMS: [&str; 6] = [
    "sslmode",
    "sslrootcert",
    "sslcert",
    "sslkey",
    "sslinline",
    "sslpassword",
];

impl TlsParams {
    /// Reads `sslmode` (default `default_mode`), `sslinline` and the certificate parameters
    /// from decoded query pairs; file parameters are read relative to the working directory.
    pub fn from_query<'a>(
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
        default_mode: SslMode,
    ) -> Result<TlsParams> {
        let mut mode = default_mode;
        let mut inline = false;
        let (mut root, mut cert, mut key) = (None, None, None);
        for (k, v) in pairs {
            match k {
                "sslmode" => mode = SslMode::parse(v)?,
                "sslinline" => inline = v == "true",
                "sslrootcert" => root = Some(v.to_string()),
                "sslcert" => cert = Some(v.to_string()),
                "sslkey" => key = Some(v.to_string()),
                _ => {}
            }
        }
        let load = |name: &str, v: Option<String>| -> Result<Option<String>> {
            match v {
                None => Ok(None),
                Some(v) if inline || v.trim_start().starts_with("-----BEGIN") => Ok(Some(v)),
                Some(path) => std::fs::read_to_string(&path).map(Some).map_err(|e| {
                    SecurityError::InvalidArgument(format!("cannot read {name} {path}: {e}"))
                }),
            }
        };
        let params = TlsParams {
            mode,
            root_cert: load("sslrootcert", root)?,
            client_cert: load("sslcert", cert)?,
            client_key: load("sslkey", key)?,
        };
        if matches!(mode, SslMode::VerifyCa | SslMode::VerifyFull) && params.root_cert.is_none() {
            return Err(SecurityError::InvalidArgument(format!(
                "sslmode={} requires sslrootcert (the CA certificate of the cluster)",
                mode.as_str()
            )));
        }
        Ok(params)
    }

    /// A rustls client configuration verifying the server as `sslmode` says (verify-full and
    /// verify-ca check the chain; verify-full the name too, at connect time), presenting the
    /// client certificate if one is given. `None` when TLS is not used (`disable`, or
    /// `allow`/`prefer` without a CA: ldr only speaks verified TLS).
    pub fn client_config(&self, alpn: &[&[u8]]) -> Result<Option<Arc<rustls::ClientConfig>>> {
        let Some(root) = &self.root_cert else {
            if self.mode.requires_tls() {
                return Err(SecurityError::InvalidArgument(format!(
                    "sslmode={} requires sslrootcert: ldr verifies the server's certificate",
                    self.mode.as_str()
                )));
            }
            return Ok(None);
        };
        if self.mode == SslMode::Disable {
            return Ok(None);
        }
        let ca = crate::tls::certificates_from_pem(root.as_bytes())?;
        let identity = match (&self.client_cert, &self.client_key) {
            (Some(c), Some(k)) => {
                let chain = crate::tls::certificates_from_pem(c.as_bytes())?;
                let key = {
                    use rustls_pki_types::pem::PemObject;
                    rustls_pki_types::PrivateKeyDer::from_pem_slice(k.as_bytes()).map_err(|e| {
                        SecurityError::InvalidArgument(format!("invalid sslkey: {e}"))
                    })?
                };
                Some((chain, key))
            }
            (None, None) => None,
            _ => {
                return Err(SecurityError::InvalidArgument(
                    "sslcert and sslkey go together".into(),
                ));
            }
        };
        Ok(Some(Arc::new(crate::tls::client_config(
            &ca, identity, alpn,
        )?)))
    }
}

/// A `postgresql://` (or `postgres://`) connection URI, parsed: user and password
/// percent-decoded, the host without an IPv6 address's brackets, the query parameters
/// decoded and in order (`options=-ccluster=…` among them, for the caller to use or ignore).
#[derive(Clone, PartialEq, Eq)]
pub struct ConnectionUri {
    pub user: String,
    pub password: Option<String>,
    pub host: String,
    pub port: Option<u16>,
    pub params: Vec<(String, String)>,
}

impl std::fmt::Debug for ConnectionUri {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionUri")
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "redacted"))
            .field("host", &self.host)
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

impl ConnectionUri {
    /// Parses `uri`; a user and a host are required. Errors say what is wrong (`missing
    /// host`) without naming the URI, which may hold a password: callers add their context.
    pub fn parse(uri: &str) -> Result<ConnectionUri> {
        let bad = |why: String| SecurityError::InvalidArgument(why);
        let parsed = url::Url::parse(uri).map_err(|e| bad(e.to_string()))?;
        if !matches!(parsed.scheme(), "postgresql" | "postgres") {
            return Err(bad(format!(
                "scheme must be postgresql://, got {}://",
                parsed.scheme()
            )));
        }
        let host = parsed
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| bad("missing host".into()))?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let user = percent_decode(parsed.username());
        if user.is_empty() {
            return Err(bad("missing user".into()));
        }
        Ok(ConnectionUri {
            user,
            password: parsed.password().map(percent_decode),
            host,
            port: parsed.port(),
            params: query_params(&parsed),
        })
    }

    /// The TLS parameters of the query (see [`TlsParams::from_query`]).
    pub fn tls_params(&self, default_mode: SslMode) -> Result<TlsParams> {
        TlsParams::from_query(
            self.params.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            default_mode,
        )
    }
}

/// A percent-encoded URI part (user, password), decoded.
fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

/// The query parameters of `url`, decoded, in order.
pub fn query_params(url: &url::Url) -> Vec<(String, String)> {
    url.query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// `url` with `params` as its query, less the TLS parameters (tokio-postgres does not know
/// `sslrootcert` and the others; the TLS configuration travels beside the URL), and
/// `sslmode=<sslmode>` last.
pub fn plain_url(url: &url::Url, params: &[(String, String)], sslmode: &str) -> url::Url {
    let mut plain = url.clone();
    {
        let mut query = plain.query_pairs_mut();
        query.clear();
        for (k, v) in params
            .iter()
            .filter(|(k, _)| !TLS_PARAMS.contains(&k.as_str()))
        {
            query.append_pair(k, v);
        }
        query.append_pair("sslmode", sslmode);
    }
    plain
}

/// Reads a file for `encode-uri` as (path, contents).
pub fn read_for_uri(path: &Path) -> Result<(String, String)> {
    let text = std::fs::read_to_string(path).map_err(|e| SecurityError::io(path, e))?;
    Ok((path.display().to_string(), text))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEM: &str = "-----BEGIN CERTIFICATE-----\nMIIB+zCC/aA=\n-----END CERTIFICATE-----\n";

    #[test]
    fn encode_uri_matches_cockroach_inline_form() {
        let uri = encode_uri(&EncodeUri {
            target: "repl:s3cret@10.0.0.1:26257".into(),
            ca_cert: Some(("certs/ca.crt".into(), PEM.into())),
            inline: true,
            cluster: "system".into(),
            ..Default::default()
        })
        .expect("uri");
        assert_eq!(
            uri,
            "postgresql://repl:s3cret@10.0.0.1:26257/?options=-ccluster%3Dsystem&sslinline=true&sslmode=verify-full&sslrootcert=-----BEGIN+CERTIFICATE-----%0AMIIB%2BzCC%2FaA%3D%0A-----END+CERTIFICATE-----%0A"
        );
        // The parameters read back to the same PEM.
        let parsed = url::Url::parse(&uri).expect("valid url");
        let pairs: Vec<(String, String)> = parsed
            .query_pairs()
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        let tls = TlsParams::from_query(
            pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            SslMode::Disable,
        )
        .expect("tls params");
        assert_eq!(tls.mode, SslMode::VerifyFull);
        assert_eq!(tls.root_cert.as_deref(), Some(PEM));
        assert_eq!(parsed.password(), Some("s3cret"));
    }

    #[test]
    fn encode_uri_files_database_and_client_certificates() {
        let uri = encode_uri(&EncodeUri {
            target: "postgresql://alice@db.example:5432".into(),
            database: Some("bank".into()),
            ca_cert: Some(("/c/ca.crt".into(), PEM.into())),
            cert: Some(("/c/client.alice.crt".into(), PEM.into())),
            key: Some(("/c/client.alice.key".into(), "k".into())),
            inline: false,
            cluster: "system".into(),
        })
        .expect("uri");
        assert_eq!(
            uri,
            "postgresql://alice@db.example:5432/bank?options=-ccluster%3Dsystem&sslcert=%2Fc%2Fclient.alice.crt&sslkey=%2Fc%2Fclient.alice.key&sslmode=verify-full&sslrootcert=%2Fc%2Fca.crt"
        );
        // A missing port is CockroachDB's default; special characters in the password are escaped.
        let uri = encode_uri(&EncodeUri {
            target: "u:p@ss w@h".into(),
            cluster: "system".into(),
            ..Default::default()
        })
        .expect("uri");
        assert_eq!(
            uri,
            "postgresql://u:p%40ss%20w@h:26257/?options=-ccluster%3Dsystem&sslmode=verify-full"
        );
        assert!(
            encode_uri(&EncodeUri {
                target: "no-at-sign".into(),
                ..Default::default()
            })
            .is_err()
        );
        assert!(
            encode_uri(&EncodeUri {
                target: "u@h:notaport".into(),
                ..Default::default()
            })
            .is_err()
        );
    }

    #[test]
    fn connection_uris_parse_decoded() {
        let u = ConnectionUri::parse(
            "postgres://ldr_user:s3cr%40t@[::1]:26258/db?options=-ccluster%3Dsystem&sslmode=disable",
        )
        .expect("valid");
        assert_eq!(
            (
                u.user.as_str(),
                u.password.as_deref(),
                u.host.as_str(),
                u.port
            ),
            ("ldr_user", Some("s3cr@t"), "::1", Some(26258))
        );
        assert_eq!(u.params[0], ("options".into(), "-ccluster=system".into()));
        assert_eq!(
            u.tls_params(SslMode::VerifyFull).expect("tls").mode,
            SslMode::Disable
        );
        assert!(!format!("{u:?}").contains("s3cr"), "{u:?}");
        for (bad, why) in [
            (
                "mysql://u@h:1",
                "scheme must be postgresql://, got mysql://",
            ),
            ("postgresql://h:1", "missing user"),
            ("postgresql://u@:1", "empty host"),
        ] {
            let e = ConnectionUri::parse(bad).expect_err(bad);
            assert!(e.to_string().contains(why), "{bad}: {e}");
        }
        let url = url::Url::parse(
            "postgresql://u@h:1/db?application_name=x&sslrootcert=ca.crt&sslmode=verify-full",
        )
        .expect("url");
        assert_eq!(
            plain_url(&url, &query_params(&url), "require").as_str(),
            "postgresql://u@h:1/db?application_name=x&sslmode=require"
        );
    }

    #[test]
    fn tls_params_require_a_ca_to_verify() {
        let e = TlsParams::from_query([("sslmode", "verify-full")], SslMode::Disable)
            .expect_err("no CA");
        assert!(e.to_string().contains("requires sslrootcert"), "{e}");
        assert!(TlsParams::from_query([("sslmode", "bogus")], SslMode::Disable).is_err());
        let plain =
            TlsParams::from_query([("sslmode", "disable")], SslMode::VerifyFull).expect("disable");
        assert!(plain.client_config(&[]).expect("config").is_none());
    }
}
