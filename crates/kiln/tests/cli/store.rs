//! `kiln store fsck` and `kiln store gc`, and a remote S3 store (a real moto server): a flipped
//! byte found and traced to what references it, gc's dry run then the real one, bad input, a
//! version uploaded before it is registered and fetched back, verified, where it is missing.

use std::fs;
use std::path::{Path, PathBuf};

use kiln_store::testing::s3_test_server;
use kiln_store::{Digest, hash_file};
use serde_json::Value;

use crate::common::{TestProject, kiln_command, stderr, stdout};

/// A model whose artifact is the folder `model` (a `predict.py`), made from `data.csv`, which a
/// first stage writes and nothing registers.
fn project() -> TestProject {
    let project = TestProject::new(
        "models:\n  m:\n    stages:\n      prepare: {cmd: 'cp raw.csv data.csv', deps: [raw.csv], outs: [data.csv]}\n      package: {cmd: 'mkdir -p model && cp predict.py model/', deps: [predict.py, data.csv], outs: [model]}\n    artifact: model\n    example: example.csv\n",
    );
    project.write(
        "predict.py",
        "def predict(inputs):\n    return {\"sum\": inputs[\"a\"] + inputs[\"b\"]}\n",
    );
    project.write("raw.csv", "a,b\n1,2\n3,4\n");
    project.write("example.csv", "a,b\n1,2\n");
    project
}

fn run(project: &TestProject, env: &[(String, String)]) {
    let output = kiln_command(project.root())
        .envs(env.iter().map(|(k, v)| (k, v)))
        .arg("run")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
}

fn object(project: &TestProject, digest: &Digest) -> PathBuf {
    let hex = digest.to_hex();
    project.path(&format!(".kiln/store/objects/{}/{}", &hex[..2], &hex[2..]))
}

/// Makes every file under `dir` look two hours old, past gc's grace period.
fn age_all(dir: &Path) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            age_all(&path);
        } else {
            fs::File::open(&path)
                .unwrap()
                .set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(7200))
                .unwrap();
        }
    }
}

