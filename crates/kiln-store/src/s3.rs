//! The S3-compatible blob backend (`object_store`'s `AmazonS3`): blobs under
//! `PREFIX/objects/ab/cdef…`, trees under `PREFIX/trees/<digest>`, the same layout as the
//! filesystem store. `object_store` is async; this backend drives it from a private
//! current-thread tokio runtime so that the rest of Kiln stays synchronous. Files are read and
//! written on the calling thread, between the runtime's turns, never inside a future.
//!
//! Blobs of `PART_SIZE` and more are uploaded in parts (a multipart upload, a few parts in
//! flight at once); every download is hashed as it streams and refused when its content does
//! not match its name.

use std::fs::{self, File};
use std::future::Future;
use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, SystemTime};

use futures::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as Key;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, RetryConfig, WriteMultipart};

use crate::blobs::{BlobInfo, BlobStore, parse_tree, verify};
use crate::config::S3Config;
use crate::error::io_error;
use crate::{Digest, Error, Tree, atomic};

/// Blobs this large or larger go up in parts of this size (S3's smallest part is 5 MiB).
pub const PART_SIZE: usize = 8 << 20;
/// Parts uploaded at once.
const PARTS_IN_FLIGHT: usize = 4;

/// An S3-compatible blob store (see the module documentation).
pub struct S3Store {
    client: AmazonS3,
    url: String,
    prefix: String,
    runtime: tokio::runtime::Runtime,
}

impl std::fmt::Debug for S3Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Store").field("url", &self.url).finish()
    }
}

impl S3Store {
    /// Opens the store `config` describes. Nothing is sent until the first operation.
    pub fn open(config: &S3Config) -> Result<S3Store, Error> {
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(&config.bucket)
            .with_region(&config.region)
            .with_allow_http(config.allow_http)
            // Failing over minutes, as the defaults would, helps no one at a terminal.
            .with_retry(RetryConfig {
                max_retries: 3,
                retry_timeout: Duration::from_secs(30),
                ..RetryConfig::default()
            });
        if let Some(endpoint) = &config.endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        if let Some(key) = &config.access_key_id {
            builder = builder.with_access_key_id(key);
        }
        if let Some(secret) = &config.secret_access_key {
            builder = builder.with_secret_access_key(secret);
        }
        if let Some(token) = &config.session_token {
            builder = builder.with_token(token);
        }
        let client = builder.build().map_err(|source| Error::Remote {
            action: "open",
            key: String::new(),
            location: config.url(),
            source: Box::new(source),
        })?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(Error::Runtime)?;
        Ok(S3Store {
            client,
            url: config.url(),
            prefix: config.prefix.clone(),
            runtime,
        })
    }

    /// Runs a future to completion on the private runtime (`kiln_store::runtime::block_on`). Called from inside another tokio
    /// runtime (which may not block), it runs on a thread of its own.
    fn block_on<F>(&self, future: F) -> F::Output
    where
        F: Future + Send,
        F::Output: Send,
    {
        crate::runtime::block_on(&self.runtime, future)
    }

    fn key(&self, tail: &str) -> Key {
        if self.prefix.is_empty() {
            Key::from(tail)
        } else {
            Key::from(format!("{}/{tail}", self.prefix))
        }
    }

    fn blob_key(&self, digest: &Digest) -> Key {
        let hex = digest.to_hex();
        self.key(&format!("objects/{}/{}", &hex[..2], &hex[2..]))
    }

    fn tree_key(&self, digest: &Digest) -> Key {
        self.key(&format!("trees/{}", digest.to_hex()))
    }

    fn remote_error(
        &self,
        action: &'static str,
        key: &Key,
    ) -> impl FnOnce(object_store::Error) -> Error {
        let location = self.url.clone();
        let key = key.to_string();
        move |source| Error::Remote {
            action,
            key,
            location,
            source: Box::new(source),
        }
    }

    fn missing(&self, digest: &Digest) -> Error {
        Error::MissingObject {
            digest: *digest,
            location: self.url.clone(),
        }
    }

