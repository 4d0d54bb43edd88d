//! Transfers between the filesystem store and S3, and `fsck` and `gc` over both.

use std::fs;
use std::time::{Duration, SystemTime};

use kiln_store::maintenance::{ProblemKind, Root, fsck, gc};
use kiln_store::{BlobStore, Digest, Entry, Error, S3Store, Store, Tree, hash_file};

use crate::conformance::Fixture;

/// A local store holding one file blob and a two-file tree.
fn local_with_content(dir: &std::path::Path) -> (Store, Digest, Digest) {
    let store = Store::open(dir.join("store")).unwrap();
    let file = store.put_bytes(b"model").unwrap();
    let x = store.put_bytes(b"x").unwrap();
    let y = store.put_bytes(b"y").unwrap();
    let tree = store
        .put_tree(&Tree::new(vec![
            Entry {
                path: "x".into(),
                digest: x,
                size: 1,
                executable: false,
            },
            Entry {
                path: "d/y".into(),
                digest: y,
                size: 1,
                executable: false,
            },
        ]))
        .unwrap();
    (store, file, tree)
}

#[test]
fn a_version_pushed_to_s3_is_fetched_verified_into_an_empty_store() {
    let remote = Fixture::s3();
    let dir = tempfile::tempdir().unwrap();
    let (local, file, tree) = local_with_content(dir.path());
    let pushed = local.push(&*remote.store, &tree).unwrap();
    assert_eq!(pushed.blobs, 2);
    assert_eq!(
        local.push(&*remote.store, &tree).unwrap().blobs,
        0,
        "nothing twice"
    );
    local.push(&*remote.store, &file).unwrap();

    let elsewhere = Store::open(dir.path().join("elsewhere")).unwrap();
    let fetched = elsewhere.fetch(&*remote.store, &tree).unwrap();
    assert_eq!((fetched.blobs, fetched.bytes), (2, 2));
    let restored = elsewhere.get_tree(&tree).unwrap().unwrap();
    assert_eq!(restored.digest(), tree);
    assert!(
        restored
            .entries
            .iter()
            .all(|e| elsewhere.contains(&e.digest))
    );
    elsewhere.fetch(&*remote.store, &file).unwrap();
    assert_eq!(elsewhere.get_bytes(&file).unwrap(), b"model");
    assert_eq!(elsewhere.fetch(&*remote.store, &file).unwrap().blobs, 0);

    // A blob corrupted in the bucket is refused on the way down, and nothing is kept.
    let third = Store::open(dir.path().join("third")).unwrap();
    let hex = file.to_hex();
    remote.write_raw(&format!("objects/{}/{}", &hex[..2], &hex[2..]), b"modem");
    let error = third.fetch(&*remote.store, &file).unwrap_err();
    assert!(matches!(error, Error::CorruptObject { .. }), "{error:?}");
    assert!(!third.contains(&file));
    // And something the remote never had is missing, naming the remote.
    let error = third
        .fetch(&*remote.store, &Digest::of_bytes(b"nowhere"))
        .unwrap_err();
    assert!(error.to_string().contains("s3://"), "{error}");
}

#[test]
fn fsck_reports_corrupt_and_missing_blobs_with_what_names_them() {
    for fixture in [Fixture::filesystem(), Fixture::s3()] {
        let store = &*fixture.store;
        let good = store.put_bytes(b"good").unwrap();
        let bad = store.put_bytes(b"bad").unwrap();
        let gone = Digest::of_bytes(b"gone");
        let tree = Tree::new(vec![
            Entry {
                path: "bad.txt".into(),
                digest: bad,
                size: 3,
                executable: false,
            },
            Entry {
                path: "gone.txt".into(),
                digest: gone,
                size: 4,
                executable: false,
            },
        ]);
        store.put_tree(&tree).unwrap();
        let hex = bad.to_hex();
        fixture.write_raw(&format!("objects/{}/{}", &hex[..2], &hex[2..]), b"bad!");
        let roots = [
            Root {
                digest: tree.digest(),
                referrer: "iris@v1".into(),
                path: None,
                required: true,
            },
            Root {
                digest: good,
                referrer: "run 3".into(),
                path: Some("data.csv".into()),
                required: true,
            },
        ];
        let report = fsck(store, &[], &roots).unwrap();
        assert_eq!(report.blobs_checked, 2, "{}", store.location());
        assert_eq!(report.trees_checked, 1);
        let problems: Vec<_> = report
            .problems
            .iter()
            .map(|p| (p.digest, p.kind.clone(), p.referenced_by.clone()))
            .collect();
        let mut expected = vec![
            (
                bad,
                ProblemKind::Corrupt {
                    actual: Digest::of_bytes(b"bad!"),
                },
                vec!["iris@v1: `bad.txt`".to_string()],
            ),
            (
                gone,
                ProblemKind::Missing,
                vec![
                    "iris@v1: `gone.txt`".to_string(),
                    format!("tree `{}`: `gone.txt`", tree.digest().short()),
                ],
            ),
        ];
        expected.sort_by_key(|p| p.0);
        assert_eq!(problems, expected, "{}", store.location());
    }
}

