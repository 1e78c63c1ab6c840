//! `netsim`: network impairment for edgerelay (see `docs/netsim.md`).

use anyhow::Result;
use clap::{Parser, Subcommand};
use netsim::Profile;

#[derive(Parser)]
#[command(name = "netsim", version, about = "Lossy mobile network simulation for edgerelay")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List the named profiles and their parameters.
    Profiles,
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Profiles => {
            for profile in Profile::all() {
                print!("{}", profile.describe());
            }
        }
    }
    Ok(())
}