    /// Writes `bytes` under `key` (from the bucket's root) unchecked: for the test harness.
    #[cfg(feature = "testing")]
    pub(crate) fn put_key(&self, key: &str, bytes: &[u8]) -> Result<(), Error> {
        let key = Key::from(key);
        self.block_on(self.client.put(&key, PutPayload::from(bytes.to_vec())))
            .map(|_| ())
            .map_err(self.remote_error("upload", &key))
    }

    /// Opens a blob's content as a stream of chunks; `MissingObject` when it is not there.
    fn open_blob(
        &self,
        digest: &Digest,
    ) -> Result<futures::stream::BoxStream<'static, object_store::Result<bytes::Bytes>>, Error>
    {
        let key = self.blob_key(digest);
        match self.block_on(self.client.get(&key)) {
            Ok(result) => Ok(result.into_stream()),
            Err(object_store::Error::NotFound { .. }) => Err(self.missing(digest)),
            Err(error) => Err(self.remote_error("download", &key)(error)),
        }
    }

    /// Reads a blob through, handing each chunk to `sink`, and returns the digest of what was
    /// read.
    fn stream_blob(
        &self,
        digest: &Digest,
        mut sink: impl FnMut(&[u8]) -> Result<(), Error>,
    ) -> Result<Digest, Error> {
        let key = self.blob_key(digest);
        let mut stream = self.open_blob(digest)?;
        let mut hasher = blake3::Hasher::new();
        while let Some(chunk) = self.block_on(stream.next()) {
            let chunk = chunk.map_err(self.remote_error("download", &key))?;
            hasher.update(&chunk);
            sink(&chunk)?;
        }
        Ok(Digest(*hasher.finalize().as_bytes()))
    }

    fn upload_in_parts(
        &self,
        file: &mut File,
        source: &Path,
        digest: &Digest,
    ) -> Result<(), Error> {
        let key = self.blob_key(digest);
        let upload = self
            .block_on(self.client.put_multipart(&key))
            .map_err(self.remote_error("upload", &key))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
        let mut hasher = blake3::Hasher::new();
        let mut buffer = vec![0u8; PART_SIZE];
        let result = (|| {
            loop {
                let n = read_full(file, &mut buffer).map_err(io_error("read", source))?;
                if n == 0 {
                    return Ok(());
                }
                hasher.update(&buffer[..n]);
                {
                    // `write` starts the upload of each full part as a task of the runtime.
                    let _entered = self.runtime.enter();
                    writer.write(&buffer[..n]);
                }
                self.block_on(writer.wait_for_capacity(PARTS_IN_FLIGHT))
                    .map_err(self.remote_error("upload", &key))?;
            }
        })();
        let sent = Digest(*hasher.finalize().as_bytes());
        let result = result.and_then(|()| {
            if sent == *digest {
                Ok(())
            } else {
                Err(Error::ChangedWhileStoring {
                    path: source.to_path_buf(),
                })
            }
        });
        let _entered = self.runtime.enter();
        match result {
            Ok(()) => self
                .block_on(writer.finish())
                .map(|_| ())
                .map_err(self.remote_error("upload", &key)),
            Err(error) => {
                // Nothing is left half-uploaded: the parts are discarded.
                let _ = self.block_on(writer.abort());
                Err(error)
            }
        }
    }
}