#[test]
fn fsck_finds_a_flipped_byte_and_a_missing_blob_and_names_what_references_them() {
    let project = project();
    run(&project, &[]);
    let sound = project.kiln(&["store", "fsck"]);
    assert_eq!(sound.status.code(), Some(0), "{}", stderr(&sound));
    assert!(
        stdout(&sound).starts_with("checked 2 blobs ("),
        "{}",
        stdout(&sound)
    );
    assert!(
        stdout(&sound).contains("and 1 tree in `"),
        "{}",
        stdout(&sound)
    );
    assert!(stderr(&sound).contains("the store is sound"));

    // Flip a byte of the artifact's `predict.py` in the store.
    let predict = hash_file(&project.path("predict.py")).unwrap();
    let path = object(&project, &predict);
    let mut bytes = fs::read(&path).unwrap();
    bytes[0] ^= 0x20;
    fs::write(&path, &bytes).unwrap();
    let output = project.kiln(&["store", "fsck"]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    let text = stdout(&output);
    let expected = format!(
        "corrupt: blob `{predict}` hashes to `{}`\n",
        Digest::of_bytes(&bytes)
    );
    assert!(text.contains(&expected), "{text}");
    assert!(
        text.contains("  referenced by m@v1: `predict.py`\n"),
        "{text}"
    );
    assert!(
        text.contains("  referenced by run 1: `model/predict.py`\n"),
        "{text}"
    );
    assert!(
        stderr(&output).contains("error: 1 blob or tree is corrupt or missing\nhint: "),
        "{}",
        stderr(&output)
    );

    // A missing blob, as JSON.
    let data = hash_file(&project.path("data.csv")).unwrap();
    fs::remove_file(object(&project, &data)).unwrap();
    let output = project.kiln(&["store", "fsck", "--json"]);
    assert_eq!(output.status.code(), Some(1));
    let report: Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(report["problems"], 2);
    let problems = &report["stores"][0]["problems"];
    let missing = problems
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["problem"] == "missing")
        .unwrap();
    assert_eq!(missing["digest"], data.to_hex());
    let names: Vec<&str> = missing["referenced_by"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    assert!(
        names.iter().any(|n| n.starts_with("stage-cache `")),
        "{names:?}"
    );
    assert!(names.contains(&"run 1: `data.csv`"), "{names:?}");
}

#[test]
fn gc_dry_run_lists_what_gc_then_removes_and_keeps_versions_and_recent_runs() {
    let project = project();
    run(&project, &[]);
    let data = hash_file(&project.path("data.csv")).unwrap();
    let predict = hash_file(&project.path("predict.py")).unwrap();
    // Young blobs are never collected, whatever references them.
    fs::remove_dir_all(project.path(".kiln/store/refs/stage-cache")).unwrap();
    let young = project.kiln(&["store", "gc", "--keep-runs", "0", "--keep-days", "0"]);
    assert_eq!(young.status.code(), Some(0), "{}", stderr(&young));
    assert!(
        stderr(&young).contains("removed 0 blobs and 0 trees, 0 B freed; kept 1 blob referenced and 1 younger than an hour"),
        "{}",
        stderr(&young)
    );
    age_all(&project.path(".kiln/store"));
    // The run is recent: it keeps its `data.csv`.
    let recent = project.kiln(&["store", "gc", "--dry-run"]);
    assert_eq!(stdout(&recent), "", "{}", stderr(&recent));

    let dry = project.kiln(&[
        "store",
        "gc",
        "--dry-run",
        "--keep-runs",
        "0",
        "--keep-days",
        "0",
    ]);
    assert_eq!(dry.status.code(), Some(0), "{}", stderr(&dry));
    assert_eq!(stdout(&dry), format!("would remove blob `{data}` (12 B)\n"));
    assert!(
        stderr(&dry).contains("would remove 1 blob and 0 trees, 12 B to free"),
        "{}",
        stderr(&dry)
    );
    assert!(
        object(&project, &data).exists(),
        "a dry run removes nothing"
    );

    let done = project.kiln(&[
        "store",
        "gc",
        "--keep-runs",
        "0",
        "--keep-days",
        "0",
        "--json",
    ]);
    assert_eq!(done.status.code(), Some(0), "{}", stderr(&done));
    let report: Value = serde_json::from_str(&stdout(&done)).unwrap();
    assert_eq!(report["bytes_freed"], 12);
    assert_eq!(report["removed"][0]["digest"], data.to_hex());
    assert!(!object(&project, &data).exists());
    // The version's artifact (a tree and its file) is kept, and the store is sound.
    assert!(object(&project, &predict).exists());
    let fsck = project.kiln(&["store", "fsck"]);
    assert_eq!(fsck.status.code(), Some(0), "{}", stdout(&fsck));

    // While a run holds the project's run lock, gc waits its turn rather than sweep under it.
    let lock = fs::File::options()
        .write(true)
        .open(project.path(".kiln/run.lock"))
        .unwrap();
    lock.try_lock().unwrap();
    let busy = project.kiln(&["store", "gc"]);
    assert_eq!(busy.status.code(), Some(1));
    assert!(
        stderr(&busy).contains("error: another `kiln run` is running in this project"),
        "{}",
        stderr(&busy)
    );
}

#[test]
fn bad_input_is_refused_with_a_message_and_exit_code_2() {
    let empty = TestProject::empty();
    let output = empty.kiln(&["store", "fsck"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("holds no Kiln store (no `.kiln/` folder)"),
        "{}",
        stderr(&output)
    );
    for args in [
        &["store", "gc", "--keep-runs", "-1"][..],
        &["store", "gc", "--keep-days", "soon"],
        &["store", "scrub"],
        &["store"],
    ] {
        let output = empty.kiln(args);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{args:?}: {}",
            stderr(&output)
        );
    }
    // A remote store that is not an S3 URL.
    let project = project();
    fs::create_dir_all(project.path(".kiln")).unwrap();
    let output = kiln_command(project.root())
        .env("KILN_STORE_URL", "gs://bucket/kiln")
        .args(["store", "fsck"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains(
            "error: invalid remote store configuration: `KILN_STORE_URL` is `gs://bucket/kiln`, which is not an `s3://BUCKET/PREFIX` URL\nhint: set `KILN_STORE_URL` to `s3://BUCKET/PREFIX`"
        ),
        "{}",
        stderr(&output)
    );
}

#[test]
fn with_s3_a_version_is_uploaded_before_it_is_registered_and_fetched_back_verified() {
    let server = s3_test_server();
    let bucket = server.new_bucket();
    let env = server.env(&bucket, "kiln");
    let project = project();
    run(&project, &env);
    let kiln = |args: &[&str]| {
        kiln_command(project.root())
            .envs(env.iter().map(|(k, v)| (k, v)))
            .args(args)
            .output()
            .unwrap()
    };
    let fsck = kiln(&["store", "fsck"]);
    assert_eq!(
        fsck.status.code(),
        Some(0),
        "{}{}",
        stdout(&fsck),
        stderr(&fsck)
    );
    assert!(
        stdout(&fsck).contains(&format!(
            "checked 1 blob (67 B) and 1 tree in `s3://{bucket}/kiln`"
        )),
        "only the version's artifact goes up: {}",
        stdout(&fsck)
    );

    // This machine loses its store: the version comes back from S3 when it is published.
    for dir in [
        ".kiln/store",
        ".kiln/artifacts",
        ".kiln/versions",
        ".kiln/serving",
    ] {
        fs::remove_dir_all(project.path(dir)).unwrap();
    }
    let moved = kiln(&["models", "alias", "m@v1", "production"]);
    assert_eq!(moved.status.code(), Some(0), "{}", stderr(&moved));
    assert!(!stderr(&moved).contains("warning"), "{}", stderr(&moved));
    assert_eq!(
        fs::read_to_string(project.path(".kiln/serving/m@production/model/predict.py")).unwrap(),
        project.read("predict.py")
    );

    // A blob corrupted in the bucket is found by fsck, and refused on the way down.
    let predict = hash_file(&project.path("predict.py")).unwrap();
    let hex = predict.to_hex();
    server.put_raw(
        &bucket,
        &format!("kiln/objects/{}/{}", &hex[..2], &hex[2..]),
        b"def predict(inputs): return {}\n",
    );
    let fsck = kiln(&["store", "fsck"]);
    assert_eq!(fsck.status.code(), Some(1));
    assert!(
        stdout(&fsck).contains(&format!("corrupt: blob `{predict}`")),
        "{}",
        stdout(&fsck)
    );
    for dir in [
        ".kiln/store",
        ".kiln/artifacts",
        ".kiln/versions",
        ".kiln/serving",
    ] {
        fs::remove_dir_all(project.path(dir)).unwrap();
    }
    let moved = kiln(&["models", "alias", "m@v1", "staging"]);
    assert!(
        stderr(&moved).contains(&format!(
            "blob `{predict}` in the store at `s3://{bucket}/kiln` is corrupt"
        )),
        "{}",
        stderr(&moved)
    );
    assert!(
        !project
            .path(".kiln/serving/m@staging/model/predict.py")
            .exists()
    );
}

#[test]
fn restoring_and_materialising_never_write_through_a_link_out_of_the_project() {
    let project = project();
    run(&project, &[]);
    let outside = TestProject::empty();
    // The out folder replaced by a link to a folder outside: the restore replaces the link,
    // and writes nothing outside.
    fs::remove_dir_all(project.path("model")).unwrap();
    std::os::unix::fs::symlink(outside.root(), project.path("model")).unwrap();
    run(&project, &[]);
    assert!(
        !fs::symlink_metadata(project.path("model"))
            .unwrap()
            .is_symlink()
    );
    assert_eq!(project.read("model/predict.py"), project.read("predict.py"));
    assert_eq!(fs::read_dir(outside.root()).unwrap().count(), 0);

    // The artifact's folder for serving planted as a link out: publishing refuses it.
    for dir in [".kiln/artifacts", ".kiln/versions", ".kiln/serving"] {
        fs::remove_dir_all(project.path(dir)).unwrap();
    }
    let tree = fs::read_dir(project.path(".kiln/store/refs/trees"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .file_name();
    let planted = project.path(".kiln/artifacts").join(&tree).join("model");
    fs::create_dir_all(planted.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(outside.root(), &planted).unwrap();
    let moved = project.kiln(&["models", "alias", "m@v1", "production"]);
    assert!(
        stderr(&moved).contains("refusing to write `predict.py` under")
            && stderr(&moved).contains("a folder on the way is a symbolic link"),
        "{}",
        stderr(&moved)
    );
    assert_eq!(fs::read_dir(outside.root()).unwrap().count(), 0);
}

#[test]
fn a_version_whose_upload_fails_is_not_registered() {
    let server = s3_test_server();
    // A bucket nobody created: the upload fails, so no registry row may name the artifact.
    let env = server.env("kiln-no-such-bucket", "kiln");
    let project = project();
    let output = kiln_command(project.root())
        .envs(env.iter().map(|(k, v)| (k, v)))
        .arg("run")
        .output()
        .unwrap();
    assert!(
        stderr(&output).contains("could not register the artifact as a version of `m`"),
        "{}",
        stderr(&output)
    );
    assert!(
        stderr(&output).contains("s3://kiln-no-such-bucket/kiln"),
        "{}",
        stderr(&output)
    );
    let listed = project.kiln(&["models", "list", "--json"]);
    assert_eq!(stdout(&listed).trim(), "[]", "{}", stderr(&listed));
}