fn age(path: &std::path::Path, by: Duration) {
    let file = fs::File::open(path).unwrap();
    file.set_modified(SystemTime::now() - by).unwrap();
}

#[test]
fn gc_keeps_what_roots_reach_and_what_is_young() {
    let dir = tempfile::tempdir().unwrap();
    let (store, file, tree) = local_with_content(dir.path());
    let stray = store.put_bytes(b"stray").unwrap();
    let young = store.put_bytes(b"young").unwrap();
    let orphan_tree = store
        .put_tree(&Tree::new(vec![Entry {
            path: "s".into(),
            digest: stray,
            size: 5,
            executable: false,
        }]))
        .unwrap();
    let old = Duration::from_secs(2 * 3600);
    for digest in [file, stray] {
        age(&store.object_path(&digest), old);
    }
    for entry in &store.get_tree(&tree).unwrap().unwrap().entries {
        age(&store.object_path(&entry.digest), old);
    }
    age(&store.root().join("refs/trees").join(tree.to_hex()), old);
    age(
        &store.root().join("refs/trees").join(orphan_tree.to_hex()),
        old,
    );
    let roots = [Root {
        digest: tree,
        referrer: "iris@v1".into(),
        path: None,
        required: true,
    }];
    let grace = Duration::from_secs(3600);

    let dry = gc(&store, &roots, grace, true).unwrap();
    let removed: Vec<Digest> = dry.removed.iter().map(|b| b.digest).collect();
    let mut expected = vec![file, stray];
    expected.sort();
    assert_eq!(removed, expected);
    assert_eq!(dry.removed_trees, vec![orphan_tree]);
    assert_eq!(dry.bytes_freed, 10);
    assert_eq!((dry.kept_referenced, dry.kept_young), (2, 1));
    assert!(store.contains(&file), "a dry run removes nothing");

    let done = gc(&store, &roots, grace, false).unwrap();
    assert_eq!(done.bytes_freed, 10);
    assert!(!store.contains(&file) && !store.contains(&stray));
    assert!(store.contains(&young));
    assert_eq!(store.get_tree(&orphan_tree).unwrap(), None);
    let kept = store.get_tree(&tree).unwrap().unwrap();
    assert!(kept.entries.iter().all(|e| store.contains(&e.digest)));
    assert!(fsck(&store, &[tree], &roots).unwrap().problems.is_empty());
    let again = gc(&store, &roots, grace, false).unwrap();
    assert!(again.removed.is_empty());

    // Storing content that is already there makes it young again: a run reusing an old blob
    // keeps it out of a concurrent gc until it has recorded it.
    let reused = store.put_bytes(b"reused").unwrap();
    age(&store.object_path(&reused), old);
    let source = dir.path().join("reused.txt");
    fs::write(&source, b"reused").unwrap();
    store
        .put_file(&source, &hash_file(&source).unwrap())
        .unwrap();
    assert!(gc(&store, &roots, grace, false).unwrap().removed.is_empty());
}

#[test]
fn an_unreachable_remote_is_an_error_not_a_hang() {
    let server = kiln_store::testing::s3_test_server();
    let mut config = server.config("no-such-bucket-here", "");
    let store = S3Store::open(&config).unwrap();
    let error = store.list().unwrap_err();
    assert!(
        error.to_string().contains("s3://no-such-bucket-here"),
        "{error}"
    );
    assert!(error.hint().is_some());
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    config.endpoint = Some(format!("http://127.0.0.1:{port}"));
    let started = std::time::Instant::now();
    assert!(S3Store::open(&config).unwrap().list().is_err());
    assert!(started.elapsed() < Duration::from_secs(60));
}
