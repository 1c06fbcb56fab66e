//! `sandboxd serve`: the daemon.

use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:3000")]
    pub listen: SocketAddr,
    /// Data directory (default /var/lib/sandboxd as root, else $XDG_DATA_HOME/sandboxd).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

pub fn run(_args: ServeArgs) -> anyhow::Result<()> {
    anyhow::bail!("serve is not implemented yet")
}
