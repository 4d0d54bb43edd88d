//! A small OCI image layout written by the tests themselves: one layer (a static file, and a
//! 9 MiB one so that uploads go in several chunks), a config, the image manifest named by
//! `org.opencontainers.image.ref.name`, and an SPDX SBOM as an artifact whose `subject` is
//! the image.

use std::path::Path;

use serde_json::json;
use sha2::Digest as _;

pub const SBOM_TYPE: &str = "application/spdx+json";

/// What [`write_layout`] wrote.
pub struct Written {
    pub image_digest: String,
    pub sbom_digest: String,
}

fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{:x}", sha2::Sha256::digest(bytes))
}

fn put_blob(root: &Path, bytes: &[u8]) -> serde_json::Value {
    let digest = digest_of(bytes);
    let path = root.join("blobs/sha256").join(&digest["sha256:".len()..]);
    std::fs::write(path, bytes).unwrap();
    json!({ "digest": digest, "size": bytes.len() })
}

fn descriptor(media_type: &str, blob: &serde_json::Value) -> serde_json::Value {
    json!({ "mediaType": media_type, "digest": blob["digest"], "size": blob["size"] })
}

/// Writes an image named `name` whose file `/hello.txt` holds `greeting`.
pub fn write_layout(root: &Path, name: &str, greeting: &str) -> Written {
    std::fs::create_dir_all(root.join("blobs/sha256")).unwrap();
    std::fs::write(root.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();

    let mut layer = tar::Builder::new(Vec::new());
    let big: Vec<u8> = (0..9 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    for (path, content) in [("hello.txt", greeting.as_bytes()), ("big.bin", &big[..])] {
        let mut header = tar::Header::new_gnu();
        header.set_size(content.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_cksum();
        layer.append_data(&mut header, path, content).unwrap();
    }
    let layer = layer.into_inner().unwrap();
    let layer_blob = put_blob(root, &layer);
    let config = json!({
        "architecture": "amd64",
        "os": "linux",
        "config": { "Cmd": ["/hello.txt"] },
        "rootfs": { "type": "layers", "diff_ids": [layer_blob["digest"]] },
    });
    let config_blob = put_blob(root, &serde_json::to_vec(&config).unwrap());
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": descriptor("application/vnd.oci.image.config.v1+json", &config_blob),
        "layers": [descriptor("application/vnd.oci.image.layer.v1.tar", &layer_blob)],
        "annotations": { "org.opencontainers.image.title": name },
    });
    let manifest_blob = put_blob(root, &serde_json::to_vec(&manifest).unwrap());
    let image = descriptor("application/vnd.oci.image.manifest.v1+json", &manifest_blob);

    let sbom = json!({ "spdxVersion": "SPDX-2.3", "name": name, "packages": [] });
    let sbom_blob = put_blob(root, &serde_json::to_vec(&sbom).unwrap());
    let empty_blob = put_blob(root, b"{}");
    let sbom_manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": SBOM_TYPE,
        "config": descriptor("application/vnd.oci.empty.v1+json", &empty_blob),
        "layers": [descriptor(SBOM_TYPE, &sbom_blob)],
        "subject": image,
    });
    let sbom_manifest_blob = put_blob(root, &serde_json::to_vec(&sbom_manifest).unwrap());

    let mut named = image.clone();
    named["annotations"] = json!({ "org.opencontainers.image.ref.name": name });
    let mut sbom_entry = descriptor(
        "application/vnd.oci.image.manifest.v1+json",
        &sbom_manifest_blob,
    );
    sbom_entry["artifactType"] = json!(SBOM_TYPE);
    let index = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [named, sbom_entry],
    });
    std::fs::write(root.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    Written {
        image_digest: manifest_blob["digest"].as_str().unwrap().to_owned(),
        sbom_digest: sbom_manifest_blob["digest"].as_str().unwrap().to_owned(),
    }
}
