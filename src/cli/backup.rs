//! `shir backup create | restore`: a node's identity, the IR's CA and data key in one
//! password-sealed file (ADF's `dmgcmd -gbf` / `-ibf`).

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Subcommand;

use crate::datadir::DEFAULT_DATA_DIR;

#[derive(Subcommand)]
pub enum BackupCommand {
    /// Write this node's identity, the IR's CA and data key to a password-sealed file.
    Create {
        /// Data directory of the node to back up.
        #[arg(long, env = "SHIR_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
        /// File to write; must not exist.
        #[arg(long)]
        file: PathBuf,
        /// File holding the password (first line).
        #[arg(long)]
        password_file: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Bring a node back from a backup file into an empty data directory.
    Restore {
        /// Backup file from `shir backup create`.
        #[arg(long)]
        file: PathBuf,
        /// File holding the password (first line).
        #[arg(long)]
        password_file: PathBuf,
        /// Empty (or absent) data directory to restore into.
        #[arg(long, env = "SHIR_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(command: BackupCommand) -> Result<()> {
    let _ = command;
    bail!("backup is not implemented yet")
}
