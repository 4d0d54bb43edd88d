//! Paths from stored trees and artifacts, checked before anything is written: a restore or a
//! materialised artifact never writes outside the folder it is restored into.
//!
//! A tree entry's path must be relative, `/`-separated, without `.`, `..` or empty components;
//! and no folder between the root and the file may be a symbolic link (which would carry the
//! write elsewhere) or anything but a folder. The file itself is always replaced by a rename,
//! which replaces a link, a device or a FIFO by a regular file rather than writing through it.

use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};

use crate::Error;

/// Why `path` cannot name a file inside a folder, or `Ok` when it can.
pub fn check_relative(path: &str) -> Result<(), &'static str> {
    if path.is_empty() {
        return Err("the path is empty");
    }
    if path.contains('\0') {
        return Err("the path holds a NUL byte");
    }
    if path.starts_with('/') || Path::new(path).is_absolute() {
        return Err("the path is absolute");
    }
    for part in path.split('/') {
        match part {
            "" => return Err("the path has an empty component"),
            "." | ".." => return Err("the path climbs out with `.` or `..`"),
            _ => {}
        }
    }
    // Belt and braces: what `Path` makes of it must be plain names too.
    if Path::new(path)
        .components()
        .any(|c| !matches!(c, Component::Normal(_)))
    {
        return Err("the path is not a plain relative path");
    }
    Ok(())
}

/// `root` joined with `relative`, refused when `relative` could write outside `root` (see the
/// module documentation). Folders that do not exist yet are fine: they are created as folders.
pub fn join_inside(root: &Path, relative: &str) -> Result<PathBuf, Error> {
    let refuse = |reason: &'static str| Error::UnsafePath {
        root: root.to_path_buf(),
        path: relative.to_string(),
        reason,
    };
    check_relative(relative).map_err(refuse)?;
    let target = root.join(relative);
    // Every existing folder on the way (the root included) must be a real folder.
    let mut folder = root.to_path_buf();
    let mut parts: Vec<&str> = relative.split('/').collect();
    parts.pop();
    for part in std::iter::once("").chain(parts) {
        if !part.is_empty() {
            folder.push(part);
        }
        match fs::symlink_metadata(&folder) {
            Ok(metadata) if metadata.file_type().is_symlink() => {
                return Err(refuse("a folder on the way is a symbolic link"));
            }
            Ok(metadata) if !metadata.is_dir() => {
                return Err(refuse("a folder on the way is not a folder"));
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => break,
            Err(source) => {
                return Err(Error::Io {
                    action: "inspect",
                    path: folder,
                    source,
                });
            }
        }
    }
    Ok(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn climbing_absolute_and_empty_paths_are_refused() {
        for bad in [
            "../x",
            "a/../../x",
            "/etc/passwd",
            "a//b",
            "./a",
            "a/.",
            "",
            "a/",
            "a\0b",
        ] {
            assert!(check_relative(bad).is_err(), "`{bad}` must be refused");
        }
        for good in ["a", "a/b.txt", "..a", "a..b/c", ".hidden/x"] {
            assert!(check_relative(good).is_ok(), "`{good}` must be accepted");
        }
    }

    #[test]
    fn a_symbolic_link_on_the_way_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let outside = dir.path().join("outside");
        fs::create_dir_all(&root).unwrap();
        fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("sub")).unwrap();
        let error = join_inside(&root, "sub/file").unwrap_err();
        assert!(error.to_string().contains("symbolic link"), "{error}");
        // A root that is itself a link is refused as well.
        let linked_root = dir.path().join("linked");
        std::os::unix::fs::symlink(&outside, &linked_root).unwrap();
        assert!(join_inside(&linked_root, "file").is_err());
        // A file where a folder should be.
        fs::write(root.join("plain"), b"x").unwrap();
        assert!(join_inside(&root, "plain/file").is_err());
        assert_eq!(
            join_inside(&root, "new/deeper/file").unwrap(),
            root.join("new/deeper/file")
        );
    }
}
