//! Profiles a CSV file and writes its profile as JSON to stdout: the harness of
//! `bench/profile/run.sh` (`cargo run --release -p kiln-profile --example profile -- FILE`).

use std::io::Write;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args_os()
        .nth(1)
        .ok_or("usage: profile FILE.csv")?;
    let profile = kiln_profile::profile_csv(std::path::Path::new(&path))?;
    let mut stdout = std::io::stdout().lock();
    serde_json::to_writer(&mut stdout, &profile)?;
    writeln!(stdout)?;
    Ok(())
}
