//! `sandboxd tls-ca`: where the ingress CA of `serve --tls` is, and how to trust it.

use anyhow::Context;
use clap::Args;
use std::path::PathBuf;

/// Flags of `sandboxd tls-ca`.
#[derive(Debug, Args)]
pub struct TlsCaArgs {
    /// The daemon's data directory (default: the same as `serve`'s).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Print only the CA certificate (PEM).
    #[arg(long)]
    pub pem: bool,
}

pub fn run(args: TlsCaArgs) -> anyhow::Result<()> {
    let data_dir = match args.data_dir {
        Some(d) => d,
        None => crate::serve_cmd::default_data_dir()?,
    };
    // made here if the daemon has not made it yet, so it can be trusted before the first start
    let ca = sandboxd_net::local_ca::LocalCa::load_or_create(
        &data_dir.join(crate::serve_cmd::INGRESS_CA_DIR),
        "ingress",
    )
    .context("the ingress CA")?;
    if args.pem {
        print!("{}", ca.cert_pem());
        return Ok(());
    }
    let path = ca.cert_path();
    let p = path.display();
    println!(
        "The CA of `sandboxd serve --tls` (data dir {dir}):\n  {p}\n\n\
         Trust it where clients run (only there; it signs nothing but this daemon's certificate):\n\
         - Debian, Ubuntu:  sudo cp {p} /usr/local/share/ca-certificates/sandboxd-ingress.crt && sudo update-ca-certificates\n\
         - Fedora, RHEL:    sudo trust anchor {p}\n\
         - macOS:           sudo security add-trusted-cert -d -r trustRoot -k /Library/Keychains/System.keychain {p}\n\
         - one process:     SSL_CERT_FILE={p} (Python httpx and the E2B Python SDK, OpenSSL, curl),\n\
         \x20                  NODE_EXTRA_CA_CERTS={p} (Node.js and the E2B JS SDK), curl --cacert {p}\n\n\
         Names: the certificate covers sandbox.localhost and *.sandbox.localhost (the domain without\n\
         --domain), localhost, 127.0.0.1, ::1 and, with --domain, the domain and *.<domain>.\n\
         `<port>-<id>.sandbox.localhost` resolves to loopback where systemd-resolved or\n\
         nss-myhostname answers (\"hosts: files myhostname dns\" in /etc/nsswitch.conf; Debian:\n\
         apt install libnss-myhostname), and in curl and browsers; otherwise add a wildcard to a\n\
         local resolver (dnsmasq: address=/sandbox.test/127.0.0.1) and serve with\n\
         --domain sandbox.test:<port>. See docs/network.md, \"HTTPS ingress\".",
        dir = data_dir.display()
    );
    Ok(())
}
