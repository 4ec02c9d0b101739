//! `ldr cert` (CockroachDB's `cockroach cert`) and `ldr encode-uri`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use ldr_security::certs;
use ldr_security::uri::{EncodeUri, encode_uri, read_for_uri};

/// `ldr cert …`.
#[derive(Debug, clap::Subcommand)]
pub enum CertCommand {
    /// Create the cluster's CA certificate (certs-dir/ca.crt) and key (--ca-key).
    CreateCa {
        #[command(flatten)]
        dirs: CertDirs,
        /// Replace existing files.
        #[arg(long)]
        overwrite: bool,
    },
    /// Create node.crt/node.key for the given host names and IP addresses.
    CreateNode {
        /// Every name and address clients and other nodes use to reach the node.
        #[arg(required = true)]
        hosts: Vec<String>,
        #[command(flatten)]
        dirs: CertDirs,
        #[arg(long)]
        overwrite: bool,
    },
    /// Create client.<user>.crt/.key (the certificate logs in as <user>).
    CreateClient {
        user: String,
        #[command(flatten)]
        dirs: CertDirs,
        #[arg(long)]
        overwrite: bool,
    },
    /// List the certificates of a certificates directory.
    List {
        #[arg(long, value_name = "DIR", default_value = "certs")]
        certs_dir: PathBuf,
    },
}

#[derive(Debug, clap::Args)]
pub struct CertDirs {
    /// Where certificates and node/client keys are written.
    #[arg(long, value_name = "DIR", default_value = "certs")]
    certs_dir: PathBuf,
    /// The CA key file (keep it outside the certificates directory).
    #[arg(long, value_name = "FILE", required = true)]
    ca_key: PathBuf,
}

pub fn run(command: CertCommand) -> Result<()> {
    match command {
        CertCommand::CreateCa { dirs, overwrite } => {
            certs::create_ca(&dirs.certs_dir, &dirs.ca_key, overwrite)?;
        }
        CertCommand::CreateNode {
            hosts,
            dirs,
            overwrite,
        } => certs::create_node(&dirs.certs_dir, &dirs.ca_key, &hosts, overwrite)?,
        CertCommand::CreateClient {
            user,
            dirs,
            overwrite,
        } => certs::create_client(&dirs.certs_dir, &dirs.ca_key, &user, overwrite)?,
        CertCommand::List { certs_dir } => {
            let list = certs::list(&certs_dir)?;
            println!("Certificate directory: {}", certs_dir.display());
            println!(
                "  usage  | certificate file        | key file                | expires              | notes"
            );
            for c in list {
                let file = c
                    .file
                    .file_name()
                    .map(|f| f.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let key = c
                    .key_file
                    .as_ref()
                    .and_then(|k| k.file_name())
                    .map(|f| f.to_string_lossy().into_owned())
                    .unwrap_or_default();
                println!(
                    "  {:<6} | {:<23} | {:<23} | {} | CN={}",
                    c.usage, file, key, c.expires, c.common_name
                );
            }
        }
    }
    Ok(())
}

/// `ldr encode-uri USER[:PASSWORD]@HOST[:PORT]`: a connection URI with the TLS parameters
/// CockroachDB's `encode-uri` writes (for `CREATE EXTERNAL CONNECTION`).
#[derive(Debug, clap::Args)]
pub struct EncodeUriArgs {
    /// USER[:PASSWORD]@HOST[:PORT]
    target: String,
    /// The CA certificate of the cluster the URI points at.
    #[arg(long, value_name = "FILE")]
    ca_cert: Option<PathBuf>,
    /// A client certificate to log in with.
    #[arg(long, value_name = "FILE", requires = "key")]
    cert: Option<PathBuf>,
    /// The client certificate's key.
    #[arg(long, value_name = "FILE", requires = "cert")]
    key: Option<PathBuf>,
    /// Put the certificates in the URI instead of their paths.
    #[arg(long)]
    inline: bool,
    #[arg(long)]
    database: Option<String>,
    /// The virtual cluster (`options=-ccluster=…`).
    #[arg(long, default_value = "system")]
    cluster: String,
}

pub fn encode(args: EncodeUriArgs) -> Result<()> {
    let read = |p: &Option<PathBuf>| -> Result<Option<(String, String)>> {
        p.as_ref()
            .map(|p| read_for_uri(p).with_context(|| format!("cannot read {}", p.display())))
            .transpose()
    };
    let uri = encode_uri(&EncodeUri {
        target: args.target,
        database: args.database,
        ca_cert: read(&args.ca_cert)?,
        cert: read(&args.cert)?,
        key: read(&args.key)?,
        inline: args.inline,
        cluster: args.cluster,
    })?;
    println!("{uri}");
    Ok(())
}
