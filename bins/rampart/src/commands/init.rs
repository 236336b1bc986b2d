//! `rampart init`.

use std::path::Path;

use rampart_hub::datadir::{self, DataDir};
use rampart_pki::KeyAlgorithm;

use crate::CliError;

pub fn run(
    data_dir: &Path,
    hostnames: &[String],
    key_type: &str,
    force: bool,
) -> Result<(), CliError> {
    let alg: KeyAlgorithm = key_type.parse().map_err(|e: String| {
        CliError::new(e, Some("use --key-type ecdsa-p256 or --key-type ed25519"))
    })?;
    let dir = DataDir::new(data_dir);
    let report = datadir::init(&dir, hostnames, alg, force)?;
    println!("Initialised a Rampart hub in {}", data_dir.display());
    println!("  hub certificate names : {}", report.hub_names.join(", "));
    println!(
        "  root CA fingerprint   : sha256:{}",
        report.root_fingerprint
    );
    println!(
        "  device CA fingerprint : sha256:{}",
        report.device_ca_fingerprint
    );
    println!("  configuration         : {}", dir.config_path().display());
    println!();
    println!("The root CA key (pki/root-ca.key) is only needed to re-issue the hub or device CA:");
    println!("move it to offline storage.");
    println!();
    println!("Next: rampart hub --data-dir {}", data_dir.display());
    println!(
        "      rampart device add gw-0001 --data-dir {} --out ./gw-0001",
        data_dir.display()
    );
    Ok(())
}
