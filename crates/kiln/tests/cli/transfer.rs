//! `kiln models export` and `kiln models import`: a version moved between two workspaces with
//! its lineage and served there; and every kind of bad export refused with a message and exit
//! code 2, leaving nothing behind.

use std::path::Path;

use serde_json::{Value, json};

use crate::common::{TestProject, stderr};
use crate::models::{adder, green, json_of, project};
use crate::registry::ChildGuard;
use crate::serve::{free_port, post, spawn_serve, terminate, test_python, wait_listening};

/// `kiln ARGS` in `project`, expected to succeed; returns stderr.
fn ok(project: &TestProject, args: &[&str]) -> String {
    let output = project.kiln(args);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    stderr(&output)
}

fn path_str(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn a_version_exported_here_is_imported_there_with_its_lineage_and_served() {
    let here = project();
    green(&here, 0.9);
    here.write("predict.py", &adder(100));
    green(&here, 0.92);
    let files = tempfile::tempdir().unwrap();
    let tar = files.path().join("m-v2.tar");
    let said = ok(&here, &["models", "export", "m@v2", path_str(&tar)]);
    assert!(said.contains("exported `m` v2 to"), "{said}");
    // Two exports of one version are the same bytes.
    let again = files.path().join("again.tar");
    ok(&here, &["models", "export", "m@latest", path_str(&again)]);
    assert_eq!(std::fs::read(&tar).unwrap(), std::fs::read(&again).unwrap());

    // There, two runs of its own first: its run 2 is not the exported version's run 2.
    let there = project();
    green(&there, 0.5);
    green(&there, 0.6);
    let said = ok(&there, &["models", "import", path_str(&tar)]);
    assert!(
        said.contains("imported `m@v2` from") && said.contains("as `m` v3 (now `latest`)"),
        "{said}"
    );
    let exported = json_of(&here, &["models", "show", "m@v2", "--json"]);
    let imported = json_of(&there, &["models", "show", "m@v3", "--json"]);
    assert_eq!(imported["lineage"], exported["lineage"]);
    assert_eq!(imported["artifact_digest"], exported["artifact_digest"]);
    assert_eq!(imported["origin"]["model"], json!("m"));
    assert_eq!(imported["origin"]["version"], json!(2));
    assert_eq!(imported["origin"]["source"], json!("m-v2.tar"));
    assert_eq!(
        imported["origin"]["registered_at_ms"],
        exported["registered_at_ms"]
    );
    let history = json_of(
        &there,
        &["models", "history", "m", "--alias", "latest", "--json"],
    );
    let last = history.as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["command"], json!("import"), "{history}");
    assert_eq!(last["to_version"], json!(3));

    // The same export again is the same version.
    let said = ok(&there, &["models", "import", path_str(&tar)]);
    assert!(said.contains("`m` v3 already holds `m@v2`"), "{said}");
    assert_eq!(
        json_of(&there, &["models", "list", "--json"])[0]["versions"],
        json!(3)
    );

    // Served there, from its own store: `a + b + 100`, not what its own run 2 made.
    let port = free_port();
    let python = test_python();
    let mut server = ChildGuard(spawn_serve(
        there.root(),
        &[
            "m@v3",
            "--port",
            &port.to_string(),
            "--python",
            path_str(&python),
        ],
    ));
    wait_listening(&mut server.0);
    let request = json!({"inputs": [
        {"name": "a", "shape": [1], "datatype": "FP64", "data": [1.0]},
        {"name": "b", "shape": [1], "datatype": "FP64", "data": [2.0]},
    ]});
    let (status, body) = post(port, "/v2/models/m/infer", &request);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["outputs"][0]["data"][0], json!(103.0));
    let metadata: Value = reqwest::blocking::get(format!("http://127.0.0.1:{port}/v2/models/m"))
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(metadata["versions"], json!(["3"]));
    assert!(terminate(&mut server.0).success());

    // An imported version exports again, as the same version.
    let onwards = files.path().join("onwards.tar");
    ok(&there, &["models", "export", "m@v3", path_str(&onwards)]);
    let third = TestProject::empty();
    ok(&third, &["models", "import", path_str(&onwards)]);
    let shown = json_of(&third, &["models", "show", "m@v1", "--json"]);
    assert_eq!(shown["lineage"], exported["lineage"]);
    assert_eq!(shown["origin"]["version"], json!(3));
}

/// A tar of raw entries, names written as given (the `tar` crate's builder refuses `..`).
fn tar_of(entries: &[(&str, tar::EntryType, &[u8])]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (name, kind, data) in entries {
        let mut header = tar::Header::new_old();
        header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        header.set_entry_type(*kind);
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        if matches!(kind, tar::EntryType::Symlink | tar::EntryType::Link) {
            header.as_old_mut().linkname[..12].copy_from_slice(b"/etc/passwd\0");
        }
        header.set_cksum();
        builder.append(&header, *data).unwrap();
    }
    builder.into_inner().unwrap()
}

/// The entries of a tar: name and content.
fn entries_of(bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut archive = tar::Archive::new(bytes);
    archive
        .entries()
        .unwrap()
        .map(|entry| {
            let mut entry = entry.unwrap();
            let name = entry.path().unwrap().to_string_lossy().into_owned();
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut data).unwrap();
            (name, data)
        })
        .collect()
}

