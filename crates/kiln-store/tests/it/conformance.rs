//! One suite, every backend: each test below runs against the filesystem store and against a
//! real `moto` S3 server (a bucket per test), through the `BlobStore` trait only.

use std::fs;
use std::path::Path;
use std::sync::Arc;

use kiln_store::testing::{S3TestServer, s3_test_server};
use kiln_store::{BlobStore, Digest, Entry, Error, PART_SIZE, S3Store, Store, Tree, hash_file};

/// A backend under test, with a way to write past its checks.
pub struct Fixture {
    pub store: Box<dyn BlobStore>,
    pub dir: tempfile::TempDir,
    raw: Raw,
}

enum Raw {
    Filesystem(std::path::PathBuf),
    S3 {
        server: Arc<S3TestServer>,
        bucket: String,
        prefix: String,
    },
}

impl Fixture {
    pub fn filesystem() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("store");
        Fixture {
            store: Box::new(Store::open(&root).unwrap()),
            raw: Raw::Filesystem(root),
            dir,
        }
    }

    pub fn s3() -> Fixture {
        let server = s3_test_server();
        let bucket = server.new_bucket();
        let prefix = "team/kiln".to_string();
        let store = S3Store::open(&server.config(&bucket, &prefix)).unwrap();
        Fixture {
            store: Box::new(store),
            dir: tempfile::tempdir().unwrap(),
            raw: Raw::S3 {
                server,
                bucket,
                prefix,
            },
        }
    }

    /// Writes `bytes` where the store keeps `tail` (`objects/ab/cdef…`, `trees/<hex>`).
    pub fn write_raw(&self, tail: &str, bytes: &[u8]) {
        match &self.raw {
            Raw::Filesystem(root) => {
                let path = match tail.strip_prefix("trees/") {
                    Some(name) => root.join("refs/trees").join(name),
                    None => root.join(tail),
                };
                fs::create_dir_all(path.parent().unwrap()).unwrap();
                fs::write(path, bytes).unwrap();
            }
            Raw::S3 {
                server,
                bucket,
                prefix,
            } => server.put_raw(bucket, &format!("{prefix}/{tail}"), bytes),
        }
    }

    /// What the test's folder holds besides the filesystem store.
    pub fn leftovers(&self) -> Vec<String> {
        fs::read_dir(self.dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name != "store")
            .collect()
    }

    pub fn file(&self, name: &str, bytes: &[u8]) -> (std::path::PathBuf, Digest) {
        let path = self.dir.path().join(name);
        fs::write(&path, bytes).unwrap();
        let digest = hash_file(&path).unwrap();
        (path, digest)
    }
}

fn object_tail(digest: &Digest) -> String {
    let hex = digest.to_hex();
    format!("objects/{}/{}", &hex[..2], &hex[2..])
}

