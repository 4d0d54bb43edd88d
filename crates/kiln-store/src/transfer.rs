//! Moving a blob, or a tree and its files, between the local store (the working cache) and a
//! remote one. The tree goes last on the way up and on the way down, so that neither store
//! ever holds a tree naming a file it lacks.

use std::fs;

use crate::blobs::BlobStore;
use crate::{Digest, Error, Store};

/// What a transfer copied.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Transfer {
    pub blobs: usize,
    pub bytes: u64,
}

impl Store {
    /// Copies what `digest` names (a stored tree and its files, or a blob) to `remote`, skipping
    /// what `remote` already holds. Call it before recording anything that names `digest`
    /// where the remote's readers will look (a registry row).
    pub fn push(&self, remote: &dyn BlobStore, digest: &Digest) -> Result<Transfer, Error> {
        let mut transfer = Transfer::default();
        let mut send = |digest: &Digest| -> Result<(), Error> {
            if remote.has_blob(digest)? {
                return Ok(());
            }
            let object = self.object_path(digest);
            if !object.is_file() {
                return Err(Error::MissingObject {
                    digest: *digest,
                    location: self.root().display().to_string(),
                });
            }
            remote.put_file(&object, digest)?;
            transfer.blobs += 1;
            transfer.bytes += fs::metadata(&object).map(|m| m.len()).unwrap_or(0);
            Ok(())
        };
        match self.get_tree(digest)? {
            Some(tree) => {
                for entry in &tree.entries {
                    send(&entry.digest)?;
                }
                remote.put_tree(&tree)?;
            }
            None => send(digest)?,
        }
        Ok(transfer)
    }

    /// Brings what `digest` names (a tree and its files, or a blob) from `remote` into this
    /// store, where it is missing here; every download is verified against its digest.
    pub fn fetch(&self, remote: &dyn BlobStore, digest: &Digest) -> Result<Transfer, Error> {
        let mut transfer = Transfer::default();
        let mut receive = |digest: &Digest| -> Result<(), Error> {
            if self.contains(digest) {
                return Ok(());
            }
            let object = self.object_path(digest);
            remote.get_file(digest, &object)?;
            self.note_unsynced(object.clone());
            transfer.blobs += 1;
            transfer.bytes += fs::metadata(&object).map(|m| m.len()).unwrap_or(0);
            Ok(())
        };
        let local_tree = self.get_tree(digest)?;
        let tree = match local_tree {
            Some(tree) => Some(tree),
            None if self.contains(digest) => return Ok(transfer),
            None => remote.get_tree(digest)?,
        };
        match tree {
            Some(tree) => {
                for entry in &tree.entries {
                    receive(&entry.digest)?;
                }
                // Written after its files, and flushing them first (`write_ref` syncs).
                self.put_tree(&tree)?;
            }
            None => {
                receive(digest)?;
                self.sync()?;
            }
        }
        Ok(transfer)
    }
}
