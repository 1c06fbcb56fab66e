//! `sandboxd interpreter`: the code-interpreter server (port 49999).

#[derive(clap::Args)]
pub struct InterpreterArgs {}

pub fn run(_args: InterpreterArgs) -> anyhow::Result<()> {
    anyhow::bail!("the code interpreter is not implemented yet")
}
