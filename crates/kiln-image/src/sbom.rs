//! The image's software bill of materials, as an SPDX 2.3 JSON document: Kiln's server, ONNX
//! Runtime, the Debian packages owning the copied libraries (and the interpreter), and a Python
//! image's virtualenv packages. It is attached to the image as an OCI 1.1 artifact (a manifest
//! whose `subject` is the image's), so a registry push carries it and `oras discover` finds it.

use serde_json::{Value, json};

/// The SBOM's media type (the layer's, and the artifact manifest's `artifactType`).
pub const MEDIA_TYPE: &str = "application/spdx+json";

/// A package in the image.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct Package {
    pub name: String,
    pub version: String,
    /// Its package URL (`pkg:deb/debian/libc6@2.36-9?arch=amd64`, `pkg:pypi/numpy@2.1.0`).
    pub purl: Option<String>,
}

impl Package {
    pub fn deb(name: &str, version: &str, architecture: &str) -> Package {
        Package {
            name: name.to_string(),
            version: version.to_string(),
            purl: Some(format!(
                "pkg:deb/debian/{name}@{version}?arch={architecture}"
            )),
        }
    }

    pub fn pypi(name: &str, version: &str) -> Package {
        let normalised = name.to_lowercase().replace(['_', '.'], "-");
        Package {
            name: name.to_string(),
            version: version.to_string(),
            purl: Some(format!("pkg:pypi/{normalised}@{version}")),
        }
    }
}

/// An SPDX identifier from free text: `SPDXRef-` and letters, digits, `.` and `-` only.
fn spdx_id(prefix: &str, name: &str, index: usize) -> String {
    let cleaned: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!("SPDXRef-{prefix}-{index}-{cleaned}")
}

/// The SPDX document for the image `name` (`iris:v3`), created at `created` (RFC 3339: the
/// version's registration time, so that the same image has the same SBOM), naming
/// `namespace` (unique per image: it carries the model layer's digest).
pub fn document(
    name: &str,
    namespace: &str,
    created: &str,
    kiln_version: &str,
    packages: &[Package],
) -> Value {
    let image_id = "SPDXRef-Image";
    let mut spdx_packages = vec![json!({
        "SPDXID": image_id,
        "name": name,
        "downloadLocation": "NOASSERTION",
        "filesAnalyzed": false,
        "primaryPackagePurpose": "CONTAINER",
    })];
    let mut relationships = vec![json!({
        "spdxElementId": "SPDXRef-DOCUMENT",
        "relationshipType": "DESCRIBES",
        "relatedSpdxElement": image_id,
    })];
    let mut sorted = packages.to_vec();
    sorted.sort();
    sorted.dedup();
    for (index, package) in sorted.iter().enumerate() {
        let id = spdx_id("Package", &package.name, index);
        let mut entry = json!({
            "SPDXID": id,
            "name": package.name,
            "versionInfo": package.version,
            "downloadLocation": "NOASSERTION",
            "filesAnalyzed": false,
        });
        if let Some(purl) = &package.purl {
            entry["externalRefs"] = json!([{
                "referenceCategory": "PACKAGE-MANAGER",
                "referenceType": "purl",
                "referenceLocator": purl,
            }]);
        }
        spdx_packages.push(entry);
        relationships.push(json!({
            "spdxElementId": image_id,
            "relationshipType": "CONTAINS",
            "relatedSpdxElement": id,
        }));
    }
    json!({
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": name,
        "documentNamespace": namespace,
        "creationInfo": {
            "created": created,
            "creators": [format!("Tool: kiln-{kiln_version}")],
        },
        "packages": spdx_packages,
        "relationships": relationships,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_describes_the_image_and_contains_each_package_once() {
        let packages = [
            Package::deb("libc6", "2.36-9", "amd64"),
            Package::pypi("scikit_learn", "1.5.0"),
            Package::deb("libc6", "2.36-9", "amd64"),
        ];
        let document = document(
            "iris:v3",
            "https://kiln.dev/spdx/x",
            "2026-11-30T00:00:00Z",
            "0.1.0",
            &packages,
        );
        assert_eq!(document["spdxVersion"], "SPDX-2.3");
        let listed = document["packages"].as_array().unwrap();
        assert_eq!(listed.len(), 3);
        assert_eq!(
            listed[2]["externalRefs"][0]["referenceLocator"],
            "pkg:pypi/scikit-learn@1.5.0"
        );
        for package in listed {
            let id = package["SPDXID"].as_str().unwrap();
            assert!(
                id.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-'),
                "{id}"
            );
        }
        assert_eq!(document["relationships"].as_array().unwrap().len(), 3);
    }
}