/// Bytes that do not repeat in any part-sized window, so a misplaced part changes the digest.
fn pattern(len: usize) -> Vec<u8> {
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

macro_rules! conformance {
    ($($test:ident),* $(,)?) => {
        mod filesystem {
            $(#[test] fn $test() { super::$test(&super::Fixture::filesystem()) })*
        }
        mod s3 {
            $(#[test] fn $test() { super::$test(&super::Fixture::s3()) })*
        }
    };
}

conformance!(
    put_get_contains_list_delete,
    a_large_blob_goes_up_in_parts_and_comes_back_whole,
    a_missing_blob_is_an_error_that_names_it,
    a_corrupt_blob_is_never_returned,
    concurrent_puts_of_one_blob_agree,
    a_file_changed_since_it_was_hashed_is_refused,
    trees_round_trip_and_are_verified,
);

fn put_get_contains_list_delete(fixture: &Fixture) {
    let store = &*fixture.store;
    let small = store.put_bytes(b"weights").unwrap();
    assert_eq!(small, Digest::of_bytes(b"weights"));
    assert!(store.has_blob(&small).unwrap());
    assert_eq!(store.get_bytes(&small).unwrap(), b"weights");
    let (path, digest) = fixture.file("model.onnx", b"an onnx graph");
    store.put_file(&path, &digest).unwrap();
    store.put_file(&path, &digest).unwrap();
    let copy = fixture.dir.path().join("out/nested/model.onnx");
    store.get_file(&digest, &copy).unwrap();
    assert_eq!(fs::read(&copy).unwrap(), b"an onnx graph");
    assert_eq!(store.rehash(&digest).unwrap(), digest);
    let mut listed: Vec<(Digest, u64)> = store
        .list()
        .unwrap()
        .into_iter()
        .map(|b| (b.digest, b.size))
        .collect();
    listed.sort();
    let mut expected = vec![(small, 7), (digest, 13)];
    expected.sort();
    assert_eq!(listed, expected);
    store.delete(&small).unwrap();
    assert!(!store.has_blob(&small).unwrap());
    store.delete(&small).unwrap();
    assert_eq!(store.list().unwrap().len(), 1);
    assert!(store.location().len() > 3);
}

fn a_large_blob_goes_up_in_parts_and_comes_back_whole(fixture: &Fixture) {
    let store = &*fixture.store;
    let bytes = pattern(2 * PART_SIZE + 12_345);
    let (path, digest) = fixture.file("big.bin", &bytes);
    store.put_file(&path, &digest).unwrap();
    let info = store
        .list()
        .unwrap()
        .into_iter()
        .find(|b| b.digest == digest)
        .unwrap();
    assert_eq!(info.size, bytes.len() as u64);
    let copy = fixture.dir.path().join("big.copy");
    store.get_file(&digest, &copy).unwrap();
    assert_eq!(hash_file(&copy).unwrap(), digest);
    assert_eq!(store.rehash(&digest).unwrap(), digest);
}

fn a_missing_blob_is_an_error_that_names_it(fixture: &Fixture) {
    let store = &*fixture.store;
    let absent = Digest::of_bytes(b"never stored");
    assert!(!store.has_blob(&absent).unwrap());
    for error in [
        store.get_bytes(&absent).unwrap_err(),
        store
            .get_file(&absent, &fixture.dir.path().join("x"))
            .unwrap_err(),
        store.rehash(&absent).unwrap_err(),
    ] {
        assert!(
            matches!(&error, Error::MissingObject { digest, .. } if *digest == absent),
            "{error:?}"
        );
        assert!(error.to_string().contains(&absent.to_hex()), "{error}");
    }
    assert!(!fixture.dir.path().join("x").exists());
    assert_eq!(
        fixture.leftovers(),
        Vec::<String>::new(),
        "no temporaries left"
    );
    assert_eq!(store.get_tree(&absent).unwrap(), None);
}

fn a_corrupt_blob_is_never_returned(fixture: &Fixture) {
    let store = &*fixture.store;
    let digest = store.put_bytes(b"the real content").unwrap();
    fixture.write_raw(&object_tail(&digest), b"the reel content");
    let error = store.get_bytes(&digest).unwrap_err();
    assert!(
        matches!(&error, Error::CorruptObject { digest: d, actual, .. }
            if *d == digest && *actual == Digest::of_bytes(b"the reel content")),
        "{error:?}"
    );
    assert!(error.hint().unwrap().contains("kiln store fsck"));
    let destination = fixture.dir.path().join("restored");
    let error = store.get_file(&digest, &destination).unwrap_err();
    assert!(matches!(error, Error::CorruptObject { .. }), "{error:?}");
    assert!(
        !destination.exists(),
        "a corrupt blob must not reach its destination"
    );
    assert_eq!(
        fixture.leftovers(),
        Vec::<String>::new(),
        "no temporaries left"
    );
    assert_ne!(store.rehash(&digest).unwrap(), digest);
}

fn concurrent_puts_of_one_blob_agree(fixture: &Fixture) {
    let store = &*fixture.store;
    let bytes = pattern(PART_SIZE + 1);
    let (path, digest) = fixture.file("shared.bin", &bytes);
    std::thread::scope(|scope| {
        for _ in 0..4 {
            scope.spawn(|| store.put_file(&path, &digest).unwrap());
            scope.spawn(|| {
                assert_eq!(
                    store.put_bytes(b"small").unwrap(),
                    Digest::of_bytes(b"small")
                )
            });
        }
    });
    assert_eq!(store.rehash(&digest).unwrap(), digest);
    assert_eq!(
        store.get_bytes(&Digest::of_bytes(b"small")).unwrap(),
        b"small"
    );
    assert_eq!(store.list().unwrap().len(), 2);
}

fn a_file_changed_since_it_was_hashed_is_refused(fixture: &Fixture) {
    let store = &*fixture.store;
    let (path, _) = fixture.file("data.csv", b"a,b\n1,2\n");
    let stale = Digest::of_bytes(b"a,b\n");
    let error = store.put_file(&path, &stale).unwrap_err();
    assert!(
        matches!(error, Error::ChangedWhileStoring { .. }),
        "{error:?}"
    );
    assert!(!store.has_blob(&stale).unwrap());
    // The same for a large file, refused after its parts went up: nothing is left.
    let (big, _) = fixture.file("big.bin", &pattern(PART_SIZE + 10));
    let error = store.put_file(&big, &stale).unwrap_err();
    assert!(
        matches!(error, Error::ChangedWhileStoring { .. }),
        "{error:?}"
    );
    assert!(store.list().unwrap().is_empty());
    // Only regular files are stored: a device would be read forever.
    let error = store.put_file(Path::new("/dev/zero"), &stale).unwrap_err();
    assert!(matches!(error, Error::NotAFile { .. }), "{error:?}");
}

fn trees_round_trip_and_are_verified(fixture: &Fixture) {
    let store = &*fixture.store;
    let a = store.put_bytes(b"a").unwrap();
    let tree = Tree::new(vec![
        Entry {
            path: "sub/a.txt".into(),
            digest: a,
            size: 1,
            executable: true,
        },
        Entry {
            path: "b.txt".into(),
            digest: a,
            size: 1,
            executable: false,
        },
    ]);
    let digest = store.put_tree(&tree).unwrap();
    assert_eq!(digest, tree.digest());
    assert_eq!(store.get_tree(&digest).unwrap(), Some(tree.clone()));
    // A tree stored under another tree's name.
    let other = Tree::new(tree.entries[..1].to_vec());
    fixture.write_raw(
        &format!("trees/{}", other.digest()),
        &serde_json::to_vec(&tree).unwrap(),
    );
    let error = store.get_tree(&other.digest()).unwrap_err();
    assert!(matches!(error, Error::CorruptTree { .. }), "{error:?}");
    // A tree whose digest is right but whose path climbs out of the folder it is restored into.
    let climbing = Tree::new(vec![Entry {
        path: "../../etc/cron.d/job".into(),
        digest: a,
        size: 1,
        executable: false,
    }]);
    fixture.write_raw(
        &format!("trees/{}", climbing.digest()),
        &serde_json::to_vec(&climbing).unwrap(),
    );
    let error = store.get_tree(&climbing.digest()).unwrap_err();
    assert!(error.to_string().contains("climbs out"), "{error}");
    fixture.write_raw(&format!("trees/{}", a), b"{not json");
    assert!(matches!(
        store.get_tree(&a).unwrap_err(),
        Error::CorruptTree { .. }
    ));
}