/// Reads until `buffer` is full or the file ends; the count read.
fn read_full(file: &mut File, buffer: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        match file.read(&mut buffer[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

impl BlobStore for S3Store {
    fn location(&self) -> String {
        self.url.clone()
    }

    fn has_blob(&self, digest: &Digest) -> Result<bool, Error> {
        let key = self.blob_key(digest);
        match self.block_on(self.client.head(&key)) {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(error) => Err(self.remote_error("look up", &key)(error)),
        }
    }

    fn put_file(&self, source: &Path, digest: &Digest) -> Result<(), Error> {
        let mut file = File::open(source).map_err(io_error("open", source))?;
        let metadata = file.metadata().map_err(io_error("inspect", source))?;
        if !metadata.is_file() {
            return Err(Error::NotAFile {
                path: source.to_path_buf(),
            });
        }
        // Content-addressed: a blob already there is this content.
        if self.has_blob(digest)? {
            return Ok(());
        }
        if metadata.len() >= PART_SIZE as u64 {
            return self.upload_in_parts(&mut file, source, digest);
        }
        let mut bytes = Vec::with_capacity(metadata.len() as usize);
        file.read_to_end(&mut bytes)
            .map_err(io_error("read", source))?;
        if Digest::of_bytes(&bytes) != *digest {
            return Err(Error::ChangedWhileStoring {
                path: source.to_path_buf(),
            });
        }
        let key = self.blob_key(digest);
        self.block_on(self.client.put(&key, PutPayload::from(bytes)))
            .map(|_| ())
            .map_err(self.remote_error("upload", &key))
    }

    fn put_bytes(&self, bytes: &[u8]) -> Result<Digest, Error> {
        let digest = Digest::of_bytes(bytes);
        if !self.has_blob(&digest)? {
            let key = self.blob_key(&digest);
            self.block_on(self.client.put(&key, PutPayload::from(bytes.to_vec())))
                .map_err(self.remote_error("upload", &key))?;
        }
        Ok(digest)
    }

    fn get_bytes(&self, digest: &Digest) -> Result<Vec<u8>, Error> {
        let mut bytes = Vec::new();
        let actual = self.stream_blob(digest, |chunk| {
            bytes.extend_from_slice(chunk);
            Ok(())
        })?;
        verify(digest, actual, &self.url)?;
        Ok(bytes)
    }

    fn get_file(&self, digest: &Digest, destination: &Path) -> Result<(), Error> {
        let temporary = atomic::temporary_beside(destination);
        let parent = temporary.parent().unwrap_or(Path::new("."));
        fs::create_dir_all(parent).map_err(io_error("create", parent))?;
        let result = (|| {
            let mut file = File::options()
                .write(true)
                .create_new(true)
                .open(&temporary)
                .map_err(io_error("create", &temporary))?;
            let actual = self.stream_blob(digest, |chunk| {
                file.write_all(chunk).map_err(io_error("write", &temporary))
            })?;
            verify(digest, actual, &self.url)?;
            file.sync_all().map_err(io_error("flush", &temporary))?;
            fs::rename(&temporary, destination).map_err(io_error("move into place", destination))
        })();
        if result.is_err() {
            let _ = fs::remove_file(&temporary);
        }
        result
    }

    fn rehash(&self, digest: &Digest) -> Result<Digest, Error> {
        self.stream_blob(digest, |_| Ok(()))
    }

    fn list(&self) -> Result<Vec<BlobInfo>, Error> {
        let prefix = self.key("objects");
        let listed: Vec<object_store::ObjectMeta> = self
            .block_on(self.client.list(Some(&prefix)).try_collect())
            .map_err(self.remote_error("list", &prefix))?;
        Ok(listed
            .into_iter()
            .filter_map(|meta| {
                let mut parts: Vec<_> = meta.location.parts().collect();
                let tail = parts.pop()?;
                let head = parts.pop()?;
                let digest = Digest::from_hex(&format!("{}{}", head.as_ref(), tail.as_ref()))?;
                Some(BlobInfo {
                    digest,
                    size: meta.size,
                    modified: SystemTime::from(meta.last_modified),
                })
            })
            .collect())
    }

    fn delete(&self, digest: &Digest) -> Result<(), Error> {
        let key = self.blob_key(digest);
        match self.block_on(self.client.delete(&key)) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(error) => Err(self.remote_error("delete", &key)(error)),
        }
    }

    fn put_tree(&self, tree: &Tree) -> Result<Digest, Error> {
        let digest = tree.digest();
        let key = self.tree_key(&digest);
        let bytes = serde_json::to_vec(tree).expect("a tree serialises to JSON");
        self.block_on(self.client.put(&key, PutPayload::from(bytes)))
            .map_err(self.remote_error("upload", &key))?;
        Ok(digest)
    }

    fn get_tree(&self, digest: &Digest) -> Result<Option<Tree>, Error> {
        let key = self.tree_key(digest);
        let bytes = self.block_on(async {
            match self.client.get(&key).await {
                Ok(result) => result.bytes().await.map(Some),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(error) => Err(error),
            }
        });
        match bytes.map_err(self.remote_error("download", &key))? {
            Some(bytes) => parse_tree(digest, &bytes, &self.url).map(Some),
            None => Ok(None),
        }
    }
}
