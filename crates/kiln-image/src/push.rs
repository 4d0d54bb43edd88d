//! Pushing an image from an OCI image layout to an OCI distribution registry.
