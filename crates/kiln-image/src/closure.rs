//! The shared libraries a program needs, as this machine resolves them (`ldd`), the dynamic
//! loader included; and the Debian packages that own them (`dpkg-query -S`), for the SBOM.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;

use crate::Error;

/// The libraries `elves` load, transitively (`ldd` already walks the whole tree), as the paths
/// the loader finds them at. Files that are not dynamic executables (static binaries, scripts)
/// need none.
pub fn libraries(elves: &[PathBuf]) -> Result<BTreeSet<PathBuf>, Error> {
    let mut found = BTreeSet::new();
    // A few hundred files per `ldd`, which runs the loader once per file anyway.
    for chunk in elves.chunks(200) {
        let output = Command::new("ldd")
            .args(chunk)
            .env("LC_ALL", "C")
            .output()
            .map_err(|error| match error.kind() {
                std::io::ErrorKind::NotFound => Error::ToolMissing {
                    tool: "ldd",
                    purpose: "it finds the shared libraries the server needs",
                    package: "libc-bin",
                },
                _ => Error::io("run `ldd` on", &chunk[0])(error),
            })?;
        let text = String::from_utf8_lossy(&output.stdout);
        found.extend(parse_ldd(chunk, &text)?);
    }
    Ok(found)
}

/// `ldd`'s lines: `libm.so.6 => /lib/x86_64-linux-gnu/libm.so.6 (0x…)`, the loader as
/// `/lib64/ld-linux-x86-64.so.2 (0x…)`, the vDSO (no file) as `linux-vdso.so.1 (0x…)`.
/// With several files, each one's lines follow a `path:` line.
fn parse_ldd(elves: &[PathBuf], text: &str) -> Result<BTreeSet<PathBuf>, Error> {
    let mut found = BTreeSet::new();
    let mut elf = elves.first().cloned().unwrap_or_default();
    for line in text.lines() {
        if elves.len() > 1 && !line.starts_with(char::is_whitespace) && line.ends_with(':') {
            elf = PathBuf::from(line.trim_end_matches(':'));
            continue;
        }
        let line = line.trim();
        if line.is_empty()
            || line.contains("statically linked")
            || line.contains("not a dynamic executable")
        {
            continue;
        }
        let path = match line.split_once("=>") {
            Some((name, rest)) => {
                let rest = rest.trim();
                if rest.starts_with("not found") {
                    return Err(Error::LibraryNotFound {
                        path: elf.clone(),
                        library: name.trim().to_string(),
                    });
                }
                rest.split(" (").next().unwrap_or("").trim()
            }
            None => line.split(" (").next().unwrap_or("").trim(),
        };
        if path.starts_with('/') {
            found.insert(PathBuf::from(path));
        }
    }
    Ok(found)
}

/// A Debian package, as the SBOM names it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct DebianPackage {
    pub name: String,
    pub version: String,
    pub architecture: String,
}

/// The Debian packages owning `files` (each asked by the path given and by its real path, as
/// a merged-`/usr` system may know either). Files no package owns are left out; without
/// `dpkg-query` (not a Debian system), none is known.
pub fn debian_packages(files: &[PathBuf]) -> Vec<DebianPackage> {
    let mut asked: BTreeSet<PathBuf> = BTreeSet::new();
    for file in files {
        asked.insert(file.clone());
        if let Ok(real) = std::fs::canonicalize(file) {
            asked.insert(real);
        }
    }
    if asked.is_empty() {
        return Vec::new();
    }
    let Ok(output) = Command::new("dpkg-query")
        .arg("-S")
        .args(&asked)
        .env("LC_ALL", "C")
        .output()
    else {
        return Vec::new();
    };
    // `libc6:amd64: /lib/x86_64-linux-gnu/libc.so.6`; diversions print other lines.
    let mut names = BTreeSet::new();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        if line.starts_with("diversion ") {
            continue;
        }
        if let Some((packages, _)) = line.split_once(": ") {
            for package in packages.split(", ") {
                names.insert(package.trim().to_string());
            }
        }
    }
    if names.is_empty() {
        return Vec::new();
    }
    let Ok(output) = Command::new("dpkg-query")
        .args([
            "-W",
            "-f",
            "${binary:Package}\t${Version}\t${Architecture}\n",
        ])
        .args(&names)
        .env("LC_ALL", "C")
        .output()
    else {
        return Vec::new();
    };
    let mut packages: BTreeMap<String, DebianPackage> = BTreeMap::new();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let mut fields = line.split('\t');
        let (Some(name), Some(version), Some(architecture)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let name = name.split(':').next().unwrap_or(name).to_string();
        packages.insert(
            name.clone(),
            DebianPackage {
                name,
                version: version.to_string(),
                architecture: architecture.to_string(),
            },
        );
    }
    packages.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_lines_give_the_libraries_and_the_loader() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\tlibm.so.6 => /lib/x86_64-linux-gnu/libm.so.6 (0x00007f)\n\t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n";
        let found = parse_ldd(&[PathBuf::from("/bin/x")], text).unwrap();
        assert_eq!(
            found.into_iter().collect::<Vec<_>>(),
            [
                PathBuf::from("/lib/x86_64-linux-gnu/libm.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2")
            ]
        );
    }

    #[test]
    fn several_files_are_told_apart() {
        let text = "/a/one.so:\n\tlibm.so.6 => /lib/libm.so.6 (0x1)\n/a/two.so:\n\tlibgone.so => not found\n";
        let elves = [PathBuf::from("/a/one.so"), PathBuf::from("/a/two.so")];
        let error = parse_ldd(&elves, text).unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("`/a/two.so` needs `libgone.so`"),
            "{error}"
        );
    }

    #[test]
    fn a_missing_library_is_an_error_naming_it() {
        let text = "\tlibgone.so.3 => not found\n";
        let error = parse_ldd(&[PathBuf::from("/bin/x")], text).unwrap_err();
        assert!(error.to_string().contains("`libgone.so.3`"), "{error}");
    }

    #[test]
    fn this_machines_ls_needs_libc_from_its_debian_package() {
        let found = libraries(&[PathBuf::from("/bin/ls")]).unwrap();
        assert!(found.iter().any(|p| p.ends_with("libc.so.6")), "{found:?}");
        assert!(
            found
                .iter()
                .any(|p| p.to_string_lossy().contains("ld-linux")),
            "{found:?}"
        );
        let packages = debian_packages(&found.into_iter().collect::<Vec<_>>());
        assert!(packages.iter().any(|p| p.name == "libc6"), "{packages:?}");
    }
}
