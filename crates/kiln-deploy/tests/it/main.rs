//! kiln-deploy's integration tests (one test binary): the Kubernetes target against a real
//! control plane.

mod kubernetes;
