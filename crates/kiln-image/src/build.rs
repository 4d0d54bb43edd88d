//! Building an image of a model version into an OCI image layout.