fn rebuilt(entries: &[(String, Vec<u8>)]) -> Vec<u8> {
    let raw: Vec<(&str, tar::EntryType, &[u8])> = entries
        .iter()
        .map(|(name, data)| (name.as_str(), tar::EntryType::Regular, data.as_slice()))
        .collect();
    tar_of(&raw)
}

/// Everything under `dir`, as paths relative to it.
fn files_under(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(folder) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&folder) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                found.push(path.strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    found.sort();
    found
}

#[test]
fn bad_exports_and_imports_are_refused_with_a_message_and_leave_nothing_behind() {
    let here = project();
    green(&here, 0.9);
    let files = tempfile::tempdir().unwrap();
    let good = files.path().join("good.tar");
    ok(&here, &["models", "export", "m", path_str(&good)]);
    let good_bytes = std::fs::read(&good).unwrap();
    let entries = entries_of(&good_bytes);
    assert_eq!(entries[0].0, "manifest.json");
    assert!(
        entries[1..]
            .iter()
            .all(|(name, _)| name.starts_with("blobs/"))
    );
    let manifest = String::from_utf8(entries[0].1.clone()).unwrap();
    let blob = entries[1].0.clone();

    let refused = crate::common::assert_refused;
    let nowhere = files.path().join("never.tar");
    refused(
        &here,
        &["models", "export", "nope@v1", path_str(&nowhere)],
        "no version of model `nope` is registered",
    );
    refused(
        &here,
        &["models", "export", "m@v9", path_str(&nowhere)],
        "model `m` has no version 9",
    );
    refused(
        &here,
        &["models", "export", "m@Prod", path_str(&nowhere)],
        "`m@Prod` is not a model reference",
    );
    assert!(!nowhere.exists());

    let there = TestProject::empty();
    let mut flipped = good_bytes.clone();
    let at = flipped
        .windows(11)
        .position(|w| w == b"def predict")
        .expect("the blob holding predict.py");
    flipped[at] ^= 0x20;
    let newer_manifest = manifest.replace("\"format_version\": 1", "\"format_version\": 2");
    let mut newer = entries.clone();
    newer[0].1 = newer_manifest.into_bytes();
    let unnamed = format!("blobs/{}", "ab".repeat(32));
    let manifest_bytes = manifest.as_bytes();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "truncated.tar",
            // Cut inside a blob's data, so that the archive ends mid-entry.
            good_bytes[..at + 5].to_vec(),
            "is not a readable tar archive, or it is truncated or corrupt",
        ),
        (
            "cut-at-an-entry.tar",
            rebuilt(&entries[..1]),
            "is truncated or incomplete: it lacks blob",
        ),
        ("flipped.tar", flipped, "is corrupt: its content hashes to"),
        (
            "newer.tar",
            rebuilt(&newer),
            "was exported by a newer Kiln (format 2; this Kiln reads format 1)",
        ),
        (
            "dotdot.tar",
            tar_of(&[
                ("manifest.json", tar::EntryType::Regular, manifest_bytes),
                ("../x", tar::EntryType::Regular, b"x"),
            ]),
            "holds `../x`, a path with `..`, which would write outside the store",
        ),
        (
            "absolute.tar",
            tar_of(&[
                ("manifest.json", tar::EntryType::Regular, manifest_bytes),
                ("/tmp/x", tar::EntryType::Regular, b"x"),
            ]),
            "holds `/tmp/x`, an absolute path",
        ),
        (
            "symlink.tar",
            tar_of(&[
                ("manifest.json", tar::EntryType::Regular, manifest_bytes),
                (&blob, tar::EntryType::Symlink, b""),
            ]),
            "a symbolic link",
        ),
        (
            "hardlink.tar",
            tar_of(&[
                ("manifest.json", tar::EntryType::Regular, manifest_bytes),
                (&blob, tar::EntryType::Link, b""),
            ]),
            "a hard link",
        ),
        (
            "device.tar",
            tar_of(&[
                ("manifest.json", tar::EntryType::Regular, manifest_bytes),
                ("blobs/dev", tar::EntryType::Char, b""),
            ]),
            "a device file",
        ),
        (
            "unnamed.tar",
            tar_of(&[
                ("manifest.json", tar::EntryType::Regular, manifest_bytes),
                (&unnamed, tar::EntryType::Regular, b"x"),
            ]),
            "an entry its manifest does not name",
        ),
        (
            "no-manifest.tar",
            tar_of(&[("model.onnx", tar::EntryType::Regular, b"x")]),
            "is not a Kiln model export: its first entry is `model.onnx`",
        ),
        (
            "empty.tar",
            Vec::new(),
            "is not a Kiln model export: it is empty",
        ),
    ];
    for (name, bytes, message) in &cases {
        let path = files.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        refused(&there, &["models", "import", path_str(&path)], message);
        assert_eq!(
            files_under(&there.path(".kiln/store")),
            Vec::<String>::new(),
            "{name} left something in the store"
        );
    }
    refused(
        &there,
        &[
            "models",
            "import",
            path_str(&files.path().join("missing.tar")),
        ],
        "cannot read",
    );
    assert_eq!(json_of(&there, &["models", "list", "--json"]), json!([]));

    // The good one goes in.
    ok(&there, &["models", "import", path_str(&good)]);
    assert_eq!(
        json_of(&there, &["models", "list", "--json"])[0]["versions"],
        json!(1)
    );
    assert!(files_under(&there.path(".kiln/store/tmp")).is_empty());
}
